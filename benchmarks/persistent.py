#!/usr/bin/env python3
"""Persistent mode: ``execute('print(1)')`` on an ``Isol8(mode="persistent")`` engine whose
sandbox was started once, against bare ``python3 -c 'print(1)'``, in one process.

Each engine is started (and its sandbox made by a first ``execute()``) before the loop and
warmed up; then every round runs each runner once, order rotated per round, so machine noise
spreads evenly. ``bare`` is launched exactly as in ``cold_start.py`` (``os.posix_spawn``,
stdout and stderr on pipes read to EOF, ``waitpid``), with the environment isol8 gives its
sandboxes. When the engine accepts ``repl=True`` (a python process kept alive between
runs), that variant gets its own row; otherwise the row is skipped with a note.

Targets (from the issue): persistent p50 <= 1.1 x bare p50; with ``repl=True``, p50 <= 2 ms.

    python benchmarks/persistent.py                  # 120 samples per runner
    python benchmarks/persistent.py --quick          # 20 samples: a smoke run
    python benchmarks/persistent.py -n 300 --json /tmp/persistent.json --strict
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cold_start import PYTHON, check_output, pct, ratio_ci, spawn_capture  # noqa: E402
from isol8 import Isol8  # noqa: E402
from isol8.errors import InvalidRequest  # noqa: E402
from isol8.runtimes import base_env  # noqa: E402

CODE = "print(1)"
TARGET_RATIO = 1.1
TARGET_REPL_MS = 2.0


class Bench:
    def __init__(self, repl: bool) -> None:
        self.env = base_env()
        self.engines: dict[str, Isol8] = {"persistent": Isol8(mode="persistent")}
        # In-sandbox duration (result.duration_ms: the user process's spawn to its exit
        # report, whole ms) next to each wall time, to split supervisor from sandbox time.
        self.duration_ms: dict[str, list[int]] = {"persistent": []}
        self.repl_note = "not requested (--no-repl)"
        if repl:
            try:
                self.engines["persistent, repl=True"] = Isol8(mode="persistent", repl=True)
                self.duration_ms["persistent, repl=True"] = []
                self.repl_note = ""
            except (TypeError, InvalidRequest) as exc:
                self.repl_note = f"Isol8(mode='persistent', repl=True) is not available: {exc}"
        for name in list(self.engines):
            try:
                self.engines[name].start()
                self.check(name, self.engines[name].execute(CODE, runtime="python"))
            except Exception as exc:  # noqa: BLE001 - a half-landed repl must not stop the rest
                if name == "persistent":
                    raise
                self.engines.pop(name).stop()
                self.duration_ms.pop(name)
                self.repl_note = f"Isol8(mode='persistent', repl=True) failed: {exc!r}"

    @staticmethod
    def check(name: str, result) -> None:
        if result.stdout != "1" or result.exit_code != 0:
            raise SystemExit(f"{name}: expected stdout '1', got {result!r}")

    def bare(self) -> int:
        t0 = time.perf_counter_ns()
        result = spawn_capture(PYTHON, [PYTHON, "-c", CODE], self.env)
        t1 = time.perf_counter_ns()
        check_output("bare", *result)
        return t1 - t0

    def runner(self, name: str) -> Callable[[], int]:
        engine, durations = self.engines[name], self.duration_ms[name]

        def run() -> int:
            t0 = time.perf_counter_ns()
            result = engine.execute(CODE, runtime="python")
            t1 = time.perf_counter_ns()
            self.check(name, result)
            durations.append(result.duration_ms)
            return t1 - t0
        return run

    def close(self) -> None:
        for engine in self.engines.values():
            engine.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--samples", type=int, default=120,
                        help="samples per runner (default 120)")
    parser.add_argument("--quick", action="store_true", help="20 samples: a smoke run")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed rounds first (default 10, 3 with --quick)")
    parser.add_argument("--no-repl", action="store_true", help="skip the repl=True row")
    parser.add_argument("--json", metavar="PATH", help="write every raw sample (ns) there")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a target is missed (default: report only)")
    args = parser.parse_args(argv)
    samples = 20 if args.quick else args.samples
    warmup = args.warmup if args.warmup is not None else (3 if args.quick else 10)
    if samples < 1:
        parser.error("--samples must be positive")

    bench = Bench(repl=not args.no_repl)
    runners: list[tuple[str, Callable[[], int]]] = [("bare", bench.bare)]
    runners += [(name, bench.runner(name)) for name in bench.engines]
    try:
        for _ in range(warmup):
            for _, run in runners:
                run()
        for durations in bench.duration_ms.values():
            durations.clear()

        times: dict[str, list[int]] = {name: [] for name, _ in runners}
        load_before = os.getloadavg()
        gc.collect()
        gc.disable()  # collections happen between rounds, never inside a timed call
        try:
            for i in range(samples):
                k = i % len(runners)
                for name, run in runners[k:] + runners[:k]:
                    times[name].append(run())
                gc.collect()
                if sys.stderr.isatty():
                    print(f"\r{i + 1}/{samples}", end="", file=sys.stderr, flush=True)
        finally:
            gc.enable()
    finally:
        bench.close()
    if sys.stderr.isatty():
        print(file=sys.stderr)

    ok = report(times, bench, samples, warmup, (load_before, os.getloadavg()))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"samples": times, "duration_ms": bench.duration_ms}, indent=1))
    return 1 if args.strict and not ok else 0


def report(times: dict[str, list[int]], bench: Bench, samples: int, warmup: int,
           load: tuple[tuple[float, ...], tuple[float, ...]]) -> bool:
    uname = platform.uname()
    version = subprocess.run([PYTHON, "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True).stdout.strip()
    print(f"# isol8 persistent mode: {CODE!r}, {samples} samples per runner "
          f"(+{warmup} warm-up rounds), order rotated per round")
    print(f"\nhost: {uname.system} {uname.release} {uname.machine}, {os.cpu_count()} CPUs, "
          f"{'root' if os.geteuid() == 0 else 'rootless'}, {PYTHON} {version}, supervisor "
          f"{sys.executable} {platform.python_version()}; 1-min load average "
          f"{load[0][0]:.2f} before, {load[1][0]:.2f} after\n")
    bare_p50 = pct(times["bare"], 0.5)
    print("| runner | p50 ms | p90 ms | min ms | p50 / bare p50 | p50 - bare p50 "
          "| duration_ms p50 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, values in times.items():
        p50 = pct(values, 0.5)
        durations = bench.duration_ms.get(name)
        inside = f"{pct(durations, 0.5) * 1e6:.0f}" if durations else "-"
        label = "bare `python3 -c`" if name == "bare" else f"isol8 {name}"
        print(f"| {label} | {p50:.2f} | {pct(values, 0.9):.2f} | {min(values) / 1e6:.2f} "
              f"| {p50 / bare_p50:.2f}x | {p50 - bare_p50:+.2f} ms | {inside} |")
    if bench.repl_note:
        print(f"\nrepl=True row skipped: {bench.repl_note}")

    ratio = pct(times["persistent"], 0.5) / bare_p50
    low, high = ratio_ci(times["persistent"], times["bare"])
    ok = ratio <= TARGET_RATIO
    print("\n| target | measured | result |")
    print("| --- | ---: | --- |")
    print(f"| persistent p50 <= {TARGET_RATIO}x bare python3 p50 | {ratio:.2f}x (95% CI "
          f"{low:.2f}-{high:.2f}) | {'PASS' if ok else 'FAIL'} |")
    repl = times.get("persistent, repl=True")
    if repl is not None:
        repl_p50 = pct(repl, 0.5)
        ok = ok and repl_p50 <= TARGET_REPL_MS
        print(f"| persistent repl=True p50 <= {TARGET_REPL_MS:.0f} ms | {repl_p50:.2f} ms "
              f"| {'PASS' if repl_p50 <= TARGET_REPL_MS else 'FAIL'} |")
    else:
        print(f"| persistent repl=True p50 <= {TARGET_REPL_MS:.0f} ms | not measured | SKIP |")
    return ok


if __name__ == "__main__":
    sys.exit(main())
