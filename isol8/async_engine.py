"""``AsyncIsol8``: the asyncio twin of ``Isol8``, over the same core.

Each run is ``Isol8``'s own code in a worker thread (the helper is posix_spawn'ed and the
sandbox dies on socket hang-up, never through PDEATHSIG, so the spawning thread does not
matter). Cancellation reaches the worker through a pipe its supervision loop polls: a
cancelled task, or an ``async for`` left early, ends the run, and the cancellation only
propagates once the sandbox is gone, so nothing outlives the task.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from .engine import Isol8
from .policy import positive_int
from .request import ExecutionRequest
from .result import ExecutionResult, StreamEvent

T = TypeVar("T")
_DONE = object()


class AsyncIsol8:
    """``Isol8`` for asyncio: ``await execute()``, ``async for ... in execute_stream()``.

    ``max_concurrent`` (default 10, as upstream) bounds the runs of this engine in flight;
    the rest wait their turn. Every other option is ``Isol8``'s.
    """

    def __init__(self, *, max_concurrent: int = 10, **options: Any) -> None:
        self._engine = Isol8(**options)
        self.options = self._engine.options
        self._max_concurrent = positive_int(max_concurrent, "max_concurrent")
        self._slots: asyncio.Semaphore | None = None

    @property
    def repl(self) -> bool:
        """Whether python runs are cells of one interpreter (``repl=True``)."""
        return self._engine.repl

    async def __aenter__(self) -> "AsyncIsol8":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, prewarm: bool | dict[str, list[str]] | None = None) -> None:
        await asyncio.to_thread(self._engine.start, prewarm)

    async def stop(self) -> None:
        await asyncio.to_thread(self._engine.stop)

    async def put_file(self, path: str, content: str | bytes) -> None:
        """``Isol8.put_file``, off the event loop."""
        await asyncio.to_thread(self._engine.put_file, path, content)

    async def get_file(self, path: str) -> bytes:
        """``Isol8.get_file``, off the event loop."""
        return await asyncio.to_thread(self._engine.get_file, path)

    async def execute(self, code: str | None = None, **fields: object) -> ExecutionResult:
        """``Isol8.execute`` (the same fields) without blocking the event loop; cancelling
        kills the run."""
        request = ExecutionRequest(code=code, **fields)  # type: ignore[arg-type]
        async with self._slot():
            return await _cancellable(
                lambda cancel_fd: self._engine._execute(request, cancel_fd))

    async def execute_stream(self, code: str | None = None,
                             **fields: object) -> AsyncIterator[StreamEvent]:
        """``Isol8.execute_stream`` as an async iterator. Closing it kills the run: leave a
        loop early inside ``contextlib.aclosing(...)``, since Python only finalizes an
        abandoned async generator when it is collected."""
        request = ExecutionRequest(code=code, **fields)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def produce(cancel_fd: int) -> None:
            try:
                for event in self._engine._execute_stream(request, cancel_fd):
                    loop.call_soon_threadsafe(queue.put_nowait, event)
            except BaseException as exc:  # delivered to the consumer, raised there
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        async with self._slot():
            cancel_r, cancel_w = os.pipe2(os.O_CLOEXEC)
            worker = loop.run_in_executor(None, produce, cancel_r)
            try:
                while (item := await queue.get()) is not _DONE:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                os.write(cancel_w, b"x")  # a no-op if the run is over
                try:
                    await asyncio.shield(worker)
                finally:
                    _close_when_done(worker, cancel_r, cancel_w)

    def _slot(self) -> asyncio.Semaphore:
        if self._slots is None:  # made on first use, inside the running loop
            self._slots = asyncio.Semaphore(self._max_concurrent)
        return self._slots


async def _cancellable(run: Callable[[int], T]) -> T:
    """Run ``run(cancel_fd)`` in a worker thread; on cancellation, tell it through the fd
    and wait until it has torn the sandbox down before letting the cancellation through."""
    cancel_r, cancel_w = os.pipe2(os.O_CLOEXEC)
    worker = asyncio.get_running_loop().run_in_executor(None, run, cancel_r)
    try:
        return await asyncio.shield(worker)
    except asyncio.CancelledError:
        os.write(cancel_w, b"x")
        try:
            await asyncio.shield(worker)
        except Exception:
            pass  # the run was cancelled: its own outcome no longer matters
        raise
    finally:
        _close_when_done(worker, cancel_r, cancel_w)


def _close_when_done(worker: asyncio.Future, *fds: int) -> None:
    """The worker polls the cancel pipe: it is closed only once the worker is done, so its
    fd number cannot be reused under a running poll."""
    def close(_: object = None) -> None:
        for fd in fds:
            os.close(fd)

    if worker.done():
        close()
    else:
        worker.add_done_callback(close)
