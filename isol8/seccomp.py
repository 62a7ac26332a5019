"""The seccomp policy, compiled to classic BPF through libseccomp once per process.

Model (systemd's and runc's): ENOSYS for every syscall the build's table does not know, so a
syscall newer than libseccomp fails the way glibc expects and falls back; an explicit ALLOW for
every known syscall except the denylist of ``shared/reference/sandbox-anchors.md`` section 5.

libseccomp cannot express "allow unless an argument matches" for one syscall (an unconditional
ALLOW swallows conditional rules on the same syscall, and one rule may compare an argument only
once). So the policy compiles to two stacked filters; the kernel runs both and keeps the most
restrictive verdict (ERRNO beats ALLOW; between two ERRNOs the later filter's errno wins):

* ``base``: default ERRNO(ENOSYS); ALLOW for known syscalls; unconditional denials.
* ``args``: default ALLOW; denials that look at arguments (clone namespace flags, socket
  families, TIOCSTI/TIOCLINUX on the low 32 bits of the ioctl number, personality flags,
  the setuid and setgid bits in a file mode, pid 1 as the target of a scheduling, priority
  or rlimit call, RLIMIT_CORE as the limit to set).

Both filters reject a foreign architecture (and the x32 ABI) with KILL_PROCESS, which also closes
the i386 ``int 0x80`` / ``socketcall`` bypass.

Never cached on disk (issue 9): a sandbox with a read-write mount of the caller's home replaced
``~/.cache/isol8/seccomp/<hash>.bpf`` with an allow-all program, and every later sandbox of that
user ran unfiltered. Verifying the file would need a key no sandbox can read, but a file no
read-write mount can reach needs no key either; and the compile is cheap. Measured on a 2-core
VM (median of 15 fresh processes): the first compiled_policy() of a process 6-7 ms (ctypes,
dlopen, libseccomp; later calls 2 us), loading the old cache file 0.05-0.2 ms, the same cold
compile through cffi 21-40 ms (its cdef imports pycparser: isol8._native is ctypes for that).
"""

from __future__ import annotations

import errno
import functools
import os
from dataclasses import dataclass

# libseccomp constants (seccomp.h); stable ABI values.
_ACT_ALLOW = 0x7FFF0000
_ACT_KILL_PROCESS = 0x80000000
_FLTATR_ACT_BADARCH = 2
_FLTATR_CTL_NNP = 3
_FLTATR_CTL_OPTIMIZE = 8
_CMP_NE = 1
_CMP_EQ = 4
_CMP_GT = 6
_CMP_MASKED_EQ = 7
_MAX_SYSCALL_NR = 1024


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


# Syscalls denied outright, by the errno the caller sees.
DENY: dict[int, tuple[str, ...]] = {
    errno.EPERM: (
        # Namespaces and mounts: userns is the gateway to nf_tables and other LPEs
        # (CVE-2022-0185, CVE-2023-32233, CVE-2024-1086).
        "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
        # Keyrings are not namespaced (isolate, Flatpak, Docker).
        "add_key", "keyctl", "request_key",
        # Tracing and cross-process memory.
        "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
        "process_madvise", "perf_event_open", "lookup_dcookie",
        # Kernel attack surface: secret memory is unreclaimable and unswappable,
        # fanotify watches whole file systems and mounts (unprivileged since 5.13).
        "bpf", "userfaultfd", "memfd_secret", "fanotify_init",
        # "Shocker": file handles bypass the mount tree.
        "open_by_handle_at", "name_to_handle_at",
        # Host administration and obsolete interfaces.
        "syslog", "acct", "quotactl", "quotactl_fd", "swapon", "swapoff", "reboot",
        "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
        "iopl", "ioperm", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
        "sethostname", "setdomainname", "vhangup", "uselib", "ustat", "sysfs", "_sysctl",
        "nfsservctl", "modify_ldt", "vm86", "vm86old",
        # NUMA and page migration ("scary VM ops", Flatpak).
        "mbind", "set_mempolicy", "get_mempolicy", "migrate_pages", "move_pages",
        "set_mempolicy_home_node",
    ),
    # ENOSYS where runtimes must fall back: clone3 -> clone (whose flags the args filter can
    # see; clone3 hides them behind a pointer), io_uring -> epoll. The new mount API was the
    # hole of Flatpak CVE-2021-41133.
    errno.ENOSYS: (
        "clone3", "io_uring_setup", "io_uring_enter", "io_uring_register",
        "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
        # openat2 hides its mode in a struct the filter cannot read (SETID_MODE_ARGS);
        # callers that use it (systemd, newer libcs) fall back to openat on ENOSYS.
        "openat2",
    ),
}

CLONE_NAMESPACE_FLAGS = (
    0x00000080,  # CLONE_NEWTIME
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
SOCKET_FAMILIES_ALLOWED = (1, 2, 10, 16)  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK
AF_NETLINK, NETLINK_ROUTE = 16, 0
TTY_IOCTLS_DENIED = (0x5412, 0x541C)  # TIOCSTI (CVE-2017-5226), TIOCLINUX (CVE-2023-28100)
# personality(): only the plain Linux personas and the query value; READ_IMPLIES_EXEC and
# ADDR_NO_RANDOMIZE would weaken the user process's own memory protections.
PERSONALITY_ALLOWED = (0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)  # PER_LINUX{,32}, UNAME26, query
# No file the sandbox creates or changes may carry S_ISUID or S_ISGID: through a read-write
# mount it lands on the host, owned by the caller (rootless) or, with an idmapped mount, by
# the source's owner, root included (a setuid-root file). EPERM, as the kernel answers an
# unprivileged `chmod u+s` on a file one does not own. One MASKED_EQ rule per bit (libseccomp
# compares an argument once per rule); mkdir ignores both bits, but is denied alike so that
# the rule reads "never in a mode argument".
SETID_BITS = (0o4000, 0o2000)
SETID_MODE_ARGS = (  # (syscall, index of its mode argument)
    ("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2), ("creat", 1),
    ("mkdir", 1), ("mkdirat", 2), ("mknod", 1), ("mknodat", 2),
)
# open and openat read their mode only when they create (the kernel's WILL_CREATE: O_CREAT or
# O_TMPFILE's __O_TMPFILE bit); otherwise the argument is ignored, may hold anything, and must
# not be refused. (syscall, index of flags, index of mode)
SETID_OPEN_ARGS = (("open", 1, 2), ("openat", 2, 3))
CREATE_FLAGS = (0o100, 0o20000000)  # O_CREAT, __O_TMPFILE
# Nothing may act on pid 1, the init. It runs as the sandbox's uid, and for these calls the
# kernel allows a same-uid target whatever its dumpable flag (prlimit's check_prlimit_permission,
# set_one_prio's and sched's check_same_owner, ioprio's uid test): an RLIMIT_NOFILE of 3, nice
# 19, SCHED_IDLE or a one-cpu mask would starve or kill it. EPERM, the kernel's answer for a
# process one may not touch. The pid is a pid_t, truncated to an int by the kernel, so it is
# compared on its low 32 bits (0x100000001 is pid 1). pid 0 (self) and the user's own
# processes stay allowed; prlimit64 is refused even when it only reads (new == NULL): one rule,
# and nothing needs the init's limits (/proc/1/limits shows them). (syscall, index of the pid)
PID1_TARGET_ARGS = (
    ("prlimit64", 0), ("sched_setaffinity", 0), ("sched_setscheduler", 0),
    ("sched_setparam", 0), ("sched_setattr", 0),
)
# setpriority(which, who) and ioprio_set(which, who): which is an int too. The process form is
# refused for pid 1 only; the group and user forms outright, since the init is in the user's
# uid (and a nested pid namespace would only move the target to its own pid 1).
PRIO_PROCESS, PRIO_GROUP_FORMS = 0, (1, 2)  # PRIO_PGRP, PRIO_USER
IOPRIO_WHO_PROCESS, IOPRIO_GROUP_FORMS = 1, (2, 3)  # IOPRIO_WHO_PGRP, IOPRIO_WHO_USER
# RLIMIT_CORE stays at 1 (isol8.limits): with a pipe core_pattern the kernel hands a crash to
# the host's helper, as root in the host's namespaces, whatever the limit, except when it is
# exactly 1 (fs/coredump.c, coredump_pipe: the value it gives its own helpers against recursive
# dumps). A hard limit of 1 still lets a process lower it to 0 (`ulimit -c 0`), so neither
# setrlimit nor prlimit64 may set it: both answer success without running (ERRNO 0). The usual
# caller lowers the limit to disable core dumps (ssh-agent, test harnesses, `ulimit -c 0` in a
# script, some of which stop on an error), and 1 already means none: a core file needs a page
# (binfmt min_coredump). A raise would fail anyway (hard limit 1, no CAP_SYS_RESOURCE), and
# getrlimit tells the truth. prlimit64 that also asks for the old value gets EPERM instead: a
# fake success would leave the caller's buffer unwritten. Reading (new == NULL) stays free.
RLIMIT_CORE = 4


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """The BPF programs (``struct sock_filter`` arrays) to install, in order."""

    filters: tuple[bytes, ...]


class SeccompError(RuntimeError):
    """The policy could not be compiled; the message names the libseccomp call."""


def compiled_policy(unconfined: bool = False) -> CompiledPolicy:
    """The default policy's BPF, compiled by libseccomp once per process (see the module
    docstring for why never from a file)."""
    if unconfined:
        return CompiledPolicy(filters=())
    return _compiled()


@functools.lru_cache(maxsize=1)
def _compiled() -> CompiledPolicy:
    return CompiledPolicy(filters=_compile())


def _compile() -> tuple[bytes, bytes]:
    from . import _native

    lib = _native.libseccomp()

    def new_ctx(default: int):
        ctx = lib.seccomp_init(default)
        if not ctx:
            raise SeccompError("seccomp_init failed")
        for attr, value in ((_FLTATR_ACT_BADARCH, _ACT_KILL_PROCESS), (_FLTATR_CTL_NNP, 0),
                            (_FLTATR_CTL_OPTIMIZE, 2)):
            _check(lib.seccomp_attr_set(ctx, attr, value), "seccomp_attr_set", str(attr))
        return ctx

    def add(ctx, action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            return  # not a syscall on this architecture (vm86 on x86_64, ...)
        # ctypes builds each ArgCmp from its tuple
        array = (_native.ArgCmp * len(cmps))(*cmps) if cmps else None  # type: ignore[misc]
        _check(lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array),
               "seccomp_rule_add", name)

    denied = {name for names in DENY.values() for name in names}
    base = new_ctx(_errno_action(errno.ENOSYS))
    args = new_ctx(_ACT_ALLOW)
    try:
        for nr in range(_MAX_SYSCALL_NR):
            name = _native.syscall_name(nr)
            if name is not None and name not in denied and name != "personality":
                add(base, _ACT_ALLOW, name)
        for code, names in DENY.items():
            if code == errno.ENOSYS:
                continue  # the default action already (libseccomp refuses a rule equal to it)
            for name in names:
                add(base, _errno_action(code), name)
        for value in PERSONALITY_ALLOWED:
            add(base, _ACT_ALLOW, "personality", (0, _CMP_EQ, value, 0))

        eperm, eafnosupport = _errno_action(errno.EPERM), _errno_action(errno.EAFNOSUPPORT)
        for flag in CLONE_NAMESPACE_FLAGS:
            add(args, eperm, "clone", (0, _CMP_MASKED_EQ, flag, flag))
        for cmps in socket_denials():  # socketpair reaches the same families' code
            add(args, eafnosupport, "socket", *cmps)
            add(args, eafnosupport, "socketpair", *cmps)
        for request in TTY_IOCTLS_DENIED:
            # MASKED_EQ on the low 32 bits: CVE-2019-10063 set the upper bits to slip past
            # a plain equality test while the kernel truncates the number to an int.
            add(args, eperm, "ioctl", (1, _CMP_MASKED_EQ, 0xFFFFFFFF, request))
        for rule in setid_denials():
            add(args, eperm, *rule)
        for rule in pid1_denials():
            add(args, eperm, *rule)
        for code, *limit in core_limit_rules():
            add(args, _errno_action(code), *limit)
        return _export(lib, base), _export(lib, args)
    finally:
        lib.seccomp_release(base)
        lib.seccomp_release(args)


def socket_denials() -> list[tuple[tuple[int, int, int, int], ...]]:
    """Rules matching every socket() the policy refuses, one comparison per argument each.

    Families: EQ for each gap below the largest allowed family, GT above it (the 64-bit
    comparison also catches a family hidden behind set upper bits, which the kernel would
    truncate to an int). Netlink: any protocol other than NETLINK_ROUTE (0).
    """
    top = max(SOCKET_FAMILIES_ALLOWED)
    rules: list[tuple[tuple[int, int, int, int], ...]] = [
        ((0, _CMP_EQ, family, 0),) for family in range(top)
        if family not in SOCKET_FAMILIES_ALLOWED]
    rules.append(((0, _CMP_GT, top, 0),))
    rules.append(((0, _CMP_EQ, AF_NETLINK, 0), (2, _CMP_GT, NETLINK_ROUTE, 0)))
    return rules


def setid_denials() -> list[tuple]:
    """(syscall, comparison...) rules matching every call that would set S_ISUID or S_ISGID.

    The mode arguments are umode_t: the kernel keeps their low 16 bits, where both bits lie,
    so a 64-bit masked compare sees exactly what the kernel will use."""
    rules: list[tuple] = []
    for bit in SETID_BITS:
        rules += [(name, (index, _CMP_MASKED_EQ, bit, bit)) for name, index in SETID_MODE_ARGS]
        rules += [(name, (flags, _CMP_MASKED_EQ, create, create),
                   (mode, _CMP_MASKED_EQ, bit, bit))
                  for name, flags, mode in SETID_OPEN_ARGS for create in CREATE_FLAGS]
    return rules


def pid1_denials() -> list[tuple]:
    """(syscall, comparison...) rules matching every call that would act on pid 1, comparing
    the int arguments (pid, which) on their low 32 bits, as the kernel reads them."""
    def low32(index: int, value: int) -> tuple[int, int, int, int]:
        return (index, _CMP_MASKED_EQ, 0xFFFFFFFF, value)

    rules: list[tuple] = [(name, low32(index, 1)) for name, index in PID1_TARGET_ARGS]
    for name, process, groups in (("setpriority", PRIO_PROCESS, PRIO_GROUP_FORMS),
                                  ("ioprio_set", IOPRIO_WHO_PROCESS, IOPRIO_GROUP_FORMS)):
        rules.append((name, low32(0, process), low32(1, 1)))
        rules += [(name, low32(0, which)) for which in groups]
    return rules


def core_limit_rules() -> list[tuple]:
    """(errno, syscall, comparison...) rules for every call that would set RLIMIT_CORE. The
    resource is an unsigned int, compared on its low 32 bits as the kernel reads it; the
    pointers are compared whole, as the kernel tests them for NULL."""
    core = (1, _CMP_MASKED_EQ, 0xFFFFFFFF, RLIMIT_CORE)
    sets = (2, _CMP_NE, 0, 0)
    return [(0, "setrlimit", (0, _CMP_MASKED_EQ, 0xFFFFFFFF, RLIMIT_CORE)),
            (0, "prlimit64", core, sets, (3, _CMP_EQ, 0, 0)),
            (errno.EPERM, "prlimit64", core, sets, (3, _CMP_NE, 0, 0))]


def _export(lib, ctx) -> bytes:
    fd = os.memfd_create("isol8-seccomp")
    try:
        _check(lib.seccomp_export_bpf(ctx, fd), "seccomp_export_bpf", "memfd")
        size = os.lseek(fd, 0, os.SEEK_CUR)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def _check(rc: int, call: str, what: str) -> None:
    if rc < 0:
        raise SeccompError(f"{call}({what}) failed: {os.strerror(-rc)}")
