"""``GET /sessions`` and ``DELETE /session/{id}``: only the caller's own sessions."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from .. import errors
from ..auth import require_key

router = APIRouter()


class SessionEntry(BaseModel):
    id: str
    isActive: bool
    lastAccessedAt: int


class SessionList(BaseModel):
    sessions: list[SessionEntry]


class Ok(BaseModel):
    ok: bool


@router.get("/sessions", response_model=SessionList, responses=errors.responses(401, 403))
async def list_sessions(request: Request,
                        owner: str = Depends(require_key)) -> dict[str, object]:
    return {"sessions": request.app.state.engines.sessions(owner)}


@router.delete("/session/{session_id}", response_model=Ok,
               responses=errors.responses(401, 403, 503))
async def delete_session(session_id: str, request: Request,
                         owner: str = Depends(require_key)) -> dict[str, bool]:
    """Idempotent, as upstream: an unknown id is ``{"ok": true}`` too."""
    await request.app.state.engines.end_session(owner, session_id)
    return {"ok": True}
