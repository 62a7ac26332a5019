"""Process isolation: the sandbox sees only its own pids, cannot signal the host, and leaves
nothing behind — no process, zombie, fd or mount — whether a run exits, times out, fails or
is interrupted.

Daemons carry a unique ``sleep <n>.<m>`` marker in their argv (sleep takes fractions), built
inside the shell from two halves so that only the daemon's own command line holds it.
"""

from __future__ import annotations

import json
import os
import pwd
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

from isol8 import Isol8, Isol8Error

from conftest import (child_pids, host_processes_matching, is_root, run_py, run_sh,
                      watching_host)


def _marker() -> tuple[str, str]:
    """(head, tail): the shell runs ``sleep ${head}${tail}``; the host looks for the join."""
    return f"{random.randint(1000, 9999)}.", f"{random.randint(10**7, 10**8 - 1)}"


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _mount_count() -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for _ in f)


# --- visibility ---------------------------------------------------------------------------

def test_host_pids_are_invisible(engine):
    host_sleep = subprocess.Popen(["sleep", "60"])
    try:
        r = run_py(engine, f"""
import json, os, subprocess
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
cmdlines = [open(f'/proc/{{p}}/cmdline', 'rb').read().replace(b'\\0', b' ').decode()
            for p in pids if os.path.exists(f'/proc/{{p}}')]
def kill0(pid):
    try:
        os.kill(pid, 0)
        return 'signalled'
    except OSError as e:
        return e.strerror
print(json.dumps({{
    'pids': pids, 'me': os.getpid(), 'ppid': os.getppid(), 'cmdlines': cmdlines,
    'ps': subprocess.run(['ps', '-e', '-o', 'pid='], capture_output=True, text=True).stdout.split(),
    'host sleep': kill0({host_sleep.pid}), 'supervisor': kill0({os.getpid()}),
    'self': kill0(os.getpid()),
}}))
""")
    finally:
        host_sleep.kill()
        host_sleep.wait()
    got = json.loads(r.stdout)
    # the init (1), this probe and ps: a handful of small pids, nothing else
    assert got["pids"][0] == 1 and len(got["pids"]) <= 4 and max(got["pids"]) < 50, got
    assert got["me"] == 2 and got["ppid"] == 1
    assert len(got["ps"]) <= 4 and all(int(p) < 50 for p in got["ps"])
    assert not any("pytest" in c or "sleep 60" in c for c in got["cmdlines"]), got["cmdlines"]
    assert got["self"] == "signalled"  # positive control: kill(pid, 0) works on a visible pid
    if host_sleep.pid > 50 and os.getpid() > 50:  # not colliding with sandbox pids
        assert got["host sleep"] == got["supervisor"] == "No such process"


def test_hostname_is_sandbox():
    host_name = socket.gethostname()
    with Isol8() as eng:
        r = run_sh(eng, "hostname; uname -n; cat /proc/sys/kernel/hostname /etc/hostname; "
                        "hostname evil 2>/dev/null && echo renamed; hostname")
    assert r.stdout.split() == ["sandbox"] * 5
    assert socket.gethostname() == host_name
    if host_name != "sandbox":  # the test would fail if the UTS namespace were the host's
        assert host_name not in r.stdout


# --- signals ------------------------------------------------------------------------------

def _sleeper_engine_and_user():
    """As root, pin the sandbox to one host uid and run the host sleep as that uid: without
    a pid namespace, kill(-1) from the sandbox could then reach it. Rootless, both are the
    caller's own uid already."""
    if not is_root():
        return Isol8(), {}
    while True:
        uid = 2_100_000_000 + random.randrange(1_000_000)  # past the default range
        try:
            pwd.getpwuid(uid)
        except KeyError:
            break
    return Isol8(uid_range=(uid, 1)), {"user": uid, "group": uid, "extra_groups": []}


def test_kill_minus_one_does_not_touch_the_host():
    eng, ids = _sleeper_engine_and_user()
    head, tail = _marker()
    host_sleep = subprocess.Popen(["sleep", head + tail], **ids)
    try:
        with eng:
            r = run_py(eng, """
import os, signal, subprocess, sys
# extra guard: refuse unless this really is a fresh pid namespace
if os.getpid() > 10 or b'isol8-helper' not in open('/proc/1/cmdline', 'rb').read():
    sys.exit(98)
child = subprocess.Popen(['sleep', '100'])
os.kill(-1, signal.SIGKILL)
# positive control: the signal did go out, to every process the probe may signal
print('survived', child.wait())
""")
        assert (r.exit_code, r.stdout) == (0, "survived -9"), r.stderr
        assert host_sleep.poll() is None  # the host process is untouched
        assert host_processes_matching(head + tail)
    finally:
        host_sleep.kill()
        host_sleep.wait()


def test_signals_to_pid_1_are_ignored(engine):
    r = run_sh(engine, """
sleep 30 & victim=$!
for sig in KILL TERM INT HUP QUIT SEGV USR1 STOP; do kill -s $sig 1; done
sleep 0.2
grep '^State' /proc/1/status
kill -TERM $victim; wait $victim; echo "victim $?"  # positive control: kill works
echo alive
""")
    assert r.exit_code == 0, r.stderr
    state, *rest = r.stdout.splitlines()
    # Neither stopped (T) by SIGSTOP nor dead; R when the rootless watchdog is mid-tick.
    assert state in ("State:\tS (sleeping)", "State:\tR (running)")
    assert rest == ["victim 143", "alive"]


# --- nothing survives a run -----------------------------------------------------------------

def test_setsid_double_fork_daemon_dies_at_timeout(engine):
    head, tail = _marker()
    with watching_host(head + tail):
        r = engine.execute(cmd=f"h={head}; setsid sh -c \"(sleep ${{h}}{tail} &)\"; "
                               f"(setsid nohup sleep ${{h}}{tail} >/dev/null 2>&1 &); sleep 100",
                           timeout_ms=1500)
    assert r.exit_code == 137


def test_background_daemon_dies_after_a_normal_exit(engine):
    head, tail = _marker()
    with watching_host(head + tail):
        r = engine.execute(cmd=f"h={head}; nohup setsid sleep ${{h}}{tail} >/dev/null 2>&1 & "
                               f"(setsid sh -c \"sleep ${{h}}{tail} &\" &); sleep 0.5; "
                               "echo main-done")
    assert (r.exit_code, r.stdout) == (0, "main-done")


def test_many_runs_leave_no_process_fd_or_mount():
    eng = Isol8()
    eng.execute(cmd="true")  # warm up: lazy imports and caches may hold fds of their own
    fds, mounts = _fd_count(), _mount_count()
    head, tail = _marker()
    outcomes = []
    for i in range(20):
        if i == 5:
            r = eng.execute(cmd=f"h={head}; (setsid sleep ${{h}}{tail} &); sleep 60",
                            timeout_ms=300)
            outcomes.append(r.exit_code)
        elif i == 10:
            with pytest.raises(Isol8Error, match="too large"):  # fails after the spawn
                eng.execute(cmd="echo " + "x" * 300_000)
            outcomes.append("error")
        elif i == 15:
            r = eng.execute("raise SystemExit(3)")
            outcomes.append(r.exit_code)
        else:
            r = eng.execute(cmd=f"h={head}; sleep ${{h}}{tail} & echo {i}")
            outcomes.append(r.exit_code)
    assert outcomes == [0] * 5 + [137] + [0] * 4 + ["error"] + [0] * 4 + [3] + [0] * 4
    assert child_pids() == []
    assert host_processes_matching(head + tail) == []
    # helpers of other engines on this machine may be running: only ours must be gone
    ours = _descendants(os.getpid())
    assert [p for p in host_processes_matching("isol8-helper")
            if int(p.split(":")[0]) in ours] == []
    assert ours == set()
    assert _fd_count() == fds
    assert _mount_count() == mounts


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    parents[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def test_keyboard_interrupt_during_a_run_leaves_nothing(engine):
    engine.execute(cmd="true")
    fds = _fd_count()
    head, tail = _marker()
    seen: list[list[str]] = []

    def interrupt(signum, frame):
        seen.append(host_processes_matching(head + tail))  # the run is really going
        raise KeyboardInterrupt

    # pytest-timeout may own SIGALRM: borrow it, then give back its handler and what is
    # left of its timer
    previous = signal.signal(signal.SIGALRM, interrupt)
    started = time.monotonic()
    previous_timer, _ = signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.execute(cmd=f"h={head}; (setsid sleep ${{h}}{tail} &); sleep ${{h}}{tail}",
                           timeout_ms=10_000)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        elapsed = time.monotonic() - started
        if previous_timer:
            signal.setitimer(signal.ITIMER_REAL, max(previous_timer - elapsed, 0.01))
    assert elapsed < 3
    assert len(seen) == 1 and len(seen[0]) == 2, seen  # both sleeps were running
    assert host_processes_matching(head + tail) == []
    assert child_pids() == []
    assert _fd_count() == fds


def test_pid_1_does_not_reveal_the_host_install_path(engine):
    # The helper's host path (a venv under someone's home) must not be readable inside.
    r = engine.execute("print(repr(open('/proc/1/cmdline').read()))")
    assert r.stdout == repr("isol8-helper\0")


# A supervisor killed outright (SIGKILL: no finally runs) must take its sandbox with it: the
# init exits when the control socket closes, and the kernel kills the pid namespace.
SUPERVISOR = """
from isol8 import Isol8
Isol8().execute(cmd="(setsid sleep {m} &); echo started; sleep {m}", timeout_ms=60_000)
"""


def test_a_killed_supervisor_leaves_nothing_behind():
    head, tail = _marker()
    marker = head + tail
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR.format(m=marker)])
    try:
        deadline = time.monotonic() + 20
        while len(host_processes_matching(f"sleep {marker}")) < 2:
            assert time.monotonic() < deadline, "the sandbox never started"
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while host_processes_matching(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert host_processes_matching(marker) == []


# --- nothing acts on pid 1 -------------------------------------------------------------------

# The init shares the sandbox's uid, and the kernel's same-uid checks for these calls ignore
# non-dumpable: unfiltered, each succeeds on pid 1 (the pid also hides behind set upper bits,
# which the kernel truncates to an int), and the init dies at the next run. The seccomp args
# filter answers EPERM. Raw syscalls with long arguments, so that nothing truncates on the way.
PID1_PROBE = """
import ctypes, errno, json, os, subprocess
NR = {nr!r}
libc = ctypes.CDLL(None, use_errno=True)
L = ctypes.c_long
def call(name, *args):
    ctypes.set_errno(0)
    rc = libc.syscall(L(NR[name]), *[a if isinstance(a, ctypes.c_void_p) else L(a) for a in args])
    return 'ok' if rc >= 0 else errno.errorcode[ctypes.get_errno()]
def ptr(obj):
    return ctypes.c_void_p(ctypes.addressof(obj))
nofile = (ctypes.c_ulong * 2)(3, 3)
cpus = (ctypes.c_ulong * 16)(1)
param = ctypes.c_int(0)
old = (ctypes.c_ulong * 2)()
attr = (ctypes.c_uint32 * 12)(48, 5)  # sched_attr VER0: size 48, policy SCHED_IDLE
attr_nice = (ctypes.c_uint32 * 12)(48, 0, 0, 0, 12)  # SCHED_OTHER, nice 12 (no lower)
IDLE_CLASS, BE_4 = 3 << 13, (2 << 13) | 4
def attacks(pid):
    return {{
        'prlimit': call('prlimit64', pid, 7, ptr(nofile), 0),
        'prlimit read': call('prlimit64', pid, 7, 0, ptr(old)),
        'setpriority': call('setpriority', 0, pid, 19),
        'sched_setscheduler': call('sched_setscheduler', pid, 5, ptr(param)),
        'sched_setparam': call('sched_setparam', pid, ptr(param)),
        'sched_setattr': call('sched_setattr', pid, ptr(attr), 0),
        'sched_setaffinity': call('sched_setaffinity', pid, ctypes.sizeof(cpus), ptr(cpus)),
        'ioprio_set': call('ioprio_set', 1, pid, IDLE_CLASS),
    }}
def init_state():
    # what the attacks would change: limits, priority, nice, rt_priority, policy (stat fields
    # 18, 19, 40, 41), cpus and io class; not the counters the init's own work moves
    stat = open('/proc/1/stat').read().rsplit(')', 1)[1].split()
    cpus = [l for l in open('/proc/1/status') if l.startswith('Cpus_allowed_list')]
    return open('/proc/1/limits').read(), [stat[i] for i in (15, 16, 37, 38)], cpus
before = init_state()
out = {{'pid 1': attacks(1), 'pid 0x100000001': attacks(0x100000001)}}
out['groups'] = {{
    'PRIO_PGRP 1': call('setpriority', 1, 1, 10), 'PRIO_PGRP 0': call('setpriority', 1, 0, 10),
    'PRIO_USER 0': call('setpriority', 2, 0, 5), 'PRIO_USER 1000': call('setpriority', 2, 1000, 5),
    'PRIO_PGRP high bits': call('setpriority', 0x100000001, 1, 10),
    'IOPRIO_WHO_PGRP': call('ioprio_set', 2, 0, IDLE_CLASS),
    'IOPRIO_WHO_USER': call('ioprio_set', 3, 1000, IDLE_CLASS),
}}
# what real programs do on themselves, by pid 0 and by their own pid, and on a sibling
sibling = subprocess.Popen(['sleep', '30'])
mine = os.sched_getaffinity(0)
own, limit = {{}}, (ctypes.c_ulong * 2)(64, 64)
same_cpus = (ctypes.c_ulong * 16)(sum(1 << c for c in mine))
for who in (0, os.getpid(), sibling.pid):
    own[who] = {{
        'prlimit': call('prlimit64', who, 7, ptr(limit), 0),
        'setpriority': call('setpriority', 0, who, 12),
        'sched_setscheduler': call('sched_setscheduler', who, 3, ptr(param)),  # SCHED_BATCH
        'sched_setparam': call('sched_setparam', who, ptr(param)),
        'sched_setattr': call('sched_setattr', who, ptr(attr_nice), 0),
        'sched_setaffinity': call('sched_setaffinity', who, ctypes.sizeof(same_cpus),
                                  ptr(same_cpus)),
        'ioprio_set': call('ioprio_set', 1, who, BE_4),
    }}
import resource
resource.prlimit(0, resource.RLIMIT_NOFILE, (32, 32))
os.nice(1)
os.sched_setaffinity(0, mine)
out['libc self'] = [resource.getrlimit(resource.RLIMIT_NOFILE), os.getpriority(os.PRIO_PROCESS, 0),
                    sorted(os.sched_getaffinity(0)) == sorted(mine)]
sibling.kill(); sibling.wait()
out['self'] = list(own.values())
after = init_state()
out['init unchanged'] = before == after
out['init nice, policy'] = [after[1][1], after[1][3]]  # stat fields 19 and 41
print(json.dumps(out))
"""
PID1_SYSCALLS = ("prlimit64", "setpriority", "sched_setscheduler", "sched_setparam",
                 "sched_setattr", "sched_setaffinity", "ioprio_set")


def test_user_code_cannot_act_on_pid_1():
    from isol8._native import syscall_number
    nr = {name: syscall_number(name) for name in PID1_SYSCALLS}
    with Isol8(mode="persistent") as eng:
        r = run_py(eng, PID1_PROBE.format(nr=nr))
        assert r.exit_code == 0, r.stderr
        got = json.loads(r.stdout)
        for _ in range(2):  # the init survived: the session serves again, twice
            again = eng.execute("print('alive')")
            assert (again.exit_code, again.stdout) == (0, "alive"), again.stderr
    every = dict.fromkeys(("prlimit", "prlimit read", "setpriority", "sched_setscheduler",
                           "sched_setparam", "sched_setattr", "sched_setaffinity",
                           "ioprio_set"), "EPERM")
    assert got["pid 1"] == every
    assert got["pid 0x100000001"] == every
    assert got["groups"] == dict.fromkeys(got["groups"], "EPERM"), got["groups"]
    # pid 0 is self, and the user's own processes stay theirs to manage
    for own in got["self"]:
        assert own == dict.fromkeys(every.keys() - {"prlimit read"}, "ok"), got["self"]
    assert got["libc self"][0] == [32, 32] and got["libc self"][2] is True
    assert got["libc self"][1] == 13  # nice 12 by sched_setattr, then os.nice(1)
    assert got["init unchanged"] and got["init nice, policy"] == ["0", "0"], got
