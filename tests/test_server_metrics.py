"""The Prometheus exposition of ``isol8 serve`` (isol8.server.metrics): exact text, escaping,
cumulative buckets, bounded labels, thread safety and render cost, pure (no sandbox, no
socket); then ``GET /metrics`` of a real server: the master key, the content type, requests
counted by route template, runs, and gauges that agree with the processes really alive.
Every exposition is also read back by a strict line-format checker written here, and by
prometheus_client's own parser where that package happens to be installed."""

from __future__ import annotations

import math
import os
import re
import threading
import time
import urllib.request
from collections.abc import Callable

import pytest

from isol8.result import ExecutionResult, ResourceUsage
from isol8.runtimes import RUNTIMES
from isol8.server import metrics as metrics_module
from isol8.server.metrics import (
    MODES,
    REJECT_REASONS,
    REQUEST_DURATION_BUCKETS,
    ROUTES,
    RUN_DURATION_BUCKETS,
    RUN_OUTCOMES,
    Metrics,
    outcome_of,
)

# --- a strict reader of the 0.0.4 text format ----------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_VALUE = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]Inf|NaN"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_HELP = re.compile(rf"# HELP ({_NAME}) ((?:[^\\\n]|\\[\\n])*)")
_TYPE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram)")
_SAMPLE = re.compile(
    rf"(?P<name>{_NAME})(?:\{{(?P<body>{_LABEL}(?:,{_LABEL})*)\}})? (?P<value>{_VALUE})"
)
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Labels = tuple[tuple[str, str], ...]


def _unescape(value: str) -> str:
    return re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group(0)], value)


def parse(text: str) -> dict[str, dict[str, object]]:
    """Check ``text`` line by line against the format and return its families.

    Each family is ``{"type", "help", "samples": {(sample name, labels): value}}``; labels
    are unescaped. Fails on anything Prometheus would reject or misread: a sample before its
    TYPE, a family declared twice or split, a counter not ending ``_total``, a duplicate
    series, buckets out of order or not cumulative, a ``+Inf`` bucket that differs from
    ``_count``.
    """
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, dict[str, object]] = {}
    current: str | None = None
    for line in text[:-1].split("\n"):
        if help_match := _HELP.fullmatch(line):
            name = help_match.group(1)
            assert name not in families, f"family {name} declared twice"
            families[name] = {"help": _unescape(help_match.group(2)), "samples": {}}
            current = None
        elif type_match := _TYPE.fullmatch(line):
            name, kind = type_match.groups()
            assert name in families and "type" not in families[name], f"TYPE out of place: {line}"
            assert kind != "counter" or name.endswith("_total"), f"counter {name} lacks _total"
            families[name]["type"] = kind
            current = name
        else:
            sample = _SAMPLE.fullmatch(line)
            assert sample, f"not a sample line: {line!r}"
            assert current is not None, f"sample outside a family: {line!r}"
            name, body, value = sample["name"], sample["body"] or "", sample["value"]
            kind = families[current]["type"]
            allowed = [current]
            if kind == "histogram":
                allowed = [current + suffix for suffix in ("_bucket", "_sum", "_count")]
            assert name in allowed, f"{name} does not belong to {kind} {current}"
            labels = tuple((k, _unescape(v)) for k, v in re.findall(_LABEL, body))
            assert len({k for k, _ in labels}) == len(labels), f"repeated label: {line!r}"
            samples = families[current]["samples"]
            assert isinstance(samples, dict)
            assert (name, labels) not in samples, f"duplicate series: {line!r}"
            samples[name, labels] = float(value)
    for name, family in families.items():
        assert "type" in family, f"{name} has HELP but no TYPE"
        if family["type"] == "histogram":
            _check_histogram(name, family["samples"])  # type: ignore[arg-type]
    return families


def _check_histogram(name: str, samples: dict[tuple[str, Labels], float]) -> None:
    series: dict[Labels, list[tuple[float, float]]] = {}
    for (sample, labels), value in samples.items():
        if sample == name + "_bucket":
            rest = tuple(pair for pair in labels if pair[0] != "le")
            (le,) = [v for k, v in labels if k == "le"]
            series.setdefault(rest, []).append((float(le), value))
    for labels, buckets in series.items():
        bounds = [le for le, _ in buckets]
        assert bounds == sorted(set(bounds)), f"{name}{labels}: le not strictly increasing"
        assert bounds[-1] == math.inf, f"{name}{labels}: no +Inf bucket"
        counts = [count for _, count in buckets]
        assert counts == sorted(counts), f"{name}{labels}: buckets not cumulative"
        assert samples[name + "_count", labels] == counts[-1], f"{name}{labels}: +Inf != count"
        assert (name + "_sum", labels) in samples, f"{name}{labels}: no _sum"
    count_series = {labels for sample, labels in samples if sample == name + "_count"}
    assert count_series == set(series), f"{name}: _count without buckets or the reverse"


def value(families: dict[str, dict[str, object]], sample: str, **labels: str) -> float:
    family = families.get(sample) or families[re.sub(r"_(bucket|sum|count)\Z", "", sample)]
    samples = family["samples"]
    assert isinstance(samples, dict)
    return float(samples[sample, tuple(labels.items())])


def test_checker_rejects_what_prometheus_would():
    """The checker above is what most tests lean on, so it must be able to fail."""
    good = "# HELP a_total x\n# TYPE a_total counter\na_total 1\n"
    parse(good)
    broken = [
        good[:-1],  # no final newline
        good.replace("a_total 1", "a_total one"),
        good.replace("a_total 1", 'a_total{k="\\x"} 1'),  # an escape the format lacks
        good.replace("a_total", "a"),  # a counter without _total
        good + "a_total 2\n",  # the same series twice
        "# TYPE a_total counter\na_total 1\n",  # no HELP
        "# HELP h x\n# TYPE h histogram\n"
        'h_bucket{le="1.0"} 2\nh_bucket{le="+Inf"} 1\nh_sum 0.5\nh_count 1\n',  # decreasing
        '# HELP h x\n# TYPE h histogram\nh_bucket{le="1.0"} 1\nh_sum 0.5\nh_count 1\n',
        "# HELP h x\n# TYPE h histogram\n"
        'h_bucket{le="1.0"} 1\nh_bucket{le="+Inf"} 1\nh_sum 0.5\nh_count 2\n',  # +Inf != count
    ]
    for text in broken:
        with pytest.raises(AssertionError):
            parse(text)


# --- exact rendering -----------------------------------------------------------------------

EXPECTED = """\
# HELP isol8_runs_total Executions finished, by runtime, mode and outcome (ok, error = non-zero exit or failure, timeout, oom, refused = never started).
# TYPE isol8_runs_total counter
isol8_runs_total{runtime="bash",mode="ephemeral",outcome="refused"} 1
isol8_runs_total{runtime="node",mode="persistent",outcome="timeout"} 1
isol8_runs_total{runtime="python",mode="ephemeral",outcome="error"} 1
isol8_runs_total{runtime="python",mode="ephemeral",outcome="ok"} 1
isol8_runs_total{runtime="python",mode="ephemeral",outcome="oom"} 1
# HELP isol8_run_duration_seconds Wall time of executions that ran (refused ones are left out).
# TYPE isol8_run_duration_seconds histogram
isol8_run_duration_seconds_bucket{runtime="node",mode="persistent",le="0.005"} 0
isol8_run_duration_seconds_bucket{runtime="node",mode="persistent",le="0.01"} 0
isol8_run_duration_seconds_bucket{runtime="node",mode="persistent",le="0.025"} 0
isol8_run_duration_seconds_bucket{runtime="node",mode="persistent",le="0.05"} 0
isol8_run_duration_seconds_bucket{runtime="node",mode="persistent",le="0.1"} 0
isol8_run_duration_seconds_bucket{runtime="node",mode="persistent",le="0.25"} 0
isol8_run_duration_seconds_bucket{runtime="node",mode="persistent",le="0.5"} 0
isol8_run_duration_seconds_bucket{runtime="node",mode="persistent",le="1.0"} 0
isol8_run_duration_seconds_bucket{runtime="node",mode="persistent",le="2.5"} 0
isol8_run_duration_seconds_bucket{runtime="node",mode="persistent",le="5.0"} 0
isol8_run_duration_seconds_bucket{runtime="node",mode="persistent",le="10.0"} 0
isol8_run_duration_seconds_bucket{runtime="node",mode="persistent",le="30.0"} 0
isol8_run_duration_seconds_bucket{runtime="node",mode="persistent",le="60.0"} 0
isol8_run_duration_seconds_bucket{runtime="node",mode="persistent",le="120.0"} 0
isol8_run_duration_seconds_bucket{runtime="node",mode="persistent",le="300.0"} 0
isol8_run_duration_seconds_bucket{runtime="node",mode="persistent",le="+Inf"} 1
isol8_run_duration_seconds_sum{runtime="node",mode="persistent"} 301.0
isol8_run_duration_seconds_count{runtime="node",mode="persistent"} 1
isol8_run_duration_seconds_bucket{runtime="python",mode="ephemeral",le="0.005"} 1
isol8_run_duration_seconds_bucket{runtime="python",mode="ephemeral",le="0.01"} 1
isol8_run_duration_seconds_bucket{runtime="python",mode="ephemeral",le="0.025"} 1
isol8_run_duration_seconds_bucket{runtime="python",mode="ephemeral",le="0.05"} 1
isol8_run_duration_seconds_bucket{runtime="python",mode="ephemeral",le="0.1"} 1
isol8_run_duration_seconds_bucket{runtime="python",mode="ephemeral",le="0.25"} 2
isol8_run_duration_seconds_bucket{runtime="python",mode="ephemeral",le="0.5"} 2
isol8_run_duration_seconds_bucket{runtime="python",mode="ephemeral",le="1.0"} 3
isol8_run_duration_seconds_bucket{runtime="python",mode="ephemeral",le="2.5"} 3
isol8_run_duration_seconds_bucket{runtime="python",mode="ephemeral",le="5.0"} 3
isol8_run_duration_seconds_bucket{runtime="python",mode="ephemeral",le="10.0"} 3
isol8_run_duration_seconds_bucket{runtime="python",mode="ephemeral",le="30.0"} 3
isol8_run_duration_seconds_bucket{runtime="python",mode="ephemeral",le="60.0"} 3
isol8_run_duration_seconds_bucket{runtime="python",mode="ephemeral",le="120.0"} 3
isol8_run_duration_seconds_bucket{runtime="python",mode="ephemeral",le="300.0"} 3
isol8_run_duration_seconds_bucket{runtime="python",mode="ephemeral",le="+Inf"} 3
isol8_run_duration_seconds_sum{runtime="python",mode="ephemeral"} 1.255
isol8_run_duration_seconds_count{runtime="python",mode="ephemeral"} 3
# HELP isol8_timeouts_total Executions killed at their timeout.
# TYPE isol8_timeouts_total counter
isol8_timeouts_total 1
# HELP isol8_ooms_total Executions killed by the OOM killer.
# TYPE isol8_ooms_total counter
isol8_ooms_total 1
# HELP isol8_rejected_total Requests answered 429 Too Many Requests, by the limit that was reached.
# TYPE isol8_rejected_total counter
isol8_rejected_total{reason="memory"} 0
isol8_rejected_total{reason="queue"} 2
isol8_rejected_total{reason="sessions"} 0
isol8_rejected_total{reason="tmpfs"} 0
# HELP isol8_network_bytes_total Bytes the filtered network proxy moved for executions (in = to the sandbox).
# TYPE isol8_network_bytes_total counter
isol8_network_bytes_total{direction="in"} 100
isol8_network_bytes_total{direction="out"} 20
# HELP isol8_http_requests_total HTTP requests answered, by route template, method and status class.
# TYPE isol8_http_requests_total counter
isol8_http_requests_total{route="/execute",method="POST",code="2xx"} 1
isol8_http_requests_total{route="/health",method="GET",code="5xx"} 1
# HELP isol8_http_request_duration_seconds Time from request to response (to the end of the stream for SSE and WebSocket).
# TYPE isol8_http_request_duration_seconds histogram
isol8_http_request_duration_seconds_bucket{route="/execute",le="0.001"} 0
isol8_http_request_duration_seconds_bucket{route="/execute",le="0.0025"} 0
isol8_http_request_duration_seconds_bucket{route="/execute",le="0.005"} 1
isol8_http_request_duration_seconds_bucket{route="/execute",le="0.01"} 1
isol8_http_request_duration_seconds_bucket{route="/execute",le="0.025"} 1
isol8_http_request_duration_seconds_bucket{route="/execute",le="0.05"} 1
isol8_http_request_duration_seconds_bucket{route="/execute",le="0.1"} 1
isol8_http_request_duration_seconds_bucket{route="/execute",le="0.25"} 1
isol8_http_request_duration_seconds_bucket{route="/execute",le="0.5"} 1
isol8_http_request_duration_seconds_bucket{route="/execute",le="1.0"} 1
isol8_http_request_duration_seconds_bucket{route="/execute",le="2.5"} 1
isol8_http_request_duration_seconds_bucket{route="/execute",le="5.0"} 1
isol8_http_request_duration_seconds_bucket{route="/execute",le="10.0"} 1
isol8_http_request_duration_seconds_bucket{route="/execute",le="30.0"} 1
isol8_http_request_duration_seconds_bucket{route="/execute",le="60.0"} 1
isol8_http_request_duration_seconds_bucket{route="/execute",le="120.0"} 1
isol8_http_request_duration_seconds_bucket{route="/execute",le="300.0"} 1
isol8_http_request_duration_seconds_bucket{route="/execute",le="+Inf"} 1
isol8_http_request_duration_seconds_sum{route="/execute"} 0.004
isol8_http_request_duration_seconds_count{route="/execute"} 1
isol8_http_request_duration_seconds_bucket{route="/health",le="0.001"} 1
isol8_http_request_duration_seconds_bucket{route="/health",le="0.0025"} 1
isol8_http_request_duration_seconds_bucket{route="/health",le="0.005"} 1
isol8_http_request_duration_seconds_bucket{route="/health",le="0.01"} 1
isol8_http_request_duration_seconds_bucket{route="/health",le="0.025"} 1
isol8_http_request_duration_seconds_bucket{route="/health",le="0.05"} 1
isol8_http_request_duration_seconds_bucket{route="/health",le="0.1"} 1
isol8_http_request_duration_seconds_bucket{route="/health",le="0.25"} 1
isol8_http_request_duration_seconds_bucket{route="/health",le="0.5"} 1
isol8_http_request_duration_seconds_bucket{route="/health",le="1.0"} 1
isol8_http_request_duration_seconds_bucket{route="/health",le="2.5"} 1
isol8_http_request_duration_seconds_bucket{route="/health",le="5.0"} 1
isol8_http_request_duration_seconds_bucket{route="/health",le="10.0"} 1
isol8_http_request_duration_seconds_bucket{route="/health",le="30.0"} 1
isol8_http_request_duration_seconds_bucket{route="/health",le="60.0"} 1
isol8_http_request_duration_seconds_bucket{route="/health",le="120.0"} 1
isol8_http_request_duration_seconds_bucket{route="/health",le="300.0"} 1
isol8_http_request_duration_seconds_bucket{route="/health",le="+Inf"} 1
isol8_http_request_duration_seconds_sum{route="/health"} 0.0005
isol8_http_request_duration_seconds_count{route="/health"} 1
# HELP isol8_queue_depth Executions waiting for capacity.
# TYPE isol8_queue_depth gauge
isol8_queue_depth 3.0
"""


def test_known_sequence_renders_exactly():
    """The whole text for a known sequence: names, help, label order, series order (sorted,
    so two scrapes of the same counts are byte-identical), inclusive ``le``, refused runs kept
    out of the histogram, counters as integers."""
    metrics = Metrics(routes=("/execute", "/health"))
    metrics.run_finished("python", "ephemeral", "ok", 0.005)  # on a bound: le is inclusive
    metrics.run_finished("python", "ephemeral", "error", 0.25, bytes_in=100, bytes_out=20)
    metrics.run_finished("python", "ephemeral", "oom", 1.0)
    metrics.run_finished("node", "persistent", "timeout", 301.0)  # beyond the last bound
    metrics.run_finished("bash", "ephemeral", "refused", 0.0)
    metrics.rejected("queue")
    metrics.rejected("queue")
    metrics.request("/execute", "POST", 200, 0.004)
    metrics.request("/health", "GET", 503, 0.0005)
    metrics.gauge_callback("isol8_queue_depth", "Executions waiting for capacity.", lambda: 3)
    text = metrics.render()
    assert text == EXPECTED
    parse(text)
    assert metrics.render() == text


def test_empty_metrics_expose_every_family():
    """Before any traffic every family is declared, and the counters an alert would rate()
    (timeouts, OOMs, each 429 reason, network bytes) already exist at 0."""
    families = parse(Metrics().render())
    assert list(families) == [
        "isol8_runs_total",
        "isol8_run_duration_seconds",
        "isol8_timeouts_total",
        "isol8_ooms_total",
        "isol8_rejected_total",
        "isol8_network_bytes_total",
        "isol8_http_requests_total",
        "isol8_http_request_duration_seconds",
    ]
    assert value(families, "isol8_timeouts_total") == 0
    assert value(families, "isol8_ooms_total") == 0
    for reason in REJECT_REASONS:
        assert value(families, "isol8_rejected_total", reason=reason) == 0
    assert value(families, "isol8_network_bytes_total", direction="in") == 0
    assert families["isol8_runs_total"]["samples"] == {}


# --- escaping ------------------------------------------------------------------------------

NASTY = 'a"b\\c\nd}{,="'


def test_label_values_and_help_are_escaped():
    """Backslash, double quote and newline in a label value, backslash and newline in HELP
    (where a quote stays literal): unescaped, each would end the line or the value early."""
    metrics = Metrics(routes=[NASTY])
    metrics.request(NASTY, "GET", 200, 0.001)
    metrics.gauge_callback("isol8_odd", 'say "hi" \\ then\nmore', lambda: 1)
    text = metrics.render()
    assert 'route="a\\"b\\\\c\\nd}{,=\\""' in text
    assert '# HELP isol8_odd say "hi" \\\\ then\\nmore\n' in text
    families = parse(text)
    assert value(families, "isol8_http_requests_total", route=NASTY, method="GET", code="2xx")
    assert families["isol8_odd"]["help"] == 'say "hi" \\ then\nmore'


def test_a_node_labels_every_series():
    """Several nodes behind one balancer: each series carries the node's name, counters,
    every line of a histogram and gauges alike, so summing or federating keeps them apart;
    without a node the exposition is the one above."""
    metrics = Metrics(routes=("/execute", "/health"), node=NASTY)
    metrics.run_finished("python", "ephemeral", "ok", 0.005)
    metrics.rejected("queue")
    metrics.request("/execute", "POST", 200, 0.004)
    metrics.gauge_callback("isol8_queue_depth", "Executions waiting for capacity.", lambda: 3)
    text = metrics.render()
    node = 'node="a\\"b\\\\c\\nd}{,=\\""'
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines and all(node in line for line in lines), text
    assert f"isol8_queue_depth{{{node}}} 3.0" in lines
    assert f"isol8_timeouts_total{{{node}}} 0" in lines
    assert f'isol8_run_duration_seconds_bucket{{runtime="python",mode="ephemeral",{node},' \
           'le="0.005"} 1' in lines
    families = parse(text)
    assert value(families, "isol8_rejected_total", reason="queue", node=NASTY) == 1
    assert value(families, "isol8_queue_depth", node=NASTY) == 3


@pytest.mark.parametrize("node", ["", 7])
def test_a_node_needs_a_name(node):
    with pytest.raises(ValueError, match="node must be a non-empty string"):
        Metrics(node=node)  # type: ignore[arg-type]


def test_prometheus_client_reads_the_exposition():
    """The reference parser agrees with ours, escapes included (only where installed: the
    project does not depend on prometheus_client)."""
    parser = pytest.importorskip(
        "prometheus_client.parser", reason="prometheus_client is not installed"
    )
    metrics = Metrics(routes=[NASTY, *ROUTES])
    metrics.run_finished("python", "persistent", "ok", 0.02, bytes_in=5)
    metrics.run_finished("node", "ephemeral", "timeout", 400.0)
    metrics.rejected("memory")
    metrics.request(NASTY, "DELETE", 404, 0.003)
    metrics.gauge_callback("isol8_sandboxes_alive", "Sandboxes alive.", lambda: 7)
    text = metrics.render()
    ours = parse(text)
    theirs = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert theirs["isol8_runs"].type == "counter"  # it strips _total from the family name
    assert theirs["isol8_run_duration_seconds"].type == "histogram"
    assert theirs["isol8_sandboxes_alive"].samples[0].value == 7
    routes = {s.labels["route"] for s in theirs["isol8_http_requests"].samples}
    assert routes == {NASTY}
    count = sum(len(f.samples) for f in theirs.values())
    assert count == sum(len(f["samples"]) for f in ours.values())  # type: ignore[arg-type]


# --- histograms ----------------------------------------------------------------------------


def test_buckets_are_cumulative_and_inclusive():
    """Each ``le`` bucket counts exactly the observations <= le, checked against a plain
    count for values on, between, below and beyond every bound."""
    observed = [0.0]
    for low, high in zip(RUN_DURATION_BUCKETS, RUN_DURATION_BUCKETS[1:]):
        observed += [low, (low + high) / 2]
    observed += [RUN_DURATION_BUCKETS[-1], 1e6]
    metrics = Metrics()
    for seconds in observed:
        metrics.run_finished("bash", "ephemeral", "ok", seconds)
    families = parse(metrics.render())
    for bound in RUN_DURATION_BUCKETS:
        got = value(
            families,
            "isol8_run_duration_seconds_bucket",
            runtime="bash",
            mode="ephemeral",
            le=repr(bound),
        )
        assert got == sum(1 for v in observed if v <= bound), bound
    labels = {"runtime": "bash", "mode": "ephemeral"}
    assert value(families, "isol8_run_duration_seconds_bucket", **labels, le="+Inf") == len(
        observed
    )
    assert value(families, "isol8_run_duration_seconds_sum", **labels) == pytest.approx(
        sum(observed)
    )


def test_bad_durations_count_as_zero():
    """A negative, NaN or infinite duration would make ``_sum`` useless for good; it counts
    as an observation of 0."""
    metrics = Metrics()
    for seconds in (-1.0, math.nan, math.inf):
        metrics.run_finished("python", "ephemeral", "ok", seconds)
        metrics.request("/health", "GET", 200, seconds)
    families = parse(metrics.render())
    labels = {"runtime": "python", "mode": "ephemeral"}
    assert value(families, "isol8_run_duration_seconds_sum", **labels) == 0
    assert value(families, "isol8_run_duration_seconds_bucket", **labels, le="0.005") == 3
    assert value(families, "isol8_http_request_duration_seconds_sum", route="/health") == 0


# --- bounded labels ------------------------------------------------------------------------


def test_unknown_label_values_fold_to_other():
    """A client choosing runtime names, URLs or methods must not mint series: 1000 distinct
    made-up values of each end in one "other" series per family."""
    metrics = Metrics()
    for i in range(1000):
        metrics.run_finished(f"ruby{i}", f"mode{i}", f"exploded{i}", 0.1, bytes_in=1)
        metrics.rejected(f"reason{i}")
        metrics.request(f"/session/{i}", f"BREW{i}", 100 + i, 0.1)
    families = parse(metrics.render())
    assert value(families, "isol8_runs_total", runtime="other", mode="other", outcome="other")
    assert len(families["isol8_runs_total"]["samples"]) == 1  # type: ignore[arg-type]
    assert value(families, "isol8_rejected_total", reason="other") == 1000
    requests = families["isol8_http_requests_total"]["samples"]
    assert isinstance(requests, dict)
    codes = {dict(labels)["code"] for _, labels in requests}
    assert codes == {"1xx", "2xx", "3xx", "4xx", "5xx", "other"}  # 100..1099: 600+ is other
    assert {dict(labels)["route"] for _, labels in requests} == {"other"}
    assert {dict(labels)["method"] for _, labels in requests} == {"other"}
    latency = families["isol8_http_request_duration_seconds"]["samples"]
    assert len(latency) == len(REQUEST_DURATION_BUCKETS) + 1 + 2  # type: ignore[arg-type]


def test_every_known_label_value_is_kept():
    """The fixed sets themselves pass through unchanged: every runtime isol8 has, both
    modes, every outcome, every 429 reason, every route of the server."""
    metrics = Metrics()
    for runtime in RUNTIMES:
        for mode in MODES:
            for outcome in RUN_OUTCOMES:
                metrics.run_finished(runtime, mode, outcome, 0.1)
    for reason in REJECT_REASONS:
        metrics.rejected(reason)
    for route in ROUTES:
        metrics.request(route, "GET", 200, 0.01)
    families = parse(metrics.render())
    for runtime in RUNTIMES:
        for mode in MODES:
            for outcome in RUN_OUTCOMES:
                labels = {"runtime": runtime, "mode": mode, "outcome": outcome}
                assert value(families, "isol8_runs_total", **labels) == 1
    for reason in REJECT_REASONS:
        assert value(families, "isol8_rejected_total", reason=reason) == 1
    for route in ROUTES:
        labels = {"route": route, "method": "GET", "code": "2xx"}
        assert value(families, "isol8_http_requests_total", **labels) == 1
    n = len(RUNTIMES) * len(MODES)
    assert value(families, "isol8_timeouts_total") == n
    assert value(families, "isol8_ooms_total") == n


# --- gauges --------------------------------------------------------------------------------


def test_gauges_are_read_at_each_render():
    """The server never keeps a gauge in step: the callback is read at scrape time, and one
    that raises shows NaN without costing the rest of the scrape."""
    depth = [0]
    metrics = Metrics()
    metrics.gauge_callback("isol8_queue_depth", "Waiting executions.", lambda: depth[0])
    metrics.gauge_callback("isol8_broken", "Raises.", lambda: 1 / 0)
    metrics.gauge_callback("isol8_sessions_alive", "Sessions.", lambda: 2.5)
    assert value(parse(metrics.render()), "isol8_queue_depth") == 0
    depth[0] = 41
    families = parse(metrics.render())
    assert value(families, "isol8_queue_depth") == 41
    assert math.isnan(value(families, "isol8_broken"))
    assert value(families, "isol8_sessions_alive") == 2.5
    assert list(families)[-3:] == ["isol8_queue_depth", "isol8_broken", "isol8_sessions_alive"]


def test_gauge_names_are_checked():
    """A name Prometheus cannot read, or one that would collide with an existing series,
    is refused when registered rather than breaking every later scrape."""
    metrics = Metrics()
    metrics.gauge_callback("isol8_engines_alive", "Engines.", lambda: 1)
    for bad in ("", "9lives", "has-dash", "sp ace", "isol8_queue\n"):
        with pytest.raises(ValueError, match="invalid metric name"):
            metrics.gauge_callback(bad, "x", lambda: 1)
    for taken in ("isol8_engines_alive", "isol8_runs_total", "isol8_run_duration_seconds_count"):
        with pytest.raises(ValueError, match="already registered"):
            metrics.gauge_callback(taken, "x", lambda: 1)
    parse(metrics.render())


# --- results -------------------------------------------------------------------------------


def _result(
    exit_code: int = 0, oom: bool = False, limits: tuple[str, ...] = ()
) -> ExecutionResult:
    usage = ResourceUsage(
        cpu_time_ms=1,
        cpu_percent=0.0,
        memory_mb=1.0,
        peak_memory_mb=1.0,
        oom=oom,
        enforced={},
        network_bytes_in=300,
        network_bytes_out=None,
        limits_reached=list(limits),
    )
    return ExecutionResult(
        stdout="",
        stderr="",
        exit_code=exit_code,
        duration_ms=1500,
        truncated=False,
        execution_id="e",
        runtime="node",
        timestamp="2026-01-01T00:00:00Z",
        resource_usage=usage,
    )


def test_outcome_of_a_result():
    """OOM first (the kill came before any deadline), then timeout, then the exit code."""
    assert outcome_of(_result()) == "ok"
    assert outcome_of(_result(exit_code=3)) == "error"
    assert outcome_of(_result(exit_code=137, limits=("timeout",))) == "timeout"
    assert outcome_of(_result(exit_code=137, oom=True, limits=("memory",))) == "oom"
    assert outcome_of(_result(exit_code=137, oom=True, limits=("memory", "timeout"))) == "oom"


def test_run_result_records_outcome_duration_and_bytes():
    metrics = Metrics()
    metrics.run_result(_result(exit_code=137, limits=("timeout",)), "persistent")
    families = parse(metrics.render())
    labels = {"runtime": "node", "mode": "persistent"}
    assert value(families, "isol8_runs_total", **labels, outcome="timeout") == 1
    assert value(families, "isol8_timeouts_total") == 1
    assert value(families, "isol8_run_duration_seconds_sum", **labels) == 1.5
    assert value(families, "isol8_network_bytes_total", direction="in") == 300
    assert value(families, "isol8_network_bytes_total", direction="out") == 0  # None: host


# --- threads and cost ----------------------------------------------------------------------


@pytest.fixture
def widened_race_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give up the GIL inside every update and every snapshot copy.

    CPython switches threads only at a few bytecode boundaries (calls into Python code, loop
    back-edges), so the few instructions between counting a run and adding its duration are
    practically never interleaved and a missing lock would go unseen. A ``sleep(0)`` inside
    those steps makes every unlocked window one where another thread does run.
    """
    for cls, name in (
        (metrics_module._Histogram, "observe"),
        (metrics_module._Histogram, "copy"),
        (metrics_module._Counter, "copy"),
    ):
        original = getattr(cls, name)

        def yielding(*args: object, _original: Callable[..., object] = original) -> object:
            time.sleep(0)
            return _original(*args)

        monkeypatch.setattr(cls, name, yielding)


@pytest.mark.usefixtures("widened_race_windows")
def test_concurrent_updates_add_up_exactly():
    """Four writer threads on the same series and a scraping thread: the totals are exact,
    and every scrape taken meanwhile is one instant (runs that ran == histogram count, and
    never fewer runs than timeouts)."""
    metrics = Metrics()
    writers, per_writer = 4, 1000
    stop = threading.Event()
    texts: list[str] = []
    errors: list[BaseException] = []

    def write() -> None:
        for i in range(per_writer):
            metrics.run_finished("python", "ephemeral", "timeout" if i % 2 else "ok", 0.5, 1, 2)
            metrics.rejected("queue")
            metrics.request("/execute", "POST", 200, 0.25)

    def scrape() -> None:  # render only, as often as it can; parsing comes after
        try:
            while not stop.is_set():
                texts.append(metrics.render())
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    scraper.join()
    assert not errors, errors[0]
    assert len(texts) > 10
    for text in set(texts):
        families = parse(text)
        runs = families["isol8_runs_total"]["samples"]
        hist = families["isol8_run_duration_seconds"]["samples"]
        assert isinstance(runs, dict) and isinstance(hist, dict)
        count = sum(v for (name, _), v in hist.items() if name.endswith("_count"))
        assert sum(runs.values()) == count
        assert value(families, "isol8_timeouts_total") <= count
    total = writers * per_writer
    families = parse(metrics.render())
    assert value(families, "isol8_timeouts_total") == total // 2
    assert value(families, "isol8_rejected_total", reason="queue") == total
    assert value(families, "isol8_network_bytes_total", direction="in") == total
    assert value(families, "isol8_network_bytes_total", direction="out") == 2 * total
    runs = families["isol8_runs_total"]["samples"]
    assert isinstance(runs, dict)
    assert sum(runs.values()) == total
    sums = families["isol8_run_duration_seconds"]["samples"]
    assert isinstance(sums, dict)
    assert sum(v for (name, _), v in sums.items() if name.endswith("_sum")) == 0.5 * total
    labels = {"route": "/execute", "method": "POST", "code": "2xx"}
    assert value(families, "isol8_http_requests_total", **labels) == total
    assert value(families, "isol8_http_request_duration_seconds_sum", route="/execute") == (
        0.25 * total
    )


def test_render_is_fast_whatever_the_traffic():
    """Counts are aggregated as they arrive, so a scrape costs the number of series, not of
    runs: after 10,000 runs over every label combination a render stays far under 10 ms
    (a gross-regression bound on a shared 2-core machine)."""
    metrics = Metrics()
    combos = [(r, m, o) for r in [*RUNTIMES, "zz"] for m in MODES for o in RUN_OUTCOMES]
    for i in range(10_000):
        runtime, mode, outcome = combos[i % len(combos)]
        metrics.run_finished(runtime, mode, outcome, (i % 600) / 2, i, i)
        metrics.request(ROUTES[i % len(ROUTES)], "POST", 200 + i % 400, i / 1000)
    for name in ("queue_depth", "sandboxes_alive", "engines_alive", "sessions_alive"):
        metrics.gauge_callback(f"isol8_{name}", name, lambda: 1)
    parse(metrics.render())
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        metrics.render()
        best = min(best, time.perf_counter() - start)
    assert best < 0.010, f"render took {best * 1000:.2f} ms"


# --- GET /metrics of a real server ---------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")
    from test_server import running

    with running() as srv:
        yield srv


def scrape(srv, key: str | None = None) -> tuple[str, dict[str, dict[str, object]]]:
    """(content type, families) of one scrape with the master key, each series checked for
    the node label and named without it."""
    from test_server import KEY

    request = urllib.request.Request(srv.url + "/metrics")
    request.add_header("Authorization", f"Bearer {key or KEY}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers["Content-Type"], without_node(parse(response.read().decode()))


def without_node(families: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    """``families`` with the node label (``isol8 serve --node``, else the host name) taken
    off every sample, once it is checked to be there, the same on every one."""
    nodes = set()
    for family in families.values():
        samples = family["samples"]
        assert isinstance(samples, dict)
        family["samples"] = {
            (name, tuple(pair for pair in labels if pair[0] != "node")): value
            for (name, labels), value in samples.items()
        }
        for _, labels in samples:
            assert [k for k, _ in labels].count("node") == 1, labels
            nodes |= {v for k, v in labels if k == "node"}
    assert len(nodes) == 1, nodes
    return families


def test_metrics_needs_the_master_key(server):
    """Its counts span every tenant: 401 without a key, 403 with a wrong one (an API key's
    403 is in test_an_api_key_cannot_scrape)."""
    from test_server import KEY

    assert server.call("GET", "/metrics", key=None) == (
        401,
        {"error": "Missing Authorization header"},
    )
    assert server.call("GET", "/metrics", key=KEY + "x") == (403, {"error": "Invalid API key"})
    content_type, families = scrape(server)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert families["isol8_sandboxes_alive"]["type"] == "gauge"


def test_an_api_key_cannot_scrape(tmp_path):
    pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")
    from test_server_files import AuthDbServer

    srv = AuthDbServer(tmp_path / "auth.db")
    try:
        status, created = srv.call("POST", "/auth/keys", {"name": "tenant"})
        assert status == 201, created
        status, body = srv.call("GET", "/metrics", key=created["key"])
        assert status == 403, body
    finally:
        srv.stop()


def test_requests_count_by_route_template_never_by_url(server):
    _, before = scrape(server)
    secret = "sess-" + os.urandom(6).hex()
    for _ in range(3):
        assert server.call("DELETE", f"/session/{secret}") == (200, {"ok": True})
    assert server.call("GET", f"/nope/{secret}")[0] == 404
    assert server.call("POST", "/execute", raw=b"{")[0] == 400
    assert server.call("GET", "/sessions", key=None)[0] == 401
    _, after = scrape(server)

    def delta(**labels: str) -> float:
        old: dict = before["isol8_http_requests_total"]["samples"]  # type: ignore[assignment]
        key = ("isol8_http_requests_total", tuple(labels.items()))
        return value(after, "isol8_http_requests_total", **labels) - old.get(key, 0)

    assert delta(route="/session/{id}", method="DELETE", code="2xx") == 3
    assert delta(route="other", method="GET", code="4xx") == 1
    assert delta(route="/execute", method="POST", code="4xx") == 1
    assert delta(route="/sessions", method="GET", code="4xx") == 1
    from test_server import KEY

    request = urllib.request.Request(server.url + "/metrics")
    request.add_header("Authorization", f"Bearer {KEY}")
    assert secret.encode() not in urllib.request.urlopen(request, timeout=30).read()


def test_runs_and_gauges_follow_the_server(server):
    from test_server import helpers_alive

    _, before = scrape(server)
    ok = {"runtime": "python", "mode": "persistent", "outcome": "ok"}
    runs = before["isol8_runs_total"]["samples"]
    start = runs.get(("isol8_runs_total", tuple(ok.items())), 0)  # type: ignore[union-attr]
    assert server.execute("print(1)", session="gauged")[0] == 200
    assert server.execute("print(2)", session="gauged")[0] == 200
    _, during = scrape(server)
    assert value(during, "isol8_runs_total", **ok) == start + 2
    assert value(during, "isol8_sessions_alive") >= 1
    assert value(during, "isol8_sandboxes_alive") == helpers_alive(server) >= 1
    assert server.call("POST", "/cleanup")[0] == 200
    deadline = time.monotonic() + 10
    while helpers_alive(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    _, after = scrape(server)
    assert value(after, "isol8_sessions_alive") == value(after, "isol8_engines_alive") == 0
    assert value(after, "isol8_sandboxes_alive") == helpers_alive(server) == 0


def test_websocket_sessions_are_counted_by_their_handshake(server):
    """A WebSocket counts once, when it ends: 1xx if it was accepted (101), else the HTTP
    answer that refused it; its duration runs to the close."""
    import json

    from test_server import KEY
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    _, before = scrape(server)
    url = f"ws://127.0.0.1:{server.port}/execute/ws"
    with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        ws.send(
            json.dumps({"type": "execute", "request": {"code": "print(1)", "runtime": "python"}})
        )
        events = [json.loads(ws.recv(timeout=30))]
        while events[-1]["type"] != "exit":  # output arrives in as many chunks as it likes
            events.append(json.loads(ws.recv(timeout=30)))
    with pytest.raises(InvalidStatus):
        connect(url).close()
    _, after = scrape(server)
    old = before["isol8_http_requests_total"]["samples"]
    for code in ("1xx", "4xx"):
        labels = (("route", "/execute/ws"), ("method", "GET"), ("code", code))
        now = value(after, "isol8_http_requests_total", **dict(labels))
        assert now - old.get(("isol8_http_requests_total", labels), 0) == 1, code
