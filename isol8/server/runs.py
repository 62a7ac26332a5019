"""The path every execution takes through the server, whatever its transport.

``POST /execute``, ``POST /execute/stream`` and ``GET /execute/ws`` differ only in how the
request arrives and the output leaves; admission (capacity), the engine or session, and the
accounting afterwards (metrics, audit) are the same and live here, once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from ..async_engine import AsyncIsol8
from ..errors import InvalidRequest, SessionLost
from ..result import ExecutionResult
from .policy import Clamped
from .wire import ExecuteBody, WireError, parse_execute


def decode(raw: bytes | str) -> object:
    """A request body or WebSocket message as JSON, or a 400 naming the body."""
    try:
        return json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError too
        raise WireError("body", f"invalid JSON: {exc}") from None


def policed(state: Any, body: object, owner: str) -> tuple[ExecuteBody, list[Clamped]]:
    """An execute body checked field by field, then held to the server policy. A refusal
    is audited as the ``owner``'s: a well-formed request for what the operator forbids
    (host network, no seccomp...) is what an audit log is for."""
    parsed = parse_execute(body)
    try:
        parsed, clamped = state.policy.apply(parsed)
    except InvalidRequest as exc:
        state.audit.failed(owner, parsed, "refused", exc)
        raise
    if (state.audit.path is not None and parsed.options.get("network") == "filtered"
            and parsed.options.get("logNetwork") is not True):
        # A blocked request is a security event whether or not the client asked for logs.
        parsed.options["logNetwork"] = True
        parsed = replace(parsed, logs_for_audit=True)
    return parsed, clamped


def answer(result: ExecutionResult, parsed: ExecuteBody) -> dict[str, object]:
    """The result's wire form, as the client asked for it."""
    wire = result.to_dict()
    if parsed.logs_for_audit:
        wire.pop("networkLogs", None)
    return wire


def mode_of(parsed: ExecuteBody) -> str:
    return "ephemeral" if parsed.session_id is None else "persistent"


@asynccontextmanager
async def engine_for(state: Any, owner: str, parsed: ExecuteBody) -> AsyncIterator[AsyncIsol8]:
    """An admitted run's engine: the shared one for its options, or the caller's session.

    Admission comes first, so a request beyond capacity is answered (429) without touching
    an engine; a session whose sandbox is lost is forgotten, so its id starts afresh."""
    async with state.capacity.admit(owner, parsed):
        admitted = False
        try:
            if parsed.session_id is None:
                async with state.engines.ephemeral(parsed.options) as engine:
                    admitted = True
                    yield engine
                return
            try:
                async with state.engines.session(owner, parsed.session_id,
                                                 parsed.options) as engine:
                    admitted = True
                    yield engine
            except SessionLost:
                await state.engines.end_session(owner, parsed.session_id)
                raise
        except asyncio.CancelledError as exc:  # the client left, or the drain's deadline
            if admitted:
                state.audit.failed(owner, parsed, "cancelled", exc)
            raise
        except InvalidRequest:  # the request's own mistake, found by the engine: no run
            raise
        except Exception as exc:  # a setup script, a sandbox's start, a lost session...
            if admitted:
                state.audit.failed(owner, parsed, "failed", exc)
            raise


def finished(state: Any, owner: str, parsed: ExecuteBody, result: ExecutionResult) -> None:
    """Account for a finished run: metrics and the audit log."""
    state.metrics.run_result(result, mode_of(parsed))
    state.audit.record(owner, parsed, result)
