"""A persistent sandbox's ``/sandbox`` kept in a host directory (``workspace_dir=``).

The directory is never mounted into the sandbox: its contents are copied into the
``/sandbox`` tmpfs when the session starts (a tar unpacked by the sandbox user, inside the
sandbox) and copied back when the engine stops. So ``sandbox_size`` caps the workspace and
``memory_limit`` counts it, exactly as for any persistent sandbox, and nothing the code
does (symlinks, hard links, devices, huge sparse files) acts on the host's file system.

Unpacking on the host is the dangerous direction: the archive comes from untrusted code.
It is extracted into a fresh directory beside the workspace, with regular files and
directories only, every name checked, parents created before any symlink exists (symlinks
are made last and never followed), then swapped in with two renames.
"""

from __future__ import annotations

import base64
import io
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import time

from .errors import InvalidRequest, Isol8Error
from .runtimes import BASH, SANDBOX_HOME
from .sandbox import RunSpec, finish
from .session import Session


def validated_dir(value: object) -> str:
    """An existing host directory (created if its parent exists), as an absolute path."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value or "\0" in value:
        raise InvalidRequest(f"workspace_dir: expected a host directory, got {value!r}")
    path = os.path.abspath(value)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise InvalidRequest(f"workspace_dir: cannot create {path}: {exc.strerror}") from None
    if not os.path.isdir(path) or os.path.islink(path):
        raise InvalidRequest(f"workspace_dir: {path} is not a directory")
    return path


def pack(directory: str) -> bytes:
    """The workspace as an uncompressed tar (empty bytes for an empty workspace)."""
    if not os.listdir(directory):
        return b""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(os.listdir(directory)):
            archive.add(os.path.join(directory, name), arcname=name)  # links kept as links
    return buffer.getvalue()


def unpack(data: bytes, directory: str) -> None:
    """Replace the workspace's contents with the archive's, safely (see the module doc)."""
    parent = os.path.dirname(directory)
    fresh = tempfile.mkdtemp(prefix=".isol8-workspace-", dir=parent)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            _extract(archive, fresh)
        os.chmod(fresh, stat.S_IMODE(os.stat(directory).st_mode))
        old = tempfile.mkdtemp(prefix=".isol8-workspace-old-", dir=parent)
        os.rename(directory, os.path.join(old, "w"))
        os.rename(fresh, directory)
        shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise


def _extract(archive: tarfile.TarFile, root: str) -> None:
    root = os.path.realpath(root)
    links = []
    for member in archive:
        name = _safe_name(member.name)
        if name is None:
            continue
        path = os.path.join(root, name)
        try:
            if member.isdir():
                os.makedirs(path, mode=0o755, exist_ok=True)
                os.chmod(path, (member.mode & 0o777) | 0o700)
            elif member.isreg():
                _write_file(archive, member, path)
            elif member.issym():
                links.append((member.linkname, path))
        except OSError:
            continue  # e.g. a name used twice, as a file and as a directory: the first stays
    # Symlinks last, so no file or directory above was created through one; and each goes
    # only into a directory of the first pass, never through a link made here.
    for target, path in links:
        parent = os.path.dirname(path)
        if os.path.realpath(parent) != parent or not os.path.isdir(parent):
            continue
        try:
            os.symlink(target, path)
        except OSError:
            continue


def _write_file(archive: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    source = archive.extractfile(member)
    assert source is not None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 member.mode & 0o777)
    with os.fdopen(fd, "wb") as target:
        shutil.copyfileobj(source, target)


def _safe_name(name: str) -> str | None:
    """A relative name inside the archive's root, or None for anything else."""
    name = posixpath.normpath(name.lstrip("/")) if name else ""
    if name in ("", ".") or name.startswith("..") or "\0" in name:
        return None
    return name


_TIMEOUT = 300.0  # copying a workspace of a full 512 MiB tmpfs takes seconds, not minutes
_PATH = {"PATH": "/usr/bin:/bin"}


def restore(session: Session, directory: str) -> None:
    """Copy the workspace into the session's /sandbox (unpacked by the sandbox user)."""
    data = pack(directory)
    if not data:
        return
    outcome = finish(session.run(
        RunSpec(["/usr/bin/tar", "-xf", "-", "-C", SANDBOX_HOME, "--no-same-owner"], _PATH,
                SANDBOX_HOME, data, []),
        deadline=time.monotonic() + _TIMEOUT, max_output=1 << 16, owner=session.host.owner,
        secrets=[], cancel_fd=-1))
    if outcome.exit_code != 0:
        raise Isol8Error(f"workspace_dir: restoring {directory} into /sandbox failed: "
                         f"{outcome.stderr.text() or outcome.exit_code}")


def save(session: Session, directory: str, limit: int) -> None:
    """Copy the session's /sandbox (a tmpfs of ``limit`` bytes) back over the workspace.
    The archive's headers and padding can double a tmpfs of small files: twice the size
    bounds it."""
    outcome = finish(session.run(
        RunSpec([BASH, "-c", "set -o pipefail; tar -cf - -C /sandbox . | base64 -w0"],
                _PATH, SANDBOX_HOME, b"", []),
        deadline=time.monotonic() + _TIMEOUT, max_output=(2 * limit + (1 << 20)) * 4 // 3,
        owner=session.host.owner, secrets=[], cancel_fd=-1))
    if outcome.exit_code != 0 or outcome.stdout.truncated or outcome.timed_out:
        raise Isol8Error(f"workspace_dir: saving /sandbox to {directory} failed: "
                         f"{outcome.stderr.text() or outcome.exit_code}; it keeps its "
                         "previous contents")
    unpack(base64.b64decode(outcome.stdout.data()), directory)
