#!/usr/bin/env python3
"""MCP overhead: one ``execute_code`` through ``isol8 mcp`` against the library call it
makes, both on a warm pool with the same options.

Rows, every one timed in the same rotation (harness.py):

  library     AsyncIsol8(prewarm={"runtimes": ["python"]}).execute("print(1)"): the call
              the server makes for a tool call, with nothing around it (the baseline)
  in-process  the SDK's in-memory Client against build_server(...) in this process: the
              tool layer (schema validation, the streamed run, the structured result)
              without a transport
  stdio       the SDK's stdio Client against a real ``python -m isol8 mcp`` subprocess,
              JSON-RPC over pipes: what an MCP host pays

All three run on one event loop in a background thread (so every row pays the same hop
from the harness's thread). Before every timed call, untimed, the harness waits SETTLE_S
for the engines' pools to refill, so every sample is a pool hit: after the warm-up a run
of each row must report ``-c`` as its interpreter's argv[1], which only a pooled zygote
does.

Target (from the issue): stdio p50 - library p50 <= 5 ms.

    python benchmarks/mcp_overhead.py                  # 120 samples per runner
    python benchmarks/mcp_overhead.py --quick          # 20 samples: a smoke run
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Coroutine
from typing import Any

import harness as h  # first: it puts the repo root on sys.path (isol8 need not be installed)
from mcp import Client, StdioServerParameters

from isol8 import AsyncIsol8
from isol8.mcp.engines import PREWARMED, Backend
from isol8.mcp.limits import McpLimits
from isol8.mcp.tools import build_server

CODE = h.PRINT1
ARGV1 = "print(open('/proc/self/cmdline').read().split('\\0')[1])"  # '-c' in a zygote
TARGET_MS = 5.0
SETTLE_S = 0.06  # a pool's refill (a helper spawn and an interpreter start) is over


class Bench:
    """The engines and clients, on a background loop, entered and left by one task there
    (the SDK's clients hold anyio task groups, which must end in the task that began them)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.ready, self.done = asyncio.Event(), asyncio.Event()
        self.failed: BaseException | None = None
        self.holder = asyncio.run_coroutine_threadsafe(self._hold(), self.loop)

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def _hold(self) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                self.engine = await stack.enter_async_context(AsyncIsol8())
                await self.engine.start(PREWARMED)
                backend = Backend({})
                stack.push_async_callback(backend.close)
                await backend.shared()
                self.inproc = await stack.enter_async_context(
                    Client(build_server(backend, McpLimits(), lambda ctx: "")))
                self.stdio_client = await stack.enter_async_context(Client(
                    StdioServerParameters(command=sys.executable, args=["-m", "isol8", "mcp"],
                                          cwd=str(h.REPO))))
                self.ready.set()
                await self.done.wait()
        except BaseException as exc:
            self.failed = exc
            self.ready.set()
            raise

    def wait_ready(self) -> None:
        self.call(self.ready.wait())
        if self.failed is not None:
            raise SystemExit(f"setting up failed: {self.failed!r}")

    async def _library(self, code: str) -> str:
        return (await self.engine.execute(code)).stdout

    async def _tool(self, client: Client, code: str) -> str:
        result = await client.call_tool("execute_code", {"code": code})
        if result.is_error:
            raise SystemExit(f"execute_code failed: {result.content}")
        return result.structured_content["stdout"]

    def timed(self, coro_of) -> int:
        time.sleep(SETTLE_S)
        t0 = time.perf_counter_ns()
        out = self.call(coro_of(CODE))
        ns = time.perf_counter_ns() - t0
        if out.strip() != "1":
            raise SystemExit(f"unexpected output {out!r}")
        return ns

    def library(self) -> int:
        return self.timed(self._library)

    def in_process(self) -> int:
        return self.timed(lambda code: self._tool(self.inproc, code))

    def stdio(self) -> int:
        return self.timed(lambda code: self._tool(self.stdio_client, code))

    def verify(self) -> None:
        for name, run in (("library", self._library),
                          ("in-process", lambda c: self._tool(self.inproc, c)),
                          ("stdio", lambda c: self._tool(self.stdio_client, c))):
            time.sleep(SETTLE_S)
            got = self.call(run(ARGV1)).strip()
            if got != "-c":
                raise SystemExit(f"{name}: not served by a pooled zygote (argv[1] {got!r})")

    def close(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.done.set)
            self.holder.result()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()


LABELS = {"library": "AsyncIsol8.execute (warm pool)",
          "in-process": "execute_code, in-memory client",
          "stdio": "execute_code, isol8 mcp over stdio"}


def main(argv: list[str] | None = None) -> int:
    parser = h.BenchParser(__doc__, warmup=10, quick_warmup=3)
    args = parser.parse_args(argv)
    bench = Bench()
    bench.wait_ready()
    runners: list[tuple[str, h.Runner]] = [
        ("library", bench.library), ("in-process", bench.in_process), ("stdio", bench.stdio)]
    times, load = h.run_rounds(runners, args, after_warmup=bench.verify, close=bench.close)
    return h.finish(args, report(times, args, load), {"samples": times})


def report(times: dict[str, list[int]], args, load: tuple[float, float]) -> bool:
    h.print_header(f"MCP overhead: execute_code {CODE!r}, ", args, load)
    base = times["library"]
    base_p50 = h.pct(base, 0.5)
    rows = []
    for name, values in times.items():
        p50 = h.pct(values, 0.5)
        ratio = f"{p50 / base_p50:.2f}x"
        if name != "library":
            low, high = h.ratio_ci(values, base)
            ratio += f" ({low:.2f}-{high:.2f})"
        rows.append((LABELS[name], f"{p50:.2f}", f"{h.pct(values, 0.9):.2f}",
                     f"{min(values) / 1e6:.2f}", ratio, f"{p50 - base_p50:+.2f} ms"))
    h.print_table(("runner", "p50 ms", "p90 ms", "min ms", "p50 / library p50 (95% CI)",
                   "p50 - library p50"), rows)
    added = h.pct(times["stdio"], 0.5) - base_p50
    ok = added <= TARGET_MS
    h.print_targets([(f"stdio p50 - library p50 <= {TARGET_MS:.0f} ms", f"{added:+.2f} ms",
                      h.verdict(ok))])
    return ok


if __name__ == "__main__":
    sys.exit(main())
