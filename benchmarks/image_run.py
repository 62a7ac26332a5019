#!/usr/bin/env python3
"""Running from a built image against running from the host's root, cold and warm, in one
process.

Rows, every one timed in the same rotation (order rotated per round):

  bare        /usr/bin/python3 -c 'print(1)' on the host (the harness's launcher): the
              baseline every table in this folder shares
  host cold   Isol8().execute("print(1)"): a fresh sandbox on the host's /usr
  image cold  Isol8(rootfs=IMAGE).execute("print(1)"): the same on the image
  host warm   Isol8(prewarm=...).execute("print(1)"): a pooled sandbox whose Python zygote
              is already running, on the host's /usr
  image warm  the same on the image

Both roots must hold the same Python (here Debian 12's 3.11 in each), or the rows would
compare interpreters, not roots; the header prints both versions.

Target (from the issue): image p50 within 5% of host p50, cold and warm.

    python benchmarks/image_run.py --image python          # an image of the store
    python benchmarks/image_run.py --image python --quick  # 20 samples: a smoke run
"""

from __future__ import annotations

import sys
import time

import harness as h  # first: it puts the repo root on sys.path (isol8 need not be installed)
from isol8 import Isol8
from isol8.runtimes import base_env

CODE = h.PRINT1
VERSION = "import sys; print(sys.version.split()[0])"
TARGET = 1.05
SETTLE_S = 0.005


class Bench:
    def __init__(self, image: str) -> None:
        self.env = base_env()
        self.engines = {
            "host cold": Isol8(), "image cold": Isol8(rootfs=image),
            "host warm": Isol8(prewarm={"runtimes": ["python"]}),
            "image warm": Isol8(rootfs=image, prewarm={"runtimes": ["python"]}),
        }
        for engine in self.engines.values():
            engine.start()
        self.versions = {root: self.engines[f"{root} cold"].execute(VERSION).stdout
                         for root in ("host", "image")}

    def settle(self) -> None:
        for name in ("host warm", "image warm"):
            pool = self.engines[name]._pool
            if pool is None or not pool.wait_ready(30):
                raise SystemExit(f"{name}: the pool did not refill within 30 s")
        time.sleep(SETTLE_S)

    def bare(self) -> int:
        self.settle()
        return h.bare_print1(self.env)

    def runner(self, name: str) -> h.Runner:
        engine = self.engines[name]

        def run() -> int:
            self.settle()
            ns, result = h.timed(engine.execute, CODE)
            h.check_result(name, result)
            return ns
        return run

    def close(self) -> None:
        for engine in self.engines.values():
            engine.stop()


def main(argv: list[str] | None = None) -> int:
    parser = h.BenchParser(__doc__, warmup=10, quick_warmup=3)
    parser.add_argument("--image", required=True, help="an image of the store (isol8 image "
                                                       "list)")
    args = parser.parse_args(argv)
    bench = Bench(args.image)
    runners: list[tuple[str, h.Runner]] = [("bare", bench.bare)]
    runners += [(name, bench.runner(name)) for name in bench.engines]
    times, load = h.run_rounds(runners, args, close=bench.close)
    return h.finish(args, report(times, bench, args, load), {"samples": times})


def report(times: dict[str, list[int]], bench: Bench, args, load: tuple[float, float]) -> bool:
    h.print_header(f"image run: {CODE!r} on image {args.image!r} (Python "
                   f"{bench.versions['image']}) and the host's /usr (Python "
                   f"{bench.versions['host']}), ", args, load)
    bare = times["bare"]
    bare_p50 = h.pct(bare, 0.5)
    rows = []
    for name, values in times.items():
        p50 = h.pct(values, 0.5)
        rows.append((name, f"{p50:.2f}", f"{h.pct(values, 0.9):.2f}",
                     f"{min(values) / 1e6:.2f}", f"{p50 / bare_p50:.2f}x"))
    h.print_table(("runner", "p50 ms", "p90 ms", "min ms", "p50 / bare p50"), rows)
    targets, ok = [], True
    for kind in ("cold", "warm"):
        image, host = times[f"image {kind}"], times[f"host {kind}"]
        ratio = h.pct(image, 0.5) / h.pct(host, 0.5)
        low, high = h.ratio_ci(image, host)
        passed = ratio <= TARGET
        ok = ok and passed
        targets.append((f"image {kind} p50 <= {TARGET}x host {kind} p50",
                        f"{ratio:.3f}x (95% CI {low:.3f}-{high:.3f})", h.verdict(passed)))
    h.print_targets(targets)
    return ok


if __name__ == "__main__":
    sys.exit(main())
