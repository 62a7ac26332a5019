"""API keys end to end against a real `isol8 serve --auth-db`: upstream's /auth/* routes,
keys that run code, revocation and expiry, and sessions that belong to the key that made them
(upstream shares them between keys: isol8-api.md §8.3)."""

from __future__ import annotations

import json
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from test_server import KEY, Server, running

pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")

DAY_MS = 86_400_000
SESSION = "shared-name"


class KeyServer(Server):
    """``isol8 serve --auth-db PATH`` on a free loopback port."""

    def __init__(self, db: Path) -> None:
        super().__init__(None, "--auth-db", str(db))

    def new_key(self, name: str = "k", **fields: object) -> dict:
        status, made = self.call("POST", "/auth/keys", {"name": name, **fields})
        assert status == 201, made
        return made

    def run(self, key: str, code: str, session: str | None = None) -> tuple[int, dict]:
        body: dict = {"request": {"code": code, "runtime": "python"}}
        if session is not None:
            body["sessionId"] = session
        return self.call("POST", "/execute", body, key=key)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("auth") / "auth.db"


@pytest.fixture(scope="module")
def server(db: Path) -> Iterator[KeyServer]:
    srv = KeyServer(db)
    try:
        yield srv
    finally:
        srv.stop()


def _when(iso: str) -> float:
    assert iso.endswith("Z"), iso
    return datetime.fromisoformat(iso[:-1]).replace(tzinfo=timezone.utc).timestamp()


def test_the_database_is_private(server: KeyServer, db: Path) -> None:
    server.new_key("for-the-file")
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert sorted(p.name for p in db.parent.iterdir()) == ["auth.db"]  # no journal left


def test_create_list_revoke(server: KeyServer) -> None:
    before = time.time()
    made = server.new_key("ci")
    assert set(made) == {"id", "key", "name", "keyPrefix", "tenantId", "expiresAt"}
    assert made["key"].startswith("isol8_") and made["keyPrefix"] == made["key"][:10] + "..."
    assert (made["name"], made["tenantId"]) == ("ci", "default")
    # upstream's auth.defaultTtlMs when no ttlMs is given
    assert before + 86_400 - 5 < _when(made["expiresAt"]) < time.time() + 86_400 + 5
    other = server.new_key("acme-ci", tenantId="acme", ttlMs=3_600_000)
    assert other["tenantId"] == "acme"
    assert _when(other["expiresAt"]) == pytest.approx(time.time() + 3600, abs=10)

    status, listing = server.call("GET", "/auth/keys")
    assert status == 200
    by_id = {k["id"]: k for k in listing["keys"]}
    assert {made["id"], other["id"]} <= set(by_id)
    assert made["key"] not in json.dumps(listing)
    assert by_id[made["id"]] == {
        "id": made["id"],
        "name": "ci",
        "keyPrefix": made["keyPrefix"],
        "tenantId": "default",
        "parentId": None,
        "createdAt": by_id[made["id"]]["createdAt"],
        "expiresAt": made["expiresAt"],
        "lastUsedAt": None,
        "revoked": False,
    }
    assert server.call("GET", "/auth/keys?tenantId=acme") == (200, {"keys": [by_id[other["id"]]]})
    assert server.call("GET", "/auth/keys?tenantId=nobody") == (200, {"keys": []})

    assert server.call("DELETE", f"/auth/keys/{made['id']}") == (
        200,
        {"ok": True, "id": made["id"]},
    )
    assert server.call("DELETE", f"/auth/keys/{made['id']}") == (
        200,
        {"ok": True, "id": made["id"]},
    )
    assert server.call("DELETE", "/auth/keys/key_nope") == (404, {"error": "API key not found"})
    status, listing = server.call("GET", "/auth/keys")
    assert {k["id"]: k["revoked"] for k in listing["keys"]}[made["id"]] is True


def test_a_key_runs_code_and_is_seen_used(server: KeyServer) -> None:
    made = server.new_key("runner")
    status, result = server.run(made["key"], "print(2**8)")
    assert status == 200, result
    assert (result["stdout"], result["exitCode"]) == ("256", 0)
    listing = server.call("GET", "/auth/keys")[1]["keys"]
    used = next(k for k in listing if k["id"] == made["id"])["lastUsedAt"]
    assert used is not None and abs(_when(used) - time.time()) < 60


def test_a_key_streams_over_sse_and_websocket_until_revoked(server: KeyServer) -> None:
    from test_server_stream import frames, sse, ws_connect, ws_events
    from websockets.exceptions import InvalidStatus

    made = server.new_key("streamer")
    body = {"request": {"code": "print(2**8)", "runtime": "python"}}
    status, _, data = sse(server, body, key=made["key"])
    assert status == 200, data
    assert "256" in "".join(e["data"] for e in frames(data) if e["type"] == "stdout")
    with ws_connect(server, made["key"]) as ws:
        ws.send(json.dumps({"type": "execute", **body}))
        events, code, _ = ws_events(ws)
    assert code == 1000 and "256" in "".join(e["data"] for e in events if e["type"] == "stdout")

    server.call("DELETE", f"/auth/keys/{made['id']}")
    status, _, data = sse(server, body, key=made["key"])
    assert (status, json.loads(data)) == (403, {"error": "Invalid API key"})
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(server, made["key"])
    assert refused.value.response.status_code == 403


def test_revoked_and_expired_keys_are_refused(server: KeyServer) -> None:
    revoked = server.new_key("revoked")
    assert server.call("GET", "/sessions", key=revoked["key"])[0] == 200
    server.call("DELETE", f"/auth/keys/{revoked['id']}")
    dead = (403, {"error": "Invalid API key"})
    assert server.call("GET", "/sessions", key=revoked["key"]) == dead
    assert server.run(revoked["key"], "print(1)") == dead

    short = server.new_key("short", ttlMs=1500)
    assert server.call("GET", "/sessions", key=short["key"])[0] == 200
    time.sleep(max(0.0, _when(short["expiresAt"]) - time.time()) + 0.05)
    assert server.call("GET", "/sessions", key=short["key"]) == dead
    assert server.run(short["key"], "print(1)") == dead


def test_login_mints_an_expiring_key_that_authenticates(server: KeyServer) -> None:
    status, login = server.call(
        "POST", "/auth/login", {"name": "laptop", "tenantId": "acme", "ttlMs": 600_000}
    )
    assert status == 200 and set(login) == {"token", "expiresAt", "keyId"}
    assert login["token"].startswith("isol8_")
    assert _when(login["expiresAt"]) == pytest.approx(time.time() + 600, abs=10)
    assert server.call("GET", "/sessions", key=login["token"]) == (200, {"sessions": []})
    listed = {k["id"]: k for k in server.call("GET", "/auth/keys?tenantId=acme")[1]["keys"]}
    assert listed[login["keyId"]]["name"] == "laptop"

    status, default = server.call("POST", "/auth/login", raw=b"")  # the body is optional
    assert status == 200, default
    assert _when(default["expiresAt"]) == pytest.approx(time.time() + 86_400, abs=10)
    assert server.call("DELETE", f"/auth/keys/{default['keyId']}")[0] == 200
    assert server.call("GET", "/sessions", key=default["token"]) == (
        403,
        {"error": "Invalid API key"},
    )


def test_only_the_master_key_administers_keys(server: KeyServer) -> None:
    made = server.new_key("not-admin")
    token = server.call("POST", "/auth/login", {})[1]["token"]
    refused = (403, {"error": "Master key required for this operation"})
    for key in (made["key"], token):
        assert server.call("POST", "/auth/keys", {"name": "escalate"}, key=key) == refused
        assert server.call("GET", "/auth/keys", key=key) == refused
        assert server.call("DELETE", f"/auth/keys/{made['id']}", key=key) == refused
        assert server.call("POST", "/auth/login", {}, key=key) == refused
    # a key cannot mint itself a successor: nothing was made, and it still works
    names = [k["name"] for k in server.call("GET", "/auth/keys")[1]["keys"]]
    assert "escalate" not in names
    assert server.call("GET", "/sessions", key=made["key"])[0] == 200


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/auth/keys"),
        ("GET", "/auth/keys"),
        ("DELETE", "/auth/keys/x"),
        ("POST", "/auth/login"),
    ],
)
def test_auth_comes_before_the_body(server: KeyServer, method: str, path: str) -> None:
    """A caller without the master key learns nothing about the body's rules."""
    req = urllib.request.Request(server.url + path, data=b"{bad", method=method)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 401 and err.value.headers["WWW-Authenticate"] == "Bearer"
    assert json.loads(err.value.read()) == {"error": "Missing Authorization header"}
    assert server.call(method, path, raw=b"{bad", key=KEY + "x") == (
        403,
        {"error": "Invalid API key"},
    )
    assert server.call(method, path, raw=b"{bad", key="isol8_" + "A" * 43) == (
        403,
        {"error": "Invalid API key"},
    )


BAD_BODIES = [
    ("/auth/keys", b"{bad", "body"),
    ("/auth/keys", b"[]", "body"),
    ("/auth/keys", b"", "body"),
    ("/auth/keys", b"{}", "body.name"),
    ("/auth/keys", b'{"name": 1}', "body.name"),
    ("/auth/keys", b'{"name": ""}', "body.name"),
    ("/auth/keys", b'{"name": "' + b"x" * 129 + b'"}', "body.name"),
    ("/auth/keys", b'{"name": "a\\nb"}', "name"),
    ("/auth/keys", b'{"name": "   "}', "name"),
    ("/auth/keys", b'{"name": "k", "tenantId": ""}', "body.tenantId"),
    ("/auth/keys", b'{"name": "k", "tenantId": 7}', "body.tenantId"),
    ("/auth/keys", b'{"name": "k", "ttlMs": "60000"}', "body.ttlMs"),
    ("/auth/keys", b'{"name": "k", "ttlMs": true}', "body.ttlMs"),
    ("/auth/keys", b'{"name": "k", "ttlMs": 0}', "body.ttlMs"),
    ("/auth/keys", b'{"name": "k", "ttlMs": -5}', "body.ttlMs"),
    ("/auth/keys", b'{"name": "k", "ttlMs": 1e15}', "body.ttlMs"),
    ("/auth/keys", b'{"name": "k", "ttlMs": NaN}', "body.ttlMs"),
    ("/auth/login", b"{bad", "body"),
    ("/auth/login", b'"x"', "body"),
    ("/auth/login", b'{"name": ""}', "body.name"),
    ("/auth/login", b'{"tenantId": "a\\u0000b"}', "tenantId"),
    ("/auth/login", b'{"ttlMs": "1"}', "body.ttlMs"),
]


@pytest.mark.parametrize("path, raw, field", BAD_BODIES)
def test_bad_bodies_are_400_naming_the_field(
    server: KeyServer, path: str, raw: bytes, field: str
) -> None:
    status, body = server.call("POST", path, raw=raw)
    assert status == 400, body
    assert field in body["error"], body


@pytest.mark.parametrize("query", ["tenantId=", "tenantId=" + "x" * 129])
def test_bad_tenant_filter_is_400(server: KeyServer, query: str) -> None:
    status, body = server.call("GET", f"/auth/keys?{query}")
    assert status == 400 and "tenantId" in body["error"], body


def test_sessions_belong_to_the_key_that_made_them(server: KeyServer) -> None:
    a, b = server.new_key("a")["key"], server.new_key("b")["key"]
    write = "open('/sandbox/mine.txt', 'w').write('from A'); print('written')"
    read = (
        "import os; p = '/sandbox/mine.txt'; "
        "print(open(p).read() if os.path.exists(p) else 'absent')"
    )
    try:
        status, result = server.run(a, write, SESSION)
        assert (status, result.get("stdout")) == (200, "written"), result
        ids = lambda key: [
            s["id"] for s in server.call("GET", "/sessions", key=key)[1]["sessions"]  # noqa: E731
        ]
        assert ids(a) == [SESSION]
        assert ids(b) == [] and SESSION not in ids(KEY)
        # B deleting "its" session of that name touches nothing of A's
        assert server.call("DELETE", f"/session/{SESSION}", key=b) == (200, {"ok": True})
        status, result = server.call(
            "GET", f"/file?sessionId={SESSION}&path=/sandbox/mine.txt", key=b
        )
        assert status == 404, result
        # the same id under B is B's own, new session: A's file is not in it
        status, result = server.run(b, read, SESSION)
        assert (status, result.get("stdout")) == (200, "absent"), result
        assert ids(b) == [SESSION]
        assert server.call("DELETE", f"/session/{SESSION}", key=b) == (200, {"ok": True})
        assert ids(b) == []
        status, result = server.run(a, read, SESSION)
        assert (status, result.get("stdout")) == (200, "from A"), result
    finally:
        for key in (a, b):
            server.call("DELETE", f"/session/{SESSION}", key=key)


def test_without_a_database_auth_routes_are_400() -> None:
    disabled = (400, {"error": "DB-backed auth is not enabled"})
    with running() as srv:
        assert srv.call("POST", "/auth/keys", {"name": "k"}) == disabled
        assert srv.call("POST", "/auth/keys", raw=b"{bad") == disabled
        assert srv.call("GET", "/auth/keys") == disabled
        assert srv.call("DELETE", "/auth/keys/x") == disabled
        assert srv.call("POST", "/auth/login", {}) == disabled
        # no store: an isol8_ key is just a wrong key
        assert srv.call("GET", "/sessions", key="isol8_" + "A" * 43) == (
            403,
            {"error": "Invalid API key"},
        )


def test_a_non_ascii_master_key_is_refused_at_start() -> None:
    """Clients encode such a header differently (curl UTF-8, fetch() Latin-1), so the key
    would work for some and not others; ``isol8 serve`` prints this and exits 1."""
    from isol8.errors import InvalidRequest
    from isol8.server import create_app

    with pytest.raises(InvalidRequest, match="the master key must be ASCII"):
        create_app("clé-maître")
