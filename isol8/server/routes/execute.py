"""``POST /execute``: upstream's body, run ephemerally or in the caller's session.

The body is read and checked by hand (isol8.server.wire) rather than by a pydantic model:
upstream ignores unknown fields and its clients send camelCase objects of many optional
fields, and the errors must name the wire's field in upstream's ``{error}`` shape.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ...errors import SessionLost
from ..auth import require_key
from ..wire import WireError, parse_execute, request_kwargs

router = APIRouter()


@router.post("/execute")
async def execute(request: Request, owner: str = Depends(require_key)) -> JSONResponse:
    state = request.app.state
    try:
        body = json.loads(await request.body())
    except ValueError as exc:  # UnicodeDecodeError too
        raise WireError("body", f"invalid JSON: {exc}") from None
    parsed, clamped = state.policy.apply(parse_execute(body))
    fields = request_kwargs(parsed.request)
    if parsed.session_id is None:
        async with state.engines.ephemeral(parsed.options) as engine:
            result = await engine.execute(**fields)
    else:
        try:
            async with state.engines.session(owner, parsed.session_id,
                                             parsed.options) as engine:
                result = await engine.execute(**fields)
        except SessionLost:  # its sandbox is gone: the id starts afresh next time
            await state.engines.end_session(owner, parsed.session_id)
            raise
    wire = result.to_dict()
    if clamped:  # isol8's addition; upstream's clients ignore it
        wire["clamped"] = [c.to_dict() for c in clamped]
    return JSONResponse(wire)
