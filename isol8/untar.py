"""The archive a sandbox sends back, extracted on the host as hostile input.

Its one producer is isol8's own archiver (GNU tar, POSIX pax format, no ``--sparse``) run
alone in the sandbox once every other process there is dead; still, every byte is checked,
the archive is read as it arrives (never held whole), and anything that archiver does not
write from a tmpfs fails the whole extraction. By member type:

- directory: made, its mode kept plus the owner's rwx (so its contents can be written, and
  removed later);
- regular file: its size counted against ``limit`` before a byte is written, then written
  with its permission bits only (setuid, setgid and sticky dropped) and its mtime; runs of
  zeros become holes;
- symlink: made, its target kept as text. Nothing here follows one: every member is reached
  one directory at a time without following symlinks (isol8.fdtree), so a member below a
  link fails;
- hard link: made when it names a regular file extracted before it; anything else fails;
- fifo: left out (it has no content, and a host program opening it would block);
- sparse (GNU type ``S``, pax ``GNU.sparse.*``): fails. A sparse map lets a few bytes claim
  any size (``GNU.sparse.size=10**12`` filled a host disk), and the archiver writes none;
- character and block devices, contiguous files, GNU long names, volume and global headers,
  unknown types: fail.

Also failing: a name that is absolute or has an empty, ``.`` or ``..`` component, a member
whose directory did not come before it, a name used twice, a pax header over 64 KiB or with a
key the archiver does not write, a bad checksum, a base-256 number, anything but zeros after
the end-of-archive blocks, file contents over ``limit`` in all, and an archive over twice
``limit`` plus 1 MiB (its headers: a tmpfs full of small files stays well under that).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .fdtree import Cursor, open_dir

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_PAX_MAX = 64 << 10
_READ = 1 << 20
_REGULAR, _HARDLINK, _SYMLINK, _DIRECTORY, _FIFO = b"0", b"1", b"2", b"5", b"6"
_REFUSED_TYPES = {b"3": "a character device", b"4": "a block device",
                  b"S": "a sparse file", b"7": "a contiguous file",
                  b"L": "a GNU long name", b"K": "a GNU long link name",
                  b"g": "a global pax header", b"V": "a volume header",
                  b"M": "a multi-volume continuation", b"D": "a GNU dump directory"}
# What GNU tar's pax format writes that changes nothing here.
_IGNORED_KEYS = {b"mtime", b"atime", b"ctime", b"uid", b"gid", b"uname", b"gname",
                 b"hdrcharset", b"comment"}


class Refused(Exception):
    """The archive is not one isol8's archiver writes; the message says which member."""


@dataclass(slots=True)
class _Member:
    parts: tuple[bytes, ...]  # the name's components; () for the archive's root
    kind: bytes
    mode: int
    size: int
    mtime: int
    link: bytes

    @property
    def shown(self) -> str:
        return "/sandbox/" + b"/".join(self.parts).decode("utf-8", "backslashreplace")


def extract(chunks: Iterable[bytes], root: int, limit: int) -> None:
    """Extract the archive in ``chunks`` into the empty directory ``root`` (an fd), reading
    it to its end; raises Refused (or the OSError of a full disk) on the first problem,
    leaving what was extracted so far for the caller to remove."""
    source = _Input(iter(chunks), 2 * limit + (1 << 20))
    left = limit
    with Cursor(root) as here, Cursor(root) as there:  # a member's directory; a link's source
        first = True
        while (member := _next_member(source)) is not None:
            if not member.parts:
                if not first or member.kind != _DIRECTORY:
                    raise Refused("the archive's root is not its first member, a directory")
                first = False
                continue
            first = False
            if member.kind == _REGULAR:
                if member.size > left:
                    raise Refused(f"{member.shown} ({member.size} bytes) takes the workspace "
                                  f"over sandbox_size ({limit} bytes)")
                left -= member.size
            try:
                _make(member, source, here.at(member.parts[:-1]), there)
            except OSError as exc:
                raise Refused(f"{member.shown} cannot be extracted: {exc.strerror}") from None


def _make(member: _Member, source: "_Input", parent: int, there: Cursor) -> None:
    name = member.parts[-1]
    if member.kind == _DIRECTORY:
        os.mkdir(name, 0o700, dir_fd=parent)
        fd = open_dir(name, parent)
        try:
            os.fchmod(fd, (member.mode & 0o777) | 0o700)
        finally:
            os.close(fd)
    elif member.kind == _REGULAR:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=parent)
        try:
            _copy(source, fd, member)
            os.fchmod(fd, member.mode & 0o777)
            os.utime(fd, ns=(member.mtime * 10**9, member.mtime * 10**9))
        finally:
            os.close(fd)
    elif member.kind == _SYMLINK:
        os.symlink(member.link, name, dir_fd=parent)
    elif member.kind == _HARDLINK:
        target = _parts(member.link)
        if not target:
            raise Refused(f"{member.shown} links to the archive's root")
        directory = there.at(target[:-1])
        if not stat.S_ISREG(os.stat(target[-1], dir_fd=directory, follow_symlinks=False).st_mode):
            raise Refused(f"{member.shown} links to something other than a regular file")
        os.link(target[-1], name, src_dir_fd=directory, dst_dir_fd=parent,
                follow_symlinks=False)
    # A fifo is left out (see the module doc).


def _copy(source: "_Input", fd: int, member: _Member) -> None:
    """The member's data into fd, zeros skipped (a hole), then its block padding."""
    remaining = member.size
    while remaining:
        data = source.read(min(remaining, _READ))
        if not data:
            raise Refused(f"the archive ends inside {member.shown}")
        remaining -= len(data)
        if data.count(0) == len(data):
            os.lseek(fd, len(data), os.SEEK_CUR)
            continue
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    os.ftruncate(fd, member.size)
    source.exact(-member.size % _BLOCK)


class _Input:
    """The archive's bytes as they arrive, counted against a cap."""

    def __init__(self, chunks: Iterator[bytes], cap: int) -> None:
        self._chunks, self._cap = chunks, cap
        self._buffer, self._at = b"", 0
        self.total = 0

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (at least one), or b"" at the end."""
        while self._at == len(self._buffer):
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self.total += len(chunk)
            if self.total > self._cap:
                raise Refused(f"the archive is over {self._cap} bytes")
            self._buffer, self._at = chunk, 0
        data = self._buffer[self._at:self._at + size]
        self._at += len(data)
        return data

    def exact(self, size: int) -> bytes:
        parts = []
        while size:
            data = self.read(size)
            if not data:
                raise Refused("the archive ends in the middle of a header")
            parts.append(data)
            size -= len(data)
        return b"".join(parts)


def _next_member(source: _Input) -> _Member | None:
    """The next member's header (its data, if any, is next in ``source``), or None after
    the end-of-archive blocks and the zeros that pad the last record."""
    pax: dict[bytes, bytes] | None = None
    while True:
        block = source.exact(_BLOCK)
        if block == _ZERO_BLOCK:
            if pax is not None or source.exact(_BLOCK) != _ZERO_BLOCK:
                raise Refused("the archive's end is malformed")
            while data := source.read(_READ):
                if data.count(0) != len(data):
                    raise Refused("the archive has data after its end")
            return None
        _check_header(block)
        kind = block[156:157]
        size = _octal(block[124:136], "size")
        if kind == b"x":
            if pax is not None or size > _PAX_MAX:
                raise Refused("the archive has a malformed pax header")
            pax = _pax_records(source.exact(size + (-size % _BLOCK))[:size])
            continue
        return _member(block, kind, size, pax or {})


def _check_header(block: bytes) -> None:
    if block[257:263] != b"ustar\0" or block[263:265] != b"00":
        raise Refused("the archive has a header that is not POSIX ustar")
    if _octal(block[148:156], "checksum") != sum(block[:148]) + 8 * 32 + sum(block[156:]):
        raise Refused("the archive has a header with a bad checksum")


def _member(block: bytes, kind: bytes, size: int, pax: dict[bytes, bytes]) -> _Member:
    prefix, name = _text(block[345:500]), _text(block[0:100])
    raw_name = pax.get(b"path", prefix + b"/" + name if prefix else name)
    member = _Member((), kind, _octal(block[100:108], "mode"), size,
                     _octal(block[136:148], "mtime"), pax.get(b"linkpath", _text(block[157:257])))
    member.parts = _parts(raw_name)
    if b"size" in pax:
        if not pax[b"size"].isdigit() or len(pax[b"size"]) > 20:
            raise Refused(f"{member.shown} has a malformed size")
        member.size = int(pax[b"size"])
    if member.mtime >= 8**11:  # past the year 2242: nanoseconds would overflow utime
        raise Refused(f"{member.shown} has a malformed mtime")
    if kind == b"\0":
        member.kind = kind = _REGULAR
    if kind in _REFUSED_TYPES:
        raise Refused(f"{member.shown} is {_REFUSED_TYPES[kind]}")
    if kind not in (_REGULAR, _HARDLINK, _SYMLINK, _DIRECTORY, _FIFO):
        raise Refused(f"{member.shown} has the unknown type {kind!r}")
    if kind != _REGULAR and member.size:
        raise Refused(f"{member.shown} is not a regular file but has data")
    if kind in (_SYMLINK, _HARDLINK) and (not member.link or b"\0" in member.link
                                          or len(member.link) > 4095):
        raise Refused(f"{member.shown} has a malformed link target")
    return member


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """``<length> <key>=<value>\\n`` records (POSIX pax), with the keys checked."""
    records: dict[bytes, bytes] = {}
    at = 0
    while at < len(data):
        space = data.find(b" ", at)
        length = data[at:space]
        end = at + int(length) if 0 < space - at <= 20 and length.isdigit() else -1
        if end <= space or end > len(data) or data[end - 1:end] != b"\n":
            raise Refused("the archive has a malformed pax record")
        key, equals, value = data[space + 1:end - 1].partition(b"=")
        if not equals:
            raise Refused("the archive has a malformed pax record")
        if key.startswith(b"GNU.sparse."):
            raise Refused("the archive has a sparse member")
        if key not in (b"path", b"linkpath", b"size") and key not in _IGNORED_KEYS:
            raise Refused(f"the archive has the pax key {key.decode('ascii', 'replace')!r}, "
                          "which isol8's archiver does not write")
        records[key] = value
        at = end
    return records


def _parts(name: bytes) -> tuple[bytes, ...]:
    """A member name's components, as the archiver writes them (``./a/b``, ``./`` for the
    root); a name that could leave the extraction's root fails."""
    if name in (b".", b"./"):
        return ()
    if name.startswith(b"./"):
        name = name[2:]
    if name.endswith(b"/"):
        name = name[:-1]
    parts = tuple(name.split(b"/"))
    if b"\0" in name or any(part in (b"", b".", b"..") or len(part) > 255 for part in parts):
        shown = name.decode("utf-8", "backslashreplace")
        raise Refused(f"the archive has the name {shown!r}, which is not a plain relative "
                      "path")
    return parts


def _text(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _octal(field: bytes, what: str) -> int:
    digits = _text(field).strip(b" ")
    if not digits or digits.strip(b"01234567"):
        raise Refused(f"the archive has a header with a malformed {what} field")
    return int(digits, 8)
