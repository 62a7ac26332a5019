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

from .protocol import (BindDev, BindHost, BindRO, Devpts, Dir, File, MountOp, Proc,
                       ReadOnlySelf, Symlink, Tmpfs)
from .runtimes import SANDBOX_HOME

if TYPE_CHECKING:
    from .policy import Mount

# Top-level usrmerge links (or, on a non-merged host, directories) runtimes load from.
_TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Host /etc entries runtimes read: the loader cache, TLS roots, alternatives links, zone.
_HOST_ETC = ("ld.so.cache", "ssl/certs", "ssl/openssl.cnf", "ca-certificates.conf",
             "alternatives", "localtime")
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# Kernel knobs that stay visible but read-only (bubblewrap covers the same set).
_PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus")
SHM_SIZE = 64 << 20
# The writable tmpfs mounts: memory too, so the watchdog counts them.
WRITABLE_TMPFS = (SANDBOX_HOME, "/tmp", "/dev/shm")

PASSWD = (b"root:x:0:0:root:/root:/usr/sbin/nologin\n"
          b"sandbox:x:1000:1000:sandbox:/sandbox:/bin/bash\n"
          b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
GROUP = b"root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n"
HOSTS = b"127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"
NSSWITCH = b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
HOSTNAME = "sandbox"


@dataclass(frozen=True, slots=True)
class TmpfsSizes:
    sandbox: int
    tmp: int


def inode_cap(size: int) -> int:
    """One inode per 4 KiB of space (at least 1024): an inode flood hits ENOSPC too."""
    return max(1024, size // 4096)


def host_plan(sizes: TmpfsSizes, *, host_network: bool,
              mounts: Iterable[Mount] = ()) -> tuple[MountOp, ...]:
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

    ops += [Dir("/etc"), File("/etc/passwd", PASSWD), File("/etc/group", GROUP),
            File("/etc/hostname", HOSTNAME.encode() + b"\n"), File("/etc/nsswitch.conf", NSSWITCH)]
    for name in _HOST_ETC:
        path = "/etc/" + name
        if os.path.islink(path) and name == "localtime":
            ops.append(Symlink(os.readlink(path), path))
        elif os.path.exists(path):
            ops.append(BindRO(path, path))
    if host_network:
        # Sharing the host's network means sharing its resolver and names.
        ops += [_copy_or_empty("/etc/resolv.conf"), _copy_or_empty("/etc/hosts")]
    else:
        ops += [File("/etc/hosts", HOSTS), File("/etc/resolv.conf", b"")]

    ops += [
        Tmpfs(SANDBOX_HOME, sizes.sandbox, inode_cap(sizes.sandbox), mode=0o755),
        Tmpfs("/tmp", sizes.tmp, inode_cap(sizes.tmp), mode=0o1777, noexec=True),
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


def _copy_or_empty(path: str) -> File:
    try:
        with open(path, "rb") as fh:
            return File(path, fh.read(65536))
    except OSError:
        return File(path, b"")


def binary_exists(path: str) -> bool:
    """Whether the host root filesystem offers an executable at this sandbox path."""
    return os.access(path, os.X_OK) and os.path.isfile(path)
