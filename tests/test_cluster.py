"""Three real ``isol8 serve`` nodes behind a real HAProxy running the shipped
deploy/haproxy/isol8.cfg, keys in one shared store, everything on loopback: sessions pinned
by the wire's own id, keys valid on every node, a dead node losing only its sessions, a
draining node finishing its runs while new work goes elsewhere, and nothing left after."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from cluster import (CONFIG, HAPROXY, Balancer, Cluster, call, policy_file,
                     running_cluster)
from conftest import child_pids
from postgres import running_postgres
from test_server import KEY, SEED_CURL, alive

pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")
pytest.importorskip("httpx2", reason="the client extra (isol8[client]) is not installed")
if not os.access(HAPROXY, os.X_OK):
    pytest.skip(f"{HAPROXY} is missing (scripts/system-deps.sh --test installs it)",
                allow_module_level=True)

from isol8.client import RemoteIsol8, SessionNotFound  # noqa: E402

README = CONFIG.parents[2] / "README.md"
# Enough sessions per key for 50 sessions on three nodes however the ring spreads them.
CAPACITY = {"maxSessionsPerKey": 64, "maxSessions": 64}
# Appends one byte to a file in the session's /sandbox and prints the file: its length is
# the number of calls this session has had.
APPEND = "f = open('/sandbox/n', 'a+'); f.write('x'); f.seek(0); print(len(f.read()))"


def run(code: str, session: str | None = None) -> dict[str, object]:
    """POST /execute's body in upstream's key order (request, options, sessionId)."""
    body: dict[str, object] = {"request": {"code": code, "runtime": "python"}, "options": {}}
    if session is not None:
        body["sessionId"] = session
    return body


def descendants(cluster: Cluster) -> set[tuple[int, str]]:
    return set().union(*(node.descendants() for node in cluster.nodes))


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """One PostgreSQL for the module: every node's keys (``--auth-db``)."""
    with running_postgres() as url:
        yield url


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Cluster]:
    """One cluster for the tests that leave every node running."""
    directory = tmp_path_factory.mktemp("cluster")
    before = set(child_pids())
    with running_cluster(directory, "--auth-db", database,
                         policy=policy_file(directory, CAPACITY)) as running:
        yield running
        below = descendants(running)
    assert alive(below) == set()
    assert set(child_pids()) <= before


def readme_example(name: str) -> str:
    """A ``sh`` block of the README between its example markers."""
    marker = f"<!-- example: {name} -->"
    text = README.read_text()
    block = text.split(marker, 1)[1].split("<!-- /example -->", 1)[0]
    found = re.search(r"```sh\n(.*?)```", block, re.S)
    assert found, block
    return found.group(1)


def test_the_shipped_config_passes_haproxys_check_as_the_readme_runs_it():
    command = readme_example("haproxy-check")
    assert str(CONFIG.relative_to(CONFIG.parents[2])) in command
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30,
                         cwd=CONFIG.parents[2], env={"PATH": "/usr/sbin:/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Configuration file is valid" in out.stdout + out.stderr


def test_a_key_created_on_one_node_works_on_every_node(cluster):
    first = cluster.nodes[0]
    status, created = first.call("POST", "/auth/keys", {"name": "cluster-tenant"})
    assert status == 201, created
    key = created["key"]
    for node in cluster.nodes:
        status, result = call(node.url, "POST", "/execute", run("print(7)"), key=key)
        assert (status, result["stdout"]) == (200, "7"), (node.url, result)
    for _ in range(6):  # through the balancer, whichever node it picks
        status, result = cluster.call("POST", "/execute", run("print(7)"), key=key)
        assert (status, result["stdout"]) == (200, "7"), result
    # a wrong key is refused the same way through it
    status, result = cluster.call("POST", "/execute", run("print(7)"), key=key + "x")
    assert status == 403 and result["error"], result


def test_fifty_sessions_keep_their_state_through_the_balancer(cluster, tmp_path):
    sessions = [f"state-{n}" for n in range(50)]

    def use(session: str) -> list[str]:
        seen = []
        for _ in range(10):
            status, result = cluster.call("POST", "/execute", run(APPEND, session))
            seen.append(result["stdout"] if status == 200 else f"{status} {result}")
        return seen

    with ThreadPoolExecutor(8) as pool:
        outputs = dict(zip(sessions, pool.map(use, sessions)))
    for session, seen in outputs.items():
        assert seen == [str(n) for n in range(1, 11)], (session, seen)
    # each session on exactly one node, and the ring used all three
    homes = {session: cluster.holders(session) for session in sessions}
    assert all(len(found) == 1 for found in homes.values()), homes
    counts = [sum(found == [index] for found in homes.values()) for index in range(3)]
    assert min(counts) >= 5, counts
    # GET /file?sessionId= reaches the session's node (another would answer 404)
    for session in sessions:
        status, body = cluster.call("GET", f"/file?sessionId={session}&path=/sandbox/n")
        assert (status, base64.b64decode(body["content"])) == (200, b"x" * 10), body
    # a second HAProxy, its stick table empty, finds every session by the ring alone: the
    # instances of a highly available pair agree without sharing their tables
    second = Balancer(cluster.nodes, tmp_path / "second.log")
    try:
        for session in sessions:
            status, body = call(second.url, "GET", f"/file?sessionId={session}&path=/sandbox/n")
            assert status == 200, (session, body)
    finally:
        second.stop()
    # DELETE /session/{id} too (another node would answer ok and leave it running)
    for session in sessions:
        assert cluster.call("DELETE", f"/session/{session}") == (200, {"ok": True})
    assert all(cluster.holders(session) == [] for session in sessions)


def test_the_seed_request_and_upstream_bodies_work_unchanged(cluster):
    command = SEED_CURL.replace("localhost:3000", f"127.0.0.1:{cluster.balancer.port}")
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "ISOL8_API_KEY": KEY})
    assert out.returncode == 0, out.stderr
    assert '"stdout":"256"' in out.stdout, out.stdout
    assert len(cluster.holders("agent-session-123")) == 1
    # upstream's key order puts sessionId after the code: a body far beyond HAProxy's
    # default 16 KiB buffer still finds the session's node
    padding = "#" + "x" * 200_000 + "\n"
    for session in ("big-a", "big-b", "big-c", "big-d"):
        assert cluster.call("POST", "/execute", run(APPEND, session))[0] == 200
        status, result = cluster.call("POST", "/execute", run(padding + APPEND, session))
        assert (status, result["stdout"]) == (200, "2"), result
        assert cluster.call("DELETE", f"/session/{session}") == (200, {"ok": True})
    assert cluster.call("DELETE", "/session/agent-session-123") == (200, {"ok": True})


def test_a_websocket_stream_reaches_its_session_node(cluster):
    for number in range(6):  # one right node by chance: 1 in 3; six: 1 in 729
        session = f"ws-{number}"
        with RemoteIsol8(host=cluster.url, api_key=KEY, session_id=session,
                         streaming="websocket") as remote:
            remote.execute("open('/sandbox/mark', 'w').write('before')")
            events = list(remote.execute_stream(
                "print(open('/sandbox/mark').read()); open('/sandbox/mark', 'w').write('ws')"))
            stdout = "".join(str(e.data) for e in events if e.type == "stdout")
            assert stdout.strip() == "before", events
            assert remote.get_file("/sandbox/mark") == b"ws"
            assert len(cluster.holders(session)) == 1
        assert cluster.holders(session) == []  # stop() deleted it on its node


@pytest.mark.parametrize("streaming", ["sse", "websocket"])
def test_streams_pass_the_balancer_as_they_come(cluster, streaming):
    """HAProxy buffers requests (to read their body), never answers: an event is
    forwarded when the node sends it, not when the run ends."""
    code = "import time; print('first', flush=True); time.sleep(1); print('last')"
    arrivals = []
    with RemoteIsol8(host=cluster.url, api_key=KEY, streaming=streaming) as remote:
        for event in remote.execute_stream(code):
            arrivals.append((time.monotonic(), event.type, str(event.data)))
    first = next(at for at, kind, data in arrivals if kind == "stdout" and "first" in data)
    assert arrivals[-1][1:] == ("exit", "0"), arrivals
    assert arrivals[-1][0] - first >= 0.9, arrivals  # HAProxy may hold an event 200 ms


def test_a_dead_node_loses_only_its_sessions(tmp_path, database):
    before = set(child_pids())
    with running_cluster(tmp_path, "--auth-db", database,
                         policy=policy_file(tmp_path, CAPACITY)) as cluster:
        sessions = [f"kill-{n}" for n in range(15)]
        for session in sessions:
            status, result = cluster.call("POST", "/execute", run(APPEND, session))
            assert (status, result["stdout"]) == (200, "1"), result
        homes = {session: cluster.holders(session)[0] for session in sessions}
        victim = cluster.nodes[1]
        lost = [session for session, home in homes.items() if home == 1]
        kept = [session for session, home in homes.items() if home != 1]
        assert lost and kept, homes
        sandboxes = victim.descendants()
        victim.proc.kill()
        victim.proc.wait()
        # ephemeral runs keep succeeding, before HAProxy noticed and after
        for _ in range(9):
            status, result = cluster.call("POST", "/execute", run("print(5)"))
            assert (status, result["stdout"]) == (200, "5"), result
        cluster.balancer.wait_for_log("node2 is DOWN")
        for _ in range(6):
            assert cluster.call("POST", "/execute", run("print(5)"))[0] == 200
        # the victim's sessions: a typed 404 in upstream's shape, never another's state
        for session in lost:
            status, body = cluster.call("GET", f"/file?sessionId={session}&path=/sandbox/n")
            assert (status, body) == (404, {"error": "Session not found"}), body
        with RemoteIsol8(host=cluster.url, api_key=KEY, session_id=lost[0]) as remote:
            with pytest.raises(SessionNotFound):
                remote.get_file("/sandbox/n")
        # ...and so is an /execute of one, naming the node that lost it (the shared session
        # directory), once: the next request with the id starts it afresh on a live node,
        # as upstream starts any unknown id
        gone = lost[1 % len(lost)]
        status, body = cluster.call("POST", "/execute", run(APPEND, gone))
        assert status == 404 and body["error"].startswith("Session not found"), body
        assert "node 'node2'" in body["error"], body
        status, result = cluster.call("POST", "/execute", run(APPEND, gone))
        assert (status, result["stdout"]) == (200, "1"), result
        if len(lost) > 2:
            with RemoteIsol8(host=cluster.url, api_key=KEY, session_id=lost[2]) as remote:
                with pytest.raises(SessionNotFound, match="node2"):
                    remote.execute(APPEND, runtime="python")
        # the other nodes' sessions carry on
        for session in kept:
            status, result = cluster.call("POST", "/execute", run(APPEND, session))
            assert (status, result["stdout"]) == (200, "2"), (session, result)
        # ...also through a fresh HAProxy, by the consistent ring alone (no stick table
        # yet): losing a node moves no other node's session
        second = Balancer(cluster.nodes, tmp_path / "second.log")
        try:
            second.wait_for_log("node2 is DOWN")
            for session in kept:
                status, body = call(second.url, "GET",
                                    f"/file?sessionId={session}&path=/sandbox/n")
                assert status == 200, (session, body)
        finally:
            second.stop()
        deadline = time.monotonic() + 10
        while alive(sandboxes) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alive(sandboxes) == set(), "the killed node's sandboxes outlived it"
        survivors = descendants(cluster)
        for session in sessions:  # idle nodes stop at once (a drain waits for sessions)
            assert cluster.call("DELETE", f"/session/{session}") == (200, {"ok": True})
        # the directory forgot every session that ended; only the dead node's lost ones that
        # nobody asked for since are left, naming it
        import psycopg
        with psycopg.connect(database) as conn:
            left = conn.execute("SELECT session_id, node FROM isol8_sessions").fetchall()
        assert {node for _, node in left} <= {"node2"}, left
        assert {sid for sid, _ in left} <= set(lost) - {gone}, left
    assert alive(survivors) == set()
    assert set(child_pids()) <= before


@pytest.mark.parametrize("how", ["admin", "sigterm"])
def test_a_draining_node_finishes_its_run_while_new_sessions_go_elsewhere(tmp_path, database,
                                                                          how):
    before = set(child_pids())
    with running_cluster(tmp_path, "--auth-db", database,
                         policy=policy_file(tmp_path, CAPACITY)) as cluster:
        started = [f"drain-{n}" for n in range(30)]
        session = next(name for name in started if _home(cluster, name) == 0)
        answers: list[tuple[int, dict]] = []
        running = threading.Thread(target=lambda: answers.append(cluster.call(
            "POST", "/execute", run(APPEND + "; import time; time.sleep(2); print('done')",
                                    session))))
        running.start()
        time.sleep(0.7)  # the run is in progress on node 1
        draining = cluster.nodes[0]
        if how == "admin":  # the operator's way: through the node itself, master key
            status, body = call(draining.url, "POST", "/admin/drain", key=KEY)
            assert (status, body["status"]) == (202, "draining"), body
        else:
            draining.proc.send_signal(signal.SIGTERM)
        cluster.balancer.wait_for_log("node1 is DOWN")
        # new sessions and ephemeral runs go to the other two
        fresh = [f"after-{n}" for n in range(12)]
        for name in fresh:
            status, result = cluster.call("POST", "/execute", run(APPEND, name))
            assert (status, result["stdout"]) == (200, "1"), result
            assert cluster.holders(name) in ([1], [2]), name
        for _ in range(6):
            assert cluster.call("POST", "/execute", run("print(1)"))[0] == 200
        running.join(30)
        assert answers and answers[0][0] == 200, answers
        assert answers[0][1]["stdout"] == "1\ndone", answers
        # the draining node's own session still reaches it, its state intact
        status, result = cluster.call("POST", "/execute", run(APPEND, session))
        assert (status, result["stdout"]) == (200, "2"), result
        survivors = descendants(cluster)
        for name in [*started, *fresh]:
            assert cluster.call("DELETE", f"/session/{name}") == (200, {"ok": True})
        if how == "sigterm":  # idle now, the node exits by itself
            assert draining.proc.wait(timeout=20) in (0, -signal.SIGTERM)
        else:  # it stays up, out of the balancer, until it is stopped
            status, body = call(draining.url, "GET", "/health", key=None)
            assert (status, body["status"], body["sessions"]) == (503, "draining", 0), body
            assert draining.proc.poll() is None
    assert alive(survivors) == set()
    assert set(child_pids()) <= before


def _home(cluster: Cluster, session: str) -> int:
    """Start ``session`` through the balancer; the index of the node that has it."""
    status, result = cluster.call("POST", "/execute", run("print(0)", session))
    assert status == 200, result
    (home,) = cluster.holders(session)
    return home
