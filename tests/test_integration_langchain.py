"""isol8.integrations.langchain: Isol8Tool in LangChain's own agent loop (create_agent), on
the real sandbox, with a scripted chat model (no network, no key)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage

from conftest import child_pids, host_processes_matching, watching_host
from isol8 import AsyncIsol8, Isol8
from isol8.integrations.langchain import Isol8Tool

REPO = Path(__file__).resolve().parent.parent
SECRET = "sk-lc-5f1e9d"


def readme_example(name: str) -> str:
    """The README's example block ``name``, verbatim."""
    marker = f"<!-- example: {name} -->"
    block = (REPO / "README.md").read_text().split(marker, 1)[1].split("<!-- /example -->", 1)[0]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def run_example(code: str) -> tuple[dict, list[str]]:
    """Runs an example verbatim; each print's output must be what its comment says, as
    test_readme checks the README's examples: the output, then the end or ': '/'; ' prose."""
    namespace: dict = {"__name__": "readme_example"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README example", "exec"), namespace)
    printed = out.getvalue().splitlines()
    comments = [line.split("# ", 1)[1] for line in code.splitlines()
                if line.startswith("print(")]
    assert len(printed) == len(comments), printed
    for output, comment in zip(printed, comments):
        assert comment == output or comment.startswith((output + ": ", output + "; ")), (
            output, comment)
    return namespace, printed


class Scripted(GenericFakeChatModel):
    """Replays its messages and records every conversation it was shown."""

    seen: list = []

    def bind_tools(self, tools, **kwargs):
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.seen.append(list(messages))
        return super()._generate(messages, stop, run_manager, **kwargs)


def scripted(*steps: tuple[str, str] | str) -> Scripted:
    """Tool calls (code, language), then the final answer (a string)."""
    messages = [AIMessage("", tool_calls=[{"name": "execute_code", "id": f"call_{n}",
                                           "args": {"code": step[0], "language": step[1]}}])
                if isinstance(step, tuple) else AIMessage(step)
                for n, step in enumerate(steps)]
    return Scripted(messages=iter(messages), seen=[])


def tool_messages(state: dict) -> list[BaseMessage]:
    return [m for m in state["messages"] if m.type == "tool"]


def ask(agent, question: str = "go") -> dict:
    return agent.invoke({"messages": [("user", question)]})


def test_readme_example_runs_in_create_agent_with_state_kept():
    namespace, printed = run_example(readme_example("langchain"))
    state = namespace["state"]
    results = tool_messages(state)
    assert [m.status for m in results] == ["success"] * 3
    assert [json.loads(m.content)["stdout"] for m in results] == ["", "key: ***", "3"]
    assert state["messages"][-1].content == "The median is 3."
    assert "sk-..." not in str(state["messages"])
    assert child_pids() == []  # the session and its helper are gone


def test_async_agent_runs_in_an_async_session_and_leaves_nothing_running():
    marker = "lc-async-4d1c"
    model = scripted(("x = 6 * 7", "python"),
                     (f"(exec -a {marker} sleep 600 &) ; echo started", "bash"),
                     ("while True: pass", "python"),
                     ("print(x)", "python"),
                     "x is 42")

    async def main():
        async with AsyncIsol8(mode="persistent", repl=True, timeout_ms=1500) as session:
            agent = create_agent(model, tools=[Isol8Tool(session)])
            return await agent.ainvoke({"messages": [("user", "6 * 7?")]})

    with watching_host(marker):
        state = asyncio.run(main())
    results = tool_messages(state)
    assert [m.status for m in results] == ["success", "success", "error", "success"]
    assert json.loads(results[1].content)["stdout"] == "started"
    assert results[2].content.startswith("the code timed out and was killed after ")
    assert json.loads(results[3].content)["stdout"] == "42"  # kept across the timeout
    assert state["messages"][-1].content == "x is 42"


def test_timeout_reaches_the_model_as_a_tool_error_and_the_agent_goes_on():
    model = scripted(("print('working', flush=True)\nwhile True: pass", "python"),
                     ("print(1)", "python"), "done")
    with Isol8(timeout_ms=1500) as engine:
        state = ask(create_agent(model, tools=[Isol8Tool(engine)]))
    timeout, ok = tool_messages(state)
    assert (timeout.status, ok.status) == ("error", "success")
    sentence, partial = timeout.content.split("\noutput so far: ")
    assert sentence.startswith("the code timed out and was killed after ")
    assert json.loads(partial)["stdout"] == "working"  # what it printed before the kill
    assert json.loads(partial)["exitCode"] == 137
    assert state["messages"][-1].content == "done"
    # the model was shown the error, as the tool result of its call
    assert any(m.type == "tool" and "timed out" in m.content for m in model.seen[-1])


def test_oom_in_a_session_reaches_the_model_and_so_does_why_its_state_is_gone():
    bomb = "chunks = []\nwhile True:\n    chunks.append(b'x' * (20 << 20))"
    model = scripted(("x = 1", "python"), (bomb, "python"), ("print(x)", "python"),
                     ("print('fresh')", "python"), "done")
    with Isol8(mode="persistent", repl=True, memory_limit="128m",
               timeout_ms=20_000) as session:
        state = ask(create_agent(model, tools=[Isol8Tool(session)]))
    _, oom, lost, fresh = tool_messages(state)
    assert oom.status == "error"
    assert oom.content.startswith("the code ran out of memory and was killed")
    assert lost.status == "error"
    assert "killed for exceeding the memory limit; its variables are gone" in lost.content
    assert json.loads(fresh.content)["stdout"] == "fresh"


def test_secret_never_reaches_the_model():
    model = scripted(("import os\nprint(os.environ['TOKEN'])", "python"),
                     ("import os, sys\nprint(os.environ['TOKEN'], file=sys.stderr)\n"
                      "raise ValueError(os.environ['TOKEN'])", "python"),
                     ('echo "$TOKEN"; sleep 5', "bash"),
                     "done")
    with Isol8(mode="persistent", repl=True, timeout_ms=1000,
               secrets={"TOKEN": SECRET}) as session:
        state = ask(create_agent(model, tools=[Isol8Tool(session)]))
    out, err, slow = tool_messages(state)
    assert json.loads(out.content)["stdout"] == "***"
    stderr = json.loads(err.content)["stderr"]
    assert stderr.startswith("***\nTraceback") and stderr.endswith("ValueError: ***")
    assert slow.status == "error" and '"stdout":"***"' in slow.content
    assert SECRET not in repr(model.seen) and SECRET not in repr(state)


def test_lost_session_is_a_tool_error_and_the_next_call_starts_fresh():
    model = scripted(("x = 1", "python"), ("import os\nos._exit(3)", "python"),
                     ("print('x' in globals())", "python"), "done")
    with Isol8(mode="persistent", repl=True) as session:
        state = ask(create_agent(model, tools=[Isol8Tool(session)]))
    _, lost, fresh = tool_messages(state)
    assert lost.status == "error" and "the REPL session is lost" in lost.content
    assert json.loads(fresh.content)["stdout"] == "False"


def test_a_session_refusing_a_language_is_a_tool_error():
    model = scripted(("print(1)", "python"), ("console.log(2)", "node"), "done")
    with Isol8(mode="persistent", repl=True) as session:
        state = ask(create_agent(model, tools=[Isol8Tool(session)]))
    refused = tool_messages(state)[1]
    assert refused.status == "error" and "runtime" in refused.content.lower()


def test_default_tool_runs_each_call_in_a_fresh_sandbox_sync_and_async():
    tool = Isol8Tool()
    assert "nothing persists" in tool.description
    assert json.loads(tool.invoke({"code": "x = 1\nprint(x)"}))["stdout"] == "1"
    second = json.loads(tool.invoke({"code": "print(x)"}))
    assert second["exitCode"] == 1 and "NameError" in second["stderr"]
    node = asyncio.run(tool.ainvoke({"code": "console.log(await Promise.resolve(7))",
                                     "language": "node"}))
    assert json.loads(node)["stdout"] == "7"
    assert child_pids() == []


def test_description_tells_the_model_whether_state_persists():
    with Isol8(mode="persistent", repl=True) as session:
        assert "Python variables and imports survive" in Isol8Tool(session).description
    with Isol8(mode="persistent") as session:  # files persist, variables do not
        tool = Isol8Tool(session)
        assert "Python variables do not survive" in tool.description
        tool.invoke({"code": "open('n', 'w').write('1')\nx = 1"})
        assert json.loads(tool.invoke({"code": "cat n", "language": "bash"}))["stdout"] == "1"
    assert "nothing persists" in Isol8Tool(Isol8()).description
    async_session = AsyncIsol8(mode="persistent", repl=True)
    assert "Python variables and imports survive" in Isol8Tool(async_session).description
    schema = Isol8Tool().tool_call_schema.model_json_schema()
    assert set(schema["properties"]) == {"code", "language"}
    assert schema["properties"]["language"]["enum"] == ["python", "node", "bash"]


def test_wrong_engine_kind_is_a_clear_error():
    with pytest.raises(TypeError, match="expected an isol8 engine"):
        Isol8Tool(object())
    with pytest.raises(TypeError, match="AsyncIsol8 is asynchronous: run this tool with ainvoke"):
        Isol8Tool(AsyncIsol8()).invoke({"code": "print(1)"})
    with pytest.raises(TypeError, match="Isol8 is synchronous: run this tool with invoke"):
        asyncio.run(Isol8Tool(Isol8()).ainvoke({"code": "print(1)"}))


def test_cancelling_ainvoke_kills_the_run_before_it_returns():
    marker = "lc-cancel-93b7"

    async def main():
        async with AsyncIsol8(mode="persistent", repl=True) as session:
            tool = Isol8Tool(session)
            call = {"code": f"(exec -a {marker} sleep 600) ; echo never", "language": "bash"}
            task = asyncio.create_task(tool.ainvoke(call))
            while not host_processes_matching(marker):
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            gone = host_processes_matching(marker) == []  # before the session stops
            after = json.loads(await tool.ainvoke({"code": "print('still here')"}))
            return gone, after

    gone, after = asyncio.run(main())
    assert gone and after["stdout"] == "still here"
    assert child_pids() == []


def test_remote_sessions_sync_and_async():
    pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")
    pytest.importorskip("httpx2", reason="the client extra (isol8[client]) is not installed")
    from isol8.client import AsyncRemoteIsol8, RemoteIsol8
    from test_server import KEY, running

    def steps():
        return scripted(("x = 6 * 7", "python"), ('echo "$TOKEN"', "bash"),
                        ("print(x)", "python"), "42")

    async def main(url):
        async with AsyncRemoteIsol8(host=url, api_key=KEY, session_id="lc-async", repl=True,
                                    secrets={"TOKEN": SECRET}) as box:
            tool = Isol8Tool(box)
            return tool, await create_agent(steps(), tools=[tool]).ainvoke(
                {"messages": [("user", "go")]})

    with running() as server:
        with RemoteIsol8(host=server.url, api_key=KEY, session_id="lc-sync", repl=True,
                         secrets={"TOKEN": SECRET}) as box:
            tool = Isol8Tool(box)
            sync_state = ask(create_agent(steps(), tools=[tool]))
            assert "Python variables and imports survive" in tool.description
        async_tool, async_state = asyncio.run(main(server.url))
        with RemoteIsol8(host=server.url, api_key=KEY) as client:
            assert client.list_sessions() == []  # both stopped on the server
    assert "Python variables and imports survive" in async_tool.description
    for state in (sync_state, async_state):
        assert [json.loads(m.content)["stdout"] for m in tool_messages(state)] == [
            "", "***", "42"]
        assert SECRET not in repr(state)
