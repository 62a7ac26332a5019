"""Run the server under uvicorn until SIGTERM or SIGINT, draining first.

uvicorn alone, on a signal, stops accepting, closes idle keep-alive connections and gives
requests a grace period before it cancels them. Here a signal starts a drain instead
(isol8.server.drain): the server keeps answering, but new work gets 503 (also on keep-alive
connections already open, and from a load balancer that has not yet noticed), running
executions may finish and, after SIGTERM, the node's sessions go on until they end or the
policy's ``drainTimeoutMs`` (SIGINT, a Ctrl-C, waits for the runs only); what is left then
is killed (a run answered 503). Only then does
uvicorn shut down, and the app's lifespan end stops every engine, so no sandbox, cgroup or
temporary directory outlives the process. A signal during an operator's drain
(``POST /admin/drain``) waits for that drain, under its deadline; a second signal ends the
wait at once.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from types import FrameType
from typing import Any

import uvicorn

from .app import create_app
from .drain import INTERRUPT, SIGNAL, Drain

# After the drain: what is left is not an execution (a file transfer, a response being
# sent), and gets this long before uvicorn cancels it.
GRACE_SECONDS = 5


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self._drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exiting: asyncio.Task[None] | None = None

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
        self._loop.call_soon_threadsafe(self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        if self._exiting is not None:  # a second signal: stop waiting
            self._drain.hurry()
            return
        drained = self._drain.start(INTERRUPT if sig == signal.SIGINT else SIGNAL)
        self._exiting = asyncio.get_running_loop().create_task(self._exit_after(drained))

    async def _exit_after(self, drained: asyncio.Task[None]) -> None:
        try:
            await asyncio.wait({drained})
        finally:
            self.should_exit = True


def serve(*, host: str, port: int, api_key: str, **app_options: Any) -> None:
    """Serve until a signal; ``app_options`` are :func:`create_app`'s."""
    # A signal mask is inherited across exec: a parent that started us with SIGTERM blocked
    # would get a server that cannot be stopped gracefully.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT))
    app = create_app(api_key, **app_options)
    limits = app.state.capacity.limits
    # A WebSocket message is a body too: uvicorn refuses larger ones (close code 1009).
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACE_SECONDS,
        ws_max_size=limits.max_body_size,
    )
    _DrainingServer(config, app.state.drain).run()
