#!/usr/bin/env python3
"""Package installs: what ``install_packages`` costs a run, from the index and from the shared
download cache.

Three runners on one ``network="filtered"`` engine whose ``package_index_url`` is a PEP 503
index on 127.0.0.1 (http.server in a thread) serving one small pure-Python wheel:

  plain     ``execute("print(1)")``: the staged run without an install (the baseline)
  index     the same with ``install_packages=["benchpkg"]`` and the cache emptied first: pip
            tries the cache, downloads from the index, installs; the supervisor reads the
            file back, fetches the index's page, checks the sha256 and caches it
  cached    the same with the cache holding the verified wheel: pip installs from the
            read-only cache with no index at all (the index's request count is checked)

Install time is a runner's median minus plain's. Nothing leaves loopback: the proxy's
resolver knows no name and its connector refuses any address but loopback, as in
tests/conftest.py.

Target (issue 12): a second install of the same pip package through the shared cache under
2 s.

    python benchmarks/package_cache.py            # 20 rounds
    python benchmarks/package_cache.py --quick    # 5 rounds
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import ipaddress
import os
import shutil
import statistics
import sys
import tempfile
import threading
import zipfile
from typing import Any

import harness

from isol8 import Isol8  # noqa: E402  (harness puts the checkout on sys.path)
from isol8.network import outbound  # noqa: E402
from isol8.network.outbound import direct_connector  # noqa: E402
from isol8.packages import PackageCache  # noqa: E402

CODE = "import benchpkg; print(benchpkg.VALUE)"


def _wheel() -> tuple[str, bytes]:
    """A pure-Python wheel of ~100 KiB (a module of data), so the copy is not free."""
    dist = "benchpkg-1.0.dist-info"
    files = {"benchpkg/__init__.py": b"VALUE = 'ok'\n",
             "benchpkg/data.py": b"DATA = " + repr(os.urandom(48 << 10).hex()).encode() + b"\n",
             f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: benchpkg\nVersion: 1.0\n",
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n"}
    record = "".join(f"{p},sha256={_b64(hashlib.sha256(d).digest())},{len(d)}\n"
                     for p, d in files.items()) + f"{dist}/RECORD,,\n"
    files[f"{dist}/RECORD"] = record.encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return "benchpkg-1.0-py3-none-any.whl", buf.getvalue()


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class _Index(http.server.ThreadingHTTPServer):
    requests = 0


def _serve(name: str, data: bytes) -> _Index:
    page = (f'<a href="../../files/{name}#sha256={hashlib.sha256(data).hexdigest()}">'
            f"{name}</a>").encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            server.requests += 1
            body, kind = ((page, "text/html") if self.path == "/simple/benchpkg/"
                          else (data, "application/octet-stream")
                          if self.path == f"/files/{name}" else (b"", ""))
            if not body:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = _Index(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def _no_resolver(host: str) -> list[Any]:
    raise OSError(-2, f"{host}: the benchmark resolves no name")


async def _loopback_connector(address: Any, port: int) -> Any:
    if not ipaddress.ip_address(address).is_loopback:
        raise ConnectionRefusedError(111, f"{address} is not loopback")
    return await direct_connector(address, port)


def main() -> int:
    parser = harness.BenchParser(__doc__, warmup=1, quick_warmup=1, samples=20, quick=5)
    args = parser.parse_args()
    name, data = _wheel()
    server = _serve(name, data)
    index_url = f"http://127.0.0.1:{server.server_address[1]}/simple"
    root = tempfile.mkdtemp(prefix="isol8-bench-pkgcache-", dir="/var/tmp")
    os.chmod(root, 0o755)
    previous = outbound.use(_no_resolver, _loopback_connector)
    engine = Isol8(network="filtered", package_index_url=index_url, package_cache=root,
                   timeout_ms=60_000)
    cache = PackageCache(root, index_url)
    failures: list[str] = []
    index_requests: dict[str, list[int]] = {"index": [], "cached": []}

    def run(label: str, install: list[str] | None, empty: bool = False) -> int:
        if empty:
            for entry in os.listdir(cache.dir):
                if entry != ".lock":
                    os.unlink(os.path.join(cache.dir, entry))
            cache.ensure()
        before = server.requests
        elapsed, result = harness.timed(engine.execute, CODE if install else "print(1)",
                                        install_packages=install)
        want = "ok" if install else "1"
        if result.exit_code != 0 or result.stdout != want:
            failures.append(f"{label}: exit {result.exit_code}, {result.stderr[-300:]}")
        if label in index_requests:
            index_requests[label].append(server.requests - before)
        return elapsed

    runners = [("plain", lambda: run("plain", None)),
               ("index", lambda: run("index", ["benchpkg"], empty=True)),
               ("cached", lambda: run("cached", ["benchpkg"]))]
    try:
        engine.start()
        times, load = harness.run_rounds(
            runners, args, after_warmup=lambda: [v.clear() for v in index_requests.values()],
            close=engine.stop)
    finally:
        outbound.use(*previous)
        server.shutdown()
        server.server_close()
        shutil.rmtree(root, ignore_errors=True)
    harness.print_header("package installs (install_packages): ", args, load, unit="rounds")
    base = statistics.median(times["plain"])
    rows = []
    for label in ("plain", "index", "cached"):
        median = statistics.median(times[label])
        rows.append((label, f"{median / 1e6:.0f}", f"{harness.pct(times[label], 0.95):.0f}",
                     "" if label == "plain" else f"{(median - base) / 1e6:.0f}",
                     str(sum(index_requests.get(label, [])))))
    harness.print_table(("runner", "p50 ms", "p95 ms", "install ms (p50 - plain)",
                         "index requests"), rows)
    cached_install = (statistics.median(times["cached"]) - base) / 1e9
    ok = not failures and cached_install < 2.0 and sum(index_requests["cached"]) == 0
    harness.print_targets([
        ("cached install < 2 s, no index request",
         f"{cached_install:.2f} s, {sum(index_requests['cached'])} requests", harness.verdict(ok)),
    ])
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    return harness.finish(args, ok, {k: v for k, v in times.items()})


if __name__ == "__main__":
    sys.exit(main())
