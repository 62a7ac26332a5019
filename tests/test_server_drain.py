"""Draining `isol8 serve` as a real process on loopback: ``POST /admin/drain`` (master key
only) and SIGTERM refuse new work with 503 and ``Retry-After`` while the node's sessions go
on and running executions finish; ``/health`` says draining; the deadline stops what is
left, a signalled node exits and nothing is left; every metric carries the node's name."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import child_pids
from test_server import KEY, Server, alive, helpers_alive
from test_server_capacity import in_background, post, run, wait_for

pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")

README = Path(__file__).resolve().parent.parent / "README.md"
SLOW = "import time; time.sleep({}); print('finished')"
# a sample line of the exposition: name, labels, value
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)")


def example(name: str) -> str:
    """The README's example ``name``: the code block between its markers."""
    marker = f"<!-- example: {name} -->"
    text = README.read_text()
    block = text.split(marker, 1)[1].split("<!-- /example -->", 1)[0]
    return block.split("```sh\n", 1)[1].split("```", 1)[0]


def serve(tmp_path: Path, drain_ms: int, *flags: str, **env: str) -> Server:
    policy = tmp_path / f"policy-{time.monotonic_ns()}.json"
    policy.write_text(json.dumps({"capacity": {"drainTimeoutMs": drain_ms}}))
    return Server(policy, *flags, env=env or None)


def call(srv: Server, method: str, path: str, key: str | None = KEY,
         ) -> tuple[int, dict, dict[str, str]]:
    """status, JSON body and lowercased headers (Server.call drops the headers)."""
    req = urllib.request.Request(srv.url + path, method=method)
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, body, headers = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        status, body, headers = exc.code, exc.read(), exc.headers
    return status, json.loads(body), {k.lower(): v for k, v in headers.items()}


def samples(srv: Server) -> list[tuple[str, str, float]]:
    """(name, label string, value) of every sample of one scrape."""
    _, text = scrape(srv)
    found = []
    for line in text.splitlines():
        if not line.startswith("#"):
            match = _SAMPLE.fullmatch(line)
            assert match, line
            found.append((match[1], match[2] or "", float(match[3])))
    return found


def scrape(srv: Server) -> tuple[int, str]:
    req = urllib.request.Request(srv.url + "/metrics",
                                 headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.read().decode()


def gauge(srv: Server, name: str) -> float:
    (value,) = [v for n, _, v in samples(srv) if n == name]
    return value


def ws_run(srv: Server, body: dict) -> list[dict]:
    """One execution over ``/execute/ws``: its events, to the exit or the error."""
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{srv.port}/execute/ws",
                 additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        ws.send(json.dumps({"type": "execute", **body}))
        events = [json.loads(ws.recv(timeout=30))]
        while events[-1]["type"] not in ("exit", "error"):
            events.append(json.loads(ws.recv(timeout=30)))
    return events


def test_admin_drain_keeps_sessions_and_runs_and_refuses_new_work(tmp_path):
    before = set(child_pids())
    srv = serve(tmp_path, 6000, "--auth-db", str(tmp_path / "auth.db"), "--node", "drain-a")
    try:
        assert post(srv, run("open('/sandbox/n', 'w').write('kept')", session="kept"))[0] == 200
        status, created = srv.call("POST", "/auth/keys", {"name": "tenant"})
        assert status == 201, created
        # only the master key drains a node
        assert call(srv, "POST", "/admin/drain", key=created["key"])[:2] == (
            403, {"error": "Master key required for this operation"})
        assert call(srv, "POST", "/admin/drain", key=None)[0] == 401
        assert call(srv, "GET", "/health", key=None)[0] == 200
        assert gauge(srv, "isol8_draining") == 0
        finishing, finished = in_background(post, srv, run(SLOW.format(2)))
        wait_for(lambda: gauge(srv, "isol8_executions_running") == 1)

        drained = subprocess.run(
            ["sh", "-c", example("drain").replace("localhost:3000", f"127.0.0.1:{srv.port}")],
            env={**os.environ, "ISOL8_API_KEY": KEY}, capture_output=True, text=True,
            timeout=60, check=True)
        answer = json.loads(drained.stdout)
        assert answer["status"] == "draining" and answer["node"] == "drain-a", answer
        assert (answer["running"], answer["sessions"]) == (1, 1), answer
        assert 0 < answer["deadlineMs"] <= 6000, answer
        again = call(srv, "POST", "/admin/drain")
        assert again[0] == 202 and again[1]["deadlineMs"] <= answer["deadlineMs"], again

        status, health, headers = call(srv, "GET", "/health", key=None)
        assert (status, health["status"], health["node"]) == (503, "draining", "drain-a")
        assert "draining" in health["error"] and headers["retry-after"] == "1", health
        # new work: a new session, or an ephemeral run
        for body in (run("print(1)", session="new"), run("print(1)")):
            status, refused, headers = post(srv, body)
            assert (status, headers.get("retry-after")) == (503, "1"), refused
            assert "draining" in refused["error"] and "another node" in refused["error"]
        # the node's own session keeps working: runs and files
        status, result, _ = post(srv, run("print(open('/sandbox/n').read())", session="kept"))
        assert (status, result.get("stdout")) == (200, "kept"), result
        assert srv.call("GET", "/file?sessionId=kept&path=/sandbox/n") == (
            200, {"content": "a2VwdA=="})
        # the same over a WebSocket: the refusal is an error event with the 503's fields
        events = ws_run(srv, run("print(open('/sandbox/n').read())", session="kept"))
        # a print may arrive as one chunk or as its text and its newline
        assert "".join(e["data"] for e in events if e["type"] == "stdout") == "kept\n", events
        (refusal,) = ws_run(srv, run("print(1)", session="new-ws"))
        assert (refusal["type"], refusal["status"], refusal["retryAfter"]) == ("error", 503, 1)
        finishing.join(30)
        assert finished[0][0] == 200 and finished[0][1]["stdout"] == "finished", finished

        lines = samples(srv)
        assert lines and all('node="drain-a"' in labels for _, labels, _ in lines), lines
        assert gauge(srv, "isol8_draining") == 1
        # the deadline stops the session; the node stays up, refusing, with no sandbox
        wait_for(lambda: call(srv, "GET", "/health", key=None)[1]["sessions"] == 0, 20)
        wait_for(lambda: helpers_alive(srv) == 0, 10)
        status, refused, _ = post(srv, run("print(1)", session="kept"))
        assert status == 503, refused
        assert call(srv, "GET", "/health", key=None)[0] == 503
        assert srv.proc.poll() is None
        stopping = time.monotonic()
        assert srv.stop() in (0, -signal.SIGTERM)
        assert time.monotonic() - stopping < 5  # nothing left to wait for
    finally:
        srv.stop()
    assert set(child_pids()) <= before


def test_sigterm_lets_a_run_and_a_session_go_on_until_the_deadline(tmp_path):
    before = set(child_pids())
    srv = serve(tmp_path, 3000)
    try:
        assert post(srv, run("open('/sandbox/n', 'w').write('1')", session="s"))[0] == 200
        finishing, finished = in_background(post, srv, run(SLOW.format(1.5)))
        wait_for(lambda: gauge(srv, "isol8_executions_running") == 1)
        below = srv.descendants()
        assert below
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: call(srv, "GET", "/health", key=None)[0] == 503, 5)
        status, result, _ = post(srv, run("print(open('/sandbox/n').read())", session="s"))
        assert (status, result.get("stdout")) == (200, "1"), result
        status, refused, headers = post(srv, run("print(1)", session="other"))
        assert (status, headers.get("retry-after")) == (503, "1"), refused
        assert "shutting down" in refused["error"], refused
        finishing.join(30)
        assert finished[0][0] == 200 and finished[0][1]["stdout"] == "finished", finished
        assert srv.proc.wait(30) in (0, -signal.SIGTERM)
        took = time.monotonic() - started
        # the session held the node until the deadline, and not much longer
        assert 2.8 < took < 15, took
    finally:
        srv.stop()
    assert alive(below) == set()
    assert set(child_pids()) <= before


def test_sigterm_exits_once_the_last_session_ends(tmp_path):
    """Nothing left to wait for is the end of a drain, long before its deadline."""
    srv = serve(tmp_path, 60_000, ISOL8_NODE="from-env")
    try:
        assert post(srv, run("print(1)", session="s"))[0] == 200
        lines = samples(srv)
        assert all('node="from-env"' in labels for _, labels, _ in lines), lines
        srv.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: call(srv, "GET", "/health", key=None)[0] == 503, 5)
        assert post(srv, run("print(2)", session="s"))[0] == 200
        ended = time.monotonic()
        assert srv.call("DELETE", "/session/s") == (200, {"ok": True})
        assert srv.proc.wait(30) in (0, -signal.SIGTERM)
        assert time.monotonic() - ended < 5
    finally:
        srv.stop()


def test_the_node_label_defaults_to_the_host_name(tmp_path):
    srv = serve(tmp_path, 1000)
    try:
        name = socket.gethostname().replace("\\", "\\\\").replace('"', '\\"')
        assert ("isol8_draining", f'{{node="{name}"}}', 0.0) in samples(srv)
    finally:
        srv.stop()


@pytest.mark.parametrize("flags, error", [
    (["--node", ""], "--node must not be empty"),
    (["--drain-timeout", "0"], "--drain-timeout must be a positive number"),
    (["--drain-timeout", "nan"], "--drain-timeout must be a positive number"),
    (["--drain-timeout", "soon"], "invalid float value"),
])
def test_bad_serve_flags_are_refused(flags, error, capsys):
    from isol8.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["serve", "--key", "k", "--port", "0", *flags])
    assert exited.value.code == 2
    assert error in capsys.readouterr().err


def test_sigint_lets_runs_finish_but_waits_for_no_session(tmp_path):
    """Ctrl-C at a terminal: the run in progress finishes, the open session does not hold
    the server until the deadline."""
    before = set(child_pids())
    srv = serve(tmp_path, 60_000)
    try:
        assert post(srv, run("print(1)", session="s"))[0] == 200
        finishing, finished = in_background(post, srv, run(SLOW.format(1)))
        wait_for(lambda: gauge(srv, "isol8_executions_running") == 1)
        below = srv.descendants()
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGINT)
        finishing.join(30)
        assert finished[0][0] == 200 and finished[0][1]["stdout"] == "finished", finished
        assert srv.proc.wait(30) in (0, -signal.SIGINT, 128 + signal.SIGINT)
        assert time.monotonic() - started < 10
    finally:
        srv.stop()
    assert alive(below) == set()
    assert set(child_pids()) <= before


def test_queued_new_work_is_refused_and_a_queued_session_run_waits_its_turn(tmp_path):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"capacity": {"drainTimeoutMs": 20_000, "maxConcurrent": 1,
                                               "maxQueue": 4}}))
    srv = Server(policy)
    try:
        assert post(srv, run("open('/sandbox/n', 'w').write('s')", session="s"))[0] == 200
        holding, held = in_background(post, srv, run(SLOW.format(2)))
        wait_for(lambda: gauge(srv, "isol8_executions_running") == 1)
        queued_new, new_answer = in_background(post, srv, run("print(1)"))
        queued_own, own_answer = in_background(
            post, srv, run("print(open('/sandbox/n').read())", session="s"))
        wait_for(lambda: gauge(srv, "isol8_queue_depth") == 2)
        assert call(srv, "POST", "/admin/drain")[0] == 202
        queued_new.join(5)  # refused at once, not when the slot frees
        status, refused, headers = new_answer[0]
        assert (status, headers.get("retry-after")) == (503, "1"), refused
        assert gauge(srv, "isol8_executions_running") == 1  # the slow run still holds it
        for thread in (holding, queued_own):
            thread.join(30)
        assert held[0][0] == 200 and held[0][1]["stdout"] == "finished", held
        assert own_answer[0][0] == 200 and own_answer[0][1]["stdout"] == "s", own_answer
        assert srv.call("DELETE", "/session/s") == (200, {"ok": True})
        wait_for(lambda: helpers_alive(srv) == 0, 10)  # the drain is over: pools gone too
    finally:
        srv.stop()
