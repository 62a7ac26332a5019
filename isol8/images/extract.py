"""Safe extraction of image archives: hostile tarballs become a tree under ``dest`` and nothing
else on the machine changes.

The caller's side (``unpack``) only opens the archive and ``dest`` and starts a child
(isol8.images.unpack_main) with the two fds; the child confines itself (a throwaway user and
mount namespace, chrooted into ``dest``, no capabilities left, a seccomp denylist; the reasons
are in that module) and then runs ``write_tree``.
Inside, tarfile is used as a streaming header parser only (``mode="r|"``: PAX ``path`` and
``linkpath``, GNU long names and sparse maps are what real images hold); its ``extract`` and
its filters are never called. Every write goes through a directory fd obtained with
``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`` from the root fd, so a symlink in the
archive, or left by an earlier layer, resolves inside the root as the sandbox would see it,
and the final component is never followed (O_NOFOLLOW, O_EXCL, *at calls without follow).

Per member:

- names are made relative (a leading ``/`` dropped, ``.`` and empty components ignored); a
  member whose ``..`` would climb above the root is refused: left out, named with the reason
  in ``Report.refused``, and the rest of the archive imports (the issue's rule: a hostile
  member costs only itself; the caller shows the list);
- regular files: the size cap (the sum of file sizes) is checked before a byte is written;
  contents, mode (setuid/setgid stripped, listed in ``Report.stripped``) and mtime kept; a
  sparse member's holes stay holes;
- directories: mode kept plus u+rwx (the store must be able to delete the tree), setuid and
  setgid stripped, mtime set once everything below them is written;
- symlinks: the target is kept as written, absolute ones too (they resolve inside the
  sandbox's root);
- hard links: the target must name a non-directory already in the tree; one that climbs out
  of the root, or names the root, is refused as above;
- character and block devices and fifos: skipped (``Report.skipped``);
- an existing entry of the same name is replaced (a directory stays a directory).

Ownership is never changed: files belong to whoever imports (rootless: the user); extended
attributes (file capabilities among them) are not restored, for the same reason setuid bits
are not. With
``layer=True`` the member set is an OCI layer applied onto the tree: ``.wh.NAME`` deletes NAME
(a whole subtree) from earlier layers, ``.wh..wh..opq`` empties its directory of everything
earlier layers put there. A refusal fails the whole archive, not just the member: on any
exception the tree under ``dest`` is incomplete, and the caller (the store) imports into a
fresh directory and discards it on failure.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import zlib
from dataclasses import asdict, dataclass, field
from typing import IO, Any, cast

from .. import _native
from ..errors import Isol8Error

_CHUNK = 1 << 20
_META_MAX = 1 << 20  # a PAX header or GNU long name over 1 MiB is hostile, not a path
_SPARSE_MAX = 1 << 20  # data runs in one sparse file's map
_IN_ROOT = _native.RESOLVE_IN_ROOT | _native.RESOLVE_NO_MAGICLINKS
_WHITEOUT, _OPAQUE = ".wh.", ".wh..wh..opq"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# What a member's own name or target causes (a loop, a file where a directory must be, an
# empty or overlong name), as opposed to the machine's trouble (a full disk, EIO).
_CONTENT_ERRORS = {errno.ELOOP, errno.EXDEV, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG,
                   errno.EINVAL, errno.ENOENT, errno.EEXIST}


class Refused(Isol8Error):
    """The archive holds something an image may not: the message names the member."""


class MemberRefused(Refused):
    """One member an image may not hold (a name or hard link leaving the root): it is left
    out and listed in ``Report.refused``; nothing of it is written."""


class UnpackFailed(Isol8Error):
    """The extraction failed for a reason other than the archive's content (a full disk, the
    child process dying); the message says what and where."""


@dataclass(frozen=True, slots=True)
class Caps:
    max_bytes: int = 16 << 30
    max_inodes: int = 2_000_000


@dataclass(slots=True)
class Report:
    sha256: str = ""  # of the archive stream as read (compressed bytes)
    files: int = 0  # members read, whiteouts and skipped ones too (the inode cap counts these)
    bytes: int = 0  # the sum of regular files' sizes (the size cap counts these)
    skipped: list[str] = field(default_factory=list)  # device nodes and the like
    stripped: list[str] = field(default_factory=list)  # setuid/setgid bits removed
    refused: list[str] = field(default_factory=list)  # members left out, each with its reason
    userns: int = 0  # inode of the user namespace the extraction ran in


def unpack(archive: str, dest: str, *, caps: Caps = Caps(), layer: bool = False) -> Report:
    """Unpack the tar ``archive`` (a path; plain, gzip, xz or bzip2, zstd when the
    ``zstandard`` module is installed) into the existing empty directory ``dest`` (or, with
    ``layer=True``, onto the tree already there, honouring OCI whiteouts), inside a throwaway
    user and mount namespace. Raises Refused naming the member for hostile content."""
    fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a fifo must not hang
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnpackFailed(f"{archive} is not a regular file")
        return unpack_fd(fd, dest, caps=caps, layer=layer, label=archive)
    finally:
        os.close(fd)


def unpack_fd(fd: int, dest: str, *, caps: Caps = Caps(), layer: bool = False,
              offset: int = 0, length: int = -1, digest: str = "",
              label: str = "") -> Report:
    """``unpack`` for ``length`` bytes of the open file ``fd`` from ``offset`` (-1: to its
    end), as the OCI importer reads a layer inside an outer tarball. A non-empty ``digest``
    ("sha256:<hex>") is checked against the bytes read; a mismatch is Refused naming it."""
    dfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if not layer and os.listdir(dfd):
            raise UnpackFailed(f"{dest} is not empty: an image is unpacked into a new directory")
        spec = {"max_bytes": caps.max_bytes, "max_inodes": caps.max_inodes, "layer": layer,
                "offset": offset, "length": length, "digest": digest,
                "label": label or f"fd {fd}"}
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        # -P: nothing from the working directory is imported; PYTHONPATH makes the child run
        # this very isol8 even when it is not installed (and keeps the caller's, where an
        # optional zstandard may be).
        path = os.pathsep.join(filter(None, (package_parent, os.environ.get("PYTHONPATH"))))
        proc = subprocess.run(
            [sys.executable, "-P", "-m", "isol8.images.unpack_main", str(fd), str(dfd),
             json.dumps(spec)],
            pass_fds=(fd, dfd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd="/", check=False,
            env={"PYTHONPATH": path, "LC_ALL": "C.UTF-8"})
    finally:
        os.close(dfd)
    try:
        answer = json.loads(proc.stdout)
    except ValueError:
        tail = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise UnpackFailed(f"the extraction process for {spec['label']} exited with status "
                           f"{proc.returncode} without a report: {tail}") from None
    if "refused" in answer:
        raise Refused(answer["refused"])
    if "error" in answer:
        raise UnpackFailed(answer["error"])
    return Report(**answer["report"])


# ---- the confined child's side (isol8.images.unpack_main); isol8.images.oci reads outer
# archives with ArchiveBytes and decompressed too ----

class ArchiveBytes:
    """The archive's bytes from ``fd`` (``length`` of them from ``offset``), hashed as read,
    with a look-ahead for the compression magic."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self.fd, self.offset, self.left = fd, offset, length
        self.hash = hashlib.sha256()
        self.ahead = b""

    def _pull(self, n: int) -> bytes:
        if self.left >= 0:
            n = min(n, self.left)
        data = os.pread(self.fd, n, self.offset) if n else b""
        self.offset += len(data)
        if self.left >= 0:
            self.left -= len(data)
            if n and not data:
                raise Refused("the archive ends before its stated length (truncated)")
        self.hash.update(data)
        return data

    def peek(self, n: int) -> bytes:
        while len(self.ahead) < n and (more := self._pull(n - len(self.ahead))):
            self.ahead += more
        return self.ahead[:n]

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 62
        if self.ahead:
            data, self.ahead = self.ahead[:n], self.ahead[n:]
            return data
        return self._pull(min(n, 4 * _CHUNK))

    def drain(self) -> None:
        self.ahead = b""
        while self._pull(4 * _CHUNK):
            pass


def decompressed(raw: ArchiveBytes) -> io.BufferedIOBase | IO[bytes]:
    magic, source = raw.peek(6), cast(IO[bytes], raw)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=source, mode="rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(source)
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(source)
    if magic.startswith(_ZSTD_MAGIC):
        try:
            import zstandard  # type: ignore[import-not-found]
        except ImportError:
            raise Refused("the archive is zstd-compressed and the 'zstandard' module is not "
                          "installed (pip install zstandard), or decompress it first") from None
        # read_across_frames: zstd:chunked layers are many frames, not one
        return zstandard.ZstdDecompressor().stream_reader(  # type: ignore[no-any-return]
            source, read_across_frames=True)
    return source


def preload() -> None:
    """Import, before the child chroots, what the extraction may need later."""
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        return
    del zstandard


class _Header(tarfile.TarInfo):
    """tarfile's header parser with what it tolerates turned into refusals: a corrupt header
    mid-archive (tarfile would end the listing there, silently) and metadata headers large
    enough to exhaust memory."""

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> _Header:
        try:
            return super().fromtarfile(tf)
        except (tarfile.EOFHeaderError, tarfile.EmptyHeaderError):  # type: ignore[attr-defined]
            raise
        except tarfile.HeaderError as exc:
            raise Refused(f"corrupt tar header at byte {tf.offset}: {exc}") from None

    def _proc_pax(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size > _META_MAX:
            raise Refused(f"a PAX header of {self.size} bytes at byte {self.offset}")
        return super()._proc_pax(tf)  # type: ignore[misc, no-any-return]

    def _proc_gnusparse_10(self, next: tarfile.TarInfo, pax_headers: dict[str, str],
                           tf: tarfile.TarFile) -> None:
        """tarfile's reader of a PAX (GNU 1.0) sparse map, with the map's length capped: the
        map is in the member's data, where a few compressed bytes could claim 10**12 runs."""
        buf = tf.fileobj.read(tarfile.BLOCKSIZE)  # type: ignore[attr-defined]
        count, buf = buf.split(b"\n", 1)
        if int(count) > _SPARSE_MAX:
            name = pax_headers.get("GNU.sparse.name", next.name)
            raise Refused(f"member {name!r}: a sparse map of {int(count)} runs")
        numbers: list[int] = []
        while len(numbers) < int(count) * 2:
            if b"\n" not in buf:
                buf += tf.fileobj.read(tarfile.BLOCKSIZE)  # type: ignore[attr-defined]
            number, buf = buf.split(b"\n", 1)
            numbers.append(int(number))
        next.offset_data = tf.fileobj.tell()  # type: ignore[attr-defined]
        next.sparse = list(zip(numbers[::2], numbers[1::2]))  # type: ignore[assignment]

    def _proc_gnulong(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size > _META_MAX:
            raise Refused(f"a GNU long name of {self.size} bytes at byte {self.offset}")
        return super()._proc_gnulong(tf)  # type: ignore[misc, no-any-return]


def relative_parts(name: str, member: str) -> tuple[str, ...]:
    """``name``'s components relative to the root; a ``..`` climbing above it is refused."""
    out: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                raise MemberRefused(f"member {member!r} leaves the image root ({name!r})")
            out.pop()
        else:
            out.append(part)
    return tuple(out)


def _mtime_ns(member: tarfile.TarInfo) -> int:
    """The member's mtime, clamped to [1970, 2242]; a PAX ``mtime`` of nan counts as 0."""
    try:
        return int(min(max(member.mtime, 0), 1 << 33) * 1_000_000_000)
    except (ValueError, OverflowError):
        return 0


class _Tree:
    """Writes members under the root fd, resolving every path with openat2 in that root."""

    def __init__(self, root: int, caps: Caps, layer: bool, report: Report) -> None:
        self.root, self.caps, self.layer, self.report = root, caps, layer, report
        self.dirs: list[tuple[tuple[str, ...], int]] = []  # mtimes set last
        self.touched: set[tuple[str, ...]] = set()  # this layer's paths and their parents
        self.opaque: set[tuple[str, ...]] = set()

    def _open_dir(self, parts: tuple[str, ...]) -> int:
        return _native.openat2(self.root, "/".join(parts) or ".",
                               os.O_PATH | os.O_DIRECTORY, 0, _IN_ROOT)

    def parent(self, parts: tuple[str, ...], member: str) -> int:
        """An O_PATH fd of ``parts``' parent directory, made one component at a time."""
        try:
            return self._open_dir(parts[:-1])
        except FileNotFoundError:
            pass
        fd = os.dup(self.root)
        for depth in range(1, len(parts)):
            try:
                os.mkdir(parts[depth - 1], 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            os.close(fd)
            try:
                fd = self._open_dir(parts[:depth])
            except FileNotFoundError:
                raise Refused(f"member {member!r}: {'/'.join(parts[:depth])!r} is a "
                              "dangling symlink") from None
            except NotADirectoryError:
                raise Refused(f"member {member!r}: {'/'.join(parts[:depth])!r} is not a "
                              "directory") from None
        return fd

    @staticmethod
    def clear(parent: int, base: str, keep_dir: bool = False) -> bool:
        """Remove ``base`` (a subtree if a directory, unless ``keep_dir``); True if a
        directory is kept."""
        try:
            st = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            shutil.rmtree(base, dir_fd=parent)
        else:
            os.unlink(base, dir_fd=parent)
        return False

    def add(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        report = self.report
        report.files += 1
        if report.files > self.caps.max_inodes:
            raise Refused(f"more than {self.caps.max_inodes} members (the inode cap); "
                          f"member {m.name!r} is one too many")
        parts = relative_parts(m.name, m.name)
        if self.layer and parts and parts[-1].startswith(_WHITEOUT):
            self.whiteout(parts, m.name)
            return
        if m.ischr() or m.isblk() or m.isfifo():
            report.skipped.append(m.name)
            return
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            raise Refused(f"member {m.name!r} has the unknown tar type {m.type!r}")
        mode = m.mode & 0o7777
        if mode & (stat.S_ISUID | stat.S_ISGID) and not m.issym():
            report.stripped.append(m.name)
            mode &= ~(stat.S_ISUID | stat.S_ISGID)
        if m.isreg():
            if report.bytes + m.size > self.caps.max_bytes:
                raise Refused(f"member {m.name!r} ({m.size} bytes) takes the contents over "
                              f"the size cap of {self.caps.max_bytes} bytes")
            report.bytes += m.size
        if self.layer:
            for depth in range(len(parts) + 1):
                self.touched.add(parts[:depth])
        if not parts:  # the root itself ("./")
            if m.isdir():
                os.fchmod(self.root, mode | 0o700)
                self.dirs.append(((), _mtime_ns(m)))
                return
            raise Refused(f"member {m.name!r} would replace the image root")
        parent = self.parent(parts, m.name)
        try:
            self.place(tf, m, parent, parts, mode)
        finally:
            os.close(parent)

    def place(self, tf: tarfile.TarFile, m: tarfile.TarInfo, parent: int,
              parts: tuple[str, ...], mode: int) -> None:
        base, mtime = parts[-1], _mtime_ns(m)
        if m.isdir():
            if not self.clear(parent, base, keep_dir=True):
                os.mkdir(base, 0o700, dir_fd=parent)
            fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=parent)
            try:
                os.fchmod(fd, mode | 0o700)
            finally:
                os.close(fd)
            self.dirs.append((parts, mtime))
        elif m.issym():
            self.clear(parent, base)
            os.symlink(m.linkname, base, dir_fd=parent)
            os.utime(base, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)
        elif m.islnk():
            self.hardlink(m, parent, parts)
        else:
            self.clear(parent, base)
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=parent)
            try:
                self.copy(tf, m, fd)
                os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)

    @staticmethod
    def copy(tf: tarfile.TarFile, m: tarfile.TarInfo, fd: int) -> None:
        reader = tf.extractfile(m)
        assert reader is not None  # a regular member always has contents
        source = reader.raw  # type: ignore[attr-defined]  # tarfile's _FileInFile: it seeks
        # A sparse member's map lists its data runs: only those are written, the rest stays
        # a hole (its size was already counted against the cap, as if it were all data).
        runs: list[tuple[int, int]] = m.sparse or [(0, m.size)]  # type: ignore[assignment]
        for offset, size in runs:
            source.seek(offset)
            os.lseek(fd, offset, os.SEEK_SET)
            while size > 0:
                chunk = source.read(min(size, _CHUNK))
                if not chunk:
                    raise Refused(f"member {m.name!r} ends before its stated size")
                size -= len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
        if m.sparse is not None:
            os.ftruncate(fd, m.size)

    def hardlink(self, m: tarfile.TarInfo, parent: int, parts: tuple[str, ...]) -> None:
        try:
            target = relative_parts(m.linkname, m.name)
        except Refused:
            raise MemberRefused(f"hard link {m.name!r} points outside the image root "
                                f"({m.linkname!r})") from None
        if target == parts:
            return
        if not target:
            raise MemberRefused(f"hard link {m.name!r} points at the image root")
        try:
            tparent = self._open_dir(target[:-1])
        except OSError:
            raise Refused(f"hard link {m.name!r}: its target {m.linkname!r} is not in the "
                          "archive before it") from None
        try:
            try:
                st = os.stat(target[-1], dir_fd=tparent, follow_symlinks=False)
            except FileNotFoundError:
                raise Refused(f"hard link {m.name!r}: its target {m.linkname!r} is not in "
                              "the archive before it") from None
            if stat.S_ISDIR(st.st_mode):
                raise Refused(f"hard link {m.name!r} points at a directory ({m.linkname!r})")
            self.clear(parent, parts[-1])
            os.link(target[-1], parts[-1], src_dir_fd=tparent, dst_dir_fd=parent,
                    follow_symlinks=False)
        finally:
            os.close(tparent)

    def whiteout(self, parts: tuple[str, ...], member: str) -> None:
        """OCI whiteouts apply to earlier layers only: what this layer placed stays."""
        base = parts[-1]
        if base == _OPAQUE:
            self.opaque.add(parts[:-1])
            return
        name = base[len(_WHITEOUT):]
        if name in ("", ".", ".."):
            raise Refused(f"whiteout {member!r} names no file")
        victim = parts[:-1] + (name,)
        if victim in self.touched:
            return
        try:
            parent = self._open_dir(parts[:-1])
        except (FileNotFoundError, NotADirectoryError):
            return  # nothing earlier to delete
        try:
            self.clear(parent, name)
        finally:
            os.close(parent)

    def finish(self) -> None:
        for parts in sorted(self.opaque):
            self._empty(parts)
        for parts, mtime in reversed(self.dirs):
            try:
                fd = _native.openat2(self.root, "/".join(parts) or ".",
                                     os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, 0, _IN_ROOT)
            except OSError:
                continue  # replaced or removed by a later member
            try:
                os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)

    def _empty(self, parts: tuple[str, ...]) -> None:
        """Delete what earlier layers left under directory ``parts``, recursively keeping
        this layer's own entries."""
        try:
            fd = self._open_dir(parts)
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            try:
                names = os.listdir(listing)
            finally:
                os.close(listing)
            for name in names:
                child = parts + (name,)
                if child not in self.touched:
                    self.clear(fd, name)
                elif stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    self._empty(child)
        finally:
            os.close(fd)


def write_tree(archive_fd: int, root: int, caps: Caps, layer: bool, offset: int = 0,
               length: int = -1, digest: str = "") -> Report:
    """Stream the archive into the tree under ``root`` (see the module docstring)."""
    report = Report()
    raw = ArchiveBytes(archive_fd, offset, length)
    tree = _Tree(root, caps, layer, report)
    member = ""
    try:
        stream = decompressed(raw)
        tf = tarfile.open(fileobj=stream, mode="r|", tarinfo=_Header,  # type: ignore[call-overload]
                          bufsize=1 << 16)
        while (m := tf.next()) is not None:
            member = m.name
            try:
                tree.add(tf, m)
            except MemberRefused as exc:
                report.refused.append(str(exc))
            # tarfile would otherwise keep every header in memory
            tf.members.clear()  # type: ignore[attr-defined]
        while stream.read(_CHUNK):  # the compressed stream's end, and its checksum
            pass
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as exc:
        where = f" at member {member!r}" if member else ""
        raise Refused(f"the archive is corrupt or truncated{where}: {exc}") from None
    except OSError as exc:
        if exc.errno is None:  # bz2's and zstandard's word for corrupt data
            raise Refused(f"the archive is corrupt at member {member!r}: {exc}") from None
        if exc.errno in _CONTENT_ERRORS:
            raise Refused(f"member {member!r} cannot be placed: {exc}") from None
        raise UnpackFailed(f"member {member!r}: {exc}") from None
    raw.drain()
    report.sha256 = raw.hash.hexdigest()
    if digest and digest != f"sha256:{report.sha256}":
        raise Refused(f"blob {digest} does not match its contents (sha256:{report.sha256})")
    tree.finish()
    return report


def report_json(report: Report) -> str:
    return json.dumps({"report": asdict(report)})


def answer_json(kind: str, message: str) -> str:
    return json.dumps({kind: message})


def spec_caps(spec: dict[str, Any]) -> Caps:
    return Caps(int(spec["max_bytes"]), int(spec["max_inodes"]))
