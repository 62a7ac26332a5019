"""A request body larger than the server policy's ``maxBodySize`` is answered 413 without
being read whole.

An ASGI wrapper rather than a check in each route: a route that calls ``request.body()``
would have buffered the whole body before any check of its length could run. A declared
``Content-Length`` over the limit is refused before the app runs (the unread body is
discarded by the server, never buffered); a chunked body is counted as it arrives and
refused at the chunk that crosses the limit, so at most one chunk past it is held.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def _message(limit: int) -> str:
    return f"body: larger than the server's limit of {limit} bytes"


class BodyLimit:
    """``app`` with every HTTP request body held to ``max_bytes``."""

    def __init__(self, app: App, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"error": _message(self.max_bytes)}, 413)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # raised inside the route's body read: the app's handler answers 413
                    raise HTTPException(413, _message(self.max_bytes))
            return message

        await self.app(scope, counted, send)
