"""The small tool contract every adapter gives a model, and how a run's failure reads.

The seed recommends that a tool result be ``stdout``, ``stderr``, ``exitCode``,
``durationMs`` and ``truncated``, nothing else: execution ids, timestamps and resource
figures cost a model tokens and tell it nothing it can act on. A non-zero exit is an
ordinary result (the model reads the traceback and tries again); a timeout or an OOM kill
is reported as a failure with a sentence the model can act on, since the output alone
(often empty) does not say what happened.

Secrets: the engine masks every secret value in stdout and stderr before a result exists,
so nothing built here from a result can carry one; adapters must not add the request's
``env`` or the engine's options to what the model sees.
"""

from __future__ import annotations

import json

from ..result import ExecutionResult


def small_contract(result: ExecutionResult) -> dict[str, object]:
    """The result as the seed's five fields, camelCase as on the wire."""
    return {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "exitCode": result.exit_code,
        "durationMs": result.duration_ms,
        "truncated": result.truncated,
    }


def contract_json(result: ExecutionResult) -> str:
    """``small_contract`` as compact JSON: what a function tool returns to its model."""
    return json.dumps(small_contract(result), ensure_ascii=False, separators=(",", ":"))


def failure(result: ExecutionResult) -> str | None:
    """A sentence for a run that a limit ended (None for any other, failing or not).

    An OOM kill wins over a timeout: a sandbox thrashing at its memory limit often runs
    out of time too, and the memory is the cause."""
    reached = result.resource_usage.limits_reached
    if result.resource_usage.oom or "memory" in reached:
        return ("the code ran out of memory and was killed (the sandbox's memory limit); "
                "use less memory, for example by processing the data in chunks")
    if "timeout" in reached:
        return (f"the code timed out and was killed after {result.duration_ms} ms; "
                "make it faster or do less per call")
    return None
