"""The key store's SQLite file: one node's keys, the default ``--auth-db PATH``.

One connection behind one lock: every operation is a few indexed statements, so serialising
them costs less than a connection per thread, and SQLite allows one writer at a time anyway.
Another process may share the file (a second server, an admin tool): ``BEGIN IMMEDIATE``
makes it wait, up to the busy timeout, instead of failing half-way through a read-then-write.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .migrations import migrate_sqlite


def _create_private(path: str) -> None:
    """Create the database 0600 before SQLite opens it: it holds every key's hash and tenant.

    SQLite gives its journal and WAL files the database file's mode, so they follow. An
    existing file with group or other bits is tightened rather than trusted as is."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class SqliteKeys:
    """A :class:`~isol8.server.keystore.KeyStore` backend on one file (or ``:memory:``)."""

    #: lastUsedAt's write may be skipped on these: another process held the write lock past
    #: the busy timeout, and a live key must not fail to authenticate over bookkeeping.
    busy: tuple[type[Exception], ...] = (sqlite3.OperationalError,)
    #: SQLite has no row locks; ``BEGIN IMMEDIATE`` already excludes every other writer.
    for_update = ""

    def __init__(self, path: str, *, busy_timeout: float) -> None:
        if path != ":memory:":
            _create_private(path)
        self._lock = threading.Lock()
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE in transaction).
        self._db = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            with self.transaction() as db:
                migrate_sqlite(db)
        except BaseException:
            self._db.close()
            raise

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def statements(self) -> Iterator[sqlite3.Connection]:
        """Each statement its own transaction (reads, and writes that need no other)."""
        with self._lock:
            yield self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()
