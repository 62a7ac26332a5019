"""Where the MCP server's runs happen: local engines, or an ``isol8 serve`` far away.

Both kinds answer the same calls (``AsyncIsol8`` and ``AsyncRemoteIsol8`` are twins), so
the tools never ask which one they hold. One-off runs share a single engine with a warm
pool; every session gets an engine of its own, persistent, since a session is one sandbox
that keeps its files (and, for Python, its variables) between calls.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any, Protocol

from ..async_engine import AsyncIsol8
from ..result import ExecutionResult, StreamEvent

PREWARMED = {"runtimes": ["python"]}  # what agents run first, and most


class Engine(Protocol):
    """What the tools use of an engine, local or remote."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def put_file(self, path: str, content: str | bytes) -> None: ...
    async def get_file(self, path: str) -> bytes: ...
    async def execute(self, code: str | None = None, **fields: object) -> ExecutionResult: ...
    def execute_stream(self, code: str | None = None,
                       **fields: object) -> AsyncIterator[StreamEvent]: ...


class Backend:
    """Makes the engines. ``host``/``key`` select a remote server (``AsyncRemoteIsol8``);
    ``options`` are the engine options every engine gets (from the config file, or the
    caller), so every engine limit applies to every run, one-off or in a session."""

    def __init__(self, options: dict[str, object], *, max_concurrent: int = 10,
                 host: str | None = None, key: str | None = None) -> None:
        self.options = dict(options)
        self.remote = host is not None
        self._host, self._key = host, key
        self._max_concurrent = max_concurrent
        self._engine = self._make(dict(self.options))  # bad options fail here, at startup
        self._starting: asyncio.Future[Engine] | None = None

    def warm(self) -> None:
        """Start the shared engine now, in the background, so the first call finds its
        pool warm (a server process calls this as it starts)."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start_shared())

    async def shared(self) -> Engine:
        """The engine of one-off runs, started (its pool warmed) on first use."""
        self.warm()
        assert self._starting is not None
        return await asyncio.shield(self._starting)

    async def _start_shared(self) -> Engine:
        engine = self._engine
        try:
            if isinstance(engine, AsyncIsol8):
                await engine.start(PREWARMED)
            else:
                await engine.start()
        except BaseException:
            self._starting = None  # the next call tries again, and says why it fails
            await engine.stop()
            raise
        return engine

    def for_session(self, runtime: str) -> Engine:
        """A new persistent engine for one session (not started: its sandbox is made on its
        first run). A Python session is a REPL, so its variables outlive each call."""
        options = dict(self.options, repl=runtime == "python")
        if self.remote:  # the server's sessions are persistent
            options["session_id"] = "mcp-" + secrets.token_hex(12)
        else:
            options["mode"] = "persistent"
        return self._make(options)

    async def close(self) -> None:
        """Stop the shared engine (once it has started); sessions are stopped by their
        store."""
        starting, self._starting = self._starting, None
        if starting is not None:
            try:
                engine = await starting
            except Exception:
                return  # it never started: nothing runs
            await engine.stop()

    def _make(self, options: dict[str, Any]) -> Engine:
        if self._host is not None:
            from ..client.async_remote import AsyncRemoteIsol8
            return AsyncRemoteIsol8(host=self._host, api_key=self._key, **options)
        return AsyncIsol8(max_concurrent=self._max_concurrent, **options)
