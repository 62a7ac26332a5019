"""``isol8 cleanup`` after a supervisor killed without stopping its engine, beside a live one.

What a SIGKILLed supervisor leaves, measured on the hybrid host (root): its engine's cgroup
directories (the engine's and the sandbox's ``sb-1`` leaf, on cgroup2 and each v1
hierarchy) and, as root, its uid lease file, unlocked. Its sandbox's processes do not stay:
the helper ends the sandbox when the supervisor's socket hangs up. They stay when the
helper cannot act on that (stopped here with SIGSTOP, as a frozen cgroup would), which the
second test makes. Rootless without a delegated cgroup, isol8 makes no cgroups and leases
nothing: a dead supervisor leaves nothing to find, and the tests check that the live one is
untouched and the dead one's nothing is reported as nothing.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from isol8 import cgroups, cleanup, identity

# A supervisor: a persistent session that leaves a daemon (`sleep 600` with a unique marker
# as its argv[0]), then runs
# `echo again` in the session for each line read on stdin; EOF stops the engine.
_SUPERVISOR = """
import sys
from isol8 import Isol8
marker = sys.argv[1]
with Isol8(mode="persistent") as engine:
    engine.execute(f"(exec -a {marker} sleep 600) >/dev/null 2>&1 </dev/null &",
                   runtime="bash")
    print("ready", flush=True)
    for _ in sys.stdin:
        print(engine.execute("echo again", runtime="bash").stdout.strip(), flush=True)
"""


@dataclass
class Supervisor:
    proc: subprocess.Popen[str]
    marker: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def daemon(self, wait: float = 0.0) -> int | None:
        """The pid of the session's marked daemon, if alive (within ``wait`` s: the run that
        starts it may end before the fork has exec'd sleep)."""
        deadline = time.monotonic() + wait
        while True:
            for name in os.listdir("/proc"):
                try:
                    with open(f"/proc/{name}/cmdline", "rb") as fh:
                        argv = fh.read().split(b"\0")[:3]
                except OSError:
                    continue
                if argv[:2] == [self.marker.encode(), b"600"]:
                    return int(name)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def cgroups(self) -> list[str]:
        return [d for d in cleanup.engine_dirs() if f"-{self.pid}-" in os.path.basename(d)]

    def helpers(self) -> list[int]:
        """The helper and the sandbox's init it made (each ends the sandbox when the
        supervisor's socket hangs up)."""
        found = _children(self.pid)
        return found + [init for helper in found for init in _children(helper)]

    def run_again(self) -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()


def _children(pid: int) -> list[int]:
    """Of every thread: a child is listed under the thread that made it."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            found += [int(p) for p in fh.read().split()]
    return found


def _start(prefix: list[str] | None = None) -> Supervisor:
    marker = f"isol8-cleanup-{uuid.uuid4().hex}"
    proc = subprocess.Popen([*(prefix or []), sys.executable, "-c", _SUPERVISOR, marker],
                            text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    sup = Supervisor(proc, marker)
    assert proc.stdout and proc.stdout.readline().strip() == "ready"
    return sup


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    started: list[Supervisor] = []
    yield started
    for sup in started:
        if sup.proc.poll() is None:
            assert sup.proc.stdin
            sup.proc.stdin.close()  # a clean stop: the engine tears its sandbox down
            sup.proc.wait(10)
    if any(sup.proc.returncode == -signal.SIGKILL for sup in started):
        _cleanup()  # whatever a failed test left of the killed one


def _cleanup(*args: str, store: str = "/nonexistent/isol8-test-images") -> tuple[int, str]:
    """``isol8 cleanup`` on ``store`` (by default none: a test never sweeps the machine's
    real image store)."""
    done = subprocess.run([sys.executable, "-m", "isol8", "cleanup", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ISOL8_IMAGES": store})
    return done.returncode, done.stdout


def _lines(output: str, *names: str) -> list[str]:
    return [line for line in output.splitlines() if any(n in line for n in names)]


def _lease_of(pid: int) -> str | None:
    """The lease file of the uid a sandbox process runs as (root only)."""
    if not identity.maps_foreign_ids():
        return None
    with open(f"/proc/{pid}/status") as fh:
        uid = next(line.split()[1] for line in fh if line.startswith("Uid:"))
    return f"{identity.LEASE_DIR}/{uid}"


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.02)
    return not os.path.exists(f"/proc/{pid}")


def _assert_intact(live: Supervisor, cgroups: list[str], lease: str | None) -> None:
    assert live.daemon() is not None
    assert all(os.path.isdir(d) for d in cgroups)
    if lease:
        fd = os.open(lease, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with pytest.raises(BlockingIOError):  # still held by the live supervisor
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert live.run_again() == "again"


def test_dead_supervisor_leftovers_removed_live_one_untouched(
        supervisors: list[Supervisor]) -> None:
    dead, live = _start(), _start()
    supervisors += [dead, live]
    dead_daemon, live_daemon = dead.daemon(5), live.daemon(5)
    assert dead_daemon and live_daemon
    dead_lease, live_lease = _lease_of(dead_daemon), _lease_of(live_daemon)
    live_cgroups = live.cgroups()

    dead.proc.kill()
    dead.proc.wait(10)
    # The helper saw the hang-up: the dead supervisor's sandbox ends by itself.
    assert _gone(dead_daemon)
    leftovers = [*dead.cgroups(), *([dead_lease] if dead_lease else [])]
    if os.geteuid() == 0:  # positive control: root always has cgroups and leases here
        assert dead.cgroups() and dead_lease and os.path.exists(dead_lease)

    code, out = _cleanup("--dry-run")
    assert code == 0, out
    assert sorted(_lines(out, *leftovers)) == sorted(
        [f"would remove cgroup {d}: its owner, pid {dead.pid}, is gone"
         for d in dead.cgroups()]
        + ([f"would remove lease {dead_lease}: its holder is gone (the lock is free)"]
           if dead_lease else []))
    assert all(os.path.exists(p) for p in leftovers)  # a dry run removes nothing
    assert _lines(out, *live_cgroups) == [f"kept cgroup {d}: owner alive (pid {live.pid})"
                                          for d in live_cgroups]
    assert out.splitlines()[-1].startswith("isol8 cleanup: would remove ")

    code, out = _cleanup()
    assert code == 0, out
    assert len(_lines(out, *leftovers)) == len(leftovers)
    assert all(line.startswith("removed ") for line in _lines(out, *leftovers))
    assert not any(os.path.exists(p) for p in leftovers)
    assert out.splitlines()[-1].startswith("isol8 cleanup: removed ")

    code, out = _cleanup("--dry-run")
    assert code == 0 and not _lines(out, f"-{dead.pid}-", *leftovers), out
    assert not _lines(out, live.marker)
    _assert_intact(live, live_cgroups, live_lease)


def test_stuck_helper_sandbox_killed_live_one_untouched(
        supervisors: list[Supervisor]) -> None:
    """A helper and init that cannot act on the hang-up (stopped, as in a frozen cgroup)
    leave the sandbox running: killed if its cgroup or uid lease proves its owner dead;
    rootless without a cgroup of the user's, nothing does, and it is left alone."""
    dead, live = _start(), _start()
    supervisors += [dead, live]
    dead_daemon, live_daemon = dead.daemon(5), live.daemon(5)
    assert dead_daemon and live_daemon
    live_cgroups, live_lease = live.cgroups(), _lease_of(live_daemon)
    provable = bool(dead.cgroups()) or identity.maps_foreign_ids()
    helpers = dead.helpers()
    for pid in helpers:
        os.kill(pid, signal.SIGSTOP)
    try:
        dead.proc.kill()
        dead.proc.wait(10)
        assert not _gone(dead_daemon, 0.5)  # positive control: the sandbox outlives it

        code, out = _cleanup("--dry-run")
        assert code == 0, out
        assert [line.startswith(f"would remove process {dead_daemon} ({dead.marker} 600)")
                for line in _lines(out, dead.marker)] == ([True] if provable else [])
        assert dead.daemon() == dead_daemon

        code, out = _cleanup()
        assert code == 0, out
        if provable:
            assert _lines(out, dead.marker)[0].startswith(f"removed process {dead_daemon} ")
            assert _gone(dead_daemon)
            assert not dead.cgroups()
        else:
            assert not _lines(out, dead.marker) and dead.daemon() == dead_daemon
        _assert_intact(live, live_cgroups, live_lease)
    finally:
        for pid in helpers:  # reparented, stopped: nothing else would end them (the init's
            os.kill(pid, signal.SIGKILL)  # death ends the rest of its pid namespace)


def _engine_dirs_of(pid: int) -> list[str]:
    """The engine directories holding a sandbox process, from its own /proc/<pid>/cgroup."""
    with open(f"/proc/{pid}/cgroup") as fh:
        names = {m.group(0) for m in re.finditer(r"isol8-[0-9a-f]{8}-[0-9]+-[0-9]+-[0-9]+",
                                                 fh.read())}
    return [d for d in cleanup.engine_dirs() if os.path.basename(d) in names]


def test_live_supervisor_in_its_own_pid_namespace_kept(supervisors: list[Supervisor]) -> None:
    """A supervisor in a container names its cgroups after its pid there, which here is
    another process's or none: its pid namespace's pids and start times prove it alive."""
    unshare = ["unshare", "--pid", "--fork", "--mount-proc"]
    live = _start(unshare if os.geteuid() == 0 else [*unshare[:1], "--user", "--map-root-user",
                                                      *unshare[1:]])
    supervisors.append(live)
    daemon = live.daemon(5)
    assert daemon
    live_cgroups, lease = _engine_dirs_of(daemon), _lease_of(daemon)
    # Positive control: by its pid in our namespace alone, its owner would look dead.
    assert not any(cgroups.owner_alive(os.path.basename(d)) for d in live_cgroups)
    if os.geteuid() == 0:
        assert live_cgroups

    code, out = _cleanup()
    assert code == 0, out
    assert all(line.startswith("kept cgroup ") for line in _lines(out, *live_cgroups))
    assert len(_lines(out, *live_cgroups)) == len(live_cgroups)
    _assert_intact(live, live_cgroups, lease)


# -- the image store -------------------------------------------------------------------------

def _tiny_tar(path, marker: str):
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("etc/marker")
        info.size = len(marker)
        tar.addfile(info, io.BytesIO(marker.encode()))
    return str(path)


@pytest.fixture
def store():
    """Under /var/tmp: as root, an engine checks that every parent of its image is
    searchable by others (pytest's tmp dirs are 0700)."""
    import shutil
    import tempfile

    from isol8.images import ImageStore

    path = tempfile.mkdtemp(prefix="isol8-cleanup-images-", dir="/var/tmp")
    os.chmod(path, 0o755)
    yield ImageStore(path)
    shutil.rmtree(path, ignore_errors=True)


def test_image_store_leftovers_are_swept_and_live_ones_kept(store, tmp_path, monkeypatch):
    """A killed build's staging, a killed removal's directory and content no name uses are
    removed; a build that is running (its name locked) and content a running engine holds
    are kept, and that content goes once the engine stops."""
    from isol8 import Isol8
    from isol8.images.command import import_image

    monkeypatch.setenv("ISOL8_IMAGES", store.root)
    for parts in (("tmp", "dead.99999999.abcd", "image", "ro"),
                  ("tmp", "rm.99999999.beef", "x"), ("tmp", "busy.1.cafe")):
        os.makedirs(os.path.join(store.root, *parts))
    os.chmod(os.path.join(store.root, "tmp", "dead.99999999.abcd", "image", "ro"), 0o500)
    import_image(_tiny_tar(tmp_path / "a.tar", "one"), "img", store)
    old = store.get("img")
    engine = Isol8(rootfs="img")
    engine.start()  # holds the content it runs on
    try:
        import_image(_tiny_tar(tmp_path / "b.tar", "two"), "img", store)  # a rebuild
        assert store.get("img").digest != old.digest
        assert os.path.isdir(os.path.join(store.root, old.digest))  # in use: kept
        with store.lock("busy"):  # a build of "busy" in progress
            rc, out = _cleanup("--dry-run", store=store.root)
            assert rc == 0, out
            assert f"would remove image store {store.root}/tmp/dead.99999999.abcd" in out
            assert f"would remove image store {store.root}/tmp/rm.99999999.beef" in out
            assert "busy.1.cafe" not in out
            rc, out = _cleanup(store=store.root)
        assert rc == 0, out
        assert f"kept image store {store.root}/{old.digest}: no name uses it, but a running " \
               "engine does" in out
        assert sorted(os.listdir(os.path.join(store.root, "tmp"))) == ["busy.1.cafe"]
        assert os.path.isdir(os.path.join(store.root, old.digest))
    finally:
        engine.stop()
    rc, out = _cleanup(store=store.root)
    assert f"removed image store {store.root}/" in out and "no image name used it" in out, out
    assert not os.path.exists(os.path.join(store.root, old.digest))
    assert store.get("img").digest != old.digest  # the current image is untouched


def test_cleanup_images_removes_every_image_but_one_in_use(store, tmp_path, monkeypatch):
    from isol8 import Isol8
    from isol8.images.command import import_image

    monkeypatch.setenv("ISOL8_IMAGES", store.root)
    import_image(_tiny_tar(tmp_path / "a.tar", "a"), "a", store)
    import_image(_tiny_tar(tmp_path / "b.tar", "b"), "b", store)
    rc, out = _cleanup("--images", "--dry-run", store=store.root)
    assert _lines(out, "image a", "image b") == ["would remove image a: --images",
                                                  "would remove image b: --images"]
    assert len(store.list()) == 2
    in_use = store.get("b")
    with Isol8(rootfs="b"):
        rc, out = _cleanup("--images", store=store.root)
        assert rc == 0 and store.list() == [], out
        assert "kept image store" in out and in_use.digest in out, out
        assert os.path.isdir(in_use.root)  # the running engine's root is still there
    rc, out = _cleanup(store=store.root)
    assert not os.path.exists(in_use.root), out
