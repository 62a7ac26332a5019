"""Which host uid and gid the sandbox user (uid 1000 inside) is mapped to.

Rootless: the caller's own ids, the only mapping the kernel allows without a setuid
newuidmap. As root: one id per sandbox from a dedicated range, never host root and never an
existing account, so that two tenants' sandboxes share no identity on the host. A lease (an
exclusive ``flock`` on a file named after the id) keeps concurrent engines, in this process
or others, from handing out the same id twice.

The range must not be anyone else's: a sandbox whose host uid is also a container's (systemd
hands out 65,536-id blocks of its container range to nspawn, machined and nsresourced;
/etc/subuid and /etc/subgid give blocks to rootless podman, LXC and others) shares that
identity's files, signals, ptrace rights and per-uid kernel quotas with it. So a configured
``uid_range`` that overlaps a range systemd assigns or reserves (docs/UIDS-GIDS.md), or an
entry of /etc/subuid or /etc/subgid (the sandbox's gid is its uid), is refused, naming the
overlap; and the default is chosen outside all of them. Sub-id ranges served through NSS
(``subid:`` in nsswitch.conf) are not seen.
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

# What systemd assigns or reserves (docs/UIDS-GIDS.md, src/basic/uid-classification.h), as
# (first, last, name). Below 65536: system 0-999, regular users 1000-60000, homed 60001-60513,
# host users mapped into nspawn containers 60514-60577, greeters, dynamic service users
# 61184-65519, nobody 65534 and the 16-bit -1.
SYSTEMD_RANGES = (
    (0, 65535, "systemd's system, regular, homed, nspawn, dynamic and nobody ids (0-65535)"),
    (524288, 1879048191, "systemd's container range (524288-1879048191)"),
    (2147352576, 2147418111, "systemd's foreign range (2147352576-2147418111)"),
    # Tools that treat uid_t as signed break on these, and setfsuid() returns the old id
    # as an int; systemd keeps them reserved.
    (2147483648, 4294967295, "the ids from 2^31 up (2147483648-4294967295), which systemd "
                             "reserves: many tools treat uid_t as signed"),
)
SUBID_FILES = ("/etc/subuid", "/etc/subgid")
# 65,536 ids in the gap systemd leaves unused between its container and foreign ranges, far
# above shadow's default sub-id allocation (login.defs SUB_UID_MAX 600100000). If a sub-id
# entry claims them anyway, the default moves to the next free 65,536-id block of the gap.
DEFAULT_UID_RANGE = (0x7800_0000, 65536)
_DEFAULT_GAP = (1879048192, 2147352576)  # [first, end)
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


def validate_uid_range(uid_range: object) -> tuple[int, int]:
    """A configured ``(start, count)``, refused when it overlaps a range systemd assigns or
    an /etc/subuid or /etc/subgid entry."""
    start: object
    count: object
    try:
        start, count = uid_range  # type: ignore[misc]  # any 2-item iterable, checked below
    except (TypeError, ValueError):
        raise InvalidRequest(f"uid_range: expected (start, count), got {uid_range!r}") from None
    if not isinstance(start, int) or not isinstance(count, int) \
            or isinstance(start, bool) or isinstance(count, bool) or start < 0 or count < 1:
        raise InvalidRequest(f"uid_range: expected (start, count) integers, start >= 0 and "
                             f"count >= 1, got {uid_range!r}")
    last = start + count - 1
    for first, end, name in (*SYSTEMD_RANGES, *subid_ranges()):
        if start <= end and first <= last:
            raise InvalidRequest(
                f"uid_range: {start}-{last} overlaps {name}; a sandbox sharing a host id with "
                f"another user of it shares its files, signals and quotas. Choose a range "
                f"outside it, e.g. in {_DEFAULT_GAP[0]}-{_DEFAULT_GAP[1] - 1}, where the "
                "default lies")
    return start, count


def default_uid_range() -> tuple[int, int]:
    """DEFAULT_UID_RANGE, or the first 65,536-id block of the gap after it that no
    /etc/subuid or /etc/subgid entry claims (then before it)."""
    taken = [(first, end) for first, end, _ in subid_ranges()]
    size = DEFAULT_UID_RANGE[1]
    lo, hi = _DEFAULT_GAP
    starts = [*range(DEFAULT_UID_RANGE[0], hi - size + 1, size),
              *range(DEFAULT_UID_RANGE[0] - size, lo - 1, -size)]
    for start in starts:
        if not any(start <= end and first <= start + size - 1 for first, end in taken):
            return start, size
    raise InvalidRequest(f"no default uid_range: /etc/subuid and /etc/subgid claim every "
                         f"{size}-id block of {lo}-{hi - 1}; configure uid_range")


def subid_ranges() -> list[tuple[int, int, str]]:
    """The entries of /etc/subuid and /etc/subgid as (first, last, name); malformed lines
    are skipped, as shadow's own parser does."""
    found = []
    for path in SUBID_FILES:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except OSError:  # missing; or unreadable, which only a user that is not root meets,
            continue     # and only root maps sandboxes into the range
        for number, line in enumerate(lines, 1):
            _, _, rest = line.strip().partition(":")
            first, _, count = rest.partition(":")
            if first.isdigit() and count.isdigit() and int(count) > 0:
                found.append((int(first), int(first) + int(count) - 1,
                              f"{path} line {number} ({line.strip()})"))
    return found


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


def require_searchable(path: str, what: str, fix: str) -> None:
    """As root, the helper looks host paths up as the sandbox's leased uid, which owns
    nothing and is in no group: only "other" permissions let it search the directories above
    ``path``. ``what`` names the path in the error, ``fix`` ends it."""
    parent = os.path.dirname(path)
    while parent != "/":
        if not os.stat(parent).st_mode & 0o001:
            raise InvalidRequest(
                f"{what} is not reachable from the sandbox: as root, a sandbox runs as an "
                f"unprivileged host uid, and {parent} is not searchable by others "
                f"(chmod o+x {parent}, or {fix})")
        parent = os.path.dirname(parent)
