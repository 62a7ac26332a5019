"""`isol8 serve --audit FILE`: one whole JSON line per execution with upstream's fields, the
include switches, secrets masked everywhere, security events, a 0600 file, and a failing
write that never fails the request. Against a real server process on loopback; the filtered
network's only upstream is this test's own server on 127.0.0.1, reached through a pin."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import secrets
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from test_server import KEY, Server

pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")

FIELDS = {"executionId", "userId", "timestamp", "runtime", "codeHash", "exitCode", "durationMs",
          "resourceUsage", "securityEvents", "sessionId", "mode"}
# network "filtered" through pins to loopback needs both allowances
POLICY = '[network]\nmodes = ["none", "filtered"]\nallowPrivate = true\npins = true\n'


class AuditServer(Server):
    """``isol8 serve --audit FILE`` plus the given flags (Server starts with a config only)."""

    def __init__(self, audit: Path | str, *flags: str, config: Path | None = None) -> None:
        self.audit = Path(audit)
        super().__init__(config, "--audit", str(audit), *flags)

    def lines(self) -> list[dict]:
        """Every line so far; each must be whole JSON."""
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def record_of(self, execution_id: str) -> dict:
        """The line of one run: the writer thread appends it just after the response."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = [r for r in self.lines() if r.get("executionId") == execution_id]
            if found:
                assert len(found) == 1, found
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no audit line for {execution_id}: {self.lines()}")

    def run(self, request: dict, options: dict | None = None, session: str | None = None,
            ) -> tuple[dict, dict]:
        """(the response's result, its audit line)."""
        body: dict = {"request": request, "options": options or {}}
        if session is not None:
            body["sessionId"] = session
        status, result = self.call("POST", "/execute", body)
        assert status == 200, result
        return result, self.record_of(result["executionId"])


def _start(*args, **kwargs) -> Iterator[AuditServer]:
    server = AuditServer(*args, **kwargs)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Iterator[AuditServer]:
    where = tmp_path_factory.mktemp("audit")
    (where / "policy.toml").write_text(POLICY)
    yield from _start(where / "plain.log", config=where / "policy.toml")


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Iterator[AuditServer]:
    where = tmp_path_factory.mktemp("audit")
    yield from _start(where / "full.log", "--audit-include-code", "--audit-include-output")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _types(record: dict) -> list[str]:
    return [event["type"] for event in record["securityEvents"]]


def test_a_line_has_upstreams_fields_and_nothing_of_the_run_by_default(plain):
    before = datetime.now().astimezone()
    code = "import sys; print(2**8); print('err', file=sys.stderr)"
    result, record = plain.run({"code": code, "runtime": "python"})
    after = datetime.now().astimezone()
    assert set(record) == FIELDS
    assert record["executionId"] == result["executionId"]
    assert uuid.UUID(record["executionId"]).version == 4
    stamp = datetime.fromisoformat(record["timestamp"])
    assert stamp.utcoffset() == timedelta(0)
    assert before - timedelta(milliseconds=1) <= stamp <= after
    assert (record["userId"], record["runtime"], record["codeHash"]) == (
        "master", "python", _sha(code))
    assert (record["exitCode"], record["durationMs"]) == (0, result["durationMs"])
    assert record["resourceUsage"] == result["resourceUsage"]
    assert (record["securityEvents"], record["sessionId"], record["mode"]) == (
        [], None, "ephemeral")


def test_user_id_is_the_api_keys_id(tmp_path):
    server = AuditServer(tmp_path / "keys.log", "--auth-db", str(tmp_path / "auth.db"))
    try:
        status, created = server.call("POST", "/auth/keys", {"name": "audited"})
        assert status == 201, created
        status, result = server.call("POST", "/execute", {"request": {
            "code": "print(1)", "runtime": "python"}}, key=created["key"])
        assert status == 200, result
        assert server.record_of(result["executionId"])["userId"] == created["id"]
    finally:
        server.stop()


def test_the_file_is_created_0600(plain):
    plain.run({"code": "print(1)", "runtime": "python"})
    assert stat.S_IMODE(plain.audit.stat().st_mode) == 0o600


def test_a_session_run_and_a_cmd(plain):
    cmd = "echo hi; exit 4"
    result, record = plain.run({"cmd": cmd, "runtime": "bash"}, session="audit-one")
    try:
        assert (record["sessionId"], record["mode"]) == ("audit-one", "persistent")
        assert (record["codeHash"], record["exitCode"]) == (_sha(cmd), 4)
        assert record["runtime"] == result["runtime"]
    finally:
        assert plain.call("DELETE", "/session/audit-one")[0] == 200


def test_include_switches_write_code_and_output(full):
    code = "import sys; print('to out'); print('to err', file=sys.stderr)"
    result, record = full.run({"code": code, "runtime": "python",
                               "setupScript": "echo set up > /sandbox/s"})
    assert set(record) == FIELDS | {"code", "setupScript", "stdout", "stderr"}
    assert (record["code"], record["setupScript"]) == (code, "echo set up > /sandbox/s")
    assert (record["stdout"], record["stderr"]) == (result["stdout"], result["stderr"])
    assert (result["stdout"], result["stderr"]) == ("to out", "to err")
    cmd = "echo from cmd"
    result, record = full.run({"cmd": cmd, "runtime": "bash"})
    assert (record["cmd"], record["stdout"], record["codeHash"]) == (cmd, "from cmd", _sha(cmd))
    assert "code" not in record


@pytest.mark.parametrize("which", ["plain", "full"])
def test_secrets_never_appear(request, which):
    server: AuditServer = request.getfixturevalue(which)
    secret = "sk-" + secrets.token_hex(16)
    code = (f"import os, sys\nprint('{secret}', os.environ['API_TOKEN'], os.environ['ALSO'])\n"
            f"print(sys.stdin.read(), file=sys.stderr)\n")
    result, record = server.run(
        {"code": code, "runtime": "python", "env": {"ALSO": secret}, "stdin": secret,
         "setupScript": f"echo {secret} > /sandbox/setup"},
        {"secrets": {"API_TOKEN": secret}})
    assert result["stdout"] == "*** *** ***"  # the engine's masking
    masked = code.replace(secret, "***")
    # the hash of the code as written to the log, never of the secret's
    assert record["codeHash"] == _sha(masked) != _sha(code)
    if which == "full":
        assert record["code"] == masked
        assert record["setupScript"] == "echo *** > /sandbox/setup"
        assert (record["stdout"], record["stderr"]) == ("*** *** ***", "***")
    session = f"s-{secret}"
    _, record = server.run({"code": "print(1)", "runtime": "python"},
                           {"secrets": {"API_TOKEN": secret}}, session=session)
    assert server.call("DELETE", f"/session/{session}")[0] == 200
    assert record["sessionId"] == "s-***"
    assert secret not in server.audit.read_text()
    assert secret[3:] not in server.audit.read_text()


def test_a_timeout_is_a_security_event(plain):
    result, record = plain.run({"code": "while True: pass", "runtime": "python",
                                "timeoutMs": 1000})
    assert "timeout" in result["resourceUsage"]["limitsReached"]
    assert _types(record) == ["timeout"]
    event = record["securityEvents"][0]
    assert set(event) == {"type", "message", "timestamp"}
    assert event["timestamp"] == record["timestamp"]
    assert record["exitCode"] == result["exitCode"] != 0


def test_an_oom_is_a_security_event(plain):
    result, record = plain.run({"code": "chunks = []\nwhile True:\n"
                                        "    chunks.append(b'x' * (16 << 20))",
                                "runtime": "python", "timeoutMs": 20000},
                               {"memoryLimit": "64m"})
    assert (result["exitCode"], result["resourceUsage"]["oom"]) == (137, True), result
    assert _types(record) == ["oom"]


def test_truncated_output_is_a_security_event(plain):
    result, record = plain.run({"code": "print('x' * 10000)", "runtime": "python"},
                               {"maxOutputSize": 1024})
    assert result["truncated"]
    assert _types(record) == ["output_truncated"]


class _Web(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Web)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_blocked_request_is_a_security_event_with_secrets_masked(plain, web):
    secret = "tok-" + secrets.token_hex(12)
    code = ("import os, urllib.request, urllib.error\n"
            "print(urllib.request.urlopen('http://good.test/fine', timeout=10).read().decode())\n"
            "try:\n"
            "    urllib.request.urlopen('http://other.test/x?k=' + os.environ['T'], timeout=10)\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code)\n")
    result, record = plain.run(
        {"code": code, "runtime": "python"},
        {"network": "filtered", "logNetwork": True, "secrets": {"T": secret},
         "networkFilter": {"whitelist": [r"^good\.test$"], "allowPrivate": True,
                           "hosts": {"good.test": f"127.0.0.1:{web}"}}})
    assert result["stdout"] == "ok\n403", result
    assert [(e["host"], e["action"]) for e in result["networkLogs"]] == [
        ("good.test", "ALLOW"), ("other.test", "BLOCK")]
    assert _types(record) == ["network_blocked"]
    event = record["securityEvents"][0]
    assert event["details"] == {"method": "GET", "host": "other.test", "path": "/x?k=***",
                                "reason": "no whitelist rule matches"}
    assert event["timestamp"] == result["networkLogs"][1]["timestamp"]
    assert record["networkLogs"][0] == result["networkLogs"][0]
    assert record["networkLogs"][1]["path"] == "/x?k=***"
    assert secret not in plain.audit.read_text()


def test_concurrent_runs_give_one_whole_line_each(plain):
    ids: list[str] = []

    def run(n: int) -> None:
        status, result = plain.call("POST", "/execute", {"request": {
            "code": f"print({n} * 'y' * 5000)", "runtime": "python"}})
        assert status == 200
        ids.append(result["executionId"])

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 8
    for execution_id in ids:
        plain.record_of(execution_id)
    assert plain.audit.read_text().endswith("\n")
    plain.lines()  # every line whole


def test_an_existing_file_is_appended_to_and_tightened(tmp_path):
    path = tmp_path / "old.log"
    path.write_text('{"earlier": true}\n')
    path.chmod(0o644)
    server = AuditServer(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        result, _ = server.run({"code": "print(1)", "runtime": "python"})
        assert path.read_text().startswith('{"earlier": true}\n')
        assert [r.get("executionId") for r in server.lines()] == [None, result["executionId"]]
    finally:
        server.stop()


def test_a_failing_write_is_logged_and_the_request_still_succeeds():
    server = AuditServer("/dev/full")  # every write: ENOSPC
    try:
        for _ in range(2):
            status, result = server.execute("print('served')")
            assert (status, result["stdout"]) == (200, "served")
    finally:
        server.stop()
    assert "Application shutdown complete" in server.output  # the close came after
    errors = [line for line in server.output.splitlines() if "audit log /dev/full" in line]
    assert errors == ["audit log /dev/full: write failed: No space left on device"], \
        server.output


def test_bad_audit_flags_refuse_to_start(tmp_path):
    base = [sys.executable, "-m", "isol8", "serve", "--key", KEY, "--port", "0"]
    out = subprocess.run(base + ["--audit-include-output"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "--audit-include-code and --audit-include-output need --audit" in out.stderr
    missing = tmp_path / "no" / "such.log"
    out = subprocess.run(base + ["--audit", str(missing)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    assert f"audit log {missing}: No such file or directory" in out.stderr


def test_record_is_cheap_and_close_writes_every_line(tmp_path):
    from isol8.result import ExecutionResult, ResourceUsage
    from isol8.server.audit import AuditLog
    from isol8.server.wire import ExecuteBody

    usage = ResourceUsage(cpu_time_ms=1, cpu_percent=1.0, memory_mb=1.0, peak_memory_mb=1.0,
                          oom=False, enforced={"memory": "cgroup2"})
    result = ExecutionResult(stdout="out", stderr="", exit_code=0, duration_ms=5,
                             truncated=False, execution_id=str(uuid.uuid4()), runtime="python",
                             timestamp="2026-01-01T00:00:00.000+00:00", resource_usage=usage)
    body = ExecuteBody(None, {"code": "print(1)", "runtime": "python"},
                       {"secrets": {"K": "value"}})
    audit = AuditLog(str(tmp_path / "a.log"), include_code=True, include_output=True)
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        audit.record("master", body, result)
    per_record = (time.perf_counter() - start) / n
    audit.close()
    lines = (tmp_path / "a.log").read_text().splitlines()
    assert len(lines) == n
    assert json.loads(lines[-1])["stdout"] == "out"
    # measured about 5 us (queueing only; the writer thread builds and writes the line)
    assert per_record < 500e-6, f"{per_record * 1e6:.0f} us per record"


def test_a_stuck_file_never_blocks_a_record_nor_the_shutdown(tmp_path, monkeypatch, caplog):
    """A pipe nobody reads: the writer blocks in write(2); records are dropped and logged,
    close() gives up in time, and the writer closes the file once the write returns."""
    import select

    from isol8.server import audit as audit_module
    from isol8.result import ExecutionResult, ResourceUsage
    from isol8.server.wire import ExecuteBody

    monkeypatch.setattr(audit_module, "MAX_PENDING", 20)
    monkeypatch.setattr(audit_module, "CLOSE_TIMEOUT", 0.5)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so opening it to write cannot wait
    try:
        usage = ResourceUsage(cpu_time_ms=1, cpu_percent=1.0, memory_mb=1.0,
                              peak_memory_mb=1.0, oom=False, enforced={})
        result = ExecutionResult(stdout="x" * 200_000, stderr="", exit_code=0, duration_ms=5,
                                 truncated=False, execution_id=str(uuid.uuid4()),
                                 runtime="python", timestamp="t", resource_usage=usage)
        body = ExecuteBody(None, {"code": "print(1)", "runtime": "python"})
        audit = audit_module.AuditLog(str(fifo), include_output=True)
        slowest = 0.0
        for _ in range(100):
            start = time.perf_counter()
            audit.record("master", body, result)
            slowest = max(slowest, time.perf_counter() - start)
        assert slowest < 0.05, f"a record waited {slowest * 1e3:.0f} ms"
        start = time.monotonic()
        audit.close()
        assert time.monotonic() - start < 5
        assert audit._thread.is_alive()  # still in its first write: a line beyond the pipe
        messages = [r.getMessage() for r in caplog.records if r.name == audit_module.__name__]
        assert any("records dropped, its writes are not keeping up" in m for m in messages)
        assert any("stuck in a write" in m for m in messages)
        got, deadline = 0, time.monotonic() + 30
        while time.monotonic() < deadline:  # read until the writer closes its end
            if not select.select([reader], [], [], 1)[0]:
                continue
            chunk = os.read(reader, 1 << 20)
            if not chunk:
                break
            got += len(chunk)
        audit._thread.join(10)
        assert not audit._thread.is_alive()
        assert got > 200_000  # the line it was writing, and what was queued before close
    finally:
        os.close(reader)


def _lines_with(server: AuditServer, marker: str, count: int = 1) -> list[dict]:
    """The lines whose code holds ``marker`` (runs without a result have no id to find)."""
    digests = {_sha(marker)}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [r for r in server.lines() if r["codeHash"] in digests]
        if len(found) >= count:
            return found
        time.sleep(0.02)
    raise AssertionError(f"no audit line for {marker!r}: {server.lines()}")


def test_a_run_the_policy_refuses_is_audited(plain):
    """The request an operator most wants to see: host network, which POLICY forbids."""
    code = f"print('refused {uuid.uuid4()}')"
    status, body = plain.call("POST", "/execute", {
        "request": {"code": code, "runtime": "python"},
        "options": {"network": "host", "secrets": {"TOKEN": "refused-s3cret"}}})
    assert status == 400, body
    [record] = _lines_with(plain, code)
    assert record["outcome"] == "refused" and record["exitCode"] is None, record
    assert _types(record) == ["policy_refused"], record
    assert "network" in record["error"]["message"], record
    assert record["runtime"] == "python" and record["userId"] == "master"
    assert "refused-s3cret" not in json.dumps(record)


def test_a_failed_setup_script_is_audited(plain):
    cmd = f"echo never-{uuid.uuid4()}"
    status, body = plain.call("POST", "/execute", {
        "request": {"cmd": cmd, "setupScript": "exit 3"}})
    assert status == 400 and body["exitCode"] == 3, body
    [record] = _lines_with(plain, cmd)
    assert record["outcome"] == "failed" and record["securityEvents"] == [], record
    assert record["error"]["type"] == "SetupScriptFailed", record


def test_a_run_whose_client_left_is_audited_as_cancelled(plain):
    import socket as socket_module
    code = f"import time; print('{uuid.uuid4()}', flush=True); time.sleep(60)"
    body = json.dumps({"request": {"code": code, "runtime": "python"}}).encode()
    with socket_module.create_connection(("127.0.0.1", plain.port)) as conn:
        conn.sendall(b"POST /execute/stream HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + KEY.encode() + b"\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while b"stdout" not in got:  # the run has started
            chunk = conn.recv(4096)
            assert chunk, got
            got += chunk
    [record] = _lines_with(plain, code)
    assert record["outcome"] == "cancelled" and record["exitCode"] is None, record


def test_blocked_requests_are_audited_even_when_the_client_asked_for_no_logs(plain, web):
    """The log is the operator's: the server logs a filtered run's requests for it, and
    the answer still has no networkLogs, since the client did not ask for them."""
    code = ("import urllib.request, urllib.error\n"
            "try:\n"
            "    urllib.request.urlopen('http://other.test/quiet', timeout=10)\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code)\n")
    result, record = plain.run(
        {"code": code, "runtime": "python"},
        {"network": "filtered", "networkFilter": {
            "whitelist": [r"^good\.test$"], "allowPrivate": True,
            "hosts": {"good.test": f"127.0.0.1:{web}"}}})
    assert result["stdout"] == "403", result
    assert "networkLogs" not in result, result
    assert _types(record) == ["network_blocked"], record
    assert record["securityEvents"][0]["details"]["path"] == "/quiet"
