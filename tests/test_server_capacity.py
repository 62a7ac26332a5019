"""`isol8 serve`'s capacity as a real process on loopback: 429 with Retry-After beyond the
concurrency limit, its queue and the host budget; 413 for bodies and code over the limits
(before a body is read whole); session limits per key and in total; idle sessions pruned
after their TTL but never while running; and a SIGTERM drain that answers new work 503, keeps
the sessions, kills runs at its deadline and leaves no sandbox, cgroup or temp dir behind."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import select
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import child_pids
from test_server import KEY, Server, alive

pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")

SLEEP = "import time; time.sleep({})"


def _start(config: dict, *extra: str, tmpdir: Path | None = None) -> Server:
    """``Server`` with a JSON policy, extra ``serve`` arguments and maybe its own TMPDIR."""
    path = Path(config.pop("_path"))
    path.write_text(json.dumps(config))
    return Server(path, *extra, env={"TMPDIR": str(tmpdir)} if tmpdir is not None else None)


@contextlib.contextmanager
def serving(tmp_path: Path, capacity: dict, *extra: str, **kw: object) -> Iterator[Server]:
    srv = _start(
        {"_path": tmp_path / f"policy-{time.monotonic_ns()}.json", "capacity": capacity},
        *extra,
        **kw,
    )  # type: ignore[arg-type]
    try:
        yield srv
    finally:
        srv.stop()


def post(
    srv: Server,
    body: object,
    *,
    key: str = KEY,
) -> tuple[int, dict, dict[str, str]]:
    """POST /execute: status, JSON body and headers, lowercased (Server.call drops them)."""
    req = urllib.request.Request(
        srv.url + "/execute",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read()), _lower(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), _lower(exc.headers)


def _lower(headers) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def run(code: str, session: str | None = None, **options: object) -> dict:
    body: dict = {"request": {"code": code, "runtime": "python"}, "options": options}
    if session is not None:
        body["sessionId"] = session
    return body


def in_background(fn, *args) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)))
    thread.start()
    return thread, out


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def metric(srv: Server, series: str) -> float:
    """One series' value from GET /metrics, named without the node label every series has."""
    req = urllib.request.Request(srv.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = without_node(resp.read().decode())
    return float(
        next(x for x in text.splitlines() if x.startswith(series + " "))[len(series) + 1 :]
    )


def without_node(text: str) -> str:
    """An exposition with the node label (isol8 serve --node) taken off every series."""
    return re.sub(r'\{node="[^"]*"\}|,node="[^"]*"', "", text)


def rejected(srv: Server, reason: str) -> float:
    return metric(srv, f'isol8_rejected_total{{reason="{reason}"}}')


def queue_depth(srv: Server) -> float:
    return metric(srv, "isol8_queue_depth")


def running(srv: Server) -> int:
    """Executions admitted: each is past admission and holds its room."""
    return int(metric(srv, "isol8_executions_running"))


def reserved(srv: Server) -> int:
    return int(metric(srv, "isol8_memory_reserved_bytes")) >> 20  # MiB


# -- concurrency, queue, budget: 429 with Retry-After ---------------------------------------


def test_beyond_the_queue_is_429_with_retry_after(tmp_path):
    with serving(
        tmp_path, {"maxConcurrent": 1, "maxQueue": 1, "queueTimeoutMs": 20_000, "retryAfterS": 3}
    ) as srv:
        slow, slow_out = in_background(post, srv, run(SLEEP.format(3) + "; print('a')"))
        wait_for(lambda: running(srv) == 1)
        queued, queued_out = in_background(post, srv, run("print('b')"))
        wait_for(lambda: queue_depth(srv) == 1)
        started = time.monotonic()
        status, body, headers = post(srv, run("print('c')"))
        assert time.monotonic() - started < 10  # refused at once, not after the 20 s wait
        assert status == 429 and headers["retry-after"] == "3", (status, body, headers)
        assert "over capacity" in body["error"] and set(body) == {"error"}, body
        slow.join(30)
        queued.join(30)
        # the two admitted ones ran, in order
        assert slow_out[0][:2] == (200, slow_out[0][1]) and slow_out[0][1]["stdout"] == "a"
        assert queued_out[0][0] == 200 and queued_out[0][1]["stdout"] == "b", queued_out
        assert rejected(srv, "queue") == 1
        assert post(srv, run("print('d')"))[:2][0] == 200  # room again


def test_a_wait_beyond_the_queue_timeout_is_429(tmp_path):
    with serving(tmp_path, {"maxConcurrent": 1, "maxQueue": 4, "queueTimeoutMs": 300}) as srv:
        slow, _ = in_background(post, srv, run(SLEEP.format(4)))
        wait_for(lambda: running(srv) == 1)
        started = time.monotonic()
        status, body, headers = post(srv, run("print(1)"))
        waited = time.monotonic() - started
        assert status == 429 and headers["retry-after"] == "1", body
        assert 0.25 < waited < 3.5, waited
        assert "300 ms" in body["error"]
        slow.join(30)


def test_the_memory_budget_counts_every_running_sandbox(tmp_path):
    """Budget 700m: two 256m runs fit, a third waits (queue 0: refused at once) with reason
    memory; warm pools (2 x 256m) would take over half the budget, so none is made."""
    with serving(tmp_path, {"maxConcurrent": 8, "maxQueue": 0, "memoryBudget": "700m"}) as srv:
        options = {"memoryLimit": "256m"}
        runs = [in_background(post, srv, run(SLEEP.format(4), **options)) for _ in range(2)]
        wait_for(lambda: running(srv) == 2)
        status, body, headers = post(srv, run("print(1)", **options))
        assert status == 429 and "memory budget" in body["error"], body
        assert headers["retry-after"] == "1"
        assert rejected(srv, "memory") == 1
        # A smaller sandbox still fits beside them.
        assert post(srv, run("print(2)", memoryLimit="128m"))[0] == 200
        # Larger than the whole budget: no retry can help, so 400 naming the field.
        status, body, _ = post(srv, run("print(3)", memoryLimit="1g"))
        assert status == 400 and body["error"].startswith("options.memoryLimit:"), body
        for thread, out in runs:
            thread.join(30)
            assert out[0][0] == 200, out
        assert post(srv, run("print(4)", **options))[0] == 200


def test_the_tmpfs_budget(tmp_path):
    tmpfs = (64 + 64 + 64) << 20  # one sandbox: sandboxSize + tmpSize + /dev/shm
    with serving(tmp_path, {"maxQueue": 0, "tmpfsBudget": tmpfs + (32 << 20)}) as srv:
        options = {"sandboxSize": "64m", "tmpSize": "64m"}
        slow, out = in_background(post, srv, run(SLEEP.format(3), **options))
        wait_for(lambda: running(srv) == 1)
        status, body, _ = post(srv, run("print(1)", **options))
        assert status == 429 and "tmpfs budget" in body["error"], body
        assert rejected(srv, "tmpfs") == 1
        slow.join(30)
        assert out[0][0] == 200


def test_sessions_and_warm_pools_hold_their_room_until_they_end(tmp_path):
    """Budget 1g. A shared engine's warm pool (2 x 256m) is counted while the engine lives;
    a session's sandbox from its first run until it ends; a request that finds no room
    makes idle engines give their pools back."""
    with serving(tmp_path, {"memoryBudget": "1g", "maxQueue": 0}) as srv:
        assert reserved(srv) == 0
        assert post(srv, run("print(1)", memoryLimit="256m"))[0] == 200
        assert reserved(srv) == 512  # the engine's pool; the run's own room is given back
        assert post(srv, run("print(1)", session="s", memoryLimit="256m"))[0] == 200
        assert reserved(srv) == 768
        assert post(srv, run("print(1)", session="s", memoryLimit="256m"))[0] == 200
        assert reserved(srv) == 768  # a later run in it needs nothing more
        # 300m: its engine finds no room for a pool (over half the budget with the first);
        # the run itself does not fit beside the first pool and the session: the idle
        # engine is stopped and its pool's room reclaimed
        status, body, _ = post(srv, run("print(2)", memoryLimit="300m"))
        assert status == 200, body
        wait_for(lambda: reserved(srv) == 256)  # the session only
        assert srv.call("DELETE", "/session/s")[0] == 200
        assert reserved(srv) == 0


# -- sizes: 413 ------------------------------------------------------------------------------

LIMITS = {"maxBodySize": "64k", "maxCodeSize": "8k"}


def _raw_request(port: int, head: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head.encode())
    return sock


def _response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split()[1]), json.loads(rest[:length])


def test_body_and_code_size_limits(tmp_path):
    with serving(tmp_path, dict(LIMITS)) as srv:
        # A declared length over the limit: answered before a byte of the body is sent.
        sock = _raw_request(
            srv.port,
            "POST /execute HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Type: application/json"
            f"\r\nContent-Length: {10 << 30}\r\n\r\n",
        )
        with sock:
            status, body = _response(sock)
        assert status == 413 and body == {
            "error": "body: larger than the server's limit of 65536 bytes"
        }, body

        # A chunked body with no declared end: refused at the chunk that crosses the limit,
        # while the client is still sending (the old server read it whole first).
        sock = _raw_request(
            srv.port,
            "POST /execute HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Type: application/json"
            "\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        sent, chunk = 0, b"x" * 16384
        with sock:
            while not select.select([sock], [], [], 0.01)[0]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                assert sent < 64 << 20, "no answer while 64 MiB were sent: the body is read whole"
            status, body = _response(sock)
        assert status == 413 and "65536" in body["error"], body

        # Within the body limit, a program over the code limit.
        status, body, _ = post(srv, run("#" * 9000))
        assert status == 413 and body["error"].startswith("request.code: 9000 bytes"), body
        status, body, _ = post(srv, {"request": {"cmd": "echo " + "y" * 9000}})
        assert status == 413 and body["error"].startswith("request.cmd:"), body
        # At the limit: runs.
        status, body, _ = post(srv, run("print(1)" + " " * (8192 - 8)))
        assert (status, body.get("stdout")) == (200, "1"), body


# -- sessions: per key and in total -------------------------------------------------------


def _api_key(srv: Server, name: str) -> str:
    status, body = srv.call("POST", "/auth/keys", {"name": name})
    assert status in (200, 201), body
    return body["key"]


def test_sessions_per_key_and_in_total(tmp_path):
    with serving(
        tmp_path,
        {"maxSessions": 3, "maxSessionsPerKey": 2},
        "--auth-db",
        str(tmp_path / "keys.db"),
    ) as srv:
        alice, bob = _api_key(srv, "alice"), _api_key(srv, "bob")
        for sid in ("a1", "a2"):
            assert post(srv, run("print(1)", session=sid), key=alice)[0] == 200
        # an existing session is not a new one
        assert post(srv, run("print(1)", session="a1"), key=alice)[0] == 200
        status, body, headers = post(srv, run("print(1)", session="a3"), key=alice)
        assert status == 429 and "per key" in body["error"] and headers["retry-after"], body
        # bob has his own allowance, up to the server's total
        assert post(srv, run("print(1)", session="b1"), key=bob)[0] == 200
        status, body, _ = post(srv, run("print(1)", session="b2"), key=bob)
        assert status == 429 and "3 sessions" in body["error"], body
        assert rejected(srv, "sessions") == 2
        # ending one gives its place back
        status, _ = srv.call("DELETE", "/session/a1", key=alice)
        assert status == 200
        assert post(srv, run("print(1)", session="b2"), key=bob)[0] == 200


# -- idle sessions: pruned after the TTL, never while running -----------------------------


def test_idle_sessions_are_pruned_after_their_ttl_not_while_running(tmp_path):
    with serving(tmp_path, {"sessionTtlMs": 400}) as srv:
        # runs 3 TTLs long; the pruner looks every TTL / 4
        write = "open('/sandbox/kept', 'w').write('yes'); " + SLEEP.format(1.2)
        assert post(srv, run(write, session="s"))[0] == 200
        # right after the long run, the session (and its file) is still there
        status, body, _ = post(srv, run("print(open('/sandbox/kept').read())", session="s"))
        assert (status, body.get("stdout")) == (200, "yes"), body
        sandboxes = srv.descendants()
        assert sandboxes
        wait_for(lambda: srv.call("GET", "/sessions")[1]["sessions"] == [], timeout=5)
        wait_for(lambda: not alive(sandboxes), timeout=10)  # its sandbox is gone too
        # the id starts afresh
        status, body, _ = post(
            srv, run("import os; print(os.path.exists('/sandbox/kept'))", session="s")
        )
        assert (status, body.get("stdout")) == (200, "False"), body


# -- drain ----------------------------------------------------------------------------------


def _cgroups_of(pid: int) -> list[str]:
    """Engine cgroup directories named after ``pid`` (isol8.cgroups: isol8-<boot>-<pid>-...)."""
    found = []
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        for name in dirs:
            if name.startswith("isol8-") and f"-{pid}-" in name:
                found.append(os.path.join(root, name))
        dirs[:] = [d for d in dirs if not d.startswith("sb-")]
    return found


def test_drain_answers_503_kills_at_the_deadline_and_leaves_nothing(tmp_path):
    before = set(child_pids())
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    with serving(tmp_path, {"drainTimeoutMs": 3000}, tmpdir=tmpdir) as srv:
        assert post(srv, run("print(1)", session="kept"))[0] == 200  # a live session sandbox
        keep_alive = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        keep_alive.request("GET", "/health")
        assert keep_alive.getresponse().read()  # the connection is open and idle
        finishing, finishing_out = in_background(
            post, srv, run(SLEEP.format(1) + "; print('done')")
        )
        endless, endless_out = in_background(post, srv, run(SLEEP.format(60)))
        wait_for(lambda: running(srv) == 2)
        below = srv.descendants()
        cgroups = _cgroups_of(srv.proc.pid)
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        # new work on the open keep-alive connection, and on a new one: 503
        keep_alive.request(
            "POST", "/execute", json.dumps(run("print(2)")), {"Authorization": f"Bearer {KEY}"}
        )
        answer = keep_alive.getresponse()
        assert answer.status == 503 and "shutting down" in json.loads(answer.read())["error"]
        status, body, _ = post(srv, run("print(3)", session="kept"))
        assert (status, body.get("stdout")) == (200, "3"), body  # the session goes on
        keep_alive.request("GET", "/health")  # a load balancer's probe: send work elsewhere
        answer = keep_alive.getresponse()
        assert (answer.status, json.loads(answer.read())["status"]) == (503, "draining")
        finishing.join(30)
        endless.join(30)
        killed_after = time.monotonic() - started
        assert srv.stop() in (0, -signal.SIGTERM)
    assert finishing_out[0][0] == 200 and finishing_out[0][1]["stdout"] == "done"
    status, body, _ = endless_out[0]
    assert status == 503 and "drain deadline" in body["error"], body
    assert 2.8 < killed_after < 20, killed_after
    assert alive(below) == set()
    assert set(child_pids()) <= before
    if os.geteuid() == 0:  # rootless, a host may have no cgroup for isol8 to use
        assert cgroups, "the server made no cgroup: the check below proves nothing"
    wait_for(lambda: _cgroups_of(srv.proc.pid) == [], timeout=5)
    assert list(tmpdir.iterdir()) == []
