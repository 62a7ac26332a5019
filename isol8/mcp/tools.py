"""The MCP server's tools: their typed inputs, what they answer, and whose sessions they
reach.

Inputs are annotated parameters, so a client gets a JSON schema with a description per
field; results are dataclasses, so it gets an output schema and structured content too.
The tools see engines only through ``Backend`` and sessions only through the store the
server's lifespan made, keyed by ``owner_of(ctx)``: the connection (stdio) or the caller's
token (HTTP).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult
from pydantic import Field

from .. import __version__
from ..errors import Isol8Error
from ..runtimes import RUNTIMES
from .engines import Backend
from .limits import McpLimits
from .runs import RunResult, run, tool_result
from .sessions import Session, SessionStore

INSTRUCTIONS = (
    "Run code in isol8 sandboxes (no network unless the operator allows it). execute_code "
    "runs once in a fresh sandbox. For state across calls, create_session and then "
    "execute_in_session: a python session keeps its variables between calls, like a "
    "notebook. A non-zero exitCode is a normal result; 'failure' says when a limit (time, "
    "memory) ended the run.")

Code = Annotated[str | None, Field(description="Source code to run in `runtime`.")]
Cmd = Annotated[str | None, Field(
    description="A shell command to run instead of code (bash), e.g. 'ls -la'.")]
Runtime = Annotated[str, Field(description="The language: " + ", ".join(RUNTIMES) + ".")]
TimeoutMs = Annotated[int | None, Field(
    gt=0, description="Kill the run after this many milliseconds (default: the server's).")]
Stdin = Annotated[str | None, Field(description="Text given to the program on stdin.")]
Env = Annotated[dict[str, str] | None, Field(description="Environment variables to set.")]
Files = Annotated[dict[str, str] | None, Field(description=(
    "Text files to write before the run: {absolute path under /sandbox or /tmp: content}."))]
Packages = Annotated[list[str] | None, Field(description=(
    "Packages to install first (pip for python, npm for node); needs a network the "
    "operator allowed."))]
SessionId = Annotated[str, Field(description="A session id, as create_session returned.")]
Path = Annotated[str, Field(description="An absolute path in the session's sandbox.")]


@dataclass(frozen=True)
class SessionInfo:
    sessionId: str
    runtime: str
    expiresInSeconds: float  # of idleness left


@dataclass(frozen=True)
class SessionList:
    sessions: list[SessionInfo]


@dataclass(frozen=True)
class Destroyed:
    sessionId: str
    destroyed: bool  # False: there was no session of that id


@dataclass(frozen=True)
class FileWritten:
    path: str
    size: int


@dataclass(frozen=True)
class FileContent:
    path: str
    size: int
    contentBase64: str


def build_server(backend: Backend, limits: McpLimits,
                 owner_of: Callable[[Context], str]) -> MCPServer:
    """The server, its tools bound to ``backend``. Each run of its lifespan (one per stdio
    connection; one for the whole HTTP server) has a session store of its own, closed with
    it, so sessions never outlive what they belong to."""

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[dict[str, SessionStore]]:
        store = SessionStore(backend, limits)
        reaper = asyncio.get_running_loop().create_task(store.expire_forever())
        try:
            yield {"sessions": store}
        finally:
            reaper.cancel()
            await store.close()

    server: MCPServer = MCPServer("isol8", version=__version__, instructions=INSTRUCTIONS,
                                  lifespan=lifespan, log_level="WARNING")

    def store_of(ctx: Context) -> SessionStore:
        return ctx.request_context.lifespan_context["sessions"]

    def checked_fields(fields: dict[str, Any]) -> dict[str, Any]:
        if (fields["code"] is None) == (fields["cmd"] is None):
            raise ToolError("give exactly one of code and cmd")
        timeout = fields.get("timeout_ms")
        if timeout is not None and timeout > limits.max_timeout_ms:
            raise ToolError(f"timeout_ms: at most {limits.max_timeout_ms} on this server")
        return {name: value for name, value in fields.items() if value is not None}

    async def report(ctx: Context, done: float, text: str) -> None:
        await ctx.report_progress(done, None, text)

    @server.tool()
    async def execute_code(ctx: Context, code: Code = None, cmd: Cmd = None,
                           runtime: Runtime = "python", timeout_ms: TimeoutMs = None,
                           stdin: Stdin = None, env: Env = None, files: Files = None,
                           install_packages: Packages = None,
                           ) -> Annotated[CallToolResult, RunResult]:
        """Run code (or a shell command) once, in a fresh sandbox that is gone afterwards.
        Output streams as progress while it runs; the result is stdout, stderr, exitCode,
        durationMs, truncated, and failure when a limit (time, memory) ended the run."""
        fields = checked_fields(dict(
            code=code, cmd=cmd, runtime=runtime, timeout_ms=timeout_ms, stdin=stdin,
            env=env, files=files, install_packages=install_packages))
        with _tool_errors():
            engine = await backend.shared()
            return tool_result(await run(engine, fields, lambda done, text: report(
                ctx, done, text), remote=backend.remote))

    @server.tool()
    async def create_session(ctx: Context, runtime: Runtime = "python",
                             session_id: Annotated[str | None, Field(description=(
                                 "An id of your choice (letters, digits, '_', '.', '-'); "
                                 "one is made up if omitted."))] = None) -> SessionInfo:
        """Start a sandbox that persists across execute_in_session calls: its files stay,
        and in a python session so do variables, imports and functions (a REPL). It is
        destroyed by destroy_session, after a time unused, or when you disconnect."""
        with _tool_errors():
            session = await store_of(ctx).create(owner_of(ctx), runtime, session_id)
        return _info(store_of(ctx), session)

    @server.tool()
    async def execute_in_session(ctx: Context, session_id: SessionId, code: Code = None,
                                 cmd: Cmd = None, timeout_ms: TimeoutMs = None,
                                 stdin: Stdin = None, env: Env = None, files: Files = None,
                                 install_packages: Packages = None,
                                 ) -> Annotated[CallToolResult, RunResult]:
        """Run code (in the session's runtime) or a shell command in a session's sandbox;
        what earlier calls left there (files, variables, installed packages) is still
        there. Same result as execute_code."""
        fields = checked_fields(dict(code=code, cmd=cmd, timeout_ms=timeout_ms, stdin=stdin,
                                     env=env, files=files, install_packages=install_packages))
        with _tool_errors():
            async with store_of(ctx).using(owner_of(ctx), session_id) as session:
                if code is not None:
                    fields["runtime"] = session.runtime
                return tool_result(await run(session.engine, fields, lambda done, text:
                                             report(ctx, done, text), remote=backend.remote))

    @server.tool()
    async def put_file(ctx: Context, session_id: SessionId, path: Path,
                       content_base64: Annotated[str, Field(
                           description="The file's bytes, base64-encoded.")]) -> FileWritten:
        """Write a file into a session's sandbox (under /sandbox or /tmp), binary-safe."""
        too_big = ToolError(f"content_base64: more than the {limits.max_file_bytes} bytes "
                            "a file may have on this server")
        if len(content_base64) > (limits.max_file_bytes + 2) // 3 * 4:
            raise too_big  # before decoding it
        try:
            content = base64.b64decode(content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise ToolError("content_base64: not valid base64") from None
        if len(content) > limits.max_file_bytes:
            raise too_big
        with _tool_errors():
            async with store_of(ctx).using(owner_of(ctx), session_id) as session:
                await session.engine.put_file(path, content)
        return FileWritten(path, len(content))

    @server.tool()
    async def get_file(ctx: Context, session_id: SessionId, path: Path) -> FileContent:
        """Read a file from a session's sandbox, base64-encoded."""
        with _tool_errors():
            async with store_of(ctx).using(owner_of(ctx), session_id) as session:
                content = await session.engine.get_file(path)
        if len(content) > limits.max_file_bytes:
            raise ToolError(f"get_file: {path} is {len(content)} bytes, more than the "
                            f"{limits.max_file_bytes} a call may read on this server; read "
                            "a part of it with execute_in_session instead")
        return FileContent(path, len(content), base64.b64encode(content).decode())

    @server.tool()
    async def list_sessions(ctx: Context) -> SessionList:
        """Your live sessions, with the seconds each has left before it expires unused."""
        store = store_of(ctx)
        return SessionList([_info(store, s) for s in await store.list(owner_of(ctx))])

    @server.tool()
    async def destroy_session(ctx: Context, session_id: SessionId) -> Destroyed:
        """End a session and its sandbox (everything in it is gone)."""
        return Destroyed(session_id, await store_of(ctx).destroy(owner_of(ctx), session_id))

    return server


def _info(store: SessionStore, session: Session) -> SessionInfo:
    return SessionInfo(session.id, session.runtime, round(store.expires_in(session), 1))


@contextmanager
def _tool_errors() -> Iterator[None]:
    """isol8's own errors name the field and the fix: the model reads them as they are."""
    try:
        yield
    except (Isol8Error, ValueError) as exc:
        raise ToolError(str(exc)) from exc
