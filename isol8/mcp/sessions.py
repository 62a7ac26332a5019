"""The MCP server's sessions: who owns each one, and when it goes away.

A session is a persistent engine (one sandbox) named by an id. Its owner is whoever may
reach it: over stdio the connection (the store itself is the connection's, and closing it
ends every session), over HTTP the authenticated caller, since the streamable-HTTP
protocol has no connection to tie it to. Another owner's session answers exactly as an
unknown one, so ids leak nothing. An idle session expires after the TTL, and no session is
ever stopped under a running call.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ..errors import InvalidRequest
from ..runtimes import get_runtime
from .engines import Backend, Engine
from .limits import McpLimits

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_log = logging.getLogger(__name__)


class UnknownSession(InvalidRequest):
    """No session of that id belongs to the caller (never made, destroyed, expired, or
    another caller's)."""


@dataclass(slots=True)
class Session:
    id: str
    owner: str
    runtime: str
    engine: Engine
    last_used: float
    busy: int = 0  # calls in flight: a busy session never expires


class SessionStore:
    """Every live session of one connection (stdio) or one server (HTTP)."""

    def __init__(self, backend: Backend, limits: McpLimits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._backend, self._limits, self._clock = backend, limits, clock
        self._sessions: dict[tuple[str, str], Session] = {}
        self._closed = False

    async def create(self, owner: str, runtime: str, session_id: str | None = None) -> Session:
        """A new session, its sandbox made now so that a broken option or runtime fails
        here and not on the first call."""
        await self.sweep()
        if self._closed:
            raise InvalidRequest("the server is shutting down")
        if session_id is None:
            session_id = "s-" + secrets.token_hex(8)
        elif not isinstance(session_id, str) or not _ID.fullmatch(session_id):
            raise InvalidRequest("session_id: 1 to 64 letters, digits, '_', '.' or '-', "
                                 "starting with a letter or digit")
        get_runtime(runtime)  # the first run is a command, which would not check it
        if (owner, session_id) in self._sessions:
            raise InvalidRequest(f"session_id: {session_id!r} already exists")
        if len(self._sessions) >= self._limits.max_sessions:
            raise InvalidRequest(f"at most {self._limits.max_sessions} sessions at once: "
                                 "destroy one you no longer need (list_sessions shows them)")
        session = Session(session_id, owner, runtime, self._backend.for_session(runtime),
                          self._clock(), busy=1)
        self._sessions[(owner, session_id)] = session  # holds the slot while it starts
        try:
            await session.engine.execute(cmd="true", runtime=runtime)
        except BaseException:
            del self._sessions[(owner, session_id)]
            await _stop(session)
            raise
        session.busy, session.last_used = 0, self._clock()
        return session

    @asynccontextmanager
    async def using(self, owner: str, session_id: str) -> AsyncIterator[Session]:
        """The caller's session, kept from expiring while the block runs."""
        await self.sweep()
        session = self._sessions.get((owner, session_id))
        if session is None:
            raise UnknownSession(f"no session {session_id!r}: it was destroyed, expired "
                                 "or never made (list_sessions shows yours)")
        session.busy += 1
        try:
            yield session
        finally:
            session.busy -= 1
            session.last_used = self._clock()

    async def list(self, owner: str) -> list[Session]:
        await self.sweep()
        return [s for (who, _), s in self._sessions.items() if who == owner]

    def expires_in(self, session: Session) -> float:
        """Seconds of idleness left before the session expires."""
        return max(0.0, session.last_used + self._limits.session_ttl_s - self._clock())

    async def destroy(self, owner: str, session_id: str) -> bool:
        """End the caller's session; False when there was none of that id."""
        session = self._sessions.pop((owner, session_id), None)
        if session is None:
            return False
        await _stop(session)
        return True

    async def sweep(self) -> None:
        """Destroy every session idle for longer than the TTL."""
        now = self._clock()
        stale = [key for key, s in self._sessions.items()
                 if not s.busy and now - s.last_used > self._limits.session_ttl_s]
        await _stop(*(self._sessions.pop(key) for key in stale))

    async def expire_forever(self) -> None:
        """Sweep on a timer, so an idle server stops expired sessions' sandboxes too."""
        period = min(30.0, max(0.05, self._limits.session_ttl_s / 4))
        while True:
            await asyncio.sleep(period)
            await self.sweep()

    async def close(self) -> None:
        """Stop every session (the connection or the server is going away)."""
        self._closed = True
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await _stop(*sessions)


async def _stop(*sessions: Session) -> None:
    """Stop sessions' engines, all of them, even when the caller is being cancelled (every
    stop is under way before the first wait) or one of them fails: a sandbox left running
    because its owner hung up is exactly the leak this store exists to prevent."""
    if not sessions:
        return
    stops = [asyncio.ensure_future(session.engine.stop()) for session in sessions]
    outcomes = await asyncio.shield(asyncio.gather(*stops, return_exceptions=True))
    for session, outcome in zip(sessions, outcomes):
        if isinstance(outcome, Exception):
            _log.error("isol8 mcp: stopping session %s failed: %s", session.id, outcome)
