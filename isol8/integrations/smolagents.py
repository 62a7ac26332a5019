"""smolagents' ``CodeAgent`` running its code in isol8: ``CodeAgent(executor=Isol8Executor())``.

smolagents keeps an agent's state (variables, imports, its tools) in a live interpreter
between steps, as its Docker and E2B executors do with a Jupyter kernel; here that
interpreter is a persistent ``repl=True`` isol8 session, local (``Isol8``) or on a server
(``RemoteIsol8`` with a ``session_id`` and ``repl=True``). Each step is one cell; how the
sandbox reports it is in isol8/integrations/_smol_cell.py.

What crosses back to the host is JSON only: the final answer is smolagents' ``"safe:"``
serialization, and this executor never accepts pickle (``allow_pickle`` is always False),
since unpickling data from the sandbox would hand its code the host.
"""

from __future__ import annotations

import ast
import json
import secrets as _secrets
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from smolagents.local_python_executor import CodeOutput
from smolagents.monitoring import AgentLogger, LogLevel
from smolagents.remote_executors import RemotePythonExecutor
from smolagents.tools import Tool, get_tools_definition_code
from smolagents.utils import AgentError

from ..engine import Isol8
from ..errors import InvalidRequest, Isol8Error, SessionLost
from .contract import failure

if TYPE_CHECKING:
    from ..client import RemoteIsol8

_PIP_NAMES = {"PIL": "pillow"}  # import name -> pip name, where smolagents knows one
_CELL = Path(__file__).with_name("_smol_cell.py").read_text()


Engine = Union[Isol8, "RemoteIsol8"]


class Isol8Executor(RemotePythonExecutor):
    """A smolagents executor whose interpreter is an isol8 REPL session.

    ``engine``: a started or unstarted ``Isol8(mode="persistent", repl=True, ...)`` or a
    ``RemoteIsol8(session_id=..., repl=True, ...)``; without one, the executor makes an
    ``Isol8`` from ``options`` (any of the engine's: ``timeout_ms``, ``memory_limit``,
    ``secrets``, ``network``...). Either way the engine is the executor's from then on:
    ``cleanup()`` (which ``CodeAgent``'s ``with`` block and ``cleanup()`` call) stops it.

    ``additional_imports`` are packages installed into the session first, through isol8's
    ``install_packages`` (pip from the package index, which needs ``network="filtered"``),
    as are the requirements of the agent's tools; smolagents' own executors use ``!pip``.
    """

    def __init__(self, engine: Engine | None = None, *,
                 additional_imports: Iterable[str] = (), logger: AgentLogger | None = None,
                 **options: Any) -> None:
        if engine is not None and options:
            raise TypeError("Isol8Executor: pass engine options or an engine, not both")
        if engine is None:
            engine = Isol8(**{"mode": "persistent", "repl": True, **options})
        super().__init__([], logger or AgentLogger(level=LogLevel.ERROR), allow_pickle=False)
        self.engine = engine
        # secret values, masked on the host too: the engine masks them as they are written,
        # but not in the escaped form (a repr, JSON) a report may carry them in
        self._secrets = _secret_values(engine)
        self._setup: list[str] = []  # the tools' and variables' cells, sent again to a
        self._recording = False      # session that replaces a lost one
        try:
            self._cell("", setup=True)
            if self._cell("", setup=False) is None:  # the first cell's state is gone
                raise InvalidRequest(
                    "Isol8Executor: the engine must keep one live interpreter, "
                    "Isol8(mode='persistent', repl=True) or RemoteIsol8(session_id=..., "
                    "repl=True): smolagents keeps variables between steps")
            self.installed_packages = self._install_missing(list(additional_imports))
        except BaseException:
            engine.stop()
            raise

    def __enter__(self) -> "Isol8Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def run_code_raise_errors(self, code: str) -> CodeOutput:
        """One step: its output, or ``AgentError`` with what the agent's model should read
        (the traceback, or why a limit ended the code), which ``CodeAgent`` feeds back."""
        if self._recording and code not in self._setup:  # a second run sends them again
            self._setup.append(code)
        output = self._cell(code, setup=False)
        if output is None:  # a new interpreter: the lost one's state is gone
            self._replay()
            raise AgentError("The sandbox's Python session was restarted, and the variables "
                             "of earlier steps are gone (tools are defined again). The code "
                             "did not run: run it again, recreating what it needs.",
                             self.logger)
        return output

    def send_tools(self, tools: dict[str, Tool]) -> None:
        """As smolagents' remote executors do, but a tool's requirement is installed only
        when the sandbox cannot import it (the host's packages are there), and the patched
        ``final_answer``'s own imports (numpy, PIL), which its code needs only for values
        of their types, are made optional instead of installed."""
        answer = tools.get("final_answer")
        if answer is not None:
            self._patch_final_answer_with_exception(answer)
        wanted = {module for name, tool in tools.items() if name != "final_answer"
                  for module in tool.to_dict()["requirements"]} - {"smolagents"}
        self.installed_packages += self._install_missing(sorted(wanted))
        optional = set(answer.to_dict()["requirements"]) - wanted if answer else set()
        absent = set(self._missing(sorted(optional)))
        code = "\n".join(f"try:\n    {line}\nexcept ImportError:\n    pass"
                         if line.startswith("import ") and line[7:] in absent else line
                         for line in get_tools_definition_code(tools).split("\n"))
        if code.strip():
            self._recording = True
            try:
                self.logger.log(self.run_code_raise_errors(code).logs)
            finally:
                self._recording = False

    def send_variables(self, variables: dict[str, Any]) -> None:
        """smolagents' (JSON, never pickle), kept to be sent again to a new session."""
        self._recording = True
        try:
            super().send_variables(variables)
        finally:
            self._recording = False

    def install_packages(self, additional_imports: list[str]) -> list[str]:
        """pip installs into the session through isol8 (the index only, from a filtered
        network), not ``!pip``, which the sandbox's network would not allow."""
        wanted = [name for name in additional_imports if name != "*"]
        if not wanted:
            return []
        try:
            self.engine.execute("pass", runtime="python", install_packages=wanted)
        except Isol8Error as exc:
            raise AgentError(f"installing {', '.join(wanted)} in the isol8 sandbox failed: "
                             f"{exc}", self.logger) from exc
        return wanted

    def _install_missing(self, modules: list[str]) -> list[str]:
        """Install the modules the sandbox cannot import (by their pip names)."""
        missing = self._missing([module for module in modules if module != "*"])
        return self.install_packages([_PIP_NAMES.get(name, name) for name in missing])

    def _missing(self, modules: list[str]) -> list[str]:
        """The modules the sandbox cannot import."""
        if not modules:
            return []
        probe = (f"[m for m in {modules!r} "
                 "if __import__('importlib.util').util.find_spec(m) is None]")
        try:  # literals only: the sandbox's answer is data, never code
            missing = ast.literal_eval(self.run_code_raise_errors(probe).output or "[]")
        except (ValueError, SyntaxError, RecursionError, MemoryError):
            missing = modules  # unreadable (the agent's code patched something): install
        if not isinstance(missing, list):
            missing = modules
        return [name for name in modules if name in missing]

    def cleanup(self) -> None:
        """Stop the engine: its sandbox, and every process in it, goes."""
        self.engine.stop()

    def _cell(self, code: str, *, setup: bool) -> CodeOutput | None:
        nonce = f"\x00isol8-smolagents-{_secrets.token_hex(16)}:"
        cell = f"exec({_CELL!r}, {{'ARGS': ({code!r}, {nonce!r}, {setup!r})}})\n"
        try:
            result = self.engine.execute(cell, runtime="python")
        except SessionLost as exc:
            self._replay()
            raise AgentError(f"{exc}. A new session starts with the tools defined again: "
                             "recreate the variables the next steps need.",
                             self.logger) from exc
        stderr, found, reported = result.stderr.rpartition("\n" + nonce)
        if not found:
            stderr = result.stderr
        logs = self._mask("".join(f"{text}\n" for text in (result.stdout, stderr) if text))
        limit = failure(result)
        if limit is not None:
            raise AgentError(_joined(logs, f"Error: {limit}."), self.logger)
        record = _record(reported) if found else None
        if record is None:
            why = ("its output passed the sandbox's size limit and was cut; print less"
                   if result.truncated else
                   f"the code ended the sandbox's Python process (exit code {result.exit_code})")
            raise AgentError(_joined(logs, f"Error: the step did not finish: {why}."),
                             self.logger)
        status = record.get("status")
        if status == "fresh":
            return None
        if status == "final":
            value = self._deserialize_final_answer(str(record.get("value")), allow_pickle=False)
            return CodeOutput(output=self._mask_value(value), logs=logs, is_final_answer=True)
        if status == "error":
            trace = self._mask(str(record.get("traceback", "")))
            raise AgentError(_joined(logs, f"Executing code yielded an error:\n{trace}"),
                             self.logger)
        output = record.get("output")
        return CodeOutput(output=None if output is None else self._mask(str(output)),
                          logs=logs, is_final_answer=False)

    def _replay(self) -> None:
        """Define the tools and variables again in a new session (the old one is gone)."""
        self._cell("", setup=True)
        for code in self._setup:
            self._cell(code, setup=False)

    def _mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _mask_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._mask(value)
        if isinstance(value, (list, tuple, set, frozenset)):
            return type(value)(self._mask_value(item) for item in value)
        if isinstance(value, dict):
            return {self._mask_value(k): self._mask_value(v) for k, v in value.items()}
        return value


def _record(text: str) -> dict[str, Any] | None:
    """The cell's report, or None when it is not one (cut short, or mangled by a mask)."""
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _joined(logs: str, message: str) -> str:
    return f"{logs.rstrip()}\n{message}" if logs.strip() else message


def _secret_values(engine: object) -> list[str]:
    """The secrets an ``Isol8`` was given, longest first (a ``RemoteIsol8``'s are masked
    by its server only)."""
    options = getattr(engine, "options", None)
    pairs = getattr(options, "secrets", ())
    values = {value for _, value in pairs
              if isinstance(value, str) and value} if isinstance(pairs, tuple) else set()
    escaped = {json.dumps(value)[1:-1] for value in values} | {repr(value)[1:-1]
                                                                 for value in values}
    return sorted(values | escaped, key=len, reverse=True)
