/* PID 1 of the sandbox: starts user processes on request, reaps everything, reports exits;
 * reads output_paths through a fork of itself (reader.c) and drains the pipes background
 * processes keep writing to after their run (drain.c).
 *
 * User code runs with this process's uid, so the init is hostile territory: it is not
 * dumpable, installs no signal handlers (the kernel then drops every signal sent to a
 * namespace init from inside, SIGKILL included), holds no capabilities, and exits as soon
 * as the supervisor's socket closes, which takes the whole pid namespace with it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helper.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

#define MAX_RUNS 64

struct run {
  uint32_t id;
  pid_t pid;
  int final;      /* the sandbox ends with this run (ephemeral mode) */
  int oom_killed; /* the watchdog killed its tree */
};

static struct run runs[MAX_RUNS];
static unsigned char msg[MAX_MESSAGE];

struct exec_req {
  uint32_t id;
  int has_id;
  const char *argv[MAX_ARGS + 1];
  const char *envp[MAX_ARGS + 1];
  int argc, envc, final;
  const char *cwd;
  const char *files[MAX_FILES]; /* written from fds[3 + i], in order, before the exec */
  int n_files;
};

static int parse_exec(const unsigned char *buf, size_t len, struct exec_req *req) {
  memset(req, 0, sizeof *req);
  struct reader r = {buf + 1, buf + len};
  struct record rec;
  int rc;
  while ((rc = next_record(&r, &rec)) > 0) {
    const char *s = NULL;
    if (rec.tag == T_EXEC_ID) {
      if (record_u32(&rec, &req->id))
        return -1;
      req->has_id = 1;
      continue;
    }
    if (rec.tag == T_FINAL) {
      if (rec.len != 1)
        return -1;
      req->final = rec.data[0] != 0;
      continue;
    }
    if (!(s = record_str(&rec)))
      return -1;
    switch (rec.tag) {
    case T_ARG:
      if (req->argc == MAX_ARGS)
        return -1;
      req->argv[req->argc++] = s;
      break;
    case T_ENV:
      if (req->envc == MAX_ARGS || !strchr(s, '='))
        return -1;
      req->envp[req->envc++] = s;
      break;
    case T_CWD:
      req->cwd = s;
      break;
    case T_FILE_PATH:
      if (req->n_files == MAX_FILES || s[0] != '/')
        return -1;
      req->files[req->n_files++] = s;
      break;
    default:
      return -1;
    }
  }
  return (rc < 0 || !req->has_id || req->argc == 0 || !req->cwd || req->argv[0][0] != '/') ? -1
                                                                                            : 0;
}

/* Files (the code among them) travel as sealed memfds and are written here, by the user
 * process itself (uid 1000, no privileges, inside the sandbox's mount namespace: the kernel
 * confines every path), so no argv limit applies and the init never blocks on I/O. Missing
 * parent directories are created, as `mkdir -p` would. */
static int make_dirs(const char *path, int include_last) {
  char buf[4096];
  if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
    errno = ENAMETOOLONG;
    return -1;
  }
  for (char *p = buf + 1;; p++) {
    if (*p == '/' || (*p == '\0' && include_last)) {
      char saved = *p;
      *p = '\0';
      if (mkdir(buf, 0755) < 0 && errno != EEXIST)
        return -1;
      *p = saved;
    }
    if (!*p)
      return 0;
  }
}

static int write_file(const char *path, int src) {
  if (make_dirs(path, 0) < 0)
    return -1;
  int dst = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (dst < 0)
    return -1;
  struct stat st;
  if (fstat(src, &st) < 0)
    return -1;
  off_t off = 0;
  while (off < st.st_size) {
    ssize_t n = sendfile(dst, src, &off, (size_t)(st.st_size - off));
    if (n <= 0)
      return -1;
  }
  return close(dst);
}

static const struct config *config;

struct child_args {
  const struct exec_req *req;
  const int *fds; /* stdin, stdout, stderr, then one per file (checked by start_run) */
};

/* Runs in a CLONE_VM|CLONE_VFORK child, as posix_spawn does: no page tables are copied and
 * the init sleeps until the execve. The child has its own fd table, cwd and signal mask
 * (no CLONE_FILES, CLONE_FS or CLONE_THREAD), and writes only its own stack. */
static int exec_child(void *arg) {
  const struct child_args *a = arg;
  const struct exec_req *req = a->req;
  const int *fds = a->fds;
  const char *what = "sigprocmask", *where = req->argv[0];
  sigset_t none;
  sigemptyset(&none);
  if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
    goto fail;
  what = "setsid"; /* its own session and process group: no shared tty, no TIOCSTI target */
  if (setsid() < 0)
    goto fail;
  what = "write file";
  for (int i = 0; i < req->n_files; i++) {
    where = req->files[i];
    if (write_file(req->files[i], fds[3 + i]) < 0)
      goto fail;
  }
  what = "chdir";
  where = req->cwd;
  if (make_dirs(req->cwd, 1) < 0 || chdir(req->cwd) < 0)
    goto fail;
  where = req->argv[0];
  what = "setrlimit"; /* after the files: their size is the tmpfs's to cap */
  if (run_limits(config) < 0)
    goto fail;
  what = "dup2";
  for (int i = 0; i < 3; i++)
    if (dup2(fds[i], i) < 0)
      goto fail;
  /* CLOEXEC instead of close: the socket stays usable to report an execve failure. */
  what = "close_range";
  if (syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
    goto fail;
  what = "execve";
  execve(req->argv[0], (char *const *)req->argv, (char *const *)req->envp);
fail:
  start_failed(1, req->id, what, errno, where);
  _exit(127);
}

static char exec_stack[64 * 1024] __attribute__((aligned(16)));

static pid_t spawn(const struct exec_req *req, const int *fds) {
  struct child_args args = {req, fds};
  return clone(exec_child, exec_stack + sizeof exec_stack, CLONE_VM | CLONE_VFORK | SIGCHLD,
               &args);
}

/* A persistent run starts under a leader: a subreaper that keeps the run's processes
 * together, so a timeout can kill the run's tree and nothing else, and that exits with the
 * program's status. Background processes outlive the run: when the leader exits they pass
 * to pid 1 and live on until the sandbox is stopped. */
static pid_t spawn_led(const struct exec_req *req, const int *fds) {
  pid_t leader = fork();
  if (leader != 0)
    return leader;
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0) {
    start_failed(1, req->id, "prctl", errno, "PR_SET_CHILD_SUBREAPER");
    _exit(127);
  }
  pid_t child = spawn(req, fds);
  if (child < 0) {
    start_failed(1, req->id, "clone", errno, "");
    _exit(127);
  }
  for (int i = 0; i < 3 + req->n_files; i++)
    close(fds[i]); /* the run's pipes must reach EOF when its processes are done */
  int status;
  while (waitpid(child, &status, 0) < 0)
    if (errno != EINTR)
      _exit(127);
  if (WIFEXITED(status))
    _exit(WEXITSTATUS(status));
  signal(WTERMSIG(status), SIG_DFL);
  kill(getpid(), WTERMSIG(status)); /* die of the same signal: the init reports 128+n */
  _exit(128 + WTERMSIG(status));
}

/* With its run id when the request had one: the supervisor then knows the init lives on
 * and fails only that call. */
void start_failed(int has_id, uint32_t id, const char *syscall, int err, const char *path) {
  if (has_id)
    send_json("{\"event\":\"error\",\"step\":\"exec\",\"id\":%u,\"syscall\":\"%s\","
              "\"errno\":%d,\"path\":\"%s\"}", id, syscall, err, json_str(path));
  else
    send_json("{\"event\":\"error\",\"step\":\"exec\",\"syscall\":\"%s\",\"errno\":%d,"
              "\"path\":\"%s\"}", syscall, err, json_str(path));
}

static int free_slot(void) {
  for (int i = 0; i < MAX_RUNS; i++)
    if (runs[i].pid == 0)
      return i;
  return -1;
}

static void add_run(int slot, uint32_t id, pid_t pid, int final) {
  runs[slot] = (struct run){.id = id, .pid = pid, .final = final};
  send_json("{\"event\":\"spawned\",\"id\":%u,\"pid\":%d,\"t\":%lld}", id, (int)pid,
            now_ns());
}

static void start_run(const unsigned char *buf, size_t len, int *fds, int nfds) {
  struct exec_req req;
  int slot = free_slot();
  if (parse_exec(buf, len, &req) < 0 || nfds != 3 + req.n_files) {
    start_failed(req.has_id, req.id, "parse", EINVAL, "exec request");
  } else if (slot < 0) {
    start_failed(1, req.id, "clone", EAGAIN, "");
  } else {
    pid_t pid = req.final ? spawn(&req, fds) : spawn_led(&req, fds);
    if (pid < 0)
      start_failed(1, req.id, "clone", errno, "");
    else
      add_run(slot, req.id, pid, req.final);
  }
  for (int i = 0; i < nfds; i++)
    close(fds[i]);
}

struct read_req {
  uint32_t id;
  int has_id, has_limit;
  uint64_t limit;
  const char *paths[MAX_READ_PATHS];
  int n_paths;
};

static int parse_read(const unsigned char *buf, size_t len, struct read_req *req) {
  memset(req, 0, sizeof *req);
  struct reader r = {buf + 1, buf + len};
  struct record rec;
  int rc;
  while ((rc = next_record(&r, &rec)) > 0) {
    const char *s;
    if (rec.tag == T_EXEC_ID) {
      if (record_u32(&rec, &req->id))
        return -1;
      req->has_id = 1;
    } else if (rec.tag == T_READ_LIMIT && rec.len == 8) {
      memcpy(&req->limit, rec.data, 8);
      req->has_limit = 1;
    } else if (rec.tag == T_FILE_PATH && (s = record_str(&rec)) && s[0] == '/' &&
               req->n_paths < MAX_READ_PATHS) {
      req->paths[req->n_paths++] = s;
    } else {
      return -1;
    }
  }
  return (rc < 0 || !req->has_id || !req->has_limit) ? -1 : 0;
}

/* output_paths: a reader (reader.c), forked as a run of its own, so that its exit is
 * reported and a kill of its id ends it. */
static void start_read(const unsigned char *buf, size_t len, int *fds, int nfds) {
  struct read_req req;
  int slot = free_slot();
  if (parse_read(buf, len, &req) < 0 || nfds != 1) {
    start_failed(req.has_id, req.id, "parse", EINVAL, "read request");
  } else if (slot < 0) {
    start_failed(1, req.id, "fork", EAGAIN, "");
  } else {
    pid_t pid = spawn_reader(req.paths, req.n_paths, req.limit, fds[0]);
    if (pid < 0)
      start_failed(1, req.id, "fork", errno, "");
    else
      add_run(slot, req.id, pid, 0);
  }
  for (int i = 0; i < nfds; i++)
    close(fds[i]); /* the stream reaches EOF when the reader is done */
}

/* Every descendant of pid, as far as /proc/<pid>/task/<tid>/children shows them. */
static int descendants(pid_t pid, pid_t *out, int n, int max) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
  DIR *tasks = opendir(path);
  if (!tasks)
    return n;
  int first = n;
  struct dirent *task;
  while ((task = readdir(tasks)) && n < max) {
    if (task->d_name[0] == '.')
      continue;
    char children[300];
    snprintf(children, sizeof children, "/proc/%d/task/%s/children", (int)pid, task->d_name);
    FILE *f = fopen(children, "re");
    if (!f)
      continue;
    int child;
    while (n < max && fscanf(f, "%d", &child) == 1)
      out[n++] = child;
    fclose(f);
  }
  closedir(tasks);
  for (int i = first, end = n; i < end && n < max; i++)
    n = descendants(out[i], out, n, max);
  return n;
}

/* Whether pid still runs: a zombie has finished exiting (its memory is freed and its
 * command line reads empty), so it no longer counts. */
static int still_running(pid_t pid) {
  char path[64], stat[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return 0;
  ssize_t n = read(fd, stat, sizeof stat - 1);
  close(fd);
  if (n <= 0)
    return 0;
  stat[n] = 0;
  char *end = strrchr(stat, ')'); /* the command name may itself hold ") " */
  return end && end[1] == ' ' && end[2] != 'Z' && end[2] != 'X';
}

/* A persistent run's tree: everything under its leader. The leader is a subreaper, so
 * orphans (setsid and double-fork daemons included) stay under it while it lives; it is
 * stopped first, since its own child's death would otherwise let it exit mid-kill and pass
 * the rest of the tree to pid 1, out of reach. SIGKILL only queues a death: a process goes
 * on until the scheduler runs its exit, so kill every descendant still running, round after
 * round (a fork racing the kill is caught by the next), until none is, and only then the
 * leader, whose exit the supervisor reports: a timeout's result must not arrive while the
 * run's processes still exist. A process stuck in uninterruptible sleep is given up to
 * about a second; it is already doomed. */
static void kill_tree(pid_t leader) {
  static pid_t found[4096];
  kill(leader, SIGSTOP);
  for (int round = 0; round < 1000; round++) {
    int n = descendants(leader, found, 0, 4096), running = 0;
    for (int i = 0; i < n; i++)
      if (still_running(found[i])) {
        kill(found[i], SIGKILL);
        running++;
      }
    if (running == 0)
      break;
    if (round > 0)
      usleep(1000);
  }
  kill(leader, SIGKILL);
}

static void kill_run(const unsigned char *buf, size_t len) {
  struct reader r = {buf + 1, buf + len};
  struct record rec;
  uint32_t id;
  if (next_record(&r, &rec) != 1 || rec.tag != T_EXEC_ID || record_u32(&rec, &id))
    return;
  for (int i = 0; i < MAX_RUNS; i++)
    if (runs[i].pid && runs[i].id == id)
      kill_tree(runs[i].pid);
}

/* The watchdog (watchdog.c) found the sandbox over its memory limit: kill the persistent runs
 * going on, each reported with its id, as a cgroup OOM kill takes a process and not the
 * session. Returns how many were killed: none means the sandbox must end. */
int kill_runs_for_oom(uint64_t usage) {
  int killed = 0;
  for (int i = 0; i < MAX_RUNS; i++) {
    if (runs[i].pid && !runs[i].final && !runs[i].oom_killed) {
      kill_tree(runs[i].pid);
      runs[i].oom_killed = 1;
      killed++;
      send_json("{\"event\":\"oom\",\"id\":%u,\"usage\":%llu}", runs[i].id,
                (unsigned long long)usage);
    }
  }
  return killed;
}

/* One reaped process: a run's end is reported with its id (others are orphans). */
static void reaped(pid_t pid, int status) {
  for (int i = 0; i < MAX_RUNS; i++) {
    if (runs[i].pid != pid)
      continue;
    runs[i].pid = 0;
    /* CPU time of every process reaped so far (orphans are reaped by us too) and, when
     * the watchdog runs, the peak it saw; the supervisor prefers cgroup counters. */
    uint64_t watched = config->memory_watch ? watchdog_check() : 0;
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    long long cpu_us = (long long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 +
                       ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
    unsigned long long peak = watched > (uint64_t)ru.ru_maxrss * 1024
                                  ? watched : (uint64_t)ru.ru_maxrss * 1024;
    if (WIFEXITED(status))
      send_json("{\"event\":\"exit\",\"id\":%u,\"code\":%d,\"cpu_us\":%lld,"
                "\"peak\":%llu}", runs[i].id, WEXITSTATUS(status), cpu_us, peak);
    else
      send_json("{\"event\":\"exit\",\"id\":%u,\"signal\":%d,\"cpu_us\":%lld,"
                "\"peak\":%llu}", runs[i].id, WTERMSIG(status), cpu_us, peak);
    /* Ephemeral: end the namespace now rather than wait for the supervisor's SIGKILL;
     * the kernel kills whatever the run left behind. */
    if (runs[i].final)
      _exit(0);
  }
}

static void reap(void) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
    reaped(pid, status);
}

/* Every process but this one, killed and reaped (kill(-1) from a namespace's init reaches
 * all the others: a fork racing one round is caught by the next), before the supervisor
 * reads /sandbox with nothing of the user's left to interfere (a workspace save). Runs
 * report their exits as usual; "killed" follows them. */
static void kill_all(void) {
  int status;
  for (;;) {
    kill(-1, SIGKILL);
    pid_t pid = waitpid(-1, &status, 0);
    if (pid > 0)
      reaped(pid, status);
    else if (errno == ECHILD)
      break;
    else if (errno != EINTR)
      fail("init", "waitpid", NULL);
  }
  send_json("{\"event\":\"killed\"}");
}

void run_init(const struct config *cfg) {
  current_step = "init";
  config = cfg;
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  /* Blocked, not handled: a queued SIGCHLD wakes the signalfd, and a SIGCHLD forged by
   * user code only causes a harmless extra waitpid. */
  if (sigprocmask(SIG_BLOCK, &chld, NULL) < 0)
    fail("init", "sigprocmask", NULL);
  int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0)
    fail("init", "signalfd", NULL);

  int tfd = cfg->memory_watch ? watchdog_start(cfg) : -1;

  /* poll() skips an entry whose fd is negative: the watchdog's, when there is none. */
  static struct pollfd pfd[3 + MAX_DRAINED];
  pfd[0] = (struct pollfd){CONTROL_FD, POLLIN, 0};
  pfd[1] = (struct pollfd){sfd, POLLIN, 0};
  pfd[2] = (struct pollfd){tfd, POLLIN, 0};
  for (;;) {
    int n_drained = drain_pollfds(pfd + 3);
    if (poll(pfd, (nfds_t)(3 + n_drained), -1) < 0) {
      if (errno == EINTR)
        continue;
      fail("init", "poll", NULL);
    }
    drain_ready(pfd + 3, n_drained); /* before any message can change the table */
    if (tfd >= 0 && pfd[2].revents)
      watchdog_tick(tfd);
    if (pfd[1].revents) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) > 0)
        ;
      reap();
    }
    if (pfd[0].revents & POLLIN) {
      int fds[MAX_MESSAGE_FDS], nfds;
      ssize_t n = recv_message(CONTROL_FD, msg, sizeof msg, fds, &nfds, MAX_MESSAGE_FDS);
      if (n <= 0)
        _exit(0); /* supervisor gone: the namespace dies with us */
      if (msg[0] == MSG_EXEC)
        start_run(msg, (size_t)n, fds, nfds);
      else if (msg[0] == MSG_READ)
        start_read(msg, (size_t)n, fds, nfds);
      else if (msg[0] == MSG_DRAIN && (size_t)n == 1)
        drain_adopt(fds, nfds);
      else if (msg[0] == MSG_KILL && (size_t)n == 1)
        kill_all();
      else if (msg[0] == MSG_KILL)
        kill_run(msg, (size_t)n);
      else
        for (int i = 0; i < nfds; i++)
          close(fds[i]);
    } else if (pfd[0].revents & (POLLHUP | POLLERR)) {
      _exit(0);
    }
  }
}
