"""A crash in a sandbox never reaches the host's coredump helper (issue 9).

With a pipe ``core_pattern`` (``|/usr/lib/systemd/systemd-coredump ...``, apport) the kernel
starts the helper as root in the host's namespaces and feeds it the crashed process's memory,
whatever its RLIMIT_CORE, except when that limit is exactly 1 (fs/coredump.c, coredump_pipe:
the value it gives its own helpers against recursive dumps). So every sandbox process has
RLIMIT_CORE (1, 1), and the seccomp policy makes setting it a no-op (isol8.limits,
isol8.seccomp).

The crash tests set the machine-wide kernel.core_pattern, so they run only inside the
disposable TCG VM of scripts/vm-limits-test.sh, as root, and restore it. Each has a positive
control: a host process crashing with RLIMIT_CORE 0 does start the helper. The helper, its
marker and the socket live in a directory of /dev: the kernel starts a pipe helper, and looks
a socket up, in the root of its own threads, which in the VM is still the initramfs (its init
moves the real root over / and chroots only itself); /dev is the one devtmpfs both see.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import GUARD_SH, run_py, run_sh
from isol8 import Isol8

IN_VM = os.environ.get("TCGVM_GUEST") == "1"
SLOW = 10 if IN_VM else 1
CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")
in_vm = pytest.mark.skipif(
    not IN_VM, reason="sets the machine-wide kernel.core_pattern: only in the disposable TCG VM "
                      "(scripts/vm-limits-test.sh)")

LIMITS_PY = """
import json, resource
def limits():
    row = next(l for l in open('/proc/self/limits') if l.startswith('Max core file size'))
    return row.split()[4:6]
out = {'start': limits()}
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # answered success, changes nothing
out['after setrlimit'] = [limits(), resource.getrlimit(resource.RLIMIT_CORE)]
try:
    resource.prlimit(0, resource.RLIMIT_CORE, (0, 0))  # wants the old value back: EPERM
    out['prlimit'] = 'ok'
except OSError as e:
    out['prlimit'] = e.strerror
print(json.dumps(out))
"""


@pytest.mark.parametrize("mode", ["ephemeral", "persistent"])
def test_core_limit_is_one_and_user_code_cannot_lower_it(mode):
    with Isol8(mode=mode) as eng:
        r = run_py(eng, LIMITS_PY)
        shell = run_sh(eng, "ulimit -c 0; echo \"status $?\"; ulimit -c unlimited; "
                            "echo \"status $?\"; grep 'core file' /proc/$$/limits")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == {"start": ["1", "1"], "after setrlimit": [["1", "1"], [1, 1]],
                                    "prlimit": "Operation not permitted"}
    # `ulimit -c 0` in a script succeeds quietly (set -e scripts and ssh-agent stop on an
    # error), as does a raise, and the shell's own limit stays 1
    lines = shell.stdout.splitlines()
    assert (shell.exit_code, shell.stderr, lines[:2]) == (0, "", ["status 0", "status 0"])
    assert lines[2].split()[4:6] == ["1", "1"], lines


# --- a crash under a pipe or socket core_pattern (TCG VM only) ----------------------------

@contextlib.contextmanager
def core_pattern(pattern: str):
    saved = CORE_PATTERN.read_text()
    CORE_PATTERN.write_text(pattern)
    try:
        yield
    finally:
        CORE_PATTERN.write_text(saved)


@pytest.fixture
def scratch():
    path = Path(tempfile.mkdtemp(prefix="isol8-coredump-", dir="/dev"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def crash_on_host(limit: int) -> int:
    """A plain host process (no sandbox) that dies of SIGSEGV with RLIMIT_CORE ``limit``
    bytes (a shell's `ulimit -c` counts blocks of 512 or 1024); returns its pid."""
    proc = subprocess.run(
        ["sh", "-c", "echo $$; kill -SEGV $$"], capture_output=True, text=True,
        timeout=30 * SLOW,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (limit, limit)))
    assert proc.returncode == -11, proc
    return int(proc.stdout)


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# Inside: a shell lowers the limit, the way a script disabling core files would, and dies of
# SIGSEGV; a Python process aborts.
CRASH_SH = "ulimit -c 0; sh -c 'kill -SEGV $$'; echo \"shell $?\"; " \
           "python3 -c 'import os; os.abort()'; echo \"python $?\""
# The same from a rootless supervisor, started from the root test through setpriv.
ROOTLESS_PY = """
import sys
from isol8 import Isol8
with Isol8() as eng:
    r = eng.execute(cmd=sys.argv[1])
print(r.stdout, end='')
sys.exit(r.exit_code)
"""


def crash_in_sandboxes() -> list[str]:
    """Crashes in a root sandbox and in a rootless one; returns what each shell printed."""
    with Isol8() as eng:
        r = run_sh(eng, CRASH_SH, timeout_ms=60_000 * SLOW)
    assert r.exit_code == 0, r.stderr
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
              "env", "-i", "HOME=/tmp", "PATH=/usr/bin:/bin", "LANG=C.UTF-8"]
    rootless = subprocess.run(nobody + [sys.executable, "-c", ROOTLESS_PY, GUARD_SH + CRASH_SH],
                              capture_output=True, text=True, timeout=120 * SLOW, cwd="/")
    assert rootless.returncode == 0, rootless.stderr
    return [r.stdout, rootless.stdout]


@in_vm
@pytest.mark.root_only
@pytest.mark.timeout(600 * SLOW)
def test_a_crash_in_a_sandbox_never_starts_a_pipe_helper(scratch):
    marker = scratch / "helper-ran"
    helper = scratch / "helper.sh"
    helper.write_text(f"#!/bin/sh\necho \"$1\" >> {marker}\nexec cat > /dev/null\n")
    helper.chmod(0o755)
    ran = lambda: marker.read_text().split() if marker.exists() else []  # noqa: E731
    with core_pattern(f"|{helper} %P"):
        control = crash_on_host(0)  # RLIMIT_CORE 0 does not stop a pipe helper...
        assert wait_for(lambda: str(control) in ran(), 20 * SLOW), "the helper never ran"
        quiet = crash_on_host(1)  # ...1 does
        outputs = crash_in_sandboxes()
        last = crash_on_host(0)  # the helpers start in order: once this one ran, all did
        assert wait_for(lambda: str(last) in ran(), 20 * SLOW)
    for out in outputs:  # both crashed: 128 + SIGSEGV, 128 + SIGABRT
        assert out.split() == ["shell", "139", "python", "134"], out
    assert ran() == [str(control), str(last)], (ran(), quiet)


@in_vm
@pytest.mark.root_only
@pytest.mark.timeout(600 * SLOW)
@pytest.mark.skipif(tuple(map(int, re.match(r"(\d+)\.(\d+)", os.uname().release).groups()))
                    < (6, 16),
                    reason="this kernel has no coredump socket (core_pattern '@<path>', "
                           "Linux 6.16)")
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "fs/coredump.c: the socket path (coredump_sock_connect) never reads RLIMIT_CORE, and only "
    "a non-dumpable process is skipped, which execve undoes; no rlimit or seccomp rule can "
    "keep a sandbox's crash from the host's coredump socket"))
def test_a_crash_in_a_sandbox_never_reaches_a_coredump_socket(scratch):
    path = scratch / "core.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(64)
    server.settimeout(0.1)
    peers: list[int] = []  # the pid of each crashed process the kernel connected for
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(30 * SLOW)
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                peers.append(int.from_bytes(creds[:4], "little"))
                while conn.recv(1 << 16):  # the core, until the kernel shuts down
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with core_pattern(f"@{path}"):
            control = crash_on_host(0)
            assert wait_for(lambda: control in peers, 20 * SLOW), "no connection"
            outputs = crash_in_sandboxes()
            last = crash_on_host(0)
            assert wait_for(lambda: last in peers, 20 * SLOW)
    finally:
        stop.set()
        thread.join(60 * SLOW)
        server.close()
    for out in outputs:
        assert out.split() == ["shell", "139", "python", "134"], out
    assert peers == [control, last], peers
