"""network="filtered": hostname policy through the supervisor's proxy, explicit and
transparent, with the SSRF guard, logs and byte counts.

Every upstream is a server of this test on 127.0.0.1, reached through ``hosts`` pins with
``allow_private`` (loopback is private): conftest's connector records and refuses anything
else, and its table resolver answers every name not pinned, so no packet leaves the machine
even if the guard under test were broken.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from isol8 import InvalidRequest, Isol8

from conftest import ATTEMPT_PY, run_py


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str]]

    def do_GET(self) -> None:
        self.server.seen.append((self.headers["Host"], self.path))  # type: ignore[attr-defined]
        if self.path.startswith("/big/"):
            size = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            chunk = b"x" * 65536
            while size:
                n = min(size, len(chunk))
                self.wfile.write(chunk[:n])
                size -= n
            return
        if self.path.startswith("/slow"):
            server = self.server
            with server.lock:  # type: ignore[attr-defined]
                server.active += 1  # type: ignore[attr-defined]
                server.peak = max(server.peak, server.active)  # type: ignore[attr-defined]
            time.sleep(0.3)
            with server.lock:  # type: ignore[attr-defined]
                server.active -= 1  # type: ignore[attr-defined]
        body = f"hello {self.headers['Host']} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        size = int(self.headers["Content-Length"])
        got = 0
        while got < size:
            got += len(self.rfile.read(min(65536, size - got)))
        body = f"got {got}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(context: ssl.SSLContext | None = None,
           handler: type[http.server.BaseHTTPRequestHandler] | None = None,
           ) -> Iterator[http.server.ThreadingHTTPServer]:
    """A loopback server (TLS with ``context``) in a thread, ``_Handler`` unless another
    ``handler`` is given (tests/test_code_url.py), shut down after."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler or _Handler)
    server.daemon_threads = True
    server.seen = []  # type: ignore[attr-defined]
    server.lock = threading.Lock()  # type: ignore[attr-defined]
    server.active = server.peak = 0  # type: ignore[attr-defined]
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def web() -> Iterator[http.server.ThreadingHTTPServer]:
    yield from _serve()


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificate")
    where = tmp_path_factory.mktemp("tls")
    key, crt = where / "key.pem", where / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=tls.test", "-addext", "subjectAltName=DNS:tls.test",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    return key, crt


@pytest.fixture(scope="module")
def tls(cert) -> Iterator[http.server.ThreadingHTTPServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert[1]), str(cert[0]))
    yield from _serve(context)


def policy(web, **extra) -> dict:
    port = web.server_address[1]
    flt = {"whitelist": [r"(^|\.)good\.test$", r"^tls\.test$"], "blacklist": [r"^bad\.good\.test$"],
           "hosts": {name: f"127.0.0.1:{port}"
                     for name in ("good.test", "api.good.test", "bad.good.test", "other.test")},
           "allow_private": True}
    flt.update(extra)
    return flt


@pytest.fixture(scope="module")
def filtered(web, tls) -> Iterator[Isol8]:
    pins = policy(web)["hosts"] | {"tls.test": f"127.0.0.1:{tls.server_address[1]}"}
    with Isol8(network="filtered", network_filter=policy(web, hosts=pins),
               log_network=True) as eng:
        yield eng


CURL = "curl -sS --max-time 10 "


def test_python_urllib_through_the_proxy_variables(filtered, web):
    r = run_py(filtered, "import os, urllib.request\n"
                         "print(os.environ['HTTP_PROXY'], os.environ['NO_PROXY'])\n"
                         "print(urllib.request.urlopen('http://good.test/py').read().decode())")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ("http://127.0.0.1:8118 localhost,127.0.0.1,::1\n"
                        "hello good.test /py")
    assert ("good.test", "/py") in web.seen


def test_python_requests(filtered):
    r = run_py(filtered, "import requests\n"
                         "print(requests.get('http://good.test/rq', timeout=10).text)")
    assert (r.exit_code, r.stdout) == (0, "hello good.test /rq"), r.stderr


def test_curl_explicit_and_keep_alive_logs_every_request(filtered):
    r = filtered.execute(cmd=CURL + "http://good.test/1 http://good.test/2 "
                                    "http://api.good.test/3")
    assert (r.exit_code, r.stdout) == (0, "hello good.test /1\nhello good.test /2\n"
                                          "hello api.good.test /3"), r.stderr
    assert [(e.method, e.host, e.path, e.action) for e in r.network_logs] == [
        ("GET", "good.test", "/1", "ALLOW"), ("GET", "good.test", "/2", "ALLOW"),
        ("GET", "api.good.test", "/3", "ALLOW")]
    wire = r.to_dict()["networkLogs"][0]
    assert set(wire) == {"timestamp", "method", "host", "path", "action", "durationMs"}


def test_transparent_capture_for_clients_that_ignore_the_proxy(filtered):
    r = filtered.execute(cmd="cat /etc/resolv.conf | head -1; " + CURL
                         + "--noproxy '*' http://good.test/t; "
                         "node -e \"fetch('http://good.test/node').then(r => r.text())"
                         ".then(t => process.stdout.write(t))\"")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "nameserver 127.0.0.1\nhello good.test /t\nhello good.test /node"


def test_a_raw_socket_to_port_80_is_captured(filtered):
    r = run_py(filtered, "import socket\n"
                         "s = socket.create_connection(('good.test', 80), timeout=10)\n"
                         "s.sendall(b'GET /raw HTTP/1.1\\r\\nHost: good.test\\r\\n"
                         "Connection: close\\r\\n\\r\\n')\n"
                         "data = b''\n"
                         "while chunk := s.recv(4096): data += chunk\n"
                         "print(data.split(b'\\r\\n')[0].decode(), data.split(b'\\r\\n\\r\\n')[1].decode())")
    assert (r.exit_code, r.stdout) == (0, "HTTP/1.1 200 OK hello good.test /raw"), r.stderr


def test_an_unlisted_host_gets_403_naming_the_rule(filtered, web):
    r = filtered.execute(cmd=CURL + "-w '\\n%{http_code}' http://other.test/x")
    assert r.stdout.splitlines() == ["isol8: other.test is blocked by the network filter: "
                                     "no whitelist rule matches", "", "403"]
    assert ("other.test", "/x") not in web.seen
    entry = r.network_logs[-1]
    assert (entry.host, entry.action, entry.method, entry.path) == ("other.test", "BLOCK",
                                                                    "GET", "/x")


def test_deny_beats_allow(filtered, web):
    # A denied name does not resolve (NXDOMAIN); a client that dials an address itself and
    # names the host in its request is refused by the captured port 80 just the same.
    r = filtered.execute(cmd=CURL + "-w '\\n%{http_code}\\n' http://bad.good.test/x; "
                         + CURL + "--noproxy '*' -H 'Host: bad.good.test' "
                         "-w '\\n%{http_code}' http://203.0.113.7/y; getent hosts bad.good.test")
    assert r.stdout.splitlines() == [
        "isol8: bad.good.test is blocked by the network filter: "
        "blacklist[0] '^bad\\\\.good\\\\.test$'", "", "403"] * 2
    assert not [s for s in web.seen if s[0] == "bad.good.test"]


def test_a_refused_name_does_not_resolve(filtered):
    r = run_py(filtered, "import socket\n"
                         "for name in ('good.test', 'other.test'):\n"
                         "    try: print(socket.getaddrinfo(name, 80)[0][4][0])\n"
                         "    except socket.gaierror as e: print('gaierror', e.errno)")
    first, second = r.stdout.splitlines()
    assert first.startswith(("198.18.", "198.19.", "fd49:534f:4c38::"))
    assert second == f"gaierror {socket.EAI_NONAME}"


def test_other_ports_are_refused_at_once(filtered):
    r = run_py(filtered, ATTEMPT_PY + "import socket, time\n"
               "t = time.monotonic()\n"
               "for target in (('good.test', 22), ('203.0.113.7', 5432), ('2001:db8::7', 8080)):\n"
               "    s = socket.socket(socket.AF_INET6 if ':' in target[0] else socket.AF_INET)\n"
               "    s.settimeout(5)\n"
               "    print(attempt(lambda: s.connect(target)))\n"
               "print(time.monotonic() - t < 1)")
    assert r.stdout.splitlines() == ["ECONNREFUSED"] * 3 + ["True"], r.stderr


def test_the_sandbox_cannot_take_the_proxy_ports(filtered):
    r = run_py(filtered, ATTEMPT_PY + "import socket\n"
               "for kind, port in ((socket.SOCK_STREAM, 8118), (socket.SOCK_STREAM, 80),\n"
               "                   (socket.SOCK_STREAM, 443), (socket.SOCK_DGRAM, 53)):\n"
               "    s = socket.socket(socket.AF_INET, kind)\n"
               "    print(attempt(lambda: s.bind(('127.0.0.1', port))))")
    assert set(r.stdout.splitlines()) <= {"EADDRINUSE", "EACCES"}, r.stdout
    assert len(r.stdout.splitlines()) == 4


def test_tls_is_passed_through_by_connect_and_by_capture(filtered, cert, tls):
    ca = cert[1].read_bytes()
    r = filtered.execute(cmd=CURL + "--cacert /sandbox/ca.pem https://tls.test/c; "
                         + CURL + "--noproxy '*' --cacert /sandbox/ca.pem https://tls.test/n",
                         files={"/sandbox/ca.pem": ca})
    assert (r.exit_code, r.stdout) == (0, "hello tls.test /c\nhello tls.test /n"), r.stderr
    tunnels = [(e.method, e.host, e.path, e.action) for e in r.network_logs]
    assert tunnels == [("CONNECT", "tls.test", None, "ALLOW")] * 2


def test_connect_with_a_mismatched_sni_is_refused(filtered, tls):
    r = run_py(filtered, "import socket, ssl\n"
               "s = socket.create_connection(('127.0.0.1', 8118), timeout=10)\n"
               "s.sendall(b'CONNECT tls.test:443 HTTP/1.1\\r\\nHost: tls.test:443\\r\\n\\r\\n')\n"
               "print(s.recv(100).split(b'\\r\\n')[0].decode())\n"
               "ctx = ssl.create_default_context(); ctx.check_hostname = False\n"
               "ctx.verify_mode = ssl.CERT_NONE\n"
               "try:\n"
               "    ctx.wrap_socket(s, server_hostname='evil.test')\n"
               "    print('handshake completed')\n"
               "except (ssl.SSLError, OSError) as e:\n"
               "    print('refused')")
    assert r.stdout.splitlines() == ["HTTP/1.1 200 Connection established", "refused"]
    entry = r.network_logs[-1]
    assert (entry.method, entry.host, entry.action) == ("CONNECT", "tls.test", "BLOCK")
    assert "evil.test" in entry.reason


@pytest.mark.parametrize("url, why", [
    ("http://loopback.test/", "loopback"),
    ("http://private.test/", "10.0.0.5"),
    ("http://metadata.test/latest/meta-data/", "169.254.169.254"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
    ("http://[::ffff:127.0.0.1]:9/", "127.0.0.1"),
    ("http://mapped.test/", "127.0.0.1"),
])
def test_private_and_metadata_addresses_are_refused(url, why):
    with Isol8(network="filtered", log_network=True) as eng:
        r = eng.execute(cmd=CURL + f"-w '\\n%{{http_code}}' '{url}'")
    assert r.stdout.splitlines()[-1] == "403", r.stdout + r.stderr
    assert why in r.stdout
    assert r.network_logs[-1].action == "BLOCK"


def test_a_pin_to_loopback_needs_allow_private(web):
    port = web.server_address[1]
    with Isol8(network="filtered", network_filter={"hosts": {"good.test": f"127.0.0.1:{port}"}}
               ) as eng:
        r = eng.execute(cmd=CURL + "-w '\\n%{http_code}' http://good.test/pinned")
    assert r.stdout.splitlines()[-1] == "403"
    assert ("good.test", "/pinned") not in web.seen


def test_byte_counts_follow_the_traffic(filtered):
    r = filtered.execute(cmd=CURL + "-o /dev/null http://good.test/big/1000000")
    assert r.exit_code == 0, r.stderr
    usage = r.resource_usage
    assert 1_000_000 < usage.network_bytes_in < 1_001_000
    assert 50 < usage.network_bytes_out < 1000
    assert r.to_dict()["resourceUsage"]["networkBytesIn"] == usage.network_bytes_in


def test_none_counts_zero_and_has_no_logs():
    with Isol8(log_network=False) as eng:
        r = eng.execute(cmd="true")
    assert (r.resource_usage.network_bytes_in, r.resource_usage.network_bytes_out) == (0, 0)
    assert r.network_logs is None and "networkLogs" not in r.to_dict()


def test_max_connections_makes_the_rest_wait(web):
    web.peak = 0
    with Isol8(network="filtered", network_filter=policy(web, max_connections=2)) as eng:
        r = eng.execute(cmd="for i in 1 2 3 4 5 6; do " + CURL
                        + "http://good.test/slow$i & done; wait", timeout_ms=20000)
    assert r.exit_code == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == [f"hello good.test /slow{i}" for i in range(1, 7)]
    assert web.peak <= 2


def test_200_concurrent_connections_and_a_second_sandbox_is_served_meanwhile(web):
    flood = ("import socket, threading, urllib.request\n"
             "def get(i, out):\n"
             "    out.append(urllib.request.urlopen(f'http://good.test/f{i}', timeout=30).read())\n"
             "out = []\n"
             "held = [socket.create_connection(('127.0.0.1', 8118)) for _ in range(200)]\n"
             "for s in held: s.sendall(b'GET http://good.test/h HTTP/1.1\\r\\nHost: go')\n"
             "ts = [threading.Thread(target=get, args=(i, out)) for i in range(50)]\n"
             "[t.start() for t in ts]; [t.join() for t in ts]\n"
             "print(len(out), len(held))\n")
    with Isol8(network="filtered", network_filter=policy(web), pids_limit=256,
               timeout_ms=60000) as a, \
            Isol8(network="filtered", network_filter=policy(web)) as b:
        result: list = []
        thread = threading.Thread(target=lambda: result.append(run_py(a, flood)))
        thread.start()
        time.sleep(0.5)
        started = time.monotonic()
        r = b.execute(cmd=CURL + "http://good.test/second")
        elapsed = time.monotonic() - started
        thread.join()
    assert r.stdout == "hello good.test /second" and elapsed < 5
    assert result[0].stdout == "50 200", result[0].stderr


def test_malformed_and_slow_clients_do_not_hurt_the_proxy(filtered):
    r = run_py(filtered, "import socket\n"
               "s = socket.create_connection(('127.0.0.1', 8118))\n"
               "s.sendall(b'GET http://good.test/ HTTP/1.1\\nHost: good.test\\n\\n')\n"
               "print(s.recv(100).split(b'\\r\\n')[0].decode())\n"
               "s = socket.create_connection(('127.0.0.1', 8118))\n"
               "s.sendall(b'\\x16\\x03\\x01\\x00\\x05hello\\r\\n\\r\\n')\n"
               "print(s.recv(100).split(b'\\r\\n')[0].decode())\n"
               "half = socket.create_connection(('good.test', 443))\n"
               "half.sendall(b'\\x16\\x03\\x01')\n"
               "import urllib.request\n"
               "print(urllib.request.urlopen('http://good.test/after').read().decode())")
    assert r.stdout.splitlines() == ["HTTP/1.1 400 Bad Request", "HTTP/1.1 400 Bad Request",
                                     "hello good.test /after"], r.stderr


def test_persistent_runs_have_their_own_logs(web):
    with Isol8(mode="persistent", network="filtered", network_filter=policy(web),
               log_network=True) as eng:
        first = eng.execute(cmd=CURL + "http://good.test/one")
        second = eng.execute(cmd=CURL + "http://good.test/two")
    assert [e.path for e in first.network_logs] == ["/one"]
    assert [e.path for e in second.network_logs] == ["/two"]
    assert second.resource_usage.network_bytes_in < 2 * first.resource_usage.network_bytes_in


def test_warm_pool_streaming_and_setup_scripts(web):
    with Isol8(network="filtered", network_filter=policy(web), prewarm=True,
               log_network=True) as eng:
        pooled = run_py(eng, "import urllib.request\n"
                             "print(urllib.request.urlopen('http://good.test/pool').read().decode())")
        events = list(eng.execute_stream(cmd=CURL + "http://good.test/stream"))
        staged = eng.execute(cmd=CURL + "http://good.test/code",
                             setup_script=CURL + "-o /sandbox/s http://good.test/setup")
    assert pooled.stdout == "hello good.test /pool", pooled.stderr
    assert "".join(e.data for e in events if e.type == "stdout") == "hello good.test /stream\n"
    assert staged.stdout == "hello good.test /code", staged.stderr
    assert ("good.test", "/setup") in web.seen


def test_udp_other_than_dns_is_rejected(filtered):
    """The nftables batch rejects it at once (this kernel has nf_tables; without it the
    datagram would reach nobody, as the README says)."""
    r = run_py(filtered, "import socket\n"
               "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5)\n"
               "try:\n"
               "    s.sendto(b'x', ('203.0.113.7', 9999)); s.recvfrom(10); print('answered')\n"
               "except OSError as e: print(type(e).__name__)")
    assert r.stdout == "PermissionError"


def test_capture_all_takes_every_tcp_port_to_the_policy(web):
    with Isol8(network="filtered", network_filter=policy(web, capture="all"),
               log_network=True) as eng:
        r = run_py(eng, "import socket\n"
                   "for host in ('good.test', 'api.good.test'):\n"
                   "    s = socket.create_connection((host, 5432), timeout=10)\n"
                   "    s.sendall(b'GET /any HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n"
                   "    data = b''\n"
                   "    while chunk := s.recv(4096): data += chunk\n"
                   "    print(data.split(b'\\r\\n\\r\\n')[1].decode().strip())\n"
                   "for target in (('203.0.113.7', 5432), ('2001:db8::7', 5432),\n"
                   "               ('127.0.0.1', 8119)):\n"
                   "    s = socket.create_connection(target, timeout=10)\n"
                   "    print(s.recv(10))")
    assert r.stdout.splitlines() == ["hello x /any", "hello x /any"] + ["b''"] * 3, r.stderr
    assert [(e.method, e.host, e.action) for e in r.network_logs] == [
        ("CONNECT", "good.test", "ALLOW"), ("CONNECT", "api.good.test", "ALLOW"),
        ("CONNECT", "203.0.113.7", "BLOCK"), ("CONNECT", "2001:db8::7", "BLOCK"),
        ("CONNECT", "127.0.0.1", "BLOCK")]
    assert r.network_logs[-1].reason == "direct connection to the capture port"


_LEAK_PROBE = """
import json, os, sys, threading
from conftest import _loopback_connector, _table_resolver
from isol8 import Isol8
from isol8.network import outbound

outbound.use(_table_resolver, _loopback_connector)
def state():
    return (len(os.listdir("/proc/self/fd")),
            [t.name for t in threading.enumerate() if t.name == "isol8-network"])
before = state()
with Isol8(network="filtered", network_filter=json.loads(sys.argv[1]), prewarm=True) as eng:
    r = eng.execute(cmd=sys.argv[2])
    during = state()
print(json.dumps({"before": before, "during": during, "after": state(),
                  "stdout": r.stdout, "stderr": r.stderr}))
"""


def test_nothing_is_left_after_stop(web):
    """In a process of its own: this module's engines and servers close sockets in their
    own time, so counting this process's fds would race with them (as CI once showed)."""
    cmd = "(sleep 30 &); " + CURL + "http://good.test/leak"
    out = subprocess.run(
        [sys.executable, "-c", _LEAK_PROBE, json.dumps(policy(web)), cmd],
        capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).parent, check=True)
    seen = json.loads(out.stdout)
    assert "hello good.test /leak" in seen["stdout"], seen["stderr"]
    assert seen["during"][1] == ["isol8-network"]
    assert seen["before"][1] == []
    assert seen["after"] == seen["before"]


def test_bad_filters_are_refused_clearly():
    with pytest.raises(InvalidRequest, match="needs network='filtered'"):
        Isol8(network_filter={"whitelist": ["x"]})
    with pytest.raises(InvalidRequest, match="unknown key"):
        Isol8(network="filtered", network_filter={"whitelsit": ["x"]})


def test_repl_cells_have_their_own_logs(web):
    fetch = ("import urllib.request\n"
             "print(urllib.request.urlopen('http://good.test/cell{}').read().decode())")
    with Isol8(mode="persistent", repl=True, network="filtered", network_filter=policy(web),
               log_network=True) as eng:
        first, second = (eng.execute(fetch.format(i)) for i in (1, 2))
    assert [e.path for e in first.network_logs] == ["/cell1"], first.stderr
    assert [e.path for e in second.network_logs] == ["/cell2"]
    assert first.resource_usage.network_bytes_in > 0


def test_a_post_that_expects_100_continue_does_not_wait(filtered):
    """curl holds a body it announced with Expect: 100-continue for a second unless a 100
    comes: the proxy passes the upstream's 100 on instead of waiting for the body."""
    r = filtered.execute(cmd="head -c 3000000 /dev/zero > /tmp/body; for i in 1 2; do "
                         + CURL + "-H 'Expect: 100-continue' --data-binary @/tmp/body "
                         "-w ' %{time_total}\\n' http://good.test/up; done")
    words = r.stdout.split()  # "got N" (the body's line), then curl's time
    assert words[0::3] == ["got", "got"] and words[1::3] == ["3000000"] * 2, r.stderr
    assert all(float(t) < 0.9 for t in words[2::3]), words
    assert [e.method for e in r.network_logs] == ["POST", "POST"]


def test_a_head_that_never_finishes_gets_408(filtered, monkeypatch):
    from isol8.network import proxy
    monkeypatch.setattr(proxy, "HEAD_TIMEOUT", 0.5)
    r = run_py(filtered, "import socket, time, urllib.request\n"
                         "s = socket.create_connection(('127.0.0.1', 8118))\n"
                         "s.sendall(b'GET http://good.test/ HTTP/1.1\\r\\nHost: go')\n"
                         "print(urllib.request.urlopen('http://good.test/meanwhile').read().decode().strip())\n"
                         "s.settimeout(5)\n"
                         "print(s.recv(100).split(b'\\r\\n')[0].decode())")
    assert r.stdout.splitlines() == ["hello good.test /meanwhile", "HTTP/1.1 408 Request Timeout"]


def test_host_network_leaves_the_byte_counts_out():
    with Isol8(network="host") as eng:
        r = eng.execute(cmd="true")
    assert r.resource_usage.network_bytes_in is None
    assert "networkBytesIn" not in r.to_dict()["resourceUsage"]


def test_large_bodies_are_spliced_and_the_connection_stays_in_step(filtered):
    """A Content-Length body of 64 KiB or more goes through a pipe (relay.forward_exactly):
    the next request and response on the same connection must start right after it."""
    r = filtered.execute(cmd=CURL + "-o /dev/null -o /dev/null -o /dev/null "
                         "-w '%{size_download} %{num_connects}\\n' http://good.test/big/3000000 "
                         "http://good.test/big/100 http://good.test/big/200000")
    assert r.stdout.splitlines() == ["3000000 1", "100 0", "200000 0"], r.stderr
    assert [e.path for e in r.network_logs] == ["/big/3000000", "/big/100", "/big/200000"]


@pytest.mark.parametrize("capture, time_wait", [("all", "2"), ("web", "120")])
def test_capture_all_keeps_conntrack_entries_short(web, capture, time_wait):
    """The nat chain of "all" turns on conntrack, whose table is the host's: closed
    connections and DNS from fresh ports must not hold entries for minutes."""
    with Isol8(network="filtered", network_filter=policy(web, capture=capture)) as eng:
        r = eng.execute(cmd="cd /proc/sys/net/netfilter && cat "
                            "nf_conntrack_tcp_timeout_time_wait nf_conntrack_udp_timeout "
                            "nf_conntrack_tcp_timeout_established")
    assert r.stdout.split() == [time_wait, "2" if capture == "all" else "30", "432000"]


def test_a_secret_in_a_url_is_masked_in_the_logs(web):
    """As in stdout: a secret the code puts in a path or a host name (exfiltration by DNS
    label) comes back as ***, in allowed and blocked entries alike."""
    secret = "s3cr3t-t0ken-4242"
    flt = policy(web, hosts=policy(web)["hosts"] | {f"{secret}.other.test": "127.0.0.1:9"})
    with Isol8(network="filtered", network_filter=flt, log_network=True,
               secrets={"TOKEN": secret}) as eng:
        r = eng.execute(cmd=CURL + 'http://good.test/q?key=$TOKEN; '
                            + CURL + "http://$TOKEN.other.test/x")
    logs = [(e.host, e.path, e.action) for e in r.network_logs]
    assert logs == [("good.test", "/q?key=***", "ALLOW"), ("***.other.test", "/x", "BLOCK")]
    assert secret not in repr(r.network_logs)
