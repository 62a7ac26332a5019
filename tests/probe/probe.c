/* Multi-call syscall probe for the seccomp tests (after bubblewrap's tests/try-syscall.c and
 * crun's tests/init.c).
 *
 *   probe syscall NAME...   one line per NAME: "NAME ERRNO" (e.g. "mount EPERM") or "NAME OK"
 *   probe traced NAME...    the same, under one more filter that fails the named syscalls with
 *                           ENOSYS unless the sandbox's policy denies them (see below)
 *   probe rawsyscall NR...  syscall(NR, 0, 0, 0, 0, 0, 0); one line per NR: "NR ERRNO" or "NR OK"
 *   probe x32               getpid through the x32 ABI (nr | 0x40000000)
 *   probe int80             getpid through the i386 ABI (int $0x80, nr 20)
 *
 * Every call gets deliberately bad arguments (pointer 1, fd -1, undefined flag bits) chosen so
 * that a call the kernel EXECUTES fails early with a distinctive errno (EFAULT, EBADF, EINVAL,
 * ENOSPC, ...), while a FILTERED call fails with the policy's errno (EPERM, ENOSYS,
 * EAFNOSUPPORT). Running the same probe with and without the filter tells the two apart. The
 * comment on each entry gives the unfiltered result in an isol8 sandbox (no capabilities,
 * max_user_namespaces=0). Where the kernel checks a capability before looking at any argument,
 * an unfiltered call also fails with EPERM: those entries say "EPERM (capability first)", and
 * "traced" mode tells them apart instead.
 *
 * The probe refuses to run (exit 99) anywhere but in the sandbox: as root on the host some of
 * these calls would succeed. Build: cc -O1 -Wall -o probe probe.c */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/personality.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define GUARD_REFUSED 99
#define X32_SYSCALL_BIT 0x40000000L

#ifndef SYS_fchmodat2 /* Linux 6.6; older headers lack it */
#define SYS_fchmodat2 452
#endif
#ifndef SYS_vm86 /* i386 only: these print "NAME NOTARCH" */
#define SYS_vm86 -1
#endif
#ifndef SYS_vm86old
#define SYS_vm86old -1
#endif

/* Argument placeholders, replaced at call time. */
#define TTY -1000L /* fd of a pty slave that is our controlling terminal */
#define BUF -1001L /* a valid, writable buffer */
#define BAD 1L     /* a pointer the kernel cannot read (EFAULT) */
#define DEVNULL -1002L /* the path "/dev/null" */

enum {
  F_FORK = 1,    /* clone: the child exits at once, the parent reaps it */
  F_PERSONA = 2, /* personality: restore the old persona */
  F_CLOSE = 4,   /* returns an fd: close it */
  F_INT = 8,     /* returns an int in a long (modify_ldt): -EINVAL arrives as 0xffffffea */
};
#define BADTYPE 0x100 /* undefined socket type bit: EINVAL before the family is looked at */

struct probe {
  const char *name;
  long nr;
  long a[6];
  int flags;
};

static const struct probe probes[] = {
    /* Namespaces and mounts [EPERM] */
    {"unshare", SYS_unshare, {0x1}},            /* EINVAL: not an unshare flag */
    {"unshare_user", SYS_unshare, {CLONE_NEWUSER}}, /* ENOSPC: max_user_namespaces=0 */
    {"setns", SYS_setns, {-1, 0}},              /* EBADF */
    {"mount", SYS_mount, {0, 0, BAD}},          /* EFAULT: fstype copied first */
    {"umount2", SYS_umount2, {BAD, -1}},        /* EINVAL: flags checked first */
    {"pivot_root", SYS_pivot_root, {BAD, BAD}}, /* EPERM (capability first) */
    {"chroot", SYS_chroot, {BAD}},              /* EFAULT */
    /* Keyrings [EPERM] */
    {"add_key", SYS_add_key, {BAD, BAD, 0, 0, 0}},  /* EFAULT */
    {"keyctl", SYS_keyctl, {0x7fffffff}},           /* EOPNOTSUPP: no such operation */
    {"request_key", SYS_request_key, {BAD, BAD, BAD, 0}}, /* EFAULT */
    /* Tracing and cross-process memory [EPERM] */
    {"ptrace", SYS_ptrace, {2 /* PEEKDATA */, 0x7fffffff}},         /* ESRCH */
    {"process_vm_readv", SYS_process_vm_readv, {0, 0, 0, 0, 0, 1}},  /* EINVAL: flags */
    {"process_vm_writev", SYS_process_vm_writev, {0, 0, 0, 0, 0, 1}}, /* EINVAL: flags */
    {"kcmp", SYS_kcmp, {0x7fffffff, 0x7fffffff}},                   /* ESRCH */
    {"pidfd_getfd", SYS_pidfd_getfd, {-1, 0, 0}},                   /* EBADF */
    {"process_madvise", SYS_process_madvise, {-1, 0, 0, 0, 1}},      /* EINVAL: flags */
    {"perf_event_open", SYS_perf_event_open, {BAD, 0, -1, -1, -1}},  /* EINVAL: flags */
    {"lookup_dcookie", SYS_lookup_dcookie, {0, 0, 0}}, /* ENOSYS: gone since 6.10 */
    /* Kernel attack surface [EPERM] */
    {"bpf", SYS_bpf, {0 /* MAP_CREATE */, BAD, 8}},          /* EFAULT */
    {"userfaultfd", SYS_userfaultfd, {1 /* USER_MODE_ONLY */ | 2}}, /* EINVAL: flags */
    {"memfd_secret", SYS_memfd_secret, {~0L}},              /* EINVAL: flags (ENOSYS if off) */
    /* FAN_REPORT_FID (allowed unprivileged) with a bad event_f_flags: EINVAL */
    {"fanotify_init", SYS_fanotify_init, {0x200, 0x80000000L}},
    /* File handles [EPERM] */
    {"open_by_handle_at", SYS_open_by_handle_at, {-1, BAD, 0}},          /* EFAULT */
    {"name_to_handle_at", SYS_name_to_handle_at, {-1, BAD, BAD, BAD, -1}}, /* EINVAL */
    /* Host administration and obsolete interfaces [EPERM] */
    {"syslog", SYS_syslog, {3 /* READ_ALL */, 0, -1}}, /* EINVAL; EPERM if dmesg_restrict */
    {"acct", SYS_acct, {BAD}},                          /* EPERM (capability first) */
    {"quotactl", SYS_quotactl, {0xff, BAD, 0, 0}},      /* EINVAL: quota type 255 */
    {"quotactl_fd", SYS_quotactl_fd, {-1, 0xff, 0, 0}}, /* EINVAL or EBADF */
    {"swapon", SYS_swapon, {BAD, -1}},                  /* EINVAL: flags checked first */
    {"swapoff", SYS_swapoff, {BAD}},                    /* EPERM (capability first) */
    {"reboot", SYS_reboot, {0, 0, 0, 0}},               /* EPERM (capability first) */
    {"kexec_load", SYS_kexec_load, {0, 0, 0, -1}},      /* EPERM (capability first) */
    {"kexec_file_load", SYS_kexec_file_load, {-1, -1, 0, 0, -1}}, /* same */
    {"init_module", SYS_init_module, {BAD, 0, BAD}},    /* EPERM (capability first) */
    {"finit_module", SYS_finit_module, {-1, BAD, 0}},   /* same */
    {"delete_module", SYS_delete_module, {BAD, 0}},     /* same */
    {"iopl", SYS_iopl, {4}},                            /* EINVAL (ENOSYS if compiled out) */
    {"ioperm", SYS_ioperm, {0, 0, 0}},                  /* EINVAL: empty range */
    {"settimeofday", SYS_settimeofday, {BAD, 0}},       /* EFAULT */
    {"clock_settime", SYS_clock_settime, {0, BAD}},     /* EFAULT */
    {"clock_adjtime", SYS_clock_adjtime, {0, BAD}},     /* EFAULT */
    {"adjtimex", SYS_adjtimex, {BAD}},                  /* EFAULT */
    {"sethostname", SYS_sethostname, {BAD, -1}},        /* EPERM (capability first) */
    {"setdomainname", SYS_setdomainname, {BAD, -1}},    /* EPERM (capability first) */
    {"vhangup", SYS_vhangup, {0}},                      /* EPERM (capability first) */
    {"uselib", SYS_uselib, {BAD}},                      /* EFAULT, or ENOSYS (removed) */
    {"ustat", SYS_ustat, {0xfffff, BAD}},               /* EINVAL: no such device */
    {"sysfs", SYS_sysfs, {99}},                         /* EINVAL: no such option */
    {"_sysctl", SYS__sysctl, {BAD}},                    /* ENOSYS: gone since 5.5 */
    {"nfsservctl", SYS_nfsservctl, {0, 0, 0}},          /* ENOSYS: gone since 3.1 */
    {"modify_ldt", SYS_modify_ldt, {1 /* write */, BAD, 0}, F_INT}, /* EINVAL: size 0 */
    {"vm86", SYS_vm86, {0}},
    {"vm86old", SYS_vm86old, {0}},
    /* NUMA and page migration [EPERM] */
    {"mbind", SYS_mbind, {0, 0, 99, 0, 0, 0}},            /* EINVAL: mode */
    {"set_mempolicy", SYS_set_mempolicy, {99, 0, 0}},    /* EINVAL: mode */
    {"get_mempolicy", SYS_get_mempolicy, {0, 0, 0, 0, -1}}, /* EINVAL: flags */
    {"migrate_pages", SYS_migrate_pages, {0, -1, BAD, BAD}}, /* EINVAL: maxnode */
    {"move_pages", SYS_move_pages, {0, 0, 0, 0, 0, -1}},  /* EINVAL: flags */
    {"set_mempolicy_home_node", SYS_set_mempolicy_home_node, {0, 0, 0, -1}}, /* EINVAL: flags */
    /* Denied with ENOSYS so that runtimes fall back */
    {"clone3", SYS_clone3, {BAD, 64}},                             /* EFAULT */
    {"io_uring_setup", SYS_io_uring_setup, {0, BAD}},              /* EFAULT */
    {"io_uring_enter", SYS_io_uring_enter, {-1, 0, 0, -1, 0, 0}},  /* EINVAL: flags */
    {"io_uring_register", SYS_io_uring_register, {-2, 0, 0, 0}},   /* EBADF */
    {"open_tree", SYS_open_tree, {-1, BAD, -1}},                   /* EINVAL: flags */
    {"move_mount", SYS_move_mount, {-1, BAD, -1, BAD, -1}},        /* EPERM or EINVAL */
    {"fsopen", SYS_fsopen, {BAD, 0}},                              /* EPERM */
    {"fsconfig", SYS_fsconfig, {-1, -1, 0, 0, 0}},                 /* EINVAL or EBADF */
    {"fsmount", SYS_fsmount, {-1, -1, 0}},                         /* EPERM or EINVAL */
    {"fspick", SYS_fspick, {-1, BAD, -1}},                         /* EPERM or EINVAL */
    {"mount_setattr", SYS_mount_setattr, {-1, BAD, -1, 0, 0}},     /* EINVAL: flags */
    {"openat2", SYS_openat2, {AT_FDCWD, BAD, BAD, 24}},            /* EFAULT: open_how */

    /* Argument filters. clone: any namespace flag [EPERM]. A namespace flag alone fails
     * unfiltered with EPERM too (no capabilities), so CLONE_SIGHAND without CLONE_VM makes
     * the kernel refuse with EINVAL before it looks at namespaces. */
    {"clone_newuser", SYS_clone, {CLONE_NEWUSER | SIGCHLD}, F_FORK}, /* ENOSPC */
    {"clone_newns", SYS_clone, {CLONE_NEWNS | CLONE_SIGHAND | SIGCHLD}, F_FORK},
    {"clone_newnet", SYS_clone, {CLONE_NEWNET | CLONE_SIGHAND | SIGCHLD}, F_FORK},
    {"clone_newpid", SYS_clone, {CLONE_NEWPID | CLONE_SIGHAND | SIGCHLD}, F_FORK},
    {"clone_newuts", SYS_clone, {CLONE_NEWUTS | CLONE_SIGHAND | SIGCHLD}, F_FORK},
    {"clone_newipc", SYS_clone, {CLONE_NEWIPC | CLONE_SIGHAND | SIGCHLD}, F_FORK},
    {"clone_newcgroup", SYS_clone, {CLONE_NEWCGROUP | CLONE_SIGHAND | SIGCHLD}, F_FORK},
    {"clone_newtime", SYS_clone, {0x80 /* CLONE_NEWTIME */ | CLONE_SIGHAND}, F_FORK},
    {"clone_fork_ok", SYS_clone, {SIGCHLD}, F_FORK}, /* plain fork: allowed */
    /* S_ISUID or S_ISGID in a mode argument [EPERM]. Unfiltered, the unreadable path (or fd
     * -1) fails first: EFAULT (EBADF; EINVAL for O_TMPFILE, whose flags are checked first).
     * open and openat are denied only when they create: without O_CREAT or O_TMPFILE the
     * kernel ignores the mode, and so does the filter (the _ok controls). */
    {"open_creat_setuid", SYS_open, {BAD, O_WRONLY | O_CREAT, 04755}},
    {"open_creat_setgid", SYS_open, {BAD, O_WRONLY | O_CREAT, 02755}},
    {"open_tmpfile_setuid", SYS_open, {BAD, O_WRONLY | O_TMPFILE, 04755}},
    {"open_tmpfile_setgid", SYS_open, {BAD, O_WRONLY | O_TMPFILE, 02755}},
    {"openat_creat_setuid", SYS_openat, {AT_FDCWD, BAD, O_WRONLY | O_CREAT, 04755}},
    {"openat_creat_setgid", SYS_openat, {AT_FDCWD, BAD, O_WRONLY | O_CREAT, 02755}},
    {"openat_tmpfile_setuid", SYS_openat, {AT_FDCWD, BAD, O_RDWR | O_TMPFILE, 04755}},
    {"openat_tmpfile_setgid", SYS_openat, {AT_FDCWD, BAD, O_RDWR | O_TMPFILE, 02755}},
    {"creat_setuid", SYS_creat, {BAD, 04755}},
    {"creat_setgid", SYS_creat, {BAD, 02755}},
    {"mknod_setuid", SYS_mknod, {BAD, S_IFREG | 04755, 0}},
    {"mknod_setgid", SYS_mknod, {BAD, S_IFREG | 02755, 0}},
    {"mknodat_setuid", SYS_mknodat, {AT_FDCWD, BAD, S_IFREG | 04755, 0}},
    {"mknodat_setgid", SYS_mknodat, {AT_FDCWD, BAD, S_IFREG | 02755, 0}},
    {"mkdir_setuid", SYS_mkdir, {BAD, 04755}},
    {"mkdir_setgid", SYS_mkdir, {BAD, 02755}},
    {"mkdirat_setuid", SYS_mkdirat, {AT_FDCWD, BAD, 04755}},
    {"mkdirat_setgid", SYS_mkdirat, {AT_FDCWD, BAD, 02755}},
    {"chmod_setuid", SYS_chmod, {BAD, 04755}},
    {"chmod_setgid", SYS_chmod, {BAD, 02755}},
    {"fchmod_setuid", SYS_fchmod, {-1, 04755}},
    {"fchmod_setgid", SYS_fchmod, {-1, 02755}},
    {"fchmodat_setuid", SYS_fchmodat, {AT_FDCWD, BAD, 04755}},
    {"fchmodat_setgid", SYS_fchmodat, {AT_FDCWD, BAD, 02755}},
    {"fchmodat2_setuid", SYS_fchmodat2, {AT_FDCWD, BAD, 04755, 0}},
    {"fchmodat2_setgid", SYS_fchmodat2, {AT_FDCWD, BAD, 02755, 0}},
    /* The upper bits of a umode_t argument are dropped by the kernel: not a way around. */
    {"chmod_setuid_high_bits", SYS_chmod, {BAD, (long)0xffff000000000000UL | 04755}},
    {"open_nocreat_mode_ok", SYS_open, {DEVNULL, O_RDONLY, 06755}, F_CLOSE},
    {"openat_nocreat_mode_ok", SYS_openat, {AT_FDCWD, DEVNULL, O_RDONLY, 06755}, F_CLOSE},
    /* socket: families other than unix, inet, inet6, netlink-route [EAFNOSUPPORT]. The
     * undefined type bit makes an unfiltered call fail with EINVAL whatever the family. */
    {"socket_vsock", SYS_socket, {AF_VSOCK, SOCK_STREAM | BADTYPE, 0}, F_CLOSE},
    {"socket_alg", SYS_socket, {AF_ALG, SOCK_SEQPACKET | BADTYPE, 0}, F_CLOSE},
    {"socket_packet", SYS_socket, {AF_PACKET, SOCK_RAW | BADTYPE, 0}, F_CLOSE},
    {"socket_key", SYS_socket, {AF_KEY, SOCK_RAW | BADTYPE, 2}, F_CLOSE},
    {"socket_netlink_audit", SYS_socket, {AF_NETLINK, SOCK_RAW | BADTYPE, 9}, F_CLOSE},
    /* The kernel truncates the family to an int (AF_VSOCK); the filter compares 64 bits. */
    {"socket_high_bits", SYS_socket, {0x100000028L, SOCK_STREAM | BADTYPE, 0}, F_CLOSE},
    /* socketpair reaches a family's create function too [EAFNOSUPPORT] */
    {"socketpair_packet", SYS_socketpair, {AF_PACKET, SOCK_RAW | BADTYPE, 0, BAD}},
    {"socketpair_alg", SYS_socketpair, {AF_ALG, SOCK_SEQPACKET | BADTYPE, 0, BAD}},
    {"socket_inet_ok", SYS_socket, {AF_INET, SOCK_STREAM, 0}, F_CLOSE},
    {"socket_inet6_ok", SYS_socket, {AF_INET6, SOCK_DGRAM, 0}, F_CLOSE},
    {"socket_unix_ok", SYS_socket, {AF_UNIX, SOCK_STREAM, 0}, F_CLOSE},
    {"socket_netlink_route_ok", SYS_socket, {AF_NETLINK, SOCK_RAW, 0}, F_CLOSE},
    /* RLIMIT_CORE stays at 1: setting it answers success without running [OK], or EPERM
     * when prlimit64 also wants the old value back. Unfiltered, the unreadable new limit
     * fails first: EFAULT. The resource is an unsigned int: upper bits are no way around. */
    {"setrlimit_core", SYS_setrlimit, {RLIMIT_CORE, BAD}},
    {"setrlimit_core_high_bits", SYS_setrlimit, {0x100000000L | RLIMIT_CORE, BAD}},
    {"prlimit_core", SYS_prlimit64, {0, RLIMIT_CORE, BAD, 0}},
    {"prlimit_core_pid1", SYS_prlimit64, {1, RLIMIT_CORE, BAD, 0}},
    {"prlimit_core_old", SYS_prlimit64, {0, RLIMIT_CORE, BAD, BAD}},
    {"prlimit_core_read_ok", SYS_prlimit64, {0, RLIMIT_CORE, 0, BUF}},
    /* other resources reach the kernel, which faults on the pointer [EFAULT] */
    {"setrlimit_fsize_efault", SYS_setrlimit, {RLIMIT_FSIZE, BAD}},
    {"prlimit_fsize_efault", SYS_prlimit64, {0, RLIMIT_FSIZE, BAD, 0}},
    /* ioctl on our controlling pty: TIOCSTI and TIOCLINUX on the low 32 bits [EPERM].
     * Unfiltered, TIOCSTI reaches the tty layer: EFAULT (EIO if dev.tty.legacy_tiocsti=0). */
    {"ioctl_tiocsti", SYS_ioctl, {TTY, TIOCSTI, BAD}},
    /* CVE-2019-10063: the kernel truncates the request to 32 bits; a 64-bit match misses it. */
    {"ioctl_tiocsti_high", SYS_ioctl, {TTY, (long)0xffffffff00000000UL | TIOCSTI, BAD}},
    {"ioctl_tioclinux", SYS_ioctl, {TTY, TIOCLINUX, BAD}}, /* ENOTTY/EINVAL: not a VT */
    {"ioctl_tiocgwinsz_ok", SYS_ioctl, {TTY, TIOCGWINSZ, BUF}},
    /* personality: only PER_LINUX{,32}, UNAME26 and the query [ENOSYS]. Unfiltered these
     * succeed; the old persona is restored right away. */
    {"personality_rie", SYS_personality, {READ_IMPLIES_EXEC}, F_PERSONA},
    {"personality_addr_no_randomize", SYS_personality, {ADDR_NO_RANDOMIZE}, F_PERSONA},
    {"personality_query", SYS_personality, {0xffffffffL}, F_PERSONA}, /* must succeed */
    {"personality_linux_ok", SYS_personality, {PER_LINUX}, F_PERSONA},
    {"getpid_ok", SYS_getpid, {0}},
};

/* The only safety net: refuse unless every privilege is gone and we are the sandbox user. */
static void guard(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  int zero_caps = 0, nnp = 0;
  while (f && fgets(line, sizeof line, f)) {
    if (!strncmp(line, "CapEff:", 7) || !strncmp(line, "CapPrm:", 7) ||
        !strncmp(line, "CapBnd:", 7))
      zero_caps += strtoull(line + 7, NULL, 16) == 0;
    else if (!strncmp(line, "NoNewPrivs:", 11))
      nnp = atoi(line + 11) == 1;
  }
  if (f)
    fclose(f);
  if (zero_caps != 3 || !nnp || getuid() != 1000 || geteuid() != 1000) {
    fprintf(stderr, "probe refused: privileged or outside the sandbox\n");
    exit(GUARD_REFUSED);
  }
}

/* A pty slave as our controlling terminal (we are a session leader without one), so an
 * unfiltered TIOCSTI gets past its "not your terminal" check. Falls back to stdin. */
static int tty_fd(void) {
  static int fd = -2;
  if (fd != -2)
    return fd;
  int master = posix_openpt(O_RDWR | O_NOCTTY);
  const char *name = master >= 0 && unlockpt(master) == 0 ? ptsname(master) : NULL;
  fd = name ? open(name, O_RDWR) : -1;
  if (fd >= 0)
    ioctl(fd, TIOCSCTTY, 0);
  else
    fd = 0;
  return fd;
}

static void report(const char *name, long ret, int err) {
  const char *e = strerrorname_np(err);
  if (ret != -1)
    printf("%s OK\n", name);
  else if (e)
    printf("%s %s\n", name, e);
  else
    printf("%s errno%d\n", name, err);
}

static const struct probe *find(const char *name) {
  for (size_t i = 0; i < sizeof probes / sizeof *probes; i++)
    if (!strcmp(probes[i].name, name))
      return &probes[i];
  return NULL;
}

static int run_probe(const char *name) {
  const struct probe *p = find(name);
  if (!p) {
    printf("%s UNKNOWN\n", name);
    return 2;
  }
  if (p->nr < 0) {
    printf("%s NOTARCH\n", name);
    return 0;
  }
  char buf[256];
  long a[6];
  for (int i = 0; i < 6; i++)
    a[i] = p->a[i] == TTY       ? tty_fd()
           : p->a[i] == BUF     ? (long)buf
           : p->a[i] == DEVNULL ? (long)"/dev/null"
                                : p->a[i];
  fflush(stdout); /* before a possible fork */
  errno = 0;
  long ret = syscall(p->nr, a[0], a[1], a[2], a[3], a[4], a[5]);
  int err = errno;
  if ((p->flags & F_INT) && ret != -1 && (int)ret < 0 && (int)ret > -4096) {
    err = -(int)ret;
    ret = -1;
  }
  if ((p->flags & F_FORK) && ret == 0)
    _exit(0); /* the child of a clone that went through */
  if ((p->flags & F_FORK) && ret > 0)
    waitpid((pid_t)ret, NULL, 0);
  if ((p->flags & F_CLOSE) && ret >= 0)
    close((int)ret);
  if ((p->flags & F_PERSONA) && ret != -1)
    syscall(SYS_personality, ret);
  report(name, ret, err);
  return 0;
}

/* "traced": stack one more filter that returns SECCOMP_RET_TRACE for the named syscalls.
 * With no tracer attached the kernel fails such a call with ENOSYS WITHOUT running it, and
 * ERRNO takes precedence over TRACE across stacked filters. So a call the policy denies still
 * shows the policy's errno, while a call the policy allows shows ENOSYS: the two are told
 * apart even where the kernel checks a capability before any argument (pivot_root, acct...),
 * and nothing is executed either way. */
static void install_trace_filter(char **names, int n) {
  struct sock_filter f[5 + 2 * n];
  int k = 0;
  f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                        offsetof(struct seccomp_data, arch));
  f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
  f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                        offsetof(struct seccomp_data, nr));
  for (int i = 0; i < n; i++) {
    const struct probe *p = find(names[i]);
    if (!p || p->nr < 0)
      continue;
    f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)p->nr, 0, 1);
    f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRACE);
  }
  f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  struct sock_fprog prog = {(unsigned short)k, f};
  tty_fd(); /* opening the pty takes ioctls, which may be among the traced calls */
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0) {
    perror("probe: seccomp");
    exit(3);
  }
}

int main(int argc, char **argv) {
  guard(); /* first, before anything else */
  int rc = 0;
  const char *cmd = argc >= 2 ? argv[1] : "";
  if (!strcmp(cmd, "syscall") || !strcmp(cmd, "traced")) {
    if (!strcmp(cmd, "traced"))
      install_trace_filter(argv + 2, argc - 2);
    for (int i = 2; i < argc; i++)
      rc |= run_probe(argv[i]);
  } else if (!strcmp(cmd, "rawsyscall")) {
    for (int i = 2; i < argc; i++) {
      errno = 0;
      long ret = syscall(strtol(argv[i], NULL, 0), 0, 0, 0, 0, 0, 0);
      report(argv[i], ret, errno);
    }
  } else if (!strcmp(cmd, "x32") && argc == 2) {
    fflush(stdout);
    errno = 0;
    long ret = syscall(X32_SYSCALL_BIT | SYS_getpid); /* the filter kills: SIGSYS */
    report("x32", ret, errno);
  } else if (!strcmp(cmd, "int80") && argc == 2) {
    long ret = 20; /* getpid in the i386 table; the filter kills: SIGSYS */
    fflush(stdout);
    __asm__ volatile("int $0x80" : "+a"(ret) : : "memory", "r8", "r9", "r10", "r11");
    report("int80", ret < 0 && ret > -4096 ? -1 : ret, ret < 0 ? (int)-ret : 0);
  } else {
    fprintf(stderr, "usage: probe syscall|traced NAME... | rawsyscall NR... | x32 | int80\n");
    return 2;
  }
  return rc;
}
