"""``GET /health``: unauthenticated, as upstream (``RemoteIsol8.start()`` calls it).

While the server drains (after SIGTERM) it answers 503 (``{"error", "status": "draining"}``,
the shape of every error answer): a load balancer polling it stops sending work the server
would only refuse."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ... import __version__
from ..errors import responses

router = APIRouter()


class Health(BaseModel):
    status: str
    version: str


@router.get("/health", response_model=Health, responses=responses(503))
async def health(request: Request) -> dict[str, str] | JSONResponse:
    if request.app.state.capacity.draining:
        return JSONResponse({"error": "the server is shutting down", "status": "draining",
                             "version": __version__}, status_code=503)
    return {"status": "ok", "version": __version__}
