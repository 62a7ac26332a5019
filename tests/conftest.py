"""Shared fixtures: a real engine on the real kernel, and guarded probes.

Probes that call dangerous syscalls (umount, kill(-1), sysctl writes) would do real damage on
the host as root, so every probe starts with a guard that exits 99 unless it sees the
sandbox's own state: no capabilities at all, no_new_privs, seccomp filtering, uid 1000.
Tests assert exit codes other than 99, so a probe that refused fails its test loudly.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from isol8 import ExecutionResult, Isol8

TESTS = Path(__file__).resolve().parent
GUARD_REFUSED = 99

# Python and shell guards: refuse unless inside an isol8 sandbox with every privilege gone.
GUARD_PY = """\
import sys as _s
_st = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)
if not (all(int(_st[k].strip(), 16) == 0 for k in ('CapEff', 'CapPrm', 'CapBnd'))
        and _st['NoNewPrivs'].strip() == '1' and _st['Uid'].split()[0] == '1000'):
    print('probe refused: privileged or outside the sandbox', file=_s.stderr); _s.exit(99)
del _s, _st
"""
GUARD_SH = """\
grep -q '^CapEff:[[:space:]]*0000000000000000$' /proc/self/status \
 && grep -q '^CapBnd:[[:space:]]*0000000000000000$' /proc/self/status \
 && grep -q '^NoNewPrivs:[[:space:]]*1$' /proc/self/status \
 && [ "$(id -u)" = 1000 ] \
 || { echo 'probe refused: privileged or outside the sandbox' >&2; exit 99; }
"""

# For probes that try operations one by one: 'ok', or the errno's name.
ATTEMPT_PY = """\
import errno
def attempt(fn):
    try:
        fn()
        return 'ok'
    except OSError as e:
        return errno.errorcode[e.errno]
"""


# Everything a Python program can observe of how it was started, and what its failures look
# like: a run by a waiting interpreter (warm pool, persistent zygote) must equal a cold one.
PROGRAMS = [
    "import sys, os\nprint(sys.argv, sys.path[0], __file__, __name__, os.getcwd())\n"
    "print(sorted(globals()), __loader__.name, __spec__, __package__, __cached__)\n"
    "print(sys.stdin.seekable(), sys.stdout.isatty(), sys.flags.isolated, sys.stdout.encoding)",
    "import sys; print(sorted(m for m in sys.modules if not m.startswith('encodings.')))",
    "import os; print(sorted(os.environ.items()))",
    "import sys; data = sys.stdin.read(); print(len(data), data[:5], sys.stdin.tell())",
    "def f():\n    raise ValueError('boom')\nf()",
    "x = (",
    "import sys; sys.exit(3)",
    "import sys; sys.exit('bye')",
    "raise KeyboardInterrupt",
    "import atexit; atexit.register(lambda: print('at exit'))\nprint('body')",
    "import __main__; print(__main__.__file__, __main__.__dict__ is globals())",
    "import sys; print('partial', end=''); sys.stdout.flush(); import os; os._exit(4)",
]


def is_root() -> bool:
    return os.geteuid() == 0


def pytest_collection_modifyitems(config, items):
    # Mode-specific tests are deselected in the other mode, never skipped: the suite runs in
    # both modes (scripts/test.sh), so each of them runs somewhere.
    wrong = "rootless_only" if is_root() else "root_only"
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker(wrong) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# Traffic stays on this machine. Every proxy of this process resolves names from this table
# only (never the system resolver) and connects only to loopback: a destination anywhere else
# is recorded and refused, and the test that caused it fails, even if the SSRF guard under
# test were broken.
RESOLVE_TABLE: dict[str, list[str]] = {
    "private.test": ["10.0.0.5"],
    "metadata.test": ["169.254.169.254"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "loopback.test": ["127.0.0.1"],
    "public.test": ["203.0.113.80"],  # TEST-NET-3: "public" to the guard, never dialled
}
OUTBOUND_VIOLATIONS: list[str] = []


async def _table_resolver(host: str) -> list:
    import ipaddress
    if host not in RESOLVE_TABLE:
        raise OSError(-2, "Name or service not known (test resolver table)")
    return [ipaddress.ip_address(a) for a in RESOLVE_TABLE[host]]


async def _loopback_connector(address, port: int):
    from isol8.network.outbound import direct_connector
    if not address.is_loopback:
        OUTBOUND_VIOLATIONS.append(f"{address} port {port}")
        raise ConnectionRefusedError(111, f"test connector: {address} is not loopback")
    return await direct_connector(address, port)


@pytest.fixture(autouse=True, scope="session")
def _outbound_stays_local():
    from isol8.network import outbound
    previous = outbound.use(_table_resolver, _loopback_connector)
    yield
    outbound.use(*previous)


@pytest.fixture(autouse=True)
def _no_outbound_violation():
    yield
    violations, OUTBOUND_VIOLATIONS[:] = list(OUTBOUND_VIOLATIONS), []
    assert not violations, f"the proxy tried to connect outside loopback: {violations}"


@pytest.fixture(scope="session")
def engine() -> Isol8:
    with Isol8() as eng:
        yield eng


@contextlib.contextmanager
def host_tempdir(prefix: str, *, under: str = "/var/tmp", mode: int = 0o755) -> Iterator[Path]:
    """A host directory for mount sources, removed afterwards. As root a sandbox is a leased
    host uid that reaches a source through the "other" bits of every directory above it, and
    pytest's tmp_path (under /tmp/pytest-of-root, 0700) is not searchable by it."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=under))
    path.chmod(mode)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_py(engine: Isol8, code: str, **kw) -> ExecutionResult:
    """Run guarded Python probe code; fails the test if the guard refused."""
    result = engine.execute(GUARD_PY + code, runtime="python", **kw)
    assert result.exit_code != GUARD_REFUSED, result.stderr
    return result


def run_sh(engine: Isol8, script: str, **kw) -> ExecutionResult:
    """Run a guarded shell probe; fails the test if the guard refused."""
    result = engine.execute(cmd=GUARD_SH + script, **kw)
    assert result.exit_code != GUARD_REFUSED, result.stderr
    return result


@pytest.fixture(scope="session")
def probe_binary(tmp_path_factory) -> bytes:
    """tests/probe/probe.c compiled for this host; its bytes are shipped in through stdin."""
    out = tmp_path_factory.mktemp("probe") / "probe"
    subprocess.run(["cc", "-O1", "-Wall", "-o", str(out), str(TESTS / "probe" / "probe.c")],
                   check=True)
    return out.read_bytes()


def run_probe(engine: Isol8, probe: bytes, *args: str, **kw) -> ExecutionResult:
    """Run the C probe inside the sandbox (it has its own guard, exit 99)."""
    cmd = ("cat > /sandbox/probe && chmod 700 /sandbox/probe && exec /sandbox/probe "
           + shlex.join(args))
    result = engine.execute(cmd=cmd, stdin=probe, **kw)
    assert result.exit_code != GUARD_REFUSED, result.stderr
    return result


def host_processes_matching(pattern: str) -> list[str]:
    """Host processes whose command line contains pattern, for leak checks."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if pattern in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def child_pids() -> list[int]:
    """This test process's children, zombies included: a helper not reaped shows up here."""
    children = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
            children.append(int(pid))
    return children


# Children that outlive the module that made them: the leak checks of later tests (child_pids()
# == []) fail then, far from the cause. Each module's end records what it left, with the
# command line, and the summary names the first module that did (a diagnosis, not a test).
LEFT_BY_MODULE: list[tuple[str, list[str]]] = []


def _described(pid: int) -> str:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} [{state}] {cmd[:160] or '?'}"


@pytest.fixture(autouse=True, scope="module")
def _children_left_by_the_module(request):
    before = set(child_pids())
    yield
    left = sorted(set(child_pids()) - before)
    if left:
        LEFT_BY_MODULE.append((request.module.__name__, [_described(p) for p in left]))


def pytest_terminal_summary(terminalreporter):
    for module, left in LEFT_BY_MODULE[:3]:
        terminalreporter.write_line(f"children left by {module}: {'; '.join(left)}")


@contextlib.contextmanager
def watching_host(pattern: str, *, no_children: bool = True):
    """Polls the host process list during the block (the positive control: the marked
    process really existed); on exit nothing matching may remain and, unless a persistent
    sandbox is meant to stay, this process has no child left."""
    seen: list[str] = []
    stop = threading.Event()

    def poll():
        while not stop.is_set() and not seen:
            seen.extend(host_processes_matching(pattern))
            time.sleep(0.01)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()
    assert seen, "the marked process never showed up on the host: the probe is broken"
    assert host_processes_matching(pattern) == []
    if no_children:
        assert child_pids() == []


@pytest.fixture(scope="session")
def python_image():
    """The python recipe (rootfs/python.toml) built once per test session, with mmdebstrap
    from the Debian mirror apt uses, into a store of its own under /var/tmp (as root a
    sandbox reaches the image as an unprivileged uid, and pytest's tmp dirs are 0700).
    Returns the Image; tests that name it set ISOL8_IMAGES to ``image_store_of(image)``."""
    from isol8.images import ImageStore, build

    path = tempfile.mkdtemp(prefix="isol8-test-images-", dir="/var/tmp")
    os.chmod(path, 0o755)
    try:
        yield build.build("python", store=ImageStore(path)).image
    finally:
        from isol8.images.store import remove_tree

        remove_tree(path)


def image_store_of(image) -> str:
    """The store an Image lives in: ``<store>/sha256-<hex>/rootfs``."""
    return os.path.dirname(os.path.dirname(image.root))
