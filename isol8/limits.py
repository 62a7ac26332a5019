"""Resource limits: which backend enforces each one, chosen per controller, and what a
sandbox is told to apply.

Backends, strongest first (per controller, never per host: a hybrid host mixes them):
``cgroup2``  the engine's v2 cgroup, where the controller is delegated to it;
``cgroup1``  a v1 hierarchy, with the engine's cgroups under the supervisor's own;
``rlimit``   pids: RLIMIT_NPROC (counted per user namespace, so per sandbox), preferred
             to v1 (see v1_wanted);
             cpu: RLIMIT_CPU, a budget of cpu_limit x timeout CPU-seconds per process, not a
             rate (a process over it gets SIGXCPU, then SIGKILL);
``watchdog`` memory: the sandbox's init sums its processes' anonymous and shared memory,
             its tmpfs usage, SysV objects and socket buffers, every 10 ms while anything
             may grow and cheaply otherwise (csrc/watchdog.c), and ends the sandbox above
             the limit (best effort); pipe buffers it cannot see are bounded by fewer open
             files (open_files).
RLIMIT_AS is never used as a memory limit: it breaks node (V8 reserves address space).

Which limits ended or cut a run, as far as the backend can see it (``limits_reached``):
"pids" from pids.events, so only where a cgroup enforces pids (RLIMIT_NPROC has no
counter: a refused fork is an EAGAIN only the program sees); "memory" an OOM kill (any
backend); "output" a stream past max_output_size; "file_size" a run killed by SIGXFSZ;
"timeout" the deadline.
"""

from __future__ import annotations

import math
import resource
import signal
from dataclasses import dataclass

from .errors import Isol8Error

HARD = {"memory": ("cgroup2", "cgroup1"), "pids": ("cgroup2", "cgroup1", "rlimit"),
        "cpu": ("cgroup2", "cgroup1")}
FALLBACK = {"memory": "watchdog", "pids": "rlimit", "cpu": "rlimit"}
OPEN_FILES = 4096
# Under the watchdog: what one pipe can hold once its user is past fs.pipe-user-pages-soft
# (PIPE_MIN_DEF_BUFFERS, 2 pages), and the fewest open files a sandbox gets (the common
# default soft limit is 1024; a runtime needs a few dozen).
PIPE_MIN_BYTES = 2 * 4096
WATCHDOG_MIN_OPEN_FILES = 256
REACHED_ORDER = ("pids", "memory", "output", "file_size", "timeout")


class LimitsUnavailable(Isol8Error):
    """``strict_limits=True`` and a limit cannot be enforced by a hard backend here."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    memory: int
    cpu: float
    pids: int
    strict: bool = False


def v1_wanted(nproc_applies: bool) -> tuple[str, ...]:
    """The controllers worth a v1 cgroup. Not pids when RLIMIT_NPROC applies: it caps the
    tasks of the sandbox's uid in its own user namespace, exactly what pids.max would, for
    free, while every v1 cgroup.procs write costs milliseconds on the execute() path. It does
    not apply to host uid 0 (the kernel exempts the initial root user)."""
    return ("memory", "cpu") if nproc_applies else ("memory", "pids", "cpu")


def enforcement(limits: Limits, cgroup_backend, nproc_applies: bool) -> dict[str, str | None]:
    """The backend of each controller: v2 where the engine has it, then RLIMIT_NPROC for
    pids, then v1, then the best-effort fallbacks.

    ``cgroup_backend(controller)`` says "cgroup2", "cgroup1" or None.
    """
    chosen: dict[str, str | None] = {}
    for c in ("memory", "pids", "cpu"):
        backend = cgroup_backend(c)
        if c == "pids" and backend != "cgroup2" and nproc_applies:
            backend = "rlimit"
        chosen[c] = backend or (FALLBACK[c] if c != "pids" or nproc_applies else None)
    if limits.strict:
        soft = [f"{c} ({b or 'none'})" for c, b in chosen.items() if b not in HARD[c]]
        if soft:
            raise LimitsUnavailable(
                "strict_limits: no hard enforcement here for " + ", ".join(soft)
                + "; these need a writable cgroup (run as root, or give isol8 a delegated "
                  "cgroup v2 subtree: cgroup_parent / ISOL8_CGROUP_PARENT; see 'isol8 doctor')")
    return chosen


def rlimits(limits: Limits, chosen: dict[str, str | None], *, timeout_ms: int,
            max_file: int, cpu_budget: bool = True) -> tuple[tuple[int, int, int], ...]:
    """The rlimits one sandbox gets: always core, open files and file size; pids and CPU
    seconds only where no cgroup enforces them.

    ``cpu_budget=False`` (a REPL's sandbox): no CPU-seconds budget. RLIMIT_CPU counts a
    process's CPU time since it started, and a REPL's interpreter lives for the session:
    a budget of one timeout's worth would kill it once its cells had used that much in
    all. Each cell's timeout still holds."""
    nofile = open_files(limits, chosen)
    out = [core_limit(), (resource.RLIMIT_NOFILE, nofile, nofile),
           (resource.RLIMIT_FSIZE, max_file, max_file)]
    if chosen["pids"] == "rlimit":
        out.append((resource.RLIMIT_NPROC, limits.pids, limits.pids))
    if chosen["cpu"] == "rlimit" and cpu_budget:
        budget = max(1, math.ceil(limits.cpu * timeout_ms / 1000))
        out.append((resource.RLIMIT_CPU, budget, budget + 1))
    return tuple(out)


def open_files(limits: Limits, chosen: dict[str, str | None]) -> int:
    """RLIMIT_NOFILE for the sandbox's processes, the init among them.

    A memory cgroup charges pipe buffers to the sandbox; the watchdog cannot see them: a
    pipe's pages are the kernel's, mapped by no process and charged only to the uid's pipe
    quota (fs/pipe.c: up to fs.pipe-user-pages-soft, 64 MiB by default, pipes may hold
    1 MiB each; past it every new pipe holds 2 pages). So under the watchdog the open files
    are cut until the pipes every process could hold, one fd each (the write end closed
    once full), add up to about the memory limit beyond that quota: memory / (8 KiB x
    (pids + 1)), between 256 and the usual 4096 (1008 for the defaults)."""
    if chosen.get("memory") != "watchdog":
        return OPEN_FILES
    fit = limits.memory // (PIPE_MIN_BYTES * (limits.pids + 1))
    return max(WATCHDOG_MIN_OPEN_FILES, min(OPEN_FILES, fit))


def core_limit() -> tuple[int, int, int]:
    """RLIMIT_CORE of 1 byte, soft and hard: no core file (one needs a page), and, unlike 0,
    no crash handed to a pipe ``core_pattern`` (fs/coredump.c skips the helper only at
    exactly 1; at 0 the host's helper, root in the host's namespaces, gets the sandbox's
    memory). The seccomp policy keeps user code from lowering it (isol8.seccomp). Raising a
    hard limit needs CAP_SYS_RESOURCE in the initial namespace, so under a supervisor whose
    hard limit is 0 (a CIS-hardened login) it stays 0, and a pipe pattern still gets crashes."""
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    core = 1 if hard == resource.RLIM_INFINITY or hard >= 1 else 0
    return (resource.RLIMIT_CORE, core, core)


def killed_by_file_size(exit_code: int | None, signo: int | None) -> bool:
    """The run's process died of SIGXFSZ (a write past RLIMIT_FSIZE: only a read-write
    mount lets a file grow that far, every tmpfs answers ENOSPC first), or exited 128+25,
    how a shell reports a child it ran that died so. A program that ignores SIGXFSZ
    (CPython does) gets EFBIG instead, which only it sees; so does a process the run's
    main one reaps itself: the init sees only the processes it reaps."""
    return signo == signal.SIGXFSZ or exit_code == 128 + signal.SIGXFSZ


def reached(*, pids: bool, memory: bool, output: bool, file_size: bool,
            timeout: bool) -> list[str]:
    """The names of the limits a run reached, in REACHED_ORDER (a stable wire form)."""
    hit = {"pids": pids, "memory": memory, "output": output, "file_size": file_size,
           "timeout": timeout}
    return [name for name in REACHED_ORDER if hit[name]]
