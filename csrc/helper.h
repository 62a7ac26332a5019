/* isol8-helper: everything between clone() and execve(), and the sandbox's PID 1.
 *
 * Interface (bubblewrap's --args/--seccomp/--json-status-fd model, on one socket):
 *   fd 3 is a SOCK_SEQPACKET unix socket to the supervisor.
 *   in:  one config message ('C'), then exec requests ('X') carrying stdio fds by SCM_RIGHTS,
 *        kills ('K'), file reads ('R', the write end of a pipe with them) and pipes to drain
 *        ('D');
 *   out: one JSON object per message: {"event":"started"|"unmapped"|"listeners"|"ready"|
 *        "spawned"|"exit"|"error"|"oom"|"killed",...}.
 * Every message is a type byte followed by records: u16 tag, u16 zero, u32 length, payload.
 * The wire format is defined once, in isol8/protocol.py; the tags below mirror it. */
#ifndef ISOL8_HELPER_H
#define ISOL8_HELPER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CONTROL_FD 3
#define SANDBOX_UID 1000
#define SANDBOX_GID 1000
#define MAX_MESSAGE (4u << 20)
#define MAX_FILTERS 4
#define MAX_RLIMITS 16
#define MAX_OPS 128
#define MAX_FILES 64 /* files (and the code) written before an exec, one memfd each */
#define MAX_MESSAGE_FDS (3 + MAX_FILES)
#define MAX_CGROUP_FDS 8
#define MAX_WATCH_PATHS 8
#define MAX_ARGS 4096        /* argv entries, and env entries, of one exec request */
#define MAX_READ_PATHS 256   /* paths of one read request (output_paths) */
#define READ_CHUNK 65536     /* the largest chunk of a read stream */
#define MAX_DRAINED 256      /* pipes of finished runs the init drains at once */
#define MAX_LISTENERS 8      /* sockets of the capture record */
#define MAX_NFT 16384        /* bytes of the T_NFT batch */

/* Kinds of the fds that come with the config message. */
enum { CGROUP_V2_DIR = 'D', CGROUP_PROCS = 'P' };

/* MSG_KILL with a run id kills that run's tree; with no record, every process but pid 1.
 * MSG_READ starts a reader (reader.c) as a run: its id, a byte limit and the paths, with the
 * write end of the pipe its stream goes to. MSG_DRAIN hands over the read ends of pipes that
 * background processes may still write to (drain.c). */
enum msg_type { MSG_CONFIG = 'C', MSG_EXEC = 'X', MSG_KILL = 'K', MSG_READ = 'R', MSG_DRAIN = 'D' };

enum tag {
  /* config */
  T_HOST_UID = 1, T_HOST_GID = 2, T_HOSTNAME = 3, T_NEW_NETNS = 4, T_SECCOMP = 5,
  T_RLIMIT = 6, T_STAGING_DIR = 7,
  T_CGROUP_FDS = 8,   /* one kind byte per fd passed with the config: 'D' or 'P' below */
  T_MEMORY_WATCH = 9, /* u64: the init's watchdog kills the sandbox above this many bytes */
  T_WATCH_PATH = 19,  /* a tmpfs whose usage the watchdog counts (repeated) */
  /* mount plan, executed in order relative to the new root */
  T_OP_BIND_RO = 10, T_OP_TMPFS = 11, T_OP_DIR = 12, T_OP_FILE = 13, T_OP_SYMLINK = 14,
  T_OP_PROC = 15, T_OP_BIND_DEV = 16, T_OP_DEVPTS = 17, T_OP_RO_SELF = 18,
  T_OP_BIND_HOST = 26, /* u32 flags (BIND_HOST_RDONLY), source, target: a caller's mount */
  /* exec request */
  T_EXEC_ID = 20, T_ARG = 21, T_ENV = 22, T_CWD = 23, T_FILE_PATH = 24, T_FINAL = 25,
  /* read request (with T_EXEC_ID and T_FILE_PATH) */
  T_READ_LIMIT = 27, /* u64: the most file bytes the stream carries in all */
  /* config, with T_NEW_NETNS: local default routes on lo, and listeners made in the netns
   * and handed to the supervisor ("listeners" event); 4 bytes per listener: u8 LISTEN_TCP
   * or LISTEN_UDP, u8 LISTEN_ANY ([::], dual-stack) or LISTEN_LOOPBACK (127.0.0.1), u16
   * port (0: the kernel picks one) */
  T_CAPTURE = 28,
  /* config, with T_CAPTURE: an nfnetlink batch (isol8/network/nft.py) sent as it is to the
   * netns's NETLINK_NETFILTER socket after the routes; BATCH_BEGIN first, BATCH_END last,
   * and NLM_F_ACK on the message before BATCH_END only (net.c waits for that ack) */
  T_NFT = 29,
};

/* tmpfs flag bits in T_OP_TMPFS */
enum { TMPFS_NOEXEC = 1, TMPFS_RDONLY_LATER = 2 };
/* the bytes of a T_CAPTURE entry */
enum { LISTEN_TCP = 'T', LISTEN_UDP = 'U', LISTEN_ANY = 'A', LISTEN_LOOPBACK = 'L' };
/* flag bits in T_OP_BIND_HOST */
enum { BIND_HOST_RDONLY = 1 };

struct record {
  uint16_t tag;
  uint32_t len;
  const unsigned char *data;
};

struct reader {
  const unsigned char *p, *end;
};

struct op {
  uint16_t tag;
  const char *a, *b;       /* paths / strings, NUL-terminated inside the message buffer */
  const unsigned char *content;
  uint32_t content_len;
  uint32_t mode, flags;
  uint64_t size, inodes;
  /* T_OP_BIND_HOST, filled by open_host_mounts: the detached clone of the source (-1 until
   * then), whether it is a directory, and why it is not idmapped (as root; NULL if it is) */
  int tree, is_dir;
  const char *unmapped;
};

struct rlimit_req {
  uint32_t resource;
  uint64_t cur, max;
};

struct filter {
  const unsigned char *bpf;
  uint32_t len;
};

struct config {
  uint32_t host_uid, host_gid;
  const char *hostname, *staging;
  int new_netns;
  struct filter filters[MAX_FILTERS];
  int n_filters;
  struct rlimit_req rlimits[MAX_RLIMITS];
  int n_rlimits;
  struct op ops[MAX_OPS];
  int n_ops;
  /* cgroups: at most one v2 directory (clone3 CLONE_INTO_CGROUP) and any number of v1
   * cgroup.procs files the child's pid is written to before it may run */
  int cgroup_dir;
  int procs_fds[MAX_CGROUP_FDS];
  int n_procs_fds;
  uint64_t memory_watch;
  const char *watch_paths[MAX_WATCH_PATHS];
  int n_watch_paths;
  const unsigned char *listeners; /* T_CAPTURE's entries, 4 bytes each; NULL: no capture */
  int n_listeners;
  const unsigned char *nft; /* T_NFT's batch; NULL: none */
  uint32_t nft_len;
  uint32_t nft_ack_seq; /* the sequence number of its one message with NLM_F_ACK */
};

/* wire.c */
int next_record(struct reader *r, struct record *rec);
const char *record_str(const struct record *rec);
int record_u32(const struct record *rec, uint32_t *out);
int parse_config(const unsigned char *buf, size_t len, const int *fds, int nfds,
                 struct config *cfg);
ssize_t recv_message(int fd, unsigned char *buf, size_t cap, int *fds, int *nfds, int maxfds);
void send_json(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void send_json_fd(int fd_to_pass, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void send_json_fds(const int *fds, int nfds, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
long long now_ns(void); /* CLOCK_MONOTONIC: comparable with the supervisor's */
const char *json_str(const char *s); /* escapes into a rotating static buffer */
__attribute__((noreturn)) void fail(const char *step, const char *syscall, const char *path);
__attribute__((noreturn)) void fail_errno(int err, const char *step, const char *syscall,
                                          const char *path);
extern const char *current_step;

/* userns.c */
void write_id_maps(pid_t child, const struct config *cfg);
void become_sandbox_user(void);

/* rootfs.c */
void build_root(const struct config *cfg);

/* hostmounts.c */
void open_host_mounts(struct config *cfg, int as_root);
void report_unmapped(const struct config *cfg);
void close_host_mounts(const struct config *cfg);

/* net.c */
void bring_up_loopback(void);
void limit_conntrack(const struct config *cfg);
void set_up_capture(const struct config *cfg); /* T_CAPTURE: routes, T_NFT, listeners, event */

/* privs.c */
void lock_securebits(void);
void drop_capabilities(void);
void apply_rlimits(const struct config *cfg); /* the init's own: NOFILE and CORE */
int run_limits(const struct config *cfg);      /* a user process's: the others */
void install_seccomp(const struct config *cfg);

/* init.c */
__attribute__((noreturn)) void run_init(const struct config *cfg);
/* an "error" event of step "exec": a process that could not start (the init lives on) */
void start_failed(int has_id, uint32_t id, const char *syscall, int err, const char *path);

/* reader.c: output_paths. The stream is chunks of u32 index (into the paths), u32 length,
 * then that many bytes of the file; a chunk of length 0 ends the file, complete. A file left
 * out (missing, not regular, unreadable, over the limit) has no end chunk. */
pid_t spawn_reader(const char *const *paths, int n, uint64_t limit, int out);

/* drain.c: the read ends of finished runs' pipes, read and discarded by the init */
struct pollfd;
void drain_adopt(const int *fds, int n);
int drain_pollfds(struct pollfd *pfd); /* fills at most MAX_DRAINED entries */
void drain_ready(const struct pollfd *pfd, int n);

int kill_runs_for_oom(uint64_t usage); /* how many persistent runs it killed */

/* watchdog.c, memcount.c, sockmem.c: memory accounting without a memory cgroup */
#define MAX_TIMED 1024 /* processes the watchdog can give a CPU-time timer */
struct procs {
  int n;                /* processes of the sandbox, the init included */
  pid_t pid[MAX_TIMED]; /* the first ones, in pid order */
};
uint64_t sandbox_memory_usage(const struct config *cfg, int exact, struct procs *procs);
uint64_t tmpfs_bytes(const struct config *cfg); /* the watched tmpfs mounts' used blocks */
void sockmem_open(const struct config *cfg); /* before seccomp, which refuses it the socket */
uint64_t sockmem_bytes(void);                /* the sandbox's netns's socket buffers */
int watchdog_start(const struct config *cfg); /* an fd for the init's poll */
void watchdog_tick(int fd);                  /* that fd is readable */
uint64_t watchdog_check(void);               /* one count now; the peak so far */

#endif
