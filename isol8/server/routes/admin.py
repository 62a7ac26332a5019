"""``POST /admin/drain``: the operator takes this node out of service without losing work.

Not upstream's: a node behind a load balancer needs a way to leave it gently, for a
maintenance or a scale-in, other than a signal only the host can send. The master key
only (an API key gets 403): a tenant must not be able to switch a node off for everyone.
The drain is isol8.server.drain's; the node stays up afterwards, refusing new work, until
it is stopped (SIGTERM then exits at once, nothing being left)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from .. import errors
from ..auth import require_master
from ..drain import ADMIN

router = APIRouter()


class DrainStatus(BaseModel):
    status: str = Field(description='"draining"')
    node: str | None = Field(description="this node's name (isol8 serve --node)")
    running: int = Field(description="executions still running")
    sessions: int = Field(description="sessions still open")
    deadlineMs: int = Field(description="ms until what is left is stopped")


@router.post("/admin/drain", status_code=202, response_model=DrainStatus,
             responses=errors.responses(401, 403, 413))  # 413: BodyLimit, for any body
async def drain(request: Request, owner: str = Depends(require_master)) -> JSONResponse:
    """Start draining, or report the drain under way: calling it again changes nothing."""
    state = request.app.state
    state.drain.start(ADMIN)
    return JSONResponse({"node": state.node, **state.drain.status()}, status_code=202)
