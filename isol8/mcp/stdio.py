"""The stdio transport's two ends on the event loop's own pipe transports.

The SDK reads stdin and writes stdout through worker threads (``anyio.wrap_file``): three
thread hops per call (a read, a write, a flush), about a third of a millisecond on an idle
machine and more on a busy one, out of the 5 ms a tool call may add to a run. When both
ends are pipes or sockets (as a host that spawns the server gives it), they are served
from the loop directly instead; anything else (a terminal, a file) keeps the SDK's way.

As the SDK does, the wire is served from private duplicates while fd 0 reads /dev/null and
fd 1 goes to stderr, so nothing else in the process (a stray print, a library's warning)
can write into the protocol's stream or read from it.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server

_MAX_LINE = 64 * 1024 * 1024  # one JSON-RPC message; the SDK's HTTP side caps bodies too


class _Lines:
    """stdin as the SDK's transport reads it: ``async for line in ...``."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", "replace")


class _Out:
    """stdout as the SDK's transport writes it: ``await write(text)``, ``await flush()``;
    a client that stops reading holds the writer back instead of growing a buffer."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode())

    async def flush(self) -> None:
        await self._writer.drain()


async def serve_stdio(server: MCPServer) -> None:
    """``server.run_stdio_async()``, on the loop's pipes when stdin and stdout allow."""
    if not (_is_pipe(0) and _is_pipe(1)):
        await server.run_stdio_async()
        return
    lowlevel = server._lowlevel_server  # what run_stdio_async serves, given other streams
    async with _claimed_stdio() as (lines, out):
        # the SDK types them as anyio files; it only iterates one and writes the other
        async with stdio_server(lines, out) as (read, write):  # type: ignore[arg-type]
            await lowlevel.run(read, write, lowlevel.create_initialization_options())


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@asynccontextmanager
async def _claimed_stdio() -> AsyncIterator[tuple[_Lines, _Out]]:
    loop = asyncio.get_running_loop()
    wire_in, wire_out = os.dup(0), os.dup(1)
    saved_in, saved_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    sys.stdout.flush()
    os.dup2(null, 0)
    os.dup2(2, 1)
    os.close(null)
    reader = asyncio.StreamReader(limit=_MAX_LINE)
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(wire_in, "rb", 0))
    write_transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()),
        os.fdopen(wire_out, "wb", 0))
    writer = asyncio.StreamWriter(write_transport, protocol, None, loop)
    try:
        yield _Lines(reader), _Out(writer)
    finally:
        read_transport.close()
        write_transport.close()
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)
