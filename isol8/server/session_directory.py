"""Which node holds each session, in the database the nodes share: how a node tells a
session it never had from one that a dead node lost.

Sessions live on one node by design; the balancer pins each to its node. Upstream answers
an unknown ``sessionId`` by starting a new, empty session, so without a record a request
for a session whose node died would land on another node and run there without its state,
the client none the wiser. With ``--auth-db postgresql://...`` every session a node starts
is recorded (owner, id, node) and the record removed when the session ends on that node
(deleted, idle past its TTL, drained, the server stopped). A node asked for a session it
does not hold, while a record of it exists, answers upstream's 404 "Session not found"
naming the node that held it, once: the record goes with that answer, so the client's next
request with the id starts a new session, as upstream's would.

The calls block (psycopg's sync API on the server's worker threads) and happen only when
a session starts or ends, never on its runs.
"""

from __future__ import annotations

from .pgpool import Pool

POOL_SIZE = 2


class SessionDirectory:
    def __init__(self, url: str, node: str) -> None:
        self._pool = Pool(url, POOL_SIZE)
        self.node = node

    def claim(self, owner: str, session_id: str) -> str | None:
        """Record a session this node is about to start: None, or the node that held it and
        lost it (its record is removed: the next claim succeeds)."""
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "INSERT INTO isol8_sessions (owner, session_id, node) VALUES (%s, %s, %s) "
                "ON CONFLICT (owner, session_id) DO NOTHING RETURNING node",
                (owner, session_id, self.node)).fetchone()
            if row is not None:
                return None
            lost = conn.execute(
                "DELETE FROM isol8_sessions WHERE owner = %s AND session_id = %s "
                "RETURNING node", (owner, session_id)).fetchone()
            return str(lost["node"]) if lost is not None else None

    def release(self, owner: str, session_id: str) -> None:
        """The session ended here: forget it."""
        with self._pool.connection() as conn:
            conn.execute("DELETE FROM isol8_sessions WHERE owner = %s AND session_id = %s "
                         "AND node = %s", (owner, session_id, self.node))

    def close(self) -> None:
        self._pool.close()
