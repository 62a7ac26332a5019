"""An unprivileged supervisor in a delegated cgroup v2 subtree gets hard limits (issue 9,
point 3): isol8.delegation moves it into a leaf of the cgroup it has to itself, enables the
controllers, and the engines' cgroups go beside the leaf. Without it the memory limit is the
watchdog's best effort.

Each test makes a delegated cgroup D the way systemd does for Delegate=yes (the directory
and its delegatable files owned by the user) and starts a fresh Python there, alone, without
ISOL8_CGROUP_PARENT: as root for the unprivileged user nobody, under the root cgroup; as the
VM stage's delegated user, under its ISOL8_CGROUP_PARENT (where the controllers are enabled).
Both need a pure cgroup v2 hierarchy with the memory controller: the VM stage
(scripts/vm-limits-test.sh) runs this file in both passes; on a hybrid host it is skipped.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from isol8 import delegation

from conftest import is_root

CGROUP = Path("/sys/fs/cgroup")
SLOW = 10 if os.environ.get("TCGVM_GUEST") else 1
NOBODY = "nobody"

# Runs in D as the delegated user. It reports where it ended up, what enforced each limit,
# and that an allocation past memory_limit is the kernel's OOM kill.
PROBE = """
import json, os, sys
from isol8 import Isol8
d = sys.argv[1]
out = {}
with Isol8(memory_limit="64m", pids_limit=32) as eng:
    r = eng.execute(cmd="true", timeout_ms=120_000)
    out["enforced"] = r.resource_usage.enforced
    r = eng.execute("b = bytearray(256 << 20); b[::4096] = b'x' * len(b[::4096]); print('survived')",
                    timeout_ms=120_000)
    out["oom"] = [r.exit_code, r.resource_usage.oom, r.stdout]
    out["cgroup"] = open("/proc/self/cgroup").read().strip()
    out["subtree_control"] = open(os.path.join(d, "cgroup.subtree_control")).read().split()
    out["engine_dirs"] = [n for n in os.listdir(d) if n.startswith("isol8-") and n != "isol8-supervisor"]
out["left"] = sorted(n for n in os.listdir(d) if os.path.isdir(os.path.join(d, n)))
print(json.dumps(out))
"""


def _parent() -> Path | None:
    """Where this user may make a cgroup with the memory controller: as root the root cgroup
    of a pure v2 hierarchy, else ISOL8_CGROUP_PARENT when it is ours and enables memory."""
    if not (CGROUP / "cgroup.subtree_control").exists() or (CGROUP / "memory").exists():
        return None  # no cgroup2 at /sys/fs/cgroup, or a v1 memory hierarchy (hybrid/legacy)
    base = CGROUP if is_root() else Path(os.environ.get("ISOL8_CGROUP_PARENT") or "/nonexistent")
    try:
        enabled = (base / "cgroup.subtree_control").read_text().split()
    except OSError:
        return None
    writable = os.access(base, os.W_OK)
    return base if "memory" in enabled and writable else None


PARENT = _parent()
pytestmark = pytest.mark.skipif(
    PARENT is None, reason="needs a pure cgroup v2 hierarchy with the memory controller to "
    "delegate (root there, or a delegated user with ISOL8_CGROUP_PARENT): the VM stage runs it")


def _user() -> tuple[int, int]:
    if not is_root():
        return os.getuid(), os.getgid()
    entry = pwd.getpwnam(NOBODY)
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
def delegate() -> Iterator[Callable[[str], tuple[Path, Path]]]:
    """make(name) -> (D, a home): a fresh cgroup PARENT/name delegated to the user the probe
    runs as; each is removed after (with the leaf the supervisor moved into, empty once it
    exited). A name, since cgroup v2 cannot rename a cgroup."""
    assert PARENT is not None
    made: list[Path] = []
    home = Path(tempfile.mkdtemp(prefix="isol8-deleg-home-", dir="/tmp"))
    uid, gid = _user()
    os.chown(home, uid, gid)

    def make(name: str) -> tuple[Path, Path]:
        d = PARENT / name
        d.mkdir()
        made.append(d)
        if is_root():  # what systemd does for Delegate=yes: the directory and its files
            delegate = Path("/sys/kernel/cgroup/delegate").read_text().split()
            for path in [d, *(d / f for f in delegate if (d / f).exists())]:
                os.chown(path, uid, gid)
        return d, home

    try:
        yield make
    finally:
        for d in made:
            for leaf in (p for p in d.iterdir() if p.is_dir()):
                leaf.rmdir()
            d.rmdir()
        shutil.rmtree(home, ignore_errors=True)


def _in(d: Path, home: Path, *argv: str, env: dict[str, str] | None = None,
        **kw) -> subprocess.Popen:
    """argv started alone in cgroup d as the delegated user, without ISOL8_CGROUP_PARENT."""
    uid, gid = _user()
    clean = {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
             **({"TCGVM_GUEST": "1"} if os.environ.get("TCGVM_GUEST") else {}), **(env or {})}
    become = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"] \
        if is_root() else []
    enter = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
    return subprocess.Popen(["sh", "-c", enter, str(d), *become, "env", "-i",
                             *(f"{k}={v}" for k, v in clean.items()), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _probe(d: Path, home: Path, env: dict[str, str] | None = None) -> dict:
    proc = _in(d, home, sys.executable, "-c", PROBE, str(d), env=env)
    out, err = proc.communicate(timeout=300 * SLOW)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out)


def _rel(d: Path) -> str:
    return "/" + str(d.relative_to(CGROUP))


def test_a_supervisor_alone_in_a_delegated_cgroup_gets_cgroup2(delegate):
    d, home = delegate(f"deleg-test-{os.getpid()}")
    got = _probe(d, home)
    assert got["enforced"] == {"memory": "cgroup2", "pids": "cgroup2", "cpu": "cgroup2"}, got
    assert got["oom"][:2] == [137, True] and "survived" not in got["oom"][2], got
    assert got["cgroup"] == f"0::{_rel(d)}/{delegation.SUPERVISOR_LEAF}", got
    assert {"memory", "pids", "cpu"} <= set(got["subtree_control"]), got
    assert len(got["engine_dirs"]) == 1, got  # the engine's cgroups, beside the leaf
    assert got["left"] == [delegation.SUPERVISOR_LEAF], got  # removed at stop()


def test_doctor_in_a_delegated_cgroup_reports_cgroup2(delegate):
    d, home = delegate(f"deleg-test-{os.getpid()}")
    proc = _in(d, home, sys.executable, "-m", "isol8", "doctor")
    out, err = proc.communicate(timeout=300 * SLOW)
    assert proc.returncode == 0, out + err
    assert "memory by cgroup2" in out, out


def test_a_cgroup_shared_with_another_process_is_left_alone(delegate):
    """Not alone: moving only ourselves would leave the other process where the controllers
    cannot be enabled, and moving it is not ours to do. Nothing moves; the watchdog holds."""
    d, home = delegate(f"deleg-test-{os.getpid()}")
    other = _in(d, home, "sleep", "600")
    try:
        deadline = time.monotonic() + 30 * SLOW
        while not (d / "cgroup.procs").read_text().split():  # it has moved in
            assert time.monotonic() < deadline and other.poll() is None, other.communicate()
            time.sleep(0.01)
        got = _probe(d, home)
    finally:
        other.kill()
        other.wait()
    assert got["enforced"]["memory"] == "watchdog", got
    assert got["cgroup"] == f"0::{_rel(d)}", got
    assert got["subtree_control"] == [], got
    assert got["oom"][:2] == [137, True], got  # the watchdog's kill


@pytest.mark.parametrize("mark", ["none", "user.delegate", "named"])
def test_a_systemd_unit_needs_systemds_mark_or_to_be_named(delegate, mark):
    """Under a systemd user manager every cgroup is the user's, delegated or not: in a
    directory named like a unit, only systemd's user.delegate xattr (Delegate=yes) or naming
    it as ISOL8_CGROUP_PARENT makes it isol8's to divide."""
    unit, home = delegate(f"run-isol8-test-{os.getpid()}.scope")
    env = {}
    if mark == "user.delegate":
        try:
            os.setxattr(unit, "user.delegate", b"1")
        except OSError as exc:
            pytest.skip(f"this kernel keeps no user xattrs on cgroupfs (5.7+): {exc}")
    if mark == "named":
        env["ISOL8_CGROUP_PARENT"] = str(unit)
    got = _probe(unit, home, env=env)
    claimed = mark != "none"
    assert (got["enforced"]["memory"] == "cgroup2") == claimed, got
    assert got["cgroup"].endswith(delegation.SUPERVISOR_LEAF) == claimed, got
