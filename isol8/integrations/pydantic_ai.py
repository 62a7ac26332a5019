"""pydantic-ai: ``Isol8Toolset``, the ``execute_code`` tool with a sandbox session per run.

Who owns the session: the run. ``Agent(toolsets=[Isol8Toolset(**options)])`` gives every
run a persistent ``repl=True`` session of its own (``AsyncIsol8(mode="persistent",
repl=True, **options)``): pydantic-ai asks a toolset for its per-run copy (``for_run``)
and enters it for the run, so the session starts with the run and is stopped when it
ends, failing or not; concurrent runs of one agent never share variables. That is the
lifetime a model expects of its notebook, and it needs neither the agent's ``deps`` (the
caller's, for their own use) nor an engine to close afterwards.

To keep one session across runs (a conversation continued with ``message_history``), or to
run on a server, give the toolset an engine you own, ``Isol8Toolset(engine)``
(``AsyncIsol8`` or ``AsyncRemoteIsol8``): every run then uses it and none stops it.
``isol8_tool(engine)`` is the same tool as a ``Tool`` for ``Agent(tools=[...])``. Both need
an asynchronous engine: pydantic-ai runs tools in its event loop, ``run_sync`` included.

A timeout or an out-of-memory kill raises ``ModelRetry`` with the limit's sentence (and the
output so far): the model's code caused it and the model can fix it (faster, smaller),
which is what a retry asks of it, and the tool's retry budget (``max_retries``, reset by
a call that succeeds) ends a run whose model keeps writing code that cannot finish, where
``ToolFailed`` would let it loop until the run's usage limits. A session that lost its
interpreter, and a request the engine refused, raise ``ModelRetry`` for the same reason.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from pydantic import Field
from pydantic_ai import ModelRetry, RunContext, Tool
from pydantic_ai.toolsets import AbstractToolset, FunctionToolset

from ..async_engine import AsyncIsol8
from ..result import ExecutionResult
from . import _code_call as call
from .contract import contract_json, failure

_RETRIES = 2


def isol8_tool(engine: call.AsyncEngine, *, max_retries: int = _RETRIES) -> Tool[Any]:
    """``execute_code`` as a ``Tool`` that runs in ``engine`` (the caller's to stop)."""
    _require_async(engine)
    return _tool(lambda: engine, description=call.description(engine),
                 max_retries=max_retries)


class Isol8Toolset(FunctionToolset[Any]):
    """``execute_code`` in a session per run, or in ``engine`` (see the module's doc).

    ``options`` are ``AsyncIsol8``'s (``secrets``, ``timeout_ms``, ``memory_limit``,
    ``network``...) for the per-run sessions; with ``engine`` they belong to the engine."""

    def __init__(self, engine: call.AsyncEngine | None = None, *, max_retries: int = _RETRIES,
                 id: str | None = None, **options: Any) -> None:
        if engine is not None:
            _require_async(engine)
            if options:
                raise TypeError(f"engine options ({', '.join(sorted(options))}) belong to "
                                "the engine given; pass them to it")
        else:
            for fixed in ("mode", "repl"):
                if fixed in options:
                    raise TypeError(f"{fixed}: the per-run session is always "
                                    "mode='persistent', repl=True")
        # What the model is told is the session's; bad options fail here, not in a run.
        described = engine or AsyncIsol8(mode="persistent", repl=True, **options)
        super().__init__(id=id)
        self._given = engine
        self._engine = engine
        self._options = options
        self._max_retries = max_retries
        self._entered = 0
        self._lock = asyncio.Lock()
        self.add_tool(_tool(self._current, description=call.description(described),
                            max_retries=max_retries))

    async def for_run(self, ctx: RunContext[Any]) -> AbstractToolset[Any]:
        if self._given is not None:
            return self
        return Isol8Toolset(max_retries=self._max_retries, id=self._id, **self._options)

    async def __aenter__(self) -> Isol8Toolset:
        async with self._lock:
            if self._entered == 0 and self._given is None:
                engine = AsyncIsol8(mode="persistent", repl=True, **self._options)
                await engine.start()
                self._engine = engine
            self._entered += 1
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        async with self._lock:
            self._entered -= 1
            if self._entered == 0 and self._given is None and self._engine is not None:
                engine, self._engine = self._engine, None
                await engine.stop()
        return None

    def _current(self) -> Any:
        if self._engine is None:
            raise RuntimeError("Isol8Toolset: no session: the toolset runs inside an agent "
                               "run (or `async with toolset`), which starts one")
        return self._engine


def _tool(engine_of: Any, *, description: str, max_retries: int) -> Tool[Any]:
    async def execute_code(
            code: Annotated[str, Field(description=call.CODE_HELP)],
            language: Annotated[call.Language, Field(description=call.LANGUAGE_HELP)] = "python",
    ) -> str:
        engine = engine_of()
        try:
            result: ExecutionResult = await engine.execute(
                **call.execute_fields(engine, code, language))
        except call.MODEL_ERRORS as error:
            raise ModelRetry(str(error)) from error
        sentence = failure(result)
        if sentence is not None:
            raise ModelRetry(call.limit_message(sentence, contract_json(result)))
        return contract_json(result)

    return Tool(execute_code, name=call.TOOL_NAME, description=description,
                max_retries=max_retries)


def _require_async(engine: Any) -> None:
    if not call.is_async(engine):
        raise TypeError(f"engine: pydantic-ai runs tools in its event loop, so the engine "
                        f"must be asynchronous (AsyncIsol8, AsyncRemoteIsol8), got "
                        f"{type(engine).__name__}")
