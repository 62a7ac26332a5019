"""code_url (upstream's codeUrl): fetched on the host under a RemoteCodePolicy, every hop
judged by the host rules and the SSRF guard, on loopback servers and pinned or table names
only (conftest's resolver table and loopback connector)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import http.server
import os
import shutil
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from isol8 import Isol8
from isol8.errors import InvalidRequest
from isol8.network import outbound
from isol8.remote_code.fetch import RemoteCodeRefused, RemoteCodeUnavailable
from test_network_filtered import _serve

HELLO = b"print('hello from a url')\n"
NAMES = ("code.test", "other.test", "public.test")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 — http.server's name
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/hello.py":
            self._send(200, HELLO)
        elif url.path == "/big":
            self._send(200, b"#" * 2000)
        elif url.path == "/chunked-big":  # no Content-Length: only the stream tells
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(5):
                self.wfile.write(b"3e8\r\n" + b"#" * 1000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif url.path == "/binary":
            self._send(200, b"print(1)\0\n")
        elif url.path == "/latin1":
            self._send(200, "print('caf\xe9')\n".encode("latin-1"))
        elif url.path == "/redirect":
            self._send(302, b"", location=query["to"])
        elif url.path == "/loop":
            self._send(302, b"", location="/loop")
        elif url.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"#")
            self.wfile.flush()
            time.sleep(3)
        else:
            self._send(404, b"not here\n")

    def _send(self, status: int, body: bytes, location: str | None = None) -> None:
        self.send_response(status)
        if location is not None:
            self.send_header("Location", location)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificate")
    where = tmp_path_factory.mktemp("code-url-tls")
    key, crt = where / "key.pem", where / "cert.pem"
    names = ",".join(f"DNS:{name}" for name in NAMES)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=code.test", "-addext", f"subjectAltName={names}",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    return key, crt


@pytest.fixture(scope="module")
def tls(cert) -> Iterator[http.server.ThreadingHTTPServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert[1]), str(cert[0]))
    yield from _serve(context, _Handler)


@pytest.fixture(scope="module")
def plain() -> Iterator[http.server.ThreadingHTTPServer]:
    yield from _serve(None, _Handler)


def remote_code(cert, tls, **extra) -> dict:
    """Names pinned to the loopback TLS server, private addresses allowed (they are all
    this test has), the test's certificate trusted."""
    policy = {"enabled": True, "allowedHosts": [r"^code\.test$", r"^other\.test$"],
              "blockedHosts": [r"^other\.test$"], "allowPrivate": True, "caFile": str(cert[1]),
              "hosts": {name: f"127.0.0.1:{tls.server_address[1]}" for name in NAMES}}
    policy.update(extra)
    return policy


@pytest.fixture(scope="module")
def engine(cert, tls) -> Iterator[Isol8]:
    with Isol8(remote_code=remote_code(cert, tls)) as eng:
        yield eng


def test_code_from_a_url_runs_and_its_hash_is_checked(engine):
    r = engine.execute(code_url="https://code.test/hello.py", runtime="python")
    assert (r.exit_code, r.stdout) == (0, "hello from a url")
    digest = hashlib.sha256(HELLO).hexdigest()
    r = engine.execute(code_url="https://code.test/hello.py", runtime="python",
                       code_hash=digest.upper())
    assert r.stdout == "hello from a url"
    with pytest.raises(RemoteCodeRefused, match="does not match code_hash"):
        engine.execute(code_url="https://code.test/hello.py", runtime="python",
                       code_hash="0" * 64)
    with pytest.raises(RemoteCodeRefused, match="code_hash: expected 64 hex digits"):
        engine.execute(code_url="https://code.test/hello.py", runtime="python",
                       code_hash="abc")


def test_a_stream_runs_fetched_code_too(engine):
    events = list(engine.execute_stream(code_url="https://code.test/hello.py",
                                        runtime="python"))
    assert "".join(e.data for e in events if e.type == "stdout") == "hello from a url\n"
    assert events[-1].type == "exit" and events[-1].data == "0"


def test_remote_code_is_off_by_default_and_exclusive_with_code():
    with Isol8() as eng:
        with pytest.raises(RemoteCodeRefused, match="remote code is disabled"):
            eng.execute(code_url="https://code.test/hello.py", runtime="python")
    with Isol8(remote_code={"enabled": True}) as eng:
        with pytest.raises(InvalidRequest, match="mutually exclusive"):
            eng.execute("print(1)", code_url="https://code.test/hello.py", runtime="python")


def test_a_malformed_policy_names_its_key():
    with pytest.raises(InvalidRequest, match="remoteCode: unknown key.*'enabeld'"):
        Isol8(remote_code={"enabeld": True})
    with pytest.raises(InvalidRequest, match="remoteCode.allowedSchemes"):
        Isol8(remote_code={"allowedSchemes": ["ftp"]})


def test_host_rules_decide_and_deny_wins(engine):
    with pytest.raises(RemoteCodeRefused, match="host nope.test is not allowed"):
        engine.execute(code_url="https://nope.test/hello.py", runtime="python")
    # other.test is in allowedHosts and in blockedHosts: refused
    with pytest.raises(RemoteCodeRefused, match="host other.test is not allowed.*blacklist"):
        engine.execute(code_url="https://other.test/hello.py", runtime="python")


def test_plain_http_needs_the_flag_and_the_scheme(cert, tls, plain):
    url = f"http://code.test:{plain.server_address[1]}/hello.py"
    pins = {"code.test": f"127.0.0.1:{plain.server_address[1]}"}
    with Isol8(remote_code=remote_code(cert, tls, hosts=pins)) as eng:
        with pytest.raises(RemoteCodeRefused, match="plain http"):
            eng.execute(code_url=url, runtime="python")
        with pytest.raises(RemoteCodeRefused, match="scheme 'http'.*allowedSchemes"):
            eng.execute(code_url=url, runtime="python", allow_insecure_code_url=True)
    with Isol8(remote_code=remote_code(cert, tls, hosts=pins,
                                       allowedSchemes=["https", "http"])) as eng:
        r = eng.execute(code_url=url, runtime="python", allow_insecure_code_url=True)
        assert r.stdout == "hello from a url"


def test_size_binary_and_encoding_are_refused(engine, cert, tls):
    with Isol8(remote_code=remote_code(cert, tls, maxCodeSize=1000)) as small:
        with pytest.raises(RemoteCodeRefused, match="2000 bytes, over maxCodeSize 1000"):
            small.execute(code_url="https://code.test/big", runtime="python")
        with pytest.raises(RemoteCodeRefused, match="over maxCodeSize 1000 bytes"):
            small.execute(code_url="https://code.test/chunked-big", runtime="python")
    with pytest.raises(RemoteCodeRefused, match="binary"):
        engine.execute(code_url="https://code.test/binary", runtime="python")
    with pytest.raises(RemoteCodeRefused, match="not UTF-8"):
        engine.execute(code_url="https://code.test/latin1", runtime="python")


def test_a_policy_can_require_a_hash(cert, tls):
    with Isol8(remote_code=remote_code(cert, tls, requireHash=True)) as eng:
        with pytest.raises(RemoteCodeRefused, match="requires code_hash"):
            eng.execute(code_url="https://code.test/hello.py", runtime="python")
        r = eng.execute(code_url="https://code.test/hello.py", runtime="python",
                        code_hash=hashlib.sha256(HELLO).hexdigest())
        assert r.exit_code == 0


def test_failures_say_what_happened(engine, cert, tls):
    with pytest.raises(RemoteCodeUnavailable, match="answered 404"):
        engine.execute(code_url="https://code.test/missing.py", runtime="python")
    with pytest.raises(RemoteCodeUnavailable, match="more than 5 redirects"):
        engine.execute(code_url="https://code.test/loop", runtime="python")
    policy = remote_code(cert, tls)
    del policy["caFile"]  # the system's roots do not know the test's certificate
    with Isol8(remote_code=policy) as eng:
        with pytest.raises(RemoteCodeUnavailable, match="TLS with code.test failed"):
            eng.execute(code_url="https://code.test/hello.py", runtime="python")


def test_the_fetch_has_one_deadline(cert, tls):
    with Isol8(remote_code=remote_code(cert, tls, fetchTimeoutMs=300)) as eng:
        started = time.monotonic()
        with pytest.raises(RemoteCodeUnavailable, match=r"fetchTimeoutMs \(300 ms\)"):
            eng.execute(code_url="https://code.test/slow", runtime="python")
        assert time.monotonic() - started < 2.5


@pytest.fixture
def public(tls) -> Iterator[None]:
    """public.test resolves to 93.184.216.34, which the guard takes for the public address
    it is; the connector dials the loopback TLS server instead, so no packet leaves the
    machine, and fails the test for any other address. Other names: conftest's table."""
    port = tls.server_address[1]
    table_resolver, _ = outbound.use()
    fake = ipaddress.ip_address("93.184.216.34")

    async def resolver(host: str) -> list:
        return [fake] if host == "public.test" else await table_resolver(host)

    async def connector(address, wanted_port: int):
        if address != fake or wanted_port != 443:
            raise AssertionError(f"the fetch dialled {address} port {wanted_port}")
        return await outbound.direct_connector(ipaddress.ip_address("127.0.0.1"), port)

    previous = outbound.use(resolver, connector)
    try:
        yield
    finally:
        outbound.use(*previous)


def test_every_redirect_is_judged_by_the_guard(public, cert):
    # No allowPrivate: the guard is on, every host name allowed.
    policy = {"enabled": True, "caFile": str(cert[1])}
    with Isol8(remote_code=policy) as eng:
        r = eng.execute(code_url="https://public.test/hello.py", runtime="python")
        assert r.stdout == "hello from a url"
        for target, why in (("https://127.0.0.1/hello.py", "loopback"),
                            ("https://[::ffff:127.0.0.1]/hello.py", "loopback"),
                            ("https://metadata.test/latest/meta-data/", "metadata"),
                            ("https://private.test/x", "private")):
            url = "https://public.test/redirect?" + urllib.parse.urlencode({"to": target})
            with pytest.raises(RemoteCodeRefused, match=why):
                eng.execute(code_url=url, runtime="python")
        # a redirect to plain http needs the flag like a first URL
        to_http = "https://public.test/redirect?to=http://public.test/hello.py"
        with pytest.raises(RemoteCodeRefused, match="plain http"):
            eng.execute(code_url=to_http, runtime="python")


def test_nothing_is_left_open(engine):
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))
    engine.execute(code_url="https://code.test/hello.py", runtime="python")
    before, threads = fds(), threading.active_count()
    for path in ("hello.py", "missing.py", "binary", "loop"):
        try:
            engine.execute(code_url=f"https://code.test/{path}", runtime="python")
        except (RemoteCodeRefused, RemoteCodeUnavailable):
            pass
    assert fds() <= before
    assert threading.active_count() <= threads


def test_the_server_fetches_what_its_operator_allows(cert, tls, tmp_path):
    from isol8.client import RemoteIsol8
    from isol8.client.errors import RemoteError
    from test_server import KEY, running

    # a config file: upstream's top-level remoteCode, and a default timeout for every run
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"defaults": {"timeoutMs": 700},
                                  "remoteCode": remote_code(cert, tls)}))
    with running(config) as srv:
        status, body = srv.call("POST", "/execute", {"request": {
            "codeUrl": "https://code.test/hello.py", "runtime": "python",
            "codeHash": hashlib.sha256(HELLO).hexdigest()}})
        assert (status, body["stdout"]) == (200, "hello from a url")
        status, body = srv.call("POST", "/execute", {"request": {
            "codeUrl": "https://nope.test/hello.py", "runtime": "python"}})
        assert status == 400 and "host nope.test is not allowed" in body["error"]
        status, body = srv.call("POST", "/execute", {"request": {
            "codeUrl": "https://code.test/missing.py", "runtime": "python"}})
        assert status == 502 and "answered 404" in body["error"]
        # a client cannot bring its own policy
        status, body = srv.call("POST", "/execute", {
            "request": {"codeUrl": "https://nope.test/hello.py", "runtime": "python"},
            "options": {"remoteCode": {"enabled": True}}})
        assert status == 400
        # the config's defaults hold for every run that does not say otherwise
        started = time.monotonic()
        status, body = srv.execute("import time; time.sleep(5)")
        assert status == 200 and body["exitCode"] != 0, body
        assert time.monotonic() - started < 4
        with RemoteIsol8(host=srv.url, api_key=KEY) as client:
            r = client.execute(code_url="https://code.test/hello.py", runtime="python")
            assert r.stdout == "hello from a url"
            with pytest.raises(RemoteError, match="answered 404"):
                client.execute(code_url="https://code.test/missing.py", runtime="python")


def test_remote_code_is_refused_by_a_server_without_the_policy():
    from test_server import running

    with running() as srv:
        status, body = srv.call("POST", "/execute", {"request": {
            "codeUrl": "https://code.test/hello.py", "runtime": "python"}})
    assert status == 400 and "remote code is disabled on this server" in body["error"]
