#!/usr/bin/env python3
"""Warm pool: ``execute('print(1)')`` served by a pooled sandbox whose Python zygote is
already running, against bare ``python3 -c 'print(1)'``, in one process.

Rows, every one timed in the same rotation (order rotated per round, so machine noise
spreads evenly over them):

  bare        /usr/bin/python3 -c 'print(1)', launched exactly as in cold_start.py
              (os.posix_spawn, stdout and stderr on pipes read to EOF, waitpid): the baseline
  warm        Isol8(prewarm={"runtimes": ["python"]}).execute("print(1)"): each call takes
              one pooled sandbox (fully set up, a Python zygote inside waiting for code),
              runs the code in it and destroys it; a background thread makes the next one
              once the run is over
  cold        Isol8().execute("print(1)") on a second engine, without prewarm: a fresh
              sandbox and interpreter per call, as in cold_start.py
  prestarted  a reference, when bubblewrap is installed: python3 started ahead of time
              (untimed) inside bwrap with cold_start.py's arguments, blocked reading its
              stdin pipe; timed from writing the code (and closing the pipe) to its output
              read to EOF and bwrap reaped. It exec()s the code and exits: what a
              pre-started interpreter costs without isol8's supervisor, seccomp or limits.

Before every timed call (untimed): the warm engine's refill is awaited
(``_pool.wait_ready``) and the harness sleeps a few ms, so each warm sample is a pool hit
and no row is timed while an earlier call's refill (a helper spawn and an interpreter
start) is still running. The pool starts a replacement only when the run is over
(``release()``), so the refill does not overlap the warm call that triggered it. A pool hit is checked twice: after warm-up, a zygote run's
``/proc/self/cmdline`` must show ``-c`` (a cold run shows ``/sandbox/main.py``); and every
timed warm call must have been served by ``take("python")`` (counted by a pass-through
wrapper around it).

Target (from the issue): warm p50 <= 0.5 x bare python3 p50.

    python benchmarks/warm_pool.py                  # 120 samples per runner (make bench)
    python benchmarks/warm_pool.py --quick          # 20 samples: a smoke run
    python benchmarks/warm_pool.py -n 300 --json /tmp/warm_pool.json --strict
"""

from __future__ import annotations

import os
import sys
import time

import harness as h  # first: it puts the repo root on sys.path (isol8 need not be installed)
from isol8 import Isol8
from isol8.runtimes import base_env

CODE = h.PRINT1
ARGV1 = "print(open('/proc/self/cmdline').read().split('\\0')[1])"  # '-c' in a zygote
TARGET_RATIO = 0.5
SETTLE_S = 0.005  # after the refill: its thread's last wake-ups are over
READY_FD = 3
# The pre-started interpreter: says it is ready on fd 3, reads the code to EOF, runs it.
WAITER = """\
import os, sys
os.write(3, b"R")
os.close(3)
source = sys.stdin.buffer.read()
exec(compile(source, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"""


class Bench:
    def __init__(self, bwrap: str | None) -> None:
        self.env = base_env()
        self.bwrap = bwrap
        self.warm_engine = Isol8(prewarm={"runtimes": ["python"]})
        self.warm_engine.start()  # returns once the pool is full
        self.cold_engine = Isol8()
        self.cold_engine.start()  # policy and mount plan compiled outside the loop
        pool = self.warm_engine._pool
        if pool is None:
            raise SystemExit("warm: Isol8(prewarm=...) made no warm pool")
        self.pool = pool
        self.hit: bool | None = None
        self.misses = 0
        take = pool.take

        def counting_take(kind: str):  # pass-through: records whether a zygote served it
            entry = take(kind)
            if kind == "python":
                self.hit = entry is not None
            return entry
        pool.take = counting_take  # type: ignore[method-assign]

    def settle(self) -> None:
        """Untimed, before every timed call: the pool full again, its thread quiet."""
        if not self.pool.wait_ready(30):
            raise SystemExit("warm: the pool did not refill within 30 s")
        time.sleep(SETTLE_S)

    def verify(self) -> None:
        """After the warm-up: checks that warm runs are zygote runs and cold runs are not,
        and zeroes the miss count for the timed rounds."""
        self.settle()
        got = self.warm_engine.execute(ARGV1).stdout.strip()
        if got != "-c":
            raise SystemExit(f"warm: the run was not served by a pooled Python zygote "
                             f"(/proc/self/cmdline argv[1] is {got!r}, expected '-c'): "
                             "every 'warm' sample would be a cold run")
        got = self.cold_engine.execute(ARGV1).stdout.strip()
        if got == "-c":
            raise SystemExit("cold: the run was served by a zygote; the cold row would be warm")
        self.misses = 0

    def bare(self) -> int:
        self.settle()
        return h.bare_print1(self.env)

    def warm(self) -> int:
        self.settle()
        self.hit = None
        ns, result = h.timed(self.warm_engine.execute, CODE)
        h.check_result("warm", result)
        if not self.hit:
            self.misses += 1
        return ns

    def cold(self) -> int:
        self.settle()
        ns, result = h.timed(self.cold_engine.execute, CODE)
        h.check_result("cold", result)
        return ns

    def prestarted(self) -> int:
        assert self.bwrap is not None
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        argv = [self.bwrap, *h.BWRAP_ARGS, h.PYTHON, "-c", WAITER]
        try:
            pid = os.posix_spawn(self.bwrap, argv, self.env, file_actions=[
                (os.POSIX_SPAWN_DUP2, in_r, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
                (os.POSIX_SPAWN_DUP2, ready_w, READY_FD),
            ])
        finally:
            for fd in (in_r, out_w, err_w, ready_w):
                os.close(fd)
        try:
            said = os.read(ready_r, 1)  # untimed: the interpreter is up and waiting
        finally:
            os.close(ready_r)
        if said != b"R":
            os.close(in_w)
            rc, out, err = h.read_and_reap(pid, out_r, err_r)
            raise SystemExit(f"prestarted: python in bwrap did not start (exit {rc}, "
                             f"stdout {out[:200]!r}, stderr {err[:500]!r})")
        self.settle()
        t0 = time.perf_counter_ns()
        try:
            os.write(in_w, CODE.encode())
        finally:
            os.close(in_w)
        result = h.read_and_reap(pid, out_r, err_r)
        t1 = time.perf_counter_ns()
        h.check_output("prestarted", *result)
        return t1 - t0

    def close(self) -> None:
        self.warm_engine.stop()
        self.cold_engine.stop()


LABELS = {
    "bare": "bare `python3 -c 'print(1)'`",
    "warm": "isol8 warm pool (zygote)",
    "cold": "isol8 cold ephemeral",
    "prestarted": "pre-started python3 in bwrap",
}


def main(argv: list[str] | None = None) -> int:
    parser = h.BenchParser(__doc__, warmup=10, quick_warmup=3)
    parser.add_argument("--no-bwrap", action="store_true",
                        help="skip the pre-started python in bubblewrap row")
    args = parser.parse_args(argv)

    bwrap = None if args.no_bwrap else h.ensure_bwrap(install=False)
    bench = Bench(bwrap)
    runners: list[tuple[str, h.Runner]] = [
        ("bare", bench.bare), ("warm", bench.warm), ("cold", bench.cold)]
    if bwrap:
        runners.append(("prestarted", bench.prestarted))
    times, load = h.run_rounds(runners, args, after_warmup=bench.verify, close=bench.close)
    return h.finish(args, report(times, bench, args, load),
                    {"samples": times, "pool_misses": bench.misses})


def report(times: dict[str, list[int]], bench: Bench, args, load: tuple[float, float]) -> bool:
    h.print_header(f"warm pool: {CODE!r}, ", args, load)
    bare = times["bare"]
    bare_p50 = h.pct(bare, 0.5)
    rows = []
    for name, values in times.items():
        p50 = h.pct(values, 0.5)
        ratio = f"{p50 / bare_p50:.2f}x"
        if name != "bare":
            low, high = h.ratio_ci(values, bare)
            ratio += f" ({low:.2f}-{high:.2f})"
        rows.append((LABELS[name], f"{p50:.2f}", f"{h.pct(values, 0.9):.2f}",
                     f"{min(values) / 1e6:.2f}", ratio, f"{p50 - bare_p50:+.2f} ms"))
    h.print_table(("runner", "p50 ms", "p90 ms", "min ms", "p50 / bare p50 (95% CI)",
                   "p50 - bare p50"), rows)
    if "prestarted" not in times:
        print("\npre-started python in bwrap: skipped (bubblewrap not installed, or --no-bwrap)")
    hits = len(times["warm"]) - bench.misses
    print(f"\npool hits: {hits}/{len(times['warm'])} timed warm samples were served by a "
          "pooled Python zygote")

    ratio = h.pct(times["warm"], 0.5) / bare_p50
    low, high = h.ratio_ci(times["warm"], bare)
    ok = ratio <= TARGET_RATIO and bench.misses == 0
    h.print_targets([(f"warm pool p50 <= {TARGET_RATIO}x bare python3 p50",
                      f"{ratio:.2f}x (95% CI {low:.2f}-{high:.2f})", h.verdict(ok))])
    return ok


if __name__ == "__main__":
    sys.exit(main())
