"""``POST /file`` and ``GET /file``: a session's files, base64 in JSON, as upstream's
``RemoteIsol8.putFile``/``getFile`` send them.

Only the caller's own session is reachable (sessions are keyed by owner and id), and none is
created here: upstream answers 404 for a session that does not exist, since a file written
into a sandbox nobody runs in would be lost. The path rules are the engine's: writes land
under /sandbox or /tmp, and both reads and writes are done by the sandbox user inside the
sandbox's mount namespace, so no path, ``..`` or symlink reaches the host.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from ...async_engine import AsyncIsol8
from ...errors import InvalidRequest, Isol8Error, ProcessStartFailed, SessionLost
from .. import errors
from ..auth import require_key
from ..errors import ApiError
from .sessions import Ok

router = APIRouter()

# What the engine's messages start with that the client did not send: its own keyword for
# the path, or its phase ("get_file /x: base64: /x: Is a directory" -> "path: /x: ...").
_ENGINE_PREFIX = re.compile(r"^(files: |get_file: |get_file (?=/)|the process could not start: )")
# The engine's words for a read of a path that does not exist (base64's strerror(ENOENT)).
_MISSING = "No such file or directory"
# The engine's (and upstream's) words for a session whose sandbox never started.
_NOT_STARTED = "No active container"


class PutFileBody(BaseModel):
    sessionId: str = Field(min_length=1)
    path: str
    content: str = Field(description="the file's bytes, base64")


class FileContent(BaseModel):
    content: str = Field(description="the file's bytes, base64")


@asynccontextmanager
async def _session(request: Request, owner: str, session_id: str) -> AsyncIterator[AsyncIsol8]:
    """The caller's session, held (an idle-session pruner leaves it alone) for the block."""
    state: Any = request.app.state
    try:
        async with state.engines.existing_session(owner, session_id) as engine:
            if engine is None:  # unknown, or another key's: the same answer for both
                raise ApiError(404, "Session not found")
            yield engine
    except SessionLost:  # its sandbox died: forget it, so the id starts afresh (410)
        await state.engines.end_session(owner, session_id)
        raise


def _path_error(exc: Isol8Error) -> Exception:
    """An engine refusal of the file as an answer naming the ``path`` parameter; anything
    else (a lost session: 410) goes to the app's handlers as it is."""
    message = str(exc)
    if isinstance(exc, (InvalidRequest, ProcessStartFailed)):  # a bad path, a full tmpfs
        return ApiError(400, "path: " + _ENGINE_PREFIX.sub("", message))
    if type(exc) is not Isol8Error:
        return exc
    if message.startswith(_NOT_STARTED):
        return ApiError(404, message)
    if _MISSING in message:
        return ApiError(404, "File not found")
    return ApiError(400, "path: " + _ENGINE_PREFIX.sub("", message))  # a directory...


@router.post(
    "/file", response_model=Ok, responses=errors.responses(400, 401, 403, 404, 410, 413, 503)
)
async def put_file(body: PutFileBody, request: Request, owner: str = Depends(require_key)) -> Ok:
    try:
        content = base64.b64decode(body.content, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "content: expected base64") from None
    async with _session(request, owner, body.sessionId) as engine:
        try:
            await engine.put_file(body.path, content)
        except Isol8Error as exc:
            raise _path_error(exc) from None
    return Ok(ok=True)


@router.get(
    "/file", response_model=FileContent, responses=errors.responses(400, 401, 403, 404, 410, 503)
)
async def get_file(
    request: Request,
    session_id: str = Query(alias="sessionId", min_length=1),
    path: str = Query(),
    owner: str = Depends(require_key),
) -> FileContent:
    async with _session(request, owner, session_id) as engine:
        try:
            data = await engine.get_file(path)
        except Isol8Error as exc:
            raise _path_error(exc) from None
    return FileContent(content=base64.b64encode(data).decode("ascii"))
