"""``POST /file`` and ``GET /file`` against a real ``isol8 serve``: binary-safe round trips
through a session's sandbox, 400 naming the parameter, 404 for an unknown session, file or
another key's session, and no session created by a file call."""

from __future__ import annotations

import base64
import hashlib
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_server import KEY, Server

pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")

SESSION = "files-1"


class AuthDbServer(Server):
    """``isol8 serve --auth-db PATH [ARGS...]``: API keys besides the master key."""

    def __init__(self, auth_db: Path, *args: str) -> None:
        super().__init__(None, "--auth-db", str(auth_db), *args)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    try:
        status, body = srv.execute("print('ready')", session=SESSION)
        assert status == 200, body
        yield srv
    finally:
        srv.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def put(
    srv: Server, path: str, data: bytes, session: str = SESSION, key: str = KEY
) -> tuple[int, dict]:
    return srv.call(
        "POST", "/file", {"sessionId": session, "path": path, "content": b64(data)}, key=key
    )


def get(srv: Server, path: str, session: str = SESSION, key: str = KEY) -> tuple[int, dict]:
    query = urllib.parse.urlencode({"sessionId": session, "path": path})
    return srv.call("GET", f"/file?{query}", key=key)


def test_binary_round_trip_through_the_sandbox(server: Server) -> None:
    blob = bytes(range(256)) * 16 + os.urandom(1 << 20) + b"\0\r\n\xff"
    assert put(server, "/sandbox/data/blob.bin", blob) == (200, {"ok": True})
    status, body = get(server, "/sandbox/data/blob.bin")
    assert status == 200 and base64.b64decode(body["content"]) == blob
    # the same bytes are what the session's programs see, and what they write comes back
    status, result = server.execute(
        "import hashlib; d = open('/sandbox/data/blob.bin', 'rb').read();"
        "print(hashlib.sha256(d).hexdigest());"
        "open('/tmp/out.bin', 'wb').write(bytes(reversed(d)))",
        session=SESSION,
    )
    assert status == 200 and result["stdout"].strip() == hashlib.sha256(blob).hexdigest()
    status, body = get(server, "/tmp/out.bin")
    assert status == 200 and base64.b64decode(body["content"]) == blob[::-1]
    assert put(server, "/tmp/empty", b"") == (200, {"ok": True})
    assert get(server, "/tmp/empty") == (200, {"content": ""})


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "/sandbox/../etc/passwd",
        "/sandbox",
        "sandbox/x",
        "/usr/bin/python3",
        "/proc/self/mem",
        "",
    ],
)
def test_writes_outside_the_sandbox_tmpfs_are_400_naming_path(server: Server, path: str) -> None:
    status, body = put(server, path, b"pwned")
    assert status == 400 and body["error"].startswith("path: "), body


def test_reads_are_confined_to_the_sandbox_view(server: Server) -> None:
    # the host has it; the sandbox's synthesized /etc does not
    assert Path("/etc/shadow").exists()
    status, body = get(server, "/etc/shadow")
    assert status == 404, body
    status, body = get(server, "/sandbox/../../etc/shadow")
    assert status == 404, body
    assert get(server, "/sandbox/nope") == (404, {"error": "File not found"})
    status, body = get(server, "/sandbox")
    assert status == 400 and body["error"].startswith("path: ") and "directory" in body["error"]
    status, body = get(server, "relative/path")
    assert status == 400 and body["error"].startswith("path: "), body


@pytest.mark.parametrize(
    "query, name",
    [
        ({"path": "/tmp/x"}, "sessionId"),
        ({"sessionId": SESSION}, "path"),
        ({"sessionId": "", "path": "/tmp/x"}, "sessionId"),
        ({}, "sessionId"),
    ],
)
def test_get_with_a_missing_parameter_is_400_naming_it(
    server: Server, query: dict, name: str
) -> None:
    status, body = server.call("GET", "/file?" + urllib.parse.urlencode(query))
    assert status == 400 and name in body["error"], body


@pytest.mark.parametrize(
    "body, name",
    [
        ({"path": "/tmp/x", "content": ""}, "sessionId"),
        ({"sessionId": SESSION, "content": ""}, "path"),
        ({"sessionId": SESSION, "path": "/tmp/x"}, "content"),
        ({"sessionId": SESSION, "path": "/tmp/x", "content": "not base64!"}, "content"),
        ({"sessionId": SESSION, "path": "/tmp/x", "content": "QQ"}, "content"),  # no padding
        ({"sessionId": SESSION, "path": 7, "content": ""}, "path"),
        ({"sessionId": ["x"], "path": "/tmp/x", "content": ""}, "sessionId"),
        ({"sessionId": SESSION, "path": "/tmp/x", "content": {"type": "Buffer"}}, "content"),
    ],
)
def test_put_with_a_missing_or_bad_field_is_400_naming_it(
    server: Server, body: dict, name: str
) -> None:
    status, answer = server.call("POST", "/file", body)
    assert status == 400 and name in answer["error"], answer


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null"])
def test_put_with_a_bad_body_is_400(server: Server, raw: bytes) -> None:
    status, body = server.call("POST", "/file", raw=raw)
    assert status == 400 and "body" in body["error"], body


def test_unknown_session_is_404_and_is_not_created(server: Server) -> None:
    assert put(server, "/tmp/x", b"1", session="never-ran") == (
        404,
        {"error": "Session not found"},
    )
    assert get(server, "/tmp/x", session="never-ran") == (404, {"error": "Session not found"})
    status, body = server.call("GET", "/sessions")
    assert status == 200 and "never-ran" not in [s["id"] for s in body["sessions"]]


def test_auth_missing_is_401_wrong_is_403(server: Server) -> None:
    for call in (
        lambda key: put(server, "/tmp/x", b"", key=key),
        lambda key: get(server, "/tmp/x", key=key),
    ):
        assert call(None) == (401, {"error": "Missing Authorization header"})
        assert call(KEY + "x") == (403, {"error": "Invalid API key"})


def test_a_deleted_session_is_404(server: Server) -> None:
    assert server.execute("print(1)", session="short-lived")[0] == 200
    assert put(server, "/tmp/x", b"1", session="short-lived")[0] == 200
    assert server.call("DELETE", "/session/short-lived") == (200, {"ok": True})
    assert get(server, "/tmp/x", session="short-lived") == (404, {"error": "Session not found"})


def test_another_keys_session_is_404(tmp_path: Path) -> None:
    """Sessions belong to the key that made them (upstream shares them): the same id under
    another key is another session, and the first one's files are out of its reach."""
    srv = AuthDbServer(tmp_path / "auth.db")
    try:
        status, created = srv.call("POST", "/auth/keys", {"name": "tenant-b"})
        assert status == 201, created
        other = created["key"]
        assert (
            srv.execute("open('/tmp/secret', 'w').write('master only')", session="shared")[0]
            == 200
        )
        assert get(srv, "/tmp/secret", session="shared") == (200, {"content": b64(b"master only")})
        assert get(srv, "/tmp/secret", session="shared", key=other) == (
            404,
            {"error": "Session not found"},
        )
        assert put(srv, "/tmp/secret", b"overwritten", session="shared", key=other) == (
            404,
            {"error": "Session not found"},
        )
        # its own session of the same id is a sandbox of its own
        status, _ = srv.call(
            "POST",
            "/execute",
            {"sessionId": "shared", "request": {"code": "print(1)", "runtime": "python"}},
            key=other,
        )
        assert status == 200
        assert get(srv, "/tmp/secret", session="shared", key=other) == (
            404,
            {"error": "File not found"},
        )
        assert get(srv, "/tmp/secret", session="shared") == (200, {"content": b64(b"master only")})
    finally:
        srv.stop()
