"""`isol8 serve` as a real process on loopback: upstream's wire, auth, the server policy,
sessions, and a shutdown that leaves nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import child_pids

pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")

KEY = "test-master-key-1f3a"
# The seed's request, verbatim; only the port is this test's own.
SEED_CURL = """curl -X POST http://localhost:3000/execute -H "Authorization: Bearer $ISOL8_API_KEY" -H "Content-Type: application/json" -d '{"sessionId": "agent-session-123", "request": { "code": "print(2**8)", "runtime": "python" }, "options": { "timeoutMs": 15000, "network": "none" }}'"""  # noqa: E501


# isol8 serve with the tests' loopback-only resolver and connector (see the script).
SERVE = Path(__file__).with_name("serve_loopback.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, method: str, path: str, body: object = None, *, key: str | None = KEY,
         raw: bytes | None = None) -> tuple[int, dict]:
    """``method path`` on ``url``: the status and the JSON answer (every answer is JSON, a
    balancer's own errors included)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url + path, data=data, method=method)
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Server:
    """``isol8 serve`` in a subprocess on a free loopback port, with a policy file, more
    ``serve`` flags and more environment if given."""

    def __init__(self, config: Path | None = None, *flags: str,
                 env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, str(SERVE), "serve", "--port", str(self.port), *flags]
        if config is not None:
            args += ["--config", str(config)]
        self.proc = subprocess.Popen(args, env={**os.environ, "ISOL8_API_KEY": KEY,
                                                **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.call("GET", "/health", key=None)[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"the server did not start: {self.proc.stdout.read()}")
            time.sleep(0.05)

    def call(self, method: str, path: str, body: object = None, *, key: str | None = KEY,
             raw: bytes | None = None) -> tuple[int, dict]:
        return call(self.url, method, path, body, key=key, raw=raw)

    def execute(self, code: str, *, session: str | None = None, **options: object,
                ) -> tuple[int, dict]:
        body: dict = {"request": {"code": code, "runtime": "python"}, "options": options}
        if session is not None:
            body["sessionId"] = session
        return self.call("POST", "/execute", body)

    def descendants(self) -> set[tuple[int, str]]:
        """(pid, start time) of every process below the server: its sandboxes."""
        parents: dict[int, list[tuple[int, str]]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(stat[1]), []).append((int(entry), stat[19]))
        found, todo = set(), [self.proc.pid]
        while todo:
            for child in parents.get(todo.pop(), []):
                found.add(child)
                todo.append(child[0])
        return found

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop the server with ``sig``, and with a second one if it is still draining a
        second later: a SIGTERM keeps the sessions until the drain's deadline
        (isol8.server.drain), which only the drain tests wait for."""
        if self.proc.stdout.closed:
            return self.proc.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.output = self.proc.stdout.read()
            self.proc.stdout.close()


def helpers_alive(srv: Server) -> int:
    """The server's sandbox helpers (its children named isol8-helper; the sandbox's own
    processes below them may share the name), counted from outside it by a /proc scan."""
    count = 0
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1:].rsplit(")", 1)
        count += comm == "isol8-helper" and int(rest.split()[1]) == srv.proc.pid
    return count


@contextlib.contextmanager
def running(config: Path | None = None) -> Iterator[Server]:
    server = Server(config)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running() as srv:
        yield srv


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory) -> Iterator[Server]:
    """A policy with a 1.5 s timeout ceiling that allows the host's network."""
    config = tmp_path_factory.mktemp("policy") / "policy.toml"
    config.write_text('[ceilings]\ntimeoutMs = 1500\nmemoryLimit = "256m"\n'
                      '[network]\nmodes = ["none", "host"]\n')
    with running(config) as srv:
        yield srv


def alive(procs: set[tuple[int, str]]) -> set[tuple[int, str]]:
    left = set()
    for pid, start in procs:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat[19] == start:
            left.add((pid, start))
    return left


# -- upstream's wire ------------------------------------------------------------------------

def test_seed_curl_request_verbatim(server):
    command = SEED_CURL.replace("localhost:3000", f"localhost:{server.port}")
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "ISOL8_API_KEY": KEY})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["stdout"], result["exitCode"], result["runtime"]) == ("256", 0, "python")
    assert "clamped" not in result  # nothing was over a ceiling: upstream's exact shape
    assert server.call("DELETE", "/session/agent-session-123") == (200, {"ok": True})


def test_ephemeral_execute_and_health(server):
    status, result = server.execute("import sys; print('out'); sys.exit(3)")
    assert status == 200
    assert (result["stdout"], result["exitCode"]) == ("out", 3)
    assert server.call("GET", "/health", key=None) == (200, {"status": "ok",
                                                              "version": "0.1.0"})


def test_cmd_and_request_fields(server):
    status, result = server.call("POST", "/execute", {"request": {
        "cmd": 'cat; echo "$GREETING"; cat /sandbox/in.txt', "runtime": "bash",
        "stdin": "from stdin ", "env": {"GREETING": "hi"},
        "files": {"/sandbox/in.txt": "a file",
                  "/sandbox/b.bin": {"type": "Buffer", "data": [0, 255]}},
        "outputPaths": ["/sandbox/b.bin"], "unknownField": 1}, "options": {"whatever": 2}})
    assert status == 200, result
    assert result["stdout"] == "from stdin hi\na file"
    assert result["files"] == {"/sandbox/b.bin": "AP8="}


# -- auth -----------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [("GET", "/sessions"), ("POST", "/execute"),
                                          ("DELETE", "/session/x")])
def test_auth_missing_is_401_wrong_is_403(server, method, path):
    body = {"request": {"code": "print(1)", "runtime": "python"}}
    assert server.call(method, path, body, key=None) == (
        401, {"error": "Missing Authorization header"})
    assert server.call(method, path, body, key=KEY + "x") == (403, {"error": "Invalid API key"})
    assert server.call(method, path, body, key=KEY[:-1]) == (403, {"error": "Invalid API key"})


# -- bad input: 400 naming the field, never 500 ---------------------------------------------

BAD = [
    (b"{bad", "body"),
    (b"\xff\xfe", "body"),
    (b"[]", "body"),
    (b"{}", "request"),
    (b'{"request": "print(1)"}', "request"),
    (b'{"request": {"code": 7, "runtime": "python"}}', "request.code"),
    (b'{"request": {"code": "1", "runtime": "python", "timeoutMs": "x"}}', "request.timeoutMs"),
    (b'{"request": {"code": "1", "runtime": "python", "timeoutMs": -5}}', "request.timeoutMs"),
    (b'{"request": {"code": "1", "runtime": "python", "env": {"A": 1}}}', "request.env.A"),
    (b'{"request": {"code": "1", "runtime": "cobol"}}', "cobol"),
    (b'{"request": {"code": "1", "cmd": "ls", "runtime": "python"}}', "mutually exclusive"),
    (b'{"request": {"runtime": "python"}}', "exactly one of"),
    (b'{"request": {"codeUrl": "https://x.test/a.py", "runtime": "python"}}',
     "request.codeUrl"),
    (b'{"request": {"code": "1", "runtime": "python"}, "options": []}', "options"),
    (b'{"request": {"code": "1", "runtime": "python"}, "options": {"memoryLimit": "lots"}}',
     "options.memoryLimit"),
    (b'{"request": {"code": "1", "runtime": "python"}, "options": {"network": "bogus"}}',
     "options.network"),
    (b'{"request": {"code": "1", "runtime": "python"}, "options": {"cpuLimit": true}}',
     "options.cpuLimit"),
    (b'{"request": {"code": "1", "runtime": "python"}, "options": {"network": "filtered", '
     b'"networkFilter": {"whitelsit": ["a"]}}}', "whitelsit"),
    (b'{"request": {"code": "1", "runtime": "python"}, "options": {"security": '
     b'{"seccomp": "custom"}}}', "options.security.seccomp"),
    (b'{"sessionId": "a/b", "request": {"code": "1", "runtime": "python"}}', "sessionId"),
    (b'{"sessionId": 5, "request": {"code": "1", "runtime": "python"}}', "sessionId"),
]


@pytest.mark.parametrize("raw, names", BAD)
def test_bad_input_is_400_naming_the_field(server, raw, names):
    status, body = server.call("POST", "/execute", raw=raw)
    assert status == 400, body
    assert names in body["error"], body


def test_unknown_route_and_method_keep_the_error_shape(server):
    assert server.call("GET", "/nope") == (404, {"error": "Not Found"})
    assert server.call("GET", "/execute")[0] == 405


# -- the server policy ----------------------------------------------------------------------

@pytest.mark.parametrize("options, field", [
    ({"security": {"seccomp": "unconfined"}}, "options.security.seccomp"),
    ({"network": "host"}, "options.network"),
    ({"mounts": [{"source": "/etc", "target": "/sandbox/etc"}]}, "options.mounts[0].source"),
    ({"network": "filtered", "networkFilter": {"allowPrivate": True}},
     "options.networkFilter.allowPrivate"),
    ({"network": "filtered", "networkFilter": {"hosts": {"a.test": "127.0.0.1"}}},
     "options.networkFilter.hosts"),
    ({"readonlyRootFs": False}, "options.readonlyRootFs"),
    ({"image": "python:3.12"}, "options.image"),
    ({"image": "/usr"}, "options.image"),
    ({"persist": True}, "options.persist"),
])
def test_unsafe_options_are_refused(server, options, field):
    status, body = server.execute("print(1)", **options)
    assert status == 400, body
    assert body["error"].startswith(field + ":") and "server policy" in body["error"], body


def test_safe_values_of_the_same_options_pass(server):
    status, body = server.execute("print(1)", security={"seccomp": "strict"},
                                  readonlyRootFs=True, persist=False, debug=False, mounts=[])
    assert (status, body.get("stdout")) == (200, "1"), body


def test_numbers_over_a_ceiling_are_clamped_and_reported(strict_server):
    started = time.monotonic()
    status, body = strict_server.call("POST", "/execute", {
        "request": {"code": "import time; time.sleep(30)", "runtime": "python",
                    "timeoutMs": 60_000},
        "options": {"memoryLimit": "64g"}})
    elapsed = time.monotonic() - started
    assert status == 200, body
    assert body["clamped"] == [
        {"field": "options.memoryLimit", "requested": "64g", "applied": 256 << 20},
        {"field": "request.timeoutMs", "requested": 60_000, "applied": 1500}]
    # The ceiling is applied, not only reported: the 30 s sleep dies at 1.5 s.
    assert body["exitCode"] == 137 and "TIMED OUT" in body["stderr"]
    assert elapsed < 15


def test_the_policy_file_allows_what_it_lists(strict_server):
    status, body = strict_server.execute("print('on the host network')", network="host")
    assert (status, body.get("stdout")) == (200, "on the host network"), body
    assert strict_server.execute("print(1)", network="filtered")[0] == 400


def test_an_invalid_policy_file_refuses_to_start(tmp_path):
    config = tmp_path / "policy.json"
    config.write_text('{"ceilings": {"memoryLimt": "1g"}}')
    out = subprocess.run([sys.executable, "-m", "isol8", "serve", "--config", str(config),
                          "--port", str(_free_port())], capture_output=True, text=True,
                         env={**os.environ, "ISOL8_API_KEY": KEY}, timeout=60)
    assert out.returncode == 1 and "memoryLimt" in out.stderr, out.stderr


def test_no_key_refuses_to_start():
    env = {k: v for k, v in os.environ.items() if k != "ISOL8_API_KEY"}
    out = subprocess.run([sys.executable, "-m", "isol8", "serve", "--port",
                          str(_free_port())], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 2 and "master key is required" in out.stderr


def test_port_key_and_policy_from_the_environment(tmp_path):
    """ISOL8_PORT (over PORT), ISOL8_API_KEY and ISOL8_CONFIG, as the flags would."""
    config = tmp_path / "policy.json"
    config.write_text('{"runtimes": ["bash"]}')
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "isol8", "serve"], env={
        **os.environ, "ISOL8_PORT": str(port), "PORT": "1", "ISOL8_API_KEY": KEY,
        "ISOL8_CONFIG": str(config)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        srv = Server.__new__(Server)
        srv.url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if srv.call("GET", "/health", key=None)[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        status, body = srv.execute("print(1)")
        assert (status, body["error"].split(":")[0]) == (400, "request.runtime"), body
        status, body = srv.call("POST", "/execute", {"request": {"cmd": "echo hi"}})
        assert (status, body.get("stdout")) == (200, "hi"), body
    finally:
        proc.terminate()
        proc.wait(60)


# -- sessions -------------------------------------------------------------------------------

def test_session_keeps_state_until_deleted(server):
    write = "open('/sandbox/state', 'w').write('kept')"
    read = "import os; print(open('/sandbox/state').read() if os.path.exists('/sandbox/state')" \
           " else 'none')"
    assert server.execute(write, session="s1")[0] == 200
    assert server.execute(read, session="s1")[1]["stdout"] == "kept"
    assert server.execute(read)[1]["stdout"] == "none"  # ephemeral runs see nothing of it
    status, listed = server.call("GET", "/sessions")
    assert status == 200
    (entry,) = [s for s in listed["sessions"] if s["id"] == "s1"]
    assert entry["isActive"] is False and isinstance(entry["lastAccessedAt"], int)

    assert server.call("DELETE", "/session/s1") == (200, {"ok": True})
    assert server.call("DELETE", "/session/s1") == (200, {"ok": True})  # idempotent
    assert "s1" not in [s["id"] for s in server.call("GET", "/sessions")[1]["sessions"]]
    assert server.execute(read, session="s1")[1]["stdout"] == "none"  # a fresh session
    server.call("DELETE", "/session/s1")


def test_session_with_other_options_is_409(server):
    assert server.execute("print(1)", session="s2", memoryLimit="256m")[0] == 200
    status, body = server.execute("print(1)", session="s2", memoryLimit="128m", pidsLimit=32)
    assert status == 409, body
    assert body["fields"] == ["options.memoryLimit", "options.pidsLimit"]
    # The same options in another spelling are the same engine.
    assert server.execute("print(1)", session="s2", memoryLimit=256 << 20)[0] == 200
    server.call("DELETE", "/session/s2")


# -- shutdown -------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_leaves_no_sandbox_and_no_child(sig):
    before = set(child_pids())  # the module's other servers, if they run
    with running() as srv:
        assert srv.execute("print(1)", session="kept")[0] == 200  # a live persistent sandbox
        assert srv.execute("print(2)")[0] == 200  # an engine with its warm pool
        time.sleep(0.5)  # the pool refills in the background
        below = srv.descendants()
        assert below, "the server has no sandbox to clean up: the test proves nothing"
        # uvicorn re-raises the signal once shut down, so the parent sees why it ended
        # (SIGINT becomes KeyboardInterrupt: the CLI exits 130).
        assert srv.stop(sig) in (0, -sig, 128 + sig)
        assert "Application shutdown complete" in srv.output
    assert alive(below) == set()
    assert set(child_pids()) <= before


def test_exec_does_not_import_the_server_stack():
    out = subprocess.run([sys.executable, "-c",
                          "import sys; from isol8.cli import main; rc = main(['exec', '-e', "
                          "'print(1)']); print(sorted(m for m in sys.modules if m.split('.')[0]"
                          " in ('fastapi', 'uvicorn', 'starlette', 'pydantic')))"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout == "1\n[]\n", out.stderr


def test_shutdown_lets_a_running_execution_finish():
    import threading
    before = set(child_pids())
    answers: list[tuple[int, dict]] = []
    with running() as srv:
        call = threading.Thread(target=lambda: answers.append(srv.execute(
            "import time; time.sleep(2); print('finished')")))
        call.start()
        time.sleep(0.7)  # the run is in progress
        below = srv.descendants()
        assert below
        srv.proc.send_signal(signal.SIGTERM)
        call.join(30)
        assert srv.stop() in (0, -signal.SIGTERM)
    assert answers and answers[0][0] == 200 and answers[0][1]["stdout"] == "finished", answers
    assert alive(below) == set()
    assert set(child_pids()) <= before


# -- engines --------------------------------------------------------------------------------

ARGV1 = "print(open('/proc/self/cmdline').read().split('\\0')[1])"  # '-c' in a pooled zygote


def test_ephemeral_requests_share_an_engine_and_its_warm_pool(server):
    """Upstream builds an engine per request, so its pool never serves one: here the second
    request with the same options (in another spelling) is a pooled zygote's run."""
    options = {"memoryLimit": "384m", "pidsLimit": 48}
    assert server.execute("print(1)", **options)[0] == 200  # the engine starts its pool
    for _ in range(50):
        time.sleep(0.1)
        status, body = server.execute(ARGV1, memoryLimit=384 << 20, pidsLimit=48)
        assert status == 200, body
        if body["stdout"] == "-c":
            return
    raise AssertionError("no request was served by the warm pool")


def test_engines_are_bounded_least_recently_used_out():
    import asyncio

    from isol8.server.engines import EngineRegistry

    async def scenario() -> tuple[bool, bool, bool]:
        registry = EngineRegistry(max_engines=1)
        first_options = {"memoryLimit": 256 << 20, "network": "none"}
        async with registry.ephemeral(first_options) as first:
            assert (await first.execute("print(1)", runtime="python")).stdout == "1"
            async with registry.ephemeral({"memoryLimit": 128 << 20}) as second:
                await second.execute("print(2)", runtime="python")
            await asyncio.gather(*set(registry._stopping))  # the eviction's stop
            # The first is busy: over the bound, it stays; the idle second goes.
            second_stopped = second._engine._config_body is None
            first_running = first._engine._config_body is not None
        await asyncio.sleep(0)
        await registry.close()
        return second_stopped, first_running, first._engine._config_body is None

    second_stopped, first_running, first_stopped = asyncio.run(scenario())
    assert (second_stopped, first_running, first_stopped) == (True, True, True)


# Every known field with every JSON kind of value: the answer is a 200 or a 4xx, never a 500.
ODD_VALUES = [None, True, 0, -1, 1.5, 10**30, "", "x" * 300, "../..", "/etc/passwd",
              [], ["a", 1], {}, {"a": 1}, {"type": "Buffer", "data": [300]}, float("nan")]


def _odd_bodies() -> list[tuple[str, bytes]]:
    from isol8.server.wire import FILTER_FIELDS, OPTION_FIELDS, REQUEST_FIELDS
    base = {"request": {"code": "print(1)", "runtime": "python"}}
    cases = []
    for value in ODD_VALUES:
        for name in [*REQUEST_FIELDS, "codeUrl", "installPackages"]:
            cases.append((f"request.{name}", {**base, "request": {**base["request"],
                                                                  name: value}}))
        for name in OPTION_FIELDS:
            cases.append((f"options.{name}", {**base, "options": {name: value}}))
        for name in FILTER_FIELDS:
            cases.append((f"networkFilter.{name}", {**base, "options": {
                "network": "filtered", "networkFilter": {name: value}}}))
        cases.append(("security.seccomp", {**base, "options": {"security": {"seccomp": value}}}))
        cases.append(("sessionId", {**base, "sessionId": value}))
    return [(where, json.dumps(body).encode()) for where, body in cases]


def test_odd_values_never_give_a_server_error(strict_server):
    failures = []
    for where, raw in _odd_bodies():
        status, body = strict_server.call("POST", "/execute", raw=raw)
        if not (status == 200 or 400 <= status < 500) or ("error" not in body
                                                           and status != 200):
            failures.append((where, raw[:120], status, body))
    assert failures == []
