#!/usr/bin/env python3
"""Image build benchmark: the python recipe through ``isol8 image build``, warm apt cache.

One warm-up build fills the apt cache (``/var/cache/isol8/apt`` as root, else
``$XDG_CACHE_HOME/isol8/apt``) if it is empty; then each timed sample is a ``--force``
rebuild of the python recipe into a throwaway store, with the time of each step
(resolving, downloading, extracting, installing, customizing, packing, importing) taken
from the build's progress. A last row times an unchanged rebuild (the no-op).

Target (from the issue): a build of the python recipe in under 60 s with a warm apt cache.

    python benchmarks/image_build.py              # 3 builds
    python benchmarks/image_build.py --quick      # 1 build
    python benchmarks/image_build.py -n 5 --json /tmp/builds.json --strict
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import harness as h  # first: it puts the repo root on sys.path (isol8 need not be installed)
from isol8.images import build as image_build
from isol8.images.store import ImageStore, remove_tree

STEPS = ("resolving", "downloading", "extracting", "installing", "customizing", "packing",
         "importing")
TARGET_S = 60.0


def one_build(store: ImageStore, *, force: bool) -> tuple[float, dict[str, float], bool]:
    """(total seconds, seconds per step, whether it built)."""
    marks: list[tuple[str, float]] = []
    t0 = time.monotonic()
    outcome = image_build.build("python", store=store, force=force,
                                progress=lambda step: marks.append((step, time.monotonic())))
    total = time.monotonic() - t0
    ends = [t for _, t in marks[1:]] + [t0 + total]
    steps: dict[str, float] = {}
    for (step, start), end in zip(marks, ends):
        steps[step] = steps.get(step, 0.0) + end - start
    return total, steps, outcome.built


def main() -> int:
    parser = h.BenchParser(__doc__, warmup=1, quick_warmup=1, samples=3, quick=1,
                           unit="builds", json_what="every build's total and step times")
    args = parser.parse_args()
    try:
        mode = image_build.choose_mode()
    except Exception as exc:  # no mmdebstrap, or no way to build rootless here
        print(f"image_build: cannot build here: {exc}", file=sys.stderr)
        return 0 if not args.strict else 1
    os.environ.setdefault("ISOL8_RECIPES", str(h.REPO / "rootfs"))
    root = tempfile.mkdtemp(prefix="isol8-bench-images-", dir="/var/tmp")
    store = ImageStore(root)
    load0 = os.getloadavg()[0]
    try:
        cache = image_build.apt_cache()
        warm = os.path.isdir(cache) and any(n.endswith(".deb") for n in os.listdir(cache))
        for _ in range(args.warmup if not warm else 0):
            one_build(store, force=True)
        samples = [one_build(store, force=True) for _ in range(args.samples)]
        noop_t0 = time.monotonic()
        noop = one_build(store, force=False)
        noop_s = time.monotonic() - noop_t0
    finally:
        remove_tree(root)
    load1 = os.getloadavg()[0]

    print(f"# isol8 image build (python recipe, mmdebstrap --mode={mode}): {args.samples} "
          f"builds, warm apt cache{'' if warm else ' (filled by a warm-up build)'}")
    h.print_host((load0, load1))
    h.print_table(("build", "total s", *STEPS),
                  [(str(i + 1), f"{total:.1f}", *(f"{steps.get(s, 0):.1f}" for s in STEPS))
                   for i, (total, steps, _) in enumerate(samples)])
    totals = [total for total, _, _ in samples]
    median = statistics.median(totals)
    print(f"\nunchanged recipe (no-op): {noop_s * 1000:.0f} ms, built={noop[2]}")
    ok = median < TARGET_S and not noop[2]
    h.print_targets([("python recipe, warm cache, median < 60 s", f"{median:.1f} s",
                      h.verdict(median < TARGET_S)),
                     ("unchanged recipe is a no-op", f"{noop_s * 1000:.0f} ms",
                      h.verdict(not noop[2]))])
    return h.finish(args, ok, {"totals_s": totals,
                               "steps_s": [steps for _, steps, _ in samples],
                               "noop_s": noop_s})


if __name__ == "__main__":
    sys.exit(main())
