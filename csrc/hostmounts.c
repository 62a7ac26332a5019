/* The caller's mounts (engine option `mounts`): host trees cloned on the host's own view of
 * the file system, before anything of the new root is mounted over it, and attached in the
 * new root later (rootfs.c).
 *
 * Why first: the new root is built on a staging tmpfs mounted over /tmp; a source looked up
 * after that would resolve inside the staging tree (`/tmp/etc` would be the synthesized /etc,
 * `/tmp` the new root itself). open_tree(OPEN_TREE_CLONE) gives a detached copy of the source's
 * mount tree, which nothing mounted later over the path can change.
 *
 * Who: as root, the helper's parent, still in the initial namespaces and before the clone;
 * the child inherits the descriptors. Rootless, the child, in its own mount namespace (a copy
 * of the host's) before its staging mount: an unprivileged process cannot clone a mount of
 * the initial namespace.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <linux/openat2.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "helper.h"

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

void open_host_mounts(struct config *cfg, int as_root) {
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
  }
}

void close_host_mounts(const struct config *cfg) {
  for (int i = 0; i < cfg->n_ops; i++)
    if (cfg->ops[i].tag == T_OP_BIND_HOST && cfg->ops[i].tree >= 0)
      close(cfg->ops[i].tree);
}
