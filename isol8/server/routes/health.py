"""``GET /health``: unauthenticated, as upstream (``RemoteIsol8.start()`` calls it)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from ... import __version__

router = APIRouter()


class Health(BaseModel):
    status: str
    version: str


@router.get("/health", response_model=Health)
async def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__}
