"""Resource limits: memory, pids, cpu, disk and open files, the backend that enforces each,
``strict_limits``, and the cgroups isol8 creates (cleaned up, and reclaimed after a crash).

Which backend is expected depends on where the suite runs, and a silent degradation must fail:
as root on this hybrid host memory and cpu are cgroup v1 and pids RLIMIT_NPROC; rootless here
memory is a watchdog in the sandbox's init, pids RLIMIT_NPROC and cpu an RLIMIT_CPU budget
(cpu_limit x timeout); in the TCG VM (``TCGVM_GUEST=1``) everything is cgroup v2, as root and
as a delegated user.
Each behavioural test reads ``resource_usage.enforced`` and asserts what that backend promises.

Every probe that could hurt the host if it ran outside a sandbox (bombs, floods) carries the
conftest guard; bombs also carry their own bound wherever the test allows it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import isol8
from isol8 import InvalidRequest, Isol8, Isol8Error, images

from conftest import (GUARD_PY, GUARD_SH, child_pids, host_processes_matching, host_tempdir,
                      is_root, run_py, run_sh, watching_host)

IN_VM = bool(os.environ.get("TCGVM_GUEST"))
SLOW = 10 if IN_VM else 1  # generous bounds stay generous under software emulation
CONTROLLERS = ("memory", "pids", "cpu")
BACKENDS = ("cgroup2", "cgroup1", "rlimit", "watchdog", None)
HARD = {"memory": {"cgroup1", "cgroup2"}, "cpu": {"cgroup1", "cgroup2"},
        "pids": {"cgroup1", "cgroup2", "rlimit"}}
USAGE_KEYS = {"cpuPercent", "memoryMB", "peakMemoryMB", "networkBytesIn", "networkBytesOut",
              "cpuTimeMs", "oom", "enforced", "limitsReached"}
TIMED_OUT = "EXECUTION TIMED OUT"


def expected_backends() -> dict[str, str]:
    """What must enforce each limit in the mode this suite runs in."""
    if IN_VM:
        return dict.fromkeys(CONTROLLERS, "cgroup2")
    if is_root():
        # pids: RLIMIT_NPROC is preferred to a v1 cgroup (as hard, and no cgroup.procs write
        # on the execute() path): README "Limits", commit cc63b5a.
        return {"memory": "cgroup1", "pids": "rlimit", "cpu": "cgroup1"}
    return {"memory": "watchdog", "pids": "rlimit", "cpu": "rlimit"}


def soft_controllers() -> list[str]:
    """Controllers whose expected backend is best-effort (strict_limits must refuse them)."""
    return [c for c, b in expected_backends().items() if b not in HARD[c]]


def _marker() -> tuple[str, str]:
    """(head, tail): probes run ``sleep ${head}${tail}``; only that argv holds the join."""
    return f"{random.randint(1000, 9999)}.", f"{random.randint(10**7, 10**8 - 1)}"


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _host_is_unharmed() -> None:
    subprocess.run(["true"], check=True, timeout=10 * SLOW)  # the host can still fork
    block = bytearray(128 << 20)  # and allocate (and touch) memory
    block[::4096] = b"\1" * len(block[::4096])
    del block


# Bounded by construction (300 children at most), so harmless even if no limit applied. The
# children are `sleep`s, not forked Pythons: a watchdog summing RssAnon would count a forked
# interpreter's copy-on-write heap once per child.
FORK_COUNT = """
import json, subprocess
children, err = [], None
for _ in range(300):
    try:
        children.append(subprocess.Popen(['sleep', '60']))
    except OSError as e:
        err = e.errno
        break
for child in children:
    child.kill()
    child.wait()
print(json.dumps({'children': len(children), 'errno': err}), flush=True)
"""


def _assert_fork_bound(got: dict, limit: int) -> None:
    # The init and the probe itself are two of the `limit` tasks: the probe's own fork must
    # fail with EAGAIN at about limit - 2 children, certainly before limit + 2 processes.
    assert got["errno"] == errno.EAGAIN, got
    assert limit - 8 <= got["children"] <= limit - 1, got


# --- options ------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("memory_limit", "abc"), ("memory_limit", 0), ("memory_limit", "-5m"),
    ("cpu_limit", 0), ("cpu_limit", -1.0), ("cpu_limit", "fast"), ("cpu_limit", math.nan),
    ("pids_limit", 0), ("pids_limit", -3), ("pids_limit", 2.5), ("pids_limit", "many"),
    ("cgroup_parent", "relative/dir"),
])
def test_bad_limit_values_name_the_field(field, value):
    with pytest.raises(InvalidRequest) as info:
        Isol8(**{field: value})
    assert field in str(info.value)


def test_good_limit_values_are_accepted():
    for kw in ({"memory_limit": "512m"}, {"memory_limit": "1g"}, {"memory_limit": 256 << 20},
               {"cpu_limit": 0.5}, {"cpu_limit": 2}, {"pids_limit": 1},
               {"strict_limits": False}, {"cgroup_parent": None}):
        Isol8(**kw)  # constructing does not start anything


def test_limits_unavailable_is_an_isol8_error():
    assert issubclass(isol8.LimitsUnavailable, Isol8Error)


# --- what a result reports ----------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_result():
    """One ordinary run with default limits: ~64 MB held during a busy loop of 0.4 s of CPU
    time (counted in CPU time, not wall time, so a loaded host cannot shorten it)."""
    with Isol8() as eng:
        return eng.execute("""
import time
block = b'x' * (64 << 20)
t = time.process_time()
while time.process_time() - t < 0.4:
    pass
print(len(block))
""", runtime="python", timeout_ms=30_000 * SLOW)


def test_backends_match_this_mode(plain_result):
    assert plain_result.exit_code == 0, plain_result.stderr
    assert plain_result.resource_usage.enforced == expected_backends()


def test_resource_usage_shape_and_wire_form(plain_result):
    r = plain_result
    u = r.resource_usage
    assert type(u).__name__ == "ResourceUsage"
    assert type(u.cpu_time_ms) is int and type(u.cpu_percent) is float
    assert type(u.oom) is bool and u.oom is False
    for value in (u.memory_mb, u.peak_memory_mb):
        assert value is None or type(value) is float
    assert (u.network_bytes_in, u.network_bytes_out) == (0, 0)
    assert set(u.enforced) == set(CONTROLLERS)
    assert all(v in BACKENDS for v in u.enforced.values())
    assert u.limits_reached == []  # always a list: empty when nothing was reached

    wire = r.to_dict()["resourceUsage"]
    assert set(wire) == USAGE_KEYS
    assert wire == {"cpuPercent": u.cpu_percent, "memoryMB": u.memory_mb,
                    "peakMemoryMB": u.peak_memory_mb, "networkBytesIn": 0,
                    "networkBytesOut": 0, "cpuTimeMs": u.cpu_time_ms, "oom": False,
                    "enforced": u.enforced, "limitsReached": []}
    json.dumps(r.to_dict())  # the wire form serializes as is


def test_resource_usage_values_are_plausible(plain_result):
    r = plain_result
    u = r.resource_usage
    assert r.stdout == str(64 << 20)
    # 0.4 s of CPU in one thread under cpu_limit=1.0 (300: the counters' granularity).
    assert 300 <= u.cpu_time_ms <= r.duration_ms * 1.2 + 50, (u, r.duration_ms)
    assert abs(u.cpu_percent - 100 * u.cpu_time_ms / max(r.duration_ms, 1)) <= 15, (u, r)
    assert 40 <= u.cpu_percent <= 120, u
    if u.peak_memory_mb is not None:  # 64 MB were held: the peak saw them
        assert 60 <= u.peak_memory_mb <= 400, u
    if u.memory_mb is not None:
        assert 0 <= u.memory_mb <= 400, u


@pytest.mark.parametrize("mode", ["ephemeral", "persistent"])
def test_the_init_keeps_only_nofile_and_core(mode):
    """CPU, NPROC and FSIZE are each user process's, never the init's: a CPU-seconds budget
    on the init killed a long persistent session for the watchdog's own CPU time (issue 9),
    and an NPROC count would refuse it the next run's clone."""
    probe = ("import json\n"
             "def lims(pid):\n"
             "    rows = [l.rsplit(None, 3) for l in open(f'/proc/{pid}/limits')][1:]\n"
             "    return {r[0].strip(): r[1] for r in rows}\n"
             "print(json.dumps([lims(1), lims('self')]))")
    with Isol8(mode=mode, pids_limit=37, timeout_ms=3000 * SLOW) as eng:
        r = eng.execute(probe)
        enforced = r.resource_usage.enforced
    assert r.exit_code == 0, r.stderr
    init, run = json.loads(r.stdout)
    assert init["Max cpu time"] == init["Max file size"] == "unlimited", init
    assert init["Max processes"] != "37", init
    nofile = isol8.limits.open_files(isol8.limits.Limits(memory=512 << 20, cpu=1.0, pids=37),
                                     enforced)
    assert init["Max open files"] == run["Max open files"] == str(nofile)
    assert init["Max core file size"] == run["Max core file size"] == "1"
    assert run["Max file size"] != "unlimited"
    if enforced["pids"] == "rlimit":
        assert run["Max processes"] == "37", run
    if enforced["cpu"] == "rlimit":
        assert run["Max cpu time"] == str(3 * SLOW), run


# --- strict_limits ------------------------------------------------------------------------

def test_strict_limits_refuses_best_effort_backends_or_runs():
    soft = soft_controllers()
    if soft:  # rootless here: memory (watchdog) and cpu (rlimit budget) are best-effort
        eng = Isol8(strict_limits=True)
        with pytest.raises(isol8.LimitsUnavailable) as info:
            eng.start()
        for name in soft:
            assert name in str(info.value)
        with pytest.raises(isol8.LimitsUnavailable):  # execute() starts lazily: same refusal
            Isol8(strict_limits=True).execute("print(1)")
        assert child_pids() == []
    else:  # every limit has a hard backend: strict changes nothing
        with Isol8(strict_limits=True) as eng:
            r = eng.execute("print(1)", runtime="python")
        assert (r.exit_code, r.stdout) == (0, "1"), r.stderr
        enforced = r.resource_usage.enforced
        assert all(enforced[c] in HARD[c] for c in CONTROLLERS), enforced


# --- memory -------------------------------------------------------------------------------

def test_memory_bomb_is_killed_with_137_and_oom():
    head, tail = _marker()
    # Tries to reach 2 GB in 50 MB steps (bytes objects: every page is written).
    code = f"""
import subprocess, time
subprocess.Popen(['sleep', {head!r} + {tail!r}], start_new_session=True)
chunks = []
for step in range(1, 41):
    chunks.append(b'x' * (50 << 20))
    print(step * 50, flush=True)
print('reached 2 GB', flush=True)
time.sleep(5)
"""
    with watching_host(head + tail), Isol8(memory_limit="200m") as eng:
        started = time.monotonic()
        r = run_py(eng, code, timeout_ms=20_000 * SLOW)
        elapsed = time.monotonic() - started
    assert r.exit_code == 137, (r.exit_code, r.stderr)
    assert TIMED_OUT not in r.stderr
    assert r.resource_usage.oom is True
    assert r.resource_usage.limits_reached == ["memory"]
    assert "reached" not in r.stdout
    reached = [int(x) for x in r.stdout.split()]
    assert reached and max(reached) <= 450, r.stdout  # it did allocate, and was stopped early
    assert elapsed < 10 * SLOW
    peak = r.resource_usage.peak_memory_mb
    assert peak is None or 150 <= peak <= 450, r.resource_usage
    _host_is_unharmed()


def test_persistent_oom_kills_the_run_and_keeps_the_session():
    head, tail = _marker()
    bomb = "chunks = []\nwhile True:\n    chunks.append(b'x' * (50 << 20))"
    with watching_host(head + tail, no_children=False):
        with Isol8(mode="persistent", memory_limit="200m") as eng:
            eng.execute(cmd=f"echo kept > /sandbox/state; (exec -a {head}{tail} sleep 600 &)")
            r = run_py(eng, bomb, timeout_ms=20_000 * SLOW)
            assert (r.exit_code, r.resource_usage.oom) == (137, True), (r.exit_code, r.stderr)
            assert TIMED_OUT not in r.stderr
            assert r.resource_usage.limits_reached == ["memory"]
            # The session, its files and the background process of an earlier run live on.
            assert host_processes_matching(head + tail)
            r = eng.execute(cmd="cat /sandbox/state")
            assert (r.stdout, r.resource_usage.oom) == ("kept", False)
            assert r.resource_usage.limits_reached == []  # the run's own, not the session's
            r = run_py(eng, bomb, timeout_ms=20_000 * SLOW)  # and it holds again
            assert (r.exit_code, r.resource_usage.oom) == (137, True), (r.exit_code, r.stderr)
            assert eng.execute(cmd="cat /sandbox/state").stdout == "kept"


def test_tmpfs_files_count_against_the_memory_limit():
    # 150 MB written to /sandbox (512m tmpfs) under a 64 MB memory limit: never completes.
    with Isol8(memory_limit=64 << 20) as eng:
        started = time.monotonic()
        r = run_py(eng, """
import time
chunk = b'x' * (1 << 20)
with open('/sandbox/fill', 'wb', buffering=0) as f:
    for _ in range(150):
        f.write(chunk)
print('wrote', flush=True)
time.sleep(3)
print('survived', flush=True)
""", timeout_ms=20_000 * SLOW)
    assert "wrote" not in r.stdout and "survived" not in r.stdout, (r.stdout, r.stderr)
    assert r.exit_code != 0
    if r.exit_code == 137:
        assert r.resource_usage.oom is True and TIMED_OUT not in r.stderr
    assert time.monotonic() - started < 10 * SLOW


# Memory a process holds outside its private heap and the sandbox's tmpfs mounts is still
# the host's memory: a memory limit that does not see it does not protect the host.
_HIDDEN_MEMORY = {
    "memfd": """
import os
chunk = b'x' * (1 << 20)
for _ in range(3):  # 3 x 200 MB: each file stays under RLIMIT_FSIZE
    fd = os.memfd_create('hidden')
    for _ in range(200):
        os.write(fd, chunk)
""",
    # PR_SET_DUMPABLE 0 hides smaps_rollup (and the fds) from the init's watchdog.
    "non-dumpable": """
import ctypes
assert ctypes.CDLL(None).prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE
block = b'x' * (600 << 20)
""",
    "sysv-shm": """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
segment = libc.shmget(0, 600 << 20, 0o1000 | 0o600)  # IPC_PRIVATE, IPC_CREAT
assert segment >= 0, ctypes.get_errno()
address = libc.shmat(segment, None, 0)
assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
ctypes.memset(address, 1, 600 << 20)
""",
}


@pytest.mark.parametrize("kind", sorted(_HIDDEN_MEMORY))
def test_memory_outside_heap_and_tmpfs_counts(kind):
    with Isol8(memory_limit="200m") as eng:
        r = run_py(eng, _HIDDEN_MEMORY[kind] + """
import time
print('holding 600 MB', flush=True)
time.sleep(1)
print('survived', flush=True)
""", timeout_ms=20_000 * SLOW)
    assert "holding" not in r.stdout and "survived" not in r.stdout, (kind, r.resource_usage)
    assert (r.exit_code, r.resource_usage.oom) == (137, True), (r.exit_code, r.stderr[-300:])
    assert r.resource_usage.limits_reached == ["memory"]


def test_forked_workers_sharing_memory_are_not_counted_twice():
    # ~105 MB really in use: 100 MB built once, then shared copy-on-write by five workers
    # that only read it (the multiprocessing pattern). A 400 MB limit must not fire.
    with Isol8(memory_limit="400m") as eng:
        r = run_py(eng, """
import os, time
block = b'x' * (100 << 20)
workers = []
for _ in range(5):
    pid = os.fork()
    if pid == 0:
        time.sleep(0.5)
        os._exit(0 if block[-1:] == b'x' else 1)
    workers.append(pid)
print(sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in workers))
""", timeout_ms=20_000 * SLOW)
    assert (r.exit_code, r.stdout) == (0, "0"), (r.exit_code, r.resource_usage)
    assert r.resource_usage.oom is False


# --- pids ---------------------------------------------------------------------------------

def test_pids_limit_bounds_live_processes():
    with Isol8(pids_limit=24) as eng:
        r = run_py(eng, FORK_COUNT, timeout_ms=20_000 * SLOW)
    assert r.exit_code == 0, r.stderr
    _assert_fork_bound(json.loads(r.stdout), 24)
    assert child_pids() == []


def test_fork_bomb_is_contained():
    head, tail = _marker()
    with watching_host(head + tail), Isol8(pids_limit=32) as eng:
        # Safety first: only bomb once the bounded probe shows the limit holds.
        probe = run_py(eng, FORK_COUNT, timeout_ms=20_000 * SLOW)
        _assert_fork_bound(json.loads(probe.stdout), 32)
        started = time.monotonic()
        r = run_sh(eng, f"h={head}; t={tail}; bomb() {{ sleep $h$t & bomb | bomb & }}; "
                        "bomb; wait", timeout_ms=5000)
        elapsed = time.monotonic() - started
    assert r.exit_code == 137, (r.exit_code, r.stderr[-500:])  # ended by the timeout
    assert elapsed < 5 + 5 * SLOW
    _host_is_unharmed()


# --- limits_reached: which limits ended or cut a run ----------------------------------------

# Threads count against pids_limit as processes do (a task each, for pids.max and for
# RLIMIT_NPROC alike): 100 threads are what a thread pool or a test runner may start.
THREADS = """
import json, threading
stop, threads, error = threading.Event(), [], None
for _ in range(100):
    thread = threading.Thread(target=stop.wait)
    try:
        thread.start()
    except RuntimeError as e:
        error = str(e)
        break
    threads.append(thread)
stop.set()
for thread in threads:
    thread.join()
print(json.dumps({'threads': len(threads), 'error': error}), flush=True)
"""
PIDS_CGROUP = expected_backends()["pids"] in ("cgroup1", "cgroup2")
ENGINE_KINDS = ("cold", "pool", "persistent")


@contextlib.contextmanager
def _engine_of(kind: str, **options):
    """An engine whose runs take the path ``kind`` names: a fresh sandbox each ("cold"),
    a warm pooled one ("pool": call ``_ready`` before each run), or one session."""
    extra = {"pool": {"prewarm": True}, "persistent": {"mode": "persistent"}}.get(kind, {})
    with Isol8(**options, **extra) as eng:
        yield eng


def _ready(eng: Isol8) -> None:
    if eng._pool is not None:  # a hit every time: the run is served by a pooled sandbox
        eng._pool.wait_ready(30 * SLOW)


def _threads_hit_the_limit(r, limit: int) -> None:
    assert r.exit_code == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["error"] == "can't start new thread", got
    assert limit - 8 <= got["threads"] <= limit - 1, got


# 300 kB on stdout against a 100 kB cap, then a sleep the timeout ends.
_FLOOD_THEN_SLEEP = "head -c 300000 /dev/zero | tr '\\0' x; sleep 60"
_CUT_TIMEOUT = 2000 * (3 if IN_VM else 1)


@pytest.mark.parametrize("kind", ENGINE_KINDS + ("setup",))
def test_limits_reached_names_the_output_cap_and_the_timeout(kind):
    # "setup": a setup script makes the run a staged one (several steps, one sandbox).
    setup = {"setup_script": "true"} if kind == "setup" else {}
    with _engine_of("cold" if kind == "setup" else kind, max_output_size=100_000) as eng:
        def run(cmd: str, **kw):
            _ready(eng)
            return run_sh(eng, cmd, **setup, **kw)

        r = run("echo ok")
        assert (r.stdout, r.resource_usage.limits_reached) == ("ok", []), r.stderr
        r = run("head -c 300000 /dev/zero | tr '\\0' x")
        assert (r.exit_code, r.truncated) == (0, True), r.stderr
        assert r.resource_usage.limits_reached == ["output"]
        r = run(_FLOOD_THEN_SLEEP, timeout_ms=_CUT_TIMEOUT)
        assert (r.exit_code, r.truncated) == (137, True) and TIMED_OUT in r.stderr, r.stderr
        assert r.resource_usage.limits_reached == ["output", "timeout"]  # a fixed order
        assert r.to_dict()["resourceUsage"]["limitsReached"] == ["output", "timeout"]
        r = run("echo ok")  # a persistent run reports its own, not the session's
        assert (r.stdout, r.resource_usage.limits_reached) == ("ok", []), r.stderr


def test_a_streams_exit_event_carries_the_limits_reached():
    with Isol8(max_output_size=100_000) as eng:
        events = list(eng.execute_stream(cmd=GUARD_SH + _FLOOD_THEN_SLEEP,
                                          timeout_ms=_CUT_TIMEOUT))
        last = events[-1]
        assert (last.type, last.data, last.limits_reached) == ("exit", "137",
                                                               ["output", "timeout"]), events
        assert last.to_dict()["limitsReached"] == ["output", "timeout"]
        # An ordinary stream keeps upstream's exact event shape.
        last = list(eng.execute_stream(cmd="echo ok"))[-1]
        assert last.limits_reached == []
        assert last.to_dict() == {"type": "exit", "data": "0", "phase": "code"}
        # A setup script the timeout ended: the stream's last exit is the setup's.
        last = list(eng.execute_stream(cmd="echo never", setup_script="sleep 60",
                                       timeout_ms=_CUT_TIMEOUT))[-1]
        assert (last.type, last.phase, last.limits_reached) == ("exit", "setup", ["timeout"])


@pytest.mark.skipif(not PIDS_CGROUP,
                    reason="no pids cgroup (v2 pids controller) on this host")
@pytest.mark.parametrize("kind", ENGINE_KINDS)
def test_pids_limit_reached_is_reported_by_the_pids_cgroup(kind):
    with _engine_of(kind, pids_limit=24) as eng:
        _ready(eng)
        r = run_py(eng, THREADS, timeout_ms=60_000 * SLOW)
        assert r.resource_usage.enforced["pids"] in ("cgroup1", "cgroup2")
        _threads_hit_the_limit(r, 24)
        assert r.resource_usage.limits_reached == ["pids"]  # pids.events "max"
        _ready(eng)
        r = run_py(eng, "print('ok')", timeout_ms=60_000 * SLOW)
        assert (r.stdout, r.resource_usage.limits_reached) == ("ok", []), r.stderr


@pytest.mark.skipif(PIDS_CGROUP, reason="pids are a cgroup's here, which reports them "
                                        "(test_pids_limit_reached_is_reported_by_the_pids_cgroup)")
@pytest.mark.parametrize("kind", ENGINE_KINDS)
def test_rlimit_pids_cannot_report_and_never_claims(kind):
    # RLIMIT_NPROC has no counter: a refused clone is an EAGAIN only the program sees. The
    # list must not guess (README "Limits" says so).
    with _engine_of(kind, pids_limit=24) as eng:
        _ready(eng)
        r = run_py(eng, THREADS, timeout_ms=60_000 * SLOW)
    assert r.resource_usage.enforced["pids"] == "rlimit"
    _threads_hit_the_limit(r, 24)
    assert r.resource_usage.limits_reached == []


@pytest.fixture
def rw_host_dir():
    """A host directory the sandbox may write through a read-write mount, in either mode
    (under /var/tmp and world-writable: as root the sandbox is a leased uid that only
    "other" permissions apply to)."""
    with host_tempdir("isol8-limits-", mode=0o777) as path:
        yield path


@pytest.mark.parametrize("mode", ["ephemeral", "persistent"])
def test_a_write_past_the_file_size_limit_on_a_read_write_mount(rw_host_dir, mode):
    # Every tmpfs answers ENOSPC first; a read-write mount is the one place RLIMIT_FSIZE (one
    # page above the largest tmpfs, /dev/shm here) is what stops a file, on the host's disk.
    fsize = max(images.SHM_SIZE, 1 << 20) + 4096
    big = fsize + 2 * 4096
    mount = {"source": str(rw_host_dir), "target": "/sandbox/out", "readonly": False}
    with Isol8(mode=mode, sandbox_size="1m", tmp_size="1m", mounts=[mount]) as eng:
        # The main process dies of SIGXFSZ...
        r = run_sh(eng, f"exec head -c {big} /dev/zero > /sandbox/out/killed")
        assert r.exit_code == 128 + signal.SIGXFSZ, r.stderr
        assert r.resource_usage.limits_reached == ["file_size"]
        # ...or the shell reports that its child did (128 + SIGXFSZ).
        r = run_sh(eng, f"head -c {big} /dev/zero > /sandbox/out/child; exit $?")
        assert r.exit_code == 128 + signal.SIGXFSZ, r.stderr
        assert r.resource_usage.limits_reached == ["file_size"]
        r = run_sh(eng, "head -c 8192 /dev/zero > /sandbox/out/small")
        assert (r.exit_code, r.resource_usage.limits_reached) == (0, []), r.stderr
    for name, size in (("killed", fsize), ("child", fsize), ("small", 8192)):
        assert (rw_host_dir / name).stat().st_size == size, name


# --- cpu ----------------------------------------------------------------------------------

BUSY = """
import json, os, time
t0, c0 = time.monotonic(), time.process_time()
while time.monotonic() - t0 < {seconds}:
    pass
print(json.dumps({{'ratio': (time.process_time() - c0) / (time.monotonic() - t0)}}), flush=True)
print('finished', flush=True)
"""


def test_cpu_limit():
    backend = expected_backends()["cpu"]
    if backend in ("cgroup1", "cgroup2"):
        # A rate: 0.2 of one core over a ~2 s busy loop.
        with Isol8(cpu_limit=0.2) as eng:
            r = run_py(eng, BUSY.format(seconds=2.0), timeout_ms=30_000 * SLOW)
        u = r.resource_usage
        assert r.exit_code == 0, r.stderr
        assert u.enforced["cpu"] == backend
        assert 0.1 <= json.loads(r.stdout.splitlines()[0])["ratio"] <= 0.35, r.stdout
        assert 0.1 <= u.cpu_time_ms / r.duration_ms <= 0.35, (u, r.duration_ms)
        assert 10 <= u.cpu_percent <= 35, u
    else:
        # A budget: cpu_limit x timeout = 0.25 x 8 s = 2 CPU seconds; the 5 s loop must be
        # stopped by it (SIGXCPU, or SIGKILL at the hard limit), well before the timeout.
        assert backend == "rlimit"
        with Isol8(cpu_limit=0.25, timeout_ms=8000) as eng:
            started = time.monotonic()
            r = run_py(eng, BUSY.format(seconds=5.0))
            elapsed = time.monotonic() - started
        assert r.resource_usage.enforced["cpu"] == "rlimit"
        assert r.exit_code in (137, 128 + signal.SIGXCPU), (r.exit_code, r.stderr)
        assert "finished" not in r.stdout and TIMED_OUT not in r.stderr
        assert 1.5 <= elapsed <= 4.5, elapsed
        assert r.resource_usage.cpu_time_ms >= 1500, r.resource_usage


# --- disk and open files ------------------------------------------------------------------

DISK_PROBE = """
import json, os
def fill(path):
    n, err = 0, None
    chunk = b'x' * (1 << 20)
    try:
        with open(path, 'wb', buffering=0) as f:
            while n < (200 << 20):
                n += f.write(chunk)
    except OSError as e:
        err = e.errno
    os.unlink(path)
    return {'bytes': n, 'errno': err}
def size(path):
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize
out = {m: dict(fill(m + '/fill'), size=size(m)) for m in ('/sandbox', '/tmp', '/dev/shm')}
os.mkdir('/sandbox/many')
n, err = 0, None
while n < 20000:
    try:
        open(f'/sandbox/many/{n}', 'x').close()
    except OSError as e:
        err = e.errno
        break
    n += 1
st = os.statvfs('/sandbox')
out['inodes'] = {'files': n, 'errno': err, 'free_bytes': st.f_bavail * st.f_frsize}
print(json.dumps(out))
"""


def _host_free() -> dict[str, int]:
    return {p: os.statvfs(p).f_bavail * os.statvfs(p).f_frsize
            for p in ("/", "/tmp", "/dev/shm") if os.path.exists(p)}


def test_disk_limits_give_enospc_and_spare_the_host():
    before = _host_free()
    with Isol8(sandbox_size="16m", tmp_size="16m") as eng:
        r = run_py(eng, DISK_PROBE, timeout_ms=30_000 * SLOW)
    after = _host_free()
    assert r.exit_code == 0, r.stderr  # the run completes despite every ENOSPC
    got = json.loads(r.stdout)
    for mount, mb in (("/sandbox", 16), ("/tmp", 16), ("/dev/shm", 64)):
        assert got[mount]["size"] == mb << 20, got
        assert got[mount]["errno"] == errno.ENOSPC, got
        assert (mb - 2) << 20 <= got[mount]["bytes"] <= mb << 20, got
    inodes = got["inodes"]
    assert inodes["errno"] == errno.ENOSPC, inodes
    assert 1000 < inodes["files"] < 5000, inodes
    assert inodes["free_bytes"] > 8 << 20, inodes  # the inode cap hit first, not the size
    for path, free in before.items():
        assert abs(after[path] - free) < 8 << 20, (path, free, after[path])


def test_open_files_stop_at_emfile(engine):
    r = run_py(engine, """
import os
fds, err = [], None
while len(fds) < 100000:
    try:
        fds.append(os.open('/dev/null', os.O_RDONLY))
    except OSError as e:
        err = e.errno
        break
print(len(fds), err)
""")
    count, err = r.stdout.split()
    assert int(err) == errno.EMFILE
    assert 1000 < int(count) < 5000


# --- cgroups isol8 creates: cleanup and crash reclaim --------------------------------------

_IDENTITY = re.compile(r"^isol8-([0-9a-f]{8})-(\d+)-(\d+)")


def _cgroup_mounts() -> dict[str, tuple[str, str]]:
    """controller ('' for cgroup2) -> (mount root, mount point)"""
    mounts: dict[str, tuple[str, str]] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, (fstype, _, superopts) = left.split(), right.split()[:3]
            if fstype == "cgroup2":
                mounts.setdefault("", (fields[3], fields[4]))
            elif fstype == "cgroup":
                for opt in superopts.split(","):
                    mounts.setdefault(opt, (fields[3], fields[4]))
    return mounts


def _cgroup_dirs(pid: int | str = "self") -> dict[str, Path]:
    """A process's cgroup directory per hierarchy, keyed 'memory', 'pids', 'cpu' (v1) and
    'unified' (cgroup2)."""
    mounts = _cgroup_mounts()
    dirs: dict[str, Path] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hid, ctrls, path = line.split(":", 2)
        for key in ([""] if hid == "0" else ctrls.split(",")):
            if key in mounts and (key == "" or key in CONTROLLERS):
                root, point = mounts[key]
                rel = path[len(root):] if root != "/" and path.startswith(root) else path
                dirs[key or "unified"] = Path(point + rel)
    return dirs


# The supervisor's cgroups, read before any engine of this process could move it.
SUPERVISOR_CGROUPS = _cgroup_dirs() if os.path.exists("/proc/self/cgroup") else {}


def _isol8_cgroups(depth: int = 4) -> dict[Path, int]:
    """Every cgroup directory isol8 created below the supervisor's cgroups (identity-named
    directories and everything under them), mapped to the owner pid in the name."""
    found: dict[Path, int] = {}

    def walk(d: Path, level: int, owner: int | None) -> None:
        try:
            children = [c for c in d.iterdir() if c.is_dir()]
        except OSError:
            return
        for c in children:
            m = _IDENTITY.match(c.name)
            sub_owner = int(m.group(2)) if m else owner
            if sub_owner is None and c.name.startswith("isol8"):
                sub_owner = -1  # an isol8 cgroup without its owner's identity
            if sub_owner is not None:
                found[c] = sub_owner
            if level < depth:
                walk(c, level + 1, sub_owner)

    for d in set(SUPERVISOR_CGROUPS.values()):
        walk(d, 1, None)
    return found


def _owned_by(pid: int) -> set[Path]:
    return {d for d, owner in _isol8_cgroups().items() if owner == pid}


def _engine_parents(dirs: set[Path]) -> set[Path]:
    """The top identity-named directories: the engine's own parents, not a sandbox's."""
    return {d for d in dirs if _IDENTITY.match(d.name) and d.parent not in dirs}


def _start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def _boot_id8() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8]


_DRIVER = """
import json, os, sys
from isol8 import Isol8
GUARD_PY, GUARD_SH = {guard_py!r}, {guard_sh!r}
eng = Isol8(memory_limit='64m')
eng.start()
print(json.dumps({{'pid': os.getpid()}}), flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == 'stop':
        eng.stop()
        print(json.dumps({{'stopped': True}}), flush=True)
        continue
    if cmd == 'normal':
        r = eng.execute(cmd='echo hi')
    elif cmd == 'oom':
        r = eng.execute(GUARD_PY + "c = []\\nfor _ in range(20): c.append(b'x' * (50 << 20))",
                        runtime='python', timeout_ms=60000)
    elif cmd == 'sleep':  # sleep <head> <tail> <timeout_ms>
        r = eng.execute(cmd=GUARD_SH + f'h={{args[0]}}; t={{args[1]}}; sleep $h$t',
                        timeout_ms=int(args[2]))
    print(json.dumps({{'exit': r.exit_code, 'oom': r.resource_usage.oom,
                      'enforced': r.resource_usage.enforced, 'stderr': r.stderr[-300:]}}),
          flush=True)
"""


class _Driver:
    """An engine in a subprocess, driven line by line over stdin/stdout."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _DRIVER.format(guard_py=GUARD_PY, guard_sh=GUARD_SH)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.pid = self.read()["pid"]
        assert self.pid == self.proc.pid

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self, timeout: float = 60 * SLOW) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "the driver did not answer"
        line = self.proc.stdout.readline()
        assert line, f"the driver died ({self.proc.poll()})"
        return json.loads(line)

    def call(self, line: str) -> dict:
        self.send(line)
        return self.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()


def _sleeper_pid(pattern: str) -> int:
    found = host_processes_matching(pattern)
    assert len(found) == 1, found
    return int(found[0].split(":")[0])


def _procs_in(dirs: set[Path]) -> list[str]:
    procs = []
    for d in dirs:
        with contextlib.suppress(OSError):
            procs += (d / "cgroup.procs").read_text().split()
    return procs


@pytest.mark.root_only
def test_cgroups_are_placed_and_removed_after_every_kind_of_run():
    head, tail = _marker()
    drv = _Driver()
    try:
        got = drv.call("normal")
        assert (got["exit"], got["oom"], got["stderr"]) == (0, False, ""), got
        cgroup_backed = [c for c, b in got["enforced"].items() if b in ("cgroup1", "cgroup2")]
        assert cgroup_backed, got  # root: at least memory and cpu are cgroups
        owned = _owned_by(drv.pid)
        assert owned == _engine_parents(owned), owned  # nothing of the sandbox is left

        got = drv.call("oom")
        assert (got["exit"], got["oom"]) == (137, True), got
        owned = _owned_by(drv.pid)
        assert owned == _engine_parents(owned), owned

        # A run that times out; while it runs, its process sits in an isol8 cgroup of this
        # engine in every hierarchy that enforces a limit (positive control of the scan).
        drv.send(f"sleep {head} {tail} {9000 if IN_VM else 3000}")  # the sleeper's life
        _wait_until(lambda: host_processes_matching(head + tail), 20 * SLOW, "the sleeper")
        sleeper = _cgroup_dirs(_sleeper_pid(head + tail))
        during = _owned_by(drv.pid)
        for key in (cgroup_backed if not IN_VM else ("unified",)):
            assert sleeper[key] in during, (key, sleeper[key], during)
        got = drv.read()
        assert (got["exit"], got["oom"]) == (137, False) and TIMED_OUT in got["stderr"], got
        owned = _owned_by(drv.pid)
        assert owned == _engine_parents(owned), owned

        assert drv.call("stop") == {"stopped": True}
        assert _owned_by(drv.pid) == set()  # stop() removes the engine's own cgroups too
        assert drv.call("normal")["exit"] == 0  # a stopped engine restarts lazily...
        drv.call("stop")
        assert _owned_by(drv.pid) == set()  # ...and cleans up again
    finally:
        drv.kill()
    assert host_processes_matching(head + tail) == []


@pytest.mark.root_only
def test_a_crashed_engines_cgroups_are_reclaimed_but_never_a_live_ones():
    own_before = _owned_by(os.getpid())
    dead, live = _Driver(), _Driver()
    (dh, dt), (lh, lt) = _marker(), _marker()
    reclaimers = []
    try:
        # Both engines are mid-run: their sandboxes' cgroups exist.
        dead.send(f"sleep {dh} {dt} {120_000 * SLOW}")
        live.send(f"sleep {lh} {lt} {120_000 * SLOW}")
        _wait_until(lambda: host_processes_matching(dh + dt), 20 * SLOW, "the dead's sleeper")
        _wait_until(lambda: host_processes_matching(lh + lt), 20 * SLOW, "the live's sleeper")
        dead_dirs, live_dirs = _owned_by(dead.pid), _owned_by(live.pid)
        assert dead_dirs and live_dirs
        for drv, dirs in ((dead, dead_dirs), (live, live_dirs)):
            for d in _engine_parents(dirs):  # the name is the owner's identity
                boot, pid, ticks = _IDENTITY.match(d.name).groups()
                assert (boot, int(pid), int(ticks)) == (_boot_id8(), drv.pid,
                                                        _start_ticks(drv.pid)), d

        dead.kill()  # SIGKILL: nothing of it runs any cleanup
        _wait_until(lambda: not host_processes_matching(dh + dt), 10 * SLOW,
                    "the dead engine's sandbox to go")
        _wait_until(lambda: not _procs_in(dead_dirs), 10 * SLOW, "its cgroups to empty")
        assert _owned_by(dead.pid), "nothing leaked: the reclaim below would prove nothing"

        reclaimer = Isol8()
        reclaimers.append(reclaimer)
        reclaimer.start()
        assert _owned_by(dead.pid) == set()
        assert all(d.is_dir() for d in live_dirs), live_dirs
        assert _owned_by(live.pid) >= live_dirs
        assert host_processes_matching(lh + lt)  # the live engine's run is untouched
        assert _owned_by(os.getpid()) >= own_before  # and so are this process's own

        live.kill()  # now it is dead too: the next start reclaims it
        _wait_until(lambda: not host_processes_matching(lh + lt), 10 * SLOW,
                    "the second sandbox to go")
        _wait_until(lambda: not _procs_in(live_dirs), 10 * SLOW, "its cgroups to empty")
        reclaimer = Isol8()
        reclaimers.append(reclaimer)
        reclaimer.start()
        assert _owned_by(live.pid) == set()
    finally:
        dead.kill()
        live.kill()
        for eng in reclaimers:
            eng.stop()
    assert child_pids() == []
    assert _owned_by(os.getpid()) >= own_before  # stopping an engine spares the others


# --- command line -------------------------------------------------------------------------

def isol8_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "isol8", *args], capture_output=True,
                          text=True, timeout=60 * SLOW)


def test_cli_limit_flags_map_to_the_options():
    code = GUARD_PY + FORK_COUNT + """
chunks = []
for step in range(1, 64):
    chunks.append(b'x' * (16 << 20))
    print(step * 16, flush=True)
"""
    p = isol8_cli("exec", "--memory", "64m", "--pids-limit", "16", "--cpu", "0.5", "--json",
                  "-e", code)
    wire = json.loads(p.stdout)
    assert p.returncode == wire["exitCode"] == 137, (p.returncode, p.stderr, wire["stderr"])
    usage = wire["resourceUsage"]
    assert set(usage) == USAGE_KEYS
    assert usage["oom"] is True and set(usage["enforced"]) == set(CONTROLLERS)
    # Both limits were reached; only a pids cgroup can report the refused forks.
    pids_seen = usage["enforced"]["pids"] in ("cgroup1", "cgroup2")
    assert usage["limitsReached"] == (["pids", "memory"] if pids_seen else ["memory"]), usage
    lines = wire["stdout"].splitlines()
    _assert_fork_bound(json.loads(lines[0]), 16)  # --pids-limit 16, not the default 64
    assert max(int(x) for x in lines[1:]) <= 192, lines  # --memory 64m, not the default 512m


def test_cli_strict_limits():
    p = isol8_cli("exec", "--strict-limits", "--json", "-e", "print(1)")
    soft = soft_controllers()
    if soft:
        assert p.returncode == 1 and p.stdout == "", (p.returncode, p.stdout)
        for name in soft:
            assert name in p.stderr, p.stderr
    else:
        assert p.returncode == 0, p.stderr
        enforced = json.loads(p.stdout)["resourceUsage"]["enforced"]
        assert all(enforced[c] in HARD[c] for c in CONTROLLERS), enforced


def test_cli_bad_limit_value_names_the_option():
    p = isol8_cli("exec", "--cpu", "0", "-e", "print(1)")
    assert p.returncode != 0 and p.stdout == ""
    assert "cpu_limit" in p.stderr or "--cpu" in p.stderr, p.stderr
