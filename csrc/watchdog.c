/* The memory watchdog of a sandbox without a memory cgroup (rootless on a v1 or undelegated
 * host): its init counts what the sandbox holds (memcount.c) and kills the runs, or the
 * sandbox, above the limit.
 *
 * Counting every 10 ms cost an idle sandbox's init 2-3% of a core (9% with twenty sleeping
 * background processes): fifty sessions spent more than a core watching. Memory only grows
 * while a process of the sandbox runs, so the watchdog counts often only while something
 * may be growing, and otherwise looks cheaply, or waits for the kernel to say that
 * something runs again:
 *
 *   idle  the init is alone: nothing can grow until the supervisor asks for a run, and its
 *         message wakes the watchdog (the fd the init polls is an epoll set holding the
 *         control socket too). No timer.
 *   fast  a count every 10 ms: after a message from the supervisor (a run starting), while
 *         the count grows or the set of processes changes, within an eighth of the limit,
 *         and for ten counts after that.
 *   slow  everything quiet. Each process gets a CPU-time timer (timer_create on its process
 *         CPU clock, which any process of the namespace may set) that signals the init once
 *         the process has run 2 ms more, whatever woke it (code handed straight to a waiting
 *         interpreter never passes through the init). The kernel checks those timers when
 *         the process returns to user space, so one long system call (an mmap with
 *         MAP_POPULATE) runs unseen by them: a glance (ns_last_pid, the processes' resident
 *         pages from statm, the tmpfs mounts) comes as often as the room left under the
 *         limit could be filled at 4 GiB/s, between 25 and 250 ms; a full count every
 *         five seconds. A new process or thread, growth, or a timer means a count now and fast
 *         counting after it.
 *
 * It is best effort by nature: an allocation can overshoot by what a process faults in
 * between two counts, and, in a sandbox quiet until then, by what one system call maps
 * before the next glance. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "helper.h"

#define FAST_NS 10000000LL          /* 10 ms between counts while something may grow */
#define GLANCE_MIN_NS 25000000LL    /* slow: the glances' interval, at least */
#define GLANCE_MAX_NS 250000000LL   /* and at most */
#define FILL_BYTES_PER_NS 4         /* about 4 GiB/s: a fast allocator on one core */
#define SLOW_FULL_NS 5000000000LL   /* slow: a full count at least this often */
#define QUIET_COUNTS 10             /* fast counts without growth before going slow */
#define CPU_TRIP_NS 2000000L        /* slow: CPU time a process may use before a count */
#define GROWTH (1ULL << 20)         /* growth that keeps (or makes) counting fast */
#define EXACT_REUSE_NS 100000000LL  /* an exact count stands in for this long (see measure) */
#define OOM_GRACE_NS 200000000LL    /* for killed runs to die and free their memory */
#define TRIP_SIGNAL SIGALRM
#define GLANCE_FDS 64               /* statm files kept open: a glance preads them */

enum mode { IDLE, FAST, SLOW };

static const struct config *watched;
static int epfd = -1, tfd = -1, sigfd = -1, last_pid_fd = -1;
static enum mode mode = FAST;
static int quiet, woken, last_n;
static long long next_full, oom_grace_until, interval;
static char last_pid[16];
static uint64_t peak_memory, last_usage, last_resident;
static struct { /* the last exact count, and the cheap one taken with it */
  long long at;
  uint64_t cheap, exact;
} exact_seen;
static struct timed {
  pid_t pid;
  timer_t id;
  int statm; /* kept open for the glances (the first GLANCE_FDS processes), or -1 */
} timed[MAX_TIMED];
static int n_timed, n_statm;

static void set_timer(long long interval_ns) {
  if (interval_ns == interval)
    return;
  interval = interval_ns;
  struct itimerspec every = {{interval_ns / 1000000000, interval_ns % 1000000000},
                             {interval_ns / 1000000000, interval_ns % 1000000000}};
  if (timerfd_settime(tfd, 0, &every, NULL) < 0)
    fail("init", "timerfd_settime", NULL);
}

/* The glances' interval: the time a fast allocator needs to fill the room left. */
static long long glance_interval(uint64_t usage) {
  uint64_t room = watched->memory_watch > usage ? watched->memory_watch - usage : 0;
  long long ns = (long long)(room / FILL_BYTES_PER_NS);
  return ns < GLANCE_MIN_NS ? GLANCE_MIN_NS : ns > GLANCE_MAX_NS ? GLANCE_MAX_NS : ns;
}

static void set_mode(enum mode next, uint64_t usage) {
  mode = next;
  set_timer(next == FAST ? FAST_NS : next == SLOW ? glance_interval(usage) : 0);
}

/* ns_last_pid changed since the last count: a process or thread was created. Unreadable,
 * it always says yes (every glance then counts). */
static int pid_created(void) {
  char now[sizeof last_pid] = "";
  if (last_pid_fd < 0 || pread(last_pid_fd, now, sizeof now - 1, 0) <= 0)
    return 1;
  return strcmp(now, last_pid) != 0;
}

static void remember_last_pid(void) {
  memset(last_pid, 0, sizeof last_pid);
  if (last_pid_fd >= 0 && pread(last_pid_fd, last_pid, sizeof last_pid - 1, 0) < 0)
    last_pid[0] = '\0';
}

static int start_timer(struct timed *t) {
  clockid_t clock;
  struct sigevent ev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = TRIP_SIGNAL};
  if (clock_getcpuclockid(t->pid, &clock) != 0 || timer_create(clock, &ev, &t->id) != 0)
    return -1;
  t->statm = -1;
  if (n_statm < GLANCE_FDS) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/statm", (int)t->pid);
    if ((t->statm = open(path, O_RDONLY | O_CLOEXEC)) >= 0)
      n_statm++;
  }
  return 0;
}

static void stop_timer(const struct timed *t) {
  timer_delete(t->id);
  if (t->statm >= 0) {
    close(t->statm);
    n_statm--;
  }
}

/* Each process of `procs` (the init aside) gets its timer, armed CPU_TRIP_NS of its CPU time
 * from now; timers of processes gone are deleted. A timer whose process died and whose pid
 * came back refuses to be armed: it is made anew for the new process. Both lists are in
 * pid order (readdir of /proc), so one merge. Returns -1 when some process has none. */
static int arm_cpu_timers(const struct procs *procs) {
  static struct timed next[MAX_TIMED];
  struct itimerspec trip = {{0, 0}, {0, CPU_TRIP_NS}};
  int n = 0, old = 0, ok = procs->n <= MAX_TIMED ? 0 : -1;
  for (int i = 0; i < procs->n && i < MAX_TIMED; i++) {
    pid_t pid = procs->pid[i];
    while (old < n_timed && timed[old].pid < pid)
      stop_timer(&timed[old++]);
    if (pid == 1)
      continue;
    struct timed t = {pid, 0, -1};
    int have = old < n_timed && timed[old].pid == pid;
    if (have)
      t = timed[old++];
    if (have && timer_settime(t.id, 0, &trip, NULL) < 0) {
      stop_timer(&t);
      have = 0;
    }
    if (!have && start_timer(&t) < 0) {
      ok = -1; /* exited meanwhile, or out of timers */
      continue;
    }
    if (!have && timer_settime(t.id, 0, &trip, NULL) < 0) {
      stop_timer(&t);
      ok = -1;
      continue;
    }
    next[n++] = t;
  }
  while (old < n_timed)
    stop_timer(&timed[old++]);
  memcpy(timed, next, sizeof next[0] * (size_t)n);
  n_timed = n;
  return ok;
}

static void drop_cpu_timers(void) {
  for (int i = 0; i < n_timed; i++)
    stop_timer(&timed[i]);
  n_timed = 0;
}

/* The timed processes' resident pages (statm: one pread each where the file is kept open)
 * and the tmpfs mounts' used blocks. A process gone reads as nothing. */
static uint64_t resident(void) {
  static long page;
  if (!page)
    page = sysconf(_SC_PAGESIZE);
  uint64_t total = tmpfs_bytes(watched);
  for (int i = 0; i < n_timed; i++) {
    char buf[128];
    int fd = timed[i].statm;
    if (fd < 0) {
      snprintf(buf, sizeof buf, "/proc/%d/statm", (int)timed[i].pid);
      fd = open(buf, O_RDONLY | O_CLOEXEC);
    }
    ssize_t n = fd < 0 ? -1 : pread(fd, buf, sizeof buf - 1, 0);
    if (fd >= 0 && fd != timed[i].statm)
      close(fd);
    unsigned long long size, pages;
    if (n > 0 && (buf[n] = '\0', sscanf(buf, "%llu %llu", &size, &pages) == 2))
      total += pages * (uint64_t)page;
  }
  return total;
}

/* The count the limit is held against. Over the limit, the cheap count may only be counting
 * shared pages several times: the exact count decides. A recent exact count stands in for
 * one, plus whatever the cheap count grew since (all real growth shows there), so a
 * sandbox that shares a lot does not walk every page table every 10 ms. */
static uint64_t measure(struct procs *procs) {
  uint64_t cheap = sandbox_memory_usage(watched, 0, procs);
  if (cheap <= watched->memory_watch)
    return cheap;
  long long now = now_ns();
  if (now - exact_seen.at < EXACT_REUSE_NS) {
    uint64_t estimate =
        exact_seen.exact + (cheap > exact_seen.cheap ? cheap - exact_seen.cheap : 0);
    if (estimate <= watched->memory_watch)
      return estimate;
  }
  struct procs again;
  uint64_t exact = sandbox_memory_usage(watched, 1, &again);
  exact_seen.at = now;
  exact_seen.cheap = cheap;
  exact_seen.exact = exact;
  return exact;
}

/* After a count: how soon the next one. */
static void schedule(uint64_t usage, const struct procs *procs) {
  uint64_t limit = watched->memory_watch;
  int lively = woken || usage > last_usage + GROWTH || procs->n != last_n ||
               usage >= limit - limit / 8;
  woken = 0;
  last_usage = usage;
  last_n = procs->n;
  remember_last_pid();
  if (procs->n <= 1) { /* the init alone: the next run's message wakes the watchdog */
    drop_cpu_timers();
    quiet = 0;
    set_mode(IDLE, usage);
  } else if (lively || (mode != SLOW && ++quiet < QUIET_COUNTS)) {
    if (lively)
      quiet = 0;
    set_mode(FAST, usage);
  } else if (arm_cpu_timers(procs) < 0) {
    set_mode(FAST, usage); /* a process without a timer could run unseen */
  } else {
    last_resident = resident();
    next_full = now_ns() + SLOW_FULL_NS;
    set_mode(SLOW, usage);
  }
}

/* Slow: anything new since the last count? A process created (it has no timer yet), or
 * memory grown. */
static int glance(void) {
  return pid_created() || resident() > last_resident + GROWTH;
}

/* One count: remember the peak, and act when the sandbox is over the limit. A persistent
 * sandbox loses the runs going on (kill_runs_for_oom); if that frees too little (files in
 * its tmpfs, background processes), and always in an ephemeral sandbox, the sandbox ends.
 * Returns the peak so far. */
uint64_t watchdog_check(void) {
  struct procs procs;
  uint64_t usage = measure(&procs);
  if (usage > peak_memory)
    peak_memory = usage;
  if (usage > watched->memory_watch && now_ns() >= oom_grace_until) {
    if (!kill_runs_for_oom(usage)) {
      send_json("{\"event\":\"oom\",\"usage\":%llu}", (unsigned long long)usage);
      _exit(0); /* pid 1 exiting: the kernel kills every process of the namespace */
    }
    oom_grace_until = now_ns() + OOM_GRACE_NS;
  }
  schedule(usage, &procs);
  return peak_memory;
}

int watchdog_start(const struct config *cfg) {
  watched = cfg;
  sigset_t trip;
  sigemptyset(&trip);
  sigaddset(&trip, TRIP_SIGNAL);
  /* Blocked, so queued for the signalfd; every user process starts with an empty mask. */
  if (sigprocmask(SIG_BLOCK, &trip, NULL) < 0)
    fail("init", "sigprocmask", NULL);
  sigfd = signalfd(-1, &trip, SFD_CLOEXEC | SFD_NONBLOCK);
  tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (sigfd < 0 || tfd < 0 || epfd < 0)
    fail("init", "watchdog", NULL);
  /* The control socket too, level-triggered: its message wakes the watchdog before the
   * init reads it (the watchdog never does). */
  int fds[] = {tfd, sigfd, CONTROL_FD};
  for (int i = 0; i < 3; i++) {
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fds[i], &ev) < 0)
      fail("init", "epoll_ctl", NULL);
  }
  last_pid_fd = open("/proc/sys/kernel/ns_last_pid", O_RDONLY | O_CLOEXEC);
  set_mode(FAST, 0);
  return epfd;
}

/* The epoll set is readable: a tick, a process's CPU timer, or the supervisor's message. */
void watchdog_tick(int fd) {
  struct epoll_event events[3];
  int n = epoll_wait(fd, events, 3, 0), ticked = 0, tripped = 0;
  for (int i = 0; i < n; i++) {
    if (events[i].data.fd == tfd) {
      uint64_t expirations;
      ticked = read(tfd, &expirations, sizeof expirations) > 0;
    } else if (events[i].data.fd == sigfd) {
      /* Only the kernel's timers count: a TRIP_SIGNAL user code sends pid 1 (SI_USER,
       * SI_QUEUE; no process can forge SI_TIMER for another) is drained and ignored. */
      struct signalfd_siginfo si;
      while (read(sigfd, &si, sizeof si) == sizeof si)
        tripped |= si.ssi_code == SI_TIMER;
    } else { /* the control socket: a run may be starting */
      woken = 1;
      quiet = 0;
      set_mode(FAST, last_usage);
    }
  }
  if (tripped) {
    woken = 1;
    watchdog_check();
  } else if (ticked && mode == FAST) {
    watchdog_check();
  } else if (ticked && mode == SLOW) {
    woken = glance();
    if (woken || now_ns() >= next_full)
      watchdog_check();
  }
}
