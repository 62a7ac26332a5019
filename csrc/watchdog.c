/* Memory accounting for sandboxes without a memory cgroup (rootless on a v1 or undelegated
 * host): the init sums what its processes and its namespaces hold, every 10 ms.
 *
 * Counted: the anonymous memory of every process of the pid namespace; the used blocks of
 * the sandbox's tmpfs mounts (files in /sandbox, /tmp, /dev/shm are memory too); the SysV
 * shared memory of its ipc namespace (/proc/sysvipc/shm lists only that namespace's); and
 * memfds held open, each inode once. Shared library pages are not counted, so forked
 * interpreters do not add up to a false OOM.
 *
 * The cheap pass reads RssAnon, which counts a page shared by a fork in every process that
 * maps it; when that pass is over the limit, the exact pass (Pss_Anon from smaps_rollup,
 * which walks page tables and so is too costly to run every time) decides.
 *
 * It is best effort by nature: an allocation between two polls can overshoot by what a
 * process faults in within 10 ms, and memfds are not seen once closed (even if mapped) or
 * when their process made itself non-dumpable. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "helper.h"

#define MAX_MEMFDS 1024

struct seen {
  dev_t dev[MAX_MEMFDS];
  ino_t ino[MAX_MEMFDS];
  int n;
};

/* "Key:   123 kB" in a /proc file, in bytes; 0 when absent or unreadable (exited), and
 * UINT64_MAX when the file exists but may not be read. */
static uint64_t proc_kb(const char *pid, const char *file, const char *key) {
  char path[600], buf[4096];
  snprintf(path, sizeof path, "/proc/%s/%s", pid, file);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return errno == EACCES ? UINT64_MAX : 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0)
    return 0;
  buf[n] = '\0';
  const char *line = strstr(buf, key);
  return line ? strtoull(line + strlen(key), NULL, 10) * 1024 : 0;
}

static int seen_before(struct seen *seen, const struct stat *st) {
  for (int i = 0; i < seen->n; i++)
    if (seen->dev[i] == st->st_dev && seen->ino[i] == st->st_ino)
      return 1;
  if (seen->n < MAX_MEMFDS) {
    seen->dev[seen->n] = st->st_dev;
    seen->ino[seen->n++] = st->st_ino;
  }
  return 0;
}

static uint64_t memfd_bytes(const char *pid, struct seen *seen) {
  char dir_path[300], link[600], target[64];
  snprintf(dir_path, sizeof dir_path, "/proc/%s/fd", pid);
  DIR *dir = opendir(dir_path);
  if (!dir)
    return 0;
  uint64_t total = 0;
  struct dirent *entry;
  while ((entry = readdir(dir))) {
    if (entry->d_name[0] == '.')
      continue;
    snprintf(link, sizeof link, "%s/%s", dir_path, entry->d_name);
    ssize_t len = readlink(link, target, sizeof target - 1);
    if (len < 7 || memcmp(target, "/memfd:", 7) != 0)
      continue;
    struct stat st;
    if (stat(link, &st) == 0 && !seen_before(seen, &st))
      total += (uint64_t)st.st_blocks * 512;
  }
  closedir(dir);
  return total;
}

/* The rss column of /proc/sysvipc/shm (bytes), summed over the namespace's segments. */
static uint64_t sysv_shm_bytes(void) {
  FILE *f = fopen("/proc/sysvipc/shm", "re");
  if (!f)
    return 0;
  char line[512];
  uint64_t total = 0;
  if (fgets(line, sizeof line, f)) /* header */
    while (fgets(line, sizeof line, f)) {
      unsigned long long rss;
      if (sscanf(line, "%*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %llu", &rss) == 1)
        total += rss;
    }
  fclose(f);
  return total;
}

uint64_t sandbox_memory_usage(const struct config *cfg, int exact) {
  static struct seen seen;
  seen.n = 0;
  uint64_t total = sysv_shm_bytes();
  DIR *proc = opendir("/proc");
  if (proc) {
    struct dirent *entry;
    while ((entry = readdir(proc))) {
      if (entry->d_name[0] < '1' || entry->d_name[0] > '9')
        continue;
      /* A process that made itself non-dumpable hides smaps_rollup (and its fds) from us;
       * status stays readable, so it is counted at its full RssAnon. */
      uint64_t anon = exact ? proc_kb(entry->d_name, "smaps_rollup", "\nPss_Anon:") : UINT64_MAX;
      if (anon == UINT64_MAX)
        anon = proc_kb(entry->d_name, "status", "\nRssAnon:");
      total += anon == UINT64_MAX ? 0 : anon;
      total += memfd_bytes(entry->d_name, &seen);
    }
    closedir(proc);
  }
  for (int i = 0; i < cfg->n_watch_paths; i++) {
    struct statvfs st;
    if (statvfs(cfg->watch_paths[i], &st) == 0)
      total += (uint64_t)(st.f_blocks - st.f_bfree) * st.f_frsize;
  }
  return total;
}

#define WATCH_INTERVAL_NS 10000000 /* 10 ms */
#define OOM_GRACE_NS 200000000     /* for killed runs to die and free their memory */

static const struct config *watched;
static uint64_t peak_memory;
static long long oom_grace_until;

int watchdog_start(const struct config *cfg) {
  watched = cfg;
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  struct itimerspec every = {{0, WATCH_INTERVAL_NS}, {0, WATCH_INTERVAL_NS}};
  if (tfd < 0 || timerfd_settime(tfd, 0, &every, NULL) < 0)
    fail("init", "timerfd", NULL);
  return tfd;
}

/* One pass: remember the peak, and act when the sandbox is over the limit. The cheap count
 * over-counts pages forked processes share; over the limit, the exact count decides. A
 * persistent sandbox loses the runs going on (kill_runs_for_oom); if that frees too little
 * (files in its tmpfs, background processes), and always in an ephemeral sandbox, the
 * sandbox ends. Returns the peak so far. */
uint64_t watchdog_check(void) {
  uint64_t usage = sandbox_memory_usage(watched, 0);
  if (usage > watched->memory_watch)
    usage = sandbox_memory_usage(watched, 1);
  if (usage > peak_memory)
    peak_memory = usage;
  if (usage <= watched->memory_watch || now_ns() < oom_grace_until)
    return peak_memory;
  if (kill_runs_for_oom(usage)) {
    oom_grace_until = now_ns() + OOM_GRACE_NS;
    return peak_memory;
  }
  send_json("{\"event\":\"oom\",\"usage\":%llu}", (unsigned long long)usage);
  _exit(0); /* pid 1 exiting: the kernel kills every process of the namespace */
}

void watchdog_tick(int tfd) {
  uint64_t ticks;
  if (read(tfd, &ticks, sizeof ticks) > 0)
    watchdog_check();
}
