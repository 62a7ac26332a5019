"""Is this process in a chroot? Then no sandbox can start, whatever the sysctls say.

The kernel refuses a chrooted process a new user namespace: create_user_ns()
(kernel/user_namespace.c) returns EPERM when current_chrooted() holds, since Linux 3.9, as
the namespace's owner could otherwise leave the chroot. current_chrooted() (fs/namespace.c)
compares the process's root with its mount namespace's root, after any mounts stacked on
it: a root that is anything else (a plain directory, or the root of another mount) is a
chroot. Entering a root with pivot_root, or moving it over ``/`` with ``mount --move``
before the chroot (both in a private mount namespace), makes it the namespace's root.

Two views of that from user space, both without side effects:

- /proc/self/mountinfo gives mount points relative to the process's root and leaves out
  the mounts it cannot reach. The namespace's root, or the topmost mount stacked on it, is
  always the one at ``/``; no mount at ``/`` means the root is a directory inside a mount.
- /proc/1/root is init's root. When init shares our mount namespace and its root is not
  ours, we are chrooted. Reading it needs ptrace access to init (root, usually).

A chroot onto the root of another mount, in a mount namespace init does not share, shows
in neither: then the answer is None, unknown.
"""

from __future__ import annotations

import os


def chrooted(mountinfo: str, same_mount_ns_as_init: bool | None,
             same_root_as_init: bool | None) -> bool | None:
    """True or False when the facts decide it, None when they cannot."""
    points = [line.split()[4] for line in mountinfo.splitlines() if len(line.split()) > 4]
    if points and "/" not in points:
        return True
    if same_mount_ns_as_init and same_root_as_init is not None:
        return not same_root_as_init
    return None


def _same(a: str, b: str, probe) -> bool | None:
    try:
        return probe(a) == probe(b)
    except OSError:  # EACCES: no ptrace access to init; ENOENT: no /proc
        return None


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def this_process() -> bool | None:
    """``chrooted()`` on this process's own facts."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            mountinfo = fh.read()
    except OSError:
        mountinfo = ""
    return chrooted(mountinfo, _same("/proc/1/ns/mnt", "/proc/self/ns/mnt", os.readlink),
                    _same("/proc/1/root/", "/", _identity))
