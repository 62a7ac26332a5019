"""``GET /sessions`` and ``DELETE /session/{id}``: only the caller's own sessions."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ..auth import require_key

router = APIRouter()


@router.get("/sessions")
async def list_sessions(request: Request,
                        owner: str = Depends(require_key)) -> dict[str, object]:
    return {"sessions": request.app.state.engines.sessions(owner)}


@router.delete("/session/{session_id}")
async def delete_session(session_id: str, request: Request,
                         owner: str = Depends(require_key)) -> dict[str, bool]:
    """Idempotent, as upstream: an unknown id is ``{"ok": true}`` too."""
    await request.app.state.engines.end_session(owner, session_id)
    return {"ok": True}
