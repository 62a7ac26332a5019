#!/usr/bin/env python3
"""``isol8 serve`` under 200 concurrent clients for 60 s on loopback, against the library's
own throughput on the same machine in the same run.

Phases, one after the other (they would compete for the same cores if overlapped):

  library   AsyncIsol8(prewarm python) in this process, CLIENTS tasks each looping
            ``execute(print(1))`` for DURATION: the runs per second the engine sustains
  server    ``isol8 serve`` (a subprocess on 127.0.0.1, default policy), CLIENTS asyncio
            clients, each on its own keep-alive connection looping ``POST /execute`` of the
            same code for DURATION

Reported: runs/s of both and their ratio, every status code the server answered (anything
but 200 and 429 is an error), latency percentiles of the 200s (p50, p90, p99, max), the
server's RSS sampled every second (the first and last 10% of the run compared, after a
warm-up), and what the server leaves behind after SIGTERM (its child processes; the
sandboxes' cgroups and temp dirs are the engine's own, tested in the suite).

Targets (issue 11): no error other than 429; RSS flat within ±10%; throughput ratio
≥ 0.8 (below 0.5 is a defect); nothing left after SIGTERM.

    python benchmarks/server_load.py              # 200 clients, 60 s per phase
    python benchmarks/server_load.py --quick      # 50 clients, 10 s per phase
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter

import harness as h  # first: it puts the repo root on sys.path
from isol8 import AsyncIsol8

CODE = "print(1)"
KEY = "bench-load-key"
TARGET_RATIO, DEFECT_RATIO, RSS_BAND = 0.8, 0.5, 0.10


async def library_phase(clients: int, duration: float) -> tuple[int, float]:
    """Runs completed by the library with ``clients`` tasks, and the seconds they took."""
    engine = AsyncIsol8(prewarm={"runtimes": ["python"]})
    await engine.start()
    done = 0
    deadline = time.monotonic() + duration

    async def client() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            result = await engine.execute(CODE)
            if result.stdout.strip() != "1":
                raise SystemExit(f"library: unexpected result {result.to_dict()}")
            done += 1

    t0 = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.monotonic() - t0
    await engine.stop()
    return done, elapsed


class Server:
    def __init__(self, config: str | None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "isol8", "serve", "--port", str(self.port),
             *(["--config", config] if config else [])],
            env={**os.environ, "ISOL8_API_KEY": KEY, "PYTHONPATH": str(h.REPO)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("server: isol8 serve did not start")
                time.sleep(0.05)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def descendants(self) -> list[int]:
        """Every live process under the server (its sandboxes' helpers and their trees)."""
        out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True,
                             text=True).stdout
        children: dict[int, list[int]] = {}
        for line in out.splitlines():
            pid, ppid = map(int, line.split())
            children.setdefault(ppid, []).append(pid)
        found, todo = [], [self.proc.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found

    def stop(self) -> tuple[int, list[int]]:
        """SIGTERM, wait; the exit code and which of the server's processes (sandboxes and
        their trees) outlived it: once it has exited, its orphans belong to init, so they
        are found by the pids (and start times, against reuse) seen just before."""
        before = {pid: _start_time(pid) for pid in self.descendants()}
        self.proc.terminate()
        code = self.proc.wait(120)
        return code, [pid for pid, start in before.items()
                      if start is not None and _start_time(pid) == start]


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               request: bytes) -> tuple[int, dict[str, str], bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def server_phase(server: Server, clients: int, duration: float
                       ) -> tuple[Counter[int], list[int], list[int], float, list[str]]:
    body = json.dumps({"request": {"code": CODE, "runtime": "python"}}).encode()
    request = (f"POST /execute HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    statuses: Counter[int] = Counter()
    latencies: list[int] = []
    errors: list[str] = []
    rss: list[int] = []
    deadline = time.monotonic() + duration

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            while time.monotonic() < deadline:
                t0 = time.perf_counter_ns()
                status, headers, data = await post(reader, writer, request)
                statuses[status] += 1
                if status == 200:
                    latencies.append(time.perf_counter_ns() - t0)
                    if json.loads(data)["stdout"].strip() != "1":
                        errors.append(f"wrong output: {data[:200]!r}")
                elif status == 429:
                    await asyncio.sleep(min(float(headers.get("retry-after", "1")), 1.0))
                else:
                    errors.append(f"{status}: {data[:200]!r}")
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors.append(f"connection: {exc!r}")
        finally:
            writer.close()

    async def sample_rss() -> None:
        while time.monotonic() < deadline:
            rss.append(server.rss_kib())
            await asyncio.sleep(1)

    t0 = time.monotonic()
    await asyncio.gather(sample_rss(), *(client() for _ in range(clients)))
    return statuses, latencies, rss, time.monotonic() - t0, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--quick", action="store_true", help="50 clients, 10 s per phase")
    parser.add_argument("--config", metavar="FILE", help="the server's policy file")
    parser.add_argument("--json", metavar="PATH", help="write the raw numbers there")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.duration = 50, 10.0
    load_before = os.getloadavg()[0]
    lib_runs, lib_s = asyncio.run(library_phase(args.clients, args.duration))
    server = Server(args.config)
    try:
        statuses, latencies, rss, srv_s, errors = asyncio.run(
            server_phase(server, args.clients, args.duration))
    finally:
        code, left = server.stop()
    load = (load_before, os.getloadavg()[0])

    print(f"# isol8 serve under load: {args.clients} clients, {args.duration:.0f} s per phase")
    h.print_host(load)
    lib_rate, srv_rate = lib_runs / lib_s, statuses[200] / srv_s
    ratio = srv_rate / lib_rate if lib_rate else 0.0
    ms = sorted(latencies)
    h.print_table(("row", "runs/s", "p50 ms", "p90 ms", "p99 ms", "max ms"), [
        ("library", f"{lib_rate:.1f}", "", "", "", ""),
        ("server", f"{srv_rate:.1f}", *(f"{h.pct(ms, q):.1f}" for q in (0.5, 0.9, 0.99)),
         f"{ms[-1] / 1e6:.1f}" if ms else "")])
    print(f"\nstatuses: {dict(sorted(statuses.items()))}; errors: {len(errors)}"
          + (f" (first: {errors[0]})" if errors else ""))
    # RSS: after the first 10% (warm-up: engines, pools, caches), first decile vs last.
    tail = rss[len(rss) // 10:] or rss
    k = max(1, len(tail) // 10)
    early, late = statistics.median(tail[:k]), statistics.median(tail[-k:])
    drift = (late - early) / early if early else 0.0
    print(f"server RSS: {early / 1024:.1f} MiB early, {late / 1024:.1f} MiB late "
          f"({drift:+.1%}); exit code {code} after SIGTERM, {len(left)} processes left")
    ok_errors = not errors and set(statuses) <= {200, 429}
    ok_rss = abs(drift) <= RSS_BAND
    ok_ratio = ratio >= TARGET_RATIO
    h.print_targets([
        ("no error but 429", f"{len(errors)} errors", h.verdict(ok_errors)),
        (f"server RSS flat (±{RSS_BAND:.0%})", f"{drift:+.1%}", h.verdict(ok_rss)),
        (f"throughput ≥ {TARGET_RATIO}x library (< {DEFECT_RATIO}x is a defect)",
         f"{ratio:.2f}x", h.verdict(ok_ratio)),
        ("nothing left after SIGTERM", f"{len(left)} processes", h.verdict(not left)),
    ])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"library_runs": lib_runs, "library_s": lib_s, "statuses": statuses,
                       "latencies_ns": latencies, "rss_kib": rss, "errors": errors[:100]}, f)
    ok = ok_errors and ok_rss and ok_ratio and not left
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
