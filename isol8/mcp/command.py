"""``isol8 mcp``: the command line of the MCP server (stdio by default, or streamable HTTP
behind a bearer token)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import signal
import sys
from typing import TYPE_CHECKING

from ..errors import InvalidRequest

if TYPE_CHECKING:
    from .engines import Backend
    from .limits import McpLimits

DEFAULT_PORT = 3100


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    mc = sub.add_parser(
        "mcp", help="serve isol8's tools over MCP (needs isol8[mcp])",
        description="An MCP server with the tools execute_code, create_session, "
                    "execute_in_session, put_file, get_file, list_sessions and "
                    "destroy_session. Engine options and the server's limits come from the "
                    "config file (isol8 config shows them).")
    mc.add_argument("--http", action="store_true",
                    help="serve streamable HTTP at /mcp instead of stdio")
    mc.add_argument("--port", type=int,
                    help=f"with --http: the port (default {DEFAULT_PORT})")
    mc.add_argument("--bind", help="with --http: the address to listen on (default "
                                   "127.0.0.1)")
    mc.add_argument("--token", action="append", default=[],
                    help="with --http: a bearer token callers must send (repeat for several "
                         "callers, each with its own sessions); better $ISOL8_MCP_TOKEN "
                         "(comma-separated), since other users can read a command line")
    mc.add_argument("--host", help="run on this isol8 serve (URL) instead of local engines")
    mc.add_argument("--key", help="with --host: its API key (default $ISOL8_API_KEY)")


def main(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("mcp") is None:
        print("isol8 mcp: needs the MCP SDK: pip install 'isol8[mcp]'", file=sys.stderr)
        return 2
    from ..config import load_config
    from .engines import Backend

    if args.key is not None and args.host is None:
        raise InvalidRequest("--key: only with --host")
    if not args.http and (args.port is not None or args.bind is not None or args.token):
        raise InvalidRequest("--port, --bind, --token: only with --http")
    config = load_config()
    for line in config.warnings:  # on stderr: over stdio, stdout is the protocol's
        print(f"isol8: warning: {line}", file=sys.stderr)
    limits = config.mcp_limits()
    options = config.engine_options()
    if args.host is not None:  # only what a request carries; the rest is its operator's
        from ..client.wire import OPTION_NAMES
        options = {k: v for k, v in options.items() if k in OPTION_NAMES}
    backend = Backend(options, max_concurrent=limits.max_concurrent,
                      host=args.host, key=args.key)
    if args.http:
        tokens = args.token or os.environ.get("ISOL8_MCP_TOKEN", "").split(",")
        port = DEFAULT_PORT if args.port is None else args.port
        return asyncio.run(_serve_http(backend, limits, args.bind or "127.0.0.1", port,
                                       tokens))
    return asyncio.run(_serve_stdio(backend, limits))


async def _serve_stdio(backend: "Backend", limits: "McpLimits") -> int:
    """One connection, this process's stdin/stdout: it ends at EOF (or SIGTERM), and its
    sessions and engines with it."""
    from .stdio import serve_stdio
    from .tools import build_server

    server = build_server(backend, limits, lambda ctx: "")
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    backend.warm()
    try:
        await serve_stdio(server)
    except asyncio.CancelledError:
        pass
    finally:
        await backend.close()
    return 0


async def _serve_http(backend: "Backend", limits: "McpLimits", bind: str, port: int,
                      tokens: list[str]) -> int:
    import uvicorn

    from .http import BearerAuth, caller_of, checked_tokens
    from .tools import build_server

    checked_tokens(tokens)  # before anything listens
    server = build_server(backend, limits, caller_of)
    app = BearerAuth(server.streamable_http_app(host=bind), tokens)
    config = uvicorn.Config(app, host=bind, port=port, log_level="warning")
    backend.warm()
    # uvicorn shuts down on SIGTERM, then raises it again for the handler it found: a no-op
    # one here, so that the engines are stopped below instead of the process just dying.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        await uvicorn.Server(config).serve()
    finally:
        try:
            await backend.close()
        finally:
            signal.signal(signal.SIGTERM, previous)
    return 0
