"""The execution result: the small, stable contract upstream clients rely on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionResult:
    stdout: str
    stderr: str
    exit_code: int
    duration_ms: int
    truncated: bool
    execution_id: str
    runtime: str
    timestamp: str

    def to_dict(self) -> dict[str, object]:
        """The camelCase wire form of upstream's ``ExecutionResult``."""
        return {
            "stdout": self.stdout,
            "stderr": self.stderr,
            "exitCode": self.exit_code,
            "durationMs": self.duration_ms,
            "truncated": self.truncated,
            "executionId": self.execution_id,
            "runtime": self.runtime,
            "timestamp": self.timestamp,
        }
