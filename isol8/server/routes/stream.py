"""``POST /execute/stream`` (SSE) and ``GET /execute/ws`` (WebSocket): one execution's
output as it arrives, in upstream's ``StreamEvent`` JSON (``{type, data, phase}``).

Both take ``POST /execute``'s body and its one path (isol8.server.runs): the body checked and
policed, admission, the shared engine or the caller's session, then metrics and audit from
the result the stream's last ``exit`` event carries. What fails before the run is admitted
(a bad body, a refused option, 409, 429, 503) is answered as ``POST /execute`` answers it:
over SSE a JSON ``{error}`` with its status, over WebSocket (whose handshake is already
done) an error event. What fails later is an error event, then the stream ends. Error
events carry isol8's additions ``status`` (what ``POST /execute`` would have answered) and
``errorType`` (the engine's exception class), so a remote client can raise the local
engine's own exception; upstream's clients read ``type`` and ``data`` only.

A client that goes away kills its run: the run belongs to a task of its own (``Run``), which
the transport cancels once and then waits for, so the sandbox is gone, and its capacity and
session released, before the response ends. It is not run inside the response's own task:
Starlette cancels a streaming response through an anyio scope that re-cancels at every
await, which would interrupt the engine's wait for its sandbox's teardown.

Secrets are masked by the engine before an event exists, across chunk boundaries (upstream
masks each chunk alone and leaks a secret split between two; isol8-api.md §1.7).

WebSocket messages beyond upstream's (isol8-api.md §4.1, which reserves ``stdin`` and
``signal`` and ignores both): ``signal`` SIGINT or SIGTERM kills the running execution, whole
sandbox included, and ends the stream with an error event and ``exit`` 128 + the signal's
number. ``stdin`` is still accepted and ignored: the engine hands a run its stdin whole at
the start (``request.stdin``), and there is no pipe into a running sandbox to write to.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import signal
from collections.abc import AsyncGenerator, AsyncIterator, MutableMapping
from contextlib import aclosing
from typing import Any, cast

import anyio
from fastapi import APIRouter, Depends, Request, WebSocket
from fastapi.responses import StreamingResponse
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from ...result import ExecutionResult, StreamEvent
from .. import errors
from ..auth import require_key
from ..policy import Clamped
from ..runs import decode, engine_for, finished, policed
from ..schema import EXECUTE_REQUEST_BODY
from ..wire import ExecuteBody, WireError, request_kwargs

router = APIRouter()
_log = logging.getLogger("isol8.server")

# RFC 6455 §7.4.1: 1000 normal closure, 1003 data it cannot accept, 1011 a server failure.
CLOSE_DONE, CLOSE_UNACCEPTABLE, CLOSE_FAILED = 1000, 1003, 1011
DONE_REASON = "Execution complete"  # upstream's reason, which its client may compare
# The signals upstream's protocol names; a run they reach is killed (the sandbox torn down),
# and its exit code is the shell's 128 + signal number.
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}


class Run:
    """One streamed execution, owned by a task of its own (see the module's docstring).

    ``start()`` returns once the run is admitted and has its engine, or raises what kept
    it out; ``events()`` gives its wire events; ``stop()`` kills it and waits for the end."""

    def __init__(
        self, conn: HTTPConnection, owner: str, parsed: ExecuteBody, clamped: list[Clamped]
    ) -> None:
        self._conn, self._owner, self._parsed, self._clamped = conn, owner, parsed, clamped
        self._queue: asyncio.Queue[StreamEvent | Exception | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._admitted: asyncio.Future[None] = loop.create_future()
        self._task = loop.create_task(self._produce())

    @classmethod
    async def start(
        cls, conn: HTTPConnection, owner: str, parsed: ExecuteBody, clamped: list[Clamped]
    ) -> "Run":
        run = cls(conn, owner, parsed, clamped)
        try:
            await asyncio.shield(run._admitted)
        except BaseException:
            await run.stop()  # e.g. cancelled while queued for capacity
            raise
        return run

    async def _produce(self) -> None:
        state: Any = self._conn.app.state
        result: ExecutionResult | None = None
        try:
            async with engine_for(state, self._owner, self._parsed) as engine:
                self._admitted.set_result(None)
                fields: dict[str, Any] = request_kwargs(self._parsed.request)
                stream = cast(AsyncGenerator[StreamEvent, None], engine.execute_stream(**fields))
                async with aclosing(stream):  # an early exit kills the run, now
                    async for event in stream:
                        result = event.result or result
                        self._queue.put_nowait(event)
            if result is not None:  # a failed setup script has none, as execute() raises
                finished(state, self._owner, self._parsed, result)
        except Exception as exc:
            if not self._admitted.done():
                self._admitted.set_exception(exc)
            else:
                self._queue.put_nowait(exc)
        finally:
            if not self._admitted.done():
                self._admitted.cancel()
            self._queue.put_nowait(None)

    async def events(self) -> AsyncGenerator[dict[str, object], None]:
        """The run's events in wire form; a failure is one last error event. Leaving the
        loop early kills the run."""
        try:
            while (item := await self._queue.get()) is not None:
                if isinstance(item, Exception):
                    yield await error_event(self._conn, item)
                    continue
                wire = item.to_dict()
                if item.result is not None and self._clamped:  # isol8's, as POST /execute's
                    wire["clamped"] = [c.to_dict() for c in self._clamped]
                yield wire
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Kill the run if it is still going; return once its sandbox is gone. Shielded: the
        caller may itself be under a cancelled scope (a client that left)."""
        if self._task.done():
            return
        self._task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.wait({self._task})


async def error_answer(conn: HTTPConnection, exc: Exception) -> Response | None:
    """The answer the app's exception handlers give ``exc`` (``{error}`` with its status and
    headers), or None for an exception they do not know (a server fault)."""
    handlers = conn.app.exception_handlers
    for kind in type(exc).__mro__:
        if kind in handlers:
            answer = handlers[kind](conn, exc)
            response: Response = await answer if inspect.isawaitable(answer) else answer
            return response
    return None


async def error_event(conn: HTTPConnection, exc: Exception) -> dict[str, object]:
    """``exc`` as upstream's error event, with the status and fields ``POST /execute``
    would have answered (``errorType``: the engine's exception class; 409's ``fields``;
    429's ``retryAfter``, seconds)."""
    response = await error_answer(conn, exc)
    if response is None:
        _log.error("stream failed", exc_info=exc)
        return {"type": "error", "data": "Internal Server Error", "status": 500}
    body = json.loads(bytes(response.body))
    event: dict[str, object] = {
        "type": "error",
        "data": body.pop("error", ""),
        "status": response.status_code,
    }
    if body.get("type"):
        event["errorType"] = body.pop("type")
    event.update({k: v for k, v in body.items() if k not in event})
    retry = response.headers.get("retry-after")
    if retry is not None and retry.isdigit():
        event["retryAfter"] = int(retry)
    return event


# -- SSE ------------------------------------------------------------------------------------


class EventStream(StreamingResponse):
    """``data: <json>\\n\\n`` frames, upstream's only SSE syntax (no event names, ids or
    heartbeats). JSON escapes every line break, so one event is always one frame. Whatever
    ends the response (the run's end, a client gone, a cancelled request), the run ends
    with it: a response whose body was never iterated still kills its run here."""

    media_type = "text/event-stream"

    def __init__(self, run: Run) -> None:
        super().__init__(
            self._frames(run), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self._run = run

    @staticmethod
    async def _frames(run: Run) -> AsyncIterator[bytes]:
        async for event in run.events():
            yield b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._run.stop()


def _json_errors(*statuses: int) -> dict[int | str, dict[str, object]]:
    """``errors.responses()`` under ``application/json``: FastAPI files a ``model`` under the
    route's media type, which here is the 200's ``text/event-stream``."""
    schema = errors.ErrorBody.model_json_schema()
    return {
        status: {
            "description": entry["description"],
            "content": {"application/json": {"schema": schema}},
        }
        for status, entry in errors.responses(*statuses).items()
    }


@router.post(
    "/execute/stream",
    response_class=EventStream,
    status_code=200,
    response_description="upstream's StreamEvent JSON, one `data:` frame each",
    responses=_json_errors(400, 401, 403, 409, 413, 429, 503),
    openapi_extra=EXECUTE_REQUEST_BODY,
)
async def execute_stream(request: Request, owner: str = Depends(require_key)) -> EventStream:
    state = request.app.state
    parsed, clamped = policed(state, decode(await request.body()), owner)
    return EventStream(await Run.start(request, owner, parsed, clamped))


# -- WebSocket ------------------------------------------------------------------------------


@router.websocket("/execute/ws")
async def execute_ws(websocket: WebSocket) -> None:
    """Upstream's protocol: the bearer key on the upgrade request (refused with the HTTP
    answer ``POST /execute`` would give: 401/403 ``{error}``), then one ``execute`` message
    ``{type, request, options?, sessionId?}``, its events, and close 1000."""
    try:
        owner = await require_key(websocket)
    except Exception as exc:
        answer = await error_answer(websocket, exc)
        if answer is None:
            raise
        await websocket.send_denial_response(answer)
        return
    await websocket.accept()
    await _Conversation(websocket, owner).serve()


class _Conversation:
    """One connection: client messages are read while the run's events are sent, so a
    ``signal`` or a disconnect reaches a running execution."""

    def __init__(self, websocket: WebSocket, owner: str) -> None:
        self._ws, self._owner = websocket, owner
        self._forward: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()  # one frame at a time from either task

    async def serve(self) -> None:
        receive = asyncio.ensure_future(self._ws.receive())
        try:
            while True:
                waiting: set[asyncio.Future[Any]] = {receive}
                if self._forward is not None:
                    waiting.add(self._forward)
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if self._forward is not None and self._forward.done():
                    await self._finish()
                    return
                message = receive.result()
                if message["type"] == "websocket.disconnect":
                    return
                close = await self._handle(message)
                if close is not None:
                    await self._close(*close)
                    return
                receive = asyncio.ensure_future(self._ws.receive())
        except WebSocketDisconnect:
            return
        finally:
            receive.cancel()
            await self._kill()

    async def _handle(self, message: MutableMapping[str, Any]) -> tuple[int, str] | None:
        """Act on one client message; a close code and reason if it ends the connection."""
        try:
            data = decode(
                message["text"] if message.get("text") is not None else message.get("bytes") or b""
            )
        except WireError as exc:
            await self._send({"type": "error", "data": str(exc), "status": 400})
            return CLOSE_UNACCEPTABLE, "Invalid JSON"
        if not isinstance(data, dict):
            data = {"type": None}
        kind = data.get("type")
        if kind == "execute":
            if self._forward is not None:
                await self._send(
                    {
                        "type": "error",
                        "status": 400,
                        "data": "an execution is already running on this connection",
                    }
                )
            else:
                self._forward = asyncio.ensure_future(self._execute(data))
        elif kind == "signal":
            return await self._signal(data.get("signal"))
        elif kind != "stdin":  # upstream's reserved stdin: accepted and ignored, as there
            await self._send(
                {"type": "error", "status": 400, "data": f"unknown message type: {kind!r}"}
            )
        return None

    async def _execute(self, message: dict[str, Any]) -> None:
        try:
            parsed, clamped = policed(self._ws.app.state, message, self._owner)
            run = await Run.start(self._ws, self._owner, parsed, clamped)
        except Exception as exc:
            await self._send(await error_event(self._ws, exc))
            return
        async with aclosing(run.events()) as events:  # cancelled mid-send: killed, now
            async for event in events:
                await self._send(event)

    async def _signal(self, name: object) -> tuple[int, str] | None:
        """SIGINT or SIGTERM kills a running execution (its sandbox is torn down, so every
        process in it dies, not only the one the signal would have reached)."""
        if name not in SIGNALS:
            await self._send(
                {
                    "type": "error",
                    "status": 400,
                    "data": f"signal: expected one of {', '.join(SIGNALS)}, got {name!r}",
                }
            )
            return None
        forward = self._forward
        if forward is None or forward.done():
            return None  # nothing running: ignored, as upstream ignores every signal
        forward.cancel()
        await asyncio.wait({forward})
        if not forward.cancelled():  # it ended on its own first: its events were all sent
            return CLOSE_DONE, DONE_REASON
        signum = SIGNALS[str(name)]
        await self._send({"type": "error", "data": f"Execution killed by {name}", "phase": "code"})
        await self._send({"type": "exit", "data": str(128 + signum), "phase": "code"})
        return CLOSE_DONE, DONE_REASON

    async def _finish(self) -> None:
        """The execution is over: close as upstream does, unless the client already left."""
        assert self._forward is not None
        if self._forward.cancelled() or isinstance(self._forward.exception(), WebSocketDisconnect):
            return
        failure = self._forward.exception()
        if failure is not None:
            _log.error("websocket execution failed", exc_info=failure)
            await self._close(CLOSE_FAILED, "Internal Server Error")
            return
        await self._close(CLOSE_DONE, DONE_REASON)

    async def _send(self, event: dict[str, object]) -> None:
        async with self._send_lock:
            await self._ws.send_text(json.dumps(event, separators=(",", ":")))

    async def _close(self, code: int, reason: str) -> None:
        async with self._send_lock:
            try:
                await self._ws.close(code, reason)
            except (WebSocketDisconnect, RuntimeError):
                pass  # the client closed first

    async def _kill(self) -> None:
        """Whatever ended the connection, the run ends with it, before this returns."""
        forward = self._forward
        if forward is not None and not forward.done():
            forward.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait({forward})
