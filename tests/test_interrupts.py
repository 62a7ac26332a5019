"""Ctrl-C at any instant of execute() leaves nothing behind: no process, no fd (uid leases
included).

A SIGALRM handler raising KeyboardInterrupt is armed at random delays covering setup, the
run and teardown; each interrupted call must still have reaped its helper and closed
everything.
"""

import os
import random
import signal

from isol8 import Isol8

from conftest import child_pids


def test_random_interrupts_leak_nothing():
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
    # The test must really have interrupted calls (most land in the wait, some in setup or
    # teardown). Seen here: all 250 as root; rootless on a loaded machine as few as 8, the
    # other calls completing although the alarm was due inside them (unexplained: recorded
    # in the closing note). The leak checks below are the point.
    assert interrupted >= 1, "no call was interrupted: the test is not testing anything"
    assert child_pids() == []
    assert sorted(os.listdir("/proc/self/fd")) == fds  # uid leases are fds too
