/* The reader behind output_paths: a fork of the init that never execs, reading the requested
 * files into a pipe only the supervisor reads.
 *
 * User code shares its uid, so what keeps it out is the init's non-dumpable mm: fork copies
 * it (dup_mm keeps mm->flags) and only execve or a credential change resets it. Same-uid code
 * then fails ptrace_may_access() against the reader (kernel/ptrace.c: a non-dumpable mm needs
 * CAP_SYS_PTRACE in its user namespace, the host's here), so it can neither open
 * /proc/<pid>/fd/<n> nor touch the reader's memory: the stream's only writer is this code.
 * It can still signal the reader (stop or kill it): the supervisor's deadline bounds that,
 * and a file the stream did not end is left out.
 *
 * The reader runs as the sandbox user inside the sandbox's mount namespace, so the kernel
 * confines every path and applies the user's permissions, as a shell reading the files
 * would; symlinks are followed as `[ -f "$p" ]` follows them. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "helper.h"

#ifndef PROC_SUPER_MAGIC
#define PROC_SUPER_MAGIC 0x9fa0
#endif

#define STREAM_FD 3 /* in the reader: the pipe, in place of the control socket */

static unsigned char chunk[READ_CHUNK];

/* One chunk. A write to a pipe blocks until every byte is in (pipe_write: no handler is
 * installed, so no signal interrupts it short); the loop covers a short write all the same. */
static int put(uint32_t index, const unsigned char *data, uint32_t len) {
  unsigned char head[8];
  memcpy(head, &index, 4);
  memcpy(head + 4, &len, 4);
  struct iovec iov[2] = {{head, sizeof head}, {(void *)data, len}};
  struct iovec *v = iov;
  int count = len ? 2 : 1;
  while (count) {
    ssize_t n = writev(STREAM_FD, v, count);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -1;
    while (count && (size_t)n >= v->iov_len) {
      n -= (ssize_t)v->iov_len;
      v++;
      count--;
    }
    if (count) {
      v->iov_base = (char *)v->iov_base + n;
      v->iov_len -= (size_t)n;
    }
  }
  return 0;
}

/* A regular file's fd if it fits in what is left, or -1. O_PATH first: it does not call the file's own open()
 * (open(2)), so a FIFO cannot block us and a device sees nothing; the inode it pins is then
 * reopened through /proc/self/fd, which checks read permission as a fresh open does. */
static int open_regular(const char *path, uint64_t left) {
  int pinned = open(path, O_PATH | O_CLOEXEC);
  if (pinned < 0)
    return -1;
  struct stat st;
  struct statfs fs;
  int fd = -1;
  /* Files of /proc would describe this fork of the init, not the user's work. */
  if (fstat(pinned, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size <= left &&
      fstatfs(pinned, &fs) == 0 && fs.f_type != PROC_SUPER_MAGIC) {
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", pinned);
    fd = open(self, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  }
  close(pinned);
  return fd;
}

/* One file, chunk by chunk, ended only if it was read whole within what is left. */
static int read_one(uint32_t index, const char *path, uint64_t *left) {
  int fd = open_regular(path, *left);
  if (fd < 0)
    return 0;
  uint64_t sent = 0;
  int rc = 0;
  for (;;) {
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 || (uint64_t)n > *left - sent)
      break; /* unreadable, or grown past the limit: left out */
    if (n == 0) {
      rc = put(index, NULL, 0);
      *left -= sent;
      break;
    }
    if ((rc = put(index, chunk, (uint32_t)n)) < 0)
      break;
    sent += (uint64_t)n;
  }
  close(fd);
  return rc;
}

pid_t spawn_reader(const char *const *paths, int n, uint64_t limit, int out) {
  pid_t pid = fork();
  if (pid != 0)
    return pid;
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  /* Only the stream stays open: not the control socket, the signalfd, the watchdog's fds,
   * nor drained pipes, whose EOF must not wait for us. */
  if (dup2(out, STREAM_FD) < 0 || syscall(SYS_close_range, STREAM_FD + 1, ~0U, 0) < 0)
    _exit(127);
  uint64_t left = limit;
  for (int i = 0; i < n; i++)
    if (read_one((uint32_t)i, paths[i], &left) < 0)
      _exit(1); /* the supervisor stopped reading */
  _exit(0);
}
