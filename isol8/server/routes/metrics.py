"""``GET /metrics``: Prometheus text (isol8.server.metrics), with the master key.

Upstream has no ``/metrics``. It takes the master key, as ``POST /cleanup`` does, rather
than being open as many exporters are: its counts span every tenant (who runs how much,
which runs time out), and ``isol8 serve --host 0.0.0.0`` would show them to anyone who can
reach the port. Prometheus sends the key with ``authorization: {credentials_file: ...}`` in
its scrape config; an API key gets 403.

``install(app)`` adds what the routes cannot do themselves: an ASGI middleware that counts
every answer by route template, method and status, and the gauges read at each scrape.
"""

from __future__ import annotations

import glob
import os
import re
import time
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import errors
from ..auth import require_master
from ..metrics import CONTENT_TYPE, Metrics

router = APIRouter()

_HELPER = "isol8-helper"  # the comm of every sandbox's helper, a child of this process
_PARAMETER = re.compile(r"\{[^}]*\}")


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text exposition format 0.0.4",
        },
        **errors.responses(401, 403),
    },
)
async def metrics(request: Request, owner: str = Depends(require_master)) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


class RequestMetrics:
    """Counts each HTTP answer and WebSocket session by route template (``/session/{id}``,
    never the raw URL, which would let a client mint series), method and status, with its
    duration to the last byte (the end of the stream for SSE and WebSocket).

    A plain ASGI middleware, not Starlette's ``BaseHTTPMiddleware``: that one runs the app in
    a task of its own and buffers the response through a queue, which would cut the link
    between a streaming response and a client's disconnect."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before answering

        async def sending(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                status = message["status"]
            elif kind == "websocket.accept":
                status = 101
            elif kind == "websocket.close" and status == 500:
                status = 403  # closed before the handshake: the server's denial
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            method = "GET" if scope["type"] == "websocket" else scope["method"]
            self.metrics.request(_template(scope), method, status, time.perf_counter() - started)


def _template(scope: Scope) -> str:
    """The matched route's template with every parameter named ``id``, as
    isol8.server.metrics.ROUTES lists them; "" when nothing matched (counted as other)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return _PARAMETER.sub("{id}", path) if isinstance(path, str) else ""


def sandboxes_alive() -> int:
    """Sandbox helpers alive: this process's children named ``isol8-helper``, warm, running
    or holding a session. Counted from /proc (each thread's ``children`` file, which lists
    the children that thread spawned) rather than from the engines' books, so a leaked
    sandbox shows up too. The kernel reads those files without stopping anything, so a
    sandbox starting or ending during a scrape may be missed: a gauge, not an account."""
    me = os.getpid()
    if not os.path.exists(f"/proc/{me}/task/{me}/children"):  # CONFIG_PROC_CHILDREN=n
        raise OSError("/proc/PID/task/TID/children is missing: the gauge reads NaN")
    count = 0
    for children in glob.glob(f"/proc/{me}/task/*/children"):
        try:
            with open(children) as f:
                pids = f.read().split()
        except OSError:  # the thread ended meanwhile
            continue
        for pid in pids:
            try:
                with open(f"/proc/{pid}/comm") as f:
                    count += f.read().strip() == _HELPER
            except OSError:
                continue
    return count


def install(app: FastAPI) -> None:
    """The request counter and the gauges, on ``app.state.metrics``."""
    state: Any = app.state
    metrics: Metrics = state.metrics
    app.add_middleware(RequestMetrics, metrics=metrics)
    metrics.gauge_callback(
        "isol8_sandboxes_alive",
        "Sandboxes alive: warm, running or holding a session.",
        sandboxes_alive,
    )
    metrics.gauge_callback(
        "isol8_engines_alive",
        "Shared engines (one per option set), each with its warm pool.",
        lambda: state.engines.counts()[0],
    )
    metrics.gauge_callback(
        "isol8_sessions_alive", "Sessions alive, of every key.", lambda: state.engines.counts()[1]
    )
