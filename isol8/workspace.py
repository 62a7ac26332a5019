"""A persistent sandbox's ``/sandbox`` kept in a host directory (``workspace_dir=``).

The directory is never mounted into the sandbox: its contents are copied into the
``/sandbox`` tmpfs when the session starts (a tar unpacked by the sandbox user, inside the
sandbox) and copied back when the engine stops. So ``sandbox_size`` caps the workspace and
``memory_limit`` counts it, exactly as for any persistent sandbox, and nothing the code
does (symlinks, hard links, devices, huge sparse files) acts on the host's file system.

Both copies stream through the supervisor (neither is ever held whole in memory), and the
host side never follows a symlink: the workspace's parent is opened from ``/`` one component
at a time (isol8.fdtree), once per copy, and every read, extraction and rename is relative to
that fd. A ``workspace_dir`` with a symlink in its path is refused (give its real path), and
so is one inside one of the engine's read-write ``mounts`` or holding one: the sandbox could
swap it for a symlink to a directory it may not read, or change it while it is copied.

Saving, at ``stop()``: every process of the session but its init is killed first
(``Session.kill_all``), so the archiver (GNU tar) runs alone, with no same-uid neighbour to
write into its pipe or stop it. It archives ``/sandbox``'s own file system (``mounts`` under
it are not copied) without ``--sparse``, and what comes back is still extracted as hostile
(isol8.untar says what each member type becomes) into a fresh directory beside the workspace,
bounded by ``sandbox_size`` as it arrives (the archiver is killed once it is over), then
swapped in with two renames. Any problem fails the save and keeps the previous workspace
whole; ``stop()`` still tears everything down, then raises, naming the workspace.

Restoring, at the session's start: the workspace (regular files, directories, symlinks kept
as links, hard links) is packed by a thread into a pipe the sandbox's tar reads; fifos,
sockets and devices are left out, as a save leaves them out, and more content than
``sandbox_size`` fails the restore.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import tarfile
import threading
import time
from collections.abc import Generator, Iterable

from . import fdtree
from .errors import InvalidRequest, Isol8Error
from .policy import Mount
from .runtimes import SANDBOX_HOME
from .sandbox import RunOutcome, RunSpec, close_all, finish
from .session import Session
from .untar import Refused, extract

_TIMEOUT = 300.0  # copying a workspace of a full 512 MiB tmpfs takes seconds, not minutes
_PATH = {"PATH": "/usr/bin:/bin"}
_TAR = "/usr/bin/tar"
# pax format without the per-member time records (the ustar header's mtime is enough), so a
# member has a pax header only for a long name: see isol8.untar for what is accepted.
_ARCHIVER = RunSpec([_TAR, "--format=posix", "--pax-option=delete=atime,delete=ctime,"
                     "delete=mtime", "--one-file-system", "-cf", "-", "-C", SANDBOX_HOME, "."],
                    _PATH, SANDBOX_HOME, b"", [])
_EXTRACTOR = RunSpec([_TAR, "-xf", "-", "-C", SANDBOX_HOME, "--no-same-owner"], _PATH,
                     SANDBOX_HOME, b"", [])
_STDERR_KEPT = 1 << 16


def validated_dir(value: object, mounts: tuple[Mount, ...] = ()) -> str:
    """An existing host directory (made if missing) as an absolute path without symlinks,
    neither inside nor around one of ``mounts`` that is read-write."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value or "\0" in value:
        raise InvalidRequest(f"workspace_dir: expected a host directory, got {value!r}")
    path = os.path.abspath(value)
    if path == "/":
        raise InvalidRequest("workspace_dir: / cannot be a workspace (a save replaces it)")
    for mount in mounts:
        if not mount.readonly and (_within(path, mount.source) or _within(mount.source, path)):
            raise InvalidRequest(
                f"workspace_dir: {path} and the read-write mount of {mount.source} (at "
                f"{mount.target}) overlap: the sandbox could swap the workspace for a symlink "
                "or change it while it is copied; keep the workspace out of read-write mounts")
    try:
        os.close(fdtree.open_path(path, create=True))
    except OSError as exc:
        raise InvalidRequest(f"workspace_dir: {_path_problem(path, exc)}") from None
    return path


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _path_problem(path: str, exc: OSError) -> str:
    where = exc.filename or path
    if exc.errno == errno.ELOOP:
        return (f"{path} has a symlink at {where}: give the path without symlinks "
                f"(os.path.realpath), none is ever followed")
    if exc.errno == errno.ENOTDIR:
        return f"{where} is not a directory"
    return f"{where}: {exc.strerror}"


def _open(directory: str) -> tuple[int, int]:
    """The workspace's parent and the workspace, both opened without following a symlink
    (an error names the component at fault)."""
    parent = fdtree.open_path(os.path.dirname(directory))
    try:
        return parent, fdtree.open_dir(os.path.basename(directory), parent)
    except OSError as exc:
        os.close(parent)
        raise OSError(exc.errno, exc.strerror, directory) from None


def restore(session: Session, directory: str, limit: int) -> None:
    """Copy the workspace into the session's /sandbox (unpacked by the sandbox user)."""
    try:
        parent, root = _open(directory)
        os.close(parent)
    except OSError as exc:
        raise Isol8Error(f"workspace_dir: cannot restore: {_path_problem(directory, exc)}") \
            from None
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        packer = _Packer(root, write_end, limit)
    except BaseException:
        close_all([root, read_end, write_end])
        raise
    try:
        outcome = finish(_streamed(session, _EXTRACTOR, time.monotonic() + _TIMEOUT, read_end))
    finally:
        packer.join()
    failure = packer.failure or _failure(outcome)
    if failure:
        raise Isol8Error(f"workspace_dir: restoring {directory} into /sandbox failed: {failure}")


def save(session: Session, directory: str, limit: int) -> None:
    """Replace the workspace's contents with the session's /sandbox (a tmpfs of ``limit``
    bytes), or raise, the workspace unchanged. Kills every process of the session first."""
    try:
        session.kill_all()  # from here on the archiver is the only process but the init
        archive = _archive(session)
        try:
            leftover = unpack(archive, directory, limit)
        finally:
            archive.close()  # an archiver still going is killed
    except (Isol8Error, Refused, OSError) as exc:
        reason = _path_problem(directory, exc) if isinstance(exc, OSError) else str(exc)
        raise Isol8Error(f"workspace_dir: saving /sandbox to {directory} failed ({reason}); "
                         "the workspace keeps its previous contents") from None
    if leftover:
        raise Isol8Error(f"workspace_dir: {directory} is saved, but its previous contents "
                         f"could not all be removed: {leftover}")


def _archive(session: Session) -> Generator[bytes, None, None]:
    """/sandbox as a tar, as the archiver writes it; its failure raises at the end."""
    outcome = yield from _streamed(session, _ARCHIVER, time.monotonic() + _TIMEOUT)
    failure = _failure(outcome)
    if failure:
        raise Isol8Error(f"the archiver failed: {failure}")


def unpack(archive: Iterable[bytes], directory: str, limit: int) -> str:
    """Replace the contents of the workspace ``directory`` with ``archive``'s, extracted as
    hostile (isol8.untar) into a fresh directory swapped in once complete: raises (Refused,
    or the OSError or error ``archive`` raised) with the workspace unchanged. Returns what
    is left of the previous contents if they could not all be removed, else ""."""
    name = os.path.basename(directory)
    parent, current = _open(directory)
    try:
        mode = stat.S_IMODE(os.fstat(current).st_mode)
        os.close(current)
        fresh = _new_dir(parent, ".isol8-workspace-")
        try:
            root = fdtree.open_dir(fresh, parent)
            try:
                extract(archive, root, limit)
                os.fchmod(root, mode)
            finally:
                os.close(root)
            old = _swap(parent, fresh, name)
        except BaseException:
            fdtree.remove_tree(parent, fresh)
            raise
        try:
            fdtree.remove_tree(parent, old)
        except OSError as exc:
            return f"{os.path.join(os.path.dirname(directory), old)}: {exc.strerror}"
        return ""
    finally:
        os.close(parent)


def _swap(parent: int, fresh: str, name: str) -> str:
    """``fresh`` becomes ``name`` with two renames (rename(2) replaces an empty directory),
    so ``name`` is never a mix of both; returns where the old contents went."""
    old = _new_dir(parent, ".isol8-workspace-old-")
    try:
        os.rename(name, old, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        os.rmdir(old, dir_fd=parent)
        raise
    try:
        os.rename(fresh, name, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        os.rename(old, name, src_dir_fd=parent, dst_dir_fd=parent)
        raise
    return old


def _new_dir(parent: int, prefix: str) -> str:
    while True:
        name = prefix + secrets.token_hex(6)
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
            return name
        except FileExistsError:
            continue


def _failure(outcome: RunOutcome) -> str:
    """Why a copy's tar failed, or "" if it did not."""
    if outcome.timed_out:
        return f"it took over {_TIMEOUT:.0f} s"
    if outcome.oom:
        return "the sandbox ran out of memory"
    if outcome.exit_code != 0:
        code = outcome.exit_code if outcome.signal is None else f"signal {outcome.signal}"
        return outcome.stderr.text() or f"tar exited with {code}"
    return ""


class _Handed:
    """A stdout sink that hands every byte on and keeps none."""

    def feed(self, data: bytes) -> bytes:
        return data

    def end(self) -> bytes:
        return b""


def _streamed(session: Session, spec: RunSpec, deadline: float,
              stdin: int = -1) -> Generator[bytes, None, RunOutcome]:
    """Run ``spec`` in the session, yielding its stdout as it arrives and keeping none of it
    (a whole workspace passes through); ``stdin``, an fd, is closed once the process has it.
    Closing the generator early kills the run."""
    run = session.run(spec, deadline=deadline, max_output=_STDERR_KEPT,
                      owner=session.host.owner, secrets=[], cancel_fd=-1, stdout=_Handed(),
                      stdin_fd=stdin)
    try:
        while True:
            try:
                name, data = next(run)
            except StopIteration as done:
                outcome: RunOutcome = done.value
                break
            if name == "stdout":
                yield data
    finally:
        run.close()
    if outcome.gone and not outcome.oom:
        raise Isol8Error("the sandbox ended during the copy")
    return outcome


class _Packer(threading.Thread):
    """Writes the workspace (the directory fd ``root``, closed when done) as a tar into
    ``out`` (a pipe's write end, closed when done, so the reader sees its end); the first
    problem, if any, is in ``failure``."""

    def __init__(self, root: int, out: int, limit: int) -> None:
        super().__init__(name="isol8-workspace-pack", daemon=True)
        self._root, self._out, self._limit = root, out, limit
        self.failure = ""
        self.start()

    def run(self) -> None:
        try:
            with os.fdopen(self._out, "wb", closefd=False) as out, \
                    tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
                self._pack(archive)
        except BrokenPipeError:
            pass  # the reader ended first: its exit status says why
        except (OSError, ValueError, _Unpackable) as exc:
            self.failure = str(exc)
        finally:
            os.close(self._out)
            os.close(self._root)

    def _pack(self, archive: tarfile.TarFile) -> None:
        left = self._limit
        linked: dict[tuple[int, int], str] = {}  # (dev, ino) of files with several names
        with fdtree.Cursor(self._root) as cursor:
            stack: list[tuple[tuple[str, ...], list[str] | None]] = [((), None)]
            while stack:
                parts, names = stack[-1]
                here = cursor.at(parts)
                if names is None:
                    names = sorted(os.listdir(here), reverse=True)
                    stack[-1] = (parts, names)
                if not names:
                    stack.pop()
                    continue
                name = names.pop()
                info = tarfile.TarInfo("/".join((*parts, name)))
                st = os.stat(name, dir_fd=here, follow_symlinks=False)
                info.mode, info.mtime = stat.S_IMODE(st.st_mode) & 0o777, int(st.st_mtime)
                if stat.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                    archive.addfile(info)
                    stack.append(((*parts, name), None))
                elif stat.S_ISLNK(st.st_mode):
                    info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=here)
                    archive.addfile(info)
                elif stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) in linked:
                    info.type, info.linkname = tarfile.LNKTYPE, linked[st.st_dev, st.st_ino]
                    archive.addfile(info)
                elif stat.S_ISREG(st.st_mode):
                    left = self._add_file(archive, info, name, here, left)
                    if st.st_nlink > 1:
                        linked[st.st_dev, st.st_ino] = info.name
                # Anything else (fifo, socket, device) is left out, as a save leaves it out.

    def _add_file(self, archive: tarfile.TarFile, info: tarfile.TarInfo, name: str,
                  here: int, left: int) -> int:
        # O_NONBLOCK: a fifo swapped in meanwhile must not block the open; fstat refuses it.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=here)
        with os.fdopen(fd, "rb") as source:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Unpackable(f"/{info.name} in the workspace changed while it was read")
            if st.st_size > left:
                raise _Unpackable(f"the workspace holds more than sandbox_size "
                                  f"({self._limit} bytes)")
            info.size = st.st_size
            archive.addfile(info, source)
        return left - st.st_size


class _Unpackable(Exception):
    """Something in the workspace that cannot go into the sandbox."""
