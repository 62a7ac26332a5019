#!/usr/bin/env python3
"""How late a timeout lands: wall time of execute() minus timeout_ms, over many runs.

The run under test defeats the easy kills: a setsid'ed double-fork daemon and a busy CPU
loop, so the measured path is the real one (deadline -> SIGKILL to the sandbox's PID 1 ->
the kernel reaps the whole pid namespace -> the helper is reaped -> execute() returns).
Target (from the issue): within the timeout plus 100 ms (PASS when the worst run is).

    python benchmarks/timeout_precision.py          # 40 samples of a 200 ms timeout
    python benchmarks/timeout_precision.py --quick  # 10 samples: a smoke run
    python benchmarks/timeout_precision.py -n 100 --timeout-ms 500 --json /tmp/late.json
"""

from __future__ import annotations

import sys

import harness as h  # first: it puts the repo root on sys.path (isol8 need not be installed)
from isol8 import Isol8

TARGET_MS = 100
WORKLOAD = "(setsid sh -c 'sleep 1000 &' &); (while :; do :; done) & sleep 1000"


def main(argv: list[str] | None = None) -> int:
    parser = h.BenchParser(__doc__, warmup=1, quick_warmup=1, samples=40, quick=10,
                           json_what="every overshoot")
    parser.add_argument("--timeout-ms", type=int, default=200,
                        help="the run's timeout_ms (default 200)")
    args = parser.parse_args(argv)
    engine = Isol8()
    engine.execute(cmd="true")  # the policy and plan are compiled outside the timing

    def overshoot() -> int:
        ns, result = h.timed(engine.execute, cmd=WORKLOAD, timeout_ms=args.timeout_ms)
        if result.exit_code != 137 or "EXECUTION TIMED OUT" not in result.stderr:
            raise SystemExit(f"expected a timeout, got {result!r}")
        return ns - args.timeout_ms * 1_000_000

    times, load = h.run_rounds([("late", overshoot)], args, close=engine.stop)
    late = times["late"]
    worst = max(late) / 1e6
    print(f"# timeout precision: {args.samples} runs of a {args.timeout_ms} ms timeout "
          f"(daemon + busy loop, +{args.warmup} warm-up runs)")
    h.print_host(load)
    h.print_table(("overshoot", "p50 ms", "p90 ms", "max ms", "target", "result"),
                  [("execute() wall - timeout_ms", f"{h.pct(late, 0.5):.2f}",
                    f"{h.pct(late, 0.9):.2f}", f"{worst:.2f}", f"<= {TARGET_MS}",
                    h.verdict(worst <= TARGET_MS))], "lrrrrl")
    return h.finish(args, worst <= TARGET_MS, {"overshoot": late})


if __name__ == "__main__":
    sys.exit(main())
