/* Privileges: securebits, capabilities, rlimits and the seccomp filters. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/securebits.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "helper.h"

/* Locked so that nothing in the sandbox can ever regain capabilities: even a process that
 * became uid 0 in the namespace (it cannot: 0 is unmapped) or exec'd a file with file caps
 * gets none, and no_setuid_fixup keeps ours through the setresuid in become_sandbox_user. */
void lock_securebits(void) {
  unsigned long bits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
                       SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
                       SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
  if (prctl(PR_SET_SECUREBITS, bits, 0, 0, 0) < 0)
    fail("identity", "prctl", "PR_SET_SECUREBITS");
}

/* Every set: bounding (needs CAP_SETPCAP, so first), ambient, then permitted, effective and
 * inheritable in one capset. Without this, CAP_NET_ADMIN over the sandbox's own netns would
 * reach nf_tables. */
void drop_capabilities(void) {
  for (int cap = 0; cap < 64; cap++)
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
      fail("privileges", "prctl", "PR_CAPBSET_DROP");
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
    fail("privileges", "prctl", "PR_CAP_AMBIENT_CLEAR_ALL");
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2] = {{0, 0, 0}, {0, 0, 0}};
  if (syscall(SYS_capset, &hdr, data) < 0)
    fail("privileges", "capset", NULL);
}

/* The init keeps only RLIMIT_NOFILE and RLIMIT_CORE, which every user process inherits from
 * it. CORE is 1 byte, not 0: with a pipe core_pattern the kernel hands a crash to the host's
 * helper at any other value (fs/coredump.c), and seccomp keeps user code from changing it
 * (isol8/limits.py, isol8/seccomp.py). CPU, NPROC and FSIZE belong to each user process it
 * starts (run_limits below): on the init, the CPU-seconds budget would end a long session for
 * the watchdog's own CPU time (SIGKILL at the hard limit, the session and its workspace lost),
 * and an NPROC count would refuse the init the clone of the next run. */
static int init_keeps(uint32_t resource) {
  return resource == RLIMIT_NOFILE || resource == RLIMIT_CORE;
}

void apply_rlimits(const struct config *cfg) {
  for (int i = 0; i < cfg->n_rlimits; i++) {
    const struct rlimit_req *r = &cfg->rlimits[i];
    struct rlimit lim = {r->cur, r->max};
    if (init_keeps(r->resource) && setrlimit((__rlimit_resource_t)r->resource, &lim) < 0) {
      char what[32];
      snprintf(what, sizeof what, "resource %u", r->resource);
      fail("rlimits", "setrlimit", what);
    }
  }
}

/* In a user process, before its execve: the limits the init does not keep. rlimits live in
 * the signal struct, so the CLONE_VM child's setrlimit does not reach the init. */
int run_limits(const struct config *cfg) {
  for (int i = 0; i < cfg->n_rlimits; i++) {
    const struct rlimit_req *r = &cfg->rlimits[i];
    struct rlimit lim = {r->cur, r->max};
    if (!init_keeps(r->resource) && setrlimit((__rlimit_resource_t)r->resource, &lim) < 0)
      return -1;
  }
  return 0;
}

void install_seccomp(const struct config *cfg) {
  for (int i = 0; i < cfg->n_filters; i++) {
    struct sock_fprog prog = {(unsigned short)(cfg->filters[i].len / 8),
                              (struct sock_filter *)cfg->filters[i].bpf};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0)
      fail("seccomp", "seccomp", "SECCOMP_SET_MODE_FILTER");
  }
}
