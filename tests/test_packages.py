"""install_packages: names checked, a package installed from a PEP 503 index on loopback and
imported in the same run, and the shared download cache: filled by the supervisor with
files it verified, read-only inside, used without a request to the index."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import threading
import time
import zipfile
from pathlib import Path

import pytest

from isol8 import Isol8
from isol8.errors import InvalidRequest
from isol8.packages import (PackageCache, PackageInstallFailed, satisfied,
                            validated_packages)
from isol8.packages.cache import MOUNT
from isol8.packages.stage import project_of

from conftest import child_pids, host_tempdir


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def wheel(name: str, version: str, body: str) -> tuple[str, bytes]:
    """A pure-Python wheel (PEP 427) holding module ``name`` whose ``VALUE`` is ``body``."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VALUE = {body!r}\n".encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                            .encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: isol8-test\nRoot-Is-Purelib: true\n"
                         b"Tag: py3-none-any\n",
    }
    record = "".join(f"{path},sha256={_b64(hashlib.sha256(data).digest())},{len(data)}\n"
                     for path, data in files.items()) + f"{dist}/RECORD,,\n"
    files[f"{dist}/RECORD"] = record.encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return f"{name}-{version}-py3-none-any.whl", buf.getvalue()


class Index:
    """A PEP 503 index on 127.0.0.1: ``projects[name] = [(filename, bytes, published hash
    or None)]``; counts every request it answers."""

    def __init__(self) -> None:
        self.projects: dict[str, list[tuple[str, bytes, str | None]]] = {}
        self.requests: list[str] = []
        self.delay = 0.0  # seconds every answer waits
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                index.requests.append(self.path)
                time.sleep(index.delay)
                parts = self.path.strip("/").split("/")
                body: bytes | None = None
                kind = "application/octet-stream"
                if len(parts) == 2 and parts[0] == "simple" and parts[1] in index.projects:
                    kind = "text/html"
                    links = "".join(
                        f'<a href="../../files/{fn}{"#sha256=" + h if h else ""}">{fn}</a>\n'
                        for fn, _, h in index.projects[parts[1]])
                    body = f"<html><body>{links}</body></html>".encode()
                elif len(parts) == 2 and parts[0] == "files":
                    for files in index.projects.values():
                        for fn, data, _ in files:
                            if fn == parts[1]:
                                body = data
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"

    def publish(self, name: str, version: str, body: str, *, published: str | None = "ok",
                ) -> tuple[str, bytes]:
        filename, data = wheel(name, version, body)
        digest = {"ok": hashlib.sha256(data).hexdigest(), None: None}.get(
            published, published)
        self.projects.setdefault(name.replace("_", "-"), []).append((filename, data, digest))
        return filename, data

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def index():
    served = Index()
    yield served
    served.close()


@pytest.fixture
def cache_root():
    with host_tempdir("isol8-pkgcache-") as path:
        yield path


def engine_for(index: Index, cache_root: Path, **kw) -> Isol8:
    return Isol8(network="filtered", package_index_url=index.url,
                 package_cache=str(cache_root), timeout_ms=60_000, **kw)


IMPORT = "import tinypkg_h4, sys; print(tinypkg_h4.VALUE, tinypkg_h4.__file__)"


# --- names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["-e x", "--index-url=http://evil/simple", "pkg; rm -rf /",
                                 "http://evil.test/x.whl", "./local", "/tmp/x.whl", "",
                                 "name @ https://evil/x.whl", "a b", "pkg[extra",
                                 "x; python_version>'3'", "git+https://x/y"])
def test_bad_pip_names_are_refused(bad):
    with pytest.raises(InvalidRequest, match=r"install_packages\[0\]"):
        validated_packages([bad], "pip")


@pytest.mark.parametrize("good", ["requests", "numpy==1.26.4", "Django>=4,<5", "a.b-c_d",
                                  "pkg[extra1,extra2]~=1.0", "x!=2.*"])
def test_good_pip_names_pass(good):
    assert validated_packages([f" {good} ", good], "pip") == (good,)


@pytest.mark.parametrize("bad", ["--registry=http://evil", "file:../x", "git+ssh://x",
                                 "npm:evil@1", "Upper", "../up", "a@b c", "@scope"])
def test_bad_npm_names_are_refused(bad):
    with pytest.raises(InvalidRequest, match=r"install_packages\[0\]"):
        validated_packages([bad], "npm")


@pytest.mark.parametrize("good", ["lodash", "@types/node@20", "left-pad@1.3.0", "x@^1.2"])
def test_good_npm_names_pass(good):
    assert validated_packages([good], "npm") == (good,)


def test_not_a_list_is_refused():
    with pytest.raises(InvalidRequest, match="expected a list"):
        validated_packages("requests", "pip")


def test_manifest_satisfies_bare_names_and_exact_pins_only():
    installed = {"NumPy": "1.26.4", "requests": "2.31.0"}
    assert satisfied(["numpy"], installed, "pip")
    assert satisfied(["numpy==1.26.4", "Requests"], installed, "pip")
    assert not satisfied(["numpy==1.26.3"], installed, "pip")
    assert not satisfied(["numpy>=1"], installed, "pip")  # not judged: the install runs
    assert not satisfied(["pandas"], installed, "pip")
    assert satisfied(["lodash@4.17.21"], {"lodash": "4.17.21"}, "npm")
    assert not satisfied(["lodash@^4"], {"lodash": "4.17.21"}, "npm")


def test_project_of_distribution_files():
    assert project_of("tinypkg_h4-1.0-py3-none-any.whl") == "tinypkg_h4"
    assert project_of("some-thing-2.0.tar.gz") == "some-thing"


def test_cache_refuses_bytes_that_do_not_match_the_published_hash(cache_root):
    cache = PackageCache(str(cache_root), "http://127.0.0.1:1/simple")
    name, data = wheel("tinypkg_h4", "1.0", "x")
    assert not cache.add(name, data + b"tampered", hashlib.sha256(data).hexdigest())
    assert not cache.add("../evil.whl", data, hashlib.sha256(data).hexdigest())
    assert cache.entries() == {}
    assert cache.add(name, data, hashlib.sha256(data).hexdigest())
    assert cache.has(name, hashlib.sha256(data).hexdigest())
    assert f'href="{name}#sha256={hashlib.sha256(data).hexdigest()}"' in \
        Path(cache.dir, "index.html").read_text()


# --- refusals before anything runs ----------------------------------------------------------

def test_install_needs_filtered_network():
    with Isol8() as eng, pytest.raises(InvalidRequest, match="network='filtered'"):
        eng.execute("print(1)", install_packages=["requests"])


def test_bash_has_no_package_manager(index, cache_root):
    with engine_for(index, cache_root) as eng, \
            pytest.raises(InvalidRequest, match="bash runtime has no package manager"):
        eng.execute(cmd="true", install_packages=["curl"])


def test_option_injection_is_refused_before_a_request(index, cache_root):
    with engine_for(index, cache_root) as eng:
        for bad in ("-e x", "--index-url=http://evil.test/simple", "pkg; rm -rf /",
                    "http://evil.test/x.whl"):
            with pytest.raises(InvalidRequest, match=r"install_packages\[0\]"):
                eng.execute(IMPORT, install_packages=[bad])
    assert index.requests == []


# --- installs -------------------------------------------------------------------------------

def test_install_then_import_then_cached(index, cache_root):
    filename, data = index.publish("tinypkg_h4", "1.0", "from the index")
    with engine_for(index, cache_root) as eng:
        first = eng.execute(IMPORT, install_packages=["tinypkg_h4"])
        assert first.exit_code == 0, first.stderr
        assert first.stdout.startswith("from the index /sandbox/.local/lib/python3")
        assert any(r.startswith("/simple/tinypkg-h4/") for r in index.requests)
        cache = PackageCache(str(cache_root), index.url)
        assert cache.entries() == {filename: hashlib.sha256(data).hexdigest()}
        assert Path(cache.dir, filename).read_bytes() == data

        index.requests.clear()
        started = time.monotonic()
        second = eng.execute(IMPORT, install_packages=["tinypkg_h4==1.0"])
        elapsed = time.monotonic() - started
        assert second.exit_code == 0, second.stderr
        assert second.stdout.startswith("from the index ")
        assert index.requests == []  # the cache alone served it
        assert elapsed < 2.0, f"cached install took {elapsed:.2f} s"
    assert child_pids() == []  # no helper, installer or reader left behind


def test_cache_is_read_only_inside(index, cache_root):
    filename, _ = index.publish("tinypkg_h4", "1.0", "x")
    with engine_for(index, cache_root) as eng:
        assert eng.execute(IMPORT, install_packages=["tinypkg_h4"]).exit_code == 0
        probe = eng.execute(cmd=(
            f"ls {MOUNT}; for f in {MOUNT}/{filename} {MOUNT}/index.html {MOUNT}/new; do "
            f"( echo evil > $f ) 2>&1; done; chmod 666 {MOUNT}/{filename} 2>&1; "
            f"rm -f {MOUNT}/{filename} 2>&1; true"))
    assert filename in probe.stdout
    assert probe.stdout.count("Read-only file system") == 5, probe.stdout
    assert "evil" not in Path(cache_root).joinpath(
        PackageCache(str(cache_root), index.url).dir, "index.html").read_text()


def test_corrupted_cached_file_is_not_used(index, cache_root):
    filename, data = index.publish("tinypkg_h4", "1.0", "genuine")
    with engine_for(index, cache_root) as eng:
        assert eng.execute(IMPORT, install_packages=["tinypkg_h4"]).exit_code == 0
        cache = PackageCache(str(cache_root), index.url)
        _, evil = wheel("tinypkg_h4", "1.0", "poisoned")
        Path(cache.dir, filename).write_bytes(evil)  # changed on disk after it was verified
        index.requests.clear()
        result = eng.execute(IMPORT, install_packages=["tinypkg_h4"])
        assert result.exit_code == 0, result.stderr
        assert result.stdout.startswith("genuine "), result.stdout
        assert index.requests, "the corrupted file was used instead of the index"
        assert Path(cache.dir, filename).read_bytes() == data  # replaced by a verified copy


def test_hash_mismatch_from_the_index_fails_and_is_not_cached(index, cache_root):
    index.publish("tinypkg_h4", "1.0", "x", published="0" * 64)
    with engine_for(index, cache_root) as eng:
        with pytest.raises(PackageInstallFailed,
                           match=r"Package install failed \(exit code 1\): .*HASH"):
            eng.execute(IMPORT, install_packages=["tinypkg_h4"])
    assert PackageCache(str(cache_root), index.url).entries() == {}


def test_file_without_a_published_hash_installs_but_is_not_cached(index, cache_root):
    index.publish("tinypkg_h4", "1.0", "unhashed", published=None)
    with engine_for(index, cache_root) as eng:
        result = eng.execute(IMPORT, install_packages=["tinypkg_h4"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("unhashed ")
    assert PackageCache(str(cache_root), index.url).entries() == {}


def test_unknown_package_fails_with_upstreams_message(index, cache_root):
    with engine_for(index, cache_root) as eng:
        with pytest.raises(PackageInstallFailed, match=r"Package install failed \(exit code "
                                                       r"1\): .*no-such-pkg"):
            eng.execute(IMPORT, install_packages=["no-such-pkg"])
        assert eng.execute("print(2)").stdout == "2"  # the engine goes on
    assert child_pids() == []  # the failed run's sandbox is gone too


def test_install_phase_has_its_own_policy(index, cache_root):
    """The install reaches the index although the run's whitelist allows nothing; then the
    code is judged by the run's own rules again: the index, by its address or by a name
    that resolves to it, is out of reach."""
    index.publish("tinypkg_h4", "1.0", "x")
    port = index.url.split(":")[2].split("/")[0]
    setup = f"""
import os, urllib.request
for url in ("http://127.0.0.1:{port}/simple/tinypkg-h4/", "http://loopback.test:{port}/"):
    try:
        urllib.request.urlopen(url, timeout=5); print("reached", url)
    except Exception as e:
        print("refused", url, getattr(e, "code", e))
"""
    with engine_for(index, cache_root, network_filter={"whitelist": ["^nothing$"]}) as eng:
        result = eng.execute(setup + IMPORT, install_packages=["tinypkg_h4"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("refused http://127.0.0.1:"), lines
    assert lines[1].startswith("refused http://loopback.test:") and lines[1].endswith("403")
    assert lines[2].startswith("x /sandbox/.local/")


def test_persistent_session_keeps_installed_packages(index, cache_root):
    index.publish("tinypkg_h4", "1.0", "kept")
    with engine_for(index, cache_root, mode="persistent") as eng:
        assert eng.execute("print(0)").exit_code == 0  # a zygote is waiting now
        first = eng.execute(IMPORT, install_packages=["tinypkg_h4"])
        assert first.stdout.startswith("kept "), first.stderr
        again = eng.execute(IMPORT)
        assert again.stdout.startswith("kept "), again.stderr


def test_image_manifest_that_lists_the_packages_skips_the_install():
    """What ``isol8 image build --install`` records (manifest["installed"]) satisfies bare
    names and exact pins: no install runs, so no network is needed; anything else installs."""
    from isol8 import images
    with Isol8() as eng:
        eng.start()
        eng._root = images.Root("/", "a test image", {"installed": {"TinyPkg-H4": "1.0"}})
        assert eng.execute("print(1)", install_packages=["tinypkg_h4==1.0"]).stdout == "1"
        assert eng.execute("print(2)", install_packages=["tinypkg.h4"]).stdout == "2"
        with pytest.raises(InvalidRequest, match="network='filtered'"):
            eng.execute("print(3)", install_packages=["tinypkg_h4==2.0"])


def test_cli_install_switches_to_filtered(index, cache_root):
    import os
    import subprocess
    import sys
    index.publish("tinypkg_h4", "1.0", "via the cli")
    env = {**os.environ, "ISOL8_PACKAGE_CACHE": str(cache_root)}
    done = subprocess.run(
        [sys.executable, "-m", "isol8", "exec", "--install", "tinypkg_h4", "--package-index",
         index.url, "--timeout", "60000", "-e", IMPORT],
        capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("via the cli /sandbox/.local/")
    bad = subprocess.run([sys.executable, "-m", "isol8", "exec", "--install=--index-url=x",
                          "-e", "print(1)"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert bad.returncode != 0 and "install_packages[0]" in bad.stderr, bad.stderr


def test_install_failure_ends_a_stream(index, cache_root):
    with engine_for(index, cache_root) as eng:
        events = eng.execute_stream(IMPORT, install_packages=["no-such-pkg"])
        with pytest.raises(PackageInstallFailed, match=r"^Package install failed \(exit code 1\)"):
            list(events)


def test_install_has_the_runs_timeout_as_its_own_budget(index, cache_root):
    """A hung index: the install is killed at the run's timeout, and says so."""
    index.publish("tinypkg_h4", "1.0", "x")
    index.delay = 5.0
    with engine_for(index, cache_root) as eng:
        started = time.monotonic()
        with pytest.raises(PackageInstallFailed,
                           match=r"^Package install failed \(exit code 137\): timed out"):
            eng.execute(IMPORT, install_packages=["tinypkg_h4"], timeout_ms=1500)
        assert time.monotonic() - started < 4.5


def npm_tarball(name: str, version: str, body: str) -> bytes:
    import tarfile
    import json as _json
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, text in (("package/package.json", _json.dumps(
                {"name": name, "version": version, "main": "index.js"})),
                           ("package/index.js", f"module.exports = {body!r};\n")):
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def npm_registry():
    """An npm registry on 127.0.0.1 with one package; tarball URLs name the host the
    request came for (the pinned name, inside the sandbox)."""
    import json as _json
    tgz = npm_tarball("tinypkg-h4", "1.0.0", "from npm")
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            requests.append(self.path)
            if self.path == "/tinypkg-h4":
                base = f"http://{self.headers['Host']}"
                body = _json.dumps({"name": "tinypkg-h4", "dist-tags": {"latest": "1.0.0"},
                                    "versions": {"1.0.0": {
                                        "name": "tinypkg-h4", "version": "1.0.0",
                                        "dist": {"tarball": f"{base}/tinypkg-h4/-/"
                                                            "tinypkg-h4-1.0.0.tgz",
                                                 "shasum": hashlib.sha1(tgz).hexdigest(),
                                                 "integrity": integrity}}}}).encode()
                kind = "application/json"
            elif self.path == "/tinypkg-h4/-/tinypkg-h4-1.0.0.tgz":
                body, kind = tgz, "application/octet-stream"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def test_npm_install_then_import(npm_registry, cache_root):
    url, requests = npm_registry
    with Isol8(network="filtered", package_index_url=url, package_cache=str(cache_root),
               timeout_ms=60_000) as eng:
        result = eng.execute("const v = require('tinypkg-h4'); console.log(v, "
                             "require.resolve('tinypkg-h4'))", runtime="node",
                             file_extension=".cjs", install_packages=["tinypkg-h4@1.0.0"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "from npm /sandbox/node_modules/tinypkg-h4/index.js"
    assert "/tinypkg-h4/-/tinypkg-h4-1.0.0.tgz" in requests


def test_files_a_sandbox_hands_back_are_cached_only_if_the_index_vouches(index, cache_root):
    """The supervisor's side of the cache against a hostile sandbox: the listing and the
    bytes under /tmp/.isol8-downloads are the sandbox's. A tampered wheel under a real
    name, a file the index does not list and a name with a path are all left out; the
    genuine bytes go in."""
    from isol8.packages.stage import collect
    filename, data = index.publish("tinypkg_h4", "1.0", "genuine")
    _, evil = wheel("tinypkg_h4", "1.0", "poisoned")
    other_name, other = wheel("unlisted_h4", "1.0", "x")
    files = {f"/tmp/.isol8-downloads/{filename}": evil,
             f"/tmp/.isol8-downloads/{other_name}": other,
             "/tmp/.isol8-downloads.list": f"{filename}\n{other_name}\n../../etc/x.whl\n"}
    with engine_for(index, cache_root, mode="persistent") as eng:
        assert eng.execute(cmd="true", files=files).exit_code == 0
        cache = PackageCache(str(cache_root), index.url)
        session = eng._session
        assert collect(session, eng._indexes["pip"], cache) == {filename: False,
                                                                other_name: False}
        assert cache.entries() == {}
        eng.put_file(f"/tmp/.isol8-downloads/{filename}", data)
        assert collect(session, eng._indexes["pip"], cache) == {filename: True,
                                                                other_name: False}
    assert cache.entries() == {filename: hashlib.sha256(data).hexdigest()}


def test_server_takes_install_packages(index, cache_root):
    """installPackages over the wire, from the index its operator set: bad names and the
    wrong network are the client's 400s naming the field; a package installs and imports; a
    failed install is a 400 carrying upstream's message and the exit code, raised as
    PackageInstallFailed by the remote client's error mapping."""
    pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")
    from test_server import Server
    from isol8.client.wire import Answer, error_from
    index.publish("tinypkg_h4", "1.0", "over the wire")
    server = Server(env={"ISOL8_PACKAGE_CACHE": str(cache_root),
                         "ISOL8_PACKAGE_INDEX": index.url})
    try:
        def post(packages: list[str], network: str) -> tuple[int, dict]:
            return server.call("POST", "/execute", {
                "request": {"code": IMPORT, "runtime": "python",
                            "installPackages": packages},
                "options": {"network": network}})

        status, body = post(["--index-url=http://evil.test/simple"], "filtered")
        assert status == 400 and "installPackages[0]" in body["error"], body
        status, body = post(["tinypkg-h4-absent"], "none")
        assert status == 400 and "network='filtered'" in body["error"], body
        status, body = post(["tinypkg_h4"], "filtered")
        assert status == 200 and body["stdout"].startswith("over the wire "), body
        status, body = post(["tinypkg-h4-absent"], "filtered")
        assert status == 400, body
        assert body["error"].startswith("Package install failed (exit code 1): ")
        assert body["type"] == "PackageInstallFailed" and body["exitCode"] == 1
        exc = error_from(Answer(400, {}, json.dumps(body).encode()))
        assert isinstance(exc, PackageInstallFailed) and exc.exit_code == 1
    finally:
        server.stop()


def test_live_repl_sees_packages_installed_later(index, cache_root):
    index.publish("tinypkg_h4", "1.0", "in the repl")
    with engine_for(index, cache_root, mode="persistent", repl=True) as eng:
        assert eng.execute("x = 41").exit_code == 0  # the REPL starts without a user site
        result = eng.execute(IMPORT + "; print(x + 1)", install_packages=["tinypkg_h4"])
        assert result.exit_code == 0, result.stderr
        assert result.stdout.startswith("in the repl /sandbox/.local/")
        assert result.stdout.endswith("\n42")  # its variables are still there


def test_a_root_without_pip_says_what_to_install():
    exc = PackageInstallFailed(1, "/usr/bin/python3: No module named pip\n")
    assert str(exc).startswith("Package install failed (exit code 1): /usr/bin/python3: No "
                               "module named pip (the root filesystem has no pip: on the host "
                               "rootfs, apt-get install python3-pip")


def test_index_from_the_environment(index, cache_root, monkeypatch):
    """$ISOL8_PACKAGE_INDEX: how a server's operator (or a shell) sets the index."""
    index.publish("tinypkg_h4", "1.0", "from the env")
    monkeypatch.setenv("ISOL8_PACKAGE_INDEX", index.url)
    with Isol8(network="filtered", package_cache=str(cache_root), timeout_ms=60_000) as eng:
        result = eng.execute(IMPORT, install_packages=["tinypkg_h4"])
    assert result.stdout.startswith("from the env "), result.stderr
    monkeypatch.setenv("ISOL8_PACKAGE_INDEX", "ftp://x")
    with pytest.raises(InvalidRequest, match=r"ISOL8_PACKAGE_INDEX"):
        Isol8(network="filtered")


def test_a_pip_config_left_in_the_sandbox_does_not_steer_the_install(index, cache_root):
    """A persistent session's earlier run writes a pip.conf naming another index: the
    install ignores it and installs from the configured index."""
    index.publish("tinypkg_h4", "1.0", "from the real index")
    conf = "[global]\nindex-url = http://evil.test/simple\nno-index = true\n"
    with engine_for(index, cache_root, mode="persistent") as eng:
        assert eng.execute(cmd="true", files={"/sandbox/.config/pip/pip.conf": conf,
                                              "/sandbox/.pip/pip.conf": conf}).exit_code == 0
        result = eng.execute(IMPORT, install_packages=["tinypkg_h4"])
    assert result.stdout.startswith("from the real index "), result.stderr


def test_index_urls_and_the_install_phases_policy():
    from isol8.packages.index import PINNED_HOST, package_index, registry_patterns
    pypi = package_index("pip")
    assert pypi.policy.decide("files.pythonhosted.org").allowed
    assert not pypi.policy.decide("evil.test").allowed and not pypi.policy.allow_private
    local = package_index("pip", "http://127.0.0.1:8080/simple/")
    assert local.sandbox_url == f"http://{PINNED_HOST}/simple"
    assert local.policy.decide(PINNED_HOST).allowed
    assert not local.policy.decide("127.0.0.1").allowed  # only the pinned port
    assert str(local.policy.pin(PINNED_HOST).address) == "127.0.0.1"
    assert local.policy.pin(PINNED_HOST).port == 8080
    named = package_index("npm", "https://npm.internal.test/")
    assert named.sandbox_url == "https://npm.internal.test" and named.trusted_host is None
    assert named.policy.allow_private and not named.policy.decide("other.test").allowed
    for bad in ("ftp://x/simple", "https://127.0.0.1/simple", "http://u:p@host/simple",
                "http://host/simple?x=1"):
        with pytest.raises(InvalidRequest, match="package_index_url"):
            package_index("pip", bad)
    assert registry_patterns("npm") == [r"^registry\.npmjs\.org$"]
    assert registry_patterns("pip", "http://127.0.0.1:1/simple") == [r"^127\.0\.0\.1$"]
