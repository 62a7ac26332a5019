"""The only module that knows httpx2: plain calls, SSE and WebSocket, sync and async.

httpx2 is young (a fork of httpx, isol8's ecosystem study §1), so it stays behind this small
surface: a swap touches this file only. Its errors become isol8.client.errors here; an error
status on a streaming route, answered before any event, is ``Refused`` for the client to
retry or raise.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import cast

try:
    import httpx2
    from httpx2.websockets import HTTPXWSException, WebSocketDisconnect, WebSocketUpgradeError
except ImportError as exc:  # the core library installs without it
    raise ImportError(f"isol8.client needs the client extra: pip install 'isol8[client]' "
                      f"({exc})") from exc

from .errors import RemoteConnectionError, RemoteTimeout
from .wire import CONNECT_TIMEOUT_S, Answer, Call, Rejected, ws_query

# One event may carry a whole output chunk, JSON-escaped (a control byte becomes six):
# httpx2's defaults (64 KiB per WebSocket message, 1 MiB per SSE event) are too small.
MAX_EVENT_BYTES = 16 << 20
# Upgrade refusals that mean "no WebSocket here" (an older or proxied server): the client
# stays on SSE for good. Any other refusal is retried over SSE for that call only, which
# answers with the error's full body.
NO_WEBSOCKET = (404, 405, 426, 501)
_END = object()


class Refused(Rejected):
    """A streaming route answered ``answer``, an error status, instead of its stream."""

    def __init__(self, answer: Answer, *, websocket_missing: bool = False) -> None:
        super().__init__(answer)
        self.websocket_missing = websocket_missing


def _timeout(seconds: float) -> httpx2.Timeout:
    return httpx2.Timeout(seconds, connect=min(seconds, CONNECT_TIMEOUT_S))


def _answer(response: httpx2.Response) -> Answer:
    return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()},
                  response.content)


@contextmanager
def _translated(url: str) -> Iterator[None]:
    """httpx2's exceptions as the client's own."""
    try:
        yield
    except WebSocketUpgradeError:  # an answer, not a transport failure: see _refused
        raise
    except httpx2.TimeoutException as exc:
        raise RemoteTimeout(f"{url}: no answer in time ({type(exc).__name__})") from exc
    except (httpx2.TransportError, HTTPXWSException) as exc:
        raise RemoteConnectionError(f"{url}: {type(exc).__name__}: {exc}") from exc


def _refused(exc: WebSocketUpgradeError) -> Refused:
    status = exc.response.status_code
    return Refused(Answer(status, {}, b""),
                   websocket_missing=status in NO_WEBSOCKET or status < 400)


class Transport:
    """Blocking HTTP to one server, one connection pool (made on first use)."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        self.base_url, self._headers = base_url, headers
        self._client: httpx2.Client | None = None

    def _http(self) -> httpx2.Client:
        if self._client is None:
            self._client = httpx2.Client(base_url=self.base_url, headers=self._headers)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def send(self, call: Call, timeout: float) -> Answer:
        with _translated(self.base_url + call.path):
            response = self._http().request(
                call.method, call.path, json=call.body, params=call.params,
                timeout=_timeout(timeout))
        return _answer(response)

    @contextmanager
    def sse(self, call: Call, timeout: float) -> Iterator[Iterator[str]]:
        """The ``data`` of each event of a ``text/event-stream`` answer."""
        with _translated(self.base_url + call.path), self._http().stream(
                call.method, call.path, json=call.body, timeout=_timeout(timeout)) as response:
            if response.status_code >= 300:
                response.read()
                raise Refused(_answer(response))
            source = httpx2.EventSource(response, max_event_size=MAX_EVENT_BYTES)
            yield (event.data for event in source)

    @contextmanager
    def websocket(self, path: str, message: object, timeout: float) -> Iterator[Iterator[str]]:
        """Send ``message`` (JSON) and read text messages until the server closes."""
        try:
            with _translated(self.base_url + path), self._http().websocket(
                    path, params=ws_query(message), max_message_size_bytes=MAX_EVENT_BYTES,
                    timeout=_timeout(timeout)) as ws:
                ws.send_text(json.dumps(message))
                yield _messages(ws, timeout, self.base_url + path)
        except WebSocketUpgradeError as exc:
            raise _refused(exc) from None


def _messages(ws: httpx2.websockets.WebSocketSession, timeout: float,
              url: str) -> Iterator[str]:
    while True:
        try:
            yield ws.receive_text(timeout=timeout)
        except WebSocketDisconnect:
            return
        except TimeoutError:
            raise RemoteTimeout(f"{url}: no event for {timeout:g} s") from None


class AsyncTransport:
    """``Transport`` for asyncio."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        self.base_url, self._headers = base_url, headers
        self._client: httpx2.AsyncClient | None = None

    def _http(self) -> httpx2.AsyncClient:
        if self._client is None:
            self._client = httpx2.AsyncClient(base_url=self.base_url, headers=self._headers)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def send(self, call: Call, timeout: float) -> Answer:
        with _translated(self.base_url + call.path):
            response = await self._http().request(
                call.method, call.path, json=call.body, params=call.params,
                timeout=_timeout(timeout))
        return _answer(response)

    @asynccontextmanager
    async def sse(self, call: Call, timeout: float) -> AsyncIterator[AsyncIterator[str]]:
        with _translated(self.base_url + call.path):
            async with self._http().stream(call.method, call.path, json=call.body,
                                           timeout=_timeout(timeout)) as response:
                if response.status_code >= 300:
                    await response.aread()
                    raise Refused(_answer(response))
                events = httpx2.EventSource(response, max_event_size=MAX_EVENT_BYTES)
                # EventSource.__aiter__ is an async generator, typed as an iterator
                source = cast(AsyncGenerator[httpx2.ServerSentEvent, None], events.__aiter__())
                data = _data(source)
                try:
                    yield data
                finally:  # an abandoned async generator is only finalized when collected
                    await data.aclose()
                    await source.aclose()

    @asynccontextmanager
    async def websocket(self, path: str, message: object,
                        timeout: float) -> AsyncIterator[AsyncIterator[str]]:
        """As ``Transport.websocket``. httpx2's async session runs an anyio task group,
        which must not be suspended across the caller's ``yield``s (its cancel scope would
        be exited in another task): a task of its own owns the session and hands the
        messages over through a queue; leaving the block cancels it, closing the socket."""
        url = self.base_url + path
        queue: asyncio.Queue[object] = asyncio.Queue()
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def pump() -> None:
            try:
                async with self._http().websocket(path, params=ws_query(message),
                                                  max_message_size_bytes=MAX_EVENT_BYTES,
                                                  timeout=_timeout(timeout)) as ws:
                    await ws.send_text(json.dumps(message))
                    opened.set_result(None)
                    while True:
                        try:
                            queue.put_nowait(await ws.receive_text())
                        except WebSocketDisconnect:
                            break
                        except HTTPXWSException as exc:  # raised here: not in a group
                            queue.put_nowait(RemoteConnectionError(f"{url}: {exc!r}"))
                            break
            except Exception as exc:  # before the session was open
                if not opened.done():
                    opened.set_exception(exc)
                else:
                    queue.put_nowait(exc)
            finally:
                queue.put_nowait(_END)

        async def messages() -> AsyncGenerator[str, None]:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    raise RemoteTimeout(f"{url}: no event for {timeout:g} s") from None
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, str)
                yield item

        task = asyncio.create_task(pump())
        try:
            try:
                with _translated(url):
                    await opened
            except WebSocketUpgradeError as exc:
                raise _refused(exc) from None
            received = messages()
            try:
                yield received
            finally:
                await received.aclose()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _data(events: AsyncIterator[httpx2.ServerSentEvent]) -> AsyncGenerator[str, None]:
    async for event in events:
        yield event.data
