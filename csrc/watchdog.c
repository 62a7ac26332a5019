/* Memory accounting for sandboxes without a memory cgroup (rootless on a v1 or undelegated
 * host): the init sums what its processes and its tmpfs mounts hold, every few ms.
 *
 * Counted: RssAnon of every process of the pid namespace (private anonymous memory, what an
 * allocation bomb grows; shared library pages are not counted, so 64 forked interpreters do
 * not add up to a false OOM) plus the used blocks of the sandbox's tmpfs mounts (files in
 * /sandbox, /tmp, /dev/shm are memory too). It is best-effort by nature: an allocation
 * between two polls can overshoot the limit by what a process faults in within ~10 ms. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "helper.h"

static uint64_t rss_anon(const char *pid) {
  char path[64], buf[4096];
  snprintf(path, sizeof path, "/proc/%s/status", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return 0; /* exited meanwhile */
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0)
    return 0;
  buf[n] = '\0';
  const char *line = strstr(buf, "\nRssAnon:");
  return line ? strtoull(line + 9, NULL, 10) * 1024 : 0; /* the kernel writes kB */
}

uint64_t sandbox_memory_usage(const struct config *cfg) {
  uint64_t total = 0;
  DIR *proc = opendir("/proc");
  if (proc) {
    struct dirent *entry;
    while ((entry = readdir(proc)))
      if (entry->d_name[0] >= '1' && entry->d_name[0] <= '9')
        total += rss_anon(entry->d_name);
    closedir(proc);
  }
  for (int i = 0; i < cfg->n_watch_paths; i++) {
    struct statvfs st;
    if (statvfs(cfg->watch_paths[i], &st) == 0)
      total += (uint64_t)(st.f_blocks - st.f_bfree) * st.f_frsize;
  }
  return total;
}
