"""Which host uid and gid the sandbox user (uid 1000 inside) is mapped to.

Rootless: the caller's own ids, the only mapping the kernel allows without a setuid
newuidmap. As root: one id per sandbox from a dedicated range, never host root and never an
existing account, so that two tenants' sandboxes share no identity on the host. A lease (an
exclusive ``flock`` on a file named after the id) keeps concurrent engines, in this process
or others, from handing out the same id twice.
"""

from __future__ import annotations

import fcntl
import functools
import grp
import os
import pwd
import random
from dataclasses import dataclass

from .errors import InvalidRequest

DEFAULT_UID_RANGE = (1_500_000_000, 65536)
LEASE_DIR = "/run/isol8/uid-leases"


@dataclass(slots=True)
class HostIdentity:
    uid: int
    gid: int
    lease_fd: int = -1

    @property
    def owner(self) -> tuple[int, int] | None:
        """Who must own the run's pipes: the sandbox user's host ids when they are not
        ours (root mode), else None."""
        return None if self.uid == os.geteuid() else (self.uid, self.gid)

    def release(self) -> None:
        if self.lease_fd >= 0:
            # Unlink while still holding the lock; acquire() re-checks the inode after
            # locking, so a waiter that locked the unlinked file retries instead of sharing.
            try:
                os.unlink(f"{LEASE_DIR}/{self.uid}")
            except FileNotFoundError:
                pass
            os.close(self.lease_fd)
            self.lease_fd = -1


def validate_uid_range(uid_range: tuple[int, int]) -> tuple[int, int]:
    start, count = uid_range
    if start < 65536 or count < 1 or start + count > 0xFFFFFFFE:
        raise InvalidRequest("uid_range must be (start >= 65536, count >= 1) within 32 bits")
    return start, count


def acquire(uid_range: tuple[int, int]) -> HostIdentity:
    """The host identity for one new sandbox."""
    if not maps_foreign_ids():
        return HostIdentity(os.geteuid(), os.getegid())
    start, count = uid_range
    taken = _accounts_in(start, count)
    for _ in range(64):
        uid = start + random.randrange(count)
        if uid in taken:
            continue
        path = f"{LEASE_DIR}/{uid}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:  # /run was cleaned behind our back
            os.makedirs(LEASE_DIR, mode=0o700, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                raise BlockingIOError  # the holder released and unlinked it meanwhile
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            continue
        return HostIdentity(uid, uid, fd)
    raise InvalidRequest(f"no free host uid in range {start}..{start + count - 1}")


@functools.lru_cache(maxsize=1)
def maps_foreign_ids() -> bool:
    """Whether sandboxes get their own host uid: only real root can map arbitrary ids.

    Root inside a user namespace (a rootless container, where uid 0 is really some user)
    can map only the ids of its own namespace, so it is treated like any other user.
    """
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as fh:
            return fh.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return False


@functools.lru_cache(maxsize=8)
def _accounts_in(start: int, count: int) -> frozenset[int]:
    """User and group ids of existing accounts inside the range, read once per process.

    Also creates the lease directory: both are one-time costs that would otherwise be paid
    on every execute() (about 0.1 ms of NSS lookups).
    """
    os.makedirs(LEASE_DIR, mode=0o700, exist_ok=True)
    ids = {entry.pw_uid for entry in pwd.getpwall()} | {entry.gr_gid for entry in grp.getgrall()}
    return frozenset(i for i in ids if start <= i < start + count)
