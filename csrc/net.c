/* Network namespace: bring up lo with one ioctl; for filtered networking (issue 10), make
 * every address local to lo, load the supervisor's nftables batch and create the listeners
 * the supervisor serves. No netlink library, no `ip` or `nft` binary: rtnetlink messages
 * for the routes, and the batch sent as it came (isol8/network/nft.py builds it). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helper.h"

#define LISTEN_BACKLOG 512

static int lo_index;

void bring_up_loopback(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0)
    fail("network", "socket", "lo");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strcpy(ifr.ifr_name, "lo");
  if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
    fail("network", "ioctl(SIOCGIFFLAGS)", "lo");
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
    fail("network", "ioctl(SIOCSIFFLAGS)", "lo");
  if (ioctl(s, SIOCGIFINDEX, &ifr) < 0)
    fail("network", "ioctl(SIOCGIFINDEX)", "lo");
  lo_index = ifr.ifr_ifindex;
  close(s);
}

/* `ip route add local <family default> dev lo table local`: every address of the family is
 * then local, so a connect() to any of them ends in this namespace, at one of our wildcard
 * listeners or refused at once, and no packet can leave (lo is the only link). The kernel
 * insists on scope host for RTN_LOCAL (fib_props[RTN_LOCAL].scope): EINVAL otherwise. */
static void add_local_route(int nl, unsigned char family, const char *what) {
  struct {
    struct nlmsghdr nh;
    struct rtmsg rt;
    struct rtattr oif_attr;
    int oif;
  } req;
  memset(&req, 0, sizeof req);
  req.nh.nlmsg_len = sizeof req;
  req.nh.nlmsg_type = RTM_NEWROUTE;
  req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
  req.nh.nlmsg_seq = family;
  req.rt.rtm_family = family;
  req.rt.rtm_dst_len = 0;
  req.rt.rtm_table = RT_TABLE_LOCAL;
  req.rt.rtm_protocol = RTPROT_BOOT;
  req.rt.rtm_scope = RT_SCOPE_HOST;
  req.rt.rtm_type = RTN_LOCAL;
  req.oif_attr.rta_len = RTA_LENGTH(sizeof(int));
  req.oif_attr.rta_type = RTA_OIF;
  req.oif = lo_index;
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  if (sendto(nl, &req, sizeof req, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0)
    fail("network", "sendto(RTM_NEWROUTE)", what);
  /* The ack: an NLMSG_ERROR whose error is 0, or the negated errno of the refusal. */
  union {
    char buf[512];
    struct nlmsghdr align;
  } u;
  ssize_t n;
  do
    n = recv(nl, u.buf, sizeof u.buf, 0);
  while (n < 0 && errno == EINTR);
  if (n < 0)
    fail("network", "recv(NETLINK_ROUTE)", what);
  struct nlmsghdr *h = &u.align;
  if (!NLMSG_OK(h, (size_t)n) || h->nlmsg_type != NLMSG_ERROR ||
      h->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr)) || h->nlmsg_seq != family)
    fail_errno(EPROTO, "network", "RTM_NEWROUTE", what);
  const struct nlmsgerr *err = NLMSG_DATA(h);
  if (err->error)
    fail_errno(-err->error, "network", "RTM_NEWROUTE", what);
}

/* The name of the batch message with sequence number seq, for an error report. */
static const char *nft_message_name(const struct config *cfg, uint32_t seq) {
  for (const unsigned char *p = cfg->nft; p < cfg->nft + cfg->nft_len;) {
    struct nlmsghdr h;
    memcpy(&h, p, sizeof h); /* wire.c checked the framing */
    if (h.nlmsg_seq == seq) {
      if (h.nlmsg_type == NFNL_MSG_BATCH_BEGIN)
        return "nftables commit"; /* the kernel answers a failed commit on BATCH_BEGIN */
      switch (h.nlmsg_type & 0xff) {
      case NFT_MSG_NEWTABLE:
        return "NFT_MSG_NEWTABLE";
      case NFT_MSG_NEWCHAIN:
        return "NFT_MSG_NEWCHAIN";
      case NFT_MSG_NEWRULE:
        return "NFT_MSG_NEWRULE";
      }
      return "nftables message";
    }
    p += NLMSG_ALIGN(h.nlmsg_len);
  }
  return "nftables answer"; /* a sequence number the batch does not have */
}

/* Replay the T_NFT batch: nfnetlink runs it inside this sendto(), so its verdict is already
 * queued when the call returns (nft relies on the same). The first answer decides: an error
 * (a message's, or the commit's) or the ack of the batch's last message, which nfnetlink
 * queues during the batch and delivers only after a successful commit. Returns 0 when this
 * kernel has no nftables: no NETLINK_NETFILTER protocol (EPROTONOSUPPORT; EAFNOSUPPORT
 * without netlink), or no nf_tables subsystem behind it (EOPNOTSUPP on BATCH_BEGIN, from
 * nfnetlink_rcv_batch); any other failure ends the setup. */
static int load_nftables(const struct config *cfg) {
  int nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  if (nl < 0) {
    if (errno == EPROTONOSUPPORT || errno == EAFNOSUPPORT)
      return 0;
    fail("network", "socket", "NETLINK_NETFILTER");
  }
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  ssize_t n = sendto(nl, cfg->nft, cfg->nft_len, 0, (struct sockaddr *)&kernel, sizeof kernel);
  if (n < 0)
    fail("network", "sendto(NETLINK_NETFILTER)", "nftables batch");
  if ((size_t)n != cfg->nft_len)
    fail_errno(EPROTO, "network", "sendto(NETLINK_NETFILTER)", "nftables batch");
  /* An error answer carries the failing message after it; only the head is read. */
  union {
    char buf[1024];
    struct nlmsghdr align;
  } u;
  do
    n = recv(nl, u.buf, sizeof u.buf, MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0 && errno == EAGAIN)
    fail_errno(EPROTO, "network", "recv(NETLINK_NETFILTER)", "nftables: no answer");
  if (n < 0)
    fail("network", "recv(NETLINK_NETFILTER)", "nftables batch");
  struct nlmsghdr *h = &u.align;
  if ((size_t)n < NLMSG_LENGTH(sizeof(struct nlmsgerr)) || h->nlmsg_type != NLMSG_ERROR ||
      h->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr)))
    fail_errno(EPROTO, "network", "recv(NETLINK_NETFILTER)", "nftables answer");
  const struct nlmsgerr *err = NLMSG_DATA(h);
  close(nl);
  if (err->error == -EOPNOTSUPP && err->msg.nlmsg_type == NFNL_MSG_BATCH_BEGIN)
    return 0;
  if (err->error)
    fail_errno(-err->error, "network", nft_message_name(cfg, h->nlmsg_seq), "nftables batch");
  if (h->nlmsg_seq != cfg->nft_ack_seq)
    fail_errno(EPROTO, "network", nft_message_name(cfg, h->nlmsg_seq), "nftables batch");
  return 1;
}

/* One listener of the config's capture record (see helper.h); its description goes into
 * the event's "kinds" at *o. The wildcard is dual-stack [::] (IPV6_V6ONLY=0, so one socket
 * takes IPv4-mapped and IPv6 connections alike), 0.0.0.0 without IPv6. No SO_REUSEADDR:
 * nothing in the sandbox may share these ports. */
static int open_listener(const unsigned char *entry, int ipv6, char **o, char *end) {
  uint16_t port;
  memcpy(&port, entry + 2, 2);
  int udp = entry[0] == LISTEN_UDP, loopback = entry[1] == LISTEN_LOOPBACK;
  int family = ipv6 && !loopback ? AF_INET6 : AF_INET;
  int s = socket(family, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s < 0)
    fail("network", "socket", "listener");
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  socklen_t len;
  if (family == AF_INET6) {
    int off = 0;
    if (setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) < 0)
      fail("network", "setsockopt(IPV6_V6ONLY)", "listener");
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6;
    a->sin6_addr = in6addr_any;
    a->sin6_port = htons(port);
    len = sizeof *a;
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(loopback ? INADDR_LOOPBACK : INADDR_ANY);
    a->sin_port = htons(port);
    len = sizeof *a;
  }
  /* Ports below 1024 need CAP_NET_BIND_SERVICE over this netns's user namespace, which we
   * hold until drop_capabilities; the sandbox never does (EACCES). */
  if (bind(s, (struct sockaddr *)&ss, len) < 0)
    fail("network", "bind", "listener");
  if (!udp && listen(s, LISTEN_BACKLOG) < 0)
    fail("network", "listen", "listener");
  len = sizeof ss;
  if (getsockname(s, (struct sockaddr *)&ss, &len) < 0)
    fail("network", "getsockname", "listener");
  unsigned bound = ntohs(family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                            : ((struct sockaddr_in *)&ss)->sin_port);
  const char *host = family == AF_INET6 ? "[::]" : loopback ? "127.0.0.1" : "0.0.0.0";
  *o += snprintf(*o, (size_t)(end - *o), "%s:%s:%u", udp ? "udp" : "tcp", host, bound);
  return s;
}

/* A nat chain (capture="all") turns on connection tracking in this namespace, and its
 * entries fill the host's one table (nf_conntrack_max cannot be set per namespace), untouched
 * by the sandbox's memory limit. Entries end with the namespace, but until then a sandbox
 * opening and closing connections, or spraying DNS from new ports, would leave each behind
 * for minutes (TIME_WAIT 120 s, UDP 30 s). The timeouts are this namespace's own and its
 * owner may set them: seconds, so that only live connections hold entries. Established ones
 * keep the default, or an idle tunnel would lose its translation. */
static const char *const short_conntrack[][2] = {
    {"nf_conntrack_tcp_timeout_syn_sent", "5"},  {"nf_conntrack_tcp_timeout_syn_recv", "5"},
    {"nf_conntrack_tcp_timeout_fin_wait", "5"},  {"nf_conntrack_tcp_timeout_close_wait", "5"},
    {"nf_conntrack_tcp_timeout_last_ack", "5"},  {"nf_conntrack_tcp_timeout_time_wait", "2"},
    {"nf_conntrack_tcp_timeout_close", "2"},     {"nf_conntrack_udp_timeout", "2"},
    {"nf_conntrack_udp_timeout_stream", "5"},    {"nf_conntrack_icmp_timeout", "2"},
    {"nf_conntrack_icmpv6_timeout", "2"},
};

static void shorten_conntrack(void) {
  for (size_t i = 0; i < sizeof short_conntrack / sizeof *short_conntrack; i++) {
    char path[128];
    snprintf(path, sizeof path, "/proc/sys/net/netfilter/%s", short_conntrack[i][0]);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT)
      continue; /* a protocol this kernel does not track (no IPv6) */
    if (fd < 0)
      fail("network", "open", path);
    size_t len = strlen(short_conntrack[i][1]);
    if (write(fd, short_conntrack[i][1], len) != (ssize_t)len)
      fail("network", "write", path);
    close(fd);
  }
}

/* Whether the batch makes a nat chain: its NFTA_CHAIN_TYPE attribute says "nat". */
static int batch_has_nat(const struct config *cfg) {
  static const struct {
    struct nlattr attr;
    char type[4];
  } nat = {{sizeof nat, NFTA_CHAIN_TYPE}, "nat"};
  return memmem(cfg->nft, cfg->nft_len, &nat, sizeof nat) != NULL;
}

/* Before build_root(): the sandbox's /proc/sys is read-only by then, while the host's /proc,
 * still mounted here, shows this namespace's own net sysctls (they follow the opener's
 * netns). A kernel without conntrack has none of them: nothing to shorten. */
void limit_conntrack(const struct config *cfg) {
  if (cfg->nft && batch_has_nat(cfg))
    shorten_conntrack();
}

void set_up_capture(const struct config *cfg) {
  /* IPv6 may be off in this kernel (ipv6.disable=1: EAFNOSUPPORT): then IPv4 only. */
  int probe = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  int ipv6 = probe >= 0;
  if (probe >= 0)
    close(probe);
  else if (errno != EAFNOSUPPORT)
    fail("network", "socket", "AF_INET6");

  int nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (nl < 0)
    fail("network", "socket", "NETLINK_ROUTE");
  add_local_route(nl, AF_INET, "0.0.0.0/0");
  if (ipv6)
    add_local_route(nl, AF_INET6, "::/0");
  close(nl);
  int nft = cfg->nft ? load_nftables(cfg) : -1;

  int fds[MAX_LISTENERS];
  char kinds[MAX_LISTENERS * 32], *o = kinds, *end = kinds + sizeof kinds;
  for (int i = 0; i < cfg->n_listeners; i++) {
    if (i)
      *o++ = ',';
    fds[i] = open_listener(cfg->listeners + 4 * i, ipv6, &o, end);
  }
  *o = '\0';
  /* "nft" only with a batch: whether its rules are in place or this kernel has no nftables */
  send_json_fds(fds, cfg->n_listeners,
                "{\"event\":\"listeners\",\"kinds\":\"%s\",\"ipv6\":%s%s}", kinds,
                ipv6 ? "true" : "false",
                nft < 0 ? "" : nft ? ",\"nft\":true" : ",\"nft\":false");
  for (int i = 0; i < cfg->n_listeners; i++)
    close(fds[i]);
}
