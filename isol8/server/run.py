"""Run the server under uvicorn until SIGTERM or SIGINT, draining first.

uvicorn alone, on a signal, stops accepting, closes idle keep-alive connections and gives
requests a grace period before it cancels them. Here a signal starts a drain instead
(isol8.server.capacity): the server keeps answering, but new and queued executions get
503 (also on keep-alive connections already open, and from a load balancer that has not
yet noticed), running ones may finish until the policy's ``drainTimeoutMs``, and are then
cancelled, which kills their sandboxes and answers them 503. Only then does uvicorn shut
down, and the app's lifespan end stops every engine and session, so no sandbox, cgroup or
temporary directory outlives the process. A second signal ends the wait at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType
from typing import Any

import uvicorn

from .app import create_app
from .capacity import Capacity

# After the drain: what is left is not an execution (a file transfer, a response being
# sent), and gets this long before uvicorn cancels it.
GRACE_SECONDS = 5
_log = logging.getLogger("isol8.server")


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, capacity: Capacity) -> None:
        super().__init__(config)
        self._capacity = capacity
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A Python signal handler runs between two bytecodes of the loop's own thread:
        # the loop is entered through call_soon_threadsafe, never from here directly.
        self._captured_signals.append(sig)  # uvicorn raises it again once shut down
        if self._loop is None:  # not serving yet: nothing to drain
            self.should_exit = True
            return
        self._loop.call_soon_threadsafe(self._on_signal)

    def _on_signal(self) -> None:
        if self._drain is not None:  # a second signal: stop waiting for the runs
            self._capacity.kill()
            return
        deadline = self._capacity.limits.drain_timeout_ms / 1000
        _log.info(
            "draining: %d execution(s) running, new work gets 503, killed after %g s",
            self._capacity.running,
            deadline,
        )
        self._drain = asyncio.get_running_loop().create_task(self._drained(deadline))

    async def _drained(self, deadline: float) -> None:
        try:
            await self._capacity.drain(deadline)
        finally:
            self.should_exit = True


def serve(*, host: str, port: int, api_key: str, **app_options: Any) -> None:
    """Serve until a signal; ``app_options`` are :func:`create_app`'s."""
    # A signal mask is inherited across exec: a parent that started us with SIGTERM blocked
    # would get a server that cannot be stopped gracefully.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT))
    app = create_app(api_key, **app_options)
    capacity: Capacity = app.state.capacity
    # A WebSocket message is a body too: uvicorn refuses larger ones (close code 1009).
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACE_SECONDS,
        ws_max_size=capacity.limits.max_body_size,
    )
    _DrainingServer(config, capacity).run()
