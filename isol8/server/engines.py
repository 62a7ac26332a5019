"""The server's engines: one per distinct engine-option set, and one per session.

Upstream's server builds a fresh engine for every ephemeral request and stops it afterwards,
so its warm pool never serves anything (isol8-api.md §4.3). Here an ephemeral engine is keyed
by its policed options (isol8.server.policy fills in every ceiling'd value, so equal runs
give equal keys) and kept with its warm pool across requests; per-request fields (code,
env, the request's timeout...) are not part of the key. Engines are bounded, least recently
used out first, and an engine is only stopped once no request is using it.

A session (``sessionId``) is a persistent engine of its own, keyed by (owner, id): the owner
is the API key that created it, so another key cannot reach it (upstream shares sessions
between every key). A later request with other engine options gets ``OptionsConflict``
(409) naming the fields, instead of silently running with the session's first options.
A session idle (no run, no file transfer) for the policy's ``sessionTtlMs`` is stopped.

With a ``Capacity`` (isol8.server.capacity), every sandbox that outlives a request is in
its budget: a session's from creation until it is stopped, a shared engine's warm pool
while the engine lives (an engine with no room for one runs cold).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..async_engine import AsyncIsol8
from ..errors import Isol8Error
from ..remote_code import RemoteCodePolicy
from .policy import DEFAULT_MAX_ENGINES
from .wire import engine_kwargs

if TYPE_CHECKING:
    from .capacity import Capacity, Cost
    from .session_directory import SessionDirectory

__all__ = ["DEFAULT_MAX_ENGINES", "EngineRegistry", "OptionsConflict", "SessionGone",
           "ShuttingDown"]
_log = logging.getLogger("isol8.server")


class OptionsConflict(Isol8Error):
    """A session was asked to run with engine options other than its own."""

    def __init__(self, session_id: str, fields: list[str]) -> None:
        super().__init__(f"session {session_id!r} was created with other options: "
                         f"{', '.join(fields)} differ (start a new session to change them)")
        self.fields = fields


class ShuttingDown(Isol8Error):
    """The server is stopping: no new engine or run."""


class SessionGone(Isol8Error):
    """A session another node held, and lost with it (isol8.server.session_directory):
    upstream's 404, whose words the clients read as a session not found."""

    def __init__(self, session_id: str, node: str) -> None:
        super().__init__(f"Session not found: {session_id!r} was held by node {node!r}, "
                         "which no longer has it (its state is gone); the next request with "
                         "this id starts a new session")


@dataclass(slots=True)
class _Engine:
    engine: AsyncIsol8
    pool: Cost | None = None  # its warm pool's room in the capacity's budget
    users: int = 0


@dataclass(slots=True)
class Session:
    engine: AsyncIsol8
    options: Mapping[str, object]
    last_accessed_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    active: int = 0
    # for the TTL: the wall clock above is upstream's field, and may jump
    idle_since: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        self.last_accessed_ms = int(time.time() * 1000)
        self.idle_since = time.monotonic()

    def to_dict(self, session_id: str) -> dict[str, object]:
        """Upstream's ``GET /sessions`` entry."""
        return {"id": session_id, "isActive": self.active > 0,
                "lastAccessedAt": self.last_accessed_ms}


def engine_key(options: Mapping[str, object]) -> str:
    """The identity of an engine-option set: canonical JSON of the policed options."""
    return json.dumps(options, sort_keys=True, separators=(",", ":"))


class EngineRegistry:
    """Every engine the server runs, and the only place that creates or stops one.

    Its methods run on the event loop; engine construction is cheap (it validates options),
    while ``stop()`` blocks and runs in a worker thread."""

    def __init__(self, max_engines: int = DEFAULT_MAX_ENGINES,
                 capacity: Capacity | None = None,
                 remote_code: RemoteCodePolicy = RemoteCodePolicy(),
                 directory: SessionDirectory | None = None) -> None:
        self._max_engines = max_engines
        self._directory = directory  # many nodes: which node holds each session
        self._claiming = asyncio.Lock()  # one session start at a time asks the directory
        self._remote_code = remote_code  # the operator's, never a client's
        self._capacity = capacity
        self._engines: OrderedDict[str, _Engine] = OrderedDict()
        self._sessions: dict[tuple[str, str], Session] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._pruner: asyncio.Task[None] | None = None
        self._closed = False
        if capacity is not None:
            capacity.reclaim = self._reclaim

    @asynccontextmanager
    async def ephemeral(self, options: Mapping[str, object]) -> AsyncIterator[AsyncIsol8]:
        """The shared engine for ``options``, held for the block."""
        self._check_open()
        key = engine_key(options)
        entry = self._engines.get(key)
        if entry is None:
            pool = self._capacity.reserve_pool(options) if self._capacity else None
            try:
                engine = AsyncIsol8(prewarm=pool is not None or self._capacity is None,
                                    remote_code=self._remote_code, **engine_kwargs(options))
            except BaseException:
                if pool is not None:
                    self._capacity.release_pool(pool)  # type: ignore[union-attr]
                raise
            entry = self._engines[key] = _Engine(engine, pool)
        self._engines.move_to_end(key)
        entry.users += 1
        try:
            yield entry.engine
        finally:
            entry.users -= 1
            self._evict()

    def _evict(self) -> None:
        """Stop the least recently used idle engines beyond the bound; busy ones stay until
        they are idle (a stop under a run would pull its cgroups away)."""
        excess = len(self._engines) - self._max_engines
        for key in [k for k, e in self._engines.items() if e.users == 0][:max(excess, 0)]:
            self._stop_later(self._engines.pop(key))

    def _reclaim(self) -> None:
        """The capacity's budget is short: stop the idle engines that hold a warm pool."""
        for key in [k for k, e in self._engines.items() if e.users == 0 and e.pool]:
            self._stop_later(self._engines.pop(key))

    def _stop_later(self, entry: _Engine) -> None:
        """Stop an evicted engine off the request's path; ``close()`` waits for it."""
        task = asyncio.get_running_loop().create_task(self._stop_engine(entry))
        self._stopping.add(task)
        task.add_done_callback(self._stopped)

    def _stop_engine(self, entry: _Engine) -> Coroutine[object, object, None]:
        """Stop a shared engine, already out of the registry; its pool's room is given back
        once its sandboxes are gone (or the stop failed: they are then beyond reach)."""
        if entry.pool is not None and self._capacity is not None:
            self._capacity.pool_stopping(entry.pool)  # now, not when the stop is scheduled
        return self._stopped_engine(entry)

    async def _stopped_engine(self, entry: _Engine) -> None:
        try:
            await entry.engine.stop()
        finally:
            if entry.pool is not None and self._capacity is not None:
                self._capacity.release_pool(entry.pool)
                entry.pool = None

    def _stopped(self, task: asyncio.Task[None]) -> None:
        self._stopping.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("stopping an evicted engine failed: %s", task.exception())

    @asynccontextmanager
    async def session(self, owner: str, session_id: str,
                      options: Mapping[str, object]) -> AsyncIterator[AsyncIsol8]:
        """The session's engine (created on first use), held for the block."""
        self._check_open()
        key = (owner, session_id)
        session = self._sessions.get(key)
        if session is None and self._directory is not None:
            async with self._claiming:  # a concurrent first request must not see a "loss"
                session = self._sessions.get(key)
                if session is None:
                    lost_on = await asyncio.to_thread(self._directory.claim, owner,
                                                      session_id)
                    if lost_on is not None:
                        raise SessionGone(session_id, lost_on)
                    try:
                        session = self._start_session(key, options)
                    except BaseException:  # never started: not this node's to hold
                        await self._forget(key)
                        raise
        elif session is None:
            session = self._start_session(key, options)
        else:
            differ = sorted(f"options.{name}" for name in set(session.options) | set(options)
                            if session.options.get(name) != options.get(name))
            if differ:
                raise OptionsConflict(session_id, differ)
        async with _held(session) as engine:
            yield engine

    def _start_session(self, key: tuple[str, str], options: Mapping[str, object]) -> Session:
        engine = AsyncIsol8(mode="persistent", remote_code=self._remote_code,
                            **engine_kwargs(options))
        session = self._sessions[key] = Session(engine, dict(options))
        if self._capacity is not None:
            self._capacity.session_opened(key, options)
            self._start_pruner()
        return session

    @asynccontextmanager
    async def existing_session(self, owner: str,
                               session_id: str) -> AsyncIterator[AsyncIsol8 | None]:
        """The owner's session's engine, held for the block as a run holds it, or None if
        there is none: never creates one (``/file`` needs a session that already ran)."""
        self._check_open()
        session = self._sessions.get((owner, session_id))
        if session is None:
            yield None
            return
        async with _held(session) as engine:
            yield engine

    def counts(self) -> tuple[int, int]:
        """(shared engines, sessions) alive, for the metrics' gauges."""
        return len(self._engines), len(self._sessions)

    async def clear(self) -> tuple[list[BaseException | None], list[BaseException | None]]:
        """``POST /cleanup``: stop every session, whoever owns it, and every idle shared
        engine (a busy one keeps its run's cgroups; it is evicted once idle, as ever). A
        session's run in progress finishes first: its engine serializes them. Returns each
        stop's exception or None, sessions then engines."""
        self._check_open()
        sessions = list(self._sessions.items())
        self._sessions.clear()
        idle = [key for key, entry in self._engines.items() if entry.users == 0]
        engines = [self._engines.pop(key) for key in idle]
        outcomes = await asyncio.gather(*(self._stop_session(*s) for s in sessions),
                                        *(self._stop_engine(e) for e in engines),
                                        return_exceptions=True)
        errors = [o if isinstance(o, BaseException) else None for o in outcomes]
        return errors[:len(sessions)], errors[len(sessions):]

    def sessions(self, owner: str) -> list[dict[str, object]]:
        """The owner's sessions, in upstream's shape; nobody else's."""
        return [s.to_dict(sid) for (o, sid), s in self._sessions.items() if o == owner]

    async def end_session(self, owner: str, session_id: str) -> None:
        """Stop a session and its sandbox; idempotent (upstream answers ok for an unknown
        id). A run in progress finishes first: the engine serializes them."""
        key = (owner, session_id)
        session = self._sessions.pop(key, None)
        if session is not None:
            await self._stop_session(key, session)

    async def _stop_session(self, key: tuple[str, str], session: Session) -> None:
        """Stop a session already taken out of the registry (so nothing can start using
        it in the meantime); its room in the budget is given back once it is stopped."""
        try:
            await session.engine.stop()
        finally:
            if self._capacity is not None:
                self._capacity.session_closed(key)
            await self._forget(key)

    async def _forget(self, key: tuple[str, str]) -> None:
        """Remove a session's record from the directory (many nodes). A database that is
        down keeps the record: the session's next request is told it was lost, which it
        was, though by its node's choice."""
        if self._directory is None:
            return
        try:
            await asyncio.to_thread(self._directory.release, *key)
        except Isol8Error as exc:
            _log.warning("session %r ended, its record kept: %s", key[1], exc)

    def _start_pruner(self) -> None:
        if self._pruner is None:
            self._pruner = asyncio.get_running_loop().create_task(self._prune_idle())

    async def _prune_idle(self) -> None:
        """Stop sessions idle for the TTL; a session in use (a run, a file transfer) is
        never idle. Checked a few times per TTL, so one lives at most 1.25 TTL idle."""
        assert self._capacity is not None
        ttl = self._capacity.limits.session_ttl_ms / 1000
        while True:
            await asyncio.sleep(min(max(ttl / 4, 0.05), 30.0))
            now = time.monotonic()
            idle = [(key, self._sessions.pop(key)) for key, s in list(self._sessions.items())
                    if s.active == 0 and now - s.idle_since >= ttl]
            outcomes = await asyncio.gather(*(self._stop_session(*i) for i in idle),
                                            return_exceptions=True)
            for (key, _), outcome in zip(idle, outcomes):
                if isinstance(outcome, BaseException):
                    _log.error("stopping idle session %r failed: %s", key[1], outcome)

    async def close(self) -> None:
        """Stop every engine and session: no sandbox outlives the server."""
        self._closed = True
        if self._pruner is not None:
            self._pruner.cancel()
        engines = list(self._engines.values())
        sessions = list(self._sessions.items())
        self._engines.clear()
        self._sessions.clear()
        outcomes = await asyncio.gather(*(self._stop_session(*s) for s in sessions),
                                        *(self._stop_engine(e) for e in engines),
                                        *set(self._stopping), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                _log.error("stopping an engine failed: %s", outcome)

    def _check_open(self) -> None:
        if self._closed:
            raise ShuttingDown("the server is shutting down")


@asynccontextmanager
async def _held(session: Session) -> AsyncIterator[AsyncIsol8]:
    """A session in use for the block: the pruner leaves an active session alone, and its
    idle time counts from the block's end."""
    session.active += 1
    session.touch()
    try:
        yield session.engine
    finally:
        session.active -= 1
        session.touch()
