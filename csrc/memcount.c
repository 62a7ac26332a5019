/* What a sandbox without a memory cgroup holds, as its init counts it (watchdog.c decides
 * when).
 *
 * Counted: the private anonymous memory, the shared memory (shmem: MAP_SHARED|MAP_ANONYMOUS,
 * SysV segments, memfds, tmpfs files) and the page tables of every process of the pid
 * namespace; the used blocks of the sandbox's tmpfs mounts (files in /sandbox, /tmp,
 * /dev/shm are memory too); the SysV shared memory and message queues of its ipc namespace
 * (/proc/sysvipc lists only that namespace's); memfds held open, each inode once; the
 * socket buffers of its network namespace (sockmem.c). Shared library pages are not
 * counted, so forked interpreters do not add up to a false OOM.
 *
 * The cheap pass reads RssAnon and RssShmem from each status file. Both count a page in
 * every process that maps it (a fork's copy-on-write heap, a shared mapping), and RssShmem
 * counts again what a segment, a memfd or a tmpfs file already counts as an object: so the
 * cheap pass only ever over-counts. The exact pass (smaps_rollup's Pss_Anon and Pss_Shmem:
 * proportional, so each shared page once over all its mappers; minus the Pss of shared
 * mappings of the objects counted whole) walks page tables, too costly to run every time:
 * the watchdog runs it when the cheap pass is over the limit.
 *
 * Not seen: a process that made itself non-dumpable hides its smaps and fds (its status
 * still counts, in full); a memfd nobody holds open counts only where it is mapped; shared
 * pages no process maps (MADV_DONTNEED leaves them in the shmem object) are not counted. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "helper.h"

#define MAX_MEMFDS 1024
#define MSG_OVERHEAD 64 /* the kernel's header of each SysV message (struct msg_msg) */

struct seen {
  dev_t dev[MAX_MEMFDS];
  ino_t ino[MAX_MEMFDS];
  int n;
};

/* The values of keys ("\nKey:", in kB) of a /proc file, in bytes, into out (0 when absent);
 * -1 when the file exists but may not be read (a non-dumpable process's smaps). A process
 * that exited reads as zeros. */
static int proc_keys(const char *pid, const char *file, const char *const *keys, int n,
                     uint64_t *out) {
  char path[300], buf[8192];
  memset(out, 0, sizeof *out * (size_t)n);
  snprintf(path, sizeof path, "/proc/%s/%s", pid, file);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return errno == EACCES ? -1 : 0;
  ssize_t len = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (len < 0)
    return errno == EACCES ? -1 : 0;
  buf[len] = '\0';
  for (int i = 0; i < n; i++) {
    const char *line = strstr(buf, keys[i]);
    out[i] = line ? strtoull(line + strlen(keys[i]), NULL, 10) * 1024 : 0;
  }
  return 0;
}

static int in_seen(const struct seen *seen, dev_t dev, ino_t ino) {
  for (int i = 0; i < seen->n; i++)
    if (seen->dev[i] == dev && seen->ino[i] == ino)
      return 1;
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
    if (stat(link, &st) != 0 || in_seen(seen, st.st_dev, st.st_ino))
      continue;
    if (seen->n < MAX_MEMFDS) {
      seen->dev[seen->n] = st.st_dev;
      seen->ino[seen->n++] = st.st_ino;
    }
    total += (uint64_t)st.st_blocks * 512;
  }
  closedir(dir);
  return total;
}

/* Column `column` (0-based) of every line but the header of a /proc/sysvipc file, summed;
 * with `per_line`, plus that much times column `count_column`. */
static uint64_t sysv_column(const char *file, int column, int count_column, uint64_t per_line) {
  FILE *f = fopen(file, "re");
  if (!f)
    return 0;
  char line[512];
  uint64_t total = 0;
  if (fgets(line, sizeof line, f)) /* header */
    while (fgets(line, sizeof line, f)) {
      char *p = line;
      unsigned long long value = 0, count = 0;
      for (int i = 0; i <= column || i <= count_column; i++) {
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        if (end == p)
          break;
        if (i == column)
          value = v;
        if (i == count_column)
          count = v;
        p = end;
      }
      total += value + count * per_line;
    }
  fclose(f);
  return total;
}

static uint64_t sysv_bytes(void) {
  /* shm: the rss column (15th) is every page of the segment, mapped or not; msg: cbytes
   * (4th) and qnum (5th). */
  return sysv_column("/proc/sysvipc/shm", 14, 14, 0) +
         sysv_column("/proc/sysvipc/msg", 3, 4, MSG_OVERHEAD);
}

static dev_t tmpfs_dev[MAX_WATCH_PATHS];

uint64_t tmpfs_bytes(const struct config *cfg) {
  uint64_t total = 0;
  for (int i = 0; i < cfg->n_watch_paths; i++) {
    struct statvfs st;
    if (statvfs(cfg->watch_paths[i], &st) == 0)
      total += (uint64_t)(st.f_blocks - st.f_bfree) * st.f_frsize;
    if (!tmpfs_dev[i]) {
      struct stat s;
      if (stat(cfg->watch_paths[i], &s) == 0)
        tmpfs_dev[i] = s.st_dev;
    }
  }
  return total;
}

/* The Pss of pid's mappings of what is counted whole as an object: SysV segments, memfds
 * some process holds open, files of the watched tmpfs mounts (a program run from /sandbox
 * maps its file). Of a private mapping, only the pages still the object's: its Pss but the
 * copies written (Anonymous, their Rss: where forks share copies this takes out too little,
 * never too much). getline: a path (a file name is the user's to choose) never splits a
 * line. */
static uint64_t object_mapped_pss(const char *pid, const struct config *cfg,
                                  const struct seen *memfds) {
  char path[300];
  snprintf(path, sizeof path, "/proc/%s/smaps", pid);
  FILE *f = fopen(path, "re");
  if (!f)
    return 0;
  char *line = NULL;
  size_t cap = 0;
  int object = 0, shared = 0;
  uint64_t total = 0, pss = 0, copied = 0;
  while (getline(&line, &cap, f) > 0) {
    unsigned long start, end, offset, inode;
    unsigned major, minor;
    char perms[5];
    int name = 0;
    if (sscanf(line, "%lx-%lx %4s %lx %x:%x %lu %n", &start, &end, perms, &offset, &major,
               &minor, &inode, &name) >= 7) {
      if (object)
        total += shared ? pss : pss > copied ? pss - copied : 0;
      dev_t dev = makedev(major, minor);
      shared = perms[3] == 's';
      object = (name && strncmp(line + name, "/SYSV", 5) == 0) ||
               in_seen(memfds, dev, (ino_t)inode);
      for (int i = 0; i < cfg->n_watch_paths; i++)
        object |= tmpfs_dev[i] && tmpfs_dev[i] == dev;
      pss = copied = 0;
    } else if (object && strncmp(line, "Pss:", 4) == 0) {
      pss = strtoull(line + 4, NULL, 10) * 1024;
    } else if (object && strncmp(line, "Anonymous:", 10) == 0) {
      copied = strtoull(line + 10, NULL, 10) * 1024;
    }
  }
  if (object)
    total += shared ? pss : pss > copied ? pss - copied : 0;
  free(line);
  fclose(f);
  return total;
}

/* VmPTE: the page tables, the process's own and unmapped by it. Touching one byte every
 * 2 MiB of a sparse mapping costs a 4 KiB page-table page per 4 KiB page of memory. */
static const char *const STATUS_KEYS[] = {"\nRssAnon:", "\nRssShmem:", "\nVmPTE:"};
static const char *const ROLLUP_KEYS[] = {"\nPss_Anon:", "\nPss_Shmem:"};

/* A process's share: its status figures (cheap), or its proportional ones with the objects'
 * mappings taken out (exact). A non-dumpable process's smaps may not be read: its status
 * still may, and counts it in full. */
static uint64_t process_bytes(const char *pid, const struct config *cfg, int exact,
                              const struct seen *memfds) {
  uint64_t status[3], pss[2];
  if (proc_keys(pid, "status", STATUS_KEYS, 3, status) < 0)
    return 0;
  if (exact && proc_keys(pid, "smaps_rollup", ROLLUP_KEYS, 2, pss) == 0) {
    uint64_t objects = pss[1] ? object_mapped_pss(pid, cfg, memfds) : 0;
    return pss[0] + pss[1] - (objects < pss[1] ? objects : pss[1]) + status[2];
  }
  return status[0] + status[1] + status[2];
}

uint64_t sandbox_memory_usage(const struct config *cfg, int exact, struct procs *procs) {
  static struct seen memfds;
  memfds.n = 0;
  procs->n = 0;
  uint64_t total = sysv_bytes() + tmpfs_bytes(cfg) + sockmem_bytes();
  DIR *proc = opendir("/proc");
  if (!proc)
    return total;
  struct dirent *entry;
  while ((entry = readdir(proc))) {
    if (entry->d_name[0] < '1' || entry->d_name[0] > '9')
      continue;
    if (procs->n < MAX_TIMED)
      procs->pid[procs->n] = (pid_t)atoi(entry->d_name);
    procs->n++;
    total += memfd_bytes(entry->d_name, &memfds);
    if (!exact)
      total += process_bytes(entry->d_name, cfg, 0, NULL);
  }
  if (exact) { /* every memfd held open is known before any mapping is judged */
    rewinddir(proc);
    while ((entry = readdir(proc)))
      if (entry->d_name[0] >= '1' && entry->d_name[0] <= '9')
        total += process_bytes(entry->d_name, cfg, 1, &memfds);
  }
  closedir(proc);
  return total;
}
