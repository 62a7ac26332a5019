#!/usr/bin/env python3
"""The memory watchdog's cost: CPU time the init of an idle sandbox spends watching, and how
far past the limit a fast allocator gets before the watchdog kills it.

Where no memory cgroup is available (rootless on a hybrid cgroup v1 host, or a v2 host without
a delegated subtree), each sandbox's init polls its processes' memory (isol8.limits,
"watchdog"). An agent host keeps many sandboxes open and mostly idle, so what an idle one costs
decides how many a machine can hold. Only meaningful where the watchdog is the memory backend:
as root (or with a delegated cgroup) the script says so and exits.

Idle rows: ``--sandboxes`` sandboxes of one kind are made and left alone; the CPU time of each
init (``/proc/<pid>/schedstat``: nanoseconds on the CPU, not the 10 ms ticks of ``stat``) is
read at the start and the end of a ``--window`` of seconds, and reported as a share of one
core per sandbox, and for fifty such sandboxes.

  persistent idle       a session after ``execute(cmd="true")``: the init alone
  persistent + zygote   after a Python run: the next run's interpreter waits, asleep
  persistent + 20 bg    a run left 20 ``sleep`` processes in the background
  pooled (python)       the warm pool's sandboxes: a Python zygote each, waiting for code

Kill rows (interleaved rounds, order rotated per round, as every benchmark here): a run maps
and touches 4 GiB with one ``mmap(MAP_POPULATE)`` (the fastest allocation there is: the kernel
faults every page in one call) under ``memory_limit=128m``; the row reports the usage the
watchdog saw when it killed (``peak_memory_mb``) and the run's duration. ``fresh`` runs it in a
new sandbox, as soon as the run starts; ``after sleeping`` sleeps 1.5 s first, so the watchdog
has gone quiet within the run and the one long system call is seen only by its glances;
``zygote after idle`` hands it to a session's waiting interpreter after the session sat idle
for a second (the init is not told: the code goes straight to the interpreter).

Targets: an idle sandbox's init uses <= 0.2% of a core (fifty of them <= 0.1 core); every
allocation is killed and reported as OOM, with the watchdog's reading <= 1 GiB.

    python benchmarks/watchdog_idle.py                 # 10 sandboxes per kind, 10 s windows
    python benchmarks/watchdog_idle.py --quick         # a smoke run
    python benchmarks/watchdog_idle.py --sandboxes 50 --window 30 --json /tmp/wd.json
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

import harness as h  # first: it puts the repo root on sys.path (isol8 need not be installed)
from isol8 import ExecutionResult, Isol8

LIMIT = "128m"
ALLOC_BYTES = 4 << 30
# One mmap(MAP_POPULATE) of private anonymous memory: the kernel faults every page in before
# the call returns, with nothing between the pages for the program to do.
ALLOCATE = f"""
import mmap
m = mmap.mmap(-1, {ALLOC_BYTES}, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
print('survived', flush=True)
"""
TARGET_IDLE = 0.2  # % of one core per idle sandbox
TARGET_PEAK_MB = 1024
BACKGROUND = "for i in $(seq 20); do sleep 100000 & done"
KILL_ROWS = ("fresh", "after sleeping", "zygote after idle")


def inits() -> set[int]:
    """Host pids of the inits of this process's sandboxes: the children of every
    isol8-helper this process spawned."""
    me, found = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/comm") as fh:
                comm = fh.read().strip()
            if int(fields[1]) != me or comm != "isol8-helper":
                continue
            with open(f"/proc/{entry}/task/{entry}/children") as fh:
                found.update(int(pid) for pid in fh.read().split())
        except (OSError, ValueError, IndexError):
            continue
    return found


def cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as fh:
        return int(fh.read().split()[0])


def processes_in(pid: int) -> int:
    """How many processes the sandbox of this init holds, the init included."""
    count, todo = 0, [pid]
    while todo:
        current = todo.pop()
        count += 1
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    todo.extend(int(child) for child in fh.read().split())
        except OSError:
            continue
    return count


def idle_cost(make: Callable[[], list[Isol8]], window: float) -> tuple[list[float], int]:
    """(% of a core each init used over ``window``, processes per sandbox) for the sandboxes
    ``make()`` sets up; the engines are stopped afterwards."""
    before = inits()
    engines = make()
    try:
        time.sleep(1.0)  # setup's own work and the zygotes' start are over
        pids = sorted(inits() - before)
        start = {pid: cpu_ns(pid) for pid in pids}
        t0 = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - t0
        shares = [100 * (cpu_ns(pid) - start[pid]) / 1e9 / elapsed for pid in pids]
        return shares, max((processes_in(pid) for pid in pids), default=0)
    finally:
        for engine in engines:
            engine.stop()


def sessions(n: int, first: Callable[[Isol8], object]) -> Callable[[], list[Isol8]]:
    def make() -> list[Isol8]:
        engines = []
        for _ in range(n):
            engine = Isol8(mode="persistent")
            engines.append(engine)
            first(engine)
        return engines
    return make


def pooled(n: int) -> list[Isol8]:
    engine = Isol8(prewarm={"runtimes": ["python"]}, pool_size=n)
    engine.start()
    return [engine]


class Kill:
    """The allocator's runs; the watchdog's readings and the durations go to ``peaks_mb``
    and ``durations_ms``, per row."""

    def __init__(self) -> None:
        self.peaks_mb: dict[str, list[float]] = {name: [] for name in KILL_ROWS}
        self.durations_ms: dict[str, list[int]] = {name: [] for name in KILL_ROWS}
        self.failures: list[str] = []
        self.fresh_engine = Isol8(memory_limit=LIMIT)

    def fresh(self) -> int:
        return self._record("fresh", lambda: self.fresh_engine.execute(ALLOCATE))

    def after_sleeping(self) -> int:
        code = "import time\ntime.sleep(1.5)\n" + ALLOCATE
        return self._record("after sleeping", lambda: self.fresh_engine.execute(code))

    def zygote(self) -> int:
        with Isol8(mode="persistent", memory_limit=LIMIT) as engine:
            engine.execute("print(1)")  # the next Python run's zygote starts after this one
            time.sleep(1.0)
            return self._record("zygote after idle", lambda: engine.execute(ALLOCATE))

    def _record(self, name: str, call: Callable[[], ExecutionResult]) -> int:
        ns, result = h.timed(call)
        usage = result.resource_usage
        if result.exit_code != 137 or not usage.oom:
            self.failures.append(f"{name}: exit {result.exit_code}, oom {usage.oom}, "
                                 f"stdout {result.stdout[:80]!r}")
        self.peaks_mb[name].append(usage.peak_memory_mb or 0.0)
        self.durations_ms[name].append(result.duration_ms)
        return ns

    def clear(self) -> None:
        for values in [*self.peaks_mb.values(), *self.durations_ms.values()]:
            values.clear()
        self.failures.clear()

    def close(self) -> None:
        self.fresh_engine.stop()


def main(argv: list[str] | None = None) -> int:
    parser = h.BenchParser(__doc__, warmup=2, quick_warmup=1, samples=20, quick=5,
                           unit="allocations", json_what="the shares and readings")
    parser.add_argument("--sandboxes", type=int, default=10,
                        help="sandboxes per idle row (default 10; --quick: 3)")
    parser.add_argument("--window", type=float, default=10.0,
                        help="seconds each idle row is measured (default 10; --quick: 3)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sandboxes, args.window = 3, 3.0

    with Isol8() as probe:
        backend = probe.execute(cmd="true").resource_usage.enforced["memory"]
    if backend != "watchdog":
        print(f"memory is enforced by {backend} here, not the watchdog: nothing to measure "
              "(run this as an unprivileged user on a host without a delegated cgroup)")
        return 0

    n = args.sandboxes
    rows = {
        "persistent idle": sessions(n, lambda e: e.execute(cmd="true")),
        "persistent + zygote": sessions(n, lambda e: e.execute("print(1)")),
        "persistent + 20 bg": sessions(n, lambda e: e.execute(cmd=BACKGROUND)),
        "pooled (python)": lambda: pooled(n),
    }
    idle: dict[str, tuple[list[float], int]] = {}
    load_before = os.getloadavg()[0]
    for name, make in rows.items():
        idle[name] = idle_cost(make, args.window)

    kill = Kill()
    runners = [("fresh", kill.fresh), ("after sleeping", kill.after_sleeping),
               ("zygote after idle", kill.zygote)]
    times, _ = h.run_rounds(runners, args, after_warmup=kill.clear, close=kill.close)
    load = (load_before, os.getloadavg()[0])
    ok = report(idle, kill, args, load)
    return h.finish(args, ok, {"idle_percent": {k: v[0] for k, v in idle.items()},
                               "peak_mb": kill.peaks_mb, "duration_ms": kill.durations_ms,
                               "wall_ns": times})


def quantile(values: list, q: float) -> float:
    """h.pct's interpolation, in the values' own unit (h.pct reports ns as ms)."""
    return h.pct(values, q) * 1e6


def report(idle: dict[str, tuple[list[float], int]], kill: Kill, args,
           load: tuple[float, float]) -> bool:
    h.print_header("memory watchdog: ", args, load, unit="allocations",
                   extra=f"; idle rows: {args.sandboxes} sandboxes, {args.window:.0f} s each")
    rows, worst = [], 0.0
    for name, (shares, procs) in idle.items():
        mean = sum(shares) / len(shares) if shares else 0.0
        worst = max(worst, mean)
        rows.append((name, str(len(shares)), str(procs), f"{mean:.3f}%",
                     f"{max(shares, default=0.0):.3f}%", f"{mean * 50 / 100:.3f}"))
    h.print_table(("idle sandboxes", "sandboxes", "processes each", "init CPU, mean",
                   "init CPU, max", "cores for 50"), rows)
    print()
    rows = []
    for name, peaks in kill.peaks_mb.items():
        durations = kill.durations_ms[name]
        rows.append((name, str(len(peaks)), f"{quantile(peaks, 0.5):.0f}",
                     f"{quantile(peaks, 0.9):.0f}", f"{max(peaks):.0f}",
                     f"{quantile(durations, 0.5):.0f}"))
    h.print_table((f"4 GiB MAP_POPULATE, limit {LIMIT}", "runs", "watchdog MB p50",
                   "p90", "max", "duration_ms p50"), rows)
    for failure in kill.failures:
        print(f"\nnot killed as OOM: {failure}")
    peak = max(max(p) for p in kill.peaks_mb.values())
    idle_ok, kill_ok = worst <= TARGET_IDLE, not kill.failures and peak <= TARGET_PEAK_MB
    h.print_targets([
        (f"idle sandbox init CPU <= {TARGET_IDLE}% of a core (worst row's mean)",
         f"{worst:.3f}%", h.verdict(idle_ok)),
        (f"every allocation killed as OOM, watchdog reading <= {TARGET_PEAK_MB} MB",
         f"{len(kill.failures)} not killed, max {peak:.0f} MB", h.verdict(kill_ok)),
    ])
    return idle_ok and kill_ok


if __name__ == "__main__":
    sys.exit(main())
