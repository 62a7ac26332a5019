"""The wheels (issue 12 point 6): built as scripts/build-wheels.sh builds them, from the sdist of a
clean copy of the source, each must carry a static helper for its own machine, be tagged
manylinux, and install into a fresh venv and run code with no compiler anywhere on PATH. The
other architecture's helper (Debian's cross compiler) is run under qemu-user, which cannot
create namespaces or install seccomp filters: it only shows that the binary starts and answers a
malformed config with the helper's error report, exactly as the native one does.

Everything is built here, into temporary directories, once per module (about 20 s): no test
depends on a wheel left in dist/ by a manual step.
"""

import errno
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import time
import urllib.parse
import zipfile
from pathlib import Path

import pytest

from isol8 import protocol

HERE = Path(__file__).resolve().parents[1]
HELPER = "isol8/_bin/isol8-helper"
CONTROL_FD = 3  # csrc/helper.h
# <elf.h>: e_machine per architecture, program header and dynamic entry types.
EM = {"x86_64": 62, "aarch64": 183}
PT_DYNAMIC, PT_INTERP, DT_NULL, DT_NEEDED = 2, 3, 0, 1
NATIVE = platform.machine()
CROSS = {"x86_64": "aarch64", "aarch64": "x86_64"}.get(NATIVE, "")
# Debian's cross compilers and C libraries, per target (scripts/build-wheels.sh's list).
CROSS_PACKAGES = {"aarch64": ["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"],
                  "x86_64": ["gcc-x86-64-linux-gnu", "libc6-dev-amd64-cross"]}
COMPILERS = ("cc", "gcc", "c99", "clang", "tcc", f"{CROSS}-linux-gnu-gcc")

pytestmark = pytest.mark.skipif(NATIVE not in EM, reason=f"wheels are built on x86_64 and "
                                f"aarch64, not {NATIVE}")


def source_tree() -> Path | None:
    """The checkout to build from: the one these tests sit in, else $ISOL8_SOURCE_DIR, else the
    one the installed isol8 came from (pip's direct_url.json), since the rootless stage runs a
    copy of tests/ alone (and its user may not be able to read the checkout)."""
    for path in (HERE, Path(os.environ.get("ISOL8_SOURCE_DIR") or HERE)):
        if (path / "setup.py").is_file():
            return path
    try:
        direct = importlib.metadata.distribution("isol8").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None
    url = json.loads(direct)["url"] if direct else ""
    if not url.startswith("file://"):
        return None
    path = Path(urllib.parse.unquote(url.removeprefix("file://")))
    return path if os.access(path / "csrc", os.R_OK | os.X_OK) else None


def require_tool(names: list[str], packages: list[str]) -> str:
    """The first of ``names`` on PATH; if none is, root installs ``packages`` with the project's
    scripts/system-deps.sh (as scripts/build-wheels.sh does), anyone else skips, saying what an
    admin would run."""
    found = next(filter(None, map(shutil.which, names)), None)
    source = source_tree()
    if found is None and source is not None:
        result = subprocess.run([str(source / "scripts" / "system-deps.sh"), *packages],
                                capture_output=True, text=True, timeout=600)
        found = next(filter(None, map(shutil.which, names)), None)
        if found is None:
            pytest.skip(f"no {' or '.join(names)}; installing {' '.join(packages)} failed: "
                        f"{result.stderr.strip()[-800:]}")
    if found is None:
        pytest.skip(f"no {' or '.join(names)} (packages: {' '.join(packages)})")
    return found


def run_build(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m build --no-isolation``: this venv's setuptools (the test extra), nothing
    downloaded; ISOL8_REQUIRE_STATIC is set only where a test sets it."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CC", "ISOL8_REQUIRE_STATIC")}
    return subprocess.run([sys.executable, "-m", "build", "--no-isolation", *args],
                          env={**environ, **env}, capture_output=True, text=True, timeout=300)


def build_wheel(sdist_tree: Path, out: Path, *args: str, **env: str) -> Path:
    """A wheel from a fresh copy of the unpacked sdist (setuptools' build/ directory is named
    after the build machine, not the target, so trees are never shared between builds)."""
    tree = out / "tree"
    shutil.copytree(sdist_tree, tree)
    result = run_build(["--wheel", "--outdir", str(out), *args, str(tree)], **env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sdist of a clean copy of the source (no egg-info, no helper built in place, whose
    names setuptools would read back into the sdist), and the tree it unpacks to."""
    try:
        setuptools = int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        setuptools = 0
    if importlib.util.find_spec("build") is None or setuptools < 77:
        pytest.skip("the test extra's build and setuptools>=77 are missing from this venv "
                    "(pip install -e '.[test]')")
    source = source_tree()
    if source is None:
        pytest.skip("no isol8 source tree to build from: none next to the tests, in "
                    "$ISOL8_SOURCE_DIR or recorded by pip, readable by this user")
    root = tmp_path_factory.mktemp("sdist")
    src = root / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(source / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "_bin", "*.egg-info")
    shutil.copytree(source / "csrc", src / "csrc", ignore=ignore)
    shutil.copytree(source / "isol8", src / "isol8", ignore=ignore)
    result = run_build(["--sdist", "--outdir", str(root / "dist"), str(src)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (archive,) = (root / "dist").glob("isol8-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(root / "unpacked")  # just built from our own tree (3.11.2: no filter=)
    (tree,) = (root / "unpacked").iterdir()
    return archive, tree


@pytest.fixture(scope="module")
def native_wheel(sdist: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(sdist[1], tmp_path_factory.mktemp("native"), ISOL8_REQUIRE_STATIC="1")


@pytest.fixture(scope="module")
def cross_wheel(sdist: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = require_tool([f"{CROSS}-linux-gnu-gcc"], CROSS_PACKAGES[CROSS])
    return build_wheel(sdist[1], tmp_path_factory.mktemp("cross"),
                       f"-C--build-option=--plat-name=manylinux_2_17_{CROSS}",
                       CC=cc, ISOL8_REQUIRE_STATIC="1")


def elf_facts(data: bytes) -> tuple[int, bool, list[int]]:
    """(e_machine, has PT_INTERP, DT_NEEDED entries) of a little-endian ELF64 executable, read
    from its program headers, as the kernel and the dynamic loader read them."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not an ELF64 LE file"
    machine, = struct.unpack_from("<H", data, 18)
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    interp, needed = False, []
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", data,
                                                                 phoff + i * phentsize)
        interp |= p_type == PT_INTERP
        if p_type == PT_DYNAMIC:
            for off in range(p_offset, p_offset + p_filesz, 16):
                tag, value = struct.unpack_from("<qQ", data, off)
                if tag == DT_NULL:
                    break
                if tag == DT_NEEDED:
                    needed.append(value)
    return machine, interp, needed


def wheel_tags(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/WHEEL")]
        lines = zf.read(name).decode().splitlines()
    return [line.removeprefix("Tag: ") for line in lines if line.startswith("Tag: ")]


def check_static_helper(wheel: Path, arch: str) -> bytes:
    """The wheel's name and WHEEL tags say manylinux for ``arch``, and its helper is an
    executable, statically linked binary for that machine."""
    plat = f"manylinux_2_17_{arch}.manylinux2014_{arch}"
    assert wheel.name.endswith(f"-py3-none-{plat}.whl"), wheel.name
    assert wheel_tags(wheel) == [f"py3-none-manylinux_2_17_{arch}",
                                 f"py3-none-manylinux2014_{arch}"]
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo(HELPER)
        data = zf.read(info)
    assert (info.external_attr >> 16) & stat.S_IXUSR, "the helper is not executable"
    machine, interp, needed = elf_facts(data)
    assert machine == EM[arch], f"helper is for e_machine {machine}, not {arch}"
    assert not interp and not needed, "the helper is dynamically linked"
    return data


def test_sdist_carries_the_sources_and_no_helper(sdist: tuple[Path, Path]) -> None:
    """pip install of the sdist compiles the helper: no binary for some other machine (or a
    dynamic one) may ride along."""
    with tarfile.open(sdist[0]) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"setup.py", "csrc/main.c", "csrc/helper.h", "isol8/protocol.py"} <= names
    assert not [name for name in names if "_bin" in name or name.endswith(".o")]


def test_native_wheel_carries_a_static_helper(native_wheel: Path) -> None:
    check_static_helper(native_wheel, NATIVE)


def test_cross_wheel_carries_a_static_helper(cross_wheel: Path) -> None:
    check_static_helper(cross_wheel, CROSS)


def test_wheel_installs_and_runs_without_a_compiler(native_wheel: Path, tmp_path: Path) -> None:
    """A fresh venv, the wheel installed offline, and a PATH holding nothing but the venv's
    bin/ (python, pip): no compiler can be found, and code runs in a sandbox with the wheel's
    own helper."""
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=120)
    env = {"PATH": str(venv / "bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    # cwd: tmp_path, since a checkout's isol8/ in the current directory would shadow the venv's
    assert [c for c in COMPILERS if shutil.which(c, path=env["PATH"])] == []
    t0 = time.monotonic()
    subprocess.run(["python", "-m", "pip", "install", "-qq", "--no-deps", "--no-index",
                    str(native_wheel)], env=env, check=True, timeout=120, cwd=tmp_path)
    installed = subprocess.run(
        ["python", "-c", "from isol8._paths import helper_path; print(helper_path())"],
        env=env, capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    assert installed.startswith(str(venv) + "/"), installed
    with zipfile.ZipFile(native_wheel) as zf:
        assert Path(installed).read_bytes() == zf.read(HELPER)
    result = subprocess.run(["python", "-m", "isol8", "exec", "-r", "python", "-e", "print(1)"],
                            env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "1\n"), result.stderr
    print(f"install and first run: {time.monotonic() - t0:.1f} s")


def spawn_with_control_socket(argv: list[str]) -> tuple[int, socket.socket]:
    """Start ``argv`` with one end of a SOCK_SEQPACKET pair as fd 3, as isol8/sandbox.py
    starts the helper."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fd = theirs.fileno()
    if fd == CONTROL_FD:  # dup2(3, 3) would leave FD_CLOEXEC set
        fd = os.dup(fd)
    try:
        pid = os.posix_spawn(argv[0], argv, {},
                             file_actions=[(os.POSIX_SPAWN_DUP2, fd, CONTROL_FD)])
    finally:
        if fd != theirs.fileno():
            os.close(fd)
        theirs.close()
    return pid, ours


@pytest.mark.parametrize("which", ["native", "cross"])
def test_helper_answers_a_malformed_config(which: str, request: pytest.FixtureRequest,
                                           tmp_path: Path) -> None:
    """The helper's first read is the config message on fd 3 (csrc/main.c, phase 1); garbage
    there must come back as the helper's error event, then exit status 1. The native helper
    runs directly, the cross one under qemu-user, which runs no sandbox but does run this."""
    arch = NATIVE if which == "native" else CROSS
    wheel = request.getfixturevalue(f"{which}_wheel")
    helper = tmp_path / "isol8-helper"
    helper.write_bytes(check_static_helper(wheel, arch))
    helper.chmod(0o755)
    argv = [str(helper)]
    if which == "cross":
        argv = [require_tool([f"qemu-{arch}-static", f"qemu-{arch}"], ["qemu-user"]),
                str(helper)]
    pid, sock = spawn_with_control_socket(argv)
    with sock:
        sock.settimeout(60)
        sock.send(b"this is not a config message")
        event = protocol.parse_event(sock.recv(protocol.MAX_EVENT))
        sock.settimeout(10)
        assert sock.recv(protocol.MAX_EVENT) == b"", "the helper went on after failing"
    _, status = os.waitpid(pid, 0)
    assert event == {"event": "error", "step": "config", "syscall": "parse",
                     "errno": errno.EINVAL, "path": "config message"}
    assert os.waitstatus_to_exitcode(status) == 1


def fake_cc_without_libc_a(tmp_path: Path) -> Path:
    """A compiler whose static links fail, like gcc on a machine without libc.a."""
    cc = tmp_path / "cc-no-static"
    real = shutil.which("cc") or shutil.which("gcc")
    assert real, "no C compiler on PATH"
    cc.write_text("#!/bin/sh\nfor a; do [ \"$a\" = -static ] && "
                  "{ echo 'ld: cannot find -lc' >&2; exit 1; }; done\n"
                  f"exec {real} \"$@\"\n")
    cc.chmod(0o755)
    return cc


def test_wheel_build_fails_rather_than_ship_a_dynamic_helper(
        sdist: tuple[Path, Path], tmp_path: Path) -> None:
    cc = fake_cc_without_libc_a(tmp_path)
    shutil.copytree(sdist[1], tmp_path / "tree")
    result = run_build(["--wheel", "--outdir", str(tmp_path / "out"), str(tmp_path / "tree")],
                       CC=str(cc), ISOL8_REQUIRE_STATIC="1")
    assert result.returncode != 0
    assert "ISOL8_REQUIRE_STATIC=1 forbids a dynamic helper" in result.stderr + result.stdout
    assert not list((tmp_path / "out").glob("*.whl"))


def test_local_build_falls_back_to_a_dynamic_helper_tagged_linux(
        sdist: tuple[Path, Path], tmp_path: Path) -> None:
    """Without ISOL8_REQUIRE_STATIC (pip install of the sdist) the helper may be dynamic, but
    then the wheel says linux_<arch>, a tag for this machine that PyPI refuses, never
    manylinux."""
    wheel = build_wheel(sdist[1], tmp_path, CC=str(fake_cc_without_libc_a(tmp_path)))
    assert wheel_tags(wheel) == [f"py3-none-linux_{NATIVE}"]
    with zipfile.ZipFile(wheel) as zf:
        machine, interp, needed = elf_facts(zf.read(HELPER))
    assert machine == EM[NATIVE] and interp and needed


def test_plat_name_must_match_the_helper(sdist: tuple[Path, Path], tmp_path: Path) -> None:
    """--plat-name for the other architecture with the native compiler is refused, naming
    both, rather than making a wheel whose helper cannot run where pip would install it."""
    shutil.copytree(sdist[1], tmp_path / "tree")
    result = run_build(["--wheel", "--outdir", str(tmp_path / "out"),
                        f"-C--build-option=--plat-name=manylinux_2_17_{CROSS}",
                        str(tmp_path / "tree")])
    assert result.returncode != 0
    assert (f"--plat-name manylinux_2_17_{CROSS} does not match the helper"
            in result.stderr + result.stdout)
    assert f"static {NATIVE}" in result.stderr + result.stdout
