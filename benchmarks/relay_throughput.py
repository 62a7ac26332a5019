#!/usr/bin/env python3
"""Relay throughput: a 100 MB loopback download, direct and through isol8's byte relay.

Three processes per download, as in filtered mode: a server that sends the body, a relay
process (one asyncio loop, like the supervisor) and this process, the client, which times
each download from connect() to EOF and checks its length. Rows, in the same rotation
(order rotated per round, so machine noise spreads evenly over them):

  direct    the client downloads from the server itself: the baseline
  splice    through isol8.network.relay.relay() in the relay process: the proxy's path
            after the request head (socket -> pipe -> socket, see relay.py)
  streams   through a plain asyncio streams relay in the same process (read(256 KiB),
            write, drain, write_eof, buffer limit 256 KiB): what the splice relay is
            measured against
  floor     through a blocking splice loop in a process of its own, one direction only
            (upstream -> pipe -> client, 1 MiB pipe, no event loop, no Python between the
            two splices but the loop): the kernel path any splice relay takes, so the
            ceiling of the splice row on this machine

The relay process connects the upstream for each accepted client and relays until both
directions end. Throughput is the body size over the median time; the ratio is direct median
time over the row's median time (95% bootstrap CI).

Target (issue 10): the splice relay's throughput >= 60% of the direct download's.

    python benchmarks/relay_throughput.py                 # median of 5 downloads per row
    python benchmarks/relay_throughput.py --quick         # 2 downloads: a smoke run
    python benchmarks/relay_throughput.py --pipe-size 65536     # another pipe size
"""

from __future__ import annotations

import asyncio
import fcntl
import multiprocessing
import os
import socket
import statistics
import sys
import time

import harness as h  # first: it puts the repo root on sys.path (isol8 need not be installed)
from isol8.network import relay as relay_mod

MB = 1_000_000
TARGET_RATIO = 0.6
CHUNK = 1 << 20
# The streams relay's reads and buffer limit: asyncio's own socket reads are 256 KiB
# (selector_events.max_size); a smaller limit pauses reading every 128 KiB (2 x limit).
STREAM_READ = 256 * 1024
Address = tuple[str, int]


def listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def serve_body(sock: socket.socket, size: int) -> None:
    """The server process: for each connection, ``size`` bytes, then close."""
    body = memoryview(bytes(range(256)) * (CHUNK // 256))
    while True:
        conn, _ = sock.accept()
        with conn:
            left = size
            while left:
                n = min(left, CHUNK)
                conn.sendall(body[:n])
                left -= n


def serve_relays(
    splice_sock: socket.socket, streams_sock: socket.socket, server: Address, pipe_size: int | None
) -> None:
    """The relay process: one loop serving both relays, as the supervisor serves proxies."""
    if pipe_size is not None:
        relay_mod.PIPE_SIZE = pipe_size
    asyncio.run(_relays(splice_sock, streams_sock, server))


async def _relays(
    splice_sock: socket.socket, streams_sock: socket.socket, server: Address
) -> None:
    loop = asyncio.get_running_loop()
    splice_sock.setblocking(False)

    async def splice_one(client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with client, upstream:
            upstream.setblocking(False)
            await loop.sock_connect(upstream, server)
            await relay_mod.relay(client, upstream, relay_mod.ByteCount())

    async def accept_splice() -> None:
        while True:
            client, _ = await loop.sock_accept(splice_sock)
            client.setblocking(False)
            loop.create_task(splice_one(client))

    async def copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(STREAM_READ):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except OSError:
            pass

    async def streams_one(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        u_reader, u_writer = await asyncio.open_connection(*server, limit=STREAM_READ)
        try:
            await asyncio.gather(copy(c_reader, u_writer), copy(u_reader, c_writer))
        finally:
            u_writer.close()
            c_writer.close()

    streams = await asyncio.start_server(streams_one, sock=streams_sock, limit=STREAM_READ)
    async with streams:
        await accept_splice()


def serve_floor(sock: socket.socket, server: Address) -> None:
    """The floor process: blocking splice, download direction only, one connection at a
    time."""
    while True:
        client, _ = sock.accept()
        with client, socket.create_connection(server) as upstream:
            r, w = os.pipe2(os.O_CLOEXEC)
            try:
                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, relay_mod.PIPE_SIZE)
                while n := os.splice(upstream.fileno(), w, relay_mod.PIPE_SIZE):
                    while n:
                        n -= os.splice(r, client.fileno(), n)
            finally:
                os.close(r)
                os.close(w)


def download(address: Address, size: int, buf: bytearray) -> int:
    """One timed download: connect, recv_into to EOF; ns. The length must be ``size``."""
    view = memoryview(buf)
    t0 = time.perf_counter_ns()
    with socket.create_connection(address) as sock:
        got = 0
        while n := sock.recv_into(view):
            got += n
    ns = time.perf_counter_ns() - t0
    if got != size:
        raise SystemExit(f"download from {address}: {got} bytes, expected {size}")
    return ns


def main(argv: list[str] | None = None) -> int:
    parser = h.BenchParser(__doc__, warmup=1, quick_warmup=1, samples=5, quick=2, unit="downloads")
    parser.add_argument("--mb", type=int, default=100, help="body size in MB (default 100)")
    parser.add_argument(
        "--pipe-size",
        type=int,
        default=None,
        help=f"the relay's pipe size in bytes (default {relay_mod.PIPE_SIZE})",
    )
    args = parser.parse_args(argv)
    size = args.mb * MB

    ctx = multiprocessing.get_context("fork")  # no thread runs yet: fork is safe
    server_sock, splice_sock, streams_sock, floor_sock = (listener() for _ in range(4))
    server_addr = server_sock.getsockname()
    procs = [
        ctx.Process(target=serve_body, args=(server_sock, size), daemon=True),
        ctx.Process(
            target=serve_relays,
            daemon=True,
            args=(splice_sock, streams_sock, server_addr, args.pipe_size),
        ),
        ctx.Process(target=serve_floor, args=(floor_sock, server_addr), daemon=True),
    ]
    for proc in procs:
        proc.start()
    addresses = {
        "direct": server_addr,
        "splice": splice_sock.getsockname(),
        "streams": streams_sock.getsockname(),
        "floor": floor_sock.getsockname(),
    }
    for sock in (server_sock, splice_sock, streams_sock, floor_sock):
        sock.close()  # the children hold them

    buf = bytearray(CHUNK)

    def runner(name: str) -> h.Runner:
        return lambda: download(addresses[name], size, buf)

    def close() -> None:
        for proc in procs:
            proc.terminate()
            proc.join()

    runners = [(name, runner(name)) for name in addresses]
    times, load = h.run_rounds(runners, args, close=close)
    return h.finish(args, report(times, size, args, load), {"samples": times})


LABELS = {
    "direct": "direct download",
    "splice": "isol8 splice relay (separate process)",
    "streams": "asyncio streams relay (separate process)",
    "floor": "blocking splice loop (separate process)",
}


def report(times: dict[str, list[int]], size: int, args, load: tuple[float, float]) -> bool:
    pipe = args.pipe_size or relay_mod.PIPE_SIZE
    h.print_header(
        f"relay throughput: {size // MB} MB over loopback, ",
        args,
        load,
        unit="downloads",
        extra=f", relay pipe {pipe // 1024} KiB",
    )
    direct = times["direct"]
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        ratio = "1.00"
        if name != "direct":
            low, high = h.ratio_ci(direct, values)
            ratio = f"{statistics.median(direct) / median:.2f} ({low:.2f}-{high:.2f})"
        rows.append(
            (
                LABELS[name],
                f"{size / MB / (median / 1e9):.0f}",
                f"{size / MB / (min(values) / 1e9):.0f}",
                f"{median / 1e6:.0f}",
                ratio,
            )
        )
    h.print_table(
        ("runner", "median MB/s", "best MB/s", "median ms", "throughput / direct (95% CI)"), rows
    )
    floor = statistics.median(times["floor"]) / statistics.median(times["splice"])
    low, high = h.ratio_ci(times["floor"], times["splice"])
    print(
        f"\nsplice relay / blocking splice loop: {floor:.2f} (95% CI {low:.2f}-{high:.2f}): "
        "1.00 would mean the event loop and the relay's bookkeeping cost nothing"
    )
    ratio = statistics.median(direct) / statistics.median(times["splice"])
    ok = ratio >= TARGET_RATIO
    h.print_targets(
        [
            (
                f"splice relay >= {TARGET_RATIO:.0%} of direct throughput",
                f"{ratio:.0%}",
                h.verdict(ok),
            )
        ]
    )
    return ok


if __name__ == "__main__":
    sys.exit(main())
