"""Host directory trees reached through file descriptors, never through a symlink.

The kernel follows a symlink in every component of a path but the last, whatever the flags
(``O_NOFOLLOW`` covers only the last one, path_resolution(7)); ``openat2``'s
``RESOLVE_NO_SYMLINKS`` refuses them everywhere but is not in Python's standard library.
Opening one component at a time with ``O_DIRECTORY | O_NOFOLLOW``, each relative to the fd
of the one before, gives the same guarantee: a symlink anywhere fails with ``ELOOP`` (or
``ENOTDIR``), and a directory renamed or replaced meanwhile is still the one the fd holds.

Trees are walked with an explicit stack, never by recursion (a sandbox can nest thousands of
directories), and at most ``_MAX_OPEN`` directory fds are open at once whatever the depth
(the supervisor's RLIMIT_NOFILE is often 1024): the shallowest is closed first, and a walk
back above the open ones reopens the path from its root.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_OPEN = 32

Name = str | bytes


def open_dir(name: Name, dir_fd: int) -> int:
    """``name`` (one component) in ``dir_fd``, as a directory fd; a symlink fails with
    ELOOP (``O_DIRECTORY | O_NOFOLLOW`` reports ENOTDIR for one: told apart here)."""
    try:
        return os.open(name, _DIR, dir_fd=dir_fd)
    except NotADirectoryError:
        try:
            link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            link = False
        if link:
            raise OSError(errno.ELOOP, "is a symlink", name) from None
        raise


def open_path(path: str, *, create: bool = False) -> int:
    """The directory at absolute ``path``, opened from ``/`` one component at a time without
    following a symlink (missing components made first when ``create``). The OSError of a
    symlink or non-directory carries ``filename``: the component that is one."""
    if not os.path.isabs(path):
        raise ValueError(f"{path!r} is not absolute")
    fd = os.open("/", _DIR)
    try:
        where = "/"
        for name in (part for part in path.split("/") if part):
            where = os.path.join(where, name)
            try:
                if create:
                    try:
                        os.mkdir(name, 0o777, dir_fd=fd)
                    except FileExistsError:
                        pass
                child = open_dir(name, fd)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, where) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


class Cursor:
    """The directories along one path below ``root`` (an fd the caller keeps), opened as
    ``at()`` asks for them: consecutive calls share their common prefix, as a depth-first
    walk does. The open ones are always the deepest (at most _MAX_OPEN): a walk back above
    them reopens the path from ``root``."""

    def __init__(self, root: int) -> None:
        self._root = root
        self._names: list[Name] = []
        self._fds: list[int] = []  # fds[i] holds names[:i + 1]; open from fds[_low] on
        self._low = 0

    def at(self, parts: Sequence[Name]) -> int:
        """The fd of ``root/parts...``, valid until the next call."""
        common = 0
        for mine, theirs in zip(self._names, parts):
            if mine != theirs:
                break
            common += 1
        self._truncate(common)
        if self._fds and self._low == len(self._fds):  # all closed for room
            self._truncate(0)
            common = 0
        for name in parts[common:]:
            self._fds.append(open_dir(name, self._fds[-1] if self._fds else self._root))
            self._names.append(name)
            if len(self._fds) - self._low > _MAX_OPEN:
                os.close(self._fds[self._low])
                self._fds[self._low] = -1
                self._low += 1
        return self._fds[-1] if self._fds else self._root

    def _truncate(self, depth: int) -> None:
        while len(self._fds) > depth:
            self._names.pop()
            fd = self._fds.pop()
            if fd >= 0:
                os.close(fd)
        self._low = min(self._low, depth)

    def close(self) -> None:
        self._truncate(0)

    def __enter__(self) -> "Cursor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_tree(parent: int, name: Name) -> None:
    """Remove ``name`` in ``parent`` and everything below it, never following a symlink
    (shutil.rmtree recurses: Python 3.11's raises RecursionError on a deep tree)."""
    with Cursor(parent) as cursor:
        stack: list[tuple[tuple[Name, ...], list[Name] | None]] = [((name,), None)]
        while stack:
            parts, subdirs = stack[-1]
            if subdirs is None:
                fd = cursor.at(parts)
                try:
                    os.fchmod(fd, 0o700)  # a read-only directory's entries cannot go
                except OSError:
                    pass
                subdirs = []
                with os.scandir(fd) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            subdirs.append(entry.name)
                        else:
                            os.unlink(entry.name, dir_fd=fd)
                stack[-1] = (parts, subdirs)
            if subdirs:
                stack.append(((*parts, subdirs.pop()), None))
                continue
            stack.pop()
            os.rmdir(parts[-1], dir_fd=cursor.at(parts[:-1]))
