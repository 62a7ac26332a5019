"""RemoteIsol8 and AsyncRemoteIsol8 against a real `isol8 serve` on loopback: every method,
the local engine's results, events and exceptions, both streaming transports, and retries
only where they are safe."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from conftest import host_processes_matching
from isol8 import (ExecutionResult, InvalidRequest, Isol8, Isol8Error, SessionLost,
                   SetupScriptFailed, StreamEvent)

pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")
pytest.importorskip("httpx2", reason="the client extra (isol8[client]) is not installed")

from isol8.client import (AsyncRemoteIsol8, AuthenticationError, CapacityExceeded,  # noqa: E402
                          OptionsConflict, RemoteConnectionError, RemoteExecutionResult,
                          RemoteFileNotFound, RemoteIsol8, RemoteTimeout, SessionNotFound)
from isol8.client import remote as remote_module  # noqa: E402
from isol8.client import transport as transport_module  # noqa: E402
from isol8.client import wire  # noqa: E402
from test_server import KEY, Server, running  # noqa: E402


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running() as srv:
        yield srv


@pytest.fixture(scope="module")
def local() -> Iterator[Isol8]:
    with Isol8() as engine:
        yield engine


class Blocking:
    """An AsyncRemoteIsol8 driven by synchronous test code, on one event loop of its own,
    so that every test runs against both clients."""

    def __init__(self, **kwargs: object) -> None:
        self._runner = asyncio.Runner()
        self.client = AsyncRemoteIsol8(**kwargs)  # type: ignore[arg-type]

    def __getattr__(self, name: str):
        attr = getattr(self.client, name)
        if name == "execute_stream":
            return lambda *a, **k: self._runner.run(_collected(attr(*a, **k)))
        if callable(attr):
            return lambda *a, **k: self._runner.run(attr(*a, **k))
        return attr

    def __enter__(self) -> "Blocking":
        self._runner.run(self.client.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._runner.run(self.client.stop())
        finally:
            self._runner.close()


async def _collected(events) -> list[StreamEvent]:
    async with contextlib.aclosing(events):
        return [event async for event in events]


@pytest.fixture(params=["sync", "async"])
def connect(request, server):
    """``connect(**options)``: a started client of the parametrized kind, stopped after."""
    made = []

    def make(*, srv: Server = server, key: str | None = KEY, **options):
        cls = RemoteIsol8 if request.param == "sync" else Blocking
        client = cls(host=srv.url, api_key=key, **options)
        made.append(client)
        return client.__enter__()

    yield make
    for client in reversed(made):
        with contextlib.suppress(Exception):
            client.__exit__(None, None, None)


def _comparable(result: ExecutionResult) -> dict:
    wire_form = result.to_dict()
    for key in ("executionId", "timestamp", "durationMs"):
        wire_form.pop(key)
    usage = wire_form.pop("resourceUsage")
    return {**wire_form, "enforced": usage["enforced"], "oom": usage["oom"],
            "limitsReached": usage["limitsReached"]}


PROGRAM = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"


# -- execute: the local engine's results ----------------------------------------------------

def test_execute_gives_the_local_engines_result(connect, local):
    client = connect()
    result = client.execute(PROGRAM)
    assert isinstance(result, ExecutionResult) and isinstance(result, RemoteExecutionResult)
    assert _comparable(result) == _comparable(local.execute(PROGRAM))
    assert (result.stdout, result.stderr, result.exit_code) == ("out", "err", 3)
    assert result.clamped == [] and "clamped" not in result.to_dict()


def test_execute_sends_every_request_field(connect, local):
    binary = bytes(range(256))  # not UTF-8: travels as a Node Buffer
    fields = dict(cmd='cat; echo "$GREETING"; pwd; cat /sandbox/in.txt; echo; ls /sandbox/sub',
                  stdin=b"from stdin ", env={"GREETING": "hi"}, workdir="sub",
                  files={"/sandbox/in.txt": "a file", "/sandbox/sub/b.bin": binary},
                  output_paths=["/sandbox/sub/b.bin"], timeout_ms=10_000,
                  setup_script="echo setup > /sandbox/sub/made")
    result = connect().execute(**fields)
    assert result.stdout == "from stdin hi\n/sandbox/sub\na file\nb.bin\nmade", result
    assert _comparable(result) == _comparable(local.execute(**fields))


def test_a_failed_setup_script_raises_setup_script_failed(connect, local):
    with pytest.raises(SetupScriptFailed) as remote_failure:
        connect().execute("print(1)", setup_script="echo no >&2; exit 7")
    with pytest.raises(SetupScriptFailed) as local_failure:
        local.execute("print(1)", setup_script="echo no >&2; exit 7")
    remote_exc, local_exc = remote_failure.value, local_failure.value
    assert (str(remote_exc), remote_exc.reason, remote_exc.exit_code, remote_exc.stderr) == (
        str(local_exc), local_exc.reason, local_exc.exit_code, local_exc.stderr)
    assert remote_exc.status == 400


def test_clamped_options_are_reported(connect, tmp_path):
    config = tmp_path / "policy.toml"
    config.write_text("[ceilings]\ntimeoutMs = 1500\n")
    with running(config) as strict:
        result = connect(srv=strict, timeout_ms=60_000).execute("print(1)")
    assert result.stdout == "1"
    assert result.clamped == [{"field": "options.timeoutMs", "requested": 60_000,
                               "applied": 1500}]
    assert result.to_dict()["clamped"] == result.clamped


# -- streaming, over both transports --------------------------------------------------------

STREAMED = ("import sys, time\nprint('a', flush=True)\ntime.sleep(0.2)\n"
            "print('b', file=sys.stderr, flush=True)\nsys.exit(5)")


def _joined(events: list[StreamEvent]) -> list[tuple[str, str, str]]:
    """Events with consecutive output of one stream joined: chunking is timing."""
    out: list[tuple[str, str, str]] = []
    for event in events:
        if out and event.type in ("stdout", "stderr") and out[-1][:2] == (event.type,
                                                                           event.phase):
            out[-1] = (event.type, event.phase, out[-1][2] + event.data)
        else:
            out.append((event.type, event.phase, event.data))
    return out


@pytest.mark.parametrize("streaming", ["websocket", "sse", "auto"])
def test_stream_gives_the_local_engines_events(connect, local, streaming):
    events = list(connect(streaming=streaming).execute_stream(STREAMED))
    assert all(isinstance(e, StreamEvent) for e in events)
    assert _joined(events) == _joined(list(local.execute_stream(STREAMED))) == [
        ("stdout", "code", "a\n"), ("stderr", "code", "b\n"), ("exit", "code", "5")]


@pytest.mark.parametrize("streaming", ["websocket", "sse"])
def test_stream_timeout_and_setup_failure_events(connect, local, streaming):
    client = connect(streaming=streaming)
    timed_out = list(client.execute_stream("import time; time.sleep(30)", timeout_ms=500))
    assert _joined(timed_out) == [("error", "code", "EXECUTION TIMED OUT"),
                                  ("exit", "code", "137")]
    assert timed_out[-1].limits_reached == ["timeout"]
    failed = list(client.execute_stream("print(1)", setup_script="echo s; exit 4"))
    assert _joined(failed) == _joined(list(local.execute_stream(
        "print(1)", setup_script="echo s; exit 4")))
    assert failed[-2:] == [StreamEvent(type="error", data="Setup script failed (exit code 4)",
                                       phase="setup"),
                           StreamEvent(type="exit", data="4", phase="setup")]


@pytest.mark.parametrize("streaming", ["websocket", "sse"])
def test_stream_runs_in_the_session(connect, streaming):
    """Upstream's client drops sessionId from its WebSocket message (isol8-api.md §1.11):
    its WS streams never ran in the session. Here both transports do."""
    client = connect(session_id=f"stream-{streaming}", streaming=streaming)
    events = list(client.execute_stream(cmd="echo kept > /sandbox/mark; echo ok"))
    assert _joined(events)[0] == ("stdout", "code", "ok\n")
    assert client.execute(cmd="cat /sandbox/mark").stdout == "kept"


def test_auto_streams_over_the_websocket(server, monkeypatch):
    used = []
    for name in ("websocket", "sse"):
        original = getattr(transport_module.Transport, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            used.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(transport_module.Transport, name, spy)
    with RemoteIsol8(host=server.url, api_key=KEY) as client:
        assert list(client.execute_stream("print(1)"))[-1].data == "0"
    assert used == ["websocket"]


def test_auto_falls_back_to_sse_when_the_websocket_is_refused(server, monkeypatch):
    """A WebSocket upgrade the server refuses (here: a path it has no route for) is retried
    over SSE for that call; a route the server lacks (404, 405, 426, 501: an older or
    proxied server) turns the WebSocket off for the client."""
    monkeypatch.setattr(remote_module, "WS_PATH", "/execute/no-such-socket")
    with RemoteIsol8(host=server.url, api_key=KEY) as client:
        events = list(client.execute_stream("print(1)"))
        assert _joined(events) == [("stdout", "code", "1\n"), ("exit", "code", "0")]
        assert client._websocket  # refused, not missing: tried again next time
    with RemoteIsol8(host=server.url, api_key=KEY, streaming="websocket") as client:
        with pytest.raises(Isol8Error):
            list(client.execute_stream("print(1)"))
    assert transport_module._refused.__name__  # the decision table below
    for status, missing in ((404, True), (405, True), (426, True), (501, True),
                            (403, False), (429, False), (401, False), (200, True)):
        assert _upgrade_refusal(status).websocket_missing is missing, status


def _upgrade_refusal(status: int):
    class Response:
        status_code = status

    class Upgrade(transport_module.WebSocketUpgradeError):
        def __init__(self) -> None:
            self.response = Response()

    return transport_module._refused(Upgrade())


@pytest.mark.parametrize("streaming", ["websocket", "sse"])
def test_leaving_a_stream_early_kills_the_run(server, streaming):
    """Closing the iterator closes the connection, and the server kills the run."""
    marker = f"3{len(streaming)}71.0423"
    with RemoteIsol8(host=server.url, api_key=KEY, streaming=streaming) as client:
        events = client.execute_stream(cmd=f"echo started; sleep {marker}; echo never",
                                       timeout_ms=60_000)
        assert next(events).data == "started\n"
        assert host_processes_matching(f"sleep {marker}")
        events.close()
    deadline = time.monotonic() + 10
    while host_processes_matching(f"sleep {marker}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host_processes_matching(f"sleep {marker}") == []


def test_leaving_an_async_stream_early_kills_the_run(server):
    marker = "3571.0424"

    async def main() -> str:
        async with AsyncRemoteIsol8(host=server.url, api_key=KEY) as client:
            async with contextlib.aclosing(client.execute_stream(
                    cmd=f"echo started; sleep {marker}", timeout_ms=60_000)) as events:
                async for event in events:
                    return event.data
        return ""

    assert asyncio.run(main()) == "started\n"
    deadline = time.monotonic() + 10
    while host_processes_matching(f"sleep {marker}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host_processes_matching(f"sleep {marker}") == []


# -- sessions and files ---------------------------------------------------------------------

def test_session_files_list_and_stop(connect):
    client = connect(session_id="files-1")
    assert client.session_id == "files-1"
    client.execute("print('starts the sandbox')")
    binary = bytes(range(256)) * 300
    client.put_file("/sandbox/data.bin", binary)
    client.put_file("/tmp/text.txt", "text é")
    assert client.get_file("/sandbox/data.bin") == binary
    assert client.get_file("/tmp/text.txt") == "text é".encode()
    assert client.execute(cmd="sha256sum < /sandbox/data.bin").stdout.split()[0] == \
        __import__("hashlib").sha256(binary).hexdigest()
    with pytest.raises(RemoteFileNotFound):
        client.get_file("/sandbox/missing")
    with pytest.raises(InvalidRequest):
        client.get_file("relative/path")
    listed = {s.id: s for s in client.list_sessions()}
    assert "files-1" in listed and listed["files-1"].is_active is False
    assert listed["files-1"].last_accessed_at > (time.time() - 600) * 1000
    client.stop()
    assert "files-1" not in {s.id for s in connect().list_sessions()}


def test_files_need_a_session_as_locally(connect):
    """Locally: "No active container" outside persistent mode; remotely the same type."""
    client = connect()
    with pytest.raises(Isol8Error, match="needs a session"):
        client.put_file("/sandbox/x", b"x")
    with pytest.raises(Isol8Error, match="needs a session"):
        client.get_file("/sandbox/x")
    with pytest.raises(SessionNotFound) as missing:
        connect(session_id="never-started").get_file("/sandbox/x")
    assert missing.value.status == 404


def test_delete_session_is_idempotent_and_per_key(connect):
    client = connect(session_id="to-delete")
    client.execute("print(1)")
    client.delete_session("to-delete")
    client.delete_session("to-delete")
    assert "to-delete" not in {s.id for s in client.list_sessions()}


# -- the local engine's exceptions, and typed remote ones -----------------------------------

def test_missing_and_wrong_keys(connect, monkeypatch):
    monkeypatch.delenv("ISOL8_API_KEY", raising=False)
    with pytest.raises(AuthenticationError, match="ISOL8_API_KEY") as missing:
        connect(key=None).execute("print(1)")
    assert missing.value.status == 401
    with pytest.raises(AuthenticationError, match="Invalid API key") as wrong:
        connect(key=KEY + "x").execute("print(1)")
    assert wrong.value.status == 403
    with pytest.raises(AuthenticationError):
        list(connect(key=KEY + "x").execute_stream("print(1)"))
    monkeypatch.setenv("ISOL8_API_KEY", KEY)
    assert connect(key=None).execute("print(1)").stdout == "1"


@pytest.mark.parametrize("options, fields, field", [
    ({"network": "host"}, {}, "options.network"),
    ({"timeout_ms": -5}, {}, "options.timeoutMs"),
    ({}, {"env": {"A": 1}}, "request.env.A"),
    ({}, {"runtime": "cobol"}, None),
])
def test_a_refused_request_is_invalid_request_naming_the_field(connect, options, fields,
                                                                 field):
    client = connect(**options)
    with pytest.raises(InvalidRequest) as refused:
        client.execute("print(1)", **fields)
    assert refused.value.status == 400 and refused.value.field == field
    with pytest.raises(InvalidRequest) as streamed:
        list(client.execute_stream("print(1)", **fields))
    assert str(streamed.value) == str(refused.value)


def test_options_the_wire_cannot_carry_are_refused_before_sending(server):
    for options, match in (({"uid_range": (1, 2)}, "uid_range: a setting of the server"),
                           ({"memory_limt": "1g"}, "memory_limt: unknown option"),
                           ({"mode": "persistent"}, "mode: a remote engine is persistent"),
                           ({"streaming": "carrier-pigeon"}, "streaming: expected one of")):
        with pytest.raises(InvalidRequest, match=match):
            RemoteIsol8(host=server.url, api_key=KEY, **options)
    with pytest.raises(InvalidRequest, match="host: expected a URL"):
        RemoteIsol8(host="127.0.0.1:3000", api_key=KEY)
    with pytest.raises(InvalidRequest, match="unknown request field"):
        RemoteIsol8(host=server.url, api_key=KEY).execute("print(1)", timeout=5)
    with pytest.raises(InvalidRequest, match="stdin: the wire carries stdin as text"):
        RemoteIsol8(host=server.url, api_key=KEY).execute("print(1)", stdin=b"\xff")


def test_a_session_with_other_options_is_options_conflict(connect):
    connect(session_id="conflict", memory_limit="256m").execute("print(1)")
    client = connect(session_id="conflict", memory_limit="128m")
    with pytest.raises(OptionsConflict) as conflict:
        client.execute("print(1)")
    assert conflict.value.status == 409 and conflict.value.fields == ["options.memoryLimit"]
    with pytest.raises(OptionsConflict):
        list(client.execute_stream("print(1)"))


def test_a_lost_session_is_session_lost_then_starts_afresh(connect):
    """A REPL session whose interpreter exits loses its variables: 410, as the local
    engine's SessionLost; the next call starts a new session."""
    client = connect(session_id="lost", repl=True)
    assert client.execute("x = 42; print(x)").stdout == "42"
    with pytest.raises(SessionLost) as lost:
        client.execute("import os; os._exit(0)")
    assert lost.value.status == 410
    assert client.execute("print('x' in globals())").stdout == "False"


def test_a_remote_timeout_is_remote_timeout(connect):
    client = connect(http_timeout=1)
    started = time.monotonic()
    with pytest.raises(RemoteTimeout) as timed_out:
        client.execute(cmd="sleep 4", timeout_ms=10_000)
    assert isinstance(timed_out.value, TimeoutError)
    assert time.monotonic() - started < 3.5
    with pytest.raises(RemoteTimeout):
        list(client.execute_stream(cmd="sleep 4", timeout_ms=10_000))


# -- retries: only where safe ---------------------------------------------------------------

def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_only_gets_are_retried_after_a_broken_connection(monkeypatch):
    sent = []
    original = transport_module.Transport.send

    def spy(self, call, timeout):
        sent.append(call.method)
        return original(self, call, timeout)

    monkeypatch.setattr(transport_module.Transport, "send", spy)
    client = RemoteIsol8(host=_dead_url(), api_key=KEY, max_retries=2)
    try:
        with pytest.raises(RemoteConnectionError):
            client.list_sessions()
        assert sent == ["GET"] * 3
        sent.clear()
        with pytest.raises(RemoteConnectionError):
            client.execute("print(1)")
        with pytest.raises(RemoteConnectionError):
            client.delete_session("x")
        assert sent == ["POST", "DELETE"]
    finally:
        client.stop()


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory) -> Iterator[Server]:
    """One execution at a time and no queue: the second concurrent run is a 429 at once."""
    config = tmp_path_factory.mktemp("capacity") / "policy.toml"
    config.write_text("[capacity]\nmaxConcurrent = 1\nmaxQueue = 0\nretryAfterS = 1\n")
    with running(config) as srv:
        yield srv


@contextlib.contextmanager
def _busy(srv: Server, seconds: float) -> Iterator[None]:
    """The server's one slot taken by a run of ``seconds``."""
    done = threading.Event()
    holder = threading.Thread(target=lambda: (srv.execute(f"import time; time.sleep({seconds})"),
                                              done.set()))
    holder.start()
    deadline = time.monotonic() + 10
    while not srv.descendants() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # admitted and running
    try:
        yield
    finally:
        holder.join()


@pytest.mark.parametrize("streaming", [None, "websocket", "sse"])
def test_429_is_capacity_exceeded_with_retry_after(connect, one_slot, streaming):
    client = connect(srv=one_slot, max_retries=0, streaming=streaming or "auto")
    with _busy(one_slot, 1.5):
        with pytest.raises(CapacityExceeded) as refused:
            if streaming is None:
                client.execute("print(1)")
            else:
                list(client.execute_stream("print(1)"))
    assert refused.value.status == 429 and refused.value.retry_after == 1.0


@pytest.mark.parametrize("streaming", [None, "websocket", "sse"])
def test_429_is_retried_after_retry_after(connect, one_slot, streaming):
    """A 429 was refused before anything ran: repeating it is safe, after Retry-After."""
    client = connect(srv=one_slot, max_retries=10, streaming=streaming or "auto")
    with _busy(one_slot, 1.2):
        started = time.monotonic()
        if streaming is None:
            assert client.execute("print(1)").stdout == "1"
        else:
            assert _joined(list(client.execute_stream("print(1)")))[0][2] == "1\n"
        assert time.monotonic() - started >= 0.9  # waited at least one Retry-After


def test_429_beyond_max_retry_wait_is_not_waited_for():
    core = wire.Core("http://127.0.0.1:1", KEY, None, {}, max_retry_wait=5)
    call = core.execute("print(1)", {})
    answer = wire.Answer(429, {"retry-after": "60"}, b'{"error": "busy"}')
    assert core.retry_delay(call, 0, answer) is None
    assert core.retry_delay(call, 0, wire.Answer(429, {"retry-after": "2"}, b"")) == 2.0
    assert core.retry_delay(call, 0, wire.Answer(429, {}, b"")) is None  # no Retry-After
    assert core.retry_delay(call, 3, wire.Answer(429, {"retry-after": "2"}, b"")) is None
    assert core.retry_delay(call, 0, wire.Answer(503, {}, b"")) is None  # a POST
    assert core.retry_delay(core.sessions(), 0, wire.Answer(503, {}, b"")) == 0.2
    assert core.retry_delay(core.sessions(), 0, wire.Answer(500, {}, b"")) is None


# -- the wire tables ------------------------------------------------------------------------

def test_the_wire_tables_match_the_servers():
    from isol8.server import wire as server_wire

    assert {camel for camel, (snake, _) in server_wire.OPTION_FIELDS.items() if snake} == \
        set(wire.OPTION_NAMES.values())
    assert {snake: camel for camel, (snake, _) in server_wire.OPTION_FIELDS.items()
            if snake and snake != "seccomp"} == {
        k: v for k, v in wire.OPTION_NAMES.items() if k != "seccomp"}
    assert {snake: camel for camel, (snake, _) in server_wire.REQUEST_FIELDS.items()} == \
        wire.REQUEST_NAMES
    assert {snake: camel for camel, snake in server_wire.FILTER_FIELDS.items()} == \
        wire.FILTER_NAMES


def test_a_result_reads_back_from_its_wire_form(local):
    result = local.execute("print(1)", output_paths=["/etc/hostname"])
    assert wire.result_from_wire(result.to_dict()) == \
        RemoteExecutionResult(**{f: getattr(result, f) for f in result.__dataclass_fields__})


def test_the_package_exports_what_it_lists():
    import isol8.client

    assert set(isol8.client.__all__) <= set(dir(isol8.client))


def test_upstreams_shapes_read_back():
    """Upstream's server: ``resourceUsage`` only with auditing on, failures as an error
    event without a phase; isol8's adds status and errorType to the event."""
    result = wire.result_from_wire({
        "stdout": "256", "stderr": "", "exitCode": 0, "durationMs": 40, "truncated": False,
        "executionId": "e", "runtime": "python", "timestamp": "2026-01-01T00:00:00.000Z"})
    assert (result.stdout, result.resource_usage.enforced, result.clamped) == ("256", {}, [])
    with pytest.raises(wire.RemoteError, match="not an ExecutionResult"):
        wire.result_from_wire({"stdout": "x"})
    assert wire.event_from_wire('{"type": "stdout", "data": "a"}') == StreamEvent(
        type="stdout", data="a", phase="code")
    with pytest.raises(wire.Rejected) as upstream_failure:
        wire.event_from_wire('{"type": "error", "data": "Execution failed: boom"}')
    assert upstream_failure.value.answer.status == 500
    with pytest.raises(wire.Rejected) as busy:
        wire.event_from_wire('{"type": "error", "data": "full", "status": 429, '
                             '"retryAfter": 2}')
    refused = wire.error_from(busy.value.answer)
    assert isinstance(refused, CapacityExceeded) and refused.retry_after == 2.0
    for bad in ("[]", "{", '{"type": 1}', '{"data": "x"}'):
        with pytest.raises(wire.RemoteError, match="not a StreamEvent"):
            wire.event_from_wire(bad)
