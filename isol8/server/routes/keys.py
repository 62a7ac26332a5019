"""``/auth/keys`` and ``/auth/login``: API keys in the key store. To be written."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
