"""Keys and the audit log in a real PostgreSQL shared by real `isol8 serve` nodes: a key made
on one node works on another, revocation and expiry hold everywhere, migrations run once
however many nodes start together, and a database restart is a 503 meanwhile, not a dead
node. PostgreSQL is Debian's, started per module in a temp dir (tests/postgres.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import postgres
from postgres import postgres_server
from test_server import KEY, SERVE, Server
from test_server_auth import Clock

pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")
psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from isol8.errors import InvalidRequest  # noqa: E402
from isol8.server import migrations  # noqa: E402
from isol8.server.keystore import KeyStore, StoreUnavailable  # noqa: E402
from isol8.server.pgpool import POOL_SIZE  # noqa: E402

postgres_url = postgres.postgres_url  # the module's cluster, a fixture


def _database(url: str) -> str:
    """A fresh database on the module's cluster: tests share the server, not the state."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def db(postgres_url: str) -> str:
    return _database(postgres_url)


def _rows(url: str, query: str, *params: object) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def _isol8_connections(url: str) -> int:
    database = url.rsplit("/", 1)[1]
    return int(_rows(url, "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                     " AND application_name = 'isol8'", database)[0][0])


def _settles(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- the store against the database ---------------------------------------------------------


def test_migrations_from_empty_then_idempotent(db: str) -> None:
    with KeyStore(db) as store:
        store.create("ci", None)
    versions = _rows(db, "SELECT version, applied_at FROM isol8_schema ORDER BY version")
    assert [v for v, _ in versions] == list(range(1, migrations.POSTGRES_VERSION + 1))
    tables = {name for (name,) in _rows(
        db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {"isol8_schema", "api_keys", "audit_log", "isol8_sessions"}
    for _ in range(2):  # reopening runs nothing again and keeps the keys
        with KeyStore(db) as store:
            assert len(store.list()) == 1
    assert _rows(db, "SELECT version, applied_at FROM isol8_schema ORDER BY version") == versions


def test_a_database_from_a_newer_isol8_is_refused(db: str) -> None:
    KeyStore(db).close()
    with psycopg.connect(db) as conn:
        conn.execute("INSERT INTO isol8_schema (version) VALUES (%s)",
                     (migrations.POSTGRES_VERSION + 1,))
    with pytest.raises(RuntimeError, match="newer"):
        KeyStore(db)
    assert _settles(lambda: _isol8_connections(db) == 0)  # the refused store closed its own


def test_three_nodes_starting_together_migrate_once(db: str) -> None:
    """Three connections race for an empty database: one applies every step, the other two
    wait on the advisory lock and then find nothing to do."""
    barrier = threading.Barrier(3)
    applied: list[int] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            with psycopg.connect(db, autocommit=True,
                                 row_factory=psycopg.rows.dict_row) as conn:
                barrier.wait()
                applied.append(migrations.migrate_postgres(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert sorted(applied) == [0, 0, migrations.POSTGRES_VERSION]
    assert _rows(db, "SELECT count(*) FROM isol8_schema")[0][0] == migrations.POSTGRES_VERSION
    # and three key stores opening at once all work on the result
    stores: list[KeyStore] = []
    barrier = threading.Barrier(3)

    def open_store() -> None:
        barrier.wait()
        stores.append(KeyStore(db))

    threads = [threading.Thread(target=open_store) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert len(stores) == 3
        _, key = stores[0].create("shared", None)
        assert all(store.verify(key) is not None for store in stores)
    finally:
        for store in stores:
            store.close()


def test_expiry_and_bound_tokens_hold_on_every_node(db: str) -> None:
    clock = Clock()
    with KeyStore(db, clock=clock) as a, KeyStore(db, clock=clock) as b:
        info, key = a.create("ci", 60, tenant="acme")
        got = b.verify(key)
        assert got is not None and (got.id, got.tenant) == (info.id, "acme")
        token_info, token = b.login(parent=got)  # a token bound to the key, made on B
        assert token_info.expires_at == info.expires_at  # never outlives its key
        assert a.verify(token) is not None and a.verify(token).owner == info.id
        clock.now += 59.9
        assert a.verify(key) is not None
        clock.now += 0.1
        assert a.verify(key) is None and b.verify(token) is None  # expired, everywhere
        other, other_key = a.create("other", None)
        _, other_token = a.login(parent=other)
        assert b.revoke(other.id)  # revoked on B: the key and its token die on A
        assert a.verify(other_key) is None and a.verify(other_token) is None
        with pytest.raises(InvalidRequest, match="revoked or expired"):
            a.login(parent=other)
        assert a.purge() == 4  # both keys (expired, revoked) and their tokens
        assert b.list() == []


def test_a_token_minted_while_its_key_is_revoked_elsewhere_dies_with_it(db: str) -> None:
    """Node A mints tokens bound to a key while node B revokes it: whichever commits first,
    no token outlives the revocation (each locks the key's row before it acts on it)."""
    with KeyStore(db) as a, KeyStore(db) as b:
        for _ in range(15):
            info, _ = a.create("raced", None)
            tokens: list[str] = []
            start = threading.Barrier(2)

            def mint() -> None:
                start.wait()
                for _ in range(10):
                    try:
                        tokens.append(a.login(parent=info)[1])
                    except InvalidRequest:  # revoked before this one: refused, as it must
                        return

            minting = threading.Thread(target=mint)
            minting.start()
            start.wait()
            time.sleep(0.002)
            assert b.revoke(info.id)
            minting.join(30)
            assert [t for t in tokens if a.verify(t) is not None] == []


def test_audit_rows_keep_the_line_and_what_jsonb_cannot_hold(db: str) -> None:
    from isol8.result import ExecutionResult, ResourceUsage
    from isol8.server.audit import AuditLog
    from isol8.server.wire import ExecuteBody

    usage = ResourceUsage(cpu_time_ms=1, cpu_percent=1.0, memory_mb=1.0, peak_memory_mb=1.0,
                          oom=False, enforced={})
    result = ExecutionResult(stdout="a\x00b\udcff", stderr="", exit_code=3, duration_ms=5,
                             truncated=False, execution_id=str(uuid.uuid4()), runtime="python",
                             timestamp="2026-01-01T00:00:00.000+00:00", resource_usage=usage)
    body = ExecuteBody("s-9", {"code": "print(1)", "runtime": "python"},
                       {"secrets": {"K": "hunter2"}})
    threads_before = threading.active_count()
    audit = AuditLog(db, include_output=True, node="n-1")
    try:
        for _ in range(3):
            audit.record("key_1", body, result)
    finally:
        audit.close()
    assert threading.active_count() == threads_before
    assert _settles(lambda: _isol8_connections(db) == 0)
    rows = _rows(db, "SELECT execution_id, user_id, node, record FROM audit_log")
    assert len(rows) == 3
    execution, user, node, record = rows[0]
    assert (execution, user, node) == (result.execution_id, "key_1", "n-1")
    assert set(record) == {"executionId", "userId", "timestamp", "runtime", "codeHash",
                           "exitCode", "durationMs", "resourceUsage", "securityEvents",
                           "sessionId", "mode", "stdout", "stderr"}  # the file's line
    assert (record["executionId"], record["exitCode"], record["runtime"]) == \
        (result.execution_id, 3, "python")
    assert record["stdout"] == "a\ufffdb\ufffd" and record["sessionId"] == "s-9"


def test_the_pool_is_bounded_and_closes_every_connection(db: str) -> None:
    threads_before = threading.active_count()
    store = KeyStore(db)
    try:
        _, key = store.create("ci", None)
        seen: list[int] = []
        failures: list[BaseException] = []

        def verify_many() -> None:
            try:
                for _ in range(50):
                    assert store.verify(key) is not None
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=verify_many) for _ in range(16)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            seen.append(_isol8_connections(db))
            time.sleep(0.01)
        for thread in threads:
            thread.join()
        assert not failures
        assert 1 <= max(seen + [_isol8_connections(db)]) <= POOL_SIZE
    finally:
        store.close()
    assert _settles(lambda: _isol8_connections(db) == 0)
    assert threading.active_count() == threads_before  # the pool runs no thread of its own


def test_a_database_restart_is_unavailable_meanwhile_then_works() -> None:
    with postgres_server() as pg:
        with KeyStore(pg.url) as store:
            _, key = store.create("ci", None)
            assert store.verify(key) is not None
            pg.stop()
            start = time.monotonic()
            with pytest.raises(StoreUnavailable, match="unavailable"):
                store.verify(key)
            assert time.monotonic() - start < 5  # refused at once, not a hang
            pg.start()
            assert store.verify(key) is not None  # the stale connection was replaced


def test_a_unix_socket_url_and_the_fixture_leaves_nothing() -> None:
    with postgres_server() as pg:
        pid, where = pg.proc.pid, pg.dir
        assert os.path.exists(f"/proc/{pid}") and where.is_dir()
        assert "?host=/" in pg.socket_url
        with KeyStore(pg.socket_url) as over_socket, KeyStore(pg.url) as over_tcp:
            _, key = over_socket.create("ci", None)
            assert over_tcp.verify(key) is not None
    assert not os.path.exists(f"/proc/{pid}") and not where.exists()


# -- real nodes -------------------------------------------------------------------------------


def _node(name: str, url: str) -> Server:
    return Server(None, "--auth-db", url, "--audit", url, env={"ISOL8_NODE": name})


@pytest.fixture(scope="module")
def cluster_db(postgres_url: str) -> str:
    return _database(postgres_url)


@pytest.fixture(scope="module")
def nodes(cluster_db: str) -> Iterator[tuple[Server, Server]]:
    a = _node("node-a", cluster_db)
    try:
        b = _node("node-b", cluster_db)
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def _run(node: Server, key: str, code: str, session: str | None = None) -> tuple[int, dict]:
    body: dict = {"request": {"code": code, "runtime": "python"}}
    if session is not None:
        body["sessionId"] = session
    return node.call("POST", "/execute", body, key=key)


def test_a_key_made_on_one_node_works_on_the_other(nodes: tuple[Server, Server]) -> None:
    a, b = nodes
    status, made = a.call("POST", "/auth/keys", {"name": "ci", "tenantId": "acme"})
    assert status == 201, made
    status, result = _run(b, made["key"], "print(6 * 7)")
    assert (status, result.get("stdout")) == (200, "42"), result
    listed = {k["id"]: k for k in b.call("GET", "/auth/keys?tenantId=acme")[1]["keys"]}
    assert listed[made["id"]]["lastUsedAt"] is not None  # B's use, seen in the shared row
    status, revoked = b.call("DELETE", f"/auth/keys/{made['id']}")
    assert (status, revoked) == (200, {"ok": True, "id": made["id"]})
    assert _run(a, made["key"], "print(1)") == (403, {"error": "Invalid API key"})


def test_a_login_token_and_an_expiry_hold_on_every_node(nodes: tuple[Server, Server]) -> None:
    a, b = nodes
    status, token = a.call("POST", "/auth/login", {"name": "laptop"})
    assert status == 200, token
    assert b.call("GET", "/sessions", key=token["token"]) == (200, {"sessions": []})
    assert b.call("DELETE", f"/auth/keys/{token['keyId']}")[0] == 200
    assert a.call("GET", "/sessions", key=token["token"])[0] == 403
    status, short = b.call("POST", "/auth/keys", {"name": "short", "ttlMs": 1500})
    assert status == 201, short
    assert a.call("GET", "/sessions", key=short["key"])[0] == 200
    time.sleep(1.6)
    assert a.call("GET", "/sessions", key=short["key"]) == (403, {"error": "Invalid API key"})


def test_a_session_stays_on_its_node(nodes: tuple[Server, Server]) -> None:
    """The key is shared, the session is not: the other node answers upstream's 404."""
    a, b = nodes
    key = a.call("POST", "/auth/keys", {"name": "sessions"})[1]["key"]
    assert _run(a, key, "open('/sandbox/x', 'w').write('5')", session="s-1")[0] == 200
    assert _run(a, key, "print(open('/sandbox/x').read())", session="s-1")[1]["stdout"] == "5"
    status, answer = b.call("GET", "/file?sessionId=s-1&path=/sandbox/x", key=key)
    assert (status, answer) == (404, {"error": "Session not found"})
    assert b.call("GET", "/sessions", key=key) == (200, {"sessions": []})
    assert a.call("DELETE", "/session/s-1", key=key) == (200, {"ok": True})


def test_audit_rows_from_both_nodes(nodes: tuple[Server, Server], cluster_db: str) -> None:
    a, b = nodes
    key = a.call("POST", "/auth/keys", {"name": "audited"})[1]
    ids = {}
    for node in (a, b):
        status, result = _run(node, key["key"], "print('audited')")
        assert status == 200, result
        ids[result["executionId"]] = node

    def stored() -> list[tuple]:
        return _rows(cluster_db, "SELECT execution_id, node, user_id, record FROM audit_log"
                     " WHERE execution_id = ANY(%s)", list(ids))

    assert _settles(lambda: len(stored()) == 2)
    by_node = {node: (execution, user, record) for execution, node, user, record in stored()}
    assert set(by_node) == {"node-a", "node-b"}
    for name, node in (("node-a", a), ("node-b", b)):
        execution, user, record = by_node[name]
        assert ids[execution] is node and user == key["id"]
        assert set(record) >= {"executionId", "userId", "timestamp", "runtime", "codeHash",
                               "exitCode", "durationMs", "resourceUsage", "securityEvents",
                               "sessionId", "mode"}
        assert (record["executionId"], record["userId"], record["exitCode"]) == \
            (execution, user, 0)
        assert "stdout" not in record and "code" not in record  # not asked for
    # the README's query, verbatim: the last hour's runs, node by node
    found = _rows(cluster_db, _readme_example("audit-sql"))
    assert {(node, exit_code) for node, _, exit_code, _ in found} >= \
        {("node-a", "0"), ("node-b", "0")}
    assert [node for node, *_ in found] == sorted(node for node, *_ in found)


def _readme_example(name: str) -> str:
    """The block between ``<!-- example: NAME -->`` and ``<!-- /example -->`` in README.md."""
    marker = f"<!-- example: {name} -->"
    readme = Path(__file__).resolve().parent.parent / "README.md"
    text = readme.read_text()
    block = text.split(marker, 1)[1].split("<!-- /example -->", 1)[0]
    return block.split("```sql\n", 1)[1].split("```", 1)[0]


def _raw(node: Server, method: str, path: str, key: str) -> tuple[int, dict, str | None]:
    req = urllib.request.Request(node.url + path, method=method,
                                 headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read()), resp.headers.get("Retry-After")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers.get("Retry-After")


def test_a_node_outlives_a_database_restart() -> None:
    """While PostgreSQL is down an API key gets a clear 503 with Retry-After (the master key,
    which needs no database, still runs code), and the run made meanwhile is audited once
    the database is back; after the restart the same key works again."""
    with postgres_server() as pg:
        node = _node("restarted", pg.url)
        try:
            key = node.call("POST", "/auth/keys", {"name": "ci"})[1]["key"]
            assert _raw(node, "GET", "/sessions", key)[0] == 200
            pg.stop()
            status, body, retry = _raw(node, "GET", "/sessions", key)
            assert status == 503 and retry is not None and int(retry) > 0, body
            assert body["type"] == "StoreUnavailable"
            assert "PostgreSQL at 127.0.0.1" in body["error"] and "unavailable" in body["error"]
            assert node.call("POST", "/auth/keys", {"name": "x"})[0] == 503
            status, during = node.execute("print('during')")
            assert (status, during.get("stdout")) == (200, "during"), during
            pg.start()
            assert _raw(node, "GET", "/sessions", key)[:2] == (200, {"sessions": []})
            assert _settles(lambda: _rows(
                pg.url, "SELECT count(*) FROM audit_log WHERE execution_id = %s",
                during["executionId"])[0][0] == 1, timeout=20)
        finally:
            node.stop()
        assert _settles(lambda: _isol8_connections(pg.url) == 0)  # the node closed its pool


def test_a_bad_url_is_a_clear_error_at_startup() -> None:
    out = subprocess.run(
        [sys.executable, str(SERVE), "serve", "--port", "0", "--auth-db",
         "postgresql://isol8@127.0.0.1:1/none?connect_timeout=2"],
        env={**os.environ, "ISOL8_API_KEY": KEY}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "PostgreSQL at 127.0.0.1:1/none is unavailable" in out.stderr
    assert "Traceback" not in out.stderr
