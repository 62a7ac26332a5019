"""``RemoteIsol8``: the ``Isol8`` API, run by an ``isol8 serve`` over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator

from ..result import StreamEvent
from .errors import RemoteConnectionError
from .transport import Refused, Transport
from .wire import (WS_PATH, Answer, Call, Core, EventReader, Rejected,
                   RemoteExecutionResult, SessionInfo, error_from)

class RemoteIsol8:
    """``Isol8``'s methods, results, events and exceptions, executed by the server at
    ``host`` (``http://127.0.0.1:3000``) with ``api_key`` (default ``$ISOL8_API_KEY``).

    ``session_id`` makes it persistent (upstream's model): every call runs in the server's
    sandbox of that id, owned by this key, made on first use and ended by ``stop()``;
    ``put_file``/``get_file`` need one. ``options`` are the engine's (``network``,
    ``timeout_ms``, ``memory_limit``...), sent with each call; the server's policy may clamp
    them (``result.clamped`` says so) or refuse them (``InvalidRequest``). Settings of the
    server's host (``uid_range``, ``pool_size``...) are its operator's, refused here.

    ``streaming``: "auto" streams over the WebSocket (``GET /execute/ws``) and falls back to
    SSE (``POST /execute/stream``) for good when the server has none; "websocket" or "sse"
    use only that. ``http_timeout`` (seconds) bounds every wait; by default a run's answer
    gets its timeout plus a minute and other calls 30 s, beyond which ``RemoteTimeout`` is
    raised. ``max_retries`` bounds the retries: a 429 after its ``Retry-After`` (at most
    ``max_retry_wait`` s), a GET after a broken connection or 502/503/504; nothing else is
    repeated, since it may have run.
    """

    def __init__(self, *, host: str, api_key: str | None = None, session_id: str | None = None,
                 streaming: str = "auto", http_timeout: float | None = None,
                 max_retries: int = 3, max_retry_wait: float = 30.0,
                 **options: object) -> None:
        self._core = Core(host, api_key, session_id, options, streaming=streaming,
                          http_timeout=http_timeout, max_retries=max_retries,
                          max_retry_wait=max_retry_wait)
        self._transport = Transport(self._core.base_url, self._core.headers)
        self._websocket = streaming != "sse"

    @property
    def session_id(self) -> str | None:
        return self._core.session_id

    @property
    def repl(self) -> bool:
        """Whether python runs are cells of one interpreter (``repl=True``, a session)."""
        return self._core.options.get("repl") is True

    def __enter__(self) -> "RemoteIsol8":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, prewarm: bool | dict[str, list[str]] | None = None) -> None:
        """Check that the server answers (``GET /health``), as upstream's client does.
        ``prewarm`` is accepted for ``Isol8``'s signature; the server keeps its own pools."""
        self._core.check_health(self._call(self._core.health()))

    def stop(self) -> None:
        """End the session on the server (when there is one), then close the connections."""
        try:
            if self._core.session_id is not None:
                self._core.checked(self._call(self._core.delete_session()))
        finally:
            self._transport.close()

    def execute(self, code: str | None = None, **fields: object) -> RemoteExecutionResult:
        """``Isol8.execute`` (the same fields), run by the server."""
        return self._core.result(self._call(self._core.execute(code, fields)))

    def execute_stream(self, code: str | None = None,
                       **fields: object) -> Iterator[StreamEvent]:
        """``Isol8.execute_stream``, streamed from the server; closing the iterator closes
        the connection, and the server kills the run."""
        return self._events(self._core.stream(code, fields))

    def put_file(self, path: str, content: str | bytes) -> None:
        self._core.checked(self._call(self._core.put_file(path, content)))

    def get_file(self, path: str) -> bytes:
        return self._core.file_content(self._call(self._core.get_file(path)))

    def list_sessions(self) -> list[SessionInfo]:
        """This key's sessions on the server (upstream's ``listSessions``)."""
        return self._core.session_list(self._call(self._core.sessions()))

    def delete_session(self, session_id: str) -> None:
        """End one of this key's sessions; an unknown id is no error (upstream)."""
        self._core.checked(self._call(self._core.delete_session(session_id)))

    def _call(self, call: Call) -> Answer:
        attempt = 0
        while True:
            answer, error = None, None
            try:
                answer = self._transport.send(call, self._core.timeout_of(call))
            except RemoteConnectionError as exc:
                error = exc
            delay = self._core.retry_delay(call, attempt, answer, error)
            if delay is None:
                if error is not None:
                    raise error
                assert answer is not None
                return answer
            time.sleep(delay)
            attempt += 1

    def _events(self, call: Call) -> Iterator[StreamEvent]:
        attempt = 0
        while True:
            try:
                yield from self._stream_once(call)
                return
            except Rejected as rejected:  # refused before any event: nothing ran
                delay = self._core.retry_delay(call, attempt, rejected.answer)
                if delay is None:
                    raise error_from(rejected.answer) from None
                time.sleep(delay)
                attempt += 1

    def _stream_once(self, call: Call) -> Iterator[StreamEvent]:
        timeout = self._core.timeout_of(call)
        if self._websocket:
            try:
                with self._transport.websocket(WS_PATH, Core.ws_message(call),
                                               timeout) as messages:
                    yield from _read(messages, self._transport.base_url + WS_PATH)
                    return
            except Refused as refused:
                if self._core.streaming == "websocket":
                    raise
                # No WebSocket on this server: SSE from now on. Any other refusal: SSE for
                # this call, whose answer carries the error's body (and Retry-After).
                self._websocket = not refused.websocket_missing
        with self._transport.sse(call, timeout) as messages:
            yield from _read(messages, self._transport.base_url + call.path)


def _read(messages: Iterator[str], url: str) -> Iterator[StreamEvent]:
    reader = EventReader(url)
    for raw in messages:
        yield reader.feed(raw)
        if reader.done:
            return
    reader.end()
