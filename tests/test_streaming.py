"""execute_stream(): output as it arrives, masked and capped, then exit; early close kills."""

import time

from isol8 import Isol8, StreamEvent
from isol8.output import truncation_marker

from conftest import watching_host


def collect(events):
    return [(e.type, e.data) for e in events]


def test_chunks_arrive_while_the_process_runs(engine):
    started = time.monotonic()
    first_seen = None
    events = []
    for event in engine.execute_stream(cmd="echo first; sleep 1.5; echo second"):
        if first_seen is None:
            first_seen = time.monotonic() - started
        events.append(event)
    assert first_seen < 1.0  # the first line came long before the process ended
    assert collect(events) == [("stdout", "first\n"), ("stdout", "second\n"), ("exit", "0")]
    assert all(e.phase == "code" for e in events)


def test_events_come_in_the_order_they_were_written_across_streams(engine):
    # stdout and stderr are two pipes: their order is the order of arrival, which writes
    # 100 ms apart make certain.
    events = collect(engine.execute_stream(
        cmd="echo a; sleep 0.1; echo b >&2; sleep 0.1; echo c; sleep 0.1; echo d >&2"))
    assert events == [("stdout", "a\n"), ("stderr", "b\n"), ("stdout", "c\n"),
                      ("stderr", "d\n"), ("exit", "0")]


def test_stderr_and_the_exit_code(engine):
    events = collect(engine.execute_stream(cmd="echo out; echo err >&2; exit 7"))
    assert ("stdout", "out\n") in events and ("stderr", "err\n") in events
    assert events[-1] == ("exit", "7")


def test_timeout_gives_error_then_exit_137(engine):
    events = collect(engine.execute_stream(cmd="echo started; sleep 30", timeout_ms=500))
    assert events == [("stdout", "started\n"), ("error", "EXECUTION TIMED OUT"),
                      ("exit", "137")]


def test_the_output_cap_applies_to_streams():
    with Isol8(max_output_size=1000) as eng:
        events = collect(eng.execute_stream(cmd="head -c 100000 /dev/zero | tr '\\0' x"))
    data = "".join(d for t, d in events if t == "stdout")
    assert data == "x" * 1000 + truncation_marker(100_000, 1000)
    assert events[-1] == ("exit", "0")


def test_secrets_are_masked_even_split_across_chunks():
    with Isol8(secrets={"K": "s3cr3t-value"}) as eng:
        events = collect(eng.execute_stream(
            cmd='printf "%s" "${K:0:5}"; sleep 0.3; printf "%s\\n" "${K:5}"'))
    assert "".join(d for t, d in events if t == "stdout") == "***\n"
    assert "s3cr3" not in str(events)


def test_multibyte_characters_split_across_chunks_are_whole(engine):
    events = collect(engine.execute_stream(cmd="printf '\\xc3'; sleep 0.3; printf '\\xa9\\n'"))
    assert "".join(d for t, d in events if t == "stdout") == "é\n"


def test_stream_matches_execute(engine):
    code = "import sys\nfor i in range(50): print(i)\nprint('e', file=sys.stderr)"
    events = collect(engine.execute_stream(code))
    result = engine.execute(code)
    assert "".join(d for t, d in events if t == "stdout").rstrip() == result.stdout
    assert "".join(d for t, d in events if t == "stderr").rstrip() == result.stderr


def test_closing_the_stream_early_kills_the_run(engine):
    marker = "7071.0678"
    with watching_host(marker):  # the daemon existed, and is gone after close()
        events = engine.execute_stream(
            cmd=f"(setsid sleep {marker} &); sleep 0.3; echo go; sleep {marker}")
        assert next(events) == StreamEvent(type="stdout", data="go\n")
        events.close()


def test_events_have_upstreams_wire_form(engine):
    *_, last = engine.execute_stream(cmd="true")
    assert last.to_dict() == {"type": "exit", "data": "0", "phase": "code"}
