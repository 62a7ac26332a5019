"""``isol8 cleanup``: what a supervisor that died without stopping its engines left behind.

A supervisor killed by SIGKILL, the OOM killer or a crash cannot run its teardown. Its
sandboxes usually die with it (the helper ends its sandbox when the supervisor's socket hangs
up, and the sandbox's init has PR_SET_PDEATHSIG toward the helper), but these stay:

- the engines' cgroup directories, ``isol8-<boot id>-<pid>-<start time>-<n>`` with an
  ``sb-<n>`` leaf per sandbox, on every hierarchy (isol8.cgroups), with whatever processes a
  helper that could not act on the hang-up (stopped, frozen) left in them;
- uid lease files under LEASE_DIR (root only, isol8.identity): a dead holder's flock is
  gone, so its file is free, but processes still running as that uid are the dead
  sandbox's (only a lease holder runs a sandbox as a leased uid).

A thing is stale only when its owner is provably gone, and a live supervisor's are never
touched: a cgroup when its name's boot id is not this boot's, or its pid is gone or runs a
process with another start time (isol8.cgroups.owner_alive, which the engines' own reclaim
uses) and no process of a nested pid namespace (a container's supervisor names its pid
there) has that pid and start time either; a uid's processes and lease only while cleanup holds that uid's lease lock itself, so
no supervisor can lease it meanwhile. A process is killed through a pidfd taken before its
membership (cgroup, or real uid) is checked again, so a pid reused meanwhile is not hit.

The image store (isol8.images.store) is swept too: staging directories of builds and
imports that are no longer running (their name's lock is free), removals whose process is
gone, and content no image name uses (a rebuilt image's old content that an engine was still
running on) once no engine holds it. ``--images`` also removes every image of the store,
except content a running engine holds, which is kept and said so.

isol8 makes no other temporary directory on the host: a sandbox's root is a tmpfs in its own
mount namespace, gone with it. ``workspace_dir``'s ``.isol8-workspace-*`` siblings, left by a
supervisor killed mid-copy, record no owner and live wherever the caller's workspace is, so
they are not looked for.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import cgroups, identity
from .images.store import ImageStore

_ENGINE_DIR = re.compile(r"isol8-[0-9a-f]{8}-[0-9]+-[0-9]+-[0-9]+")
_GONE_WAIT = 2.0  # seconds for killed processes to leave their cgroup


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing looked at: ``action`` is removed, would remove, kept or failed."""

    kind: str  # cgroup, process, lease
    what: str
    action: str
    why: str

    def line(self) -> str:
        return f"{self.action} {self.kind} {self.what}: {self.why}"


def cleanup(dry_run: bool = False, images: bool = False) -> list[Finding]:
    """Find (and unless ``dry_run``, remove) what dead supervisors left; every finding.
    ``images``: every image of the store too."""
    found: list[Finding] = []
    seen: set[int] = set()  # a sandbox's processes are in its leaf on every hierarchy
    directories = engine_dirs()
    # After the listing: an owner alive when its directory was listed is in it.
    elsewhere = _namespaced_pids()
    for directory in directories:
        found += _cgroup(directory, dry_run, seen, elsewhere)
    if identity.maps_foreign_ids():
        for uid in _leased_uids():
            found += _lease(uid, dry_run, seen)
    return found + _images(ImageStore(), dry_run, images)


# -- the image store ---------------------------------------------------------------------------

def _images(store: ImageStore, dry_run: bool, remove_all: bool) -> list[Finding]:
    found = []
    if remove_all:
        for image in store.list():
            if dry_run:
                found.append(Finding("image", image.name, "would remove", "--images"))
                continue
            with store.lock(image.name):
                store.remove(image.name)
            found.append(Finding("image", image.name, "removed", "--images"))
    found += [Finding("image store", path, action, why)
              for path, action, why in store.sweep(dry_run=dry_run)]
    return found


# -- cgroups -------------------------------------------------------------------------------------

def engine_dirs() -> list[str]:
    """Every engine directory on every mounted hierarchy, live or not (none is entered);
    rootless, only the user's own (made in a cgroup delegated to them)."""
    found = []
    euid = os.geteuid()
    for mount in _cgroup_mounts():
        for top, dirs, _ in os.walk(mount):
            engines = [d for d in dirs if _ENGINE_DIR.fullmatch(d)]
            paths = [os.path.join(top, d) for d in engines]
            found += [p for p in paths if euid == 0 or _owner(p) == euid]
            dirs[:] = [d for d in dirs if d not in engines]
    return sorted(found)


def _owner(path: str) -> int | None:
    try:
        return os.stat(path).st_uid
    except OSError:
        return None


def _cgroup_mounts() -> list[str]:
    mounts = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            before, _, after = line.partition(" - ")
            fields, tail = before.split(), after.split()
            if len(fields) >= 5 and tail and tail[0] in ("cgroup", "cgroup2"):
                mounts.append(fields[4])
    return sorted(set(mounts))


def stale_reason(name: str, elsewhere: set[tuple[int, str]]) -> str | None:
    """Why the engine directory ``name`` is a dead owner's, or None if its owner may live.
    ``elsewhere``: (pid, start time) of every process in every pid namespace we see (a
    supervisor in a container names its pid there; start times count from boot in all)."""
    if cgroups.owner_alive(name):
        return None
    boot, pid, start, _ = name[len("isol8-"):].split("-")
    if boot == cgroups.boot_id() and (int(pid), start) in elsewhere:
        return None
    if boot != cgroups.boot_id():
        return f"made in another boot ({boot})"
    now = cgroups.start_time(int(pid))
    if now == "gone":
        return f"its owner, pid {pid}, is gone"
    return f"pid {pid} now runs another process (started at {now}, not {start})"


def _cgroup(directory: str, dry_run: bool, seen: set[int],
            elsewhere: set[tuple[int, str]]) -> list[Finding]:
    name = os.path.basename(directory)
    why = stale_reason(name, elsewhere)
    if why is None:
        owner = name.split("-")[2]
        return [Finding("cgroup", directory, "kept", f"owner alive (pid {owner})")]
    found = []
    leaves = _tree(directory)
    for leaf in leaves:
        found += _empty(leaf, dry_run, seen)
    if dry_run:
        return [*found, Finding("cgroup", directory, "would remove", why)]
    for leaf in leaves:  # bottom-up: rmdir refuses a cgroup with children
        error = _rmdir(leaf)
        if error:
            return [*found, Finding("cgroup", directory, "failed", f"{why}; {leaf}: {error}")]
    return [*found, Finding("cgroup", directory, "removed", why)]


def _empty(leaf: str, dry_run: bool, seen: set[int]) -> list[Finding]:
    """Kill the leaf's processes: cgroup.kill (v2, 5.14+) takes forks in flight too; without
    it (v1) each is killed by pid, in rounds until no new one appears."""
    found: list[Finding] = []
    has_kill = os.path.exists(os.path.join(leaf, "cgroup.kill"))

    def member(pid: int) -> bool:
        return pid in _procs(leaf)

    for _ in range(1 if dry_run or has_kill else 10):
        new = sorted(set(_procs(leaf)) - seen)
        if not new:
            break
        seen.update(new)
        found += [_process(pid, f"in {leaf}", member, dry_run, kill=not has_kill)
                  for pid in new]
    if not dry_run and has_kill:
        _try_write(os.path.join(leaf, "cgroup.kill"), "1")
    return found


def _tree(directory: str) -> list[str]:
    """The directory and every cgroup below it, children before parents."""
    return [top for top, _, _ in os.walk(directory, topdown=False)]


def _procs(leaf: str) -> list[int]:
    try:
        with open(os.path.join(leaf, "cgroup.procs")) as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _rmdir(path: str) -> str:
    """"" once removed, else why not. A killed process leaves its cgroup only once it has
    exited (rmdir answers EBUSY until then)."""
    deadline = time.monotonic() + _GONE_WAIT
    while True:
        try:
            os.rmdir(path)
            return ""
        except FileNotFoundError:
            return ""
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return exc.strerror or str(exc)
            time.sleep(0.01)


def _try_write(path: str, text: str) -> None:
    try:
        with open(path, "w") as fh:
            fh.write(text)
    except OSError:
        pass  # _rmdir then reports the cgroup as busy


# -- uid leases (root) -----------------------------------------------------------------------------

def _leased_uids() -> list[int]:
    """Uids with a lease file. Processes of the range's uids without one are not looked
    for: another lease directory (a container's own /run) may be theirs."""
    try:
        return sorted(int(n) for n in os.listdir(identity.LEASE_DIR) if n.isdigit())
    except OSError:
        return []


def _lease(uid: int, dry_run: bool, seen: set[int]) -> list[Finding]:
    """The uid's processes and lease file, while we hold its lock (a shared test lock for a
    dry run): no supervisor can lease the uid meanwhile."""
    path = f"{identity.LEASE_DIR}/{uid}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []  # released meanwhile
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if dry_run else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                return []  # released and unlinked meanwhile: a new file is someone else's
        except BlockingIOError:
            return [Finding("lease", path, "kept", "owner alive (its lock is held)")]
        except FileNotFoundError:
            return []
        why = "its holder is gone (the lock is free)"
        found = [_process(pid, f"as leased uid {uid}", lambda p: _real_uid(p) == uid, dry_run,
                          kill=True)
                 for pid, real in _processes() if real == uid and pid not in seen]
        if dry_run:
            return [*found, Finding("lease", path, "would remove", why)]
        _wait_gone(lambda: any(real == uid for _, real in _processes()))
        # Unlinked while the lock is held: identity.acquire checks the inode after locking,
        # so a supervisor that opened the old file retries.
        try:
            os.unlink(path)
        except OSError as exc:
            return [*found, Finding("lease", path, "failed", f"{why}; {exc.strerror}")]
        return [*found, Finding("lease", path, "removed", why)]
    finally:
        os.close(fd)


# -- processes -------------------------------------------------------------------------------------

def _processes() -> Iterator[tuple[int, int]]:
    """(pid, real uid) of every process."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            uid = _real_uid(int(name))
            if uid is not None:
                yield int(name), uid


def _namespaced_pids() -> set[tuple[int, str]]:
    """(pid, start time) of every process, for each pid it has in a nested pid namespace
    (NSpid in status)."""
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        start = cgroups.start_time(int(name))
        try:
            with open(f"/proc/{name}/status") as fh:
                nspids = next((line.split()[2:] for line in fh if line.startswith("NSpid:")),
                              [])
        except OSError:
            continue
        found |= {(int(pid), start) for pid in nspids}
    return found


def _real_uid(pid: int) -> int | None:
    """From status, not the owner of /proc/<pid>, which is root for a non-dumpable process
    (proc(5)), as a sandbox's init is."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _process(pid: int, where: str, still_stale: Callable[[int], bool], dry_run: bool,
             kill: bool) -> Finding:
    """One process of a dead owner's; killed (SIGKILL through a pidfd) if ``kill``, else
    listed only, for a cgroup.kill that follows."""
    what = f"{pid} ({_cmdline(pid)})"
    why = f"{where}, whose owner is gone"
    if dry_run:
        return Finding("process", what, "would remove", why)
    if not kill:
        return Finding("process", what, "removed", why + "; cgroup.kill")
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return Finding("process", what, "removed", why + "; it had exited")
    try:
        if not still_stale(pid):  # the pidfd pins the process: this checks the one we kill
            return Finding("process", what, "removed", why + "; it had exited")
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError as exc:
        return Finding("process", what, "failed", f"{why}; kill: {exc.strerror}")
    finally:
        os.close(fd)
    return Finding("process", what, "removed", why + "; SIGKILL")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip() or "?"
    except OSError:
        return "?"


def _wait_gone(present: Callable[[], bool]) -> None:
    deadline = time.monotonic() + _GONE_WAIT
    while present() and time.monotonic() < deadline:
        time.sleep(0.01)


# -- the command -----------------------------------------------------------------------------------

def main(dry_run: bool = False, images: bool = False) -> int:
    """Print every finding and a summary line; 1 if something stale could not be removed."""
    found = cleanup(dry_run, images)
    for finding in found:
        print(finding.line())
    count = {action: sum(f.action == action for f in found)
             for action in ("removed", "would remove", "kept", "failed")}
    done = "would remove" if dry_run else "removed"
    print(f"isol8 cleanup: {done} {count[done]}, kept {count['kept']} (owner alive or in use), "
          f"failed {count['failed']}")
    return 1 if count["failed"] else 0
