"""The OpenAPI description of upstream's wire shapes: the execute body and its result.

The execute body is checked by hand (isol8.server.wire), so FastAPI cannot derive its schema
from a model; it is derived here from wire's own field tables, one JSON schema per checker,
so the document lists exactly the fields the server reads and cannot drift from them (a
checker without a schema fails at import). The result's models mirror
``ExecutionResult.to_dict()``; extra fields are allowed, as an upstream client ignores them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..policy import NETWORK_MODES
from ..runtimes import RUNTIMES
from . import wire

_POSITIVE_INT = {"type": "integer", "minimum": 1}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_BUFFER = {
    "type": "object",
    "required": ["type", "data"],
    "properties": {
        "type": {"const": "Buffer"},
        "data": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}},
    },
}
_BY_CHECKER: dict[Callable[[str, object], object], dict[str, Any]] = {
    wire._string: {"type": "string"},
    wire._integer: _POSITIVE_INT,
    wire._number: {"type": "number", "exclusiveMinimum": 0},
    wire._size: {"anyOf": [{"type": "string"}, _POSITIVE_INT]},
    wire._boolean: {"type": "boolean"},
    wire._object: {"type": "object"},
    wire._string_map: _STRING_MAP,
    wire._string_list: {"type": "array", "items": {"type": "string"}},
    wire._files: {
        "type": "object",
        "additionalProperties": {"anyOf": [{"type": "string"}, _BUFFER]},
    },
    wire._any: {},
}
# Fields whose values are narrower than their checker's type: the engine refuses the rest.
_NARROWER: dict[str, dict[str, Any]] = {
    "request.runtime": {"type": "string", "enum": list(RUNTIMES)},
    "options.network": {"type": "string", "enum": list(NETWORK_MODES)},
    "options.security": {
        "type": "object",
        "properties": {"seccomp": {"type": "string", "enum": list(wire._SECCOMP)}},
    },
    "options.networkFilter": {
        "type": "object",
        "properties": {name: {} for name in wire.FILTER_FIELDS},
    },
}


def _anchored(pattern: str) -> str:
    """A Python ``match``/``\\Z`` pattern as JSON Schema's (ECMA, unanchored search) one."""
    return "^" + pattern.removesuffix(r"\Z") + "$"


def _fields(
    prefix: str, table: dict[str, tuple[str, Callable[[str, object], object]]]
) -> dict[str, Any]:
    return {
        name: _NARROWER.get(f"{prefix}.{name}", _BY_CHECKER[checker])
        for name, (_, checker) in table.items()
    }


_REQUEST = {
    "type": "object",
    "properties": _fields("request", wire.REQUEST_FIELDS),
    "description": "Exactly one of code and cmd. "
    + "; ".join(f"{name}: {why}" for name, why in wire.UNSUPPORTED_REQUEST.items()),
}
_OPTIONS = {
    "type": "object",
    "properties": _fields("options", wire.OPTION_FIELDS),
    "description": "Engine options, held to the server policy: values over a ceiling"
    " are clamped (the result's clamped says so), options that weaken"
    " isolation are refused unless the policy allows them.",
}
EXECUTE_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["request"],
    "properties": {
        "sessionId": {
            "type": "string",
            "pattern": _anchored(wire._SESSION_ID.pattern),
            "description": "run in this key's session (created on first use)",
        },
        "request": _REQUEST,
        "options": _OPTIONS,
    },
}
# FastAPI's openapi_extra for a route reading this body by hand.
EXECUTE_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": EXECUTE_BODY}}}
}


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class ResourceUsageWire(_Wire):
    cpuPercent: float
    memoryMB: float | None
    peakMemoryMB: float | None
    networkBytesIn: int | None = None
    networkBytesOut: int | None = None
    cpuTimeMs: int
    oom: bool
    enforced: dict[str, str | None]
    limitsReached: list[str]


class NetworkLogWire(_Wire):
    timestamp: str
    method: str
    host: str
    path: str | None
    action: str
    durationMs: int


class ClampedWire(_Wire):
    field: str
    requested: Any
    applied: float


class ExecutionResultWire(_Wire):
    """Upstream's ``ExecutionResult``; ``clamped`` is isol8's addition."""

    stdout: str
    stderr: str
    exitCode: int
    durationMs: int
    truncated: bool
    executionId: str
    runtime: str
    timestamp: str
    resourceUsage: ResourceUsageWire
    files: dict[str, str] | None = None
    networkLogs: list[NetworkLogWire] | None = None
    clamped: list[ClampedWire] | None = None
