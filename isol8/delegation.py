"""The delegated cgroup v2 subtree the supervisor runs in, claimed for the engines' cgroups.

A delegated subtree is a cgroup whose directory and delegatable files
(/sys/kernel/cgroup/delegate: cgroup.procs, cgroup.subtree_control, ...) belong to an
unprivileged user, who may then create children and move its own processes among them:
``systemd-run --user --scope -p Delegate=yes -- <command>`` runs the command alone in one.
cgroup v2's no-internal-process rule keeps a cgroup that holds processes from enabling
controllers for its children (cgroup.subtree_control answers EBUSY; only the root is
exempt), and the supervisor is such a process. So when the supervisor runs alone in a
delegated cgroup that offers the memory controller, isol8 moves it into a leaf
(``isol8-supervisor``), enables the cgroup's controllers for its children, and makes the
engines' cgroups beside that leaf: memory then has a hard limit (cgroup2), not the watchdog.

Never as root (root has cgroups of its own), never a process but this one, and never a
cgroup shared with another process. In a systemd unit (a directory named ``*.scope`` or
``*.service``) our uid owning the directory does not mean Delegate=yes (a user manager
creates every cgroup of its subtree as the user): there systemd's own mark is required, the
``user.delegate`` (or ``trusted.delegate``) xattr it sets on delegated units' cgroups
(systemd 251+). Naming the cgroup as ``cgroup_parent`` (``ISOL8_CGROUP_PARENT``) claims it
regardless.
"""

from __future__ import annotations

import os
import threading

SUPERVISOR_LEAF = "isol8-supervisor"
CONTROLLERS = ("memory", "pids", "cpu")
_lock = threading.Lock()  # two engines starting at once move the process once


def engine_base(own: str, *, named: bool = False) -> str:
    """The directory this process's engines make their cgroups in, given its own cgroup
    ``own`` (named: the caller passed it as cgroup_parent). ``own`` itself unless it is a
    delegated cgroup this process has to itself (then the process moves into a leaf
    first), or that leaf (moved earlier: by another engine, or by an isol8 parent process
    this one was forked from), whose parent is the base."""
    with _lock:
        if os.path.basename(own.rstrip("/")) == SUPERVISOR_LEAF:
            return os.path.dirname(own.rstrip("/"))
        if delegated(own, named=named) and alone_in(own) and "memory" in _controllers(own):
            _move_into_leaf(own)
        return own


def delegated(path: str, *, named: bool = False) -> bool:
    """Ours to divide: owned by our (non-root) uid, its cgroup.procs and
    cgroup.subtree_control writable by us, and, in a systemd unit, marked delegated."""
    euid = os.geteuid()
    try:
        if euid == 0 or os.stat(path).st_uid != euid:
            return False
    except OSError:
        return False
    if not all(os.access(os.path.join(path, f), os.W_OK)
               for f in ("cgroup.procs", "cgroup.subtree_control")):
        return False
    unit = path.rstrip("/").endswith((".scope", ".service"))
    return named or not unit or _systemd_delegated(path)


def _systemd_delegated(path: str) -> bool:
    for name in ("user.delegate", "trusted.delegate"):
        try:
            if os.getxattr(path, name).strip() == b"1":
                return True
        except OSError:
            continue
    return False


def alone_in(path: str) -> bool:
    """This process is the only one in the cgroup (threads are listed in cgroup.threads)."""
    try:
        with open(os.path.join(path, "cgroup.procs")) as fh:
            return fh.read().split() == [str(os.getpid())]
    except OSError:
        return False


def _controllers(path: str) -> list[str]:
    try:
        with open(os.path.join(path, "cgroup.controllers")) as fh:
            return [c for c in fh.read().split() if c in CONTROLLERS]
    except OSError:
        return []


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _move_into_leaf(own: str) -> None:
    """Into own/isol8-supervisor, then own's controllers enabled for its children. If that
    fails (a process came in meanwhile), back where it was: nothing changed but an empty
    leaf, removed."""
    leaf = os.path.join(own, SUPERVISOR_LEAF)
    try:
        os.mkdir(leaf)
    except FileExistsError:
        pass
    except OSError:
        return
    pid = str(os.getpid())
    try:
        _write(os.path.join(leaf, "cgroup.procs"), pid)
    except OSError:
        _rmdir(leaf)
        return
    try:
        _write(os.path.join(own, "cgroup.subtree_control"),
               " ".join("+" + c for c in _controllers(own)))
    except OSError:
        try:
            _write(os.path.join(own, "cgroup.procs"), pid)
        except OSError:
            return
        _rmdir(leaf)


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass
