"""The key store in PostgreSQL (``--auth-db postgresql://...``): keys shared by every node.

The key store's statements are written for SQLite's ``?`` placeholders; they reach psycopg
with ``%s`` instead (none of them holds a literal ``?`` or ``%``). Transactions run at READ
COMMITTED, PostgreSQL's default, so where one reads a row and writes because of it (a login
token bound to a key, a key's revocation) it locks that row first (``FOR UPDATE``): a token
minted while its key is revoked on another node is then either refused or revoked with it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg

from .migrations import migrate_postgres
from .pgpool import Connection, Pool


class _Statements:
    """A connection that takes the key store's ``?`` placeholders."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> psycopg.Cursor[dict]:
        return self._conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]


class PostgresKeys:
    """A :class:`~isol8.server.keystore.KeyStore` backend on a database shared by nodes."""

    #: No write is skipped: a failure is the database's, and StoreUnavailable says so.
    busy: tuple[type[Exception], ...] = ()
    for_update = " FOR UPDATE"

    def __init__(self, url: str) -> None:
        self._pool = Pool(url)
        try:
            with self._pool.connection() as conn:
                migrate_postgres(conn)
        except BaseException:
            self._pool.close()
            raise

    @contextmanager
    def transaction(self) -> Iterator[_Statements]:
        with self._pool.connection() as conn, conn.transaction():
            yield _Statements(conn)

    @contextmanager
    def statements(self) -> Iterator[_Statements]:
        with self._pool.connection() as conn:
            yield _Statements(conn)

    def close(self) -> None:
        self._pool.close()
