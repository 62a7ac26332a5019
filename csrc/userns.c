/* User namespace: id maps written by the parent, then the child settles on uid/gid 1000. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "helper.h"

static void write_proc_file(pid_t child, const char *name, const char *text) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/%s", (int)child, name);
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0)
    fail("idmap", "open", path);
  ssize_t len = (ssize_t)strlen(text);
  if (write(fd, text, (size_t)len) != len)
    fail("idmap", "write", path);
  close(fd);
}

/* Rootless, the kernel lets us map exactly our own uid and gid (count 1); as root we map
 * the sandbox to a dedicated unprivileged host id chosen by the supervisor. Either way the
 * inside ids are 1000 and nothing maps to host root. setgroups must be denied before the
 * gid map is written (CVE-2014-8989: otherwise EPERM for unprivileged writers). */
void write_id_maps(pid_t child, const struct config *cfg) {
  char line[64];
  write_proc_file(child, "setgroups", "deny");
  snprintf(line, sizeof line, "%d %u 1\n", SANDBOX_UID, cfg->host_uid);
  write_proc_file(child, "uid_map", line);
  snprintf(line, sizeof line, "%d %u 1\n", SANDBOX_GID, cfg->host_gid);
  write_proc_file(child, "gid_map", line);
}

/* With SECBIT_NO_SETUID_FIXUP already set, the switch keeps our capabilities inside the
 * namespace for the rest of setup. As root it also moves our fsuid off host root, which
 * must happen before we touch any file: tmpfs files written as an unmapped kuid 0 fail
 * with EOVERFLOW, and host files owned by root would treat us as their owner. */
void become_sandbox_user(void) {
  if (setresgid(SANDBOX_GID, SANDBOX_GID, SANDBOX_GID) < 0)
    fail("identity", "setresgid", NULL);
  if (setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID) < 0)
    fail("identity", "setresuid", NULL);
}
