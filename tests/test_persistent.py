"""mode="persistent": one sandbox per engine, state and background processes kept."""

import errno
import hashlib
import os
import resource
import threading
import time
from pathlib import Path

import pytest

from isol8 import InvalidRequest, Isol8, Isol8Error
from isol8.protocol import ProtocolError
from isol8.runtimes import BASH
from isol8 import ProcessStartFailed
from isol8.sandbox import RunSpec

from conftest import PROGRAMS, child_pids, host_processes_matching, watching_host

SERVE = """
import http.server, threading
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        print('request', flush=True)  # writes to the first run's stdout, long after it ended
server = http.server.HTTPServer(('127.0.0.1', 8765), Quiet)
print('serving', flush=True)
server.serve_forever()
"""


@pytest.fixture
def session():
    with Isol8(mode="persistent") as eng:
        yield eng
    assert child_pids() == []


def test_files_persist_between_calls(session):
    # upstream's README example
    session.execute("import json; json.dump([1, 2], open('/sandbox/data.json', 'w'))")
    r = session.execute("import json; print(sum(json.load(open('/sandbox/data.json'))))")
    assert r.stdout == "3"


def test_a_background_server_started_in_one_call_answers_the_next(session):
    r = session.execute(cmd="python3 -c \"$SERVE\" & sleep 0.5; echo started",
                        env={"SERVE": SERVE})
    assert (r.exit_code, r.stdout) == (0, "serving\nstarted")
    for _ in range(3):  # the server logs each request to a pipe nobody reads any more
        r = session.execute("import urllib.request\n"
                            "print(urllib.request.urlopen('http://127.0.0.1:8765/').status)")
        assert r.stdout == "200"


def test_a_timeout_kills_that_runs_tree_only(session):
    keep, doomed = "1414.2135", "1732.0508"
    session.execute(cmd=f"(setsid sleep {keep} &); echo bg")
    with watching_host(doomed, no_children=False):
        started = time.monotonic()
        r = session.execute(cmd=f"(setsid sleep {doomed} &); sleep {doomed}", timeout_ms=500)
        assert r.exit_code == 137 and r.stderr == "--- EXECUTION TIMED OUT ---"
        assert time.monotonic() - started < 5
    assert host_processes_matching(f"sleep {keep}")  # the earlier run's daemon lives on
    r = session.execute(cmd="pgrep -c -f 'sleep 1414'")
    assert r.stdout == "1"


def test_a_timeout_kills_a_tree_that_keeps_forking_daemons(session):
    """The leader must not exit mid-kill and hand the rest of the tree to pid 1: a run that
    spawns setsid daemons without pause loses every one of them at its timeout."""
    doomed = "2236.0679"
    with watching_host(doomed, no_children=False):
        r = session.execute(
            cmd=f"while :; do (setsid sleep {doomed} &); done", timeout_ms=700)
        assert r.exit_code == 137
    assert session.execute(cmd=f"pgrep -c -f 'sleep {doomed}'").stdout == "0"


def test_nothing_is_left_after_stop():
    marker = "2718.2818"
    eng = Isol8(mode="persistent")
    eng.execute(cmd=f"(setsid sleep {marker} &); (sleep {marker} &); echo ok")
    assert host_processes_matching(marker)
    eng.stop()
    assert host_processes_matching(marker) == [] and child_pids() == []


def test_the_session_is_bound_to_its_first_runtime(session):
    session.execute("print(1)")
    with pytest.raises(InvalidRequest, match='Cannot switch runtime from "python" to "node"'):
        session.execute("console.log(1)", runtime="node")
    assert session.execute(cmd="echo cmd still works").stdout == "cmd still works"


def test_concurrent_calls_are_serialized(session):
    results = []

    def call(i):
        results.append(session.execute(
            cmd=f"mkdir /tmp/lock || exit 9; echo {i}; sleep 0.2; rmdir /tmp/lock"))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.exit_code for r in results) == [0, 0, 0, 0]  # never two at once


def test_streaming_works_in_a_session(session):
    session.execute(cmd="echo hello > /sandbox/greeting")
    events = [(e.type, e.data) for e in session.execute_stream(cmd="cat /sandbox/greeting")]
    assert events == [("stdout", "hello\n"), ("exit", "0")]


def test_each_run_reports_its_own_cpu_time(session):
    busy = session.execute("import time\nend = time.time() + 0.3\nwhile time.time() < end: pass")
    idle = session.execute("pass")
    assert busy.resource_usage.cpu_time_ms >= 200
    assert idle.resource_usage.cpu_time_ms < busy.resource_usage.cpu_time_ms


def test_put_and_get_ten_megabytes_binary(session):
    session.execute("print(1)")
    data = os.urandom(10 << 20)
    session.put_file("/sandbox/in/blob.bin", data)
    r = session.execute("import hashlib; print(hashlib.sha256(open('/sandbox/in/blob.bin', "
                        "'rb').read()).hexdigest())")
    assert r.stdout == hashlib.sha256(data).hexdigest()
    assert session.get_file("/sandbox/in/blob.bin") == data


def test_get_file_cannot_escape_through_symlinks(session, tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_text("HOST ONLY")
    session.execute(cmd=f"ln -s {secret} /sandbox/a; ln -s /proc/1/root/etc/passwd /sandbox/b; "
                        "ln -s ../../../../etc/hostname /sandbox/c")
    for path in ("/sandbox/a", "/sandbox/b", f"/sandbox/../..{secret}"):
        with pytest.raises(Isol8Error):
            session.get_file(path)
    assert session.get_file("/sandbox/c") == b"sandbox\n"  # resolved inside: the sandbox's own
    with pytest.raises(InvalidRequest):
        session.put_file("/sandbox/../etc/x", "no")


def test_file_io_needs_a_persistent_session():
    with Isol8() as eng, pytest.raises(Isol8Error, match="No active container"):
        eng.get_file("/sandbox/x")
    with Isol8(mode="persistent") as eng, pytest.raises(Isol8Error, match="No active container"):
        eng.put_file("/sandbox/x", "before any execute()")


def test_get_file_is_not_masked():
    with Isol8(mode="persistent", secrets={"K": "QUFB"}) as eng:  # base64 of "AAA"
        eng.execute(cmd="printf AAA > /sandbox/f")
        assert eng.get_file("/sandbox/f") == b"AAA"


CMDLINE = "print(open('/proc/self/cmdline').read().split(chr(0))[1])"


@pytest.mark.parametrize("program", PROGRAMS)
def test_python_runs_through_the_waiting_zygote_equal_cold_runs(session, program):
    session.execute("print('first')")  # the zygote for the next Python run starts now
    kw = dict(stdin="stdin-data " * 1000, env={"MY_VAR": "v"}, workdir="w")
    with Isol8() as cold:
        c = cold.execute(program, **kw)
    w = session.execute(program, **kw)
    assert (w.stdout, w.stderr, w.exit_code) == (c.stdout, c.stderr, c.exit_code)


def test_the_zygote_serves_the_next_python_run_and_is_replaced(session):
    assert session.execute(CMDLINE).stdout == "/sandbox/main.py"  # the first run: cold
    for _ in range(3):
        assert session.execute(CMDLINE).stdout == "-c"
    # A start-up variable, or request files, need an interpreter of their own.
    assert session.execute(CMDLINE, env={"PYTHONHASHSEED": "1"}).stdout == "/sandbox/main.py"
    assert session.execute(CMDLINE, files={"/sandbox/f": "x"}).stdout == "/sandbox/main.py"


ARGV1_AND_STDIN = ("import sys\n"
                   "print(open('/proc/self/cmdline').read().split(chr(0))[1], sys.stdin.read())")


def started_zygote(eng):
    """The pid, inside the sandbox, of the zygote the session is starting for its next Python
    run, once it has started: its hello, which no run waits for, names it."""
    return eng._session.zygote.wait_ready()


# Killed right before the next run, the zygote races that run's hand-off: CI tries it 20
# times (about 0.2 s an attempt).
@pytest.mark.parametrize("attempt", range(20))
def test_a_killed_zygote_only_costs_a_cold_start(session, attempt):
    session.execute("print(1)")
    pid = started_zygote(session)
    # kill(2) returns once SIGKILL is queued: the zygote may still be exiting, its socket
    # still open, when the next run is handed to it right after.
    r = session.execute(cmd=f"grep -qa zygote /proc/{pid}/cmdline && kill -9 {pid} && echo killed")
    assert r.stdout == "killed"
    r = session.execute(ARGV1_AND_STDIN, stdin="in")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "/sandbox/main.py in", "")
    assert session.execute(CMDLINE).stdout == "-c"  # its successor serves the next run


def test_a_zygote_killed_holding_the_request_unread_only_costs_a_cold_start(session):
    session.execute("print(1)")
    pid = started_zygote(session)
    # Stopped, it holds the next run's request unread until the background process kills
    # it: the hand-off succeeded, and only the zygote's death follows.
    r = session.execute(cmd=f"kill -STOP {pid} || exit; (sleep 0.1; kill -9 {pid}) & echo stopped")
    assert r.stdout == "stopped"
    r = session.execute(ARGV1_AND_STDIN, stdin="in")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "/sandbox/main.py in", "")
    assert session.execute(CMDLINE).stdout == "-c"


def test_a_zygote_run_that_times_out_takes_only_itself(session):
    session.execute("print(1)")
    session.execute(cmd="echo kept > /sandbox/k")
    r = session.execute("import time; time.sleep(10)", timeout_ms=400)
    assert r.exit_code == 137 and r.stderr.endswith("--- EXECUTION TIMED OUT ---")
    assert session.execute("print(open('/sandbox/k').read().strip())").stdout == "kept"


def test_kill_all_leaves_only_the_init_and_the_session_usable(session):
    # what a workspace save relies on: no process of the user's outlives it (daemons that
    # left their session and a fork loop included), and the init runs the next process
    session.execute(cmd="sleep 1000 & setsid sh -c 'sleep 1000 & sleep 1000' & "
                        "(while :; do sleep 0.01 & wait; done) & sleep 0.2")
    session.execute("print(1)")  # a waiting zygote too
    session._session.kill_all()
    r = session.execute(cmd="ls /proc | grep -c '^[0-9]'; ps -o pid=,comm= -e")
    # pid 1, the shell, ls, grep and ps (the zygote for the next run may be starting)
    assert "sleep" not in r.stdout, r.stdout
    assert int(r.stdout.split()[0]) <= 6, r.stdout


def supervisor_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def test_background_output_is_drained_inside_the_sandbox(session):
    # A finished run's background process floods the run's stdout: its pipe is read inside
    # the sandbox, not by the supervisor, and the process lives on (no SIGPIPE).
    assert session.execute(cmd="cat /dev/zero & sleep 0.2").exit_code == 0
    before, started = supervisor_cpu(), time.monotonic()
    time.sleep(3)
    used = supervisor_cpu() - before
    assert used < 0.1 * (time.monotonic() - started), used  # was about 0.9 s per second
    assert session.execute(cmd="pgrep -c -x cat").stdout == "1"


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def init_of(eng: Isol8) -> int:
    helper = eng._session.sandbox.pid
    return int(Path(f"/proc/{helper}/task/{helper}/children").read_text().split()[0])


def wait_for(predicate, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.root_only  # the non-dumpable init's fds are visible to host root only
def test_the_init_closes_a_drained_pipe_once_its_writers_are_gone(session):
    session.execute(cmd="true")
    init = init_of(session)
    base = open_fds(init)
    session.execute(cmd="(sleep 1; echo late) & echo now")  # its stdio outlives the run
    assert wait_for(lambda: open_fds(init) == base + 2), open_fds(init)
    assert wait_for(lambda: open_fds(init) == base), open_fds(init)



@pytest.mark.root_only
def test_the_init_drains_a_bounded_number_of_pipes():
    with Isol8(mode="persistent", pids_limit=512) as eng:
        eng.execute(cmd="true")
        init = init_of(eng)
        base = open_fds(init)
        for _ in range(140):  # each leaves its stdout and stderr to a background process
            eng.execute(cmd="sleep 60 &")
        assert base + 200 < open_fds(init) <= base + 256  # MAX_DRAINED (csrc/helper.h)
        # the last run's child may still be a bash that has not reached its execve yet
        r = eng.execute(cmd="for i in $(seq 50); do [ $(pgrep -c -x sleep) = 140 ] && break; "
                            "sleep 0.1; done; pgrep -c -x sleep")
        assert r.stdout == "140"

READ_ONLY = "mkdir -p /sandbox/ro && chmod 555 /sandbox/ro"


def start_failures(eng: Isol8):
    yield lambda: eng.put_file("/sandbox/ro/x", "no")
    yield lambda: eng.execute(cmd="true", files={"/sandbox/ro/x": "no"})
    yield lambda: eng.execute("print(1)", files={"/sandbox/ro/x": "no"})
    yield lambda: eng.execute(cmd="true", setup_script="true", files={"/sandbox/ro/x": "no"})


@pytest.mark.parametrize("which", range(4), ids=["put_file", "cmd", "code", "setup_script"])
def test_a_process_that_cannot_start_fails_only_its_own_call(session, which):
    session.execute(cmd=f"echo keep > /sandbox/k; {READ_ONLY}; (setsid sleep 1717 &)")
    with pytest.raises(ProcessStartFailed) as info:
        list(start_failures(session))[which]()
    r = session.execute(cmd="cat /sandbox/k; pgrep -c -f 'sleep 1717'")
    assert r.stdout == "keep\n1"  # the files and the background process are still there
    assert (info.value.syscall, info.value.errno, info.value.path) == (
        "write file", errno.EACCES, "/sandbox/ro/x")
    assert str(info.value).startswith("the process could not start: write file on "
                                      "/sandbox/ro/x: EACCES")


def test_a_repl_cell_whose_files_cannot_be_written_keeps_the_variables():
    with Isol8(mode="persistent", repl=True) as eng:
        eng.execute(f"x = 42\nimport subprocess; subprocess.run({READ_ONLY!r}, shell=True)")
        with pytest.raises(ProcessStartFailed):
            eng.execute("print(x)", files={"/sandbox/ro/x": "no"})
        assert eng.execute("print(x)").stdout == "42"


def test_another_process_that_cannot_start_does_not_end_the_next_run(session):
    # A process nobody waits for (as a REPL's interrupt is) reports its failure while the
    # next run goes on: the report is that process's own.
    session.execute(cmd=READ_ONLY)
    session._session.fire(RunSpec([BASH, "-c", "true"], {}, "/sandbox", b"",
                                  [("/sandbox/ro/x", b"")]))
    assert session.execute(cmd="sleep 0.3; echo fine").stdout == "fine"


def test_a_request_over_the_inits_counts_fails_only_its_own_call(session):
    session.execute(cmd="echo keep > /sandbox/k")
    with pytest.raises(ProtocolError):
        session.execute(cmd="true", env={f"V{i}": "" for i in range(5000)})
    assert session.execute(cmd="cat /sandbox/k").stdout == "keep"
