"""``POST /cleanup``: master only. Stops every session, whoever owns it, and every idle
shared engine with its warm pool, in upstream's answer shape.

Upstream's cleanup removes its Docker containers and, unless told otherwise, its images,
which its clients' ``installPackages`` made. isol8's images are the operator's, built on the
server's host with ``isol8 image`` (isol8.images) and named by the policy, so a client's
cleanup never removes them: ``{"images": true}`` is accepted for upstream's clients and
answered with an empty ``images`` report, and the default is false (upstream's is true). The
operator removes images with ``isol8 image rm`` or ``isol8 cleanup --images``.

Upstream's ``containers`` are every isol8 container; here they are the shared ephemeral
engines (each one's warm sandboxes go with it). A busy engine is left to finish its run and
is evicted once idle as usual. Concurrent calls are coalesced: while one cleanup runs, every
other caller waits for it and gets its answer, and a client that hangs up does not cancel it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, StrictBool

from .. import errors
from ..auth import require_master

router = APIRouter()


class CleanupBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    images: StrictBool = False


class Removal(BaseModel):
    """Upstream's ``{removed, failed, errors}`` report."""

    removed: int
    failed: int
    errors: list[str]

    @classmethod
    def of(cls, outcomes: list[BaseException | None]) -> Removal:
        failed = [str(o) or type(o).__name__ for o in outcomes if o is not None]
        return cls(removed=len(outcomes) - len(failed), failed=len(failed), errors=failed)


class CleanupResult(BaseModel):
    ok: bool
    sessions: Removal
    containers: Removal
    images: Removal | None = None


async def _clean(state: Any) -> tuple[Removal, Removal]:
    sessions, engines = await state.engines.clear()
    return Removal.of(sessions), Removal.of(engines)


@router.post(
    "/cleanup",
    response_model=CleanupResult,
    response_model_exclude_none=True,
    responses=errors.responses(400, 401, 403, 413, 503),
)
async def cleanup(
    request: Request, body: CleanupBody | None = Body(None), owner: str = Depends(require_master)
) -> CleanupResult:
    state = request.app.state
    task: asyncio.Task[tuple[Removal, Removal]] | None = getattr(state, "cleanup_task", None)
    if task is None or task.done():
        task = state.cleanup_task = asyncio.get_running_loop().create_task(_clean(state))
    sessions, containers = await asyncio.shield(task)
    images = Removal(removed=0, failed=0, errors=[]) if body and body.images else None
    return CleanupResult(ok=True, sessions=sessions, containers=containers, images=images)
