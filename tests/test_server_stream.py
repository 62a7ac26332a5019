"""`isol8 serve`'s streaming transports against a real server process: POST /execute/stream
(SSE) and GET /execute/ws (WebSocket), in upstream's StreamEvent wire form. Events in order,
phases, timeouts, secrets split across chunks, sessions over both transports, upstream's
WebSocket protocol, errors before and after the stream starts, and a client that leaves
mid-run killing its run."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from conftest import child_pids, host_processes_matching
from test_server import KEY, Server, alive, running
from test_server_capacity import serving

websockets = pytest.importorskip("websockets", reason="the server extra is not installed")
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from websockets.sync.client import ClientConnection, connect  # noqa: E402

SECRET = "tok-5f1c9a7e"
# A ceiling the clamping test goes over; every other request stays below it.
POLICY = "[ceilings]\ntimeoutMs = 20000\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    config = tmp_path_factory.mktemp("policy") / "policy.toml"
    config.write_text(POLICY)
    with running(config) as srv:
        yield srv


def body(
    code: str | None = None,
    *,
    session: str | None = None,
    cmd: str | None = None,
    request: dict | None = None,
    **options: object,
) -> dict:
    req: dict = {"code": code, "runtime": "python"} if cmd is None else {"cmd": cmd}
    out: dict = {"request": {**req, **(request or {})}, "options": options}
    if session is not None:
        out["sessionId"] = session
    return out


# -- clients --------------------------------------------------------------------------------


def sse(
    server: Server,
    payload: object,
    *,
    key: str | None = KEY,
    raw: bytes | None = None,
) -> tuple[int, str, bytes]:
    """POST /execute/stream with http.client (no proxy, exact bytes): status, content type
    and the whole body."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    try:
        conn.request(
            "POST",
            "/execute/stream",
            raw if raw is not None else json.dumps(payload).encode(),
            headers,
        )
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def frames(data: bytes) -> list[dict]:
    """Upstream's framing, exactly: `data: <json>\\n\\n` and nothing else."""
    assert data.endswith(b"\n\n"), data
    events = []
    for frame in data[:-2].split(b"\n\n"):
        assert frame.startswith(b"data: ") and b"\n" not in frame, frame
        events.append(json.loads(frame[6:]))
    return events


def stream(server: Server, payload: object) -> list[dict]:
    status, kind, data = sse(server, payload)
    assert (status, kind.split(";")[0]) == (200, "text/event-stream"), data
    return frames(data)


def ws_connect(server: Server, key: str | None = KEY) -> ClientConnection:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return connect(
        f"ws://127.0.0.1:{server.port}/execute/ws",
        additional_headers=headers,
        proxy=None,
        open_timeout=30,
    )


def ws_events(ws: ClientConnection) -> tuple[list[dict], int | None, str]:
    """Every message until the server closes: (events, close code, close reason)."""
    events = []
    try:
        while True:
            events.append(json.loads(ws.recv(timeout=60)))
    except ConnectionClosed as closed:
        rcvd = closed.rcvd
        return events, rcvd.code if rcvd else None, rcvd.reason if rcvd else ""


def ws_run(server: Server, payload: dict) -> tuple[list[dict], int | None, str]:
    with ws_connect(server) as ws:
        ws.send(json.dumps({"type": "execute", **payload}))
        return ws_events(ws)


def text(events: list[dict], kind: str, phase: str = "code") -> str:
    return "".join(e["data"] for e in events if e["type"] == kind and e["phase"] == phase)


def shape(events: list[dict]) -> list[tuple[str, str, str | None]]:
    """(type, data, phase) of each event, consecutive output of one stream and phase joined:
    where a write's bytes split into events is the kernel's and the interpreter's choice
    (print() writes its text and its newline apart)."""
    out: list[tuple[str, str, str | None]] = []
    for e in events:
        item = (e["type"], e["data"], e.get("phase"))
        if out and item[0] in ("stdout", "stderr") and out[-1][0::2] == item[0::2]:
            item = (item[0], out.pop()[1] + item[1], item[2])
        out.append(item)
    return out


TRANSPORTS = ["sse", "ws"]


def run_over(transport: str, server: Server, payload: dict) -> list[dict]:
    if transport == "sse":
        return stream(server, payload)
    events, code, reason = ws_run(server, payload)
    assert (code, reason) == (1000, "Execution complete"), events
    return events


# -- events ---------------------------------------------------------------------------------

CODE = (
    "import sys, time\nprint('one', flush=True)\ntime.sleep(0.2)\n"
    "sys.stderr.write('two\\n'); sys.stderr.flush()\ntime.sleep(0.2)\n"
    "print('three', flush=True)\nsys.exit(3)"
)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_events_arrive_in_order_then_exit(server, transport):
    events = run_over(transport, server, body(CODE))
    assert shape(events) == [
        ("stdout", "one\n", "code"),
        ("stderr", "two\n", "code"),
        ("stdout", "three\n", "code"),
        ("exit", "3", "code"),
    ]
    # upstream's exact keys: nothing of isol8's on an ordinary stream
    assert all(set(e) == {"type", "data", "phase"} for e in events), events


def test_events_are_sent_as_they_happen(server):
    """The first line arrives while the program still runs, not with the rest at its end:
    a gap of about the program's sleep between the two (a slow host only widens it)."""
    code = "import time\nprint('early', flush=True)\ntime.sleep(2)\nprint('late')"
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(_request(body(code)))
        seen = _read_until(sock, b'"early')
        early = time.monotonic()
        assert b'"late' not in seen
        seen = _read_until(sock, b'"late', seen)
        assert time.monotonic() - early > 1.5


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_setup_script_phase_comes_first(server, transport):
    events = run_over(
        transport,
        server,
        body("print('code')", request={"setupScript": "echo prepared; echo warn >&2"}),
    )
    assert shape(events) == [
        ("stdout", "prepared\n", "setup"),
        ("stderr", "warn\n", "setup"),
        ("exit", "0", "setup"),
        ("stdout", "code\n", "code"),
        ("exit", "0", "code"),
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_failed_setup_script_ends_the_stream(server, transport):
    events = run_over(
        transport, server, body("print('never')", request={"setupScript": "echo trying; exit 4"})
    )
    assert shape(events) == [
        ("stdout", "trying\n", "setup"),
        ("error", "Setup script failed (exit code 4)", "setup"),
        ("exit", "4", "setup"),
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_timeout_is_an_error_event_then_exit_137(server, transport):
    started = time.monotonic()
    events = run_over(
        transport,
        server,
        body(
            "import time\nprint('started', flush=True)\ntime.sleep(60)", request={"timeoutMs": 700}
        ),
    )
    assert time.monotonic() - started < 15
    assert shape(events) == [
        ("stdout", "started\n", "code"),
        ("error", "EXECUTION TIMED OUT", "code"),
        ("exit", "137", "code"),
    ]
    assert events[-1]["limitsReached"] == ["timeout"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_clamped_request_reports_on_the_exit_event(server, transport):
    events = run_over(transport, server, body("print(1)", request={"timeoutMs": 90_000}))
    assert events[-1]["type"] == "exit"
    assert events[-1]["clamped"] == [
        {"field": "request.timeoutMs", "requested": 90_000, "applied": 20_000}
    ]


# -- secrets --------------------------------------------------------------------------------

# The secret leaves the sandbox one byte per write, 30 ms apart, so it reaches the server in
# many chunks (upstream masks each chunk alone: every byte would pass). Setup output and
# stderr too (upstream does not mask setup output at all).
SPLIT = (
    f"import sys, time\nfor ch in {SECRET!r}:\n    sys.stdout.write(ch); sys.stdout.flush()"
    f"; time.sleep(0.03)\nprint(' end', flush=True)\n"
    f"sys.stderr.write({SECRET[:6]!r}); sys.stderr.flush(); time.sleep(0.2)\n"
    f"sys.stderr.write({SECRET[6:]!r} + '\\n')"
)


SPLIT_SETUP = f"printf %s {SECRET[:3]}; sleep 0.2; echo {SECRET[3:]}"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_secret_split_across_chunks_is_masked(server, transport):
    # the positive control: unmasked, the secret reaches the client in pieces, several events
    # each, which is what a per-chunk mask lets through
    plain = run_over(transport, server, body(SPLIT, request={"setupScript": SPLIT_SETUP}))
    assert text(plain, "stdout") == SECRET + " end\n"
    pieces = [e["data"] for e in plain if e["type"] == "stdout" and e["data"] in SECRET]
    assert len(pieces) >= 2 and not any(SECRET == p for p in pieces), plain

    events = run_over(
        transport,
        server,
        body(SPLIT, request={"setupScript": SPLIT_SETUP}, secrets={"API_TOKEN": SECRET}),
    )
    assert text(events, "stdout", "setup") == "***\n"
    assert text(events, "stdout") == "*** end\n"
    assert text(events, "stderr") == "***\n"
    # no piece of it either, in any event
    wire = json.dumps(events)
    assert not any(SECRET[i : i + 4] in wire for i in range(len(SECRET) - 3)), wire


# -- errors before the stream: JSON answers with their status -------------------------------


def test_sse_auth_is_401_and_403_json(server):
    payload = body("print(1)")
    for key, status, message in (
        (None, 401, "Missing Authorization header"),
        (KEY + "x", 403, "Invalid API key"),
    ):
        got, kind, data = sse(server, payload, key=key)
        assert (got, kind, json.loads(data)) == (status, "application/json", {"error": message})


@pytest.mark.parametrize(
    "raw, field",
    [
        (b"{bad", "body"),
        (b"{}", "request"),
        (b'{"request": {"code": 7, "runtime": "python"}}', "request.code"),
        (
            b'{"request": {"code": "1", "runtime": "python"}, "options": {"network": "host"}}',
            "options.network",
        ),
        (
            b'{"request": {"code": "1", "runtime": "python"}, "options": {"security": '
            b'{"seccomp": "unconfined"}}}',
            "options.security.seccomp",
        ),
    ],
)
def test_sse_bad_body_or_refused_option_is_400_json(server, raw, field):
    status, kind, data = sse(server, None, raw=raw)
    assert (status, kind) == (400, "application/json"), data
    assert json.loads(data)["error"].startswith(field), data


def test_sse_session_with_other_options_is_409_json(server):
    assert stream(server, body("print(1)", session="conflict", pidsLimit=64))[-1]["data"] == "0"
    status, kind, data = sse(server, body("print(1)", session="conflict", pidsLimit=32))
    assert (status, kind) == (409, "application/json"), data
    assert json.loads(data)["fields"] == ["options.pidsLimit"]
    assert server.call("DELETE", "/session/conflict")[0] == 200


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_engine_refusal_after_admission_is_an_error_event(server, transport):
    """The engine checks the request once the run is admitted: the stream has started, so
    the refusal is upstream's error event, with the status POST /execute would give and the
    engine's exception class, and the stream ends."""
    events = run_over(transport, server, {"request": {"code": "1", "runtime": "cobol"}})
    (event,) = events
    assert (event["type"], event["status"], event["errorType"]) == ("error", 400, "UnknownRuntime")
    assert "cobol" in event["data"]


# -- sessions over both transports ----------------------------------------------------------


def test_session_is_shared_by_sse_ws_and_post(server):
    write = "open('/sandbox/state', 'a').write('x')\nprint(open('/sandbox/state').read())"
    assert text(stream(server, body(write, session="both")), "stdout") == "x\n"
    # upstream's client drops sessionId on WebSocket: here it is honoured
    assert text(run_over("ws", server, body(write, session="both")), "stdout") == "xx\n"
    assert server.execute(write, session="both")[1]["stdout"] == "xxx"
    # an ephemeral stream sees none of it
    probe = "import os; print(os.path.exists('/sandbox/state'))"
    assert text(run_over("ws", server, body(probe)), "stdout") == "False\n"
    assert server.call("DELETE", "/session/both")[0] == 200


def test_ws_session_with_other_options_is_an_error_event(server):
    assert run_over("ws", server, body("print(1)", session="ws409", pidsLimit=64))
    events, code, _ = ws_run(server, body("print(1)", session="ws409", pidsLimit=32))
    (event,) = events
    assert (event["type"], event["status"], event["fields"]) == (
        "error",
        409,
        ["options.pidsLimit"],
    )
    assert code == 1000
    assert server.call("DELETE", "/session/ws409")[0] == 200


# -- upstream's WebSocket protocol ----------------------------------------------------------


@pytest.mark.parametrize(
    "key, status, message",
    [(None, 401, "Missing Authorization header"), (KEY + "x", 403, "Invalid API key")],
)
def test_ws_handshake_refused_with_the_http_answer(server, key, status, message):
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(server, key)
    response = refused.value.response
    assert response.status_code == status
    assert json.loads(response.body) == {"error": message}


def test_ws_unknown_type_keeps_the_socket_open(server):
    with ws_connect(server) as ws:
        for message in ({"type": "bogus"}, ["not", "an", "object"]):
            ws.send(json.dumps(message))
            event = json.loads(ws.recv(timeout=30))
            assert (event["type"], event["status"]) == ("error", 400), event
            assert "unknown message type" in event["data"]
        ws.send(json.dumps({"type": "stdin", "data": "ignored"}))  # reserved, as upstream
        ws.send(json.dumps({"type": "signal", "signal": "SIGINT"}))  # nothing running
        ws.send(json.dumps({"type": "execute", **body("print('still open')")}))
        events, code, reason = ws_events(ws)
    assert shape(events) == [("stdout", "still open\n", "code"), ("exit", "0", "code")]
    assert (code, reason) == (1000, "Execution complete")


def test_ws_invalid_json_is_an_error_event_and_close_1003(server):
    with ws_connect(server) as ws:
        ws.send("{not json")
        events, code, _ = ws_events(ws)
    (event,) = events
    assert event["type"] == "error" and "invalid JSON" in event["data"]
    assert code == 1003


def test_ws_bad_execute_message_is_an_error_event(server):
    events, code, reason = ws_run(server, {"request": {"code": 5, "runtime": "python"}})
    (event,) = events
    assert (event["type"], event["status"]) == ("error", 400)
    assert event["data"].startswith("request.code")
    assert (code, reason) == (1000, "Execution complete")


def test_ws_second_execute_during_a_run_is_refused(server):
    with ws_connect(server) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "execute",
                    **body("import time\nprint('first', flush=True)\ntime.sleep(1)"),
                }
            )
        )
        first = [json.loads(ws.recv(timeout=30))]
        assert first[0]["data"].startswith("first")  # the run is going
        ws.send(json.dumps({"type": "execute", **body("print('second')")}))
        events, code, _ = ws_events(ws)
    (refusal,) = [e for e in events if e["type"] == "error"]
    assert "already running" in refusal["data"] and refusal["status"] == 400
    assert shape(first + [e for e in events if e is not refusal]) == [
        ("stdout", "first\n", "code"),
        ("exit", "0", "code"),
    ]
    assert code == 1000


# -- a run ends with its client -------------------------------------------------------------


def _request(payload: dict) -> bytes:
    data = json.dumps(payload).encode()
    return (
        b"POST /execute/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Type: application/json"
        b"\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data
    )


def _read_until(sock: socket.socket, marker: bytes, seen: bytes = b"") -> bytes:
    while marker not in seen:
        chunk = sock.recv(65536)
        assert chunk, seen
        seen += chunk
    return seen


def _settled(server: Server) -> set[tuple[int, str]]:
    """The server's processes once its pools are full: the same set twice, 0.3 s apart."""
    previous = server.descendants()
    for _ in range(100):
        time.sleep(0.3)
        current = server.descendants()
        if current == previous:
            return current
        previous = current
    raise AssertionError("the server's processes never settled")


def sleeper(n: int) -> str:
    """A long sleep no other process shares a command line with, for the leak checks: the
    fraction (GNU sleep takes one) is this test process's pid, fixed width, since the whole
    suite may run beside this module in another process."""
    return f"sleep 6{n:03d}.{os.getpid():07d}"


def _appears(marker: str) -> None:
    """Waits for the marked process: the run's output may come before its bash has forked."""
    deadline = time.monotonic() + 10
    while not host_processes_matching(marker):
        assert time.monotonic() < deadline, f"{marker} never ran"
        time.sleep(0.01)


def _gone_within(marker: str, seconds: float) -> float:
    started = time.monotonic()
    while host_processes_matching(marker):
        assert time.monotonic() - started < seconds, host_processes_matching(marker)
        time.sleep(0.02)
    return time.monotonic() - started


class _Leaving:
    """A long run over a transport, which the client leaves once its first event came:
    "sse" closes the socket, "ws-close" sends a close frame, "ws-drop" drops the TCP
    connection without one."""

    def __init__(self, server: Server, transport: str, payload: dict) -> None:
        self.transport = transport
        self._stack = contextlib.ExitStack()
        if transport == "sse":
            self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
            self.sock.sendall(_request(payload))
            _read_until(self.sock, b"running")
        else:
            self.ws = self._stack.enter_context(ws_connect(server))
            self.ws.send(json.dumps({"type": "execute", **payload}))
            while "running" not in json.loads(self.ws.recv(timeout=60))["data"]:
                pass

    def leave(self) -> None:
        if self.transport == "sse":
            self.sock.close()
        elif self.transport == "ws-close":
            self.ws.close()
        else:
            self.ws.socket.shutdown(socket.SHUT_RDWR)
            self.ws.socket.close()
        self._stack.close()


LEAVING = ["sse", "ws-close", "ws-drop"]


@pytest.mark.parametrize("transport", LEAVING)
def test_client_leaving_kills_the_run(transport):
    """The long sleep and its sandbox are gone soon after the client, the server still
    serves, and once it stops no process of it is left."""
    marker = sleeper(110 + LEAVING.index(transport))
    # a setup script runs in a throwaway sandbox of its own, not one from the warm pool
    payload = body(cmd=f"echo running; {marker}", request={"setupScript": "true"})
    children = set(child_pids())  # the module's server
    with running() as server:
        assert run_over("sse", server, body(cmd="true", request={"setupScript": "true"}))
        before = _settled(server)
        leaving = _Leaving(server, transport, payload)
        _appears(marker)  # the positive control
        run = server.descendants() - before
        assert run, "the run has no process of its own: the test proves nothing"
        leaving.leave()
        took = _gone_within(marker, 10)
        deadline = time.monotonic() + 10
        while alive(run) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert alive(run) == set()
        print(f"{transport}: the run was gone {took * 1000:.0f} ms after the client left")
        assert text(run_over("sse", server, body("print('next')")), "stdout") == "next\n"
    assert set(child_pids()) <= children


@pytest.mark.parametrize("transport", ["sse", "ws-drop"])
def test_client_leaving_a_session_run_keeps_the_session(transport):
    marker = sleeper(120 + LEAVING.index(transport))
    with running() as server:
        assert run_over(
            "sse", server, body("open('/sandbox/kept', 'w').write('yes')", session="stay")
        )
        leaving = _Leaving(server, transport, body(cmd=f"echo running; {marker}", session="stay"))
        _appears(marker)
        leaving.leave()
        _gone_within(marker, 10)
        # the run is over (the session idle again) and the session's sandbox is kept
        deadline = time.monotonic() + 10
        while True:
            (entry,) = [
                s for s in server.call("GET", "/sessions")[1]["sessions"] if s["id"] == "stay"
            ]
            if not entry["isActive"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert entry["isActive"] is False
        events = run_over(
            "ws", server, body("print(open('/sandbox/kept').read())", session="stay")
        )
        assert text(events, "stdout") == "yes\n"


def test_ws_signal_kills_the_run(server):
    marker = sleeper(130)
    with ws_connect(server) as ws:
        ws.send(json.dumps({"type": "execute", **body(cmd=f"echo running; {marker}")}))
        assert json.loads(ws.recv(timeout=60))["data"].startswith("running")
        _appears(marker)
        started = time.monotonic()
        ws.send(json.dumps({"type": "signal", "signal": "SIGTERM"}))
        events, code, reason = ws_events(ws)
        assert time.monotonic() - started < 10
    assert shape(events) == [
        ("error", "Execution killed by SIGTERM", "code"),
        ("exit", "143", "code"),
    ]
    assert (code, reason) == (1000, "Execution complete")
    assert not host_processes_matching(marker)  # gone before the events were sent


def test_ws_unknown_signal_is_an_error_event(server):
    with ws_connect(server) as ws:
        ws.send(json.dumps({"type": "signal", "signal": "SIGKILL"}))
        event = json.loads(ws.recv(timeout=30))
    assert (event["type"], event["status"]) == ("error", 400)
    assert "SIGKILL" in event["data"]


# -- one path with POST /execute: capacity, accounting, drain -------------------------------


def _hold_the_slot(server: Server, marker: str) -> _Leaving:
    leaving = _Leaving(server, "sse", body(cmd=f"echo running; {marker}"))
    _appears(marker)
    return leaving


def test_over_capacity_is_429_json_over_sse_and_an_event_over_ws(tmp_path):
    with serving(tmp_path, {"maxConcurrent": 1, "maxQueue": 0, "retryAfterS": 3}) as server:
        leaving = _hold_the_slot(server, sleeper(140))
        try:
            status, kind, data = sse(server, body("print(1)"))
            assert (status, kind) == (429, "application/json"), data
            assert "over capacity" in json.loads(data)["error"]
            events, code, _ = ws_run(server, body("print(1)"))
            (event,) = events
            assert (event["type"], event["status"], event["retryAfter"]) == ("error", 429, 3)
            assert code == 1000
        finally:
            leaving.leave()
        _gone_within(sleeper(140), 10)
        # the slot is free again once the client left
        deadline = time.monotonic() + 10
        while (status := sse(server, body("print(1)"))[0]) == 429:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert status == 200


def _runs(server: Server, outcome: str) -> float:
    """isol8_runs_total of ephemeral python runs with this outcome (0 before the first)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {KEY}"})
        # without every series' node label (isol8 serve --node)
        lines = re.sub(r',node="[^"]*"', "", conn.getresponse().read().decode()).splitlines()
    finally:
        conn.close()
    series = f'isol8_runs_total{{runtime="python",mode="ephemeral",outcome="{outcome}"}} '
    return sum(float(line[len(series) :]) for line in lines if line.startswith(series))


def test_streamed_runs_are_counted_and_audited(tmp_path):
    audit = tmp_path / "audit.jsonl"
    with serving(tmp_path, {}, "--audit", str(audit), "--audit-include-output") as server:
        before = _runs(server, "ok"), _runs(server, "timeout")
        printing = body(f"print({SECRET!r})", secrets={"T": SECRET})
        assert text(stream(server, printing), "stdout") == "***\n"
        assert text(run_over("ws", server, printing), "stdout") == "***\n"
        run_over("sse", server, body("import time; time.sleep(9)", request={"timeoutMs": 300}))
        assert (_runs(server, "ok"), _runs(server, "timeout")) == (before[0] + 2, before[1] + 1)
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(a["runtime"], a["exitCode"]) for a in lines] == [("python", 0)] * 2 + [
        ("python", 137)
    ]
    assert [a["stdout"] for a in lines[:2]] == ["***"] * 2  # trimmed, as execute()'s
    assert SECRET not in audit.read_text()


def test_drain_ends_running_streams_with_a_503_event(tmp_path):
    """SIGTERM: a streamed run past the drain deadline is killed and told why, as POST
    /execute answers 503; nothing is left once the server is gone."""
    children = set(child_pids())
    with serving(tmp_path, {"drainTimeoutMs": 1000}) as server:
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock,
            ws_connect(server) as ws,
        ):
            sock.sendall(_request(body(cmd=f"echo running; {sleeper(150)}")))
            seen = _read_until(sock, b"running")
            ws.send(json.dumps({"type": "execute", **body(cmd=f"echo running; {sleeper(151)}")}))
            assert json.loads(ws.recv(timeout=60))["data"].startswith("running")
            _appears(sleeper(150))
            _appears(sleeper(151))
            below = server.descendants()
            server.proc.send_signal(signal.SIGTERM)
            seen = _read_until(sock, b"\r\n0\r\n\r\n", seen)
            events, code, reason = ws_events(ws)
        assert server.stop() in (0, -signal.SIGTERM)
    (sse_event,) = [e for e in frames(_chunked_body(seen)) if e["type"] == "error"]
    for event in (sse_event, events[-1]):
        assert (event["type"], event["status"]) == ("error", 503), event
        assert "drain deadline" in event["data"]
    assert code in (1000, 1012), (code, reason)  # 1012: uvicorn's own close at shutdown
    assert alive(below) == set()
    assert not host_processes_matching(sleeper(150)) and not host_processes_matching(sleeper(151))
    assert set(child_pids()) <= children


def _chunked_body(response: bytes) -> bytes:
    """The body of a raw HTTP/1.1 response in chunked transfer coding."""
    rest, out = response.split(b"\r\n\r\n", 1)[1], b""
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            return out
        out, rest = out + rest[:size], rest[size + 2 :]


def test_the_sse_route_documents_frames_and_json_errors(server):
    status, document = server.call("GET", "/openapi.json")
    operation = document["paths"]["/execute/stream"]["post"]
    answers = operation["responses"]
    assert list(answers["200"]["content"]) == ["text/event-stream"]
    assert {"400", "401", "403", "409", "413", "429", "503"} <= set(answers)
    for code, answer in answers.items():
        if code != "200":
            assert list(answer["content"]) == ["application/json"], code
    assert (
        "request"
        in operation["requestBody"]["content"]["application/json"]["schema"]["properties"]
    )
    assert "/execute/ws" not in document["paths"]  # OpenAPI has no WebSocket
