"""Admission control for ``isol8 serve`` (to be completed: concurrency, host budget, 429)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .policy import ServerPolicy
from .wire import ExecuteBody


class Capacity:
    def __init__(self, policy: ServerPolicy) -> None:
        self.policy = policy

    @asynccontextmanager
    async def admit(self, owner: str, parsed: ExecuteBody) -> AsyncIterator[None]:
        yield
