"""cgroup v2 and v1 drivers: the engine's own cgroups and one leaf per sandbox.

isol8 only ever creates, changes and removes cgroups it created itself, and never moves a
process other than the sandbox init it spawns, and the supervisor itself out of a delegated
cgroup it has to itself (isol8.delegation). Each engine owns one directory per
hierarchy, named after its owner (``isol8-<boot id>-<pid>-<start time>-<n>``), directly under
the base cgroup: the supervisor's own cgroup (the delegated one it left for a leaf), or
``cgroup_parent`` (``ISOL8_CGROUP_PARENT``) for a delegated subtree prepared the systemd way.
A sandbox gets a leaf ``sb-<n>`` in it.
A new engine removes the directories of engines that are dead (their pid is gone, or runs
something else, or the boot id differs) and never a live engine's, its own process's included.

v2 places the init with ``clone3(CLONE_INTO_CGROUP)`` (the helper gets the leaf as a
directory fd): it never runs outside its cgroup, and ``cgroup.kill`` ends everything at
teardown. v1 (the hybrid host's memory, pids and cpu) places it by writing its pid into each
leaf's ``cgroup.procs`` before it may run (fds the helper writes to): 13-20 ms per write on
this kernel, measured in the README.
"""

from __future__ import annotations

import errno
import itertools
import os
import time
from dataclasses import dataclass, field

from . import delegation

CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
_PREFIX = "isol8-"


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """Where a hierarchy is mounted and where our process sits in it."""

    mount: str
    path: str  # our cgroup, relative to the mount

    @property
    def own(self) -> str:
        return os.path.join(self.mount, self.path.lstrip("/"))


@dataclass(frozen=True, slots=True)
class Discovery:
    v2: Hierarchy | None
    v1: dict[str, Hierarchy]  # controller -> hierarchy (cpu and cpuacct share one)


def discover(mountinfo: str, self_cgroup: str) -> Discovery:
    """Pure: the hierarchies from /proc/self/mountinfo and /proc/self/cgroup."""
    v2_mount: str | None = None
    v1_mounts: dict[str, str] = {}
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] == "cgroup2" and v2_mount is None:
            v2_mount = fields[4]
        elif tail[0] == "cgroup":
            for option in tail[2].split(","):
                v1_mounts.setdefault(option, fields[4])
    v2, v1 = None, {}
    for line in self_cgroup.splitlines():
        hid, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        if hid == "0" and names == "" and v2_mount:
            v2 = Hierarchy(v2_mount, path)
        for name in names.split(","):
            if name in v1_mounts:
                v1[name] = Hierarchy(v1_mounts[name], path)
    return Discovery(v2, v1)


def discover_host() -> Discovery:
    with open("/proc/self/mountinfo") as fh, open("/proc/self/cgroup") as cg:
        return discover(fh.read(), cg.read())


_engine_seq = itertools.count(1)


def owner_name() -> str:
    """``isol8-<boot id>-<pid>-<start time>-<engine>``: enough to tell a live owner from a
    dead one, and two engines of one process apart."""
    pid = os.getpid()
    return f"{_PREFIX}{boot_id()}-{pid}-{start_time(pid)}-{next(_engine_seq)}"


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as fh:
        return fh.read().strip().replace("-", "")[:8]


def start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "gone"


def owner_alive(name: str) -> bool:
    parts = name[len(_PREFIX):].split("-")
    if len(parts) != 4 or not parts[1].isdigit():
        return True  # not ours to judge: leave it alone
    boot, pid, start, _ = parts
    return boot == boot_id() and start_time(int(pid)) == start


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def _keyed(text: str | None, key: str) -> int | None:
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def _remove_tree(path: str) -> None:
    """Kill and remove a cgroup directory we created, leaves first."""
    for root, dirs, _ in os.walk(path, topdown=False):
        for name in dirs:
            _remove_leaf(os.path.join(root, name))
    _remove_leaf(path)


def _remove_leaf(path: str) -> None:
    if os.path.exists(os.path.join(path, "cgroup.kill")):
        try:
            _write(os.path.join(path, "cgroup.kill"), "1")
        except OSError:
            pass
    for _ in range(100):  # dying tasks can keep a cgroup busy for a moment
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                return
            time.sleep(0.002)


def reclaim(base: str) -> None:
    """Remove dead engines' directories under base; a live engine's are never touched."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        if name.startswith(_PREFIX) and not owner_alive(name):
            _remove_tree(os.path.join(base, name))


@dataclass(slots=True)
class Usage:
    cpu_ns: int | None = None
    peak_bytes: int | None = None
    oom: bool = False
    oom_kills: int = 0  # the kernel's count for the leaf (a session's runs compare it)
    pids_max: int = 0  # forks refused at the leaf's pids.max (pids.events "max"), likewise


@dataclass(slots=True)
class SandboxCgroups:
    """One sandbox's leaves; the fds the helper needs, then the readings and teardown."""

    v2_leaf: str | None
    v1_leaves: dict[str, str]  # controller -> leaf
    kinds: bytes = b""
    fds: list[int] = field(default_factory=list)
    oom_eventfd: int = -1

    def close_fds(self) -> None:
        """After the helper has them: the placement fds are its business now."""
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()

    def usage(self) -> Usage:
        out = Usage()
        # CPU time: v2's cpu.stat exists in every v2 cgroup, controller or not; v1 needs
        # cpuacct, which some hosts mount apart from cpu.
        if self.v2_leaf:
            usec = _keyed(_read(os.path.join(self.v2_leaf, "cpu.stat")), "usage_usec")
            out.cpu_ns = usec * 1000 if usec is not None else None
        elif "cpu" in self.v1_leaves:
            raw = _read(os.path.join(self.v1_leaves["cpu"], "cpuacct.usage"))
            out.cpu_ns = int(raw) if raw and raw.strip().isdigit() else None
        if "memory" in self.v1_leaves:
            leaf = self.v1_leaves["memory"]
            raw = _read(os.path.join(leaf, "memory.max_usage_in_bytes"))
            out.peak_bytes = int(raw) if raw and raw.strip().isdigit() else None
            out.oom_kills = _keyed(_read(os.path.join(leaf, "memory.oom_control")),
                                   "oom_kill") or 0
            out.oom = out.oom_kills > 0
        elif self.v2_leaf and os.path.exists(os.path.join(self.v2_leaf, "memory.max")):
            raw = _read(os.path.join(self.v2_leaf, "memory.peak"))
            out.peak_bytes = int(raw) if raw and raw.strip().isdigit() else None
            out.oom_kills = _keyed(_read(os.path.join(self.v2_leaf, "memory.events")),
                                   "oom_kill") or 0
            out.oom = out.oom_kills > 0
        # pids.events "max": how often a fork or clone (a thread too) failed because the
        # leaf was at pids.max; v1's pids controller keeps the same file.
        pids_leaf = self.v1_leaves.get("pids") or self.v2_leaf
        if pids_leaf:
            out.pids_max = _keyed(_read(os.path.join(pids_leaf, "pids.events")), "max") or 0
        return out

    def destroy(self) -> None:
        self.close_fds()
        if self.oom_eventfd >= 0:
            os.close(self.oom_eventfd)
            self.oom_eventfd = -1
        for leaf in [self.v2_leaf, *self.v1_leaves.values()]:
            if leaf:
                _remove_leaf(leaf)


class EngineCgroups:
    """The engine's directories, and which controllers each hierarchy can limit."""

    def __init__(self, discovery: Discovery, cgroup_parent: str | None,
                 v1_controllers: tuple[str, ...] = CONTROLLERS) -> None:
        self.v2_dir: str | None = None
        self.v2_controllers: set[str] = set()
        self.v1_dirs: dict[str, str] = {}
        name = owner_name()
        v2_base = cgroup_parent
        if discovery.v2 and (cgroup_parent is None or _same_dir(cgroup_parent, discovery.v2.own)):
            v2_base = delegation.engine_base(discovery.v2.own, named=cgroup_parent is not None)
        if v2_base:
            self.v2_dir = _make_dir(v2_base, name)
        if self.v2_dir:
            offered = set((_read(os.path.join(self.v2_dir, "cgroup.controllers")) or "").split())
            wanted = [c for c in CONTROLLERS if c in offered]
            if wanted:
                try:
                    _write(os.path.join(self.v2_dir, "cgroup.subtree_control"),
                           " ".join("+" + c for c in wanted))
                    self.v2_controllers = set(wanted)
                except OSError:
                    pass
        for controller in v1_controllers:
            hierarchy = discovery.v1.get(controller)
            if controller in self.v2_controllers or hierarchy is None:
                continue
            existing = next((d for c, d in self.v1_dirs.items()
                             if discovery.v1.get(c) == hierarchy), None)
            made = existing or _make_dir(hierarchy.own, name)
            if made:
                self.v1_dirs[controller] = made
        # Dead engines may have used hierarchies this one does not (another pids choice, an
        # older isol8): look in all of them.
        bases = {v2_base} | {h.own for c, h in discovery.v1.items() if c in CONTROLLERS}
        for base in bases:
            if base is not None:
                reclaim(base)
        self._seq = itertools.count(1)

    def backend(self, controller: str) -> str | None:
        if controller in self.v2_controllers:
            return "cgroup2"
        return "cgroup1" if controller in self.v1_dirs else None

    def new_sandbox(self, memory: int, pids: int, cpu: float, *,
                    oom_group: bool = True) -> SandboxCgroups:
        """Leaves with the limits written; the caller owns (and must destroy) the result.

        ``oom_group``: an OOM kills the whole sandbox (v2 memory.oom.group; v1 through an
        OOM eventfd the supervisor acts on), what an ephemeral one wants. Without it the
        kernel kills one process, and a persistent session learns of it from the leaf's
        oom_kill counter (an eventfd would also fire for the many failed charges of a
        process already dying, into the next run)."""
        leaf_name = f"sb-{next(self._seq)}"
        sandbox = SandboxCgroups(None, {})
        try:
            if self.v2_dir:
                sandbox.v2_leaf = os.path.join(self.v2_dir, leaf_name)
                os.mkdir(sandbox.v2_leaf)
                _write_v2_limits(sandbox.v2_leaf, self.v2_controllers, memory, pids, cpu,
                                 oom_group)
                sandbox.fds.append(os.open(sandbox.v2_leaf,
                                           os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
                sandbox.kinds += b"D"
            for directory in dict.fromkeys(self.v1_dirs.values()):  # cpu,cpuacct: once
                leaf = os.path.join(directory, leaf_name)
                os.mkdir(leaf)
                for controller, owner in self.v1_dirs.items():
                    if owner == directory:
                        sandbox.v1_leaves[controller] = leaf
                        _write_v1_limit(leaf, controller, memory, pids, cpu)
                sandbox.fds.append(os.open(os.path.join(leaf, "cgroup.procs"),
                                           os.O_WRONLY | os.O_CLOEXEC))
                sandbox.kinds += b"P"
            if "memory" in sandbox.v1_leaves and oom_group:
                sandbox.oom_eventfd = _v1_oom_eventfd(sandbox.v1_leaves["memory"])
        except BaseException:
            sandbox.destroy()
            raise
        return sandbox

    def close(self) -> None:
        for directory in [self.v2_dir, *dict.fromkeys(self.v1_dirs.values())]:
            if directory:
                _remove_tree(directory)
        self.v2_dir, self.v1_dirs, self.v2_controllers = None, {}, set()


def _same_dir(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _make_dir(base: str, name: str) -> str | None:
    """Our engine directory under base; None if not ours to create (a read-only or foreign
    hierarchy: the controller then falls back)."""
    path = os.path.join(base, name)
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except OSError:
        return None
    return path


def _write_v2_limits(leaf: str, controllers: set[str], memory: int, pids: int,
                     cpu: float, oom_group: bool) -> None:
    if "memory" in controllers:
        _write(os.path.join(leaf, "memory.max"), str(memory))
        if os.path.exists(os.path.join(leaf, "memory.swap.max")):
            _write(os.path.join(leaf, "memory.swap.max"), "0")
        if oom_group:
            _write(os.path.join(leaf, "memory.oom.group"), "1")
    if "pids" in controllers:
        _write(os.path.join(leaf, "pids.max"), str(pids))
    if "cpu" in controllers:
        _write(os.path.join(leaf, "cpu.max"), f"{int(cpu * CPU_PERIOD_US)} {CPU_PERIOD_US}")


def _write_v1_limit(leaf: str, controller: str, memory: int, pids: int, cpu: float) -> None:
    if controller == "memory":
        _write(os.path.join(leaf, "memory.limit_in_bytes"), str(memory))
        swap = os.path.join(leaf, "memory.memsw.limit_in_bytes")
        if os.path.exists(swap):
            _write(swap, str(memory))  # memory+swap = memory: no swap
    elif controller == "pids":
        _write(os.path.join(leaf, "pids.max"), str(pids))
    elif controller == "cpu":
        _write(os.path.join(leaf, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
        _write(os.path.join(leaf, "cpu.cfs_quota_us"), str(int(cpu * CPU_PERIOD_US)))


def _v1_oom_eventfd(leaf: str) -> int:
    """An eventfd that becomes readable when the leaf hits OOM (v1 has no memory.oom.group:
    the supervisor then kills the whole sandbox itself, or a persistent one's run)."""
    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    control = os.open(os.path.join(leaf, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _write(os.path.join(leaf, "cgroup.event_control"), f"{efd} {control}")
    except BaseException:
        os.close(efd)
        raise
    finally:
        os.close(control)
    return efd
