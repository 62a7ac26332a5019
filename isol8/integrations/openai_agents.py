"""The OpenAI Agents SDK running its tools in isol8, two ways.

``Isol8SandboxClient`` (isol8.integrations._oai_sandbox) is a provider of the SDK's
sandbox agents (``agents.sandbox``): a ``SandboxAgent``'s shell and file tools work in an
isol8 sandbox. ``Isol8Shell`` is the executor of the plain ``ShellTool``: the SDK hands
it the model's ``shell_call`` (commands, an optional ``timeout_ms``) and shows the model
what it returns; it runs the commands, one after another, in a persistent sandbox, so files
written by one call are there in the next.

A timeout is the SDK's own outcome (``status: timeout``) and an OOM kill its exit code,
each with isol8's sentence in stderr, since the output alone (often empty) does not say
what happened. The model's ``timeout_ms`` is capped by the engine's ``timeout_ms``: the
model may ask for less time, never for more than its operator allowed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Union

from agents.tool import (ShellCallOutcome, ShellCommandOutput, ShellCommandRequest,
                         ShellResult)

from ..async_engine import AsyncIsol8
from ..errors import InvalidRequest
from ._oai_sandbox import Isol8SandboxClient
from .contract import failure

if TYPE_CHECKING:
    from ..client import AsyncRemoteIsol8

__all__ = ["Isol8SandboxClient", "Isol8Shell"]

Engine = Union[AsyncIsol8, "AsyncRemoteIsol8"]


class Isol8Shell:
    """A ``ShellTool`` executor whose commands run in one persistent isol8 sandbox.

    ``engine``: an ``AsyncIsol8(mode="persistent", ...)`` or an
    ``AsyncRemoteIsol8(session_id=..., ...)``; without one, an ``AsyncIsol8`` is made from
    ``options`` (the engine's: ``timeout_ms``, ``memory_limit``, ``secrets``...). The engine
    is the executor's: ``aclose()`` (or ``async with``) stops it. Commands run with bash in
    ``/sandbox``, each a fresh process: files persist between calls, a ``cd`` or an
    ``export`` does not.
    """

    def __init__(self, engine: Engine | None = None, **options: Any) -> None:
        if engine is not None and options:
            raise TypeError("Isol8Shell: pass engine options or an engine, not both")
        if engine is None:
            engine = AsyncIsol8(**{"mode": "persistent", **options})
        if isinstance(engine, AsyncIsol8) and engine.options.mode != "persistent":
            raise InvalidRequest("Isol8Shell: the engine must be persistent "
                                 "(mode='persistent'): the model expects its files to stay")
        self.engine = engine
        options_of = getattr(engine, "options", None)
        self._max_timeout_ms: int | None = getattr(options_of, "timeout_ms", None)

    async def __call__(self, request: ShellCommandRequest) -> ShellResult:
        action = request.data.action
        budget = action.timeout_ms if action.timeout_ms and action.timeout_ms > 0 else None
        if self._max_timeout_ms is not None:
            budget = min(budget or self._max_timeout_ms, self._max_timeout_ms)
        deadline = time.monotonic() + budget / 1000 if budget else None
        outputs: list[ShellCommandOutput] = []
        for command in action.commands:
            fields: dict[str, Any] = {"cmd": command}
            if deadline is not None:
                fields["timeout_ms"] = max(1, int((deadline - time.monotonic()) * 1000))
            result = await self.engine.execute(**fields)
            limit = failure(result)
            timed_out = limit is not None and not result.resource_usage.oom and \
                "memory" not in result.resource_usage.limits_reached
            stderr = f"{result.stderr}\n{limit}" if limit and result.stderr else \
                (limit or result.stderr)
            outcome = (ShellCallOutcome(type="timeout") if timed_out
                       else ShellCallOutcome(type="exit", exit_code=result.exit_code))
            outputs.append(ShellCommandOutput(stdout=result.stdout, stderr=stderr,
                                              outcome=outcome, command=command))
            if limit is not None:  # what follows a killed command may rely on it: stop
                break
        return ShellResult(output=outputs)

    async def aclose(self) -> None:
        """Stop the engine: its sandbox, and every process in it, goes."""
        await self.engine.stop()

    async def __aenter__(self) -> "Isol8Shell":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
