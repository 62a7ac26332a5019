"""Who is calling: the FastAPI dependencies every authenticated route declares.

Upstream's middleware (isol8-api.md §4.2): no credential is 401 ``Missing Authorization
header``, anything but the master key or a live API key is 403 ``Invalid API key``, and
``/health`` needs none. The checks themselves live in :mod:`isol8.server.keystore`
(:class:`~isol8.server.keystore.MasterKey` compares in constant time, upstream uses ``===``;
:meth:`~isol8.server.keystore.KeyStore.verify` looks API keys and login tokens up by hash);
this module only turns their answers into statuses.

The returned owner id is what sessions are keyed by, so a session belongs to the key that
created it and no other key can see, use or delete it (upstream shares them, §8.3): the
master key is ``"master"``, an API key its own id, a login token its key's id.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from .errors import ApiError
from .keystore import KeyInfo, bearer_token, looks_like_key

MASTER = "master"


async def require_key(conn: HTTPConnection) -> str:
    """The caller's owner id, or 401/403. A FastAPI dependency, for HTTP and WebSocket
    routes alike (``HTTPConnection`` is what both share)."""
    token = bearer_token(conn.headers.get("authorization"))
    state = conn.app.state
    verdict = state.master.check(token)
    if verdict == "ok":
        return MASTER
    if verdict == "missing":
        # RFC 9110 §11.6.1: a 401 carries the scheme the client should use.
        raise HTTPException(
            401, "Missing Authorization header", headers={"WWW-Authenticate": "Bearer"}
        )
    info = await _verify(state, token)
    if info is None:
        raise ApiError(403, "Invalid API key")
    return info.owner


async def require_master(conn: HTTPConnection) -> str:
    """The master key only (``/auth/*``, ``POST /cleanup``), as upstream's
    ``requireMasterKey()``: any other valid key gets 403."""
    owner = await require_key(conn)
    if owner != MASTER:
        raise ApiError(403, "Master key required for this operation")
    return owner


async def _verify(state: Any, token: str | None) -> KeyInfo | None:
    """A worker thread, not the event loop: a lookup takes ~20 us, but once a minute per
    key it writes ``lastUsedAt`` (an fsync, ~1 ms, 3 ms at p99 here), it waits behind
    another thread's key creation (the store has one lock), and another process holding the
    file's write lock can stall it up to the store's busy timeout. The hop costs ~80 us."""
    keys = state.keys
    if keys is None or not looks_like_key(token):  # garbage: no thread, no lock
        return None
    result: KeyInfo | None = await asyncio.to_thread(keys.verify, token)
    return result
