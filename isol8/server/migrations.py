"""The shared state's schema, as numbered forward migrations, and how each backend applies them.

Index ``i`` of a list takes the schema from version ``i`` to ``i + 1``. Never edit a released
entry: append a new one. The lists differ by backend because the types do: a millisecond
timestamp (~1.8e12) fits SQLite's INTEGER, which grows to 64 bits, but not PostgreSQL's,
which is 32 bits; and the audit log and the session directory are tables only in PostgreSQL
(a single node appends to a file, and holds every session it knows of). The statements the key store runs afterwards are the same on both.

SQLite keeps its version in ``PRAGMA user_version`` and migrates inside the store's
``BEGIN IMMEDIATE``, which already excludes another process. PostgreSQL keeps one row per
applied version in ``isol8_schema`` and migrates in one transaction under an advisory lock,
so nodes starting together against one database wait for the first, then find nothing to do
(DDL is transactional there: a failed step leaves the previous version intact).
"""

from __future__ import annotations

from typing import Any

#: Version 1 is the schema of every SQLite file isol8 ever made.
SQLITE: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            key_hash TEXT NOT NULL UNIQUE,
            key_prefix TEXT NOT NULL,
            name TEXT NOT NULL,
            tenant_id TEXT NOT NULL,
            parent_id TEXT REFERENCES api_keys(id) ON DELETE CASCADE,
            created_at INTEGER NOT NULL,
            expires_at INTEGER,
            last_used_at INTEGER,
            revoked INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX api_keys_tenant ON api_keys(tenant_id)",
        "CREATE INDEX api_keys_parent ON api_keys(parent_id)",
    ),
)

POSTGRES: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            key_hash TEXT NOT NULL UNIQUE,
            key_prefix TEXT NOT NULL,
            name TEXT NOT NULL,
            tenant_id TEXT NOT NULL,
            parent_id TEXT REFERENCES api_keys(id) ON DELETE CASCADE,
            created_at BIGINT NOT NULL,
            expires_at BIGINT,
            last_used_at BIGINT,
            revoked INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX api_keys_tenant ON api_keys(tenant_id)",
        "CREATE INDEX api_keys_parent ON api_keys(parent_id)",
    ),
    (
        # The record is the file's line as JSONB (the same fields); the columns beside it are
        # what an operator filters on, and the node that ran the execution.
        """CREATE TABLE audit_log (
            id BIGSERIAL PRIMARY KEY,
            execution_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            at TIMESTAMPTZ NOT NULL,
            node TEXT NOT NULL,
            record JSONB NOT NULL
        )""",
        "CREATE INDEX audit_log_at ON audit_log(at)",
        "CREATE INDEX audit_log_user ON audit_log(user_id, at)",
    ),
    (
        # Which node holds each session (isol8.server.session_directory).
        """CREATE TABLE isol8_sessions (
            owner TEXT NOT NULL,
            session_id TEXT NOT NULL,
            node TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (owner, session_id)
        )""",
    ),
)

SQLITE_VERSION = len(SQLITE)
POSTGRES_VERSION = len(POSTGRES)

#: Any 64-bit number no other application takes; "isol8" in ASCII.
ADVISORY_LOCK = 0x69736F6C38


def _newer(version: int, known: int) -> RuntimeError:
    return RuntimeError(
        f"auth database schema version {version} is newer than this isol8's ({known}): "
        "upgrade isol8 or use another --auth-db"
    )


def migrate_sqlite(db: Any) -> None:
    """Bring a SQLite connection's schema to :data:`SQLITE_VERSION`; the caller holds
    ``BEGIN IMMEDIATE``."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SQLITE_VERSION:
        raise _newer(version, SQLITE_VERSION)
    for statements in SQLITE[version:]:
        for statement in statements:
            db.execute(statement)
    # PRAGMA takes no parameters; the value is an int from len(), not input.
    db.execute(f"PRAGMA user_version = {SQLITE_VERSION}")


def migrate_postgres(conn: Any) -> int:
    """Bring a PostgreSQL database's schema to :data:`POSTGRES_VERSION` on ``conn`` (a psycopg
    connection in autocommit mode, rows as dicts); returns how many steps this call applied."""
    with conn.transaction():
        # Held to the end of the transaction: the next node's migration starts after this
        # one committed, and reads the version it wrote.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS isol8_schema (
                version INTEGER PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )"""
        )
        row = conn.execute("SELECT COALESCE(MAX(version), 0) AS v FROM isol8_schema").fetchone()
        version = int(row["v"])
        if version > POSTGRES_VERSION:
            raise _newer(version, POSTGRES_VERSION)
        for number, statements in enumerate(POSTGRES[version:], version + 1):
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO isol8_schema (version) VALUES (%s)", (number,))
    return POSTGRES_VERSION - version
