"""``GET /health``: unauthenticated, as upstream (``RemoteIsol8.start()`` calls it).

While the node drains (SIGTERM, or ``POST /admin/drain``: isol8.server.drain) it answers
503 with ``Retry-After``, in the shape of every error answer plus what is left to drain:
``{"error", "status": "draining", "version", "node", "running", "sessions",
"deadlineMs"}``. A 503 is what takes a node out of rotation everywhere a probe is a status
check: HAProxy's ``http-check expect status 200``, a Kubernetes readiness probe. A serving
node's answer is upstream's ``{"status": "ok", "version"}``."""

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
    state = request.app.state
    if state.drain.draining:
        capacity = state.capacity
        return JSONResponse(
            {"error": state.drain.refusal, "version": __version__, "node": state.node,
             **state.drain.status()},
            status_code=503, headers={"Retry-After": str(capacity.limits.retry_after_s)})
    return {"status": "ok", "version": __version__}
