"""Who may call the server: the operator's master key, and API keys stored hashed in SQLite
(one node) or PostgreSQL (every node behind a balancer, ``--auth-db postgresql://...``).

No web framework here: the FastAPI dependency that turns these answers into 401/403 lives in
:mod:`isol8.server.auth`, and a database that cannot be reached is :class:`StoreUnavailable`,
a 503 (:mod:`isol8.server.errors`).

Upstream's model (``apps/server/src/auth.ts``, ``db/**``), kept where it is sound:

- keys are ``isol8_``-prefixed, shown once, stored as a SHA-256 hash with a 10-character
  public prefix, a name, a tenant, expiry, ``lastUsedAt`` and a revoked flag;
- ``POST /auth/login`` mints a fresh expiring key for the CLI (``{token, expiresAt, keyId}``).

and fixed where it is not (§8.3): the master key is compared in constant time, the database
is created 0600, its schema is versioned (forward migrations in
:mod:`isol8.server.migrations`, applied under a lock so nodes starting together migrate once),
and a login token may be *bound* to an API key: it carries that key's tenant and owner, never
outlives it, and dies when it is revoked.

Why SHA-256 and not bcrypt/argon2: a slow hash protects low-entropy secrets (passwords) from
offline guessing once the hash leaks. These keys are 256 random bits from the OS CSPRNG, so
guessing is hopeless at any hash speed, while a slow hash would cost ~100 ms of CPU for every
request, including each garbage bearer an attacker sends (a denial-of-service lever), and a
salted hash cannot be looked up by index. The lookup by hash is not constant-time, and need
not be: its timing depends only on the SHA-256 of the attacker's own guess, which says nothing
about any stored key (preimage resistance). Where a secret is compared directly (the master
key), :func:`hmac.compare_digest` is used on digests, so even the length does not leak.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, Protocol, TypeGuard

from ..errors import InvalidRequest, Isol8Error
from .keys_sqlite import SqliteKeys
from .migrations import SQLITE_VERSION

KEY_PREFIX = "isol8_"
#: Upstream's ``tenantId`` default, so ``GET /auth/keys?tenantId=default`` finds keys made
#: without one.
DEFAULT_TENANT = "default"
#: Upstream's ``auth.defaultTtlMs`` (24 h): a login token always expires.
DEFAULT_LOGIN_TTL = 86400.0
#: Ten years: bounds the arithmetic (no overflow of a 64-bit millisecond column) and catches
#: a TTL sent in milliseconds where seconds were meant.
MAX_TTL = 10 * 365 * 86400.0
MAX_LABEL_LENGTH = 128
#: ``isol8_`` + 43 base64url characters; anything much longer is not a key, and hashing
#: megabytes of garbage per request is work an attacker should not be able to ask for.
MAX_PRESENTED_LENGTH = 256
#: ``lastUsedAt`` is written at most this often per key, so verifying is a read, not a write
#: (SQLite serialises writers), on all but one request a minute.
LAST_USED_RESOLUTION_MS = 60_000
#: How long a statement waits for another process's write lock on a shared file.
BUSY_TIMEOUT = 10.0
_DISPLAY_PREFIX = 10  # upstream's keyPrefix: "isol8_" and 4 characters, then "..."

#: The SQLite file's ``user_version`` (isol8.server.migrations has the steps).
SCHEMA_VERSION = SQLITE_VERSION
#: ``--auth-db`` values that name a PostgreSQL database rather than a SQLite file.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

_COLUMNS = (
    "id, key_prefix, name, tenant_id, parent_id, created_at, expires_at, last_used_at, revoked"
)


def _from_ms(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc)


def _iso(when: datetime | None) -> str | None:
    """JavaScript's ``Date.toJSON()`` form, which upstream's clients parse."""
    if when is None:
        return None
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a key: never its plaintext nor its hash."""

    id: str
    prefix: str
    name: str
    tenant: str
    #: The key a login token is bound to; ``None`` for a key of its own.
    parent_id: str | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked: bool

    @property
    def owner(self) -> str:
        """The principal that owns sessions: a bound token acts for its key, so the CLI
        logged in with a token sees the sessions its key created."""
        return self.parent_id or self.id

    def to_dict(self) -> dict[str, object]:
        """Upstream's ``GET /auth/keys`` item (camelCase, ISO-8601 UTC), plus ``parentId``."""
        return {
            "id": self.id,
            "name": self.name,
            "keyPrefix": self.prefix + "...",
            "tenantId": self.tenant,
            "parentId": self.parent_id,
            "createdAt": _iso(self.created_at),
            "expiresAt": _iso(self.expires_at),
            "lastUsedAt": _iso(self.last_used_at),
            "revoked": self.revoked,
        }

    @classmethod
    def _from_row(cls, row: Mapping[str, Any]) -> KeyInfo:
        created = _from_ms(row["created_at"])
        assert created is not None  # NOT NULL column
        return cls(
            id=row["id"],
            prefix=row["key_prefix"],
            name=row["name"],
            tenant=row["tenant_id"],
            parent_id=row["parent_id"],
            created_at=created,
            expires_at=_from_ms(row["expires_at"]),
            last_used_at=_from_ms(row["last_used_at"]),
            revoked=bool(row["revoked"]),
        )


def _hash(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("ascii")).hexdigest()


def _label(field: str, value: object) -> str:
    """Names and tenants end up in listings, logs and audit lines: printable, bounded."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{field} must be a non-empty string")
    if len(value) > MAX_LABEL_LENGTH:
        raise InvalidRequest(f"{field} is longer than {MAX_LABEL_LENGTH} characters")
    if not value.isprintable():
        raise InvalidRequest(f"{field} must not contain control characters")
    return value


def _ttl_ms(ttl_seconds: object) -> int:
    # bool is an int to Python, but ``ttl: true`` is a client bug, not one second.
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, (int, float)):
        raise InvalidRequest("ttl must be a number of seconds")
    if not math.isfinite(ttl_seconds) or not 0 < ttl_seconds <= MAX_TTL:
        raise InvalidRequest(f"ttl must be more than 0 and at most {MAX_TTL:.0f} seconds")
    return max(1, round(ttl_seconds * 1000))


class StoreUnavailable(Isol8Error):
    """The shared database could not be reached or did not answer in time: the server
    answers 503 with ``Retry-After`` (the node is fine; the next call connects again)."""


class _Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class _Statements(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> _Cursor: ...


class _Backend(Protocol):
    """Where the keys live: transactions that exclude other writers of the rows they read,
    plain statements, and the two places the dialects differ (which errors mean "the file
    is locked, skip the bookkeeping", and how a row is locked for the transaction)."""

    busy: tuple[type[Exception], ...]
    for_update: str

    def transaction(self) -> AbstractContextManager[_Statements]: ...

    def statements(self) -> AbstractContextManager[_Statements]: ...

    def close(self) -> None: ...


def is_postgres_url(value: str) -> bool:
    """Whether ``--auth-db``/``--audit`` name a shared database rather than a local file."""
    return value.startswith(POSTGRES_SCHEMES)


class KeyStore:
    """API keys in SQLite (a path, one node) or PostgreSQL (a ``postgresql://`` URL, every
    node behind a balancer), safe to share between the server's worker threads.

    The statements are the same on both; the backends (:mod:`isol8.server.keys_sqlite`,
    :mod:`isol8.server.keys_postgres`) own the connections, the transactions and the
    migrations. ``clock`` returns seconds since the epoch (tests inject their own)."""

    def __init__(
        self, target: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        target = os.fspath(target)
        self._clock = clock
        self._backend: _Backend
        if is_postgres_url(target):
            try:  # psycopg is an extra, and only these nodes need it
                from .keys_postgres import PostgresKeys
            except ImportError as exc:
                raise InvalidRequest(
                    f"--auth-db {target.split(':', 1)[0]}://... needs the postgres extra "
                    f"(pip install 'isol8[postgres]'): {exc}"
                ) from None
            self._backend = PostgresKeys(target)
        else:
            self._backend = SqliteKeys(target, busy_timeout=BUSY_TIMEOUT)

    def _transaction(self) -> AbstractContextManager[_Statements]:
        """A read-then-write as one transaction, excluding other writers of what it read."""
        return self._backend.transaction()

    def _now_ms(self) -> int:
        return round(self._clock() * 1000)

    def _insert(
        self,
        db: _Statements,
        name: str,
        tenant: str,
        expires_at: int | None,
        parent_id: str | None,
    ) -> tuple[KeyInfo, str]:
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(8)
        db.execute(
            "INSERT INTO api_keys (id, key_hash, key_prefix, name, tenant_id, parent_id,"
            " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key_id,
                _hash(plaintext),
                plaintext[:_DISPLAY_PREFIX],
                name,
                tenant,
                parent_id,
                self._now_ms(),
                expires_at,
            ),
        )
        row = db.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return KeyInfo._from_row(row), plaintext

    def create(
        self, name: str, ttl_seconds: float | None, tenant: str | None = None
    ) -> tuple[KeyInfo, str]:
        """A new key; the plaintext is returned here and never again (only its hash is
        kept). ``ttl_seconds=None`` means it never expires; upstream's default TTL is the
        caller's to apply."""
        name = _label("name", name)
        tenant = DEFAULT_TENANT if tenant is None else _label("tenantId", tenant)
        expires = None if ttl_seconds is None else self._now_ms() + _ttl_ms(ttl_seconds)
        with self._transaction() as db:
            return self._insert(db, name, tenant, expires, None)

    def login(
        self,
        name: str | None = None,
        ttl_seconds: float | None = None,
        tenant: str | None = None,
        parent: KeyInfo | None = None,
    ) -> tuple[KeyInfo, str]:
        """A short-lived token, upstream's ``POST /auth/login`` (``{token, expiresAt,
        keyId}`` is ``plaintext, info.expires_at, info.id``).

        Without ``parent`` (the master key logged in) it is a fresh key of its own that
        always expires, 24 h by default as upstream. With ``parent`` (an API key, as
        :meth:`verify` returned it) the token is bound to that key: same tenant and owner,
        expiry capped at the key's, revoked with it. Tokens cannot mint tokens: a leaked
        token must not be able to extend its own life."""
        name = "login" if name is None else _label("name", name)
        ttl_ms = _ttl_ms(DEFAULT_LOGIN_TTL if ttl_seconds is None else ttl_seconds)
        if parent is None:
            tenant = DEFAULT_TENANT if tenant is None else _label("tenantId", tenant)
            with self._transaction() as db:
                return self._insert(db, name, tenant, self._now_ms() + ttl_ms, None)
        if parent.parent_id is not None:
            raise InvalidRequest("a login token cannot create another token")
        if tenant is not None and tenant != parent.tenant:
            raise InvalidRequest("tenantId must be the key's own tenant")
        with self._transaction() as db:
            # Re-read: the KeyInfo may be stale (revoked since it was verified).
            row = db.execute(
                "SELECT revoked, expires_at FROM api_keys WHERE id = ?"
                + self._backend.for_update,
                (parent.id,),
            ).fetchone()
            now = self._now_ms()
            if row is None or row["revoked"] or _expired(row["expires_at"], now):
                raise InvalidRequest("the key is revoked or expired")
            expires = now + ttl_ms
            if row["expires_at"] is not None:
                expires = min(expires, row["expires_at"])
            return self._insert(db, name, parent.tenant, expires, parent.id)

    def verify(self, plaintext: object) -> KeyInfo | None:
        """The key's info if ``plaintext`` is a live key, else ``None`` (unknown, revoked,
        expired, or not a key at all: this never raises on client input)."""
        if not looks_like_key(plaintext):
            return None
        digest = _hash(plaintext)
        with self._backend.statements() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = ?", (digest,)
            ).fetchone()
            now = self._now_ms()
            if row is None or row["revoked"] or _expired(row["expires_at"], now):
                return None
            last = row["last_used_at"]
            if last is None or now - last >= LAST_USED_RESOLUTION_MS:
                try:
                    db.execute(
                        "UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, row["id"])
                    )
                except self._backend.busy:
                    # Another process holds the write lock past the timeout: lastUsedAt is
                    # bookkeeping, and a live key must not fail to authenticate over it.
                    pass
                else:
                    row = db.execute(
                        f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (row["id"],)
                    ).fetchone()
        return KeyInfo._from_row(row)

    def revoke(self, key_id: object) -> bool:
        """Revoke a key and every token bound to it; ``False`` if no such key (a 404).
        Idempotent: revoking a revoked key is ``True``. Rows stay, for listing, until
        :meth:`purge`."""
        if not isinstance(key_id, str) or len(key_id) > MAX_PRESENTED_LENGTH:
            return False
        with self._transaction() as db:
            # Locked first where the backend can: a token minted meanwhile on another node
            # commits before this UPDATE starts, which then sees (and revokes) it.
            db.execute("SELECT id FROM api_keys WHERE id = ?" + self._backend.for_update,
                       (key_id,))
            cursor = db.execute(
                "UPDATE api_keys SET revoked = 1 WHERE id = ? OR parent_id = ?", (key_id, key_id)
            )
            return cursor.rowcount > 0

    def list(self, tenant: str | None = None) -> list[KeyInfo]:
        """Every key, revoked and expired ones included (upstream shows them until cleanup),
        oldest first; only ``tenant``'s if given."""
        query = f"SELECT {_COLUMNS} FROM api_keys"
        params: tuple[str, ...] = ()
        if tenant is not None:
            query += " WHERE tenant_id = ?"
            params = (tenant,)
        with self._backend.statements() as db:
            rows = db.execute(query + " ORDER BY created_at, id", params).fetchall()
        return [KeyInfo._from_row(row) for row in rows]

    def purge(self) -> int:
        """Delete revoked and expired keys (upstream's periodic ``cleanup()``); bound tokens
        go with their key. Returns how many rows went."""
        with self._transaction() as db:
            before = db.execute("SELECT COUNT(*) AS n FROM api_keys").fetchone()["n"]
            db.execute(
                "DELETE FROM api_keys WHERE revoked = 1 OR expires_at <= ?", (self._now_ms(),)
            )
            after = db.execute("SELECT COUNT(*) AS n FROM api_keys").fetchone()["n"]
        return int(before - after)

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _expired(expires_at: int | None, now_ms: int) -> bool:
    """Expired from the expiry instant on: a key whose TTL has fully elapsed is dead."""
    return expires_at is not None and now_ms >= expires_at


def looks_like_key(plaintext: object) -> TypeGuard[str]:
    """Whether ``plaintext`` could be a key at all: a check without the database, so garbage
    costs neither a hash of megabytes nor a wait for the store's lock."""
    return (
        isinstance(plaintext, str)
        and len(plaintext) <= MAX_PRESENTED_LENGTH
        and plaintext.startswith(KEY_PREFIX)
        and plaintext.isascii()
    )


def bearer_token(header: str | None) -> str | None:
    """The credential in an ``Authorization`` header: upstream strips ``Bearer `` case-
    insensitively and takes a bare value as is. ``None`` (401) if absent or empty."""
    if header is None:
        return None
    value = header.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        value = rest.strip()
    return value or None


class MasterKey:
    """The operator's key (``--key``/``ISOL8_API_KEY``): it administers keys and may clean up.

    :meth:`check` separates *no credential* (401, with ``WWW-Authenticate: Bearer``) from
    *a wrong one* (403), upstream's split. It compares SHA-256 digests with
    :func:`hmac.compare_digest`, so neither the key's bytes nor its length leak through
    timing (upstream compares with ``===``)."""

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise InvalidRequest("the master key must be a non-empty string")
        if value != value.strip() or not value.isprintable():
            # bearer_token strips whitespace, so such a key could never match.
            raise InvalidRequest(
                "the master key must not have whitespace at its ends nor control characters"
            )
        if not value.isascii():
            # A header carries bytes, and clients disagree on how to encode other
            # characters (curl sends the shell's UTF-8, fetch() Latin-1): such a key would
            # work for some clients and not others.
            raise InvalidRequest("the master key must be ASCII")
        self._digest = hashlib.sha256(value.encode("utf-8")).digest()

    def check(self, presented: str | None) -> Literal["missing", "wrong", "ok"]:
        if not presented:
            return "missing"
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        return "ok" if hmac.compare_digest(digest, self._digest) else "wrong"

    def __repr__(self) -> str:
        return "MasterKey(***)"
