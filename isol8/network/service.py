"""The thread that serves every filtered sandbox's proxy, and the handle a sandbox keeps.

The supervisor's own code is synchronous (a run is a poll loop on the helper's socket), so
the proxies live on one asyncio loop in a thread of their own, shared by every engine of
the process: a sandbox costs a few registered sockets, not a thread. The thread exists
while an engine with ``network="filtered"`` is started (:func:`acquire` / :func:`release`),
so nothing of it is left after the last ``stop()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import resource
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..protocol import Listener
from .proxy import NetworkUsage, SandboxProxy
from .rules import NetworkFilter

T = TypeVar("T")
_CALL_TIMEOUT = 30.0  # closing a proxy awaits its tasks' cancellation: milliseconds


def _raise_open_files() -> None:
    """Every proxied connection holds a socket and every relay four pipe ends in this
    process: the soft RLIMIT_NOFILE (often 1024) would run out long before the hard one
    (often 524288), so the soft limit goes up to the hard one, as servers do. Sandboxes do
    not inherit it: the helper sets their own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = _OPEN_FILES_WANTED
    if soft != resource.RLIM_INFINITY and soft < min(hard, _OPEN_FILES_WANTED):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, _OPEN_FILES_WANTED), hard))


_OPEN_FILES_WANTED = 1 << 20


class _Service:
    def __init__(self) -> None:
        _raise_open_files()
        self.loop = asyncio.new_event_loop()
        self.closing: set[concurrent.futures.Future[None]] = set()
        self.thread = threading.Thread(target=self._run, name="isol8-network", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(_CALL_TIMEOUT)

    def close_later(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a proxy's close without waiting for it; :meth:`stop` waits for them all."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        with _lock:
            self.closing.add(future)
        future.add_done_callback(self._closed)

    def _closed(self, future: concurrent.futures.Future[None]) -> None:
        with _lock:
            self.closing.discard(future)

    def stop(self) -> None:
        with _lock:
            closing = list(self.closing)
        concurrent.futures.wait(closing, timeout=_CALL_TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


_lock = threading.Lock()
_service: _Service | None = None
_users = 0


def acquire() -> None:
    """An engine that serves filtered sandboxes starts: the loop runs from now on."""
    global _service, _users
    with _lock:
        if _service is None:
            _service = _Service()
        _users += 1


def release() -> None:
    """That engine stopped: the last one out stops the loop (once every proxy has finished
    closing) and joins its thread."""
    global _service, _users
    with _lock:
        _users -= 1
        if _users > 0 or _service is None:
            return
        service, _service = _service, None
    service.stop()


def call(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the network loop and wait for it (at most 30 s): how the
    supervisor's synchronous code reaches outbound's resolver and connector."""
    return _running().call(coro)


def _running() -> _Service:
    with _lock:
        if _service is None:
            raise RuntimeError("the network service is not running (engine not started)")
        return _service


class ProxyHandle:
    """A sandbox's proxy, seen from the supervisor's thread.

    Neither starting nor closing waits for the loop's thread: a sandbox's setup and teardown
    are on every run's critical path, and a hand-off costs up to a millisecond on a busy
    machine. Connections that arrive first wait in the listen backlog (DNS datagrams in the
    socket's queue). :meth:`close` hands the listening sockets to the proxy, which closes
    them once it has stopped serving them."""

    def __init__(
        self, policy: NetworkFilter, listeners: list[tuple[Listener, socket.socket]]
    ) -> None:
        self._service = _running()
        self._proxy = SandboxProxy(policy)
        self._sockets = [sock for _, sock in listeners]
        served: list[tuple[str, int, socket.socket]] = [
            (kind.proto, kind.port, sock) for kind, sock in listeners
        ]
        self._service.loop.call_soon_threadsafe(self._proxy.start, served)
        self._closed = False

    def take(self) -> NetworkUsage:
        """What the sandbox did through the proxy since the last call (its run's share);
        after :meth:`close`, all it did since the last call, read as it stands."""
        if self._closed:
            return self._proxy.snapshot()
        return self._service.call(_take(self._proxy))

    def use_policy(self, policy: NetworkFilter) -> None:
        """Judge every request from now on by ``policy`` (a package install's phase: the
        index only, then the run's own rules again). Waits for the loop, so no request of
        the next phase is judged by the previous one's rules; connections already open stay
        as they are."""
        self._service.call(_use_policy(self._proxy, policy))

    def close(self) -> None:
        """Stop serving and close the listening sockets, in the loop's own time."""
        if self._closed:
            return
        self._closed = True
        self._service.close_later(_close(self._proxy, self._sockets))
        self._sockets = []


async def _take(proxy: SandboxProxy) -> NetworkUsage:
    return proxy.take()


async def _use_policy(proxy: SandboxProxy, policy: NetworkFilter) -> None:
    proxy.policy = policy


async def _close(proxy: SandboxProxy, sockets: list[socket.socket]) -> None:
    try:
        await proxy.close()
    finally:
        for sock in sockets:
            sock.close()
