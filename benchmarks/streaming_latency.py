#!/usr/bin/env python3
"""Streaming latency: how long a line written by sandboxed code takes to reach the caller of
``Isol8().execute_stream()``, against the same program run bare with its stdout on a pipe.

The program writes lines 20 ms apart, each carrying the ``CLOCK_MONOTONIC`` time
(``time.monotonic_ns()``) taken just before its write, and flushes each. There is no time
namespace, so the sandbox reads the host's clock: the caller takes ``time.monotonic_ns()``
when the event (or pipe read) holding the line's end arrives, and latency = arrival -
written. Runs of both runners are interleaved in one long-lived process, order rotated per
round. Target (from the issue): a chunk reaches the caller within 50 ms of being written
(PASS when the worst line of the whole run does).

    python benchmarks/streaming_latency.py              # 120 runs per runner, 10 lines each
    python benchmarks/streaming_latency.py --quick      # 20 runs: a smoke run
    python benchmarks/streaming_latency.py -n 300 --lines 20 --json /tmp/stream.json --strict
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

from isol8 import Isol8  # noqa: E402
from isol8.runtimes import base_env  # noqa: E402

PYTHON = "/usr/bin/python3"
TARGET_MS = 50.0
PROGRAM = """\
import sys, time
for i in range({lines}):
    if i:
        time.sleep({interval})
    sys.stdout.write(f"{{i}} {{time.monotonic_ns()}}\\n")
    sys.stdout.flush()
"""


class Lines:
    """Splits a stream of text into lines; each complete line is stamped with the arrival
    time of the chunk that ended it and its latency (arrival - the time it carries)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.partial = ""
        self.latencies: list[int] = []
        self.index = 0

    def feed(self, text: str, arrived: int) -> None:
        text = self.partial + text
        *complete, self.partial = text.split("\n")
        for line in complete:
            number, written = line.split()
            if int(number) != self.index:
                raise SystemExit(f"line {self.index} expected, got {line!r}")
            self.index += 1
            self.latencies.append(arrived - int(written))

    def check(self, name: str, exit_info: str) -> list[int]:
        if self.index != self.expected or self.partial:
            raise SystemExit(f"{name}: {self.index} of {self.expected} lines arrived "
                             f"(partial {self.partial!r}, {exit_info})")
        return self.latencies


class Bench:
    def __init__(self, lines: int, interval_ms: float) -> None:
        self.lines = lines
        self.code = PROGRAM.format(lines=lines, interval=interval_ms / 1000)
        self.env = base_env()  # the environment isol8 gives its sandboxes
        self.engine = Isol8(mode="ephemeral")
        self.engine.start()  # the policy and the mount plan are compiled outside the loop
        self.first: dict[str, list[int]] = {"bare": [], "isol8": []}  # line 0 of each run

    def bare(self) -> list[int]:
        """subprocess.Popen, stdout on a pipe read line by line."""
        lines = Lines(self.lines)
        with subprocess.Popen([PYTHON, "-c", self.code], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env=self.env) as proc:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                lines.feed(raw.decode(), time.monotonic_ns())
        self.first["bare"].append(lines.latencies[0] if lines.latencies else 0)
        return lines.check("bare", f"exit {proc.returncode}")

    def isol8(self) -> list[int]:
        lines = Lines(self.lines)
        exit_code = None
        stderr = []
        for event in self.engine.execute_stream(self.code, runtime="python"):
            arrived = time.monotonic_ns()
            if event.type == "stdout":
                lines.feed(event.data, arrived)
            elif event.type == "stderr":
                stderr.append(event.data)
            elif event.type == "exit":
                exit_code = event.data
        if exit_code != "0":
            raise SystemExit(f"isol8: exit {exit_code}, stderr {''.join(stderr)[:500]!r}")
        self.first["isol8"].append(lines.latencies[0] if lines.latencies else 0)
        return lines.check("isol8", f"exit {exit_code}")

    def close(self) -> None:
        self.engine.stop()


def pct(values: list[int], q: float) -> float:
    """Percentile by linear interpolation between order statistics, in ms."""
    data = sorted(values)
    if len(data) == 1:
        return data[0] / 1e6
    pos = (len(data) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return (data[lo] + (data[hi] - data[lo]) * (pos - lo)) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--samples", type=int, default=120,
                        help="runs per runner (default 120); each gives --lines latencies")
    parser.add_argument("--quick", action="store_true", help="20 runs: a smoke run")
    parser.add_argument("--lines", type=int, default=10, help="lines per run (default 10)")
    parser.add_argument("--interval-ms", type=float, default=20.0,
                        help="sleep between two lines (default 20)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed rounds first (default 3, 1 with --quick)")
    parser.add_argument("--json", metavar="PATH", help="write every latency (ns) there")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when the target is missed (default: report only)")
    args = parser.parse_args(argv)
    samples = 20 if args.quick else args.samples
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    if samples < 1 or args.lines < 1 or args.interval_ms < 0:
        parser.error("--samples and --lines must be positive, --interval-ms not negative")

    bench = Bench(args.lines, args.interval_ms)
    runners: list[tuple[str, Callable[[], list[int]]]] = [("bare", bench.bare),
                                                          ("isol8", bench.isol8)]
    for _ in range(warmup):
        for _, run in runners:
            run()
    for values in bench.first.values():
        values.clear()

    latencies: dict[str, list[int]] = {name: [] for name, _ in runners}
    load_before = os.getloadavg()
    gc.collect()
    gc.disable()  # collections happen between rounds, never while a line is in flight
    try:
        for i in range(samples):
            k = i % len(runners)
            for name, run in runners[k:] + runners[:k]:
                latencies[name].extend(run())
            gc.collect()
            if sys.stderr.isatty():
                print(f"\r{i + 1}/{samples}", end="", file=sys.stderr, flush=True)
    finally:
        gc.enable()
        bench.close()
    if sys.stderr.isatty():
        print(file=sys.stderr)

    report(latencies, bench, samples, warmup, args, (load_before, os.getloadavg()))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"latencies": latencies, "first_line": bench.first}, indent=1))
    worst = max(latencies["isol8"]) / 1e6
    return 1 if args.strict and worst > TARGET_MS else 0


def report(latencies: dict[str, list[int]], bench: Bench, samples: int, warmup: int,
           args: argparse.Namespace,
           load: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
    uname = platform.uname()
    version = subprocess.run([PYTHON, "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True).stdout.strip()
    print(f"# isol8 streaming latency: {samples} runs per runner (+{warmup} warm-up rounds), "
          f"{args.lines} lines per run {args.interval_ms:g} ms apart, order rotated per round")
    print(f"\nhost: {uname.system} {uname.release} {uname.machine}, {os.cpu_count()} CPUs, "
          f"{'root' if os.geteuid() == 0 else 'rootless'}, {PYTHON} {version}, supervisor "
          f"{sys.executable} {platform.python_version()}; 1-min load average "
          f"{load[0][0]:.2f} before, {load[1][0]:.2f} after\n")
    labels = {"bare": "bare: `subprocess.Popen`, stdout pipe, `readline()`",
              "isol8": "isol8: `Isol8().execute_stream()` (ephemeral)"}
    bare_p50 = pct(latencies["bare"], 0.5)
    print("| written -> caller | lines | p50 ms | p90 ms | p99 ms | max ms "
          "| first line p50 ms | p50 / bare p50 | p50 - bare p50 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, values in latencies.items():
        p50 = pct(values, 0.5)
        print(f"| {labels[name]} | {len(values)} | {p50:.3f} | {pct(values, 0.9):.3f} "
              f"| {pct(values, 0.99):.3f} | {max(values) / 1e6:.3f} "
              f"| {pct(bench.first[name], 0.5):.3f} | {p50 / bare_p50:.2f}x "
              f"| {p50 - bare_p50:+.3f} ms |")
    worst = max(latencies["isol8"]) / 1e6
    print("\n| target | measured | result |")
    print("| --- | ---: | --- |")
    print(f"| every isol8 line within {TARGET_MS:.0f} ms of its write | max {worst:.3f} ms "
          f"(p90 {pct(latencies['isol8'], 0.9):.3f} ms) "
          f"| {'PASS' if worst <= TARGET_MS else 'FAIL'} |")


if __name__ == "__main__":
    sys.exit(main())
