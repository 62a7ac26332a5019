"""One run for a tool call: streamed as progress while it goes, answered with the small
contract when it ends.

A non-zero exit and a limit that ended the run are ordinary results, not tool errors: the
model reads the traceback, or the ``failure`` sentence, and tries again. Only a call that
could not run at all (bad input, an unknown session) is an error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import asdict, dataclass
from typing import Any

from mcp_types import CallToolResult, TextContent

from ..integrations.contract import failure, small_contract
from ..result import ExecutionResult
from .engines import Engine

Progress = Callable[[float, str], Awaitable[None]]
_PROGRESS_CHUNK = 4096  # a progress message is for watching; the result has every byte
_TEXT_OUTPUT = 8192  # per stream in the text form, which is for clients without structure


@dataclass(frozen=True)
class RunResult:
    """The seed's small contract, named as on the wire, plus ``failure``: the sentence for
    a run a limit ended (time, memory), null for any other, failing or not."""

    stdout: str
    stderr: str
    exitCode: int
    durationMs: int
    truncated: bool
    failure: str | None = None


def run_result(result: ExecutionResult) -> RunResult:
    return RunResult(**small_contract(result), failure=failure(result))  # type: ignore[arg-type]


async def run(engine: Engine, fields: dict[str, Any], progress: Progress,
              *, remote: bool) -> RunResult:
    """Run ``fields`` (``execute()``'s) on ``engine``. Locally the run is streamed, each
    piece of output reported through ``progress`` as it comes (a no-op unless the client
    asked for progress); a remote server's run answers at the end. Cancelling the calling
    task kills the run: both engines guarantee it, and the stream is closed on the way out
    (``aclosing``), which is what tells the local one."""
    if remote:
        return run_result(await engine.execute(**fields))
    sent = 0
    async with aclosing(engine.execute_stream(**fields)) as events:  # type: ignore[type-var]
        async for event in events:
            if event.type in ("stdout", "stderr"):
                sent += len(event.data)
                await progress(sent, event.data[-_PROGRESS_CHUNK:])
            elif event.type == "exit" and event.result is not None:
                return run_result(event.result)
    raise RuntimeError("the run's stream ended without its result")


def tool_result(result: RunResult) -> CallToolResult:
    """The structured result plus its short text form, for clients that show only text."""
    return CallToolResult(content=[TextContent(type="text", text=text_form(result))],
                          structured_content=asdict(result))


def text_form(result: RunResult) -> str:
    parts = [_clip(result.stdout)] if result.stdout else []
    if result.stderr:
        parts.append("[stderr]\n" + _clip(result.stderr))
    status = f"[exit code {result.exitCode}, {result.durationMs} ms"
    parts.append(status + (", output truncated]" if result.truncated else "]"))
    if result.failure:
        parts.append(result.failure)
    return "\n".join(parts)


def _clip(text: str) -> str:
    if len(text) <= _TEXT_OUTPUT:
        return text.rstrip("\n")
    return f"[... {len(text) - _TEXT_OUTPUT} characters]\n" + text[-_TEXT_OUTPUT:]
