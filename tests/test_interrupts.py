"""Ctrl-C at any instant of execute() leaves nothing behind: no process, no fd (uid leases
included).

A SIGALRM handler raising KeyboardInterrupt is armed at random delays covering setup, the
run and teardown; each interrupted call must still have reaped its helper and closed
everything. Once with the main thread alone, and once with idle threads beside it, as every
agent host has: the kernel then delivers the signal to a thread that does not block it, and
Python runs the handler in the main thread all the same (blocking signals in the main thread
alone left 34 helpers in 250 calls).
"""

import os
import random
import signal
import subprocess
import sys
import threading

import pytest
from isol8 import Isol8

from conftest import child_pids


@pytest.mark.parametrize("idle_threads", [0, 4])
def test_random_interrupts_leak_nothing(idle_threads):
    idle = threading.Event()
    threads = [threading.Thread(target=idle.wait) for _ in range(idle_threads)]
    for thread in threads:
        thread.start()
    try:
        interrupted = _interrupt_250_runs()
    finally:
        idle.set()
        for thread in threads:
            thread.join()
    # The test must really have interrupted calls (most land in the wait, some in setup or
    # teardown). Seen here: all 250 as root; rootless on a loaded machine as few as 8, the
    # other calls completing although the alarm was due inside them (unexplained: recorded
    # in the closing note). The leak checks below are the point.
    assert interrupted >= 1, "no call was interrupted: the test is not testing anything"


def _interrupt_250_runs() -> int:
    engine = Isol8()
    engine.execute(cmd="true")  # warm the policy cache: interrupts then hit the sandbox path
    fds = sorted(os.listdir("/proc/self/fd"))

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    rng = random.Random(8)
    interrupted = 0
    try:
        for _ in range(250):
            # the alarm may also land in the finally, before it is disarmed: caught too,
            # or it would end the whole pytest session
            try:
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.0001, 0.008))
                try:
                    engine.execute(cmd="sleep 0.01")
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except KeyboardInterrupt:
                interrupted += 1
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert child_pids() == []
    assert sorted(os.listdir("/proc/self/fd")) == fds  # uid leases are fds too
    return interrupted


def test_isol8_imported_first_in_a_worker_thread_runs_in_every_thread():
    # Only the main thread may set signal handlers: deferral must ask which thread is the
    # main one, not take the thread that imported isol8 for it (an agent framework may
    # import a tool's module lazily, in its executor thread).
    script = """
import threading
out = []
def work():
    from isol8 import Isol8
    out.append(Isol8().execute(cmd="echo in-thread").stdout)
thread = threading.Thread(target=work)
thread.start()
thread.join()
from isol8 import Isol8
out.append(Isol8().execute(cmd="echo in-main").stdout)
print(out)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "['in-thread', 'in-main']", done.stderr[-2000:]
