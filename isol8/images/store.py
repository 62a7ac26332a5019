"""The local image store: content-addressed root filesystems with a manifest each.

Layout under the store root (``$ISOL8_IMAGES``, else ``$XDG_DATA_HOME/isol8/images``, else
``~/.local/share/isol8/images``; as root ``/var/lib/isol8/images``)::

    sha256-<hex>/rootfs/        the unpacked tree, never written after its import
    sha256-<hex>/manifest.json  what it is (see Image.manifest)
    names/<name>                a symlink to ../sha256-<hex>, replaced atomically
    locks/<name>                flock'd while a build, import or rm of that name runs
    locks/.store                flock'd while a content directory is added or removed
    tmp/<name>.<pid>.<rand>/    staging: an archive is unpacked here, then renamed into place
    tmp/rm.<pid>.<rand>/        a removed content directory, renamed out of sight, then deleted

A running engine holds a shared flock on its image's ``manifest.json`` (``hold``) for as
long as it may start sandboxes on it; removing content takes an exclusive one without
waiting, so an image in use is never deleted under its engine: a rebuild, reimport or rm
then leaves the old content as an orphan, which ``sweep`` (``isol8 cleanup``) removes once
nothing holds it.

Nothing half-made is ever visible: a content directory appears by one rename(2) of a complete
staging directory, a name by one rename(2) of a new symlink over the old. Two builds of one
name serialize on its lock, so the second sees the first's image (up to date) instead of
building again; an rm takes the store lock too, so it never removes a content directory
another name was just pointed at.
"""

from __future__ import annotations

import builtins  # ImageStore.list shadows list in the class body
import contextlib
import datetime
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ..errors import Isol8Error

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_DIGEST = re.compile(r"^sha256-[0-9a-f]{64}$")


class ImageNotFound(Isol8Error):
    """No image of that name is in the store; the message names the command that makes it."""


@dataclass(frozen=True, slots=True)
class Image:
    name: str
    digest: str  # "sha256-<hex>"
    root: str  # absolute path of the rootfs directory
    manifest: Mapping[str, object]


def default_root() -> str:
    if os.environ.get("ISOL8_IMAGES"):
        return os.path.abspath(os.environ["ISOL8_IMAGES"])
    if os.geteuid() == 0:
        return "/var/lib/isol8/images"
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(data, "isol8", "images")


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise ImageNotFound(f"image name {name!r} is not valid (lowercase letters, "
                            "digits, '.', '_' and '-', at most 64)")


class ImageStore:
    def __init__(self, root: str | None = None) -> None:
        self.root = root or default_root()

    def get(self, name: str) -> Image:
        check_name(name)
        link = os.path.join(self.root, "names", name)
        try:
            digest = os.path.basename(os.readlink(link))
            with open(os.path.join(self.root, digest, "manifest.json"), "rb") as fh:
                manifest = json.load(fh)
        except OSError:
            raise ImageNotFound(
                f"image {name!r} is not in {self.root}: build it with "
                f"'isol8 image build {name}' or import one with "
                f"'isol8 image import FILE --name {name}'") from None
        return Image(name, digest, os.path.join(self.root, digest, "rootfs"), manifest)

    def find(self, name: str) -> Image | None:
        try:
            return self.get(name)
        except ImageNotFound:
            return None

    def list(self) -> list[Image]:
        try:
            names = sorted(os.listdir(os.path.join(self.root, "names")))
        except FileNotFoundError:
            return []
        return [img for img in map(self.find, names) if img is not None]

    # -- writing -------------------------------------------------------------------------------

    def _dir(self, *parts: str, mode: int = 0o755) -> str:
        path = os.path.join(self.root, *parts)
        os.makedirs(path, mode=mode, exist_ok=True)
        return path

    @contextlib.contextmanager
    def _flock(self, lock_name: str) -> Iterator[None]:
        fd = os.open(os.path.join(self._dir("locks", mode=0o700), lock_name),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Hold while building, importing or removing ``name`` (other processes wait)."""
        check_name(name)
        return self._flock(name)

    @contextlib.contextmanager
    def staging(self, name: str) -> Iterator[str]:
        """A fresh directory under tmp/ (same file system as the content directories, so
        they can be renamed into place), removed afterwards whatever happened. Call with
        ``name``'s lock held: other tmp/<name>.* directories are then leftovers of a killed
        build, removed too."""
        tmp = self._dir("tmp", mode=0o700)
        for entry in os.listdir(tmp):
            if entry.startswith(name + "."):
                remove_tree(os.path.join(tmp, entry))
        path = os.path.join(tmp, f"{name}.{os.getpid()}.{secrets.token_hex(4)}")
        os.mkdir(path, 0o700)
        try:
            yield path
        finally:
            remove_tree(path)

    def commit(self, name: str, content: str, digest: str,
               manifest: dict[str, object]) -> Image:
        """Move ``content`` (a staging directory holding ``rootfs/``) into the store as
        ``digest``, unless that content is already there, and point ``name`` at it; the
        content it pointed at before goes, as with remove(), unless another name uses it.
        Call with ``name``'s lock held."""
        if not _DIGEST.match(digest):
            raise Isol8Error(f"image digest {digest!r} is not sha256-<64 hex digits>")
        with open(os.path.join(content, "manifest.json"), "w") as fh:
            json.dump(manifest, fh, indent=1, sort_keys=True)
            fh.write("\n")
        names = self._dir("names")
        target = os.path.join(self.root, digest)
        old = self.find(name)
        with self._flock(".store"):
            if not os.path.isdir(target):
                os.chmod(content, 0o755)
                os.rename(content, target)
            link = os.path.join(names, f".{name}.{secrets.token_hex(4)}")
            os.symlink(os.path.join("..", digest), link)
            os.rename(link, os.path.join(names, name))  # atomic: readers see old or new
            doomed = self._unlink_content(old.digest) if old and old.digest != digest else None
        if doomed:
            remove_tree(doomed)
        return self.get(name)

    def _unlink_content(self, digest: str) -> str | None:
        """With the store lock held: move ``digest`` out of sight (one rename into tmp/)
        unless a name still uses it or a running engine holds it; the caller removes what is
        returned, lock released."""
        if any(other.digest == digest for other in self.list()):
            return None
        content = os.path.join(self.root, digest)
        try:
            fd = os.open(os.path.join(content, "manifest.json"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1  # a half-removed directory: nobody can hold it
        try:
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return None  # in use: an orphan until sweep() finds it free
            doomed = os.path.join(self._dir("tmp", mode=0o700),
                                  f"rm.{os.getpid()}.{secrets.token_hex(8)}")
            os.rename(content, doomed)
            return doomed
        finally:
            if fd >= 0:
                os.close(fd)

    def hold(self, image: Image) -> int:
        """A shared flock on ``image``'s content for as long as the returned fd is open:
        its content is not deleted meanwhile (see the module docstring)."""
        fd = os.open(os.path.join(self.root, image.digest, "manifest.json"),
                     os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            # Removed between get() and the lock: its content is gone or going.
            if not os.path.exists(os.path.join(self.root, image.digest, "manifest.json")):
                raise ImageNotFound(f"image {image.name!r} was removed while starting; "
                                    "run again")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def sweep(self, *, dry_run: bool = False) -> builtins.list[tuple[str, str, str]]:
        """What killed builds and removals left, and content no name uses and no engine
        holds: ``(path, action, why)`` per entry, removed unless ``dry_run``. A staging
        directory is stale when no build of its name holds the name's lock; a half-removed
        directory when its remover's pid is gone."""
        found: builtins.list[tuple[str, str, str]] = []
        tmp = os.path.join(self.root, "tmp")
        for entry in sorted(_listdir(tmp)):
            path = os.path.join(tmp, entry)
            parts = entry.split(".")
            if parts[0] == "rm" and len(parts) == 3 and parts[1].isdigit():
                if _pid_alive(int(parts[1])):
                    continue
                why = f"a removal by pid {parts[1]}, which is gone, left it"
            elif len(parts) >= 3 and NAME.match(".".join(parts[:-2])):
                if not self._lock_free(".".join(parts[:-2])):
                    continue
                why = "a build or import that is no longer running left it"
            else:
                continue
            found.append(self._drop(path, why, dry_run))
        used = {image.digest for image in self.list()}
        for entry in sorted(_listdir(self.root)):
            if not _DIGEST.match(entry) or entry in used:
                continue
            if dry_run:
                found.append((os.path.join(self.root, entry), "would remove",
                              "no image name uses it"))
                continue
            with self._flock(".store"):
                doomed = self._unlink_content(entry) if entry not in {
                    i.digest for i in self.list()} else None
            if doomed is None:
                found.append((os.path.join(self.root, entry), "kept",
                              "no name uses it, but a running engine does"))
            else:
                found.append(self._drop(doomed, "no image name used it", dry_run))
        return found

    def _lock_free(self, name: str) -> bool:
        try:
            fd = os.open(os.path.join(self.root, "locks", name), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    @staticmethod
    def _drop(path: str, why: str, dry_run: bool) -> tuple[str, str, str]:
        if dry_run:
            return path, "would remove", why
        try:
            remove_tree(path)
        except OSError as exc:
            return path, "failed", f"{why}; {exc.strerror}"
        return path, "removed", why

    def remove(self, name: str) -> str:
        """Remove ``name``, and its content directory when no other name uses it (a sandbox
        running from it loses its files: remove images no run uses). Returns the digest.
        Call with ``name``'s lock held."""
        image = self.get(name)
        with self._flock(".store"):
            os.unlink(os.path.join(self.root, "names", name))
            doomed = self._unlink_content(image.digest)
        if doomed:
            remove_tree(doomed)
        return image.digest


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_tree(path: str) -> None:
    """rmtree that also removes what sits in read-only directories (images have them, and a
    rootless owner may only unlink in a directory it can write): u+rwx every directory
    first, never following a symlink."""
    if not os.path.lexists(path):
        return
    for top, dirs, _files in os.walk(path):
        for d in dirs:
            p = os.path.join(top, d)
            with contextlib.suppress(OSError):
                st = os.lstat(p)
                if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o700 != 0o700:
                    os.chmod(p, st.st_mode | 0o700)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)

    def gone_already(_func: object, _path: str, exc_info: tuple) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):  # another remover got there first
            raise exc_info[1]

    shutil.rmtree(path, onerror=gone_already)


# -- what a manifest says about a root filesystem ----------------------------------------------

def dpkg_packages(rootfs: str) -> dict[str, str]:
    """{package: version} of what dpkg's status file says is installed (an image not built
    from Debian has none)."""
    try:
        with open(os.path.join(rootfs, "var/lib/dpkg/status"), encoding="utf-8",
                  errors="replace") as fh:
            text = fh.read()
    except OSError:
        return {}
    packages = {}
    for para in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in para.splitlines()
                      if ": " in line and not line.startswith(" "))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            packages[fields["Package"]] = fields.get("Version", "")
    return packages


def upstream_version(debian_version: str) -> str:
    """'3.11.2-6+deb12u6' -> '3.11.2'; '18.19.0+dfsg-6~deb12u2' -> '18.19.0'."""
    v = debian_version.split(":", 1)[-1].rsplit("-", 1)[0]
    return re.split(r"[+~]", v, maxsplit=1)[0]


def runtime_versions(packages: Mapping[str, str]) -> dict[str, str | None]:
    python = next((v for p, v in sorted(packages.items())
                   if re.fullmatch(r"python3\.\d+", p)), None)
    node = packages.get("nodejs")
    return {"python": upstream_version(python) if python else None,
            "node": upstream_version(node) if node else None}


def manifest(*, name: str, digest: str, source: str, rootfs: str, size: int, files: int,
             recipe: str | None = None, recipe_digest: str | None = None,
             installed: Mapping[str, str] | None = None,
             extra: Mapping[str, object] | None = None) -> dict[str, object]:
    packages = dpkg_packages(rootfs)
    return {"name": name, "digest": digest, "source": source, "recipe": recipe,
            "recipe_digest": recipe_digest, "packages": packages,
            "installed": dict(installed or {}), **runtime_versions(packages),
            "size": size, "files": files,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            **(extra or {})}
