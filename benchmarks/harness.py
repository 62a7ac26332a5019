"""The harness every benchmark in this folder shares.

How the benchmarks measure, and why:

* **Interleaved rounds, order rotated.** One long-lived process runs rounds; in each round
  every runner runs once, and round ``i`` starts at runner ``i % len(runners)``. Other work on
  the machine (a test run, a cron job, CPU frequency changes) then lands on every runner about
  equally, so the rows stay comparable with each other even when the absolute numbers drift.
  Running each runner's samples back to back would charge one runner for a burst of noise.
* **GC off while timing.** The cyclic garbage collector is disabled for the timed rounds and
  run by hand (``gc.collect()``) between rounds, so a collection never lands inside a timed
  call and shows up as an outlier in whichever runner was unlucky.
* **Bootstrap CI of a ratio of medians.** A ratio of two medians has no simple closed-form
  interval; ``ratio_ci`` resamples each runner's samples independently (with replacement),
  2000 times, and reports the central 95% of the resampled ratios. A fixed seed keeps the
  printed interval stable for the same samples.

It also holds the pieces several benchmarks time the same way: ``spawn_capture`` (the
posix_spawn, pipes-to-EOF, waitpid launcher for the bare and bubblewrap rows), the
bubblewrap arguments, the common options, the host line and the markdown tables.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import select
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the scripts run from a checkout without installing isol8
    sys.path.insert(0, str(REPO))
PYTHON = "/usr/bin/python3"
PRINT1 = "print(1)"
# bubblewrap with the isolation isol8 gives (all namespaces, read-only /usr, fresh /proc,
# /dev, tmpfs /tmp and /sandbox) but no seccomp, limits or supervisor: the reference row.
BWRAP_ARGS = ["--unshare-all", "--die-with-parent", "--new-session",
              "--ro-bind", "/usr", "/usr",
              "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
              "--symlink", "usr/lib64", "/lib64",
              "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/sandbox",
              "--chdir", "/sandbox"]

# A runner returns its wall time in ns, or a list of samples (ns) when one call yields many.
Runner = Callable[[], Union[int, list[int]]]


# -- options ----------------------------------------------------------------------------------

class BenchParser(argparse.ArgumentParser):
    """The options every benchmark takes: -n/--samples, --quick, --warmup, --json, --strict.
    After parsing, ``args.samples`` and ``args.warmup`` hold the values to use."""

    def __init__(self, doc: str, *, warmup: int, quick_warmup: int, samples: int = 120,
                 quick: int = 20, unit: str = "samples", samples_note: str = "",
                 json_what: str = "every raw sample") -> None:
        super().__init__(description=doc.split("\n\n")[0])
        self._quick, self._warmup = quick, (warmup, quick_warmup)
        self.add_argument("-n", "--samples", type=int, default=samples,
                          help=f"{unit} per runner (default {samples}){samples_note}")
        self.add_argument("--quick", action="store_true", help=f"{quick} {unit}: a smoke run")
        self.add_argument("--warmup", type=int, default=None,
                          help=f"untimed rounds first (default {warmup}, {quick_warmup} "
                               "with --quick)")
        self.add_argument("--json", metavar="PATH", help=f"write {json_what} (ns) there")
        self.add_argument("--strict", action="store_true",
                          help="exit 1 when a target is missed (default: report only)")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        if parsed.quick:
            parsed.samples = self._quick
        if parsed.warmup is None:
            parsed.warmup = self._warmup[1] if parsed.quick else self._warmup[0]
        if parsed.samples < 1 or parsed.warmup < 0:
            self.error("--samples must be positive, --warmup not negative")
        return parsed


def finish(args: argparse.Namespace, ok: bool, data: dict[str, Any]) -> int:
    """Writes ``data`` (the raw samples) to --json if given; returns the exit status: 1 when
    --strict was given and a target was missed, else 0 (report only)."""
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
    return 1 if args.strict and not ok else 0


# -- timing -----------------------------------------------------------------------------------

def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, Any]:
    """(wall time of ``fn(*args, **kwargs)`` in ns by perf_counter_ns, its result)."""
    t0 = time.perf_counter_ns()
    result = fn(*args, **kwargs)
    return time.perf_counter_ns() - t0, result


def run_rounds(runners: Sequence[tuple[str, Runner]], args: argparse.Namespace, *,
               after_warmup: Callable[[], None] | None = None,
               close: Callable[[], None] | None = None
               ) -> tuple[dict[str, list[int]], tuple[float, float]]:
    """``args.warmup`` untimed rounds, ``after_warmup()`` (to drop what the runners recorded
    in them), then ``args.samples`` timed rounds, order rotated per round, GC off inside them
    (see the module docstring); ``close()`` last, whatever happens. Returns the samples per
    runner and the 1-min load average before and after the timed rounds."""
    try:
        return _rounds(runners, args.samples, args.warmup, after_warmup)
    finally:
        if close is not None:
            close()


def _rounds(runners: Sequence[tuple[str, Runner]], samples: int, warmup: int,
            after_warmup: Callable[[], None] | None
            ) -> tuple[dict[str, list[int]], tuple[float, float]]:
    for _ in range(warmup):
        for _, run in runners:
            run()
    if after_warmup is not None:
        after_warmup()
    times: dict[str, list[int]] = {name: [] for name, _ in runners}
    load_before = os.getloadavg()[0]
    progress = sys.stderr.isatty()
    gc.collect()
    gc.disable()  # collections happen between rounds, never inside a timed call
    try:
        for i in range(samples):
            k = i % len(runners)
            for name, run in [*runners[k:], *runners[:k]]:
                value = run()
                if isinstance(value, list):
                    times[name].extend(value)
                else:
                    times[name].append(value)
            gc.collect()
            if progress:
                print(f"\r{i + 1}/{samples}", end="", file=sys.stderr, flush=True)
    finally:
        gc.enable()
        if progress:
            print(file=sys.stderr)
    return times, (load_before, os.getloadavg()[0])


# -- launching a bare process -----------------------------------------------------------------

def read_and_reap(pid: int, out_r: int, err_r: int) -> tuple[int, bytes, bytes]:
    """Both pipes read to EOF (and closed here), then waitpid: (exit code, stdout, stderr)."""
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    poller = select.poll()
    for fd in chunks:
        poller.register(fd, select.POLLIN)
    open_fds = 2
    try:
        while open_fds:
            for fd, _ in poller.poll():
                data = os.read(fd, 1 << 16)
                if data:
                    chunks[fd].append(data)
                else:
                    poller.unregister(fd)
                    open_fds -= 1
    finally:
        os.close(out_r)
        os.close(err_r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks[out_r]), b"".join(chunks[err_r])


def spawn_capture(path: str, argv: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """posix_spawn with stdin /dev/null and stdout, stderr on pipes read to EOF; waitpid."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.posix_spawn(path, argv, env, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
        ])
    finally:
        os.close(out_w)
        os.close(err_w)
    return read_and_reap(pid, out_r, err_r)


def check_output(name: str, rc: int, out: bytes, err: bytes) -> None:
    """A bare run of print(1) must exit 0 with stdout '1'."""
    if rc != 0 or out.strip() != b"1":
        raise SystemExit(f"{name}: expected exit 0 and stdout '1', got exit {rc}, "
                         f"stdout {out[:200]!r}, stderr {err[:500]!r}")


def check_result(name: str, result: Any) -> None:
    """An isol8 run of print(1) must exit 0 with stdout '1'."""
    if result.stdout != "1" or result.exit_code != 0:
        raise SystemExit(f"{name}: expected stdout '1', got {result!r}")


def bare_print1(env: dict[str, str]) -> int:
    """The baseline row: ``python3 -c 'print(1)'`` through spawn_capture, in ns."""
    ns, result = timed(spawn_capture, PYTHON, [PYTHON, "-c", PRINT1], env)
    check_output("bare", *result)
    return ns


def ensure_bwrap(install: bool) -> str | None:
    """bwrap's path; when missing and ``install``, runs scripts/system-deps.sh bubblewrap."""
    path = shutil.which("bwrap")
    if path is None and install:
        script = REPO / "scripts" / "system-deps.sh"
        print(f"bwrap not found: running {script.relative_to(REPO)} bubblewrap", file=sys.stderr)
        subprocess.run([str(script), "bubblewrap"], check=False)
        path = shutil.which("bwrap")
    if path is None:
        print("warning: bubblewrap is not installed; its row is skipped", file=sys.stderr)
    return path


# -- statistics -------------------------------------------------------------------------------

def pct(values: list[int], q: float) -> float:
    """Percentile by linear interpolation between order statistics, in ms."""
    data = sorted(values)
    if len(data) == 1:
        return data[0] / 1e6
    pos = (len(data) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return (data[lo] + (data[hi] - data[lo]) * (pos - lo)) / 1e6


def ratio_ci(num: list[int], den: list[int], rounds: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of median(num) / median(den), resampling each independently."""
    rng = random.Random(8)
    ratios = sorted(statistics.median(rng.choices(num, k=len(num)))
                    / statistics.median(rng.choices(den, k=len(den))) for _ in range(rounds))
    return ratios[int(rounds * 0.025)], ratios[int(rounds * 0.975) - 1]


# -- report -----------------------------------------------------------------------------------

def print_header(title: str, args: argparse.Namespace, load: tuple[float, float], *,
                 unit: str = "samples", extra: str = "", note: str = "") -> None:
    """The report's first lines: what ran, how many rounds, then the host line."""
    print(f"# isol8 {title}{args.samples} {unit} per runner (+{args.warmup} warm-up rounds)"
          f"{extra}, order rotated per round")
    print_host(load, note)


def print_host(load: tuple[float, float], note: str = "") -> None:
    """The machine line, between blank lines: kernel, CPUs, root or rootless, both Pythons,
    and the load average around the timed rounds (other work on the machine skews them)."""
    uname = platform.uname()
    version = subprocess.run([PYTHON, "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True).stdout.strip()
    print(f"\nhost: {uname.system} {uname.release} {uname.machine}, {os.cpu_count()} CPUs, "
          f"{'root' if os.geteuid() == 0 else 'rootless'}, {PYTHON} {version}, supervisor "
          f"{sys.executable} {platform.python_version()}; 1-min load average "
          f"{load[0]:.2f} before, {load[1]:.2f} after{note}\n")


def print_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> None:
    """A markdown table; ``align`` has one letter per column, l or r (default: the first
    column left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_targets(rows: Iterable[tuple[str, str, str]]) -> None:
    """The closing table: (target, measured, PASS/FAIL/SKIP) per row, after a blank line."""
    print()
    print_table(("target", "measured", "result"), rows, "lrl")
