"""Running code on a built image (``rootfs=``): the image's own runtimes, loader cache and CA
roots; a read-only root; clear errors for a missing image or runtime; a ``path`` root only
when it is the caller's; and an image's symlinks never reaching the host.

The image is the python recipe, built once per test session (conftest's ``python_image``)."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest

from isol8 import Isol8
from isol8.errors import InvalidRequest, RuntimeNotAvailable
from isol8.images import ImageNotFound

from conftest import image_store_of

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def image(python_image, monkeypatch):
    """The session's python image, found by name (its store is the default one)."""
    monkeypatch.setenv("ISOL8_IMAGES", image_store_of(python_image))
    return python_image


def _sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


PROBE = r"""
import hashlib, json, os, ssl, sys
def digest(p):
    with open(p, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()
print(json.dumps({
    "version": "%d.%d.%d" % sys.version_info[:3],
    "executable": os.path.realpath(sys.executable),
    "ld_cache": digest("/etc/ld.so.cache"),
    "ca": digest("/etc/ssl/certs/ca-certificates.crt"),
    "gcc": os.path.exists("/usr/bin/gcc"),
    "tls": ssl.create_default_context().cert_store_stats()["x509_ca"] > 0,
}))
"""


def test_code_runs_on_the_images_own_python_loader_cache_and_ca_roots(image):
    with Isol8(rootfs=image.name) as engine:
        r = engine.execute(PROBE)
    assert r.exit_code == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["version"] == image.manifest["python"]
    assert seen["ld_cache"] == _sha256(os.path.join(image.root, "etc/ld.so.cache"))
    assert seen["ca"] == _sha256(os.path.join(image.root,
                                              "etc/ssl/certs/ca-certificates.crt"))
    assert seen["tls"]
    # The host has a compiler (it builds the helper); the image has none: this is its /usr.
    assert shutil.which("gcc") and not seen["gcc"]


def test_the_image_is_read_only(image):
    with Isol8(rootfs=image.name) as engine:
        r = engine.execute(cmd="touch /usr/x 2>&1; touch /usr/bin/python3 2>&1; "
                               "echo ok > /sandbox/y && cat /sandbox/y")
    assert "Read-only file system" in r.stdout and r.stdout.endswith("ok"), r.stdout
    assert not os.path.exists(os.path.join(image.root, "usr/x"))


def test_a_runtime_the_image_lacks_is_named_with_the_fix(image):
    with Isol8(rootfs=image.name) as engine:
        with pytest.raises(RuntimeNotAvailable) as caught:
            engine.execute("console.log(1)", runtime="node")
    message = str(caught.value)
    assert f"image '{image.name}'" in message and "isol8 image build node" in message


def test_a_missing_image_names_the_command_that_builds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ISOL8_IMAGES", str(tmp_path))
    engine = Isol8(rootfs="nosuch")  # the name is checked when the engine starts
    with pytest.raises(ImageNotFound, match="isol8 image build nosuch"):
        engine.execute("print(1)")
    engine.stop()
    r = subprocess.run([os.sys.executable, "-m", "isol8", "exec", "--image", "nosuch", "-e",
                        "print(1)"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "isol8 image build nosuch" in r.stderr, r.stderr


def test_the_repl_and_the_warm_pool_run_on_the_images_python(image):
    with Isol8(rootfs=image.name, mode="persistent", repl=True) as engine:
        assert engine.execute("import sys; x = sys.version_info[:2]").exit_code == 0
        r = engine.execute("print('%d.%d' % x)")
    assert r.stdout == ".".join(image.manifest["python"].split(".")[:2]), r.stderr
    with Isol8(rootfs=image.name, prewarm=True) as engine:
        r = engine.execute("import os, sys; print(os.path.realpath(sys.executable))")
    assert r.exit_code == 0 and r.stdout.startswith("/usr/bin/python3"), r.stderr


def test_a_path_root_must_be_the_callers_and_closed_to_others(reachable_tmp):
    tmp_path = reachable_tmp
    with pytest.raises(InvalidRequest, match="missing: No such file or directory"):
        Isol8(rootfs=str(tmp_path / "missing")).start()
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidRequest, match="is not a directory"):
        Isol8(rootfs=str(tmp_path / "file")).start()
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(InvalidRequest, match="writable by others"):
        Isol8(rootfs=str(open_dir)).start()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)
    else:
        theirs = "/usr"  # root's
    with pytest.raises(InvalidRequest, match="not to this user"):
        Isol8(rootfs=str(theirs)).start()
    for bad in ("", "Python", "a:b", "rel/ative"):
        with pytest.raises(InvalidRequest, match="rootfs"):
            Isol8(rootfs=bad)


@pytest.fixture
def reachable_tmp():
    """A directory every uid can search (as root, sandboxes mount as a leased uid; pytest's
    tmp_path is 0700), removed afterwards."""
    path = tempfile.mkdtemp(prefix="isol8-image-run-", dir="/var/tmp")
    os.chmod(path, 0o755)
    yield pathlib.Path(path)
    shutil.rmtree(path)


@pytest.fixture
def hostile_root(python_image, reachable_tmp):
    """A path root: the image (hard links, so it is quick) with symlinks aimed at the host
    where isol8 reads or binds: /etc tables, a directory on the way to one, /opt."""
    tmp_path = reachable_tmp
    marker = tmp_path / "host-secret"
    marker.write_text("HOST-SECRET-7f3a")
    marker.chmod(0o644)
    root = tmp_path / "root"
    subprocess.run(["cp", "-al", python_image.root, str(root)], check=True)
    etc = root / "etc"
    for name in ("ld.so.cache", "os-release", "gai.conf", "mime.types"):
        if (etc / name).exists() or (etc / name).is_symlink():
            (etc / name).unlink()
        (etc / name).symlink_to(marker)
    shutil.rmtree(etc / "ssl")
    (etc / "ssl").symlink_to(tmp_path)  # ssl/certs would be tmp_path/certs on the host
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "x.pem").write_text("HOST-SECRET-7f3a")
    shutil.rmtree(root / "opt", ignore_errors=True)
    (root / "opt").symlink_to(tmp_path)
    return root


def test_an_images_symlinks_never_reach_the_host(hostile_root):
    with Isol8(rootfs=str(hostile_root)) as engine:
        r = engine.execute(cmd="cat /etc/ld.so.cache /etc/os-release /etc/gai.conf "
                               "/etc/ssl/certs/x.pem /opt/host-secret 2>&1; "
                               "grep -rs HOST-SECRET /etc /opt; python3 -c 'print(7)'")
    assert "HOST-SECRET" not in r.stdout + r.stderr
    assert r.stdout.endswith("7"), r.stdout  # the loader still works without the cache


@pytest.mark.root_only
def test_a_setuid_root_program_in_a_path_root_gives_nothing(python_image, reachable_tmp):
    """A path root is the caller's own tree and the importer never saw it: as root, it can
    hold a setuid-root program. Image binds are nosuid, and host root is not mapped in the
    sandbox, so running it changes no id."""
    root = reachable_tmp / "root"
    subprocess.run(["cp", "-al", python_image.root, str(root)], check=True)
    python = root / "usr/bin" / os.readlink(root / "usr/bin/python3")
    copy = python.with_name("python3-copy")
    shutil.copy2(python, copy)  # its own inode: the image's file keeps its mode
    os.replace(copy, python)
    os.chown(python, 0, 0)
    os.chmod(python, 0o4755)
    with Isol8(rootfs=str(root)) as engine:
        r = engine.execute("import os; print(os.getuid(), os.geteuid(), "
                           "oct(os.stat('/usr/bin/python3').st_mode & 0o7777))")
    assert r.exit_code == 0, r.stderr
    uid, euid, mode = r.stdout.split()
    assert mode == "0o4755" and uid == euid == "1000", r.stdout
