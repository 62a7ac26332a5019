"""ctypes bindings to the one system library isol8 calls: libseccomp.

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
import functools


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
