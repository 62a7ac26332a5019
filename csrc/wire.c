/* The helper's side of the control socket: strict record parsing in, JSON status out.
 * Parsing is defensive even though the supervisor is trusted: a length that runs past the
 * message, a string without its NUL or an unknown tag is an error, never a guess. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "helper.h"

const char *current_step = "start";

long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int next_record(struct reader *r, struct record *rec) {
  if (r->p == r->end)
    return 0;
  if (r->end - r->p < 8)
    return -1;
  uint16_t tag, zero;
  uint32_t len;
  memcpy(&tag, r->p, 2);
  memcpy(&zero, r->p + 2, 2);
  memcpy(&len, r->p + 4, 4);
  if (zero != 0 || (size_t)(r->end - r->p - 8) < len)
    return -1;
  rec->tag = tag;
  rec->len = len;
  rec->data = r->p + 8;
  r->p += 8 + (size_t)len;
  return 1;
}

/* A string record must end with its only NUL. */
const char *record_str(const struct record *rec) {
  if (rec->len == 0 || rec->data[rec->len - 1] != '\0' ||
      memchr(rec->data, '\0', rec->len) != rec->data + rec->len - 1)
    return NULL;
  return (const char *)rec->data;
}

int record_u32(const struct record *rec, uint32_t *out) {
  if (rec->len != 4)
    return -1;
  memcpy(out, rec->data, 4);
  return 0;
}

/* Two NUL-terminated strings back to back (source, destination). */
static int record_pair(const struct record *rec, size_t skip, const char **a, const char **b) {
  if (rec->len <= skip)
    return -1;
  const char *s = (const char *)rec->data + skip;
  size_t n = rec->len - skip;
  const char *nul = memchr(s, '\0', n);
  if (!nul)
    return -1;
  *a = s;
  *b = nul + 1;
  size_t rest = n - (size_t)(nul + 1 - s);
  if (rest == 0 || memchr(*b, '\0', rest) != *b + rest - 1)
    return -1;
  return 0;
}

static int parse_op(const struct record *rec, struct op *op) {
  memset(op, 0, sizeof *op);
  op->tag = rec->tag;
  op->tree = -1;
  switch (rec->tag) {
  case T_OP_BIND_RO:
  case T_OP_BIND_DEV:
  case T_OP_SYMLINK:
    return record_pair(rec, 0, &op->a, &op->b);
  case T_OP_PROC:
  case T_OP_DEVPTS:
  case T_OP_RO_SELF:
    return (op->a = record_str(rec)) ? 0 : -1;
  case T_OP_DIR:
    if (rec->len < 5)
      return -1;
    memcpy(&op->mode, rec->data, 4);
    {
      struct record r2 = {rec->tag, rec->len - 4, rec->data + 4};
      return (op->a = record_str(&r2)) ? 0 : -1;
    }
  case T_OP_TMPFS:
    if (rec->len < 25)
      return -1;
    memcpy(&op->mode, rec->data, 4);
    memcpy(&op->flags, rec->data + 4, 4);
    memcpy(&op->size, rec->data + 8, 8);
    memcpy(&op->inodes, rec->data + 16, 8);
    {
      struct record r2 = {rec->tag, rec->len - 24, rec->data + 24};
      return (op->a = record_str(&r2)) ? 0 : -1;
    }
  case T_OP_BIND_HOST:
    /* u32 flags, source NUL, target NUL */
    if (rec->len < 4)
      return -1;
    memcpy(&op->flags, rec->data, 4);
    if (op->flags & ~(uint32_t)BIND_HOST_RDONLY)
      return -1;
    return record_pair(rec, 4, &op->a, &op->b);
  case T_OP_FILE: {
    /* u32 mode, path NUL, content (rest) */
    if (rec->len < 6)
      return -1;
    memcpy(&op->mode, rec->data, 4);
    const char *path = (const char *)rec->data + 4;
    const char *nul = memchr(path, '\0', rec->len - 4);
    if (!nul || nul == path)
      return -1;
    op->a = path;
    op->content = (const unsigned char *)nul + 1;
    op->content_len = (uint32_t)(rec->data + rec->len - op->content);
    return 0;
  }
  }
  return -1;
}

/* T_CAPTURE: 1 to MAX_LISTENERS entries of known kinds. */
static int parse_capture(const struct record *rec, struct config *cfg) {
  if (cfg->listeners || rec->len == 0 || rec->len % 4 || rec->len / 4 > MAX_LISTENERS)
    return -1;
  for (uint32_t i = 0; i < rec->len; i += 4)
    if ((rec->data[i] != LISTEN_TCP && rec->data[i] != LISTEN_UDP) ||
        (rec->data[i + 1] != LISTEN_ANY && rec->data[i + 1] != LISTEN_LOOPBACK))
      return -1;
  cfg->listeners = rec->data;
  cfg->n_listeners = (int)(rec->len / 4);
  return 0;
}

/* T_NFT: whole netlink messages, each with its nfgenmsg, from BATCH_BEGIN to BATCH_END, and
 * NLM_F_ACK on the last one in between only. The kernel judges what they say; the framing is
 * checked here because net.c relies on it to know which answer means success. */
static int parse_nft(const struct record *rec, struct config *cfg) {
  if (cfg->nft || rec->len > MAX_NFT)
    return -1;
  const unsigned char *p = rec->data, *end = rec->data + rec->len;
  int count = 0, acks = 0, acked = -1;
  while (p < end) {
    struct nlmsghdr h;
    if ((size_t)(end - p) < NLMSG_HDRLEN)
      return -1;
    memcpy(&h, p, sizeof h);
    if (h.nlmsg_len < NLMSG_LENGTH(sizeof(struct nfgenmsg)) ||
        NLMSG_ALIGN(h.nlmsg_len) > (size_t)(end - p) || !(h.nlmsg_flags & NLM_F_REQUEST))
      return -1;
    p += NLMSG_ALIGN(h.nlmsg_len);
    /* BATCH_BEGIN exactly first, BATCH_END exactly last */
    if ((count == 0) != (h.nlmsg_type == NFNL_MSG_BATCH_BEGIN) ||
        (p == end) != (h.nlmsg_type == NFNL_MSG_BATCH_END))
      return -1;
    if (h.nlmsg_flags & NLM_F_ACK) {
      acks++;
      acked = count;
      cfg->nft_ack_seq = h.nlmsg_seq;
    }
    count++;
  }
  if (count < 3 || acks != 1 || acked != count - 2)
    return -1;
  cfg->nft = rec->data;
  cfg->nft_len = rec->len;
  return 0;
}

/* The config's fds are matched to the kinds listed in T_CGROUP_FDS, in order; any other fd,
 * or a count that differs, is an error. */
static int parse_cgroup_fds(const struct record *rec, const int *fds, int nfds,
                            struct config *cfg) {
  if ((int)rec->len != nfds)
    return -1;
  for (int i = 0; i < nfds; i++) {
    if (rec->data[i] == CGROUP_V2_DIR && cfg->cgroup_dir < 0)
      cfg->cgroup_dir = fds[i];
    else if (rec->data[i] == CGROUP_PROCS && cfg->n_procs_fds < MAX_CGROUP_FDS)
      cfg->procs_fds[cfg->n_procs_fds++] = fds[i];
    else
      return -1;
  }
  return 0;
}

int parse_config(const unsigned char *buf, size_t len, const int *fds, int nfds,
                 struct config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->host_uid = cfg->host_gid = (uint32_t)-1;
  cfg->cgroup_dir = -1;
  int saw_fds = 0;
  if (len < 1 || buf[0] != MSG_CONFIG)
    return -1;
  struct reader r = {buf + 1, buf + len};
  struct record rec;
  int rc;
  while ((rc = next_record(&r, &rec)) > 0) {
    switch (rec.tag) {
    case T_HOST_UID:
      if (record_u32(&rec, &cfg->host_uid))
        return -1;
      break;
    case T_HOST_GID:
      if (record_u32(&rec, &cfg->host_gid))
        return -1;
      break;
    case T_HOSTNAME:
      if (!(cfg->hostname = record_str(&rec)))
        return -1;
      break;
    case T_STAGING_DIR:
      if (!(cfg->staging = record_str(&rec)))
        return -1;
      break;
    case T_NEW_NETNS:
      if (rec.len != 1)
        return -1;
      cfg->new_netns = rec.data[0] != 0;
      break;
    case T_SECCOMP:
      /* struct sock_filter is 8 bytes; the kernel caps a program at 4096 instructions */
      if (cfg->n_filters == MAX_FILTERS || rec.len == 0 || rec.len % 8 || rec.len > 4096 * 8)
        return -1;
      cfg->filters[cfg->n_filters].bpf = rec.data;
      cfg->filters[cfg->n_filters++].len = rec.len;
      break;
    case T_CGROUP_FDS:
      if (saw_fds++ || parse_cgroup_fds(&rec, fds, nfds, cfg))
        return -1;
      break;
    case T_MEMORY_WATCH:
      if (rec.len != 8)
        return -1;
      memcpy(&cfg->memory_watch, rec.data, 8);
      break;
    case T_WATCH_PATH:
      if (cfg->n_watch_paths == MAX_WATCH_PATHS ||
          !(cfg->watch_paths[cfg->n_watch_paths++] = record_str(&rec)))
        return -1;
      break;
    case T_CAPTURE:
      if (parse_capture(&rec, cfg))
        return -1;
      break;
    case T_NFT:
      if (parse_nft(&rec, cfg))
        return -1;
      break;
    case T_RLIMIT:
      if (cfg->n_rlimits == MAX_RLIMITS || rec.len != 20)
        return -1;
      memcpy(&cfg->rlimits[cfg->n_rlimits].resource, rec.data, 4);
      memcpy(&cfg->rlimits[cfg->n_rlimits].cur, rec.data + 4, 8);
      memcpy(&cfg->rlimits[cfg->n_rlimits].max, rec.data + 12, 8);
      cfg->n_rlimits++;
      break;
    default:
      if (((rec.tag < T_OP_BIND_RO || rec.tag > T_OP_RO_SELF) && rec.tag != T_OP_BIND_HOST) ||
          cfg->n_ops == MAX_OPS)
        return -1;
      if (parse_op(&rec, &cfg->ops[cfg->n_ops++]))
        return -1;
    }
  }
  if (rc < 0 || cfg->host_uid == (uint32_t)-1 || cfg->host_gid == (uint32_t)-1 ||
      !cfg->staging || (!saw_fds && nfds > 0) || (cfg->listeners && !cfg->new_netns) ||
      (cfg->nft && !cfg->listeners))
    return -1;
  return 0;
}

/* One message; fds passed with it land in fds[0..*nfds). A truncated message or fd list is
 * an error: the sender always knows the size limits. */
ssize_t recv_message(int fd, unsigned char *buf, size_t cap, int *fds, int *nfds, int maxfds) {
  union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_MESSAGE_FDS)];
    struct cmsghdr align;
  } u;
  struct iovec iov = {buf, cap};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                       .msg_controllen = sizeof u.buf};
  ssize_t n;
  do
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  *nfds = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
      continue;
    int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    int *in = (int *)CMSG_DATA(c);
    for (int i = 0; i < count; i++) {
      if (*nfds < maxfds)
        fds[(*nfds)++] = in[i];
      else
        close(in[i]);
    }
  }
  if (n > 0 && (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
    errno = EMSGSIZE;
    return -1;
  }
  return n;
}

static void send_buf(const int *fds, int nfds, const char *text, size_t len) {
  struct iovec iov = {(void *)text, len};
  union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_LISTENERS)];
    struct cmsghdr align;
  } u;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds > 0) {
    msg.msg_control = u.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
  }
  /* MSG_NOSIGNAL: a supervisor that went away must not kill us with SIGPIPE mid-report;
   * the next poll() sees the hang-up and we exit cleanly. */
  while (sendmsg(CONTROL_FD, &msg, MSG_NOSIGNAL) < 0 && errno == EINTR)
    ;
}

static void vsend(const int *fds, int nfds, const char *fmt, va_list ap) {
  char text[4096];
  int n = vsnprintf(text, sizeof text, fmt, ap);
  if (n < 0)
    return;
  send_buf(fds, nfds, text, (size_t)n < sizeof text ? (size_t)n : sizeof text - 1);
}

void send_json(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsend(NULL, 0, fmt, ap);
  va_end(ap);
}

void send_json_fd(int fd_to_pass, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsend(&fd_to_pass, fd_to_pass >= 0, fmt, ap);
  va_end(ap);
}

/* At most MAX_LISTENERS fds, all in one SCM_RIGHTS message with the event. */
void send_json_fds(const int *fds, int nfds, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsend(fds, nfds > MAX_LISTENERS ? MAX_LISTENERS : nfds, fmt, ap);
  va_end(ap);
}

const char *json_str(const char *s) {
  static char bufs[4][1024];
  static int turn;
  char *out = bufs[turn++ & 3], *o = out, *end = out + sizeof bufs[0] - 8;
  for (; s && *s && o < end; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      *o++ = '\\';
      *o++ = (char)c;
    } else if (c < 0x20 || c >= 0x7f) {
      o += snprintf(o, 8, "\\u%04x", c); /* bytes, not code points: paths are bytes */
    } else {
      *o++ = (char)c;
    }
  }
  *o = '\0';
  return out;
}

void fail_errno(int err, const char *step, const char *syscall, const char *path) {
  send_json("{\"event\":\"error\",\"step\":\"%s\",\"syscall\":\"%s\",\"errno\":%d,\"path\":\"%s\"}",
            json_str(step), json_str(syscall), err, json_str(path ? path : ""));
  _exit(1);
}

void fail(const char *step, const char *syscall, const char *path) {
  fail_errno(errno, step, syscall, path);
}
