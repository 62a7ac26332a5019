"""Bearer authentication with the master key, as upstream's middleware (isol8-api.md §4.2):
401 without an ``Authorization`` header, 403 with a wrong key; ``/health`` needs none.

The key is compared with ``hmac.compare_digest`` (upstream uses ``===``, whose time leaks
how long a prefix matched). The returned owner id is what sessions are keyed by; API keys
from a key database (later) will return their own ids here.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from .errors import ApiError

MASTER = "master"


def require_key(request: Request) -> str:
    """The caller's owner id, or an ``ApiError`` (401/403). A FastAPI dependency."""
    header = request.headers.get("authorization")
    if header is None:
        raise ApiError(401, "Missing Authorization header")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        token = header.strip()  # upstream strips an optional "Bearer " prefix
    expected: bytes = request.app.state.api_key
    if hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"), expected):
        return MASTER
    raise ApiError(403, "Invalid API key")


def require_master(request: Request) -> str:
    """The master key only (``/auth/*``, ``POST /cleanup``), as upstream's
    ``requireMasterKey()``: any other valid key gets 403."""
    owner = require_key(request)
    if owner != MASTER:
        raise ApiError(403, "Master key required for this operation")
    return owner
