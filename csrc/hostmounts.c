/* The caller's mounts (engine option `mounts`): host trees cloned on the host's own view of
 * the file system, before anything of the new root is mounted over it, and attached in the
 * new root later (rootfs.c).
 *
 * Why first: the new root is built on a staging tmpfs mounted over /tmp; a source looked up
 * after that would resolve inside the staging tree (`/tmp/etc` would be the synthesized /etc,
 * `/tmp` the new root itself). open_tree(OPEN_TREE_CLONE) gives a detached copy of the source's
 * mount tree, which nothing mounted later over the path can change.
 *
 * Who: as root, the helper's parent, still in the initial namespaces and before the clone, so
 * it can idmap the tree (below); the child inherits the descriptors. Rootless, the child, in
 * its own mount namespace (a copy of the host's) before its staging mount: an unprivileged
 * process cannot clone a mount of the initial namespace, and needs no idmap (its uid is the
 * sandbox's, see userns.c).
 *
 * Idmapped mounts (as root): the sandbox is a leased host uid that owns nothing, so without an
 * idmap every host file would show as nobody and only "other" permissions would apply. The
 * tree gets MOUNT_ATTR_IDMAP with a user namespace mapping the source's owner (uid and gid) to
 * the leased ids: the owner's files then show as the sandbox user inside, and what the sandbox
 * creates belongs to the owner on the host. That makes the seccomp filter's refusal of the
 * setuid and setgid bits (isol8/seccomp.py) what keeps a setuid-root file off the host, so a
 * read-write mount is idmapped only when the sandbox gets a seccomp filter at all. A file
 * system that cannot be idmapped (no FS_ALLOW_IDMAP: overlayfs, ...) answers EINVAL: the mount
 * keeps the plain ownership and the supervisor is told ("unmapped" event). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <linux/openat2.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helper.h"

#ifndef MOUNT_ATTR_IDMAP
#define MOUNT_ATTR_IDMAP 0x00100000
#endif

/* As root, the lookup runs with the leased uid and gid as fsuid and fsgid: the kernel checks
 * search permission on every parent as that unprivileged id, and a non-zero fsuid drops the
 * file system capabilities (cap_task_fix_setuid), so host root never resolves a path the
 * sandbox user could not. Root's supplementary groups are already gone (main.c). */
static void lookup_as(uid_t uid, gid_t gid) {
  setfsgid(gid);
  setfsuid(uid);
  /* set*fsid report the previous id, never an error: read back with an invalid id */
  if ((uid_t)setfsuid((uid_t)-1) != uid || (gid_t)setfsgid((gid_t)-1) != gid)
    fail_errno(EPERM, "mounts", "setfsuid", NULL);
}

static void lookup_as_root(void) {
  setfsuid(0);
  setfsgid(0);
}

/* The supervisor resolved the source with realpath when the engine was built, so it holds no
 * symlink; RESOLVE_NO_SYMLINKS makes a symlink swapped into it since fail the setup (ELOOP)
 * instead of redirecting the mount. The clone is recursive (AT_RECURSIVE, as MS_REC: a plain
 * bind would uncover what the host over-mounted below the source). */
static int clone_tree(const struct op *op) {
  struct open_how how = {.flags = O_PATH | O_CLOEXEC,
                         .resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
  int fd = (int)syscall(SYS_openat2, AT_FDCWD, op->a, &how, sizeof how);
  if (fd < 0)
    fail("mounts", "openat2", op->a);
  int tree = (int)syscall(SYS_open_tree, fd, "",
                          OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE | AT_EMPTY_PATH);
  if (tree < 0)
    fail("mounts", "open_tree", op->a);
  close(fd);
  return tree;
}

/* A user namespace that only describes an idmapping. The kernel maps a mount's on-disk ids
 * down through it (make_vfsuid: map_id_down), so a map line reads "<on-disk id> <id the VFS
 * sees> 1": the owner's ids become the leased ones, which the sandbox's own namespace shows
 * as 1000, and a write maps back up to the owner. Its one process waits on a pipe and exits
 * when we close it; the namespace fd outlives it. */
static int idmap_userns(uid_t owner_uid, gid_t owner_gid, uid_t uid, gid_t gid) {
  int hold[2];
  if (pipe2(hold, O_CLOEXEC) < 0)
    fail("mounts", "pipe2", NULL);
  pid_t pid = (pid_t)syscall(SYS_clone, (unsigned long)(CLONE_NEWUSER | SIGCHLD), NULL, NULL,
                             NULL, 0);
  if (pid < 0)
    fail("mounts", "clone", "idmap user namespace");
  if (pid == 0) {
    char c;
    close(hold[1]);
    while (read(hold[0], &c, 1) < 0 && errno == EINTR)
      ;
    _exit(0);
  }
  close(hold[0]);
  char path[64], line[64];
  static const char *const maps[] = {"uid_map", "gid_map"};
  for (int i = 0; i < 2; i++) {
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, maps[i]);
    int len = i == 0 ? snprintf(line, sizeof line, "%u %u 1\n", owner_uid, uid)
                     : snprintf(line, sizeof line, "%u %u 1\n", owner_gid, gid);
    int map = open(path, O_WRONLY | O_CLOEXEC);
    if (map < 0 || write(map, line, (size_t)len) != len)
      fail("mounts", "write", path);
    close(map);
  }
  snprintf(path, sizeof path, "/proc/%d/ns/user", (int)pid);
  int ns = open(path, O_RDONLY | O_CLOEXEC);
  if (ns < 0)
    fail("mounts", "open", path);
  close(hold[1]);
  while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
    ;
  return ns;
}

/* One idmap namespace per source owner, shared by the mounts of one owner's trees. */
struct idmaps {
  struct {
    uid_t uid;
    gid_t gid;
    int ns;
  } owner[MAX_OPS];
  int n;
};

/* Idmap the tree of op; 0, or the errno of a file system that cannot be idmapped. */
static int idmap_tree(const struct op *op, const struct stat *st, const struct config *cfg,
                      struct idmaps *maps) {
  int ns = -1;
  for (int i = 0; i < maps->n && ns < 0; i++)
    if (maps->owner[i].uid == st->st_uid && maps->owner[i].gid == st->st_gid)
      ns = maps->owner[i].ns;
  if (ns < 0) {
    ns = idmap_userns(st->st_uid, st->st_gid, cfg->host_uid, cfg->host_gid);
    maps->owner[maps->n].uid = st->st_uid;
    maps->owner[maps->n].gid = st->st_gid;
    maps->owner[maps->n++].ns = ns;
  }
  struct mount_attr attr = {.attr_set = MOUNT_ATTR_IDMAP, .userns_fd = (uint64_t)ns};
  if (syscall(SYS_mount_setattr, op->tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr,
              sizeof attr) == 0)
    return 0;
  if (errno == EINVAL || errno == EOPNOTSUPP)
    return errno;
  fail("mounts", "mount_setattr(MOUNT_ATTR_IDMAP)", op->a);
}

void open_host_mounts(struct config *cfg, int as_root) {
  struct idmaps maps = {.n = 0};
  for (int i = 0; i < cfg->n_ops; i++) {
    struct op *op = &cfg->ops[i];
    if (op->tag != T_OP_BIND_HOST || op->tree >= 0)
      continue;
    if (as_root)
      lookup_as(cfg->host_uid, cfg->host_gid);
    op->tree = clone_tree(op);
    if (as_root)
      lookup_as_root();
    struct stat st;
    if (fstat(op->tree, &st) < 0)
      fail("mounts", "fstat", op->a);
    if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode))
      fail_errno(EINVAL, "mounts", "bind(not a directory or regular file)", op->a);
    op->is_dir = S_ISDIR(st.st_mode);
    /* Set on the whole clone, submounts included, before it is attached: nosuid and nodev
     * always, read-only unless asked otherwise, and private, so that no mount event travels
     * between the host's tree and the sandbox's copy in either direction. */
    struct mount_attr attr = {.attr_set = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                              .propagation = MS_PRIVATE};
    if (op->flags & BIND_HOST_RDONLY)
      attr.attr_set |= MOUNT_ATTR_RDONLY;
    if (syscall(SYS_mount_setattr, op->tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr,
                sizeof attr) < 0)
      fail("mounts", "mount_setattr", op->a);
    if (!as_root)
      continue;
    int err;
    if (!(op->flags & BIND_HOST_RDONLY) && cfg->n_filters == 0)
      op->unmapped = "read-write without a seccomp filter";
    else if ((err = idmap_tree(op, &st, cfg, &maps)) != 0)
      op->unmapped = strerrorname_np(err);
  }
  for (int i = 0; i < maps.n; i++)
    close(maps.owner[i].ns);
}

void report_unmapped(const struct config *cfg) {
  for (int i = 0; i < cfg->n_ops; i++)
    if (cfg->ops[i].tag == T_OP_BIND_HOST && cfg->ops[i].unmapped)
      send_json("{\"event\":\"unmapped\",\"target\":\"%s\",\"reason\":\"%s\"}",
                json_str(cfg->ops[i].b), json_str(cfg->ops[i].unmapped));
}

void close_host_mounts(const struct config *cfg) {
  for (int i = 0; i < cfg->n_ops; i++)
    if (cfg->ops[i].tag == T_OP_BIND_HOST && cfg->ops[i].tree >= 0)
      close(cfg->ops[i].tree);
}
