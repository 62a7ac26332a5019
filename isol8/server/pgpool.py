"""A few PostgreSQL connections shared by the server's worker threads (psycopg 3, sync API).

Why a small pool and not a connection per thread: the server runs store calls on a thread
pool of ``2 x maxConcurrent`` workers, so a connection per thread would hold dozens per node,
and a few nodes would exhaust PostgreSQL's default ``max_connections`` (100); while every
call is one to three indexed statements (~0.1-0.3 ms on loopback), so a handful of
connections serve thousands of authentications a second. Why not ``psycopg_pool``: it is a
separate package the ``postgres`` extra does not install, with a background thread per pool
for what is, here, a list and a semaphore.

A node must outlive its database's restart. A connection the server closed (a restart, an
idle timeout, a failover) becomes readable while it sits idle here (the server's goodbye,
or EOF), so taking one from the pool polls its socket (one syscall) and opens a fresh
connection instead of failing the request. A call made while the database is down raises
:class:`~isol8.server.keystore.StoreUnavailable`, which the server answers with 503 and
``Retry-After``; the next call connects again.
"""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row

from ..errors import InvalidRequest
from .keystore import StoreUnavailable

log = logging.getLogger(__name__)

#: Connections per node and per store (the key store and the audit log have one each).
POOL_SIZE = 4
CONNECT_TIMEOUT = 5
#: A statement that takes longer is the database's trouble: cancel it rather than hold a
#: worker thread (and the request) for as long as the database hangs.
STATEMENT_TIMEOUT_MS = 10_000
#: How long a call waits for one of the node's connections before it is a 503.
ACQUIRE_TIMEOUT = 10.0

Connection = psycopg.Connection[DictRow]


def describe(url: str) -> str:
    """The database as messages may name it: never the password a URL may carry."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise InvalidRequest(f"not a PostgreSQL URL: {exc}") from None
    where = str(parts.get("host") or "localhost")
    if "port" in parts:
        where += f":{parts['port']}"
    return f"PostgreSQL at {where}/{parts.get('dbname') or parts.get('user') or ''}"


class Pool:
    """At most ``size`` connections to ``url``, each used by one thread at a time, in
    autocommit mode with rows as dicts (``with conn.transaction()`` for a transaction)."""

    def __init__(self, url: str, size: int = POOL_SIZE) -> None:
        self.name = describe(url)
        self._url = url
        self._idle: list[Connection] = []
        self._lock = threading.Lock()  # the idle list and the closed flag
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A live connection for one operation. A database that cannot be reached, or a
        statement it cancels, is :class:`StoreUnavailable`; other errors pass through."""
        if not self._slots.acquire(timeout=ACQUIRE_TIMEOUT):
            raise StoreUnavailable(f"{self.name}: every connection stayed busy")
        conn: Connection | None = None
        try:
            conn = self._take() or self._connect()
            yield conn
        except psycopg.OperationalError as exc:
            self._discard(conn)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreUnavailable(f"{self.name} is unavailable: {first}") from None
        except BaseException:
            if conn is not None and conn.info.transaction_status != TransactionStatus.IDLE:
                self._discard(conn)  # half a transaction: never hand it to the next call
            else:
                self._give_back(conn)
            raise
        else:
            self._give_back(conn)
        finally:
            self._slots.release()

    def _connect(self) -> Connection:
        if self._closed:
            raise StoreUnavailable(f"{self.name}: the store is closed")
        return psycopg.connect(
            self._url, autocommit=True, row_factory=dict_row, connect_timeout=CONNECT_TIMEOUT,
            application_name="isol8", options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")

    def _take(self) -> Connection | None:
        """An idle connection still open at the server's end, else ``None``."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            if not conn.closed and not _readable(conn):
                return conn
            # Readable while idle: the server said goodbye (or hung up). Nothing to read.
            log.info("%s: a pooled connection was closed by the server; reconnecting",
                     self.name)
            self._discard(conn)

    def _give_back(self, conn: Connection | None) -> None:
        if conn is None:
            return
        with self._lock:
            if not self._closed and not conn.closed:
                self._idle.append(conn)
                return
        conn.close()

    @staticmethod
    def _discard(conn: Connection | None) -> None:
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close the idle connections now; one in use closes when it is given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _readable(conn: Any) -> bool:
    try:
        return bool(select.select([conn.fileno()], [], [], 0)[0])
    except (OSError, ValueError, psycopg.Error):
        return True
