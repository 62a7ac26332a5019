"""Admission control for ``isol8 serve``: how much runs at once, and what waits or is refused.

Every execution passes ``Capacity.admit`` before it touches an engine (isol8.server.runs).
It needs a concurrency slot and room in two host-wide budgets, summed over every live
sandbox's *limits*: memory (``memoryLimit``) and tmpfs (``sandboxSize + tmpSize`` and the
64 MiB ``/dev/shm``). What counts:

* an ephemeral run: its own sandbox, for the run;
* a session: its sandbox, from its first run until it ends (deleted, pruned after its idle
  TTL, lost, or the server stops), since a persistent sandbox lives between runs; a later
  run in it only needs a slot;
* a shared engine's warm pool: its ready sandboxes, while the engine lives. Pools may take
  at most half of each budget (an engine that finds no room runs cold, without a pool), and
  a run that finds no room makes the registry stop idle engines to give their pools back.
  A run served from a pool is counted twice (its pool's and its own): the budget errs on
  the safe side.

A request that does not fit waits in a FIFO queue (first come, first served, so a large
request is not starved by small ones) for at most ``queueTimeoutMs``; a full queue or a
wait that times out is a 429 with ``Retry-After`` naming what was short. While the node
drains (isol8.server.drain), new work (an ephemeral run, a session this node does not
have) gets 503 with ``Retry-After``, queued or not; runs in the node's existing sessions
are admitted as ever, and ``kill_running`` ends what still runs at the drain's deadline
(a cancelled run kills its sandbox and is answered 503).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.exceptions import HTTPException

from ..images import SHM_SIZE
from ..pool import prewarm_kinds
from .engines import ShuttingDown
from .metrics import Metrics
from .policy import ENGINE_DEFAULTS, ServerPolicy
from .wire import ExecuteBody, WireError

# The warm pool of a shared engine (prewarm=True, pool_size 1): one sandbox per kind.
POOL_SANDBOXES = len(prewarm_kinds(True))
_CODE_FIELDS = ("code", "cmd", "setupScript")
_POLL_S = 0.05
# A cancelled run returns once its sandbox is torn down, well within this; past it, the
# shutdown goes on and the lifespan's stop of every engine ends what is left.
_KILLED_WAIT_S = 30.0


class OverCapacity(HTTPException):
    """429: no room now; ``reason`` is one of isol8.server.metrics.REJECT_REASONS."""

    def __init__(self, reason: str, message: str, retry_after_s: int) -> None:
        super().__init__(429, message, headers={"Retry-After": str(retry_after_s)})
        self.reason = reason


class Draining(HTTPException):
    """503: the node drains and takes no new work. Nothing was started, so the request may
    go to another node as it is (a balancer may retry it there)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(503, message, headers={"Retry-After": str(retry_after_s)})


class TooLarge(HTTPException):
    """413: a body or a program over the server's limit."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


@dataclass(frozen=True, slots=True)
class Cost:
    """What a sandbox may take of each budget, in bytes."""

    memory: int = 0
    tmpfs: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.memory + other.memory, self.tmpfs + other.tmpfs)

    def __sub__(self, other: Cost) -> Cost:
        return Cost(self.memory - other.memory, self.tmpfs - other.tmpfs)

    def times(self, n: int) -> Cost:
        return Cost(self.memory * n, self.tmpfs * n)

    def within(self, budget: Cost) -> bool:
        return self.memory <= budget.memory and self.tmpfs <= budget.tmpfs


def sandbox_cost(options: Mapping[str, object]) -> Cost:
    """One sandbox of these (policed, so filled-in) options."""

    def size(name: str) -> int:
        value = options.get(name, ENGINE_DEFAULTS[name])
        return int(value) if isinstance(value, (int, float)) else 0  # policed: a number

    return Cost(size("memoryLimit"), size("sandboxSize") + size("tmpSize") + SHM_SIZE)


@dataclass(slots=True, eq=False)  # compared by identity in the queue
class _Waiter:
    need: Cost
    future: asyncio.Future[None]
    new: bool  # an ephemeral run or a session's first: refused once the node drains
    granted: bool = False


@dataclass(slots=True)
class _Held:
    """A session's place in the budget: pending while its first run is admitted, open once
    the registry made it."""

    cost: Cost
    users: int = 0
    opened: bool = False
    reserved: bool = False


@dataclass(slots=True)
class _Usage:
    running: int = 0
    used: Cost = field(default_factory=Cost)  # runs, sessions and pools
    pools: Cost = field(default_factory=Cost)
    releasing: Cost = field(default_factory=Cost)  # pools being stopped: room soon back


class Capacity:
    """The server's one admission controller. Its methods run on the event loop."""

    def __init__(self, policy: ServerPolicy, metrics: Metrics | None = None) -> None:
        self.limits = policy.capacity
        self.budget = Cost(self.limits.memory_budget, self.limits.tmpfs_budget)
        self._metrics = metrics
        self._usage = _Usage()
        self._queue: deque[_Waiter] = deque()
        self._sessions: dict[tuple[str, str], _Held] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._killed: set[asyncio.Task[object]] = set()
        self.draining = False
        self._refusal = ""  # the drain's 503 message
        # Set by the engine registry: stop idle engines so their pools give room back.
        self.reclaim: Callable[[], None] | None = None
        if metrics is not None:
            metrics.gauge_callback(
                "isol8_queue_depth", "Executions waiting for capacity.", lambda: len(self._queue)
            )
            metrics.gauge_callback(
                "isol8_executions_running", "Executions admitted.", lambda: self._usage.running
            )
            metrics.gauge_callback(
                "isol8_memory_reserved_bytes",
                "The memory budget taken: memory limits of live sandboxes and warm pools.",
                lambda: self._usage.used.memory,
            )
            metrics.gauge_callback(
                "isol8_tmpfs_reserved_bytes",
                "The tmpfs budget taken: tmpfs sizes of live sandboxes and warm pools.",
                lambda: self._usage.used.tmpfs,
            )

    # -- what the metrics and tests read ------------------------------------------------

    @property
    def running(self) -> int:
        return self._usage.running

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def used(self) -> Cost:
        return self._usage.used

    def idle(self, *, sessions: bool = True) -> bool:
        """No run admitted or waiting (and with ``sessions``, no session open): nothing left
        for a drain to wait for."""
        return not self._tasks and not self._queue and not (sessions and self._sessions)

    # -- admission ------------------------------------------------------------------------

    @asynccontextmanager
    async def admit(self, owner: str, parsed: ExecuteBody) -> AsyncIterator[None]:
        """Hold a slot (and the run's or new session's room) for the block; raises 413,
        429 (``OverCapacity``) or 503 (``Draining``) instead of admitting."""
        key = None if parsed.session_id is None else (owner, parsed.session_id)
        if self.draining and key not in self._sessions:
            raise Draining(self._refusal, self.limits.retry_after_s)
        self._check_code(parsed.request)
        cost = sandbox_cost(parsed.options)
        self._check_budget(cost)
        need, new = cost, True
        if key is not None:
            held = self._sessions.get(key)
            if held is None:
                self._check_sessions(owner)
                held = self._sessions[key] = _Held(cost)
            else:
                new = False
                if held.reserved or held.users:
                    need = Cost()  # already counted, or being counted by its first run
            held.users += 1
        try:
            await self._acquire(need, new)
        except BaseException:
            if key is not None:
                self._unhold(key)
            raise
        if key is not None and need != Cost():
            self._sessions[key].reserved = True  # the session's from now on
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            yield
        except asyncio.CancelledError:
            if task in self._killed:  # drain's deadline, not the client: answer 503
                task.uncancel()
                raise ShuttingDown(
                    "the node drained before the run finished: it was killed at the "
                    "drain deadline"
                ) from None
            raise
        finally:
            self._tasks.discard(task)
            self._killed.discard(task)
            self._usage.running -= 1
            if key is None:
                self._usage.used -= need
            else:
                self._unhold(key)
            self._wake()

    def _check_code(self, request: Mapping[str, object]) -> None:
        for name in _CODE_FIELDS:
            value = request.get(name)
            if isinstance(value, str):
                size = len(value.encode("utf-8", "surrogatepass"))
                if size > self.limits.max_code_size:
                    raise TooLarge(
                        f"request.{name}: {size} bytes exceed the server's limit "
                        f"of {self.limits.max_code_size}"
                    )

    def _check_budget(self, cost: Cost) -> None:
        """A sandbox larger than a whole budget can never run here: no point retrying."""
        if cost.memory > self.budget.memory:
            raise WireError(
                "options.memoryLimit",
                f"{cost.memory} bytes exceed the server's "
                f"whole memory budget ({self.budget.memory}); ask for less",
            )
        if cost.tmpfs > self.budget.tmpfs:
            raise WireError(
                "options.sandboxSize",
                "sandboxSize + tmpSize + /dev/shm "
                f"({cost.tmpfs} bytes) exceed the server's whole tmpfs budget "
                f"({self.budget.tmpfs}); ask for less",
            )

    def _check_sessions(self, owner: str) -> None:
        mine = sum(1 for o, _ in self._sessions if o == owner)
        if mine >= self.limits.max_sessions_per_key:
            raise self._reject(
                "sessions",
                f"this key has {mine} sessions, the server's "
                "limit per key: end one (DELETE /session/{id}) or let an idle "
                f"one expire ({self.limits.session_ttl_ms} ms)",
            )
        if len(self._sessions) >= self.limits.max_sessions:
            raise self._reject(
                "sessions",
                f"the server holds {len(self._sessions)} sessions, its limit: retry later",
            )

    def _fits(self, need: Cost) -> bool:
        return self._usage.running < self.limits.max_concurrent and (
            self._usage.used + need
        ).within(self.budget)

    def _short_of(self, need: Cost) -> str:
        """What a request that does not fit lacks, as a REJECT_REASONS value."""
        after = self._usage.used + need
        if self._usage.running >= self.limits.max_concurrent:
            return "queue"
        if after.memory > self.budget.memory:
            return "memory"
        return "tmpfs" if after.tmpfs > self.budget.tmpfs else "queue"

    def _reject(self, reason: str, message: str) -> OverCapacity:
        if self._metrics is not None:
            self._metrics.rejected(reason)
        return OverCapacity(reason, message, self.limits.retry_after_s)

    def _take(self, need: Cost) -> None:
        self._usage.running += 1
        self._usage.used += need

    async def _acquire(self, need: Cost, new: bool) -> None:
        if not self._queue and self._fits(need):
            self._take(need)
            return
        reason = self._short_of(need)
        self._reclaim_for(need)
        # Room held only by warm pools being stopped is not a lack of capacity: wait for
        # it even past the queue's bound (a stop takes milliseconds).
        coming = self._usage.running < self.limits.max_concurrent and (
            self._usage.used - self._usage.releasing + need
        ).within(self.budget)
        if len(self._queue) >= self.limits.max_queue and not coming:
            raise self._reject(
                reason,
                f"over capacity ({_REASONS[reason]}) and "
                f"{len(self._queue)} requests already wait: retry later",
            )
        waiter = _Waiter(need, asyncio.get_running_loop().create_future(), new)
        self._queue.append(waiter)
        self._wake()  # may reclaim pools for it
        try:
            async with asyncio.timeout(self.limits.queue_timeout_ms / 1000):
                await waiter.future
        except TimeoutError:
            if not waiter.granted:
                reason = self._short_of(need)
                raise self._reject(
                    reason,
                    f"over capacity ({_REASONS[reason]}) for "
                    f"{self.limits.queue_timeout_ms} ms: retry later",
                ) from None
        except BaseException:
            if waiter.granted:  # granted as it was cancelled: give the room back
                self._usage.running -= 1
                self._usage.used -= need
            raise
        finally:
            if waiter in self._queue:
                self._queue.remove(waiter)
                self._wake()

    def _wake(self) -> None:
        """Admit queued requests in order while the head fits."""
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # timed out or cancelled; its finally removes it too
                self._queue.popleft()
                continue
            if not self._fits(head.need):
                self._reclaim_for(head.need)
                return
            self._queue.popleft()
            self._take(head.need)
            head.granted = True
            head.future.set_result(None)

    def _reclaim_for(self, need: Cost) -> None:
        """Short of budget room, not of a slot, while warm pools hold some: have the
        registry stop its idle engines (``pool_stopping`` then ``release_pool``)."""
        if (
            self.reclaim is not None
            and self._usage.pools != self._usage.releasing
            and self._usage.running < self.limits.max_concurrent
            and not (self._usage.used + need).within(self.budget)
        ):
            self.reclaim()

    def _unhold(self, key: tuple[str, str]) -> None:
        held = self._sessions[key]
        held.users -= 1
        self._drop_if_unused(key, held)

    def _drop_if_unused(self, key: tuple[str, str], held: _Held) -> None:
        if held.users == 0 and not held.opened:
            del self._sessions[key]
            if held.reserved:
                self._usage.used -= held.cost
            self._wake()

    # -- what the engine registry reports ------------------------------------------------

    def session_opened(self, key: tuple[str, str], options: Mapping[str, object]) -> None:
        """The registry made a session's sandbox: it stays counted until closed."""
        held = self._sessions.setdefault(key, _Held(sandbox_cost(options)))
        held.opened = True
        if not held.reserved:  # pruned between its run's admission and now: count it anyway
            held.reserved = True
            self._usage.used += held.cost

    def session_closed(self, key: tuple[str, str]) -> None:
        held = self._sessions.get(key)
        if held is not None:
            held.opened = False
            self._drop_if_unused(key, held)

    def reserve_pool(self, options: Mapping[str, object]) -> Cost | None:
        """Room for a new shared engine's warm pool, or None (the engine runs cold)."""
        cost = sandbox_cost(options).times(POOL_SANDBOXES)
        half = Cost(self.budget.memory // 2, self.budget.tmpfs // 2)
        if not (
            (self._usage.pools + cost).within(half)
            and (self._usage.used + cost).within(self.budget)
        ):
            return None
        self._usage.pools += cost
        self._usage.used += cost
        return cost

    def pool_stopping(self, cost: Cost) -> None:
        """A pool's engine is being stopped: its room is counted until ``release_pool``."""
        self._usage.releasing += cost

    def release_pool(self, cost: Cost) -> None:
        self._usage.pools -= cost
        self._usage.used -= cost
        self._usage.releasing -= cost
        self._wake()

    # -- drain (isol8.server.drain) --------------------------------------------------------

    def start_drain(self, message: str) -> None:
        """Refuse new work from now on with ``message`` (503): new requests and the queued
        ones that would start a sandbox; runs in existing sessions still wait their turn.
        Called again, it only changes the message (a SIGTERM during an operator's drain)."""
        self.draining = True
        self._refusal = message
        for waiter in self._queue:
            if waiter.new and not waiter.future.done():  # its own finally unqueues it
                waiter.future.set_exception(Draining(message, self.limits.retry_after_s))

    def kill(self) -> None:
        """Cancel every running execution (a cancelled run kills its sandbox)."""
        for task in self._tasks - self._killed:
            self._killed.add(task)
            task.cancel()

    async def kill_running(self) -> None:
        """The drain's deadline: kill what still runs and return once it is gone."""
        self.kill()
        until = time.monotonic() + _KILLED_WAIT_S
        while self._tasks and time.monotonic() < until:
            await asyncio.sleep(_POLL_S)


_REASONS = {
    "queue": "every execution slot is busy",
    "memory": "the memory budget is spent",
    "tmpfs": "the tmpfs budget is spent",
    "sessions": "too many sessions",
}
