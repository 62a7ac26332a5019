"""The audit log as rows of a shared PostgreSQL table (``isol8 serve --audit postgresql://...``).

Every node appends to ``audit_log``: the record is the file's JSON line as ``record`` (JSONB,
the same fields), beside the columns an operator filters on (``execution_id``, ``user_id``,
``at``) and ``node``, the node that ran it. The schema is the key store's (one migration list,
:mod:`isol8.server.migrations`), so ``--auth-db`` and ``--audit`` may name one database.

JSONB takes neither NUL characters nor lone surrogates (which a program's output or code can
hold: the file escapes them); they are stored as U+FFFD, the only change from the file's line.
"""

from __future__ import annotations

import re
from typing import Any

from psycopg.types.json import Jsonb

from .migrations import migrate_postgres
from .pgpool import Pool, describe

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    return value


class AuditTable:
    """One connection (the audit log has one writer thread per node), migrated on open."""

    def __init__(self, url: str, node: str) -> None:
        self.name = describe(url)
        self.node = node
        self._pool = Pool(url, size=1)
        try:
            with self._pool.connection() as conn:
                migrate_postgres(conn)
        except BaseException:
            self._pool.close()
            raise

    def insert(self, entries: list[dict[str, object]]) -> None:
        """All of ``entries`` in one transaction, or none (the caller retries the batch)."""
        rows = [(entry["executionId"], entry["userId"], entry["timestamp"], self.node,
                 Jsonb(_storable(entry))) for entry in entries]
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO audit_log (execution_id, user_id, at, node, record)"
                " VALUES (%s, %s, %s::timestamptz, %s, %s)", rows)

    def close(self) -> None:
        self._pool.close()
