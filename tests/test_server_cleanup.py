"""``POST /cleanup`` against a real ``isol8 serve``: master only, every session of every key
and every idle shared engine stopped (their sandboxes gone), a busy engine's run left to
finish, images only when asked, concurrent calls coalesced into one."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_server import KEY, Server, helpers_alive, running
from test_server_files import AuthDbServer

pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")

EMPTY = {"removed": 0, "failed": 0, "errors": []}


def settled(srv: Server, expected: int = 0, timeout: float = 10) -> int:
    """Helpers alive once their count reached ``expected`` (stops reap them in their time)."""
    deadline = time.monotonic() + timeout
    while (count := helpers_alive(srv)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


@pytest.fixture
def server() -> Iterator[Server]:
    with running() as srv:
        yield srv


def test_master_only(tmp_path: Path) -> None:
    srv = AuthDbServer(tmp_path / "auth.db")
    try:
        assert srv.call("POST", "/cleanup", key=None) == (
            401,
            {"error": "Missing Authorization header"},
        )
        assert srv.call("POST", "/cleanup", key=KEY + "x") == (403, {"error": "Invalid API key"})
        status, created = srv.call("POST", "/auth/keys", {"name": "tenant"})
        assert status == 201, created
        tenant = created["key"]
        assert (
            srv.call(
                "POST",
                "/execute",
                {"sessionId": "t", "request": {"code": "print(1)", "runtime": "python"}},
                key=tenant,
            )[0]
            == 200
        )
        assert srv.call("POST", "/cleanup", key=tenant) == (
            403,
            {"error": "Master key required for this operation"},
        )
        # refused means nothing was stopped
        status, body = srv.call("GET", "/sessions", key=tenant)
        assert [s["id"] for s in body["sessions"]] == ["t"]
        # the master key stops every key's sessions, not only its own
        assert srv.execute("print(1)", session="m")[0] == 200
        status, body = srv.call("POST", "/cleanup")
        assert status == 200 and body["sessions"] == {"removed": 2, "failed": 0, "errors": []}
        assert srv.call("GET", "/sessions", key=tenant) == (200, {"sessions": []})
        assert srv.call("GET", "/sessions") == (200, {"sessions": []})
        assert settled(srv) == 0
    finally:
        srv.stop()


def test_sessions_and_idle_engines_go_and_the_server_keeps_serving(server: Server) -> None:
    assert server.execute("print(1)")[0] == 200  # a shared engine with its warm pool
    assert server.execute("print(1)", memoryLimit="256m")[0] == 200  # another option set
    assert server.execute("open('/tmp/f', 'w').write('x')", session="s")[0] == 200
    assert helpers_alive(server) >= 2
    status, body = server.call("POST", "/cleanup")
    assert (status, body) == (
        200,
        {"ok": True, "sessions": {**EMPTY, "removed": 1}, "containers": {**EMPTY, "removed": 2}},
    )
    assert settled(server) == 0
    # a new session of the same id is a fresh sandbox; ephemeral runs get a new engine
    status, result = server.execute("import os; print(os.path.exists('/tmp/f'))", session="s")
    assert (status, result["stdout"]) == (200, "False")
    assert server.execute("print(1)")[0] == 200


def test_images_only_when_asked(server: Server) -> None:
    assert server.call("POST", "/cleanup", {}) == (
        200,
        {"ok": True, "sessions": EMPTY, "containers": EMPTY},
    )
    assert server.call("POST", "/cleanup", {"images": False}) == (
        200,
        {"ok": True, "sessions": EMPTY, "containers": EMPTY},
    )
    assert server.call("POST", "/cleanup", {"images": True}) == (
        200,
        {"ok": True, "sessions": EMPTY, "containers": EMPTY, "images": EMPTY},
    )


@pytest.mark.parametrize("raw", [b"{", b"[]", b'{"images": "yes"}', b'{"images": 1}'])
def test_bad_body_is_400(server: Server, raw: bytes) -> None:
    status, body = server.call("POST", "/cleanup", raw=raw)
    assert status == 400 and "body" in body["error"], body


def _post_async(srv: Server, path: str, body: object, out: list) -> threading.Thread:
    def call() -> None:
        out.append(srv.call("POST", path, body))

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def test_a_busy_engine_finishes_its_run(server: Server) -> None:
    """A shared engine in use is not stopped under its run (that would pull its cgroups
    away); the run answers normally and the engine goes once idle, as ever."""
    answers: list = []
    run = _post_async(
        server,
        "/execute",
        {"request": {"code": "import time; time.sleep(1.5); print('done')", "runtime": "python"}},
        answers,
    )
    time.sleep(0.7)
    status, body = server.call("POST", "/cleanup")
    assert (status, body["containers"]) == (200, EMPTY)
    run.join(30)
    [(status, result)] = answers
    assert (status, result["stdout"], result["exitCode"]) == (200, "done", 0)


def test_concurrent_calls_are_coalesced(server: Server) -> None:
    """While a session's run holds its engine, the stop waits for the run; every cleanup
    called meanwhile joins the one in flight and gets its answer, so each reports the one
    session it stopped (calls run one after the other would report it once)."""
    answers: list = []
    run = _post_async(
        server,
        "/execute",
        {
            "sessionId": "busy",
            "request": {"code": "import time; time.sleep(1.5)", "runtime": "python"},
        },
        answers,
    )
    time.sleep(0.7)
    cleanups: list = []
    threads = [_post_async(server, "/cleanup", None, cleanups) for _ in range(4)]
    for thread in [*threads, run]:
        thread.join(30)
    assert answers[0][0] == 200, answers
    assert len(cleanups) == 4
    for status, body in cleanups:
        assert status == 200 and body["sessions"] == {**EMPTY, "removed": 1}, cleanups
    assert settled(server) == 0
    # a cleanup after that one is a new one
    assert server.call("POST", "/cleanup")[1]["sessions"] == EMPTY


def test_metrics_count_cleanups(server: Server) -> None:
    """The request counter sees /cleanup by its template (a route of this point)."""
    server.call("POST", "/cleanup")
    request = urllib.request.Request(
        server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}
    )
    text = urllib.request.urlopen(request, timeout=30).read().decode()
    text = re.sub(r',node="[^"]*"', "", text)  # every series' node label (isol8 serve --node)
    assert 'isol8_http_requests_total{route="/cleanup",method="POST",code="2xx"} 1' in text


def test_json_shape_is_upstreams(server: Server) -> None:
    """Upstream's keys, in its order: ok, sessions, containers (images when asked)."""
    req = urllib.request.Request(
        server.url + "/cleanup",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        assert list(json.loads(resp.read())) == ["ok", "sessions", "containers"]
