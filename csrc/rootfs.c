/* Mount namespace: a new root on a tmpfs, built from the supervisor's plan, then pivot_root.
 *
 * The plan (which host paths, which tmpfs, which /etc files) is policy and lives in Python;
 * this file is only the mechanism. Destinations are relative to the new root, which is a
 * fresh tmpfs holding nothing but what the plan put there, so no path walk can leave it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "helper.h"

/* The new root holds only mount points and the synthesized /etc; it is read-only after
 * setup, so a small fixed size is enough. */
#define ROOT_TMPFS_OPTS "mode=0755,size=4m,nr_inodes=4096"

static const char *rel(const char *path) {
  while (*path == '/')
    path++;
  return *path ? path : ".";
}

static void mkdir_p(const char *path, mode_t mode) {
  char buf[4096];
  if (snprintf(buf, sizeof buf, "%s", rel(path)) >= (int)sizeof buf)
    fail_errno(ENAMETOOLONG, "rootfs", "mkdir", path);
  for (char *p = buf + 1;; p++) {
    if (*p == '/' || *p == '\0') {
      char saved = *p;
      *p = '\0';
      if (mkdir(buf, mode) < 0 && errno != EEXIST)
        fail("rootfs", "mkdir", buf);
      if (!saved)
        break;
      *p = saved;
    }
  }
}

static void parent_dirs(const char *path) {
  char buf[4096];
  if (snprintf(buf, sizeof buf, "%s", rel(path)) >= (int)sizeof buf)
    fail_errno(ENAMETOOLONG, "rootfs", "mkdir", path);
  char *slash = strrchr(buf, '/');
  if (slash) {
    *slash = '\0';
    mkdir_p(buf, 0755);
  }
}

static void touch(const char *path) {
  parent_dirs(path);
  int fd = open(rel(path), O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0)
    fail("rootfs", "open", path);
  close(fd);
}

/* mount_setattr (5.12) changes only the attributes named, recursively, and so never trips
 * over the locked nosuid/nodev/noexec/atime flags that make a plain MS_REMOUNT of a bind
 * inherited from a more privileged namespace fail with EPERM. */
static void set_attr(const char *path, uint64_t attrs, int recursive) {
  struct mount_attr attr = {.attr_set = attrs};
  unsigned flags = recursive ? AT_RECURSIVE : 0;
  if (syscall(SYS_mount_setattr, AT_FDCWD, rel(path), flags, &attr, sizeof attr) < 0)
    fail("rootfs", "mount_setattr", path);
}

static void bind_ro(const char *src, const char *dst) {
  struct stat st;
  if (stat(src, &st) < 0)
    fail("rootfs", "stat", src);
  if (S_ISDIR(st.st_mode))
    mkdir_p(dst, 0755);
  else
    touch(dst);
  /* MS_REC always: a non-recursive bind would reveal what the host over-mounted below src. */
  if (mount(src, rel(dst), NULL, MS_BIND | MS_REC, NULL) < 0)
    fail("rootfs", "mount(bind)", src);
  set_attr(dst, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 1);
}

/* A host directory or file the caller asked to mount (engine option `mounts`): its tree was
 * cloned on the host's view, attributes and all, before the staging mount (hostmounts.c);
 * here it is only attached. */
static void bind_host(const struct op *op) {
  if (op->is_dir)
    mkdir_p(op->b, 0755);
  else
    touch(op->b);
  if (syscall(SYS_move_mount, op->tree, "", AT_FDCWD, rel(op->b), MOVE_MOUNT_F_EMPTY_PATH) < 0)
    fail("rootfs", "move_mount", op->b);
  close(op->tree);
}

/* Device nodes cannot be created in a user namespace (mknod EPERM): bind the host's. */
static void bind_dev(const char *src, const char *dst) {
  touch(dst);
  if (mount(src, rel(dst), NULL, MS_BIND, NULL) < 0)
    fail("rootfs", "mount(bind)", src);
  set_attr(dst, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, 0);
}

static void tmpfs(const struct op *op) {
  char opts[128];
  mkdir_p(op->a, 0755);
  snprintf(opts, sizeof opts, "mode=%04o,size=%llu,nr_inodes=%llu", op->mode,
           (unsigned long long)op->size, (unsigned long long)op->inodes);
  unsigned long flags = MS_NOSUID | MS_NODEV | ((op->flags & TMPFS_NOEXEC) ? MS_NOEXEC : 0);
  if (mount("tmpfs", rel(op->a), "tmpfs", flags, opts) < 0)
    fail("rootfs", "mount(tmpfs)", op->a);
}

static void write_file(const struct op *op) {
  parent_dirs(op->a);
  int fd = open(rel(op->a), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, op->mode);
  if (fd < 0)
    fail("rootfs", "open", op->a);
  for (uint32_t off = 0; off < op->content_len;) {
    ssize_t n = write(fd, op->content + off, op->content_len - off);
    if (n < 0)
      fail("rootfs", "write", op->a);
    off += (uint32_t)n;
  }
  close(fd);
}

static void run_op(const struct op *op) {
  switch (op->tag) {
  case T_OP_BIND_RO:
    bind_ro(op->a, op->b);
    break;
  case T_OP_BIND_DEV:
    bind_dev(op->a, op->b);
    break;
  case T_OP_BIND_HOST:
    bind_host(op);
    break;
  case T_OP_TMPFS:
    tmpfs(op);
    break;
  case T_OP_DIR:
    mkdir_p(op->a, op->mode);
    if (chmod(rel(op->a), op->mode) < 0)
      fail("rootfs", "chmod", op->a);
    break;
  case T_OP_FILE:
    write_file(op);
    break;
  case T_OP_SYMLINK:
    parent_dirs(op->b);
    if (symlink(op->a, rel(op->b)) < 0)
      fail("rootfs", "symlink", op->b);
    break;
  case T_OP_PROC:
    /* Needs the new pid namespace, and a host /proc without locked over-mounts. */
    mkdir_p(op->a, 0555);
    if (mount("proc", rel(op->a), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
      fail("rootfs", "mount(proc)", op->a);
    break;
  case T_OP_DEVPTS:
    mkdir_p(op->a, 0755);
    if (mount("devpts", rel(op->a), "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620") < 0)
      fail("rootfs", "mount(devpts)", op->a);
    break;
  case T_OP_RO_SELF:
    if (mount(rel(op->a), rel(op->a), NULL, MS_BIND | MS_REC, NULL) < 0)
      fail("rootfs", "mount(bind)", op->a);
    set_attr(op->a, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV |
                        MOUNT_ATTR_NOEXEC, 1);
    break;
  }
}

/* bwrap --disable-userns: the limit is per user namespace and we own ours, so nothing
 * inside can create another one, even through a syscall the seccomp filter misses. */
static void forbid_nested_userns(void) {
  const char *path = "/proc/sys/user/max_user_namespaces";
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, "0", 1) != 1)
    fail("rootfs", "write", path);
  close(fd);
}

void build_root(const struct config *cfg) {
  /* Nothing we mount may propagate back to the host (systemd makes / shared). */
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
    fail("rootfs", "mount(MS_PRIVATE)", "/");
  if (mount("tmpfs", cfg->staging, "tmpfs", MS_NOSUID | MS_NODEV, ROOT_TMPFS_OPTS) < 0)
    fail("rootfs", "mount(tmpfs)", cfg->staging);
  if (chdir(cfg->staging) < 0)
    fail("rootfs", "chdir", cfg->staging);
  umask(0);
  for (int i = 0; i < cfg->n_ops; i++)
    run_op(&cfg->ops[i]);
  umask(022);
  forbid_nested_userns();

  /* pivot_root(".", "."): the old root ends up stacked on the new one and is detached as a
   * whole (inherited mounts are locked together and cannot be unmounted one by one). */
  if (syscall(SYS_pivot_root, ".", ".") < 0)
    fail("rootfs", "pivot_root", cfg->staging);
  if (umount2(".", MNT_DETACH) < 0)
    fail("rootfs", "umount2", "old root");
  if (chdir("/") < 0)
    fail("rootfs", "chdir", "/");
  set_attr("/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0);
}
