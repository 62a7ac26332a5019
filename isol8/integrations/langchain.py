"""LangChain: ``Isol8Tool``, a ``BaseTool`` that runs a model's code in isol8.

A tool call ``{"code": ..., "language": "python" | "node" | "bash"}`` runs in the engine the
tool was given and answers with the small contract as JSON (isol8.integrations.contract).
The caller owns the engine and its lifetime (``with Isol8(...) as engine``), because a
LangChain tool has no lifecycle of its own to stop one in; with no engine, each call runs
in an engine of its own, started and stopped within the call.

``Isol8(mode="persistent", repl=True)`` (or a ``RemoteIsol8`` with a ``session_id``) keeps
state across calls, as a model used to notebooks expects; the tool's description tells the
model which of the two it has. ``invoke`` needs a synchronous engine and ``ainvoke`` an
asynchronous one (``AsyncIsol8``, ``AsyncRemoteIsol8``), never a thread around the other:
cancelling an ``ainvoke`` then tears the run down before the cancellation propagates.

A limit that ended the run (timeout, out of memory), a session that lost its interpreter
and a request the engine refused raise ``ToolException``; ``handle_tool_error`` is on by
default, so the agent loop hands the message to the model as an error ``ToolMessage``
instead of ending the run (LangGraph's ``ToolNode`` re-raises unhandled tool errors).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.tools import BaseTool, ToolException
from langchain_core.tools.base import ArgsSchema, ToolExceptionHandlerOutput
from pydantic import BaseModel, Field, SkipValidation

from ..async_engine import AsyncIsol8
from ..engine import Isol8
from ..result import ExecutionResult
from . import _code_call as call
from .contract import contract_json, failure


class CodeInput(BaseModel):
    """The arguments a model fills in: the schema LangChain binds to the model."""

    code: str = Field(description=call.CODE_HELP)
    language: call.Language = Field(default="python", description=call.LANGUAGE_HELP)


class Isol8Tool(BaseTool):
    """``execute_code`` for LangChain agents, run in ``engine`` (see the module's doc)."""

    name: str = call.TOOL_NAME
    description: str = call.description(None)
    args_schema: ArgsSchema | None = CodeInput
    handle_tool_error: (bool | str | Callable[[ToolException], ToolExceptionHandlerOutput]
                        | None) = True
    engine: SkipValidation[Any] = Field(default=None, exclude=True)

    def __init__(self, engine: call.Engine | None = None, **fields: Any) -> None:
        if engine is not None and not callable(getattr(engine, "execute", None)):
            raise TypeError(f"engine: expected an isol8 engine (Isol8, AsyncIsol8, "
                            f"RemoteIsol8, AsyncRemoteIsol8), got {type(engine).__name__}")
        fields.setdefault("description", call.description(engine))
        super().__init__(engine=engine, **fields)

    def _run(self, code: str, language: str = "python",
             run_manager: CallbackManagerForToolRun | None = None) -> str:
        if self.engine is None:
            with Isol8() as engine:
                return _execute(engine, code, language)
        if call.is_async(self.engine):
            raise TypeError(f"{type(self.engine).__name__} is asynchronous: run this tool "
                            "with ainvoke (an agent's ainvoke/astream), or give it Isol8")
        return _execute(self.engine, code, language)

    async def _arun(self, code: str, language: str = "python",
                    run_manager: AsyncCallbackManagerForToolRun | None = None) -> str:
        if self.engine is None:
            async with AsyncIsol8() as engine:
                return await _execute_async(engine, code, language)
        if not call.is_async(self.engine):
            raise TypeError(f"{type(self.engine).__name__} is synchronous: run this tool "
                            "with invoke, or give it AsyncIsol8 for ainvoke")
        return await _execute_async(self.engine, code, language)


def _execute(engine: Any, code: str, language: str) -> str:
    try:
        result = engine.execute(**call.execute_fields(engine, code, language))
    except call.MODEL_ERRORS as error:
        raise ToolException(str(error)) from error
    return _answer(result)


async def _execute_async(engine: Any, code: str, language: str) -> str:
    try:
        result = await engine.execute(**call.execute_fields(engine, code, language))
    except call.MODEL_ERRORS as error:
        raise ToolException(str(error)) from error
    return _answer(result)


def _answer(result: ExecutionResult) -> str:
    sentence = failure(result)
    if sentence is not None:
        raise ToolException(call.limit_message(sentence, contract_json(result)))
    return contract_json(result)
