#!/usr/bin/env python3
"""Three ``isol8 serve`` nodes behind HAProxy (deploy/haproxy/isol8.cfg, as shipped) against
one node directly, all on this machine's loopback.

Phases, one after the other:

  latency     an ephemeral ``print(1)`` by ``POST /execute``, over one keep-alive connection
              to node 1 directly and one to the balancer, rows timed in the same rotation
              (harness.py); each call sleeps SETTLE_S first (untimed) so every node's warm
              pool has refilled, and checks it was served by a pooled zygote
  throughput  CLIENTS keep-alive clients looping the same request for DURATION against
              node 1 alone, then against the balancer in front of all three

Reported: the latency rows and their median difference, runs/s of both setups, HAProxy's
own CPU per request (from /proc, over the balancer's throughput phase) and, from these, a
projection of what each added host would bring: one node's rate per host, until one
HAProxy core is busy.

Targets (issue 14): the balancer's median at most 2 ms above the direct one; three nodes
behind it at least 1x one node's throughput (on one 2-core machine the nodes share the
cores: the point is that the path costs nothing, gains need more machines).

    python benchmarks/cluster.py            # 120 samples per row, 16 clients, 15 s
    python benchmarks/cluster.py --quick    # 20 samples, 5 s
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter

import harness as h  # first: it puts the repo root on sys.path
from server_load import KEY, Server, post

HAPROXY = "/usr/sbin/haproxy"
CONFIG = h.REPO / "deploy" / "haproxy" / "isol8.cfg"
CODE = "print(open('/proc/self/cmdline').read().split('\\0')[1])"  # "-c" in a pooled zygote
SETTLE_S = 0.1
CLIENTS = 16
TARGET_MS, TARGET_RATIO = 2.0, 1.0
TICKS = os.sysconf("SC_CLK_TCK")


class Balancer:
    """HAProxy on a free loopback port, the nodes given as the config's variables."""

    def __init__(self, nodes: list[Server]) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {"PATH": "/usr/bin:/bin", "ISOL8_LB_BIND": f"127.0.0.1:{self.port}"}
        env.update({f"ISOL8_NODE{n}": f"127.0.0.1:{node.port}"
                    for n, node in enumerate(nodes, 1)})
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(CONFIG)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def cpu_seconds(self) -> float:
        """User + system CPU HAProxy has used (all its threads)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class Latency:
    """One keep-alive connection per row; each call checks its run came from a warm pool."""

    def __init__(self, direct: int, balanced: int) -> None:
        self.conns = {"direct": _connect(direct), "balancer": _connect(balanced)}
        self.body = json.dumps({"request": {"code": CODE, "runtime": "python"}}).encode()
        self.misses = Counter[str]()

    def row(self, name: str) -> h.Runner:
        def run() -> int:
            time.sleep(SETTLE_S)
            ns, stdout = h.timed(self._post, self.conns[name])
            self.misses[name] += stdout != "-c"
            return ns
        return run

    def _post(self, conn: http.client.HTTPConnection) -> str:
        conn.request("POST", "/execute", self.body, {
            "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        response = conn.getresponse()
        data = json.loads(response.read())
        if response.status != 200:
            raise SystemExit(f"{response.status} {data}")
        return str(data["stdout"]).strip()

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


def _connect(port: int) -> http.client.HTTPConnection:
    """A connection to a server that answers ``/health`` (waits for it to start)."""
    deadline = time.monotonic() + 30
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("GET", "/health")
            conn.getresponse().read()
            return conn
        except OSError:
            conn.close()
            if time.monotonic() > deadline:
                raise SystemExit(f"127.0.0.1:{port} did not answer /health") from None
            time.sleep(0.05)


async def throughput(port: int, clients: int, duration: float) -> tuple[Counter[int], float]:
    """Statuses of ``clients`` keep-alive loops of ``POST /execute`` for ``duration``."""
    body = json.dumps({"request": {"code": "print(1)", "runtime": "python"}}).encode()
    request = (f"POST /execute HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + duration

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                status, headers, _ = await post(reader, writer, request)
                statuses[status] += 1
                if status == 429:
                    await asyncio.sleep(min(float(headers.get("retry-after", "1")), 1.0))
        finally:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    return statuses, time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    parser = h.BenchParser(__doc__, warmup=10, quick_warmup=5)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per throughput phase (default 15, 5 with --quick)")
    args = parser.parse_args(argv)
    duration = args.duration or (5.0 if args.quick else 15.0)
    nodes: list[Server] = []
    balancer: Balancer | None = None
    try:
        nodes = [Server(None) for _ in range(3)]
        balancer = Balancer(nodes)
        latency = Latency(nodes[0].port, balancer.port)
        times, load = h.run_rounds(
            [(name, latency.row(name)) for name in ("direct", "balancer")], args,
            after_warmup=latency.misses.clear, close=latency.close)
        one, one_s = asyncio.run(throughput(nodes[0].port, args.clients, duration))
        cpu_before = balancer.cpu_seconds()
        three, three_s = asyncio.run(throughput(balancer.port, args.clients, duration))
        haproxy_cpu = balancer.cpu_seconds() - cpu_before
    finally:
        if balancer is not None:
            balancer.stop()
        left = [pid for node in nodes for pid in node.stop()[1]]

    h.print_header("cluster: POST /execute through HAProxy vs one node, ", args, load)
    h.print_table(("row", "p50 ms", "p90 ms", "min ms", "pool misses"), [
        (name, f"{h.pct(values, 0.5):.2f}", f"{h.pct(values, 0.9):.2f}",
         f"{min(values) / 1e6:.2f}", f"{latency.misses[name]}/{len(values)}")
        for name, values in times.items()])
    one_rate, three_rate = one[200] / one_s, three[200] / three_s
    print(f"\nthroughput, {args.clients} clients, {duration:.0f} s each: one node "
          f"{one_rate:.1f} runs/s {dict(one)}, three behind HAProxy {three_rate:.1f} runs/s "
          f"{dict(three)}")
    per_request_us = haproxy_cpu / max(1, sum(three.values())) * 1e6
    ceiling = 1e6 / per_request_us if per_request_us else float("inf")
    print(f"HAProxy CPU: {per_request_us:.0f} µs per request, so one HAProxy core forwards "
          f"about {ceiling:,.0f} runs/s")
    print("projection, hosts like this one (one node each): "
          + ", ".join(f"{n} → {min(n * one_rate, ceiling):,.0f} runs/s" for n in (1, 2, 4, 8))
          + f" (linear until {ceiling / one_rate:,.0f} hosts per HAProxy core)"
          if one_rate else "")
    added = h.pct(times["balancer"], 0.5) - h.pct(times["direct"], 0.5)
    ratio = three_rate / one_rate if one_rate else 0.0
    errors = (set(one) | set(three)) - {200, 429}
    ok = (added <= TARGET_MS and ratio >= TARGET_RATIO and not errors and not left
          and not any(latency.misses.values()))
    h.print_targets([
        (f"balancer p50 - direct p50 <= {TARGET_MS} ms", f"{added:+.2f} ms",
         h.verdict(added <= TARGET_MS)),
        (f"three nodes >= {TARGET_RATIO}x one node", f"{ratio:.2f}x",
         h.verdict(ratio >= TARGET_RATIO)),
        ("no error but 429, nothing left", f"{sorted(errors)}, {len(left)} processes",
         h.verdict(not errors and not left)),
    ])
    return h.finish(args, ok, {"samples": times, "one": dict(one), "one_s": one_s,
                               "three": dict(three), "three_s": three_s,
                               "haproxy_cpu_s": haproxy_cpu})


if __name__ == "__main__":
    sys.exit(main())
