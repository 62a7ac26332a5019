"""The MCP server over streamable HTTP, behind a bearer token.

Code execution reachable by anyone who can open a socket is a remote shell, so the server
refuses to start without a token, and every HTTP request without one it knows is answered
401 before the SDK sees it. The token also names the caller: sessions belong to it (the
streamable-HTTP protocol has no connection session to tie them to).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from ..errors import InvalidRequest

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]
MIN_TOKEN_LENGTH = 16


def checked_tokens(tokens: Sequence[str]) -> list[str]:
    """The tokens the server accepts: at least one, none guessable by its length alone."""
    tokens = [token for token in tokens if token]
    if not tokens:
        raise InvalidRequest("isol8 mcp --http needs a bearer token: --token TOKEN or "
                             "$ISOL8_MCP_TOKEN (anyone reaching the port could run code)")
    for token in tokens:
        if len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or " " in token:
            raise InvalidRequest(f"--token: at least {MIN_TOKEN_LENGTH} printable characters "
                                 "without spaces (try: python3 -c 'import secrets; "
                                 "print(secrets.token_urlsafe(32))')")
    return tokens


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class BearerAuth:
    """ASGI middleware: a request passes only with ``Authorization: Bearer <a token>``.
    Digests are compared with ``hmac.compare_digest``, so neither a token's bytes nor its
    length leak through timing."""

    def __init__(self, app: ASGIApp, tokens: Sequence[str]) -> None:
        self._app = app
        self._digests = [_digest(token) for token in checked_tokens(tokens)]

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] == "http" and not self._known(_bearer(scope)):
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"www-authenticate", b'Bearer realm="isol8 mcp"'),
                (b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body",
                        "body": b"a bearer token is required (Authorization: Bearer ...)\n"})
            return
        await self._app(scope, receive, send)

    def _known(self, token: str | None) -> bool:
        if token is None:
            return False
        digest = _digest(token)
        found = False
        for known in self._digests:  # every one compared, so timing names none
            found |= hmac.compare_digest(digest, known)
        return found


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def caller_of(ctx: Context) -> str:
    """The owner of an HTTP caller's sessions: its token's digest (``BearerAuth`` let only
    known tokens through, so the header is the authenticated one)."""
    headers = ctx.headers or {}
    scheme, _, token = str(headers.get("authorization", "")).partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ToolError("this call carries no bearer token")
    return _digest(token.strip()).hex()
