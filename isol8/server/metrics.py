"""Prometheus text exposition (format 0.0.4) for ``isol8 serve``'s ``GET /metrics``.

Written here rather than taken from ``prometheus_client``: the format is small and stable
(``# HELP``, ``# TYPE``, one ``name{labels} value`` line per series), and the server extra
should not grow a dependency, with its own global registry, for a few counters.

Two properties matter more than features:

* **Bounded cardinality.** Every series lives in this process and in Prometheus for as long
  as either runs, so a client must not be able to mint new ones. Each label value is taken
  from a fixed set (runtime names from ``isol8.runtimes``, the outcomes, the modes, the
  throttle reasons, the server's route templates, HTTP methods, status classes) and anything
  else is counted as ``"other"``: a request naming runtime ``"x$RANDOM"`` or a raw URL
  ``/session/<id>`` adds nothing.
* **Thread safety.** The server records from a thread pool (a run finishes in a worker
  thread) and renders on the event loop. One lock guards every update; ``render()`` copies
  the counts under it and formats outside it, so a scrape sees one consistent instant (a
  histogram's ``+Inf`` bucket always equals its ``_count``) and never blocks a worker for
  the formatting. Gauge callbacks run before the lock is taken, so a callback that takes a
  server lock cannot deadlock against a worker holding that lock while it records a run.

Interface (what the app wires)::

    metrics = Metrics()                       # routes=ROUTES by default
    metrics.gauge_callback("isol8_queue_depth", "Executions waiting for capacity.", fn)
    metrics.run_result(result, "ephemeral")   # or run_finished(runtime, mode, outcome, s)
    metrics.run_finished("python", "persistent", "refused", 0.0)
    metrics.rejected("queue")                 # every 429 answer, with its reason
    metrics.request("/execute", "POST", 200, 0.012)   # route *template*, not the URL
    Response(metrics.render(), media_type=CONTENT_TYPE)
"""

from __future__ import annotations

import math
import re
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable

from ..result import ExecutionResult
from ..runtimes import RUNTIMES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

OTHER = "other"
RUN_OUTCOMES = ("ok", "error", "timeout", "oom", "refused")
MODES = ("ephemeral", "persistent")
# why a request got 429: the concurrency queue is full, the host-wide memory or tmpfs budget
# is spent, or a per-key or global session limit is reached
REJECT_REASONS = ("queue", "memory", "tmpfs", "sessions")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# the server's route templates (Starlette's ``scope["route"].path``); a raw URL such as
# /session/abc is not one of them and counts as "other"
ROUTES = (
    "/health",
    "/execute",
    "/execute/stream",
    "/execute/ws",
    "/file",
    "/sessions",
    "/session/{id}",
    "/cleanup",
    "/auth/keys",
    "/auth/keys/{id}",
    "/auth/login",
    "/openapi.json",
    "/metrics",
    "/admin/drain",
)
# 5 ms (a warm-pool print(1)) to 5 min (the longest sensible timeout), 2x to 3x apart so a
# quantile interpolated between two bounds is never off by more than that factor
RUN_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
# one more decade below: /health and refusals answer in well under 5 ms, and the server's
# overhead target is 3 ms
REQUEST_DURATION_BUCKETS = (0.001, 0.0025) + RUN_DURATION_BUCKETS

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LabelKey = tuple[str, ...]


def _fold(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else OTHER


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else OTHER


def _escape_label(value: str) -> str:
    """The three escapes the 0.0.4 format defines for label values; nothing else is."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    """HELP text escapes backslash and newline only: a quote there is literal."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _float(value: float) -> str:
    """Go's ParseFloat spelling, which Prometheus reads: ``+Inf``, ``-Inf``, ``NaN``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(names: tuple[str, ...], values: _LabelKey, *extra: str) -> str:
    """A series' label string; ``extra`` are rendered pairs (the node's, a bucket's ``le``),
    an empty one left out."""
    pairs = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values)]
    pairs += [pair for pair in extra if pair]
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _seconds(value: float) -> float:
    """A negative, NaN or infinite duration counts as 0: one bad reading must not poison a
    histogram's ``_sum`` for the life of the process."""
    return value if math.isfinite(value) and value > 0 else 0.0


def outcome_of(result: ExecutionResult) -> str:
    """The run outcome of a finished execution.

    An OOM kill is named before a timeout, since the kill ended the run before the deadline
    could; "error" is any other non-zero exit.
    """
    usage = result.resource_usage
    if usage.oom:
        return "oom"
    if "timeout" in usage.limits_reached:
        return "timeout"
    return "ok" if result.exit_code == 0 else "error"


class _Counter:
    """A labelled counter; a series' label string is built once, at its first sample."""

    def __init__(
        self,
        name: str,
        help_text: str,
        label_names: tuple[str, ...] = (),
        initial: Iterable[_LabelKey] = ((),),
        const: str = "",
    ) -> None:
        self.name, self.help, self.label_names, self.const = name, help_text, label_names, const
        self.values: dict[_LabelKey, int] = {}
        self.labels: dict[_LabelKey, str] = {}
        # series known in advance are exposed at 0 from the start, so that an alert on their
        # rate() works before the first event instead of seeing no series at all
        for key in initial:
            self.inc(key, 0)

    def inc(self, key: _LabelKey, amount: int = 1) -> None:
        if key not in self.values:
            self.labels[key] = _labels(self.label_names, key, self.const)
            self.values[key] = 0
        self.values[key] += amount

    def copy(self) -> _Counter:
        twin = _Counter(self.name, self.help, self.label_names, (), self.const)
        twin.values, twin.labels = dict(self.values), self.labels.copy()
        return twin

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {_escape_help(self.help)}\n# TYPE {self.name} counter\n")
        for key in sorted(self.values):
            out.append(f"{self.name}{self.labels[key]} {self.values[key]}\n")


class _Histogram:
    """A labelled histogram: per-bucket counts, made cumulative only when rendered."""

    def __init__(
        self,
        name: str,
        help_text: str,
        label_names: tuple[str, ...],
        bounds: tuple[float, ...],
        const: str = "",
    ) -> None:
        self.name, self.help, self.label_names, self.bounds = name, help_text, label_names, bounds
        self.const = const
        self.les = [_float(b) for b in bounds] + ["+Inf"]
        # per series: one count per bound and a last one for +Inf, and the sum
        self.counts: dict[_LabelKey, list[int]] = {}
        self.sums: dict[_LabelKey, float] = {}
        # per series: the label string of _sum/_count and one per bucket line
        self.labels: dict[_LabelKey, tuple[str, list[str]]] = {}

    def observe(self, key: _LabelKey, value: float) -> None:
        if key not in self.counts:
            self.counts[key] = [0] * len(self.les)
            self.sums[key] = 0.0
            buckets = [_labels(self.label_names, key, self.const, f'le="{le}"')
                       for le in self.les]
            self.labels[key] = (_labels(self.label_names, key, self.const), buckets)
        self.counts[key][bisect_left(self.bounds, value)] += 1  # le is inclusive (<=)
        self.sums[key] += value

    def copy(self) -> _Histogram:
        twin = _Histogram(self.name, self.help, self.label_names, self.bounds, self.const)
        twin.counts = {key: list(counts) for key, counts in self.counts.items()}
        twin.sums, twin.labels = dict(self.sums), self.labels.copy()
        return twin

    def render(self, out: list[str]) -> None:
        name = self.name
        out.append(f"# HELP {name} {_escape_help(self.help)}\n# TYPE {name} histogram\n")
        for key in sorted(self.counts):
            labels, buckets = self.labels[key]
            running = 0
            for bucket, count in zip(buckets, self.counts[key]):
                running += count
                out.append(f"{name}_bucket{bucket} {running}\n")
            out.append(f"{name}_sum{labels} {_float(self.sums[key])}\n")
            out.append(f"{name}_count{labels} {running}\n")


class Metrics:
    """Every metric ``isol8 serve`` exposes, safe to update from any thread.

    ``routes`` are the route templates the app serves (default ``ROUTES``); requests on any
    other path count under route "other". ``node`` names this server among many: every
    series then carries ``node="<name>"``, so series of several nodes stay apart once they
    are summed up or federated, whatever the scrape's own target labels.
    """

    def __init__(self, routes: Iterable[str] = ROUTES, *, node: str | None = None) -> None:
        if node is not None and (not isinstance(node, str) or not node):
            raise ValueError(f"Metrics: node must be a non-empty string, got {node!r}")
        node_label = "" if node is None else f'node="{_escape_label(node)}"'
        self._gauge_labels = "{" + node_label + "}" if node_label else ""
        self._lock = threading.Lock()
        self._runtimes = frozenset(RUNTIMES)
        self._outcomes = frozenset(RUN_OUTCOMES)
        self._modes = frozenset(MODES)
        self._reasons = frozenset(REJECT_REASONS)
        self._methods = frozenset(HTTP_METHODS)
        self._routes = frozenset(routes)
        self._runs = _Counter(
            "isol8_runs_total",
            "Executions finished, by runtime, mode and outcome (ok, error = non-zero exit or"
            " failure, timeout, oom, refused = never started).",
            ("runtime", "mode", "outcome"),
            (),
            node_label,
        )
        self._durations = _Histogram(
            "isol8_run_duration_seconds",
            "Wall time of executions that ran (refused ones are left out).",
            ("runtime", "mode"),
            RUN_DURATION_BUCKETS,
            node_label,
        )
        self._timeouts = _Counter(
            "isol8_timeouts_total", "Executions killed at their timeout.", const=node_label
        )
        self._ooms = _Counter(
            "isol8_ooms_total", "Executions killed by the OOM killer.", const=node_label
        )
        self._rejected = _Counter(
            "isol8_rejected_total",
            "Requests answered 429 Too Many Requests, by the limit that was reached.",
            ("reason",),
            [(reason,) for reason in REJECT_REASONS],
            node_label,
        )
        self._network = _Counter(
            "isol8_network_bytes_total",
            "Bytes the filtered network proxy moved for executions (in = to the sandbox).",
            ("direction",),
            [("in",), ("out",)],
            node_label,
        )
        self._requests = _Counter(
            "isol8_http_requests_total",
            "HTTP requests answered, by route template, method and status class.",
            ("route", "method", "code"),
            (),
            node_label,
        )
        self._latency = _Histogram(
            "isol8_http_request_duration_seconds",
            "Time from request to response (to the end of the stream for SSE and WebSocket).",
            ("route",),
            REQUEST_DURATION_BUCKETS,
            node_label,
        )
        self._families: tuple[_Counter | _Histogram, ...] = (
            self._runs,
            self._durations,
            self._timeouts,
            self._ooms,
            self._rejected,
            self._network,
            self._requests,
            self._latency,
        )
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def gauge_callback(self, name: str, help_text: str, fn: Callable[[], float]) -> None:
        """Expose ``fn()`` as a gauge, read at each scrape.

        Read at render time so the server never has to keep a copy in step with its queue,
        pool or session table. ``fn`` runs on the scraping thread (the event loop), so it
        must be cheap and must not block.
        """
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}: must match [a-zA-Z_:][a-zA-Z0-9_:]*")
        taken = {family.name for family in self._families} | {
            family.name + suffix
            for family in self._families
            if isinstance(family, _Histogram)
            for suffix in ("_bucket", "_sum", "_count")
        }
        with self._lock:
            if name in taken or name in self._gauges:
                raise ValueError(f"metric {name!r} is already registered")
            self._gauges[name] = (help_text, fn)

    def run_finished(
        self,
        runtime: str,
        mode: str,
        outcome: str,
        duration_s: float,
        bytes_in: int | None = 0,
        bytes_out: int | None = 0,
    ) -> None:
        """Count one execution; a refused one adds no duration, since it never ran.

        ``bytes_in``/``bytes_out`` are the result's ``network_bytes_in``/``_out`` (None with
        the host network, which nothing counts).
        """
        runtime = _fold(runtime, self._runtimes)
        mode = _fold(mode, self._modes)
        outcome = _fold(outcome, self._outcomes)
        duration_s = _seconds(duration_s)
        with self._lock:
            self._runs.inc((runtime, mode, outcome))
            if outcome != "refused":
                self._durations.observe((runtime, mode), duration_s)
            if outcome == "timeout":
                self._timeouts.inc(())
            elif outcome == "oom":
                self._ooms.inc(())
            if bytes_in and bytes_in > 0:
                self._network.inc(("in",), bytes_in)
            if bytes_out and bytes_out > 0:
                self._network.inc(("out",), bytes_out)

    def run_result(self, result: ExecutionResult, mode: str) -> None:
        """Count a finished execution from its result: outcome, duration and network bytes."""
        usage = result.resource_usage
        self.run_finished(
            result.runtime,
            mode,
            outcome_of(result),
            result.duration_ms / 1000,
            usage.network_bytes_in,
            usage.network_bytes_out,
        )

    def rejected(self, reason: str) -> None:
        """Count one 429 answer; ``reason`` is one of ``REJECT_REASONS``."""
        key = (_fold(reason, self._reasons),)
        with self._lock:
            self._rejected.inc(key)

    def request(self, route: str, method: str, status: int, duration_s: float) -> None:
        """Count one HTTP answer; ``route`` is the matched template, e.g. ``/session/{id}``."""
        route = _fold(route, self._routes)
        method = _fold(method, self._methods)
        code = _status_class(status)
        with self._lock:
            self._requests.inc((route, method, code))
            self._latency.observe((route,), _seconds(duration_s))

    def render(self) -> str:
        """The whole exposition, from one consistent snapshot of the counts."""
        with self._lock:
            gauges = list(self._gauges.items())
        values = []
        for name, (help_text, fn) in gauges:
            try:
                value = float(fn())
            except Exception:  # a broken gauge must not cost the operator the whole scrape
                value = math.nan
            values.append((name, help_text, value))
        with self._lock:
            families = [family.copy() for family in self._families]
        out: list[str] = []
        for family in families:
            family.render(out)
        for name, help_text, value in values:
            out.append(f"# HELP {name} {_escape_help(help_text)}\n# TYPE {name} gauge\n")
            out.append(f"{name}{self._gauge_labels} {_float(value)}\n")
        return "".join(out)
