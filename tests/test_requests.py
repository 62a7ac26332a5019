"""Bad input gets a clear error before anything runs; results keep upstream's wire shape."""

import re

import pytest

from isol8 import InvalidRequest, Isol8
from isol8.policy import parse_size


def test_code_and_cmd_are_mutually_exclusive(engine):
    with pytest.raises(InvalidRequest, match="mutually exclusive — provide exactly one"):
        engine.execute("print(1)", cmd="echo 1")


@pytest.mark.parametrize("kw", [{}, {"code": "   "}, {"cmd": ""}])
def test_one_source_is_required(engine, kw):
    with pytest.raises(InvalidRequest, match="must include exactly one of: code, codeUrl, or cmd"):
        engine.execute(**kw)


@pytest.mark.parametrize("kw, field", [
    ({"timeout_ms": 0}, "timeout_ms"), ({"timeout_ms": "5"}, "timeout_ms"),
    ({"network": "everywhere"}, "network"), ({"sandbox_size": "lots"}, "sandbox_size"),
    ({"tmp_size": -1}, "tmp_size"), ({"max_output_size": True}, "max_output_size"),
    ({"seccomp": "off"}, "seccomp"), ({"uid_range": (0, 10)}, "uid_range"),
])
def test_bad_engine_options(kw, field):
    with pytest.raises(InvalidRequest, match=field):
        Isol8(**kw)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError):
        Isol8(memory="1g")


def test_bad_file_extension(engine):
    with pytest.raises(InvalidRequest, match="file_extension"):
        engine.execute("1", runtime="node", file_extension="../x")


@pytest.mark.parametrize("text, size", [("512m", 512 << 20), ("1.5g", 3 << 29), ("64k", 65536),
                                        ("100", 100), ("2GB", 2 << 30), (4096, 4096)])
def test_parse_size(text, size):
    assert parse_size(text, "f") == size


def test_result_wire_form(engine):
    r = engine.execute("print('hi')")
    wire = r.to_dict()
    assert list(wire) == ["stdout", "stderr", "exitCode", "durationMs", "truncated",
                          "executionId", "runtime", "timestamp", "resourceUsage"]
    assert set(wire["resourceUsage"]) == {"cpuPercent", "memoryMB", "peakMemoryMB",
                                          "networkBytesIn", "networkBytesOut", "cpuTimeMs",
                                          "oom", "enforced", "limitsReached"}
    assert wire["resourceUsage"]["limitsReached"] == []
    assert wire["stdout"] == "hi" and wire["exitCode"] == 0 and wire["truncated"] is False
    assert re.fullmatch(r"[0-9a-f-]{36}", wire["executionId"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", wire["timestamp"])
    assert 0 <= wire["durationMs"] < 10_000


def test_duration_covers_the_code():
    r = Isol8().execute("import time; time.sleep(0.4)")
    assert 400 <= r.duration_ms < 5000


def test_upstream_defaults_are_what_the_sandbox_gets(engine):
    opts = Isol8().options
    assert (opts.timeout_ms, opts.max_output_size, opts.network) == (30_000, 1 << 20, "none")
    r = engine.execute(cmd="df -B1 --output=size /sandbox /tmp | tail -n +2")
    assert [int(x) for x in r.stdout.split()] == [512 << 20, 256 << 20]
