/* Socket buffers of the sandbox's own network namespace, for the memory watchdog.
 *
 * Data queued in a socket is kernel memory its process never maps, so no /proc counter of
 * the process shows it: a socketpair written and never read held 1.2 GB under a 128 MiB
 * limit. NETLINK_SOCK_DIAG dumps every socket of the namespace the asking socket lives in,
 * with the kernel's own meminfo (sk_get_meminfo: the truesize of what is queued), and asks
 * for no privilege. The init opens it before seccomp, which refuses user code any netlink
 * protocol but NETLINK_ROUTE, and only in a namespace of the sandbox's own: in the host's
 * it would count the host's sockets.
 *
 * Counted, each byte once: a unix socket's sent data still queued at its peer (wmem: the
 * sender is charged for it); a unix stream socket's queue whose sender has closed, at its
 * length (the sender's charge went with it); inet sockets' receive queues, send queues,
 * backlog and option memory (tcp, udp, udplite, mptcp, v4 and v6); netlink receive queues.
 * Not seen: a unix connection never accepted whose client closed (it is in no table), and
 * datagrams whose sender closed (the receiver shows the first one's size only). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/netlink_diag.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "helper.h"

#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif

#define DUMP_SHARE 20               /* a dump waits 20 times what the last one cost */
#define INET_MAX_AGE_NS 1000000000LL /* an inet dump stands in this long while quiet */

static int diag_fd = -1, protocols_fd = -1, sockstat_fd = -1;
static ino_t diag_ino;           /* our own socket: the dump's replies queue in it */
static long baseline = -1;       /* this namespace's sockets before any user process: ours */
static long netlink_baseline;    /* the netlink ones among them */

/* Which dumps to ask, and how often. "sockets: used" of /proc/net/sockstat (a cheap read)
 * counts this namespace's sockets: none of the user's, no dump. Then /proc/net/protocols
 * (dearer) gives the count per protocol. Dumping tcp or udp walks a hash table every
 * namespace shares, sized by the host's memory: milliseconds, however few sockets are
 * ours. So a dump waits DUMP_SHARE times its last cost (its CPU stays under 5%), and an
 * inet dump stands in while the protocol's memory (that column: the kernel's count, for
 * every namespace, of the pages its sockets hold) has not moved, for up to a second.
 * Between dumps the last one's count stands. */
static struct dump {
  const char *name;  /* its line in /proc/net/protocols */
  uint8_t family;
  uint16_t protocol; /* 0: unix or netlink; MPTCP needs the extended request below */
  int unsupported;   /* the kernel has no handler for it: not asked again */
  long sockets, memory;     /* this pass's columns (memory -1: not accounted) */
  long dumped_memory;       /* the memory column at the last dump */
  long long dumped_at, cost; /* when, and what it took (ns) */
  uint64_t bytes;           /* what the last dump counted */
} dumps[] = {
    {"UNIX", AF_UNIX, 0},          {"TCP", AF_INET, IPPROTO_TCP},
    {"TCPv6", AF_INET6, IPPROTO_TCP}, {"UDP", AF_INET, IPPROTO_UDP},
    {"UDPv6", AF_INET6, IPPROTO_UDP}, {"UDP-Lite", AF_INET, IPPROTO_UDPLITE},
    {"UDPLITEv6", AF_INET6, IPPROTO_UDPLITE}, {"MPTCP", AF_INET, IPPROTO_MPTCP},
    {"MPTCPv6", AF_INET6, IPPROTO_MPTCP}, {"NETLINK", AF_NETLINK, 0},
};
#define N_DUMPS (sizeof dumps / sizeof dumps[0])

static long sockets_used(void) {
  char buf[512];
  long used;
  ssize_t n = sockstat_fd < 0 ? -1 : pread(sockstat_fd, buf, sizeof buf - 1, 0);
  if (n <= 0)
    return -1;
  buf[n] = '\0';
  return sscanf(buf, "sockets: used %ld", &used) == 1 ? used : -1;
}

/* Each dump's columns from /proc/net/protocols ("UNIX-STREAM" adds to "UNIX"); -1 when it
 * cannot be read (then every dump is asked). */
static int count_sockets(void) {
  char buf[8192];
  ssize_t n = protocols_fd < 0 ? -1 : pread(protocols_fd, buf, sizeof buf - 1, 0);
  if (n <= 0)
    return -1;
  buf[n] = '\0';
  for (size_t i = 0; i < N_DUMPS; i++)
    dumps[i].sockets = 0;
  for (char *line = strchr(buf, '\n'); line; line = strchr(line, '\n')) {
    char name[32];
    long size, sockets, memory;
    if (sscanf(++line, "%31s %ld %ld %ld", name, &size, &sockets, &memory) != 4)
      continue;
    if (strcmp(name, "UNIX-STREAM") == 0)
      name[4] = '\0';
    for (size_t i = 0; i < N_DUMPS; i++)
      if (strcmp(name, dumps[i].name) == 0) {
        dumps[i].sockets += sockets;
        dumps[i].memory = memory;
      }
  }
  return 0;
}

void sockmem_open(const struct config *cfg) {
  if (!cfg->memory_watch || !cfg->new_netns)
    return;
  diag_fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (diag_fd < 0)
    fail("init", "socket", "NETLINK_SOCK_DIAG");
  /* The kernel always answers a dump; a bound keeps a surprise from hanging the init. */
  struct timeval second = {1, 0};
  struct stat st;
  if (setsockopt(diag_fd, SOL_SOCKET, SO_RCVTIMEO, &second, sizeof second) < 0 ||
      fstat(diag_fd, &st) < 0)
    fail("init", "setsockopt", "NETLINK_SOCK_DIAG");
  diag_ino = st.st_ino;
  /* Both of our namespace (/proc/net follows the opener's). */
  protocols_fd = open("/proc/net/protocols", O_RDONLY | O_CLOEXEC);
  sockstat_fd = open("/proc/net/sockstat", O_RDONLY | O_CLOEXEC);
  baseline = sockets_used();
  if (count_sockets() == 0)
    netlink_baseline = dumps[N_DUMPS - 1].sockets;
}

static int send_request(const struct dump *d, uint32_t seq) {
  struct {
    struct nlmsghdr h;
    union {
      struct unix_diag_req u;
      struct inet_diag_req_v2 i;
      struct netlink_diag_req n;
      unsigned char mptcp[sizeof(struct inet_diag_req_v2) + 8]; /* + INET_DIAG_REQ_PROTOCOL */
    } r;
  } req;
  memset(&req, 0, sizeof req);
  req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.h.nlmsg_seq = seq;
  size_t len;
  if (d->family == AF_UNIX) {
    req.r.u.sdiag_family = AF_UNIX;
    req.r.u.udiag_states = ~0U;
    req.r.u.udiag_show = UDIAG_SHOW_MEMINFO | UDIAG_SHOW_RQLEN | UDIAG_SHOW_PEER;
    len = sizeof req.r.u;
  } else if (d->family == AF_NETLINK) {
    req.r.n.sdiag_family = AF_NETLINK;
    req.r.n.sdiag_protocol = NDIAG_PROTO_ALL;
    req.r.n.ndiag_show = NDIAG_SHOW_MEMINFO;
    len = sizeof req.r.n;
  } else {
    req.r.i.sdiag_family = d->family;
    req.r.i.idiag_states = ~0U;
    req.r.i.idiag_ext = 1 << (INET_DIAG_SKMEMINFO - 1);
    len = sizeof req.r.i;
    if (d->protocol > 255) { /* the u8 field cannot say it: an attribute does (5.9+) */
      struct rtattr *attr = (struct rtattr *)(req.r.mptcp + sizeof req.r.i);
      attr->rta_type = INET_DIAG_REQ_PROTOCOL;
      attr->rta_len = RTA_LENGTH(sizeof(uint32_t));
      uint32_t protocol = d->protocol;
      memcpy(RTA_DATA(attr), &protocol, sizeof protocol);
      len += RTA_SPACE(sizeof(uint32_t));
    } else {
      req.r.i.sdiag_protocol = (uint8_t)d->protocol;
    }
  }
  req.h.nlmsg_len = NLMSG_LENGTH(len);
  return send(diag_fd, &req, req.h.nlmsg_len, 0) == (ssize_t)req.h.nlmsg_len ? 0 : -1;
}

static uint64_t meminfo_sum(const uint32_t *m, int inet) {
  uint64_t sum = (uint64_t)m[SK_MEMINFO_RMEM_ALLOC] + m[SK_MEMINFO_WMEM_ALLOC] +
                 m[SK_MEMINFO_OPTMEM];
  if (inet) /* tcp's send and retransmit queues; the backlog waits for the socket's lock */
    sum += (uint64_t)m[SK_MEMINFO_WMEM_QUEUED] + m[SK_MEMINFO_BACKLOG];
  return sum;
}

/* One socket's count from its dump message. */
static uint64_t socket_bytes(const struct dump *d, const struct nlmsghdr *h) {
  size_t head = d->family == AF_UNIX     ? sizeof(struct unix_diag_msg)
                : d->family == AF_NETLINK ? sizeof(struct netlink_diag_msg)
                                          : sizeof(struct inet_diag_msg);
  if (h->nlmsg_len < NLMSG_LENGTH(head))
    return 0;
  if (d->family == AF_NETLINK &&
      ((const struct netlink_diag_msg *)NLMSG_DATA(h))->ndiag_ino == diag_ino)
    return 0;
  int meminfo_type = d->family == AF_UNIX     ? UNIX_DIAG_MEMINFO
                     : d->family == AF_NETLINK ? NETLINK_DIAG_MEMINFO
                                               : INET_DIAG_SKMEMINFO;
  uint64_t bytes = 0, queued = 0;
  int has_peer = 0;
  int len = (int)(h->nlmsg_len - NLMSG_LENGTH(head));
  const struct rtattr *attr = (const void *)((const char *)NLMSG_DATA(h) + NLMSG_ALIGN(head));
  for (; RTA_OK(attr, len); attr = RTA_NEXT(attr, len)) {
    if (attr->rta_type == meminfo_type && RTA_PAYLOAD(attr) >= SK_MEMINFO_BACKLOG * 4 + 4)
      bytes += meminfo_sum(RTA_DATA(attr), d->family == AF_INET || d->family == AF_INET6);
    else if (d->family == AF_UNIX && attr->rta_type == UNIX_DIAG_PEER &&
             RTA_PAYLOAD(attr) >= 4 && *(const uint32_t *)RTA_DATA(attr) != 0)
      has_peer = 1;
    else if (d->family == AF_UNIX && attr->rta_type == UNIX_DIAG_RQLEN &&
             RTA_PAYLOAD(attr) >= sizeof(struct unix_diag_rqlen))
      queued = ((const struct unix_diag_rqlen *)RTA_DATA(attr))->udiag_rqueue;
  }
  if (d->family == AF_UNIX) {
    const struct unix_diag_msg *u = NLMSG_DATA(h);
    /* A listener's "queue" is its count of pending connections; a datagram socket's is the
     * size of the first datagram; a stream socket's, the bytes waiting, which its live
     * sender already pays for. */
    if (!has_peer && u->udiag_state != TCP_LISTEN && u->udiag_type != SOCK_DGRAM)
      bytes += queued;
  }
  return bytes;
}

static uint64_t dump_bytes(struct dump *d, uint32_t seq) {
  static unsigned char buf[65536] __attribute__((aligned(NLMSG_ALIGNTO)));
  if (send_request(d, seq) < 0)
    return 0;
  uint64_t total = 0;
  for (;;) {
    ssize_t n = recv(diag_fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return total;
    int left = (int)n;
    for (struct nlmsghdr *h = (void *)buf; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
      if (h->nlmsg_seq != seq) /* the rest of a dump an earlier pass gave up on */
        continue;
      if (h->nlmsg_type == NLMSG_DONE)
        return total;
      if (h->nlmsg_type == NLMSG_ERROR) {
        int err = -((struct nlmsgerr *)NLMSG_DATA(h))->error;
        if (err == ENOENT || err == EOPNOTSUPP || err == EINVAL || err == EAFNOSUPPORT)
          d->unsupported = 1;
        return total;
      }
      if (h->nlmsg_type == SOCK_DIAG_BY_FAMILY)
        total += socket_bytes(d, h);
    }
  }
}

/* Whether d's last count can stand this pass. */
static int recent_enough(const struct dump *d, long long now) {
  if (now - d->dumped_at < DUMP_SHARE * d->cost)
    return 1;
  int inet = d->family == AF_INET || d->family == AF_INET6;
  return inet && d->memory >= 0 && d->memory == d->dumped_memory &&
         now - d->dumped_at < INET_MAX_AGE_NS;
}

uint64_t sockmem_bytes(void) {
  static uint32_t seq;
  if (diag_fd < 0)
    return 0;
  long used = sockets_used();
  if (used >= 0 && used <= baseline)
    return 0;
  int counted = count_sockets() == 0;
  uint64_t total = 0;
  for (size_t i = 0; i < N_DUMPS; i++) {
    struct dump *d = &dumps[i];
    long mine = d->family == AF_NETLINK ? netlink_baseline : 0;
    if (d->unsupported || (counted && d->sockets <= mine)) {
      d->bytes = 0;
      d->dumped_at = 0;
      continue;
    }
    long long now = now_ns();
    if (!recent_enough(d, now)) {
      d->bytes = dump_bytes(d, ++seq);
      d->dumped_at = now;
      d->cost = now_ns() - now;
      d->dumped_memory = d->memory;
    }
    total += d->bytes;
  }
  return total;
}
