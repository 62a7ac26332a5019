#!/usr/bin/env python3
"""Filtered network: what ``network="filtered"`` costs a run, and how fast its proxy moves bytes.

Four phases in one process; inside each, the runners share the rotation of the harness
(order rotated per round, so machine noise spreads evenly over them):

  cold        ``execute(cmd="true")`` on engines without a pool: ``network="none"``, and
              ``network="filtered"`` with ``capture="web"`` (the default) and ``"all"``. A
              filtered sandbox has the helper make five listeners (six with ``"all"``) and
              replay the nftables batch, and the supervisor serve them on the network thread
              and stop serving at the end.
  warm        ``execute("print(1)")`` on ``prewarm`` engines, none and filtered (web); the refill
              is awaited (untimed) before every call, as in warm_pool.py.
  bulk        a 100 MB body (``Content-Length``) from a loopback server, by curl to /dev/null:
              ``direct`` (curl on the host), ``proxy`` (curl in a filtered sandbox through the
              explicit proxy, ``HTTP_PROXY``: the proxy parses the response and forwards the body
              with ``sock_recv``/``sock_sendall``), ``relay`` (curl in a filtered sandbox with
              ``capture="all"`` to port 9000, proxy variables ignored: nftables redirects it to
              the splice relay). Timed by curl itself (``%{time_total}``), so the sandbox's
              setup is not in it; throughput is the body over the median time.
  requests    N tiny requests on one keep-alive connection (``curl http://.../s[1-N]``) to an
              asyncio upstream answering a fixed 3-byte body, on the host directly and in a
              filtered sandbox through its proxy; and the same with ``-Z --parallel-max 8``
              (eight connections). Timed in the shell around curl (``date +%s%N``), the same
              way on the host and in the sandbox; requests/s is N over that time.

Nothing leaves loopback: the upstreams listen on 127.0.0.1 in a child process (so they do not
share the supervisor's GIL), every name the sandbox uses is pinned to one of them
(``network_filter.hosts``), and the proxy's resolver and connector are replaced for this process
(``isol8.network.outbound.use``) by a resolver that knows no name and a connector that refuses
any address but loopback, as tests/conftest.py does.

A phase whose run goes wrong (a wrong answer, a sandbox timed out after 20 s) is reported as
failed, with why, and its targets FAIL; the other phases still report their numbers.

Targets (issue 10): filtered cold setup p50 <= none p50 + 1 ms; filtered warm p50 <= 1.1 x none
p50; proxy and relay throughput >= 60% of direct; >= 1,000 requests/s through one sandbox's
proxy on one connection.

    python benchmarks/network_filtered.py            # 120 cold/warm rounds, 10 bulk/request rounds
    python benchmarks/network_filtered.py --quick    # a smoke run, under a minute
    python benchmarks/network_filtered.py --json /tmp/nf.json --strict
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import multiprocessing
import os
import random
import socket
import statistics
import sys
import threading
import time
from typing import Any, Callable

import harness as h  # first: it puts the repo root on sys.path (isol8 need not be installed)
from isol8 import Isol8
from isol8.network import outbound

MB = 1_000_000
BULK_SIZE = 100 * MB
CHUNK = 1 << 20
TINY_BODY = b"ok\n"
BULK_HOST, TINY_HOST = "bench.test", "tiny.test"
RELAY_PORT = 9000  # any port but 80, 443 and the proxy's: only capture="all" takes it
PARALLEL = 8
CURL = "/usr/bin/curl"
HOST_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # no proxy variables on the host
SETTLE_S = 0.005
SANDBOX_TIMEOUT_MS = 20_000  # a bulk download or request batch takes a few seconds at worst
TARGET_COLD_MS = 1.0
TARGET_WARM_RATIO = 1.1
TARGET_BULK_RATIO = 0.6
TARGET_RPS = 1000.0
ARGV1 = "print(open('/proc/self/cmdline').read().split('\\0')[1])"  # '-c' in a zygote


# -- the upstreams, in a child process -----------------------------------------------------------

def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def _bulk_conn(conn: socket.socket, size: int) -> None:
    """Every request head on the connection gets ``size`` bytes with a Content-Length."""
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    body = memoryview(bytes(range(256)) * (CHUNK // 256))
    buf = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            buf = buf.split(b"\r\n\r\n", 1)[1]  # GET: no request body
            conn.sendall(head)
            left = size
            while left:
                n = min(left, CHUNK)
                conn.sendall(body[:n])
                left -= n


def _serve_bulk(sock: socket.socket, size: int) -> None:
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=_bulk_conn, args=(conn, size), daemon=True).start()


class _Tiny(asyncio.Protocol):
    """A fixed tiny response per request head (GETs, pipelining answered in order)."""

    RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                + str(len(TINY_BODY)).encode() + b"\r\n\r\n" + TINY_BODY)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf.rsplit(b"\r\n\r\n", 1)[1]
            self.transport.write(self.RESPONSE * n)  # type: ignore[attr-defined]


def _upstreams(bulk: socket.socket, tiny: socket.socket, size: int) -> None:
    """The child process: bulk connections on threads, tiny ones on an asyncio loop."""
    threading.Thread(target=_serve_bulk, args=(bulk, size), daemon=True).start()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(loop.create_server(_Tiny, sock=tiny))
    loop.run_forever()


# -- traffic stays on loopback -----------------------------------------------------------------

async def _no_resolver(host: str) -> list[Any]:
    raise OSError(-2, f"benchmark resolver: {host} is not pinned")


async def _loopback_connector(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                              port: int) -> socket.socket:
    if not address.is_loopback:
        raise ConnectionRefusedError(111, f"benchmark connector: {address} is not loopback")
    return await outbound.direct_connector(address, port)


class PhaseFailed(Exception):
    """A run in a phase did not do what it should: the phase is reported as failed, with
    why, and the other phases still report their numbers."""


# -- the benchmark -------------------------------------------------------------------------------

def _filter(capture: str, bulk_port: int, tiny_port: int) -> dict[str, Any]:
    return {"whitelist": [BULK_HOST, TINY_HOST],
            "hosts": {BULK_HOST: f"127.0.0.1:{bulk_port}", TINY_HOST: f"127.0.0.1:{tiny_port}"},
            "allow_private": True, "capture": capture}


def _curl_bulk(url: str, noproxy: bool) -> str:
    skip = "--noproxy '*' " if noproxy else ""
    return (f"{CURL} -sS {skip}-o /dev/null "
            f"-w '%{{time_total}} %{{size_download}} %{{http_code}}\\n' {url}")


def _curl_requests(url: str, n: int, parallel: bool, noproxy: bool) -> str:
    """A shell line printing the nanoseconds curl took, then how many answers were 200."""
    opts = f"-Z --parallel-max {PARALLEL} " if parallel else ""
    opts += "--noproxy '*' " if noproxy else ""
    return (f"s=$(date +%s%N); c=$({CURL} -s {opts}-w '\\n%{{http_code}}\\n' '{url}/s[1-{n}]'"
            f" | grep -c '^200$'); e=$(date +%s%N); echo $((e - s)) $c")


class Bench:
    def __init__(self, requests: int) -> None:
        self.requests = requests
        bulk, tiny = _listener(), _listener()
        self.bulk_port, self.tiny_port = bulk.getsockname()[1], tiny.getsockname()[1]
        ctx = multiprocessing.get_context("fork")  # before any engine: no thread to fork over
        self.server = ctx.Process(target=_upstreams, args=(bulk, tiny, BULK_SIZE), daemon=True)
        self.server.start()
        bulk.close()
        tiny.close()
        self.previous = outbound.use(_no_resolver, _loopback_connector)
        self.engines: list[Isol8] = []

    def engine(self, **kw: Any) -> Isol8:
        eng = Isol8(**kw)
        self.engines.append(eng)
        eng.start()
        return eng

    def filtered(self, capture: str, **kw: Any) -> Isol8:
        return self.engine(network="filtered", **kw,
                           network_filter=_filter(capture, self.bulk_port, self.tiny_port))

    def close_engines(self) -> None:
        for eng in self.engines:
            eng.stop()
        self.engines.clear()

    def close(self) -> None:
        try:
            self.close_engines()
        finally:
            outbound.use(*self.previous)
            self.server.terminate()
            self.server.join(5)

    # -- phase 1: cold -----------------------------------------------------------------------

    def cold_runners(self) -> list[tuple[str, h.Runner]]:
        def runner(name: str, eng: Isol8) -> h.Runner:
            def run() -> int:
                ns, result = h.timed(eng.execute, cmd="true")
                if result.exit_code != 0:
                    raise PhaseFailed(f"cold {name}: `true` failed: {result!r}")
                return ns
            return run
        return [("none", runner("none", self.engine(network="none"))),
                ("filtered", runner("filtered", self.filtered("web"))),
                ("filtered-all", runner("filtered-all", self.filtered("all")))]

    # -- phase 2: warm -----------------------------------------------------------------------

    def warm_runners(self) -> tuple[list[tuple[str, h.Runner]], Any]:
        prewarm = {"runtimes": ["python"]}
        engines = {"none": self.engine(network="none", prewarm=prewarm),
                   "filtered": self.filtered("web", prewarm=prewarm)}

        def runner(name: str, eng: Isol8) -> h.Runner:
            pool = eng._pool
            if pool is None:
                raise PhaseFailed(f"warm {name}: Isol8(prewarm=...) made no warm pool")

            def run() -> int:
                if not pool.wait_ready(30):
                    raise PhaseFailed(f"warm {name}: the pool did not refill within 30 s")
                time.sleep(SETTLE_S)
                ns, result = h.timed(eng.execute, h.PRINT1)
                if result.stdout != "1" or result.exit_code != 0:
                    raise PhaseFailed(f"warm {name}: expected stdout '1', got {result!r}")
                return ns
            return run

        def verify() -> None:
            for name, eng in engines.items():
                assert eng._pool is not None
                eng._pool.wait_ready(30)
                got = eng.execute(ARGV1).stdout.strip()
                if got != "-c":
                    raise PhaseFailed(f"warm {name}: not served by a pooled zygote "
                                     f"(argv[1] {got!r}, expected '-c')")
        return [(name, runner(name, eng)) for name, eng in engines.items()], verify

    # -- phase 3: bulk -----------------------------------------------------------------------

    def bulk_runners(self, eng: Isol8) -> list[tuple[str, h.Runner]]:
        direct = _curl_bulk(f"http://127.0.0.1:{self.bulk_port}/big", noproxy=True)
        proxy = _curl_bulk(f"http://{BULK_HOST}/big", noproxy=False)
        relay = _curl_bulk(f"http://{BULK_HOST}:{RELAY_PORT}/big", noproxy=True)

        def parse(name: str, out: str) -> int:
            try:
                seconds, size, code = out.split()
            except ValueError:
                raise PhaseFailed(f"bulk {name}: unexpected curl output {out!r}") from None
            if int(size) != BULK_SIZE or code != "200":
                raise PhaseFailed(f"bulk {name}: got {size} bytes, status {code}")
            return int(float(seconds) * 1e9)

        def on_host() -> int:
            rc, out, err = h.spawn_capture("/bin/sh", ["/bin/sh", "-c", direct], HOST_ENV)
            if rc != 0:
                raise PhaseFailed(f"bulk direct: curl failed ({rc}): {err[:500]!r}")
            return parse("direct", out.decode())

        def in_sandbox(name: str, cmd: str) -> h.Runner:
            def run() -> int:
                result = eng.execute(cmd=cmd)
                if result.exit_code != 0:
                    raise PhaseFailed(f"bulk {name}: {result!r}")
                got = result.resource_usage.network_bytes_in
                if got < BULK_SIZE:
                    raise PhaseFailed(f"bulk {name}: the proxy counted {got} bytes in, not "
                                     f"the body: curl did not go through it")
                return parse(name, result.stdout)
            return run
        return [("direct", on_host), ("proxy", in_sandbox("proxy", proxy)),
                ("relay", in_sandbox("relay", relay))]

    # -- phase 4: requests -------------------------------------------------------------------

    def request_runners(self, eng: Isol8) -> list[tuple[str, h.Runner]]:
        n = self.requests
        direct = f"http://127.0.0.1:{self.tiny_port}"
        proxied = f"http://{TINY_HOST}"

        def parse(name: str, out: str) -> int:
            try:
                ns, ok = (int(v) for v in out.split())
            except ValueError:
                raise PhaseFailed(f"requests {name}: unexpected output {out!r}") from None
            if ok != n:
                raise PhaseFailed(f"requests {name}: {ok} of {n} answers were 200")
            return ns

        def on_host(name: str, parallel: bool) -> h.Runner:
            cmd = _curl_requests(direct, n, parallel, noproxy=True)

            def run() -> int:
                rc, out, err = h.spawn_capture("/bin/bash", ["/bin/bash", "-c", cmd], HOST_ENV)
                if rc != 0:
                    raise PhaseFailed(f"requests {name}: exit {rc}: {err[:500]!r}")
                return parse(name, out.decode())
            return run

        def in_sandbox(name: str, parallel: bool) -> h.Runner:
            cmd = _curl_requests(proxied, n, parallel, noproxy=False)

            def run() -> int:
                result = eng.execute(cmd=cmd)
                if "timeout" in result.resource_usage.limits_reached:
                    answers = result.resource_usage.network_bytes_in // len(_Tiny.RESPONSE)
                    raise PhaseFailed(f"requests {name}: timed out after {result.duration_ms} "
                                     f"ms, {answers} of {n} answers had arrived")
                if result.exit_code != 0:
                    raise PhaseFailed(f"requests {name}: {result!r}")
                # each answer is counted as it reaches the sandbox: all of them came this way
                if result.resource_usage.network_bytes_in < n * len(_Tiny.RESPONSE) // 2:
                    raise PhaseFailed(f"requests {name}: the proxy did not carry the answers")
                return parse(name, result.stdout)
            return run
        return [("direct", on_host("direct", False)), ("proxy", in_sandbox("proxy", False)),
                ("direct -Z", on_host("direct -Z", True)),
                ("proxy -Z", in_sandbox("proxy -Z", True))]


def _phase(args: argparse.Namespace, samples: int, warmup: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "samples": samples, "warmup": warmup})


def main(argv: list[str] | None = None) -> int:
    parser = h.BenchParser(__doc__, warmup=5, quick_warmup=2, unit="cold and warm samples",
                           samples_note="; bulk and request rounds: --rounds")
    parser.add_argument("--rounds", type=int, default=None,
                        help="bulk downloads and request batches per runner (default 10, 3 "
                             "with --quick)")
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests per batch (default 2000)")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 10)
    if rounds < 1 or args.requests < 1:
        parser.error("--rounds and --requests must be positive")

    bench = Bench(args.requests)
    times: dict[str, dict[str, list[int]]] = {}
    failed: dict[str, str] = {}
    loads: list[tuple[float, float]] = []

    def phase(name: str, make: Callable[[], tuple[list[tuple[str, h.Runner]], Any]],
              phase_args: argparse.Namespace) -> None:
        try:
            runners, verify = make()
            times[name], load = h.run_rounds(runners, phase_args, after_warmup=verify)
            loads.append(load)
        except PhaseFailed as exc:
            failed[name] = str(exc)
            print(f"{name}: FAILED: {exc}", file=sys.stderr)

    try:
        phase("cold", lambda: (bench.cold_runners(), None), args)
        bench.close_engines()
        phase("warm", bench.warm_runners, args)
        bench.close_engines()
        eng = bench.filtered("all", timeout_ms=SANDBOX_TIMEOUT_MS)
        phase("bulk", lambda: (bench.bulk_runners(eng), None), _phase(args, rounds, 1))
        phase("requests", lambda: (bench.request_runners(eng), None), _phase(args, rounds, 1))
    finally:
        bench.close()
    load = (loads[0][0], loads[-1][1]) if loads else (os.getloadavg()[0],) * 2
    ok = report(times, failed, args, rounds, load)
    return h.finish(args, ok, {"samples": times, "failed": failed,
                               "requests_per_batch": args.requests, "bulk_bytes": BULK_SIZE})


# -- report --------------------------------------------------------------------------------------

def diff_ci(num: list[int], den: list[int], rounds: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of median(num) - median(den), in ms (resampled independently)."""
    rng = random.Random(8)
    diffs = sorted(statistics.median(rng.choices(num, k=len(num)))
                   - statistics.median(rng.choices(den, k=len(den))) for _ in range(rounds))
    return diffs[int(rounds * 0.025)] / 1e6, diffs[int(rounds * 0.975) - 1] / 1e6


LABELS = {
    ("cold", "none"): 'cold `true`, network="none"',
    ("cold", "filtered"): 'cold `true`, filtered (capture="web")',
    ("cold", "filtered-all"): 'cold `true`, filtered (capture="all")',
    ("warm", "none"): 'warm `print(1)`, network="none"',
    ("warm", "filtered"): 'warm `print(1)`, filtered',
}
Check = tuple[str, str, bool]


def report(times: dict[str, dict[str, list[int]]], failed: dict[str, str],
           args: argparse.Namespace, rounds: int, load: tuple[float, float]) -> bool:
    h.print_header("filtered network: ", args, load, unit="cold and warm samples",
                   extra=f", {rounds} bulk and request rounds per runner")
    checks: list[Check] = []
    checks += _report_setup(times)
    checks += _report_bulk(times.get("bulk"))
    checks += _report_requests(times.get("requests"), args.requests)
    for name, why in failed.items():
        print(f"\n{name}: FAILED: {why}")
    for name, what in FAILED_TARGETS.items():
        if name in failed:
            checks += [(target, "phase failed", False) for target in what]
    h.print_targets([(what, got, h.verdict(ok)) for what, got, ok in checks])
    return all(ok for _, _, ok in checks)


FAILED_TARGETS = {
    "cold": [f"cold: filtered p50 - none p50 <= {TARGET_COLD_MS:g} ms"],
    "warm": [f"warm: filtered p50 <= {TARGET_WARM_RATIO}x none p50"],
    "bulk": [f"bulk: explicit proxy >= {TARGET_BULK_RATIO:.0%} of direct",
             f"bulk: splice relay >= {TARGET_BULK_RATIO:.0%} of direct"],
    "requests": [f"requests: >= {TARGET_RPS:,.0f}/s through one sandbox's proxy, "
                 "one connection"],
}


def _report_setup(times: dict[str, dict[str, list[int]]]) -> list[Check]:
    rows, checks = [], []
    for phase in ("cold", "warm"):
        if phase not in times:
            continue
        base = times[phase]["none"]
        base_p50 = h.pct(base, 0.5)
        for name, values in times[phase].items():
            p50 = h.pct(values, 0.5)
            ratio, diff = "1.00x", "-"
            if name != "none":
                low, high = h.ratio_ci(values, base)
                ratio = f"{p50 / base_p50:.3f}x ({low:.3f}-{high:.3f})"
                dlow, dhigh = diff_ci(values, base)
                diff = f"{p50 - base_p50:+.2f} ms ({dlow:+.2f} to {dhigh:+.2f})"
            rows.append((LABELS[phase, name], f"{p50:.2f}", f"{h.pct(values, 0.9):.2f}",
                         f"{min(values) / 1e6:.2f}", ratio, diff))
    if not rows:
        return checks
    h.print_table(("runner", "p50 ms", "p90 ms", "min ms", "p50 / none p50 (95% CI)",
                   "p50 - none p50 (95% CI)"), rows)
    if "cold" in times:
        cold = times["cold"]
        diff = h.pct(cold["filtered"], 0.5) - h.pct(cold["none"], 0.5)
        low, high = diff_ci(cold["filtered"], cold["none"])
        checks.append((FAILED_TARGETS["cold"][0],
                       f"{diff:+.2f} ms (95% CI {low:+.2f} to {high:+.2f})",
                       diff <= TARGET_COLD_MS))
    if "warm" in times:
        warm = times["warm"]
        ratio = h.pct(warm["filtered"], 0.5) / h.pct(warm["none"], 0.5)
        low, high = h.ratio_ci(warm["filtered"], warm["none"])
        checks.append((FAILED_TARGETS["warm"][0], f"{ratio:.3f}x (95% CI {low:.3f}-{high:.3f})",
                       ratio <= TARGET_WARM_RATIO))
    return checks


def _report_bulk(bulk: dict[str, list[int]] | None) -> list[Check]:
    if bulk is None:
        return []
    print(f"\nbulk: a {BULK_SIZE // MB} MB body, curl to /dev/null, timed by curl "
          "(`%{time_total}`)\n")
    rows = []
    direct_p50 = h.pct(bulk["direct"], 0.5)
    for name, label in (("direct", "direct (curl on the host)"),
                        ("proxy", "explicit proxy (HTTP_PROXY)"),
                        ("relay", f'capture="all", port {RELAY_PORT} (splice relay)')):
        values = bulk[name]
        p50 = h.pct(values, 0.5)
        ratio = "1.00x"
        if name != "direct":
            low, high = h.ratio_ci(bulk["direct"], values)
            ratio = f"{direct_p50 / p50:.2f}x ({low:.2f}-{high:.2f})"
        rows.append((label, f"{p50:.1f}", f"{min(values) / 1e6:.1f}",
                     f"{BULK_SIZE / (p50 / 1e3) / MB:.0f}",
                     f"{BULK_SIZE / (max(values) / 1e9) / MB:.0f}-"
                     f"{BULK_SIZE / (min(values) / 1e9) / MB:.0f}", ratio))
    h.print_table(("path", "p50 ms", "min ms", "MB/s at p50", "MB/s range",
                   "throughput / direct (95% CI)"), rows)
    checks = []
    for target, name in zip(FAILED_TARGETS["bulk"], ("proxy", "relay")):
        ratio = direct_p50 / h.pct(bulk[name], 0.5)
        checks.append((target, f"{ratio:.0%}", ratio >= TARGET_BULK_RATIO))
    return checks


def _report_requests(req: dict[str, list[int]] | None, n: int) -> list[Check]:
    if req is None:
        return []
    print(f"\nrequests: {n} GETs of a {len(TINY_BODY)}-byte body per curl, timed around curl "
          f"in the shell; -Z: --parallel-max {PARALLEL}\n")
    rows = []
    for name, label in (("direct", "direct, one connection"),
                        ("proxy", "through the proxy, one connection"),
                        ("direct -Z", f"direct, -Z ({PARALLEL} connections)"),
                        ("proxy -Z", f"through the proxy, -Z ({PARALLEL} connections)")):
        values = req[name]
        base = req["direct -Z" if name.endswith("-Z") else "direct"]
        ratio = "1.00x"
        if name.startswith("proxy"):
            low, high = h.ratio_ci(base, values)
            ratio = f"{h.pct(base, 0.5) / h.pct(values, 0.5):.2f}x ({low:.2f}-{high:.2f})"
        p50 = h.pct(values, 0.5)
        rows.append((label, f"{p50:.0f}", f"{n / (p50 / 1e3):.0f}",
                     f"{n / (max(values) / 1e9):.0f}-{n / (min(values) / 1e9):.0f}",
                     f"{p50 * 1e3 / n:.0f}", ratio))
    h.print_table(("path", "p50 ms", "req/s at p50", "req/s range", "us/request",
                   "req/s / direct (95% CI)"), rows)
    rps = n / (h.pct(req["proxy"], 0.5) / 1e3)
    return [(FAILED_TARGETS["requests"][0], f"{rps:,.0f}/s", rps >= TARGET_RPS)]


if __name__ == "__main__":
    sys.exit(main())
