"""The server's key store and master key (isol8/server/keystore.py): pure Python, no sandbox.

Expiry is tested with an injected clock, never with sleeps; file modes with a real file."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from datetime import timezone
from pathlib import Path

import pytest

from isol8.errors import InvalidRequest
from isol8.server.keystore import (
    DEFAULT_LOGIN_TTL,
    DEFAULT_TENANT,
    LAST_USED_RESOLUTION_MS,
    SCHEMA_VERSION,
    KeyStore,
    MasterKey,
    bearer_token,
)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> Iterator[KeyStore]:
    with KeyStore(":memory:", clock=clock) as s:
        yield s


GARBAGE = [
    "",
    " ",
    "isol8_",
    "isol8_" + "A" * 43,
    "isol8_" + "é" * 43,
    "isol8_\udcff",
    "isol8_" + "x" * 10_000_000,
    "x" * 10_000_000,
    "\x00isol8_",
    "Bearer isol8_abc",
    None,
    42,
    b"isol8_abc",
]


def test_create_returns_a_key_shown_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "auth.db"
    with KeyStore(path) as s:
        info, key = s.create("ci", None, tenant="acme")
    assert key.startswith("isol8_") and len(key) == 6 + 43
    assert info.prefix == key[:10] and info.name == "ci" and info.tenant == "acme"
    assert info.expires_at is None and not info.revoked and info.parent_id is None
    assert info.created_at.tzinfo == timezone.utc
    raw = path.read_bytes()
    assert key.encode() not in raw and key[10:20].encode() not in raw
    assert hashlib.sha256(key.encode()).hexdigest().encode() in raw


def test_keys_and_ids_are_unique(store: KeyStore) -> None:
    made = [store.create(f"k{i}", 60) for i in range(200)]
    assert len({k for _, k in made}) == len({i.id for i, _ in made}) == 200


def test_verify_accepts_live_keys_and_reports_tenant_and_owner(store: KeyStore) -> None:
    info, key = store.create("ci", 60)
    got = store.verify(key)
    assert got is not None and got.id == info.id and got.owner == info.id
    assert got.tenant == DEFAULT_TENANT


@pytest.mark.parametrize("garbage", GARBAGE, ids=range(len(GARBAGE)))
def test_verify_never_raises_on_garbage(store: KeyStore, garbage: object) -> None:
    store.create("ci", None)
    assert store.verify(garbage) is None


def test_a_key_expires_at_its_ttl(store: KeyStore, clock: Clock) -> None:
    info, key = store.create("short", 30)
    assert info.expires_at is not None
    assert info.expires_at.timestamp() == pytest.approx(clock.now + 30)
    clock.now += 29.999
    assert store.verify(key) is not None
    clock.now += 0.001
    assert store.verify(key) is None


def test_a_key_without_ttl_never_expires(store: KeyStore, clock: Clock) -> None:
    _, key = store.create("forever", None)
    clock.now += 100 * 365 * 86400
    assert store.verify(key) is not None


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), True, "60", 1e12])
def test_bad_ttl_is_refused(store: KeyStore, ttl: object) -> None:
    with pytest.raises(InvalidRequest, match="ttl"):
        store.create("x", ttl)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="ttl"):
        store.login(ttl_seconds=ttl)  # type: ignore[arg-type]


@pytest.mark.parametrize("label", ["", "   ", "a\nb", "x" * 129, None, 3])
def test_bad_names_and_tenants_are_refused(store: KeyStore, label: object) -> None:
    with pytest.raises(InvalidRequest, match="name"):
        store.create(label, None)  # type: ignore[arg-type]
    if label is not None:
        with pytest.raises(InvalidRequest, match="tenantId"):
            store.create("x", None, tenant=label)  # type: ignore[arg-type]


def test_non_ascii_names_are_fine(store: KeyStore) -> None:
    info, key = store.create("clé 🔑", None, tenant="société")
    got = store.verify(key)
    assert got is not None and (got.id, got.name, got.tenant) == (info.id, "clé 🔑", "société")
    assert [i.name for i in store.list("société")] == ["clé 🔑"]


def test_revoke_kills_the_key_and_is_idempotent(store: KeyStore) -> None:
    info, key = store.create("ci", None)
    other, other_key = store.create("other", None)
    assert store.revoke(info.id) is True
    assert store.verify(key) is None
    assert store.verify(other_key) is not None
    assert store.revoke(info.id) is True
    assert {i.id: i.revoked for i in store.list()} == {info.id: True, other.id: False}


@pytest.mark.parametrize("garbage", ["", "nope", "x" * 100_000, None, 7, "key_' OR 1=1 --"])
def test_revoke_unknown_is_false(store: KeyStore, garbage: object) -> None:
    _, key = store.create("ci", None)
    assert store.revoke(garbage) is False
    assert store.verify(key) is not None


def test_list_never_shows_secrets_and_filters_by_tenant(store: KeyStore, clock: Clock) -> None:
    a, key_a = store.create("a", None, tenant="t1")
    clock.now += 1
    b, _ = store.create("b", 5, tenant="t2")
    clock.now += 10  # b expired: still listed, as upstream does until cleanup
    assert [i.id for i in store.list()] == [a.id, b.id]
    assert [i.id for i in store.list("t2")] == [b.id]
    assert store.list("nobody") == []
    for info in store.list():
        wire = info.to_dict()
        assert set(wire) == {
            "id",
            "name",
            "keyPrefix",
            "tenantId",
            "parentId",
            "createdAt",
            "expiresAt",
            "lastUsedAt",
            "revoked",
        }
        assert key_a not in repr(wire) and key_a not in repr(info)
        assert str(wire["keyPrefix"]).endswith("...") and len(str(wire["keyPrefix"])) == 13
    assert b.to_dict()["expiresAt"] == "2027-01-15T08:00:06.000Z"
    assert a.to_dict()["expiresAt"] is None


def test_last_used_is_recorded_coarsely(store: KeyStore, clock: Clock) -> None:
    info, key = store.create("ci", None)
    assert info.last_used_at is None
    first = store.verify(key)
    assert first is not None and first.last_used_at is not None
    assert first.last_used_at.timestamp() == pytest.approx(clock.now)
    clock.now += LAST_USED_RESOLUTION_MS / 1000 / 2
    again = store.verify(key)
    assert again is not None and again.last_used_at == first.last_used_at
    clock.now += LAST_USED_RESOLUTION_MS / 1000
    later = store.verify(key)
    assert later is not None and later.last_used_at.timestamp() == pytest.approx(clock.now)


def test_master_login_mints_an_expiring_key(store: KeyStore, clock: Clock) -> None:
    info, token = store.login(tenant="acme")
    assert token.startswith("isol8_") and info.name == "login" and info.tenant == "acme"
    assert info.parent_id is None and info.owner == info.id
    assert info.expires_at is not None
    assert info.expires_at.timestamp() == pytest.approx(clock.now + DEFAULT_LOGIN_TTL)
    assert store.verify(token) is not None
    clock.now += DEFAULT_LOGIN_TTL
    assert store.verify(token) is None


def test_a_bound_token_acts_for_its_key_and_never_outlives_it(
    store: KeyStore, clock: Clock
) -> None:
    parent, key = store.create("agent", 100, tenant="acme")
    info, token = store.login(name="cli", ttl_seconds=1000, parent=parent)
    assert info.parent_id == parent.id and info.owner == parent.id and info.tenant == "acme"
    assert info.expires_at == parent.expires_at  # capped at the key's expiry
    short, short_token = store.login(ttl_seconds=10, parent=parent)
    verified = store.verify(short_token)
    assert verified is not None and verified.owner == parent.id
    clock.now += 10
    assert store.verify(short_token) is None and store.verify(token) is not None
    clock.now += 90
    assert store.verify(token) is None and store.verify(key) is None


def test_revoking_a_key_revokes_its_tokens_but_not_the_reverse(store: KeyStore) -> None:
    parent, key = store.create("agent", None)
    _, t1 = store.login(parent=parent)
    t2_info, t2 = store.login(parent=parent)
    assert store.revoke(t2_info.id)
    assert store.verify(t2) is None and store.verify(t1) is not None
    assert store.verify(key) is not None
    assert store.revoke(parent.id)
    assert store.verify(t1) is None and store.verify(key) is None
    assert all(i.revoked for i in store.list())


def test_login_refuses_what_would_widen_a_token(store: KeyStore, clock: Clock) -> None:
    parent, _ = store.create("agent", 50, tenant="acme")
    token_info, _ = store.login(parent=parent)
    with pytest.raises(InvalidRequest, match="cannot create"):
        store.login(parent=token_info)
    with pytest.raises(InvalidRequest, match="tenantId"):
        store.login(parent=parent, tenant="other")
    store.revoke(parent.id)
    with pytest.raises(InvalidRequest, match="revoked or expired"):
        store.login(parent=parent)  # a stale KeyInfo: the store re-reads the row
    live, _ = store.create("live", 5)
    clock.now += 5
    with pytest.raises(InvalidRequest, match="revoked or expired"):
        store.login(parent=live)


def test_purge_deletes_revoked_and_expired_keys_with_their_tokens(
    store: KeyStore, clock: Clock
) -> None:
    keep, keep_key = store.create("keep", None)
    gone, _ = store.create("gone", None)
    store.login(parent=gone)
    store.create("short", 5)
    store.revoke(gone.id)
    clock.now += 5
    assert store.purge() == 3
    assert [i.id for i in store.list()] == [keep.id]
    assert store.verify(keep_key) is not None
    assert store.purge() == 0


def test_file_is_private_with_a_schema_version_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "auth.db"
    old = os.umask(0)  # even a permissive umask must not widen the file
    try:
        with KeyStore(path) as s:
            info, key = s.create("ci", None)
            s.login(parent=info)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(tmp_path.glob("auth.db-*"))  # no journal left behind
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1
    with KeyStore(str(path)) as s:
        got = s.verify(key)
        assert got is not None and got.id == info.id
        assert len(s.list()) == 2


def test_an_existing_world_readable_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "auth.db"
    path.touch()
    path.chmod(0o644)
    KeyStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_locked_database_does_not_stop_a_live_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process writing (a second server, an admin tool) must not fail
    authentication: only the lastUsedAt bookkeeping is skipped."""
    monkeypatch.setattr("isol8.server.keystore.BUSY_TIMEOUT", 0.05)
    path = tmp_path / "auth.db"
    with KeyStore(path) as s:
        info, key = s.create("ci", None)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            got = s.verify(key)
            assert got is not None and got.id == info.id and got.last_used_at is None
        finally:
            other.close()
        got = s.verify(key)
        assert got is not None and got.last_used_at is not None


def test_a_database_from_a_newer_isol8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "auth.db"
    KeyStore(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        KeyStore(path)


def test_migrations_are_forward_only_and_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "auth.db"
    with KeyStore(path) as s:
        _, key = s.create("ci", None)
    for _ in range(2):  # reopening at the current version runs nothing again
        with KeyStore(path) as s:
            assert s.verify(key) is not None


def test_concurrent_use_from_threads(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    with KeyStore(tmp_path / "auth.db") as s:
        seed = [s.create(f"seed{i}", None) for i in range(8)]
        barrier = threading.Barrier(8)

        def work(n: int) -> None:
            try:
                barrier.wait()
                for i in range(60):
                    info, key = s.create(f"w{n}-{i}", 3600)
                    assert s.verify(key) is not None
                    assert s.verify(seed[n][1]) is not None
                    assert s.verify("isol8_nope") is None
                    if i % 3 == 0:
                        assert s.revoke(info.id)
                        assert s.verify(key) is None
                    if i % 20 == 0:
                        s.list()
                        s.login(parent=seed[n][0])
            except BaseException as e:  # reported below, with the thread's own traceback
                errors.append(e)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        keys = s.list()
        assert len(keys) == 8 + 8 * 60 + 8 * 3
        assert sum(k.revoked for k in keys) == 8 * 20


def test_verify_is_fast_enough_to_run_on_every_request(store: KeyStore) -> None:
    for i in range(500):
        store.create(f"k{i}", None)
    _, key = store.create("hot", None)
    start = time.perf_counter()
    for _ in range(1000):
        assert store.verify(key) is not None
        assert store.verify("isol8_" + "A" * 43) is None
    assert time.perf_counter() - start < 5  # ~0.05 s here; catches a slow hash or a scan


def test_master_key_split_between_missing_wrong_and_ok() -> None:
    master = MasterKey("s3cret-master")
    assert master.check(None) == "missing"
    assert master.check("") == "missing"
    assert master.check("s3cret-master") == "ok"
    for wrong in ["s3cret-maste", "s3cret-master ", "S3CRET-MASTER", "é", "\udcff", "x" * 10**6]:
        assert master.check(wrong) == "wrong"
    assert "s3cret" not in repr(master)


@pytest.mark.parametrize("value", ["", " key", "key\n", "a\x00b", "clé", None])
def test_unusable_master_keys_are_refused(value: object) -> None:
    with pytest.raises(InvalidRequest, match="master key"):
        MasterKey(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "header,token",
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("BEARER abc", "abc"),
        ("abc", "abc"),  # upstream takes a bare token as is
        ("Basic abc", "Basic abc"),  # not ours to parse: it will simply be wrong (403)
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token
