"""isol8.integrations.pydantic_ai: Isol8Toolset and isol8_tool in pydantic-ai's own agent
loop, on the real sandbox, with a scripted FunctionModel (no network, no key)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from pydantic_ai import Agent
from pydantic_ai.exceptions import UnexpectedModelBehavior
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import FunctionModel

from conftest import child_pids, host_processes_matching
from isol8 import AsyncIsol8, Isol8, InvalidRequest
from isol8.integrations.pydantic_ai import Isol8Toolset, isol8_tool
from test_integration_langchain import readme_example, run_example

SECRET = "sk-pai-8b2c71"


class Script:
    """A FunctionModel's function: tool calls (code[, language]) then the final text; it
    records every conversation it was shown and may check something at a given step."""

    def __init__(self, *steps: tuple[str, ...] | str, check=None) -> None:
        self.steps = list(steps)
        self.seen: list = []
        self.check = check

    def __call__(self, messages, info) -> ModelResponse:
        if self.check is not None:
            self.check(len(self.seen))
        self.seen.append(list(messages))
        step = self.steps[len(self.seen) - 1]
        if isinstance(step, str):
            return ModelResponse(parts=[TextPart(step)])
        args = {"code": step[0]} | ({"language": step[1]} if len(step) > 1 else {})
        return ModelResponse(parts=[ToolCallPart("execute_code", args)])


def returns(result) -> list:
    return [part for message in result.all_messages() for part in message.parts
            if part.part_kind == "tool-return"]


def stdout(part) -> str:
    return json.loads(part.content)["stdout"]


def test_readme_example_runs_in_the_agent_loop_with_state_kept():
    namespace, _ = run_example(readme_example("pydantic-ai"))
    parts = returns(namespace["result"])
    assert [p.outcome for p in parts] == ["success"] * 3
    assert [stdout(p) for p in parts] == ["", "key: ***", "3"]
    assert "sk-..." not in repr(namespace["result"].all_messages())
    assert child_pids() == []  # the run's session is stopped


def test_each_run_has_its_own_session_stopped_when_it_ends():
    alive: list[int] = []
    script = Script(("x = 1",), ("print(x)",), "one",
                    ("print('x' in globals())",), "two",
                    check=lambda step: alive.append(len(child_pids())))
    agent = Agent(FunctionModel(script), toolsets=[Isol8Toolset()])
    first = agent.run_sync("a")
    assert child_pids() == []
    second = agent.run_sync("b")
    assert [stdout(p) for p in returns(first)] == ["", "1"]
    assert [stdout(p) for p in returns(second)] == ["False"]  # a fresh session
    assert alive[0] == 0 and alive[1] >= 1  # positive control: the session ran in the run
    assert child_pids() == []


def test_concurrent_async_runs_share_nothing_and_leave_nothing_running():
    marker = "pai-bg-61e0"
    alive: list[bool] = []

    def model(messages, info) -> ModelResponse:
        """Sets x to the prompt's number, starts a background process, prints x, ends."""
        prompt = messages[0].parts[-1].content
        done = sum(1 for m in messages for p in m.parts if p.part_kind == "tool-return")
        if done == 2:  # the background process started, and lives as long as the session
            alive.append(_appears(marker))
        steps = [ToolCallPart("execute_code", {"code": f"x = {prompt}"}),
                 ToolCallPart("execute_code", {"code": f"(exec -a {marker} sleep 600 &); "
                                                       "echo started", "language": "bash"}),
                 ToolCallPart("execute_code", {"code": "print(x)"})]
        return ModelResponse(parts=[steps[done] if done < len(steps)
                                    else TextPart(f"done {prompt}")])

    agent = Agent(FunctionModel(model), toolsets=[Isol8Toolset()])

    async def main():
        return await asyncio.gather(agent.run("10"), agent.run("20"))

    results = asyncio.run(main())
    assert [[stdout(p) for p in returns(r)] for r in results] == [
        ["", "started", "10"], ["", "started", "20"]]
    assert [r.output for r in results] == ["done 10", "done 20"]
    assert alive == [True, True]
    assert host_processes_matching(marker) == [] and child_pids() == []


def _appears(pattern: str) -> bool:
    """Whether a host process matching pattern shows up within 10 s."""
    deadline = time.monotonic() + 10
    while not host_processes_matching(pattern):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_timeout_is_a_retry_the_model_sees_and_the_run_goes_on():
    script = Script(("print('working', flush=True)\nwhile True: pass",), ("print(1)",),
                    "done")

    async def main():
        async with AsyncIsol8(timeout_ms=1500) as engine:
            return await Agent(FunctionModel(script), tools=[isol8_tool(engine)]).run("go")

    result = asyncio.run(main())
    timeout, ok = returns(result)
    assert (timeout.outcome, ok.outcome) == ("retried", "success")
    sentence, partial = timeout.content.split("\noutput so far: ")
    assert sentence.startswith("the code timed out and was killed after ")
    assert json.loads(partial)["stdout"] == "working"
    assert result.output == "done"
    assert "timed out" in repr(script.seen[1])  # what the model was shown
    assert child_pids() == []


def test_oom_is_a_retry_and_so_is_the_lost_state_it_leaves():
    bomb = "chunks = []\nwhile True:\n    chunks.append(b'x' * (20 << 20))"
    script = Script(("x = 1",), (bomb,), ("print(x)",), ("print('fresh')",), "done")
    toolset = Isol8Toolset(memory_limit="128m", timeout_ms=20_000)
    result = Agent(FunctionModel(script), toolsets=[toolset]).run_sync("go")
    _, oom, lost, fresh = returns(result)
    assert (oom.outcome, lost.outcome, fresh.outcome) == ("retried", "retried", "success")
    assert oom.content.startswith("the code ran out of memory and was killed")
    assert "killed for exceeding the memory limit; its variables are gone" in lost.content
    assert stdout(fresh) == "fresh"
    assert child_pids() == []


def test_retry_budget_ends_a_run_that_keeps_timing_out_and_stops_its_session():
    script = Script(*[("while True: pass",)] * 3, "never")
    agent = Agent(FunctionModel(script), toolsets=[Isol8Toolset(timeout_ms=300,
                                                                max_retries=1)])
    with pytest.raises(UnexpectedModelBehavior, match="exceeded max retries count of 1"):
        agent.run_sync("go")
    assert len(script.seen) == 2
    assert child_pids() == []


def test_secret_never_reaches_the_model():
    script = Script(("import os\nprint(os.environ['TOKEN'])",),
                    ("import os, sys\nprint(os.environ['TOKEN'], file=sys.stderr)\n"
                     "raise ValueError(os.environ['TOKEN'])",),
                    ('echo "$TOKEN"; sleep 5', "bash"), "done")
    agent = Agent(FunctionModel(script),
                  toolsets=[Isol8Toolset(secrets={"TOKEN": SECRET}, timeout_ms=1000)])
    result = agent.run_sync("go")
    out, err, slow = returns(result)
    assert stdout(out) == "***"
    stderr = json.loads(err.content)["stderr"]
    assert stderr.startswith("***\nTraceback") and stderr.endswith("ValueError: ***")
    assert slow.outcome == "retried" and '"stdout":"***"' in slow.content
    assert SECRET not in repr(script.seen) and SECRET not in repr(result.all_messages())


def test_a_given_engine_serves_every_run_and_is_not_stopped():
    script = Script(("x = 5",), "set", ("print(x)",), "read")

    async def main():
        async with AsyncIsol8(mode="persistent", repl=True) as session:
            agent = Agent(FunctionModel(script), toolsets=[Isol8Toolset(session)])
            first = await agent.run("set")
            second = await agent.run("read")
            alive = len(child_pids())
            after = await session.execute("print(x * 2)")
        return first, second, alive, after

    first, second, alive, after = asyncio.run(main())
    assert [stdout(p) for p in returns(second)] == ["5"]  # one session across the runs
    assert alive >= 1 and after.stdout == "10"  # still running after both runs
    assert child_pids() == []


def test_lost_session_is_a_retry_and_the_next_call_starts_fresh():
    script = Script(("x = 1",), ("import os\nos._exit(3)",), ("print('x' in globals())",),
                    "done")
    result = Agent(FunctionModel(script), toolsets=[Isol8Toolset()]).run_sync("go")
    _, lost, fresh = returns(result)
    assert lost.outcome == "retried" and "the REPL session is lost" in lost.content
    assert stdout(fresh) == "False"


def test_tool_schema_and_description():
    infos = []

    def model(messages, info):
        infos.append(info)
        return ModelResponse(parts=[TextPart("ok")])

    Agent(FunctionModel(model), toolsets=[Isol8Toolset()]).run_sync("go")
    (tool,) = infos[0].function_tools
    assert tool.name == "execute_code"
    assert "Python variables and imports survive" in tool.description
    assert set(tool.parameters_json_schema["properties"]) == {"code", "language"}
    assert tool.parameters_json_schema["required"] == ["code"]


def test_bad_engines_and_options_are_clear_errors():
    with pytest.raises(TypeError, match="must be asynchronous .* got Isol8"):
        Isol8Toolset(Isol8())
    with pytest.raises(TypeError, match="must be asynchronous"):
        isol8_tool(Isol8())
    with pytest.raises(TypeError, match=r"engine options \(secrets\) belong to the engine"):
        Isol8Toolset(AsyncIsol8(), secrets={"K": "v"})
    with pytest.raises(TypeError, match="mode: the per-run session is always"):
        Isol8Toolset(mode="ephemeral")
    with pytest.raises(InvalidRequest):
        Isol8Toolset(memory_limit="lots")


def test_a_remote_session_serves_the_toolset():
    pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")
    pytest.importorskip("httpx2", reason="the client extra (isol8[client]) is not installed")
    from isol8.client import AsyncRemoteIsol8, RemoteIsol8
    from test_server import KEY, running

    script = Script(("x = 6 * 7",), ('echo "$TOKEN"', "bash"), ("print(x)",), "42")

    async def main(url):
        async with AsyncRemoteIsol8(host=url, api_key=KEY, session_id="pai", repl=True,
                                    secrets={"TOKEN": SECRET}) as box:
            return await Agent(FunctionModel(script), toolsets=[Isol8Toolset(box)]).run("go")

    with running() as server:
        result = asyncio.run(main(server.url))
        with RemoteIsol8(host=server.url, api_key=KEY) as client:
            assert client.list_sessions() == []
    assert [stdout(p) for p in returns(result)] == ["", "***", "42"]
    assert SECRET not in repr(script.seen)
