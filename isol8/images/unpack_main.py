"""The importer's child: ``python -m isol8.images.unpack_main ARCHIVE_FD DEST_FD SPEC_JSON``.

It confines itself before reading a byte of the archive, then runs
isol8.images.extract.write_tree and prints one JSON answer on stdout ({"report": ...},
{"refused": message} or {"error": message}).

The confinement, and why each step:

1. ``unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWIPC)``, then ``setgroups`` deny and the
   maps "0 <our uid> 1" / "0 <our gid> 1" (setgroups must be denied before an unprivileged
   gid_map write, user_namespaces(7)). Rootless, the child has exactly the user's power over
   files; its new capabilities hold only over the user's own inodes. The IPC namespace is
   its own because SysV IPC permissions compare uids, not capabilities: a root importer
   could otherwise attach to every root-owned shared memory segment.
2. ``/`` made private recursively, so nothing the child mounts (it mounts nothing) or
   unmounts could propagate to the host.
3. ``chroot`` into the destination directory (through its fd). As root the map is "0 0 1",
   and capabilities in a user namespace still apply to inodes whose owner is mapped into it,
   i.e. every root-owned file: the chroot is what keeps such a child off the rest of the
   machine if openat2's resolution were ever wrong.
4. ``capset`` with all sets empty: without CAP_SYS_CHROOT the chroot cannot be escaped by a
   second chroot, without CAP_DAC_OVERRIDE/CAP_FOWNER only the owner's permission bits count
   (the importer's files are its own, and their directories always get u+rwx), and without
   CAP_MKNOD/CAP_CHOWN/CAP_SETUID nothing privileged can be created. The child never execs,
   so the bounding and ambient sets do not matter.
5. An address-space limit (``_MEMORY``): tarfile reads a GNU sparse map or a PAX header
   into memory, so a hostile archive's metadata must end in a MemoryError, not in the host's
   OOM killer.
6. A seccomp filter failing, with EPERM, what works by uid rather than by capability or by
   path (``_DENIED``): signals, ptrace, rlimits and scheduling of other processes, sockets,
   and new namespaces or mounts. A root importer's uid is the host's 0, and kill(2) or
   ptrace(2) between processes of one uid needs no capability, so without it a child
   subverted by a hostile archive (a decompressor bug) could still signal or trace every
   root process. The filter is compiled before the chroot (libseccomp lives outside it) and
   loaded last.

The archive fd is the only way back to anything outside, and it is read-only.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import sys

from .. import _native
from . import extract

_MEMORY = 4 << 30
_DENIED = (
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open",
    "pidfd_send_signal", "pidfd_getfd", "ptrace", "process_vm_readv", "process_vm_writev",
    "process_madvise", "kcmp", "prlimit64", "setpriority", "ioprio_set", "sched_setaffinity",
    "sched_setscheduler", "sched_setparam", "sched_setattr", "migrate_pages", "move_pages",
    "socket", "socketpair", "unshare", "setns", "mount", "umount2", "chroot", "pivot_root",
    "open_tree", "move_mount", "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup",
)


def _confine(dest_fd: int) -> int:
    uid, gid = os.getuid(), os.getgid()
    denials = _native.seccomp_deny(_DENIED, errno.EPERM)
    _native.unshare(_native.CLONE_NEWUSER | _native.CLONE_NEWNS | _native.CLONE_NEWIPC)
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"),
                       ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as fh:
            fh.write(text)
    userns = os.stat("/proc/self/ns/user").st_ino
    _native.mount(None, "/", None, _native.MS_REC | _native.MS_PRIVATE)
    os.fchdir(dest_fd)
    os.chroot(".")
    _native.drop_capabilities()
    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY, _MEMORY))  # before prlimit64 is denied
    _native.seccomp_load(denials)
    return userns


def main(argv: list[str]) -> int:
    archive_fd, dest_fd, spec = int(argv[1]), int(argv[2]), json.loads(argv[3])
    try:
        extract.preload()
        userns = _confine(dest_fd)
        report = extract.write_tree(archive_fd, dest_fd, extract.spec_caps(spec),
                                    bool(spec["layer"]), int(spec["offset"]),
                                    int(spec["length"]), str(spec["digest"]))
        report.userns = userns
        answer = extract.report_json(report)
    except extract.Refused as exc:
        answer = extract.answer_json("refused", f"{spec['label']}: {exc}")
    except Exception as exc:  # reported to the parent, which raises UnpackFailed with it
        answer = extract.answer_json("error", f"{spec['label']}: {type(exc).__name__}: {exc}")
    sys.stdout.write(answer)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
