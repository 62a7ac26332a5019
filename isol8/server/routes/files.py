"""``POST /file`` and ``GET /file``: a session's files, base64 JSON. To be written."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
