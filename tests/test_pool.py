"""The warm pool: ready sandboxes, Python's with a waiting interpreter, each used once."""

import os
import signal
from pathlib import Path

import pytest

from conftest import PROGRAMS, child_pids, watching_host
from isol8 import InvalidRequest, Isol8

@pytest.fixture(scope="module")
def warm():
    with Isol8(prewarm={"runtimes": ["python", "bash"]}, secrets={"API_KEY": "k-123456"}) as eng:
        eng.start()
        yield eng


@pytest.fixture(scope="module")
def cold():
    with Isol8(secrets={"API_KEY": "k-123456"}) as eng:
        yield eng


def pooled_run(eng, *args, **kw):
    eng._pool.wait_ready(30)  # a hit every time, so every comparison is warm against cold
    return eng.execute(*args, **kw)


@pytest.mark.parametrize("program", PROGRAMS)
def test_a_warm_run_equals_a_cold_one(warm, cold, program):
    kw = dict(stdin="stdin-data " * 1000, env={"MY_VAR": "v"}, workdir="w")
    w, c = pooled_run(warm, program, **kw), cold.execute(program, **kw)
    assert (w.stdout, w.stderr, w.exit_code) == (c.stdout, c.stderr, c.exit_code)


def test_python_runs_use_the_waiting_interpreter(warm):
    probe = "print(open('/proc/self/cmdline').read().split('\\0')[:2])"
    assert pooled_run(warm, probe).stdout == "['/usr/bin/python3', '-c']"
    # An interpreter start-up variable cannot reach a zygote: such a run starts cold, in a
    # ready sandbox.
    r = pooled_run(warm, probe, env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert r.stdout == "['/usr/bin/python3', '/sandbox/main.py']"
    # And so do runs with files (written by the init, as in a cold run).
    r = pooled_run(warm, probe, files={"/sandbox/a": "x"})
    assert r.stdout == "['/usr/bin/python3', '/sandbox/main.py']"


def test_secrets_and_env_given_at_execute_reach_the_program_masked(warm):
    r = pooled_run(warm, "import os; print(os.environ['API_KEY'], os.environ['EXTRA'])",
                   env={"EXTRA": "late"})
    assert r.stdout == "*** late"


def test_each_pooled_sandbox_serves_exactly_one_run(warm):
    with watching_host("isol8-pool-leftover", no_children=False):  # the pool waits
        r = pooled_run(warm, cmd="echo left > /sandbox/mark; echo t > /tmp/mark; "
                                 "(exec -a isol8-pool-leftover sleep 60 &) ; sleep 0.2")
        assert r.exit_code == 0
    for _ in range(3):
        r = pooled_run(warm, "import os; print(os.listdir('/sandbox'), os.listdir('/tmp'))")
        assert r.stdout == "['main.py'] []"


def pooled_zygote(eng) -> int:
    """The host pid of the zygote that waits in the engine's next pooled Python sandbox."""
    eng._pool.wait_ready(30)
    found, todo = [], [eng._pool._ready["python"][0].sandbox.pid]  # its helper, then down
    while todo:
        pid = todo.pop()
        for task in os.listdir(f"/proc/{pid}/task"):
            todo += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        if Path(f"/proc/{pid}/cmdline").read_bytes().endswith(b"\0zygote\0"):
            found.append(pid)
    assert len(found) == 1
    return found[0]


def test_a_pooled_zygote_killed_before_its_run_only_costs_a_cold_start(warm):
    probe = "import sys; print(open('/proc/self/cmdline').read().split('\\0')[1], sys.stdin.read())"
    for _ in range(10):  # the kill races the hand-off: the zygote exits after kill(2) returns
        os.kill(pooled_zygote(warm), signal.SIGKILL)
        r = warm.execute(probe, stdin="in")
        assert (r.exit_code, r.stdout, r.stderr) == (0, "/sandbox/main.py in", "")
    assert pooled_run(warm, probe, stdin="in").stdout == "-c in"  # the pool serves again


def test_timeouts_and_output_caps_hold_in_pooled_runs(warm):
    r = pooled_run(warm, "while True: pass", timeout_ms=400)
    assert r.exit_code == 137 and "EXECUTION TIMED OUT" in r.stderr
    events = [e.type for e in warm.execute_stream("import time; print(1); time.sleep(5)",
                                                  timeout_ms=500)]
    assert events[-2:] == ["error", "exit"]


def test_a_longer_timeout_than_the_pool_was_made_for_runs_cold(warm):
    probe = "print(open('/proc/self/cmdline').read().split('\\0')[1])"
    r = pooled_run(warm, probe, timeout_ms=warm.options.timeout_ms + 1000)
    assert r.stdout == "/sandbox/main.py"


def test_stop_destroys_the_pool_and_leaves_nothing():
    eng = Isol8(prewarm=True, pool_size=2)
    eng.start()
    assert eng.execute("print(1)").stdout == "1"
    eng._pool.wait_ready(30)
    helpers = [e.sandbox.pid for ready in eng._pool._ready.values() for e in ready]
    assert len(helpers) == 4 and set(helpers) <= set(child_pids())
    eng.stop()
    assert not set(helpers) & set(child_pids())  # killed and reaped
    eng.stop()  # twice is fine


def test_persistent_mode_does_not_pool():
    with Isol8(mode="persistent", prewarm=True) as eng:
        eng.start()
        assert eng._pool is None
        assert eng.execute("print(2)").stdout == "2"


@pytest.mark.parametrize("options", [
    {"pool_size": -1}, {"pool_size": "2"}, {"pool_size": {"clean": 1000}},
    {"pool_strategy": "lazy"}, {"prewarm": "python"}, {"prewarm": {"runtimes": ["cobol"]}},
])
def test_pool_options_are_validated(options):
    with pytest.raises(InvalidRequest):
        Isol8(**options)


def test_upstream_pool_shapes_are_accepted():
    with Isol8(pool_size={"clean": 1, "dirty": 1}, pool_strategy="secure") as eng:
        eng.start(prewarm={"runtimes": ["node"]})
        assert list(eng._pool._ready) == ["plain"]
