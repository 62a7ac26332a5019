"""``POST /execute``: upstream's body, run ephemerally or in the caller's session.

The body is read and checked by hand (isol8.server.wire) rather than by a pydantic model:
upstream ignores unknown fields and its clients send camelCase objects of many optional
fields, and the errors must name the wire's field in upstream's ``{error}`` shape.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from .. import errors
from ..auth import require_key
from ..runs import answer, decode, engine_for, finished, policed
from ..schema import EXECUTE_REQUEST_BODY, ExecutionResultWire
from ..wire import request_kwargs

router = APIRouter()


@router.post("/execute", response_model=ExecutionResultWire, openapi_extra=EXECUTE_REQUEST_BODY,
             responses=errors.responses(400, 401, 403, 409, 410, 413, 429, 502, 503))
async def execute(request: Request, owner: str = Depends(require_key)) -> JSONResponse:
    state = request.app.state
    parsed, clamped = policed(state, decode(await request.body()), owner)
    kwargs: dict[str, Any] = request_kwargs(parsed.request)  # checked by wire
    async with engine_for(state, owner, parsed) as engine:
        result = await engine.execute(**kwargs)
    finished(state, owner, parsed, result)
    wire = answer(result, parsed)
    if clamped:  # isol8's addition; upstream's clients ignore it
        wire["clamped"] = [c.to_dict() for c in clamped]
    return JSONResponse(wire)
