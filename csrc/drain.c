/* Pipes of finished persistent runs, drained by the init.
 *
 * A background process keeps its run's stdout and stderr after the run is over. Nobody
 * wants that output any more, but closing the read end would kill the process with SIGPIPE
 * at its next write (pipe_write: no readers), so the supervisor hands the read ends here and
 * the init discards what arrives, inside the sandbox, where the sandbox's cgroup (when there
 * is one) pays for it. A pipe is closed once its last writer is gone.
 *
 * The init never blocks on them: each is O_NONBLOCK, and splice to /dev/null moves pages
 * without copying them (drivers/char/mem.c, splice_write_null). The table is bounded (see
 * capacity): past it, the oldest pipe is closed, and its writers get SIGPIPE (or EPIPE), as
 * when any reader goes away. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helper.h"

#define DEV_NULL STDOUT_FILENO /* the init's stdio is /dev/null (main.c, step "fds") */
#define SPLICE_MAX (1 << 20)

static int drained[MAX_DRAINED];
static int n_drained;

/* MAX_DRAINED, or less when RLIMIT_NOFILE is low: fds a message carries beyond the fd table's
 * room are dropped (scm_detach_fds; the init sees MSG_CTRUNC and cannot run the request),
 * so a full exec request's fds, and the init's own, must always fit beside these. */
static int capacity(void) {
  static int cap = -1;
  if (cap < 0) {
    struct rlimit rl;
    long room = MAX_DRAINED;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)4 * MAX_DRAINED)
      room = ((long)rl.rlim_cur - MAX_MESSAGE_FDS - 32) / 2; /* 32: the init's own */
    cap = room < 0 ? 0 : room > MAX_DRAINED ? MAX_DRAINED : (int)room;
  }
  return cap;
}

void drain_adopt(const int *fds, int n) {
  int cap = capacity();
  for (int i = 0; i < n; i++) {
    struct stat st;
    if (cap == 0 || fstat(fds[i], &st) < 0 || !S_ISFIFO(st.st_mode) ||
        fcntl(fds[i], F_SETFL, O_NONBLOCK) < 0) {
      close(fds[i]);
      continue;
    }
    if (n_drained == cap) {
      close(drained[0]);
      memmove(drained, drained + 1, sizeof drained[0] * (size_t)(cap - 1));
      n_drained--;
    }
    drained[n_drained++] = fds[i];
  }
}

int drain_pollfds(struct pollfd *pfd) {
  for (int i = 0; i < n_drained; i++)
    pfd[i] = (struct pollfd){drained[i], POLLIN, 0};
  return n_drained;
}

/* pfd[0..n) is what drain_pollfds filled before this poll. A pipe at EOF (no writer left),
 * or one that fails, is closed; the others keep their order. */
void drain_ready(const struct pollfd *pfd, int n) {
  int kept = 0;
  for (int i = 0; i < n_drained; i++) {
    int fd = drained[i];
    if (i < n && pfd[i].revents) {
      ssize_t got = splice(fd, NULL, DEV_NULL, NULL, SPLICE_MAX, SPLICE_F_NONBLOCK);
      if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
        close(fd);
        continue;
      }
    }
    drained[kept++] = fd;
  }
  n_drained = kept;
}
