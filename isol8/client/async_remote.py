"""``AsyncRemoteIsol8``: ``RemoteIsol8`` for asyncio, over the same core (isol8.client.wire)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

from ..result import StreamEvent
from .errors import RemoteConnectionError
from .transport import AsyncTransport, Refused
from .wire import (WS_PATH, Answer, Call, Core, EventReader, Rejected,
                   RemoteExecutionResult, SessionInfo, error_from)

class AsyncRemoteIsol8:
    """``RemoteIsol8`` with ``await``: the same options, calls and exceptions, as
    ``AsyncIsol8`` is ``Isol8``'s. Cancelling a call, or closing ``execute_stream()``'s
    iterator (leave a loop early inside ``contextlib.aclosing(...)``), closes its
    connection, and the server kills the run."""

    def __init__(self, *, host: str, api_key: str | None = None, session_id: str | None = None,
                 streaming: str = "auto", http_timeout: float | None = None,
                 max_retries: int = 3, max_retry_wait: float = 30.0,
                 **options: object) -> None:
        self._core = Core(host, api_key, session_id, options, streaming=streaming,
                          http_timeout=http_timeout, max_retries=max_retries,
                          max_retry_wait=max_retry_wait)
        self._transport = AsyncTransport(self._core.base_url, self._core.headers)
        self._websocket = streaming != "sse"

    @property
    def session_id(self) -> str | None:
        return self._core.session_id

    @property
    def repl(self) -> bool:
        """Whether python runs are cells of one interpreter (``repl=True``, a session)."""
        return self._core.options.get("repl") is True

    async def __aenter__(self) -> "AsyncRemoteIsol8":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, prewarm: bool | dict[str, list[str]] | None = None) -> None:
        """Check that the server answers (``GET /health``), as upstream's client does.
        ``prewarm`` is accepted for ``Isol8``'s signature; the server keeps its own pools."""
        self._core.check_health(await self._call(self._core.health()))

    async def stop(self) -> None:
        """End the session on the server (when there is one), then close the connections."""
        try:
            if self._core.session_id is not None:
                self._core.checked(await self._call(self._core.delete_session()))
        finally:
            await self._transport.close()

    async def execute(self, code: str | None = None, **fields: object) -> RemoteExecutionResult:
        """``Isol8.execute`` (the same fields), run by the server."""
        return self._core.result(await self._call(self._core.execute(code, fields)))

    def execute_stream(self, code: str | None = None,
                       **fields: object) -> AsyncIterator[StreamEvent]:
        """``Isol8.execute_stream``, streamed from the server; closing the iterator closes
        the connection, and the server kills the run."""
        return self._events(self._core.stream(code, fields))

    async def put_file(self, path: str, content: str | bytes) -> None:
        self._core.checked(await self._call(self._core.put_file(path, content)))

    async def get_file(self, path: str) -> bytes:
        return self._core.file_content(await self._call(self._core.get_file(path)))

    async def list_sessions(self) -> list[SessionInfo]:
        """This key's sessions on the server (upstream's ``listSessions``)."""
        return self._core.session_list(await self._call(self._core.sessions()))

    async def delete_session(self, session_id: str) -> None:
        """End one of this key's sessions; an unknown id is no error (upstream)."""
        self._core.checked(await self._call(self._core.delete_session(session_id)))

    async def _call(self, call: Call) -> Answer:
        attempt = 0
        while True:
            answer, error = None, None
            try:
                answer = await self._transport.send(call, self._core.timeout_of(call))
            except RemoteConnectionError as exc:
                error = exc
            delay = self._core.retry_delay(call, attempt, answer, error)
            if delay is None:
                if error is not None:
                    raise error
                assert answer is not None
                return answer
            await asyncio.sleep(delay)
            attempt += 1

    async def _events(self, call: Call) -> AsyncIterator[StreamEvent]:
        attempt = 0
        while True:
            try:
                async with aclosing(self._stream_once(call)) as events:
                    async for event in events:
                        yield event
                return
            except Rejected as rejected:  # refused before any event: nothing ran
                delay = self._core.retry_delay(call, attempt, rejected.answer)
                if delay is None:
                    raise error_from(rejected.answer) from None
                await asyncio.sleep(delay)
                attempt += 1

    async def _stream_once(self, call: Call) -> AsyncGenerator[StreamEvent, None]:
        timeout = self._core.timeout_of(call)
        if self._websocket:
            try:
                async with self._transport.websocket(WS_PATH, Core.ws_message(call),
                                                     timeout) as messages:
                    async with aclosing(_read(messages, self._transport.base_url
                                              + WS_PATH)) as events:
                        async for event in events:
                            yield event
                    return
            except Refused as refused:
                if self._core.streaming == "websocket":
                    raise
                # No WebSocket on this server: SSE from now on. Any other refusal: SSE for
                # this call, whose answer carries the error's body (and Retry-After).
                self._websocket = not refused.websocket_missing
        async with self._transport.sse(call, timeout) as messages:
            async with aclosing(_read(messages, self._transport.base_url
                                      + call.path)) as events:
                async for event in events:
                    yield event


async def _read(messages: AsyncIterator[str], url: str) -> AsyncGenerator[StreamEvent, None]:
    reader = EventReader(url)
    async for raw in messages:
        yield reader.feed(raw)
        if reader.done:
            return
    reader.end()
