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

import subprocess
import sys
import time

import harness as h  # first: it puts the repo root on sys.path (isol8 need not be installed)
from isol8 import Isol8
from isol8.runtimes import base_env

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
        with subprocess.Popen([h.PYTHON, "-c", self.code], stdin=subprocess.DEVNULL,
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

    def clear(self) -> None:
        for values in self.first.values():
            values.clear()

    def close(self) -> None:
        self.engine.stop()


def main(argv: list[str] | None = None) -> int:
    parser = h.BenchParser(__doc__, warmup=3, quick_warmup=1, unit="runs",
                           samples_note="; each gives --lines latencies",
                           json_what="every latency")
    parser.add_argument("--lines", type=int, default=10, help="lines per run (default 10)")
    parser.add_argument("--interval-ms", type=float, default=20.0,
                        help="sleep between two lines (default 20)")
    args = parser.parse_args(argv)
    if args.lines < 1 or args.interval_ms < 0:
        parser.error("--lines must be positive, --interval-ms not negative")

    bench = Bench(args.lines, args.interval_ms)
    runners: list[tuple[str, h.Runner]] = [("bare", bench.bare), ("isol8", bench.isol8)]
    latencies, load = h.run_rounds(runners, args, after_warmup=bench.clear, close=bench.close)
    return h.finish(args, report(latencies, bench, args, load),
                    {"latencies": latencies, "first_line": bench.first})


def report(latencies: dict[str, list[int]], bench: Bench, args,
           load: tuple[float, float]) -> bool:
    h.print_header("streaming latency: ", args, load, unit="runs",
                   extra=f", {args.lines} lines per run {args.interval_ms:g} ms apart")
    labels = {"bare": "bare: `subprocess.Popen`, stdout pipe, `readline()`",
              "isol8": "isol8: `Isol8().execute_stream()` (ephemeral)"}
    bare_p50 = h.pct(latencies["bare"], 0.5)
    h.print_table(("written -> caller", "lines", "p50 ms", "p90 ms", "p99 ms", "max ms",
                   "first line p50 ms", "p50 / bare p50", "p50 - bare p50"),
                  ((labels[name], str(len(values)), f"{h.pct(values, 0.5):.3f}",
                    f"{h.pct(values, 0.9):.3f}", f"{h.pct(values, 0.99):.3f}",
                    f"{max(values) / 1e6:.3f}", f"{h.pct(bench.first[name], 0.5):.3f}",
                    f"{h.pct(values, 0.5) / bare_p50:.2f}x",
                    f"{h.pct(values, 0.5) - bare_p50:+.3f} ms")
                   for name, values in latencies.items()))
    worst = max(latencies["isol8"]) / 1e6
    h.print_targets([(f"every isol8 line within {TARGET_MS:.0f} ms of its write",
                      f"max {worst:.3f} ms (p90 {h.pct(latencies['isol8'], 0.9):.3f} ms)",
                      h.verdict(worst <= TARGET_MS))])
    return worst <= TARGET_MS


if __name__ == "__main__":
    sys.exit(main())
