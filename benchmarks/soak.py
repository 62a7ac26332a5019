#!/usr/bin/env python3
"""Soak: 1,000 mixed executions in one supervisor, then proof that nothing was left behind.

Not a unit test and not part of CI: it runs for minutes and its figures go in the README.
Every kind of run that tears something down is in the mix, in a fixed rotation (seeded, so
two runs of the script do the same work):

  ephemeral      a fresh sandbox per run, with ``output_paths``
  pooled         a warm pool's sandbox whose Python zygote is already running
  persistent     a long-lived session: state kept, a background daemon now and then
  session-cycle  a persistent engine started, used and stopped (a new sandbox each time)
  repl           a ``repl=True`` cell
  stream-abandon ``execute_stream()`` closed after its first line
  cancel         an ``AsyncIsol8`` run cancelled mid-way
  timeout        a run that leaves setsid and double-fork daemons and overruns its timeout
  oom            a run far over ``memory_limit``
  flood          an output flood cut at ``max_output_size``

Each result is checked (a wrong answer stops the soak). After the first 100 runs, when the
supervisor has settled, and again at the end, it takes a census of itself: RSS, fds and
threads. Once every engine is stopped it takes the census of the host: descendants of this
process, host processes of leased uids, mounts, isol8 cgroups, uid leases and isol8 temp
dirs, each against the census before the first engine started. It fails (exit 1) when any
of them differs, or when RSS grew by more than 10% after the first 100 runs.

    python benchmarks/soak.py              # 1,000 runs as the current user
    python benchmarks/soak.py -n 200       # a shorter soak
    python benchmarks/soak.py --json /tmp/soak.json

Run it once as root and once as an unprivileged user (rootless); the README has both.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import gc
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import harness as h  # first: it puts the repo root on sys.path
from isol8 import AsyncIsol8, Isol8
from isol8 import cgroups, identity

KINDS = ("ephemeral", "pooled", "persistent", "session-cycle", "repl", "stream-abandon",
         "cancel", "timeout", "oom", "flood")
SETTLE_AFTER = 100
RSS_GROWTH_LIMIT = 0.10

DAEMONS = ("setsid sh -c 'sleep 1000 & sleep 1000' & (sleep 1000 &); "
           "trap '' TERM; sleep 1000")
FLOOD = "yes isol8-soak-flood | head -c 20000000"
OOM = "x = bytearray(512 << 20); print(len(x))"


class Soak:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.ephemeral = Isol8(pool_size=0)
        self.pooled = Isol8(pool_size=2, prewarm={"runtimes": ["python"]})
        self.persistent = Isol8(mode="persistent")
        self.repl = Isol8(mode="persistent", repl=True)
        self.limited = Isol8(pool_size=0, memory_limit="64m", timeout_ms=10_000)
        self.flooded = Isol8(pool_size=0, max_output_size=1 << 16)
        self.timed = Isol8(pool_size=0, timeout_ms=300)
        self.engines = [self.ephemeral, self.pooled, self.persistent, self.repl,
                        self.limited, self.flooded, self.timed]
        for engine in self.engines:
            engine.start()
        self.loop = asyncio.new_event_loop()
        self.cancelling = AsyncIsol8(pool_size=0)
        self.loop.run_until_complete(self.cancelling.start())
        self.counter = 0  # the persistent session's state, checked each run
        self.repl_counter = 0

    def close(self) -> None:
        for engine in self.engines:
            engine.stop()
        self.loop.run_until_complete(self.cancelling.stop())
        self.loop.close()

    # -- one run of each kind: each checks its own result ------------------------------------

    def run(self, kind: str) -> None:
        getattr(self, "_" + kind.replace("-", "_"))()

    def _ephemeral(self) -> None:
        r = self.ephemeral.execute(cmd="echo -n soak > /sandbox/out.txt; echo ok",
                                   output_paths=["/sandbox/out.txt", "/sandbox/missing"])
        expect(r.stdout == "ok" and r.files == {"/sandbox/out.txt": "c29haw=="}, "ephemeral", r)

    def _pooled(self) -> None:
        r = self.pooled.execute(h.PRINT1, runtime="python")
        expect(r.stdout == "1" and r.exit_code == 0, "pooled", r)

    def _persistent(self) -> None:
        self.counter += 1
        daemon = "(sleep 300 &); " if self.counter % 25 == 0 else ""
        r = self.persistent.execute(cmd=f"{daemon}echo {self.counter} >> /sandbox/n; "
                                        "wc -l < /sandbox/n")
        expect(r.stdout == str(self.counter), "persistent", r)

    def _session_cycle(self) -> None:
        with Isol8(mode="persistent") as engine:
            engine.execute(cmd="sleep 300 &")  # upstream: a session exists after a run
            engine.put_file("/sandbox/in.txt", "cycle")
            r = engine.execute(cmd="cat /sandbox/in.txt")
            expect(r.stdout == "cycle", "session-cycle", r)
            expect(engine.get_file("/sandbox/in.txt") == b"cycle", "session-cycle get_file", r)

    def _repl(self) -> None:
        self.repl_counter += 1
        code = "n = 0" if self.repl_counter == 1 else "n += 1"
        r = self.repl.execute(f"{code}\nprint(n)", runtime="python")
        expect(r.stdout == str(self.repl_counter - 1), "repl", r)

    def _stream_abandon(self) -> None:
        stream = self.ephemeral.execute_stream(
            cmd="for i in $(seq 1000); do echo line $i; sleep 0.01; done")
        first = next(stream)
        stream.close()
        expect(first.type == "stdout" and first.data.startswith("line 1"), "stream-abandon",
               first)

    def _cancel(self) -> None:
        async def cancelled() -> bool:
            task = asyncio.ensure_future(self.cancelling.execute(cmd="echo started; " + DAEMONS))
            await asyncio.sleep(self.rng.uniform(0.02, 0.2))
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                return True
            return False

        expect(self.loop.run_until_complete(cancelled()), "cancel", None)

    def _timeout(self) -> None:
        r = self.timed.execute(cmd=DAEMONS)
        expect(r.exit_code == 137 and "timeout" in r.resource_usage.limits_reached,
               "timeout", r)

    def _oom(self) -> None:
        r = self.limited.execute(OOM, runtime="python")
        expect(r.exit_code != 0 and "memory" in r.resource_usage.limits_reached, "oom", r)

    def _flood(self) -> None:
        r = self.flooded.execute(cmd=FLOOD)
        expect(r.truncated and "output" in r.resource_usage.limits_reached, "flood", r)


def expect(ok: bool, kind: str, result: object) -> None:
    if not ok:
        raise SystemExit(f"soak: a {kind} run went wrong: {result!r}")


# -- census ------------------------------------------------------------------------------------

def self_census() -> dict[str, int]:
    """The supervisor itself: resident memory, open fds, threads."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text()
                  .splitlines() if ":" in line)
    return {"rss_kib": int(status["VmRSS"].split()[0]),
            "fds": len(os.listdir("/proc/self/fd")),
            "threads": len(os.listdir("/proc/self/task"))}


def host_census() -> dict[str, object]:
    """What runs could leave on the host, as sorted lists (so a difference shows what)."""
    return {"descendants": descendants(os.getpid()),
            "leased_uid_processes": leased_uid_processes(),
            "mounts": sorted(Path("/proc/self/mountinfo").read_text().splitlines()),
            "cgroups": isol8_cgroups(),
            "leases": held_leases(),
            "temp_dirs": isol8_temp_dirs()}


def _proc_stats() -> list[tuple[int, int, int]]:
    """(pid, ppid, real uid) of every host process still there."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            uid = os.stat(f"/proc/{name}").st_uid
        except OSError:
            continue
        out.append((int(name), int(stat.rsplit(")", 1)[1].split()[1]), uid))
    return out


def descendants(root: int) -> list[str]:
    stats = _proc_stats()
    children: dict[int, list[int]] = {}
    for pid, ppid, _ in stats:
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(_describe(pid) for pid in found)


def leased_uid_processes() -> list[str]:
    start, count = identity.default_uid_range()
    return sorted(_describe(pid) for pid, _, uid in _proc_stats()
                  if start <= uid < start + count)


def _describe(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        return f"{pid} {cmdline!r}"
    except OSError:
        return str(pid)


def held_leases() -> list[str]:
    """Leased uids whose lock is held (a file whose holder died is free, not a leak)."""
    held = []
    try:
        names = os.listdir(identity.LEASE_DIR)
    except OSError:
        return []
    for name in names:
        try:
            fd = os.open(os.path.join(identity.LEASE_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(name)
        finally:
            os.close(fd)
    return sorted(held)


def isol8_cgroups() -> list[str]:
    """Every cgroup directory of this process's engines (``isol8-<boot>-<pid>-...``), on
    every hierarchy."""
    mine = cgroups.owner_name().rsplit("-", 1)[0] + "-"
    found = []
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        for name in dirs:
            if name.startswith(mine):
                found.append(os.path.join(top, name))
    return sorted(found)


def isol8_temp_dirs() -> list[str]:
    found = []
    for base in {"/tmp", "/var/tmp", os.environ.get("TMPDIR", "/tmp")}:
        try:
            found += [os.path.join(base, n) for n in os.listdir(base) if "isol8" in n]
        except OSError:
            pass
    return sorted(found)


# -- main ----------------------------------------------------------------------------------------

def schedule(n: int, rng: random.Random) -> list[str]:
    """``n`` kinds, every kind equally often, in a seeded shuffle."""
    kinds = [KINDS[i % len(KINDS)] for i in range(n)]
    rng.shuffle(kinds)
    return kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=1000, help="runs (default 1000)")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--json", metavar="PATH", help="write the census and timings there")
    args = parser.parse_args()
    if args.runs <= SETTLE_AFTER:
        parser.error(f"--runs must be above {SETTLE_AFTER} (the settling runs)")

    before_host = host_census()
    before_self = self_census()
    soak = Soak(args.seed)
    kinds = schedule(args.runs, soak.rng)
    times: dict[str, list[int]] = {kind: [] for kind in KINDS}
    settled: dict[str, int] = {}
    t0 = time.monotonic()
    progress = sys.stderr.isatty()
    try:
        for i, kind in enumerate(kinds, 1):
            ns, _ = h.timed(soak.run, kind)
            times[kind].append(ns)
            if i == SETTLE_AFTER:
                gc.collect()
                settled = self_census()
            if progress:
                print(f"\r{i}/{args.runs} {kind:15}", end="", file=sys.stderr, flush=True)
        gc.collect()
        final_self = self_census()
    finally:
        soak.close()
        if progress:
            print(file=sys.stderr)
    wall = time.monotonic() - t0
    gc.collect()
    after_host = host_census()
    after_self = self_census()

    leaks = {key: {"before": before_host[key], "after": after_host[key]}
             for key in before_host if before_host[key] != after_host[key]}
    growth = (final_self["rss_kib"] - settled["rss_kib"]) / settled["rss_kib"]
    ok = not leaks and growth <= RSS_GROWTH_LIMIT and after_self["fds"] == before_self["fds"]

    h.print_host((os.getloadavg()[0],) * 2)
    print(f"# isol8 soak: {args.runs} runs in {wall:.0f} s, "
          f"{'root' if os.geteuid() == 0 else 'rootless'}\n")
    h.print_table(("kind", "runs", "p50 ms", "p99 ms"),
                  [(kind, str(len(times[kind])), f"{h.pct(times[kind], 0.5):.1f}",
                    f"{h.pct(times[kind], 0.99):.1f}") for kind in KINDS if times[kind]])
    print()
    h.print_table(("supervisor", "before engines", f"after {SETTLE_AFTER} runs",
                   f"after {args.runs} runs", "engines stopped"),
                  [(key, str(before_self[key]), str(settled[key]), str(final_self[key]),
                    str(after_self[key])) for key in before_self])
    print(f"\nRSS growth after the first {SETTLE_AFTER} runs: {growth:+.1%} "
          f"(limit +{RSS_GROWTH_LIMIT:.0%})")
    print()
    h.print_table(("left on the host", "before", "after"),
                  [(key, str(len(before_host[key])), str(len(after_host[key])))  # type: ignore
                   for key in before_host])
    for key, diff in leaks.items():
        print(f"\nLEAK {key}:\n  before: {diff['before']}\n  after:  {diff['after']}")
    print(f"\nsoak: {'PASS: nothing left behind' if ok else 'FAIL'}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"runs": args.runs, "wall_s": wall, "times_ns": times, "self": {
                "before": before_self, "settled": settled, "final": final_self,
                "stopped": after_self}, "leaks": leaks, "kinds": Counter(kinds)}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
