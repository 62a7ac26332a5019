"""cffi bindings, in ABI mode, to the one system library isol8 calls: libseccomp.

ABI mode (``dlopen``) needs neither headers nor a compiler, so ``libseccomp2`` (present in every
Debian/Ubuntu base image) is enough; ``libseccomp-dev`` is never required. Every ``ffi`` use of
the project lives here, so the unsafe surface is one small file.
"""

from __future__ import annotations

import functools

_CDEF = """
typedef void *scmp_filter_ctx;
struct scmp_arg_cmp { unsigned int arg; int op; uint64_t datum_a; uint64_t datum_b; };
struct scmp_version { unsigned int major; unsigned int minor; unsigned int micro; };
scmp_filter_ctx seccomp_init(uint32_t def_action);
void seccomp_release(scmp_filter_ctx ctx);
int seccomp_attr_set(scmp_filter_ctx ctx, int attr, uint32_t value);
int seccomp_rule_add_array(scmp_filter_ctx ctx, uint32_t action, int syscall,
                           unsigned int arg_cnt, const struct scmp_arg_cmp *arg_array);
int seccomp_syscall_resolve_name(const char *name);
char *seccomp_syscall_resolve_num_arch(uint32_t arch_token, int num);
uint32_t seccomp_arch_native(void);
int seccomp_export_bpf(const scmp_filter_ctx ctx, int fd);
const struct scmp_version *seccomp_version(void);
void free(void *ptr);
"""


class LibseccompMissing(OSError):
    """libseccomp.so.2 cannot be loaded, so no seccomp filter can be compiled."""


@functools.lru_cache(maxsize=1)
def libseccomp():
    """Load libseccomp once; the handle is shared by every filter compiled in this process."""
    import cffi  # imported lazily: a cached filter never needs it

    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    try:
        lib = ffi.dlopen("libseccomp.so.2")
    except OSError as exc:
        raise LibseccompMissing(
            "libseccomp.so.2 is not installed; install the 'libseccomp2' package "
            "(apt-get install libseccomp2 / dnf install libseccomp)"
        ) from exc
    libc = ffi.dlopen(None)
    return ffi, lib, libc
