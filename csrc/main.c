/* isol8-helper main: the setup order of shared/design.md, in order.
 *
 * The outer process stays in the host namespaces only to write the child's id maps and to
 * wait for it: its exit tells the supervisor that the sandbox's PID 1, and with it every
 * process of the pid namespace, is gone (the kernel reaps the whole namespace before the
 * init's own exit is reported). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helper.h"

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

static unsigned char config_buf[MAX_MESSAGE];
static struct config cfg;

static void child_setup(int sync_fd) __attribute__((noreturn));

/* struct clone_args of <linux/sched.h>, which cannot be included next to <sched.h>. */
struct clone3_args {
  uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
      set_tid_size, cgroup;
};

/* Fork-like (no new stack): clone3 when the child must start inside a cgroup v2 directory,
 * so it never runs a single instruction outside it; plain clone otherwise. Raw clone in a
 * single-threaded C process is safe (minijail's warning is about threaded callers). */
static pid_t clone_sandbox(int flags, int *pidfd) {
  if (cfg.cgroup_dir >= 0) {
    struct clone3_args args = {
        .flags = (uint64_t)(flags & ~0xff) | CLONE_INTO_CGROUP,
        .pidfd = (uint64_t)(uintptr_t)pidfd,
        .exit_signal = SIGCHLD,
        .cgroup = (uint64_t)cfg.cgroup_dir,
    };
    return (pid_t)syscall(SYS_clone3, &args, sizeof args);
  }
  /* x86_64 argument order: flags, stack, parent_tid (the pidfd with CLONE_PIDFD), ... */
  return (pid_t)syscall(SYS_clone, (unsigned long)flags, NULL, pidfd, NULL, 0);
}

int main(void) {
  /* Phase 0: nothing from the supervisor but stdio and the control socket survives: no fd,
   * no blocked signal, no ignored signal (Python ignores SIGPIPE and SIGXFSZ, and SIG_IGN
   * survives execve: `yes | head` would see EPIPE instead of dying). */
  current_step = "start";
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  /* Raw rt_sigaction: glibc's posix_spawn leaves its internal signals 32 and 33 ignored and
   * glibc's own sigaction refuses to touch them. An all-zero kernel sigaction is SIG_DFL
   * with no flags and an empty mask on every architecture. */
  static const unsigned long sig_default[8];
  for (int sig = 1; sig <= 64; sig++)
    syscall(SYS_rt_sigaction, sig, sig_default, NULL, 8); /* EINVAL for KILL/STOP: fine */
  if (syscall(SYS_close_range, CONTROL_FD + 1, ~0U, 0) < 0)
    fail("start", "close_range", NULL);
  if (fcntl(CONTROL_FD, F_SETFD, FD_CLOEXEC) < 0)
    fail("start", "fcntl", "control socket");

  /* Phase 1: configuration. */
  current_step = "config";
  int fds[MAX_CGROUP_FDS], nfds;
  ssize_t n = recv_message(CONTROL_FD, config_buf, sizeof config_buf, fds, &nfds,
                           MAX_CGROUP_FDS);
  if (n < 0)
    fail("config", "recvmsg", "control socket");
  if (n == 0)
    _exit(0); /* supervisor gone before we started */
  if (parse_config(config_buf, (size_t)n, fds, nfds, &cfg))
    fail_errno(EINVAL, "config", "parse", "config message");

  /* Mapping a uid other than our own means we are root in the initial namespace: the child
   * must not keep root's supplementary groups, since once setgroups is denied in the new
   * namespace they could never be dropped again (nor may they help the lookups below). */
  int as_root = cfg.host_uid != geteuid();
  if (as_root && setgroups(0, NULL) < 0)
    fail("identity", "setgroups", NULL);

  /* The caller's mounts, cloned on the host's view before anything is mounted over it; as
   * root here, still in the initial namespaces, where they can be idmapped (hostmounts.c). */
  current_step = "mounts";
  if (as_root)
    open_host_mounts(&cfg, 1);

  /* Phase 2: clone into every namespace. */
  current_step = "clone";
  int sync[2];
  if (pipe2(sync, O_CLOEXEC) < 0)
    fail("clone", "pipe2", NULL);
  int flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS |
              CLONE_NEWCGROUP | CLONE_PIDFD | SIGCHLD;
  if (cfg.new_netns)
    flags |= CLONE_NEWNET;
  int pidfd = -1;
  pid_t pid = clone_sandbox(flags, &pidfd);
  if (pid < 0) {
    int err = errno;
    fail_errno(err, "clone", cfg.cgroup_dir >= 0 ? "clone3" : "clone",
               err == EPERM || err == ENOSPC || err == EACCES ? "user namespace" : NULL);
  }
  if (pid == 0) {
    close(sync[1]);
    child_setup(sync[0]);
  }
  close(sync[0]);
  close_host_mounts(&cfg); /* the child holds its own copies */

  /* Phase 3 (parent): cgroup v1 placement and id maps, then release the child: it must be
   * in its cgroups before it can run anything. */
  current_step = "cgroup";
  char pid_text[16];
  int pid_len = snprintf(pid_text, sizeof pid_text, "%d\n", (int)pid);
  for (int i = 0; i < cfg.n_procs_fds; i++)
    if (write(cfg.procs_fds[i], pid_text, (size_t)pid_len) != pid_len)
      fail("cgroup", "write", "cgroup.procs");
  current_step = "idmap";
  write_id_maps(pid, &cfg);
  /* "started" (with the pidfd) goes out before the child runs: every later event, "ready"
   * first, follows it on the socket. */
  send_json_fd(pidfd, "{\"event\":\"started\",\"pid\":%d}", (int)pid);
  close(pidfd);
  report_unmapped(&cfg);
  if (write(sync[1], "1", 1) != 1)
    fail("idmap", "write", "sync pipe");
  close(sync[1]);

  /* Phase 4 (parent): wait for the init; everything in its pid namespace dies with it. */
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR)
      fail("wait", "waitpid", NULL);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void child_setup(int sync_fd) {
  /* Wait until the parent has written our maps: until then we are the overflow uid. */
  current_step = "idmap";
  char c;
  ssize_t r;
  do
    r = read(sync_fd, &c, 1);
  while (r < 0 && errno == EINTR);
  if (r != 1)
    _exit(1); /* the parent reported why */
  close(sync_fd);

  current_step = "identity";
  lock_securebits();
  become_sandbox_user();
  /* After the maps: user code runs with our uid, and a dumpable init would let it open
   * /proc/1/mem for writing. PDEATHSIG must follow the credential change (which resets it). */
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
    fail("identity", "prctl", "PR_SET_DUMPABLE");
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
    fail("identity", "prctl", "PR_SET_PDEATHSIG");

  current_step = "mounts";
  open_host_mounts(&cfg, 0); /* rootless (as root the parent did): before the staging mount */
  if (cfg.new_netns && cfg.listeners) {
    current_step = "network";
    limit_conntrack(&cfg);
  }
  current_step = "rootfs";
  build_root(&cfg); /* mounts, pivot_root, read-only root, max_user_namespaces=0 */

  if (cfg.hostname && sethostname(cfg.hostname, strlen(cfg.hostname)) < 0)
    fail("uts", "sethostname", cfg.hostname);
  if (cfg.new_netns) {
    current_step = "network";
    bring_up_loopback();
    /* Before the capability drop: binding 53, 80 and 443 needs CAP_NET_BIND_SERVICE, and
     * the routes CAP_NET_ADMIN, over this netns. Before seccomp, which refuses socket(). */
    if (cfg.listeners)
      set_up_capture(&cfg);
  }

  current_step = "privileges";
  drop_capabilities();
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
    fail("privileges", "prctl", "PR_SET_NO_NEW_PRIVS");
  apply_rlimits(&cfg);
  if (setsid() < 0)
    fail("privileges", "setsid", NULL);

  /* stdio of the helper may be the supervisor's terminal: never hand it to the sandbox. */
  current_step = "fds";
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null < 0)
    fail("fds", "open", "/dev/null");
  for (int fd = 0; fd < 3; fd++)
    if (dup2(null, fd) < 0)
      fail("fds", "dup2", "/dev/null");
  if (syscall(SYS_close_range, CONTROL_FD + 1, ~0U, 0) < 0)
    fail("fds", "close_range", NULL);

  /* seccomp last: every later fork inherits it, and it would block the setup above. */
  current_step = "seccomp";
  sockmem_open(&cfg); /* the watchdog's NETLINK_SOCK_DIAG socket, which seccomp refuses */
  install_seccomp(&cfg);
  send_json("{\"event\":\"ready\",\"t\":%lld}", now_ns());
  run_init(&cfg);
}
