"""isol8.integrations.smolagents in smolagents' own CodeAgent loop, with a scripted model
(no network, no key): the README's example verbatim, state across steps, the final-answer
protocol, errors, limits and secrets as the model reads them, and nothing left running."""

from __future__ import annotations

import base64
import os
import pickle
import re
import time
from pathlib import Path

import pytest
from smolagents import CodeAgent
from smolagents.models import ChatMessage, MessageRole, Model
from smolagents.utils import AgentError

from isol8 import Isol8
from isol8.errors import InvalidRequest
from isol8.integrations.smolagents import Isol8Executor

from conftest import child_pids, watching_host
from test_packages import Index

REPO = Path(__file__).resolve().parent.parent


def readme_example(name: str) -> str:
    """The README's example block ``name``."""
    readme = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```\n<!-- /example -->",
                      readme, re.S)
    assert found, f"no example {name} in the README"
    return found.group(1)


class ScriptedModel(Model):
    """Answers each call with the next scripted step; keeps every message it was shown."""

    def __init__(self, steps: list[str]) -> None:
        super().__init__(model_id="scripted")
        self.steps = list(steps)
        self.shown: list[str] = []

    def generate(self, messages, stop_sequences=None, response_format=None,
                 tools_to_call_from=None, **kwargs) -> ChatMessage:
        for message in messages:
            content = message.content if hasattr(message, "content") else message["content"]
            parts = content if isinstance(content, list) else [{"text": content or ""}]
            self.shown.extend(str(part.get("text", "")) for part in parts)
        return ChatMessage(role=MessageRole.ASSISTANT, content=self.steps.pop(0))


def step(code: str) -> str:
    return f"Thought: next.\n<code>\n{code}\n</code>"


def seen_by_model(model: ScriptedModel) -> str:
    return "\n".join(model.shown)


def test_readme_example_runs_three_steps_with_state_in_the_agent_loop():
    namespace: dict[str, object] = {}
    exec(compile(readme_example("smolagents"), "README.md", "exec"), namespace)
    model = ScriptedModel([
        step("fib = [0, 1]\nfor _ in range(18):\n    fib.append(fib[-1] + fib[-2])\n"
             "print('computed', len(fib))\nfib[-1]"),
        step("import os\nwith open('/sandbox/note', 'w') as f:\n    f.write(str(fib[-1]))\n"
             "y = undefined_name"),
        step("final_answer(int(open('/sandbox/note').read()) + fib[0])"),
    ])
    assert namespace["solve"]("What is the 20th Fibonacci number?", model=model) == 4181
    assert model.steps == []  # three model calls, three tool runs
    shown = seen_by_model(model)
    assert "computed 20" in shown and "Last output from code snippet:\n4181" in shown
    assert "NameError: name 'undefined_name' is not defined" in shown
    assert 'File "<code>", line 4' in shown  # the traceback points into the step's code
    assert child_pids() == []  # the with block stopped the engine: no sandbox left


def agent_for(executor: Isol8Executor, steps: list[str]) -> tuple[CodeAgent, ScriptedModel]:
    model = ScriptedModel(steps)
    return CodeAgent(tools=[], model=model, executor=executor, max_steps=len(steps)), model


def test_timeout_is_a_clear_error_and_the_variables_survive_it():
    agent, model = agent_for(Isol8Executor(timeout_ms=1000), [
        step("x = 41"), step("while True:\n    pass"), step("final_answer(x + 1)")])
    with agent:
        assert agent.run("t") == 42
    shown = seen_by_model(model)
    assert "the code timed out and was killed after" in shown
    assert "make it faster or do less per call" in shown
    assert child_pids() == []


def test_oom_is_a_clear_error_and_a_lost_interpreter_is_said_and_replaced():
    executor = Isol8Executor(memory_limit="64m", timeout_ms=10_000)
    hog = "bytearray(512 << 20)"
    steps = [step("x = 1")]
    if executor.engine.execute("1", runtime="python").resource_usage.enforced.get(
            "memory") in ("cgroup2", "cgroup1"):
        # a memory cgroup kills the child alone; the watchdog (rootless without delegation)
        # kills every process of the sandbox, the interpreter with them
        steps += [step(f"import subprocess\nsubprocess.run(['python3', '-c', {hog!r}])"),
                  step("print('x is', x)")]
    agent, model = agent_for(executor, steps + [
        step(f"big = {hog}"),  # the interpreter itself: killed, and the step says why
        step("print(x)"),  # the next step finds the session lost, and a new one made
        step("print(x)"),
        step("final_answer('after')")])
    with agent:
        assert agent.run("t") == "after"  # final_answer is defined again in the new one
    shown = seen_by_model(model)
    assert "the code ran out of memory and was killed" in shown
    if len(steps) > 1:
        assert "x is 1" in shown  # a child's OOM kill leaves the interpreter and its variables
    assert "the REPL session is lost: the interpreter was killed for exceeding the memory " \
           "limit" in " ".join(shown.split())
    assert "NameError: name 'x' is not defined" in shown
    assert child_pids() == []


def test_a_lost_interpreter_gets_its_tools_again_and_the_model_is_told():
    agent, model = agent_for(Isol8Executor(), [
        step("x = 1"), step("import os\nos._exit(3)"), step("print(x)"),
        step("final_answer('done')")])
    with agent:
        assert agent.run("t") == "done"
    shown = seen_by_model(model)
    assert "the REPL session is lost" in shown
    assert "NameError: name 'x' is not defined" in shown  # the new interpreter is fresh


def test_a_secret_never_reaches_the_model():
    secret = "tok-'q\"uoted\\-8731"
    agent, model = agent_for(Isol8Executor(secrets={"API_TOKEN": secret}), [
        step("import os\ntoken = os.environ['API_TOKEN']\nprint('printed', token)\ntoken"),
        step("import sys\nprint('err', token, file=sys.stderr)\nraise ValueError(token)"),
        step("final_answer({'token': token, 'list': [token]})")])
    with agent:
        answer = agent.run("t")
    assert answer == {"token": "***", "list": ["***"]}
    shown = seen_by_model(model)
    assert "printed ***" in shown and "err ***" in shown and "ValueError: ***" in shown
    for form in (secret, repr(secret)[1:-1], "8731"):
        assert form not in shown and form not in repr(answer)
    for memory in agent.memory.steps:  # what the agent keeps, e.g. for a replay
        assert "8731" not in repr(getattr(memory, "observations", "") or "")


def test_pickle_from_the_sandbox_is_refused_and_never_loaded(tmp_path):
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = "pickle:" + base64.b64encode(pickle.dumps(Boom())).decode()
    code = ("class FinalAnswerException(BaseException):\n"
            "    def __init__(self, value):\n        self.value = value\n"
            f"raise FinalAnswerException({payload!r})")
    with Isol8Executor() as executor:
        with pytest.raises(Exception, match="Pickle data rejected"):
            executor(code)
    assert not marker.exists()


def test_variables_are_sent_as_json_and_the_last_expression_is_the_output():
    with Isol8Executor() as executor:
        executor.send_variables({"rows": [1, 2, 3], "name": "n"})
        out = executor("total = sum(rows)\nprint(name)\n{'total': total}")
        assert (out.output, out.logs, out.is_final_answer) == ("{'total': 6}", "n\n", False)
        assert executor("total = 0").output is None  # a statement has no value
        with pytest.raises(AgentError, match="SyntaxError"):
            executor("def broken(:")
    with Isol8Executor(max_output_size=1000) as executor:
        out = executor("print('y' * 5000)\n6 * 7")
        assert out.output == "42"  # the report, after the cut stdout, came through
        assert "--- OUTPUT TRUNCATED (5001 bytes, limit: 1000) ---" in out.logs
        with pytest.raises(AgentError, match="passed the sandbox's size limit"):
            executor("import sys\nsys.stderr.write('z' * 5000)")  # cuts the report too


def test_engine_is_stopped_by_cleanup_and_nothing_remains():
    with watching_host("sleep 86399") as seen:
        executor = Isol8Executor()
        try:
            executor("import subprocess\nsubprocess.Popen(['sleep', '86399'])")
            deadline = time.monotonic() + 5
            while not seen and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            executor.cleanup()
    assert child_pids() == []


def test_packages_need_a_filtered_network_and_install_from_the_index():
    with pytest.raises(AgentError, match="needs network='filtered'"):
        Isol8Executor(additional_imports=["tinypkg_smol"])
    assert child_pids() == []  # the engine it made is stopped
    index = Index()
    try:
        index.publish("tinypkg_smol", "1.0", "from the index")
        executor = Isol8Executor(network="filtered", package_index_url=index.url,
                                 package_cache=False, timeout_ms=60_000,
                                 additional_imports=["tinypkg_smol", "json"])
        try:
            assert executor.installed_packages == ["tinypkg_smol"]  # json is there already
            assert executor("import tinypkg_smol\ntinypkg_smol.VALUE").output == \
                "'from the index'"
        finally:
            executor.cleanup()
    finally:
        index.close()


def test_bad_arguments_are_refused_clearly():
    with pytest.raises(TypeError, match="not both"):
        Isol8Executor(Isol8(mode="persistent", repl=True), timeout_ms=1)
    for wrong in ({"repl": False}, {"mode": "ephemeral"}):
        with pytest.raises(InvalidRequest, match="repl"):
            Isol8Executor(**wrong)
    with pytest.raises(InvalidRequest, match="one live interpreter"):
        Isol8Executor(Isol8())  # each run a new process: no state between steps
    assert child_pids() == []


def test_a_remote_session_is_the_interpreter_too():
    pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")
    from isol8.client import RemoteIsol8
    from test_server import KEY, running

    with running() as server:
        engine = RemoteIsol8(host=server.url, api_key=KEY, session_id="smol-remote",
                             repl=True, secrets={"API_TOKEN": "tok-remote-6604"})
        agent, model = agent_for(Isol8Executor(engine), [
            step("import os\nx = 20\nprint(os.environ['API_TOKEN'])"),
            step("y = x + 1\ny"),
            step("final_answer(y * 2)")])
        with agent:
            assert agent.run("t") == 42
            assert len(server.call("GET", "/sessions")[1]["sessions"]) == 1
        shown = seen_by_model(model)
        assert "Last output from code snippet:\n21" in shown
        assert "***" in shown and "6604" not in shown
        assert server.call("GET", "/sessions")[1]["sessions"] == []  # cleanup ended it
