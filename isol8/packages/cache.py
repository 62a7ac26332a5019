"""The download cache shared by every sandbox of this host user: verified files only,
read-only inside.

A cache a sandbox could write would let one tenant poison every other tenant's installs, so
sandboxes never write it: they see it read-only at ``MOUNT``, and only the supervisor adds
a file, after hashing the bytes itself and comparing with the sha256 the index publishes
for that file name (isol8.packages.index). Each file goes in by an atomic rename, so a
reader never sees half of one.

The installer inside uses ``index.html``: one PEP 503 link per file, carrying the hash the
file was verified against (``name.whl#sha256=HEX``). pip checks a link's hash against the
bytes it installs, so a file changed on disk after it was cached (a bad disk, an operator's
mistake) is refused by the install, which then falls back to the index; the fresh, verified
download replaces it.

Layout: ``<root>/<index key>/`` holds the files, ``index.json`` ({file: sha256}, the
source of truth), ``index.html`` (rendered from it) and ``.lock`` (flock: concurrent engines
add files one at a time). One directory per index: a file name means one content only
within the index that published it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import html
import json
import os
import re
import tempfile
import urllib.parse
from collections.abc import Iterator

MOUNT = "/mnt/.isol8-packages"  # where sandboxes see their index's directory, read-only
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!-]{0,250}\.(?:whl|tar\.gz|zip|tgz)\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


def default_root() -> str:
    """``$ISOL8_PACKAGE_CACHE``, else root's ``/var/cache/isol8/packages``, else
    ``$XDG_CACHE_HOME/isol8/packages`` (``~/.cache``)."""
    if os.environ.get("ISOL8_PACKAGE_CACHE"):
        return os.path.abspath(os.environ["ISOL8_PACKAGE_CACHE"])
    if os.geteuid() == 0:
        return "/var/cache/isol8/packages"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "isol8", "packages")


class PackageCache:
    """The cache directory of one index under ``root``."""

    def __init__(self, root: str, index_url: str) -> None:
        key = hashlib.sha256(index_url.encode()).hexdigest()[:16]
        host = re.sub(r"[^a-z0-9.-]", "_", (urllib.parse.urlsplit(index_url).hostname or ""))
        self.dir = os.path.join(root, f"{host}-{key}")

    def ensure(self) -> str:
        """Create the directory (0755: as root a sandbox is a leased uid that reads it
        through the "other" bits) with an empty index; returns its path, to mount."""
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        # whatever the umask made it: inside, only the mounted directory's own bits count
        if os.stat(self.dir).st_mode & 0o755 != 0o755:
            os.chmod(self.dir, 0o755)
        if not os.path.exists(os.path.join(self.dir, "index.html")):
            with self._locked():
                self._write_index(self.entries())
        return self.dir

    def entries(self) -> dict[str, str]:
        """``{file name: sha256}`` of every file in the cache."""
        try:
            with open(os.path.join(self.dir, "index.json"), encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and FILE_NAME.match(k)
                and isinstance(v, str) and _HEX64.match(v)} if isinstance(data, dict) else {}

    def has(self, name: str, sha256: str) -> bool:
        """Whether ``name`` is cached with exactly these bytes (hashed again here: the
        index says what was verified once, the disk may have changed since)."""
        if self.entries().get(name) != sha256:
            return False
        try:
            return _sha256_file(os.path.join(self.dir, name)) == sha256
        except OSError:
            return False

    def add(self, name: str, data: bytes, published: str) -> bool:
        """Cache ``data`` as ``name`` if it hashes to ``published`` (the index's sha256 for
        that name); False, and nothing written, if it does not."""
        if not FILE_NAME.match(name) or not _HEX64.match(published):
            return False
        if hashlib.sha256(data).hexdigest() != published:
            return False
        self.ensure()
        with self._locked():
            fd, tmp = tempfile.mkstemp(prefix=".part-", dir=self.dir)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o644)
                os.rename(tmp, os.path.join(self.dir, name))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            entries = self.entries()
            entries[name] = published
            self._write_index(entries)
        return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.dir, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write_index(self, entries: dict[str, str]) -> None:
        links = "".join(
            f'<a href="{html.escape(urllib.parse.quote(name))}#sha256={digest}">'
            f"{html.escape(name)}</a><br>\n" for name, digest in sorted(entries.items()))
        _atomic_write(os.path.join(self.dir, "index.json"),
                      json.dumps(entries, indent=0, sort_keys=True).encode())
        _atomic_write(os.path.join(self.dir, "index.html"),
                      f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n".encode())


def _atomic_write(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
