"""repl=True: a persistent Python REPL whose variables and imports survive between calls."""

import base64
import time

import pytest

from conftest import watching_host
from isol8 import InvalidRequest, Isol8, SessionLost


@pytest.fixture
def repl():
    with Isol8(mode="persistent", repl=True, secrets={"TOKEN": "tok-secret-1"}) as eng:
        yield eng


def test_variables_and_imports_survive_between_calls(repl):
    assert repl.execute("import json\ndata = {'a': 1, 'b': 2}\nn = 0").exit_code == 0
    assert repl.execute("n += 1").exit_code == 0
    r = repl.execute("n += 1\nprint(json.dumps(data), n)")
    assert (r.stdout, r.exit_code) == ('{"a": 1, "b": 2} 2', 0)


def test_exceptions_are_results_with_the_cells_traceback(repl):
    r = repl.execute("def f():\n    raise ValueError('nope')\nf()")
    assert r.exit_code == 1
    assert r.stderr.startswith("Traceback (most recent call last):\n  File \"<cell 1>\"")
    assert r.stderr.endswith("ValueError: nope") and "interp" not in r.stderr
    assert "    raise ValueError('nope')" in r.stderr  # the cell's source is shown
    # The session lives on, with what was defined before the exception.
    assert repl.execute("print(f.__name__)").stdout == "f"
    assert repl.execute("x = (").exit_code == 1


def test_sys_exit_ends_the_cell_not_the_session(repl):
    assert repl.execute("keep = 5\nimport sys; sys.exit(3)").exit_code == 3
    r = repl.execute("import sys; sys.exit('message')")
    assert (r.exit_code, r.stderr) == (1, "message")
    assert repl.execute("print(keep)").stdout == "5"


def test_each_call_gets_its_own_env_stdin_workdir_and_masked_secrets(repl):
    r = repl.execute("import os, sys\nprint(os.environ['TOKEN'], os.environ.get('A'), "
                     "os.getcwd(), sys.stdin.read())", env={"A": "1"}, stdin="in-1",
                     workdir="w1")
    assert r.stdout == "*** 1 /sandbox/w1 in-1"
    r = repl.execute("print(os.environ.get('A'), os.getcwd(), repr(sys.stdin.read()))")
    assert r.stdout == "None /sandbox ''"


def test_files_and_output_paths_work_with_the_repl(repl):
    r = repl.execute("print(open('/sandbox/in.txt').read()); open('/sandbox/o', 'w').write('o')",
                     files={"/sandbox/in.txt": "given"}, output_paths=["/sandbox/o"])
    assert r.stdout == "given" and base64.b64decode(r.files["/sandbox/o"]) == b"o"


def test_streaming_from_the_repl(repl):
    events = [(e.type, e.data) for e in repl.execute_stream(
        "import time\nfor i in range(3):\n    print(i); time.sleep(0.05)")]
    assert "".join(d for t, d in events if t == "stdout") == "0\n1\n2\n"
    assert events[-1] == ("exit", "0")


def test_a_timeout_interrupts_the_cell_and_keeps_the_state(repl):
    repl.execute("kept = 'yes'")
    r = repl.execute("import time\nwhile True: time.sleep(0.01)", timeout_ms=500)
    assert r.exit_code == 137
    assert "KeyboardInterrupt" in r.stderr and r.stderr.endswith("--- EXECUTION TIMED OUT ---")
    assert repl.execute("print(kept)").stdout == "yes"


def test_a_cell_ignoring_the_interrupt_loses_the_session_clearly(repl):
    repl.execute("gone = 1")
    with watching_host("isol8-repl-bg", no_children=False):
        r = repl.execute("import signal, subprocess\n"
                         "subprocess.Popen(['bash', '-c', 'exec -a isol8-repl-bg sleep 60'])\n"
                         "signal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
                         timeout_ms=500)
        assert r.exit_code == 137
        with pytest.raises(SessionLost, match="interrupt"):
            repl.execute("print(gone)")
    # A new session: fresh state.
    assert repl.execute("print('gone' in globals())").stdout == "False"


def test_an_interpreter_that_dies_raises_session_lost(repl):
    with pytest.raises(SessionLost, match="exited during a run"):
        repl.execute("import os; os._exit(3)")
    assert repl.execute("print(1 + 1)").stdout == "2"


def test_an_interpreter_that_dies_with_a_cell_unread_is_lost_not_a_crash(repl):
    # Stopped, then sent a cell, then killed: the cell is unread when it dies, so the
    # supervisor's read of the cell's status gets ECONNRESET (af_unix), not EOF. It used to
    # escape as ConnectionResetError; it is the interpreter's loss like any other.
    repl.execute("import os, subprocess\n"
                 "subprocess.Popen(['sh', '-c', f'kill -STOP {os.getpid()}; "
                 "touch /sandbox/stopped; sleep 2; kill -KILL {os.getpid()}'])")
    deadline = time.monotonic() + 60
    while repl.execute(cmd="test -f /sandbox/stopped").exit_code != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(SessionLost, match="exited during a run"):
        repl.execute("print(2)")
    assert repl.execute("print(1 + 1)").stdout == "2"


def test_an_interpreter_killed_for_memory_says_so():
    # The interpreter's hang-up can overtake the report of its OOM kill (a memory cgroup's
    # count, the watchdog's event): the run still reports the OOM, and the next call the
    # memory limit, whatever the backend.
    with Isol8(mode="persistent", repl=True, memory_limit="96m") as eng:
        eng.execute("keep = 1")
        r = eng.execute("hog = bytearray(400 << 20)")
        assert (r.exit_code, r.resource_usage.oom) == (137, True), r
        assert "memory" in r.resource_usage.limits_reached
        with pytest.raises(SessionLost, match="exceeding the memory limit"):
            eng.execute("print(keep)")
        assert eng.execute("print('keep' in globals())").stdout == "False"


def test_cells_that_spend_their_timeout_on_the_cpu_do_not_wear_the_interpreter_out():
    # Under the rlimit cpu backend (rootless here) a CPU-seconds budget of one timeout
    # would count every cell of the long-lived interpreter: the third cell would kill it.
    with Isol8(mode="persistent", repl=True, timeout_ms=600) as eng:
        # the first call also starts the sandbox and its interpreter: seconds in the TCG VM
        eng.execute("x = 41", timeout_ms=60_000)
        for _ in range(3):
            r = eng.execute("while True: pass")
            # interrupted at its deadline: 137 with "timeout"; in the slow TCG VM the
            # interrupt can also end the cell as KeyboardInterrupt (130)
            assert r.exit_code in (130, 137) and "KeyboardInterrupt" in r.stderr, r
        assert eng.execute("print(x + 1)").stdout == "42"


def test_cmd_runs_beside_the_repl_and_other_runtimes_are_refused(repl):
    repl.execute("open('/sandbox/from_repl', 'w').write('r')")
    assert repl.execute(cmd="cat /sandbox/from_repl").stdout == "r"
    with pytest.raises(InvalidRequest, match="Cannot switch runtime"):
        repl.execute("console.log(1)", runtime="node")


def test_stop_leaves_nothing():
    eng = Isol8(mode="persistent", repl=True)
    with watching_host("isol8-repl-daemon"):
        eng.execute("import subprocess\n"
                    "subprocess.Popen(['bash', '-c', 'exec -a isol8-repl-daemon sleep 60'])")
        eng.execute("import time; time.sleep(0.1)")
        eng.stop()


@pytest.mark.parametrize("options", [{"repl": True}, {"repl": 1, "mode": "persistent"}])
def test_repl_needs_persistent_mode(options):
    with pytest.raises(InvalidRequest, match="repl"):
        Isol8(**options)


def test_a_stream_closed_mid_cell_interrupts_it_and_keeps_the_session(repl):
    repl.execute("state = 'kept'")
    stream = repl.execute_stream("import time\nprint('started', flush=True)\n"
                                 "while True: time.sleep(0.01)")
    assert next(stream).data.startswith("started")
    stream.close()
    # The next cell gets its own status, not the abandoned one's.
    r = repl.execute("print(state)")
    assert (r.stdout, r.exit_code) == ("kept", 0)
