"""Root filesystems, as mount plans for the helper.

``host`` (the default, zero setup): the host's ``/usr`` with the usrmerge links, read-only,
and a synthesized ``/etc`` holding only what runtimes need. Nothing else of the host is
visible: no ``/home``, ``/root``, ``/run`` or ``/var`` (host unix sockets under ``/run``
would bypass any network namespace), and no ``/sys``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..etc import etc_plan
from ..protocol import (BindDev, BindHost, BindRO, Devpts, Dir, MountOp, Proc, ReadOnlySelf,
                       Symlink, Tmpfs)
from ..runtimes import SANDBOX_HOME

if TYPE_CHECKING:
    from ..policy import Mount

# Top-level usrmerge links (or, on a non-merged host, directories) runtimes load from.
_TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# Kernel knobs that stay visible but read-only (bubblewrap covers the same set).
_PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus")
SHM_SIZE = 64 << 20
# The writable tmpfs mounts: memory too, so the watchdog counts them.
WRITABLE_TMPFS = (SANDBOX_HOME, "/tmp", "/dev/shm")



@dataclass(frozen=True, slots=True)
class TmpfsSizes:
    sandbox: int
    tmp: int


def inode_cap(size: int) -> int:
    """One inode per 4 KiB of space (at least 1024): an inode flood hits ENOSPC too."""
    return max(1024, size // 4096)


def host_plan(sizes: TmpfsSizes, *, host_network: bool, tmp_exec: bool = False,
              mounts: Iterable[Mount] = (), resolv_conf: bytes = b"") -> tuple[MountOp, ...]:
    """The mount plan of the ``host`` root filesystem, in the order the helper runs it.

    ``mounts`` (the engine option, validated by isol8.policy) come last: their mount points
    under /sandbox are created in its tmpfs, mounted by then; those under /mnt in the new
    root's own tmpfs, which turns read-only with it (only the mounts themselves can be
    writable)."""
    ops: list[MountOp] = [BindRO("/usr", "/usr")]
    for name in _TOP_LEVEL:
        path = "/" + name
        if os.path.islink(path):
            ops.append(Symlink(os.readlink(path), path))
        elif os.path.isdir(path):
            ops.append(BindRO(path, path))

    ops += etc_plan(host_network=host_network, resolv_conf=resolv_conf)

    ops += [
        Tmpfs(SANDBOX_HOME, sizes.sandbox, inode_cap(sizes.sandbox), mode=0o755),
        Tmpfs("/tmp", sizes.tmp, inode_cap(sizes.tmp), mode=0o1777, noexec=not tmp_exec),
        Proc("/proc"),
    ]
    ops += [ReadOnlySelf(f"/proc/{name}") for name in _PROC_READ_ONLY
            if os.path.exists(f"/proc/{name}")]
    # /dev lives on the new root's own tmpfs, which turns read-only once setup is done;
    # the device binds, devpts and shm are separate mounts that stay usable.
    ops.append(Dir("/dev"))
    ops += [BindDev(f"/dev/{name}", f"/dev/{name}") for name in _DEVICES
            if os.path.exists(f"/dev/{name}")]
    ops += [
        Devpts("/dev/pts"),
        Symlink("pts/ptmx", "/dev/ptmx"),
        Tmpfs("/dev/shm", SHM_SIZE, inode_cap(SHM_SIZE), mode=0o1777, noexec=True),
        Symlink("/proc/self/fd", "/dev/fd"),
        Symlink("/proc/self/fd/0", "/dev/stdin"),
        Symlink("/proc/self/fd/1", "/dev/stdout"),
        Symlink("/proc/self/fd/2", "/dev/stderr"),
    ]
    mounts = tuple(mounts)
    if any(m.target.startswith("/mnt/") for m in mounts):
        ops.append(Dir("/mnt"))
    ops += [BindHost(m.source, m.target, m.readonly) for m in mounts]
    return tuple(ops)


def binary_exists(path: str) -> bool:
    """Whether the host root filesystem offers an executable at this sandbox path."""
    return os.access(path, os.X_OK) and os.path.isfile(path)
