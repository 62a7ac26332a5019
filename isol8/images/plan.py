"""Root filesystems, as mount plans for the helper.

``host`` (the default, zero setup): the host's ``/usr`` with the usrmerge links, read-only,
and a synthesized ``/etc`` holding only what runtimes need. Nothing else of the host is
visible: no ``/home``, ``/root``, ``/run`` or ``/var`` (host unix sockets under ``/run``
would bypass any network namespace), and no ``/sys``.

An image (isol8.images.root) gives the same shape from its own tree: its ``/usr``, its
usrmerge links and ``/opt``, read-only, and ``/etc`` synthesized the same way with the
image's tables (its loader cache, CA roots, alternatives). Everything else is identical, so
a run on an image is confined exactly as one on the host's root.
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
from .root import plain

if TYPE_CHECKING:
    from ..policy import Mount

# Top-level usrmerge links (or, on a non-merged host, directories) runtimes load from.
_TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# An image's own software may also live here (the host's /opt is not the sandboxes' business).
_IMAGE_TOP_LEVEL = ("opt",)
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
              mounts: Iterable[Mount] = (), resolv_conf: bytes = b"",
              root: str = "/") -> tuple[MountOp, ...]:
    """The mount plan of a root filesystem (``/``: the host's), in the order the helper
    runs it.

    ``mounts`` (the engine option, validated by isol8.policy) come last: their mount points
    under /sandbox are created in its tmpfs, mounted by then; those under /mnt in the new
    root's own tmpfs, which turns read-only with it (only the mounts themselves can be
    writable)."""
    ops = _system_plan(root)
    ops += etc_plan(host_network=host_network, resolv_conf=resolv_conf,
                    tables=os.path.join(root, "etc"), confined=root != "/")

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


def _system_plan(root: str) -> list[MountOp]:
    """``/usr`` and the top-level links or directories beside it, from ``root``. In an image
    a symlink is recreated (it resolves inside the sandbox) and only a plain directory is
    bound (isol8.images.root.plain), so no host path outside the image is ever mounted."""
    ops: list[MountOp] = []
    names = ("usr", *_TOP_LEVEL) + (_IMAGE_TOP_LEVEL if root != "/" else ())
    for name in names:
        path, target = os.path.join(root, name), "/" + name
        if os.path.islink(path):
            ops.append(Symlink(os.readlink(path), target))
        elif os.path.isdir(path) and (root == "/" or plain(root, name)):
            ops.append(BindRO(path, target))
    return ops
