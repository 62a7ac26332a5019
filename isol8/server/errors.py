"""Every error answer is upstream's ``{"error": message}`` with a meaningful status.

Upstream answers any failure with 500, a client's own mistake included (isol8-api.md §8.3),
and FastAPI's defaults would answer 422 ``{"detail": ...}``; both are replaced here, so a
client can tell its error (4xx, naming the field) from the server's (5xx). ``type`` names
the engine's exception class, for a remote client to raise the local engine's own type.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from ..errors import InvalidRequest, Isol8Error, ProcessStartFailed, RuntimeNotAvailable, \
    SessionLost, SetupScriptFailed
from ..limits import LimitsUnavailable
from ..packages import PackageInstallFailed
from ..remote_code.fetch import RemoteCodeUnavailable
from .engines import OptionsConflict, SessionGone, ShuttingDown
from .keystore import StoreUnavailable
from .wire import wire_message

_log = logging.getLogger("isol8.server")
#: A database restart takes seconds; a client that waits this long mostly finds it back.
STORE_RETRY_AFTER_S = 2


class ApiError(Exception):
    """An answer decided by the server itself (auth, a missing session...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ErrorBody(BaseModel):
    """Every error answer's schema (OpenAPI): ``error`` always, a few fields sometimes."""

    model_config = ConfigDict(extra="allow")
    error: str
    type: str | None = None


_MEANING = {400: "invalid request, naming the field", 401: "missing Authorization header",
            403: "wrong key, or master key required", 404: "no such session, key or file",
            409: "the session has other engine options", 410: "the session's sandbox is lost",
            413: "body or code too large", 429: "over capacity; see Retry-After",
            502: "request.codeUrl could not be fetched", 503: "the server is shutting down"}


def responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """The error answers a route declares in the OpenAPI document, all ``{error}``."""
    return {status: {"model": ErrorBody, "description": _MEANING[status]}
            for status in statuses}


def error(status: int, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _engine_error(exc: Isol8Error) -> JSONResponse:
    kind = {"type": type(exc).__name__}
    if isinstance(exc, OptionsConflict):
        return error(409, str(exc), fields=exc.fields, **kind)
    if isinstance(exc, ShuttingDown):
        return error(503, str(exc), **kind)
    if isinstance(exc, SetupScriptFailed):  # the client's script failed: its outcome
        return error(400, str(exc), exitCode=exc.exit_code, stdout=exc.stdout,
                     stderr=exc.stderr, **kind)
    if isinstance(exc, PackageInstallFailed):  # the client's packages: its outcome too
        return error(400, str(exc), exitCode=exc.exit_code, stderr=exc.stderr, **kind)
    if isinstance(exc, SessionGone):  # another node's, lost with it: upstream's 404
        return error(404, str(exc), **kind)
    if isinstance(exc, SessionLost):
        return error(410, str(exc), **kind)
    if isinstance(exc, RemoteCodeUnavailable):  # request.codeUrl's server failed us
        return error(502, str(exc), **kind)
    # ProcessStartFailed: the request's own process could not start (a file it could not
    # write, a workdir name too long, the pids limit reached); the sandbox is fine.
    # LimitsUnavailable: the client's strictLimits cannot be met on this host.
    if isinstance(exc, (InvalidRequest, RuntimeNotAvailable, ProcessStartFailed,
                        LimitsUnavailable)):
        return error(400, wire_message(str(exc)), **kind)
    _log.error("engine failure: %s", exc)  # the host's fault, not the request's
    return error(500, str(exc), **kind)


def install(app: FastAPI) -> None:
    """Register the handlers that give every failure the ``{error}`` shape."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, str(exc))

    @app.exception_handler(StoreUnavailable)
    async def _store(request: Request, exc: StoreUnavailable) -> JSONResponse:
        # The shared key database, not this node nor the request: try again shortly (a
        # balancer may send the retry to a node whose connection still works).
        _log.error("key store: %s", exc)
        return JSONResponse({"error": str(exc), "type": type(exc).__name__},
                            status_code=503, headers={"Retry-After": str(STORE_RETRY_AFTER_S)})

    @app.exception_handler(Isol8Error)
    async def _engine(request: Request, exc: Isol8Error) -> JSONResponse:
        return _engine_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(400, f"{where}: {first.get('msg', 'invalid request')}")

    def openapi() -> dict[str, Any]:
        """FastAPI's document without the 422 ``{detail}`` it lists for every route with
        parameters: ``_validation`` answers those 400 ``{error}``, which routes declare."""
        document: dict[str, Any] = FastAPI.openapi(app)  # built once, cached by FastAPI
        for item in document.get("paths", {}).values():
            for operation in item.values():
                operation.get("responses", {}).pop("422", None)
        schemas = document.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        return document

    app.openapi = openapi  # type: ignore[method-assign,unused-ignore]

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                            headers=exc.headers)
