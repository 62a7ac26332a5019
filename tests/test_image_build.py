"""Real image builds: mmdebstrap from the Debian mirror apt is configured with (the one
network the image tests may use), as root in unshare mode and, in the rootless stage, as
isol8-ci in unshare mode with its subuid range (scripts/test.sh gives it one) or fakechroot.

The python image is the session's (conftest.python_image, built once and shared with the
tests that run code in images); the store-behaviour tests use a tiny recipe (variant
extract, busybox-static: a few seconds per build). A --install test serves a wheel it
builds from a package index on 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from conftest import image_store_of

from isol8 import Isol8
from isol8.errors import InvalidRequest, Isol8Error
from isol8.images import build as image_build
from isol8.images.store import ImageStore

ROOTFS = Path(__file__).resolve().parent.parent / "rootfs"
TINY = 'variant = "extract"\npackages = ["busybox-static"]\n'


def _mode_or_reason() -> str:
    try:
        return image_build.choose_mode()
    except Isol8Error as exc:
        return f"SKIP {exc}"


MODE = _mode_or_reason()
pytestmark = [
    pytest.mark.skipif(MODE.startswith("SKIP"), reason=MODE[5:]),
    pytest.mark.skipif(not (ROOTFS / "python.toml").is_file(),
                       reason=f"the recipes are not at {ROOTFS}"),
    pytest.mark.timeout(400),
]


@pytest.fixture(scope="module")
def store(python_image):
    """The store of the session's python image (conftest.python_image: one build per test
    session, shared with the tests that run code in it), named through the environment as
    the CLI finds it. Tests here remove every other name they add."""
    env = {"ISOL8_IMAGES": image_store_of(python_image), "ISOL8_RECIPES": str(ROOTFS)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield ImageStore(env["ISOL8_IMAGES"])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "isol8", "image", *args], env=os.environ,
                          capture_output=True, text=True, timeout=timeout)


def test_python_image_manifest(python_image, store):
    image = python_image
    m = image.manifest
    assert m["source"] == "build" and m["recipe"] == "python" and m["mode"] == MODE
    assert m["python"].startswith("3.") and m["python"] == m["packages"]["python3"][:len(
        m["python"])]
    assert {"python3", "python3-pip", "python3-venv", "ca-certificates"} <= set(m["packages"])
    assert m["node"] is None and m["installed"] == {}
    assert m["files"] > 1000 and m["size"] > 50 << 20
    root = Path(image.root)
    assert (root / "usr/bin/python3").exists()
    assert (root / "etc/ssl/certs/ca-certificates.crt").is_file()
    assert "disable-pip-version-check" in (root / "etc/pip.conf").read_text()
    # Documentation, manual pages and translations are left out (dpkg path-exclude).
    assert not list((root / "usr/share/doc").glob("*/*"))
    assert not (root / "usr/share/man/man1").exists()
    # The .debs went to the apt cache for the next build, each complete (no partial copy).
    cache = os.listdir(image_build.apt_cache())
    assert any(n.startswith("python3.11_") and n.endswith(".deb") for n in cache)
    assert not [n for n in cache if n.endswith(".part")]
    # Nothing of the build is left: no apt cache or lists, no staging.
    assert not list((root / "var/cache/apt/archives").glob("*.deb"))
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def test_unchanged_recipe_is_a_no_op(python_image, store):
    t0 = time.monotonic()
    r = cli("build", "python")
    assert r.returncode == 0, r.stderr
    assert "up to date" in r.stderr and python_image.digest[7:19] in r.stderr
    assert time.monotonic() - t0 < 5
    again = image_build.build("python")
    assert not again.built and again.image == store.get("python") == python_image


def test_list_shows_the_image(python_image, store):
    r = cli("list")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("python "))
    assert python_image.digest[7:19] in line and line.rstrip().endswith("build")
    listed = json.loads(cli("list", "--json").stdout)
    (entry,) = [i for i in listed if i["name"] == "python"]
    assert entry["python"] == python_image.manifest["python"]
    assert entry["digest"] == python_image.digest and entry["root"] == python_image.root


def test_code_runs_in_the_built_image(python_image, store):
    with Isol8(rootfs="python") as eng:
        r = eng.execute("import sys, ssl; print(sys.version.split()[0], "
                        "ssl.get_default_verify_paths().cafile is not None)",
                        runtime="python")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.split()[0] == python_image.manifest["python"]


def test_export_import_round_trip(python_image, store, tmp_path):
    out = tmp_path / "python.tar"
    assert cli("export", "python", "-o", str(out)).returncode == 0
    r = cli("import", str(out), "--name", "python-copy")
    assert r.returncode == 0, r.stderr
    copy = store.get("python-copy")

    def listing(root: str) -> set[tuple[str, bool]]:
        return {(os.path.relpath(os.path.join(top, n), root),
                 os.path.islink(os.path.join(top, n)))
                for top, dirs, files in os.walk(root) for n in dirs + files}

    assert listing(copy.root) == listing(python_image.root)
    assert copy.manifest["packages"] == python_image.manifest["packages"]
    assert cli("rm", "python-copy").returncode == 0
    assert not os.path.exists(copy.root)


# -- the tiny recipe: rebuild rules, --force, concurrency, rm ----------------------------------

@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def has(root: str, program: str) -> bool:
    return any(os.path.lexists(os.path.join(root, d, program)) for d in ("bin", "usr/bin"))


def test_changed_recipe_rebuilds_and_force_rebuilds(store, tiny):
    first = image_build.build("tiny", base=str(tiny), store=store)
    assert first.built and (Path(first.image.root) / "bin/busybox").exists()
    assert not has(first.image.root, "dash")
    assert not image_build.build("tiny", base=str(tiny), store=store).built
    forced = image_build.build("tiny", base=str(tiny), store=store, force=True)
    assert forced.built
    assert forced.image.manifest["recipe_digest"] == first.image.manifest["recipe_digest"]
    tiny.write_text(TINY.replace('"busybox-static"', '"busybox-static", "dash"'))
    changed = image_build.build("tiny", base=str(tiny), store=store)
    assert changed.built
    assert changed.image.manifest["recipe_digest"] != first.image.manifest["recipe_digest"]
    assert has(changed.image.root, "dash")
    # The name's previous content went when the name moved on.
    assert store.get("tiny").digest == changed.image.digest != forced.image.digest
    assert not os.path.exists(forced.image.root)
    assert cli("rm", "tiny").returncode == 0
    assert store.find("tiny") is None and not os.path.exists(changed.image.root)


def test_concurrent_builds_of_one_name(store, tiny):
    procs = [subprocess.Popen([sys.executable, "-m", "isol8", "image", "build", "tiny-c",
                               "--base", str(tiny)], env=os.environ, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    finals = sorted(err.splitlines()[-1].split(": ")[2].split(",")[0] for _, err in outs)
    assert finals == ["built", "up to date"], outs
    image = store.get("tiny-c")
    assert image.manifest["digest"] == image.digest
    assert (Path(image.root) / "bin/busybox").exists()
    others = {e for e in os.listdir(store.root) if e.startswith("sha256-")}
    assert image.digest in others
    assert os.listdir(os.path.join(store.root, "tmp")) == []
    assert cli("rm", "tiny-c").returncode == 0


def test_a_failed_build_names_the_cause_and_leaves_nothing(store, tiny):
    tiny.write_text(TINY.replace('"busybox-static"', '"isol8-no-such-package"'))
    r = cli("build", "broken", "--base", str(tiny))
    assert r.returncode == 1
    assert "mmdebstrap failed" in r.stderr and "isol8-no-such-package" in r.stderr
    assert store.find("broken") is None
    assert os.listdir(os.path.join(store.root, "tmp")) == []


@pytest.mark.skipif(not (shutil.which("fakechroot") and shutil.which("fakeroot")),
                    reason="fakechroot and fakeroot are not installed")
def test_fakechroot_mode_builds(store, tiny):
    """The rootless fallback without a subuid range (mmdebstrap re-runs itself under
    fakechroot and fakeroot)."""
    # In fakechroot mode the tarball is packed by the image's own tar.
    tiny.write_text(TINY.replace('"busybox-static"', '"busybox-static", "tar"'))
    r = cli("build", "tiny-fc", "--base", str(tiny), "--mode", "fakechroot")
    assert r.returncode == 0, r.stderr
    image = store.get("tiny-fc")
    assert image.manifest["mode"] == "fakechroot" and has(image.root, "busybox")
    assert cli("rm", "tiny-fc").returncode == 0


# -- --install from a package index on loopback ------------------------------------------------

def _wheel(directory: Path, name: str, version: str) -> str:
    """A minimal pure-Python wheel (PEP 427) of one module, written by hand."""
    mod = name.replace("-", "_")
    dist = f"{mod}-{version}.dist-info"
    files = {f"{mod}/__init__.py": b"VALUE = 42\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\n"
                                 f"Version: {version}\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: isol8-test\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n"}

    def digest(data: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(
            hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{p},{digest(b)},{len(b)}\n" for p, b in files.items())
    filename = f"{mod}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(directory / filename, "w") as whl:
        for path, data in files.items():
            whl.writestr(path, data)
        whl.writestr(f"{dist}/RECORD", record + f"{dist}/RECORD,,\n")
    return filename


@contextlib.contextmanager
def package_index(root: Path):
    """A PEP 503 simple index served from ``root`` on 127.0.0.1, on an ephemeral port."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[assignment]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_install_bakes_a_pip_package_from_a_local_index(python_image, store, tmp_path):
    project = tmp_path / "simple" / "isol8-probe-pkg"
    project.mkdir(parents=True)
    filename = _wheel(project, "isol8-probe-pkg", "1.2.3")
    (project / "index.html").write_text(f'<a href="{filename}">{filename}</a>\n')
    with package_index(tmp_path) as url:
        r = cli("build", "py-probe", "--base", "python", "--install", "isol8-probe-pkg",
                "--index-url", url)
    assert r.returncode == 0, r.stderr
    # Off a terminal, progress is one plain line per step, in order.
    steps = [ln.split(": ")[2].split(" (")[0] for ln in r.stderr.splitlines()
             if ln.startswith("isol8: image py-probe: ")]
    assert steps == ["resolving", "downloading", "extracting", "installing", "customizing",
                     "packing", "importing", steps[-1]] and steps[-1].startswith("built")
    image = store.get("py-probe")
    assert image.manifest["installed"] == {"isol8-probe-pkg": "1.2.3"}
    assert image.manifest["install"] == ["isol8-probe-pkg"]
    assert image.manifest["recipe"] == "python"
    site = list(Path(image.root).glob("usr/local/lib/python3*/dist-packages/isol8_probe_pkg"))
    assert len(site) == 1 and (site[0] / "__init__.py").read_text() == "VALUE = 42\n"
    with Isol8(rootfs="py-probe") as eng:
        run = eng.execute("import isol8_probe_pkg; print(isol8_probe_pkg.VALUE)",
                          runtime="python")
        assert (run.exit_code, run.stdout.strip()) == (0, "42"), run.stderr
        # Asking for what the manifest holds skips the install: with no network at all (an
        # install would need network="filtered" and be refused), the run still succeeds.
        for wanted in (["isol8-probe-pkg"], ["isol8_probe_pkg==1.2.3"]):
            run = eng.execute("import isol8_probe_pkg; print(isol8_probe_pkg.VALUE)",
                              runtime="python", install_packages=wanted)
            assert (run.exit_code, run.stdout.strip()) == (0, "42"), run.stderr
        with pytest.raises(InvalidRequest, match="needs network='filtered'"):
            eng.execute("print(1)", runtime="python",
                        install_packages=["isol8-probe-pkg==9.9.9"])
    # The same base and packages again: up to date, without asking the index (it is gone).
    r = cli("build", "py-probe", "--base", "python", "--install", "isol8-probe-pkg",
            "--index-url", url)
    assert r.returncode == 0 and "up to date" in r.stderr, r.stderr
    assert cli("rm", "py-probe").returncode == 0


def test_install_refuses_an_option_as_a_package(store):
    r = cli("build", "py-bad", "--base", "python", "--install=--index-url=http://evil")
    assert r.returncode == 1 and "'--index-url=http://evil': not a package name" in r.stderr
    assert store.find("py-bad") is None
