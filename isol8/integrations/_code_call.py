"""A model's code-tool call (code, language) as an engine call, shared by the LangChain and
pydantic-ai adapters, so both give a model the same tool with the same meaning.

The engine is any of isol8's four (Isol8, AsyncIsol8, RemoteIsol8, AsyncRemoteIsol8): the
adapters only call ``execute``. Whether it is a session, and a REPL one, decides what the
model must know: what survives between calls (variables, or only files), and that bash
runs beside the session's program (``cmd``), since a session is bound to its first runtime
and a Python session would refuse a bash program."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Literal, Union

from ..engine import Isol8
from ..errors import InvalidRequest, ProcessStartFailed, SessionLost

if TYPE_CHECKING:  # the client is an extra of its own: only its types are needed here
    from ..async_engine import AsyncIsol8
    from ..client import AsyncRemoteIsol8, RemoteIsol8

AsyncEngine = Union["AsyncIsol8", "AsyncRemoteIsol8"]
Engine = Union["Isol8", "RemoteIsol8", AsyncEngine]

# The argument is ``language``, not the engine's ``runtime``: LangGraph's ToolNode takes a
# tool argument named ``runtime`` for its own ToolRuntime injection and hides it from the model.
Language = Literal["python", "node", "bash"]

TOOL_NAME = "execute_code"
CODE_HELP = "The program to run (for bash: the shell commands)."
LANGUAGE_HELP = "python (3), node (an ES module: top-level await works) or bash."

# Errors of one call the model can act on: a language the session refuses, a session whose
# interpreter died (its variables with it), a process that could not start (the pids limit).
# Anything else (a broken host, a refused key) is the operator's and propagates.
MODEL_ERRORS = (InvalidRequest, SessionLost, ProcessStartFailed)


def is_async(engine: Any) -> bool:
    """Whether ``engine.execute`` is a coroutine function (AsyncIsol8, AsyncRemoteIsol8)."""
    return inspect.iscoroutinefunction(getattr(engine, "execute", None))


def is_session(engine: Any) -> bool:
    """A local engine in persistent mode, or a remote client bound to a session id."""
    local = getattr(engine, "_engine", engine)  # AsyncIsol8 wraps an Isol8
    if isinstance(local, Isol8):
        return local.options.mode == "persistent"
    return getattr(engine, "session_id", None) is not None


def is_repl(engine: Any) -> bool:
    """Whether Python calls are cells of one interpreter (``repl=True``)."""
    return is_session(engine) and getattr(engine, "repl", False) is True


def execute_fields(engine: Any, code: str, language: str) -> dict[str, object]:
    """The keywords of ``execute`` for one call; bash in a session becomes ``cmd``."""
    if language == "bash" and is_session(engine):
        return {"cmd": code}
    return {"code": code, "runtime": language}


def description(engine: Any) -> str:
    """What the model reads about the tool: where the code runs and what persists (None: an
    engine per call)."""
    where = ("Runs code in a sandbox (no network unless configured). The result is JSON: "
             "stdout, stderr, exitCode, durationMs, truncated; a non-zero exitCode with a "
             "traceback in stderr means the code failed, so fix it and call again.")
    if engine is not None and is_repl(engine):
        return (where + " The sandbox is a session kept between calls: Python variables and "
                "imports survive (each python call is a cell of one interpreter), files in "
                "/sandbox persist, and bash runs shell commands in the same sandbox.")
    if engine is not None and is_session(engine):
        return (where + " The sandbox is kept between calls: files in /sandbox and "
                "background processes persist, but every call is a new process (Python "
                "variables do not survive); bash runs in the same sandbox.")
    return where + " Every call starts a fresh sandbox: nothing persists between calls."


def limit_message(sentence: str, contract: str) -> str:
    """A limit's sentence, then the run's output so far (the small contract, masked)."""
    return f"{sentence}\noutput so far: {contract}"
