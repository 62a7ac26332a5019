"""isol8.integrations.openai_agents in the OpenAI Agents SDK's own Runner loop, driven by
its scripted model (agents.testing: no network, no key): the README's examples verbatim,
three tool calls with state kept across them, timeouts and OOM as the model reads them,
secrets masked, the sandbox provider's files and workspace archives, nothing left
running."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import pytest
from agents import Agent, RunConfig, Runner, ShellTool
from agents.run_config import SandboxRunConfig
from agents.sandbox import LocalSnapshotSpec, Manifest, SandboxAgent
from agents.sandbox.errors import WorkspaceReadNotFoundError
from agents.testing import ScriptedModel, assistant_message, function_call
from openai.types.responses.response_function_shell_tool_call import (
    Action, ResponseFunctionShellToolCall)

from isol8.async_engine import AsyncIsol8
from isol8.errors import InvalidRequest
from isol8.integrations.openai_agents import Isol8SandboxClient, Isol8Shell

from conftest import child_pids

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_trace_export(monkeypatch):
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")


def readme_example(name: str) -> str:
    """The README's example block ``name``."""
    readme = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```\n<!-- /example -->",
                      readme, re.S)
    assert found, f"no example {name} in the README"
    return found.group(1)


def exec_command(call_id: str, cmd: str, **args: object):
    return [function_call("exec_command", {"cmd": cmd, **args}, call_id=call_id)]


def shell_call(call_id: str, *commands: str, timeout_ms: int | None = None):
    return [ResponseFunctionShellToolCall(
        id=call_id, call_id=call_id, type="shell_call", status="completed",
        action=Action(commands=list(commands), timeout_ms=timeout_ms))]


def seen_by_model(model: ScriptedModel) -> str:
    """Every input item the model was handed, as text."""
    return "\n".join(repr(call.input) for call in model.calls)


def sandbox_run(model: ScriptedModel, **options: object) -> str:
    agent = SandboxAgent(name="t", model=model, instructions="test")
    run = RunConfig(sandbox=SandboxRunConfig(client=Isol8SandboxClient(**options)))
    return asyncio.run(Runner.run(agent, "t", run_config=run)).final_output


# Holds what it allocated: a hog that exits at once can end before the watchdog's next count
# (best effort, csrc/watchdog.c) on a loaded machine (seen: exit 0 after 0.42 s).
HOG = "python3 -c 'import time; b = bytearray(512 << 20); time.sleep(30)'"


async def memory_backend() -> str | None:
    """What enforces memory_limit here (a cgroup or the watchdog kills; an rlimit fails
    the allocation instead)."""
    async with AsyncIsol8() as engine:
        return (await engine.execute(cmd=":")).resource_usage.enforced.get("memory")


# --- the sandbox provider --------------------------------------------------------------------

def test_readme_sandbox_example_runs_three_calls_with_state_in_the_runner():
    namespace: dict[str, object] = {}
    exec(compile(readme_example("openai-agents"), "README.md", "exec"), namespace)
    model = ScriptedModel([
        exec_command("c1", "echo 21 > n && pwd"),
        exec_command("c2", "ls; cat missing"),
        exec_command("c3", "echo $(( $(cat n) * 2 ))"),
        [assistant_message("42")],
    ])
    assert asyncio.run(namespace["solve"]("t", model=model)) == "42"
    calls = [repr(call.input[-1]) for call in model.calls[1:]]
    assert "/sandbox" in calls[0] and "exited with code 0" in calls[0]
    assert "No such file or directory" in calls[1] and "exited with code 1" in calls[1]
    assert "Output:\\n42" in calls[2]  # the file of call 1, read in call 3
    assert child_pids() == []  # the runner's session ended: no sandbox left


def test_sandbox_timeout_and_oom_are_clear_to_the_model():
    memory = asyncio.run(memory_backend())
    model = ScriptedModel([
        exec_command("c1", "sleep 5"),
        exec_command("c2", HOG),
        exec_command("c3", "echo after"),
        [assistant_message("done")],
    ])
    assert sandbox_run(model, timeout_ms=1000, memory_limit="64m") == "done"
    calls = [repr(call.input[-1]) for call in model.calls[1:]]
    assert "Command timed out after" in calls[0]
    if memory in ("cgroup1", "cgroup2", "watchdog"):  # an OOM kill, not MemoryError
        assert "the code ran out of memory and was killed" in calls[1]
        assert "exited with code 137" in calls[1]
    assert "after" in calls[2]
    assert child_pids() == []


def test_sandbox_secret_never_reaches_the_model():
    secret = "tok-sandbox-5521"
    model = ScriptedModel([
        exec_command("c1", "echo out $API_TOKEN; echo err $API_TOKEN >&2"),
        exec_command("c2", "printf %s \"$API_TOKEN\" > t && cat t"),
        exec_command("c3", "env | grep API_TOKEN"),
        [assistant_message("done")],
    ])
    sandbox_run(model, secrets={"API_TOKEN": secret})
    shown = seen_by_model(model)
    assert "out ***" in shown and "err ***" in shown and "API_TOKEN=***" in shown
    assert secret not in shown and "5521" not in shown


def test_sandbox_files_and_workspace_archives_round_trip():
    async def scenario() -> None:
        client = Isol8SandboxClient()
        session = await client.create(manifest=Manifest())
        async with session:
            assert session.state.manifest.root == "/sandbox"
            await session.write(Path("data/blob.bin"), io.BytesIO(bytes(range(256))))
            assert (await session.read(Path("data/blob.bin"))).read() == bytes(range(256))
            with pytest.raises(WorkspaceReadNotFoundError):
                await session.read(Path("nope.txt"))
            archive = (await session.persist_workspace()).read()
        assert child_pids() == []
        again = await client.create(manifest=Manifest())
        async with again:
            await again.hydrate_workspace(io.BytesIO(archive))
            assert (await again.read(Path("data/blob.bin"))).read() == bytes(range(256))
            result = await again.exec("ls /tmp")
            assert b".isol8-workspace" not in result.stdout  # the staging archive is gone
    asyncio.run(scenario())
    assert child_pids() == []


def test_a_session_resumes_from_its_snapshot_in_a_new_sandbox(tmp_path):
    async def scenario() -> bytes:
        client = Isol8SandboxClient()
        first = await client.create(manifest=Manifest(),
                                    snapshot=LocalSnapshotSpec(base_path=tmp_path))
        await first.start()
        await first.write(Path("keep/me.txt"), io.BytesIO(b"kept"))
        await first.stop()  # persists the workspace to the snapshot
        payload = client.serialize_session_state(first.state)
        await first.shutdown()
        assert child_pids() == []  # the first sandbox is gone
        resumed = await client.resume(client.deserialize_session_state(payload))
        async with resumed:
            return (await resumed.read(Path("keep/me.txt"))).read()
    assert asyncio.run(scenario()) == b"kept"
    assert child_pids() == []


def test_sandbox_client_refuses_bad_input():
    with pytest.raises(ValueError, match="must be /sandbox or under it"):
        asyncio.run(Isol8SandboxClient().create(manifest=Manifest(root="/etc")))
    with pytest.raises(InvalidRequest, match="memory_limit"):
        Isol8SandboxClient(memory_limit="lots")


# --- ShellTool ------------------------------------------------------------------------------

def test_readme_shell_example_runs_three_calls_with_state_in_the_runner():
    namespace: dict[str, object] = {}
    exec(compile(readme_example("openai-agents-shell"), "README.md", "exec"), namespace)
    model = ScriptedModel([
        shell_call("c1", "echo 21 > n", "pwd"),
        shell_call("c2", "sleep 5", timeout_ms=300),
        shell_call("c3", "echo $(( $(cat n) * 2 ))"),
        [assistant_message("42")],
    ])
    assert asyncio.run(namespace["solve_with_shell"]("t", model=model)) == "42"
    outputs = [call.input[-1] for call in model.calls[1:]]
    assert outputs[0]["output"][1]["stdout"] == "/sandbox"
    timed_out = outputs[1]["output"][0]
    assert timed_out["outcome"] == {"type": "timeout"}
    assert "the code timed out and was killed after" in timed_out["stderr"]
    assert outputs[2]["output"][0]["stdout"] == "42"
    assert child_pids() == []


def test_shell_caps_the_models_timeout_and_stops_after_a_kill():
    async def scenario() -> list:
        async with Isol8Shell(timeout_ms=700, memory_limit="64m") as shell:
            model = ScriptedModel([
                shell_call("c1", "sleep 3", "echo never", timeout_ms=600_000),
                shell_call("c2", HOG, "echo never"),
                [assistant_message("done")],
            ])
            agent = Agent(name="t", model=model, tools=[ShellTool(executor=shell)])
            await Runner.run(agent, "t")
            return [call.input[-1]["output"] for call in model.calls[1:]] + [
                await memory_backend()]
    first, second, memory = asyncio.run(scenario())
    assert len(first) == 1 and first[0]["outcome"] == {"type": "timeout"}  # 700 ms, not 600 s
    if memory in ("cgroup1", "cgroup2", "watchdog"):  # an OOM kill, not MemoryError
        assert len(second) == 1 and second[0]["outcome"] == {"type": "exit", "exit_code": 137}
        assert "the code ran out of memory and was killed" in second[0]["stderr"]
    assert child_pids() == []


def test_shell_secret_is_masked_and_bad_input_refused():
    async def scenario() -> str:
        async with Isol8Shell(secrets={"API_TOKEN": "tok-shell-7310"}) as shell:
            model = ScriptedModel([shell_call("c1", "echo $API_TOKEN", "echo $API_TOKEN >&2"),
                                   [assistant_message("done")]])
            await Runner.run(Agent(name="t", model=model,
                                   tools=[ShellTool(executor=shell)]), "t")
            return seen_by_model(model)
    shown = asyncio.run(scenario())
    assert "***" in shown and "7310" not in shown
    with pytest.raises(InvalidRequest, match="persistent"):
        Isol8Shell(AsyncIsol8())
    with pytest.raises(TypeError, match="not both"):
        Isol8Shell(AsyncIsol8(mode="persistent"), timeout_ms=5)
    assert child_pids() == []
