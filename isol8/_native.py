"""ctypes bindings to the system libraries isol8 calls: libseccomp, and libc for the few
syscalls Python 3.11's os module lacks (openat2, unshare, mount, capset).

``dlopen`` needs neither headers nor a compiler, so ``libseccomp2`` (present in every
Debian/Ubuntu base image) is enough; ``libseccomp-dev`` is never required. ctypes rather than
cffi: the policy is compiled once per process (isol8.seccomp keeps no cache on disk), and cffi's
``cdef`` imports pycparser, about 20 ms of the first sandbox's start, where ctypes costs under
2 ms. Every foreign call of the project lives here, so the unsafe surface is one small file:
each function gets its full signature, since ctypes would otherwise pass and return pointers
as C ints (truncated to 32 bits).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os


class ArgCmp(ctypes.Structure):
    """``struct scmp_arg_cmp``: the argument index, a comparison, two 64-bit data."""

    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class Version(ctypes.Structure):
    """``struct scmp_version``."""

    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


_SIGNATURES = {  # name: (restype, argtypes)
    "seccomp_init": (ctypes.c_void_p, [ctypes.c_uint32]),
    "seccomp_release": (None, [ctypes.c_void_p]),
    "seccomp_attr_set": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]),
    "seccomp_rule_add_array": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                              ctypes.c_uint, ctypes.POINTER(ArgCmp)]),
    "seccomp_syscall_resolve_name": (ctypes.c_int, [ctypes.c_char_p]),
    # a malloc'ed char * the caller frees (c_void_p: c_char_p would copy it and lose it)
    "seccomp_syscall_resolve_num_arch": (ctypes.c_void_p, [ctypes.c_uint32, ctypes.c_int]),
    "seccomp_arch_native": (ctypes.c_uint32, []),
    "seccomp_export_bpf": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "seccomp_version": (ctypes.POINTER(Version), []),
}


class LibseccompMissing(OSError):
    """libseccomp.so.2 cannot be loaded, so no seccomp filter can be compiled."""


@functools.lru_cache(maxsize=1)
def libseccomp() -> ctypes.CDLL:
    """Load libseccomp once; the handle is shared by every filter compiled in this process."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError as exc:
        raise LibseccompMissing(
            "libseccomp.so.2 is not installed; install the 'libseccomp2' package "
            "(apt-get install libseccomp2 / dnf install libseccomp)"
        ) from exc
    for name, (restype, argtypes) in _SIGNATURES.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


@functools.lru_cache(maxsize=1)
def _free():
    free = ctypes.CDLL(None).free
    free.restype, free.argtypes = None, [ctypes.c_void_p]
    return free


def syscall_name(nr: int) -> str | None:
    """The name libseccomp gives syscall ``nr`` of the native architecture, if it knows one."""
    lib = libseccomp()
    raw = lib.seccomp_syscall_resolve_num_arch(lib.seccomp_arch_native(), nr)
    if not raw:
        return None
    try:
        return ctypes.string_at(raw).decode()
    finally:
        _free()(raw)


def syscall_number(name: str) -> int:
    """The native number of syscall ``name``; negative when this architecture has none."""
    return libseccomp().seccomp_syscall_resolve_name(name.encode())


def version() -> str:
    v = libseccomp().seccomp_version().contents
    return f"{v.major}.{v.minor}.{v.micro}"


# --- the safe image importer's child (isol8.images.unpack_main): libc's unshare, mount and
# capset, and openat2 through syscall(2), since glibc 2.36 has no openat2 wrapper.

class OpenHow(ctypes.Structure):
    """``struct open_how`` (linux/openat2.h): flags, mode, resolve, all 64-bit."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class CapHeader(ctypes.Structure):
    """``struct __user_cap_header_struct``."""

    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    """``struct __user_cap_data_struct`` (two of them for _LINUX_CAPABILITY_VERSION_3)."""

    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


SYS_OPENAT2 = 437  # the same number on x86_64 and aarch64 (both use the generic table here)
RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_IN_ROOT = 0x02, 0x04, 0x10
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
_CAP_VERSION_3 = 0x20080522

_LIBC_SIGNATURES = {  # name: (restype, argtypes)
    "syscall": (ctypes.c_long, [ctypes.c_long, ctypes.c_int, ctypes.c_char_p,
                                ctypes.POINTER(OpenHow), ctypes.c_size_t]),
    "unshare": (ctypes.c_int, [ctypes.c_int]),
    "mount": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                             ctypes.c_ulong, ctypes.c_void_p]),
    "capset": (ctypes.c_int, [ctypes.POINTER(CapHeader), ctypes.POINTER(CapData)]),
}


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    # A private handle (not ctypes.CDLL(None) shared with _free): syscall's argtypes here are
    # openat2's, and no other caller may inherit them.
    lib = ctypes.CDLL("libc.so.6", use_errno=True)
    for name, (restype, argtypes) in _LIBC_SIGNATURES.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return result


def openat2(dirfd: int, path: str, flags: int, mode: int, resolve: int) -> int:
    """``openat2(2)``: open ``path`` relative to ``dirfd`` under the ``resolve`` rules; an
    OSError names ``path``. O_CLOEXEC is always added. EAGAIN is retried: with
    RESOLVE_IN_ROOT a ``..`` fails so whenever any rename or mount on the machine raced it
    (the kernel cannot then prove the walk stayed inside), and openat2(2) says to retry."""
    how = OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    raw = os.fsencode(path)
    for _ in range(256):
        fd = _libc().syscall(SYS_OPENAT2, dirfd, raw, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0 or ctypes.get_errno() != errno.EAGAIN:
            break
    return _check(fd, "openat2", path)


def unshare(flags: int) -> None:
    _check(_libc().unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    enc = (lambda s: None if s is None else os.fsencode(s))
    _check(_libc().mount(enc(source), enc(target), enc(fstype), flags, None), "mount", target)


def drop_capabilities() -> None:
    """``capset(2)`` with every set empty: the calling thread keeps no capability at all."""
    header, data = CapHeader(_CAP_VERSION_3, 0), (CapData * 2)()
    _check(_libc().capset(ctypes.byref(header), data), "capset")


def seccomp_deny(names: tuple[str, ...], code: int) -> int:
    """A libseccomp filter context (default ALLOW) failing each of ``names`` this
    architecture knows with errno ``code``; loaded later by ``seccomp_load``. Compiled apart
    from loading so that libseccomp is dlopen'ed before the caller chroots away from it."""
    lib = libseccomp()
    ctx = lib.seccomp_init(0x7FFF0000)  # SCMP_ACT_ALLOW
    if not ctx:
        raise OSError("seccomp_init failed")
    for name in names:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            continue  # not a syscall of this architecture
        rc = lib.seccomp_rule_add_array(ctx, 0x00050000 | code, nr, 0, None)  # SCMP_ACT_ERRNO
        if rc < 0:
            lib.seccomp_release(ctx)
            raise OSError(-rc, f"seccomp_rule_add({name}): {os.strerror(-rc)}")
    return int(ctx)


def seccomp_load(ctx: int) -> None:
    """``seccomp_load``: install the filter on the calling thread (with no_new_privs, which
    libseccomp sets by default), then free the context."""
    lib = libseccomp()
    load = lib.seccomp_load
    load.restype, load.argtypes = ctypes.c_int, [ctypes.c_void_p]
    try:
        rc = load(ctx)
        if rc < 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
    finally:
        lib.seccomp_release(ctx)
