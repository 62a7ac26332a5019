"""``POST /execute/stream`` (SSE) and ``GET /execute/ws`` (WebSocket). To be written."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
