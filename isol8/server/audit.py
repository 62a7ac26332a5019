"""The server's audit log (to be completed: JSON lines per execution)."""

from __future__ import annotations

from ..result import ExecutionResult
from .wire import ExecuteBody


class AuditLog:
    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def record(self, owner: str, parsed: ExecuteBody, result: ExecutionResult) -> None:
        return None

    def close(self) -> None:
        return None
