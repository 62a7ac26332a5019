"""Draining a node: it stops taking new work so a load balancer moves that work elsewhere,
while what it already holds ends in its own time.

A drain starts on ``SIGTERM`` (isol8.server.run, which exits once it ends) or on the
operator's ``POST /admin/drain`` (isol8.server.routes.admin; the node then stays up,
refusing). From that moment:

* new work gets 503 with ``Retry-After``: an ephemeral run, or a run naming a session this
  node does not have. Nothing was started, so a balancer may retry it on another node;
* ``/health`` answers 503 ``{"status": "draining"}``, which takes the node out of a
  balancer's rotation (HAProxy's ``http-check expect status 200``, a Kubernetes readiness
  probe);
* runs already admitted finish, and the node's sessions keep working (runs, files, their
  DELETE) until they end by themselves: deleted, or idle past their TTL.

``SIGINT`` is someone at a terminal pressing Ctrl-C, not an orchestrator rolling nodes: its
drain lets running executions finish but waits for no session (gunicorn's INT is a quick
shutdown, its TERM a graceful one, for the same reason).

The drain ends once nothing is left, or at the deadline (the policy's ``drainTimeoutMs``,
``isol8 serve --drain-timeout``): runs still going are then killed (answered 503, "killed
at the drain deadline") and the remaining sessions and warm pools are stopped, so a drained
node holds no sandbox whether it exits or stays up.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .capacity import Capacity
from .engines import EngineRegistry, ShuttingDown

SIGNAL, INTERRUPT, ADMIN = "SIGTERM", "SIGINT", "admin"  # what starts a drain
_REFUSAL = {
    SIGNAL: "the server is shutting down",
    INTERRUPT: "the server is shutting down",
    ADMIN: "this node is draining",
}
_AFTER = (": it takes no new sessions or ephemeral runs; retry, and a load balancer sends "
          "the request to another node")
_POLL_S = 0.05
_log = logging.getLogger("isol8.server")


class Drain:
    """The node's one drain; its methods run on the event loop."""

    def __init__(self, capacity: Capacity, engines: EngineRegistry) -> None:
        self._capacity = capacity
        self._engines = engines
        self._task: asyncio.Task[None] | None = None
        self._until = 0.0  # the deadline, on the monotonic clock
        self._hurried = False
        self._sessions = True  # wait for the sessions to end (not after a SIGINT)
        self.refusal = ""  # what new work is answered with (503)

    @property
    def draining(self) -> bool:
        return self._task is not None

    def start(self, trigger: str) -> asyncio.Task[None]:
        """Start draining (``SIGNAL``, ``INTERRUPT`` or ``ADMIN``), or join the drain under
        way: its deadline stays, the refusals' wording follows a later signal, and a SIGINT
        stops the wait for sessions. The task ends with the drain."""
        self.refusal = _REFUSAL[trigger] + _AFTER
        self._sessions = self._sessions and trigger != INTERRUPT
        self._capacity.start_drain(self.refusal)
        if self._task is None:
            deadline = self._capacity.limits.drain_timeout_ms / 1000
            self._until = time.monotonic() + deadline
            _log.info("draining (%s): %d execution(s) running, %d session(s); new work gets "
                      "503; whatever is left is stopped after %g s", trigger,
                      self._capacity.running, self._engines.counts()[1], deadline)
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self._task

    def hurry(self) -> None:
        """A second signal: kill the runs and stop the sessions now."""
        self._hurried = True
        self._capacity.kill()

    def cancel(self) -> None:
        """The app is shutting down under a drain still waiting (an operator's, say): the
        app stops every engine itself, so the drain's wait ends here."""
        if self._task is not None:
            self._task.cancel()

    def status(self) -> dict[str, object]:
        """What ``/health`` and ``POST /admin/drain`` report while draining."""
        left = max(0.0, self._until - time.monotonic()) if self._task is not None else 0.0
        return {"status": "draining", "running": self._capacity.running,
                "sessions": self._engines.counts()[1], "deadlineMs": int(left * 1000)}

    async def _run(self) -> None:
        while (not self._capacity.idle(sessions=self._sessions) and not self._hurried
               and time.monotonic() < self._until):
            await asyncio.sleep(_POLL_S)
        await self._capacity.kill_running()
        try:
            sessions, engines = await self._engines.clear()
        except ShuttingDown:  # the app stopped meanwhile: it stops every engine itself
            return
        for failure in (*sessions, *engines):
            if failure is not None:
                _log.error("draining: stopping a sandbox failed: %s", failure)
        _log.info("drained: no execution or session left")
