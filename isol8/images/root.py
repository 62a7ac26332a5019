"""Which root filesystem a sandbox gets: ``host`` (the default), a store image, or a path.

An image tree is data someone else wrote (a Debian build, an imported tarball): its symlinks
may point anywhere. Nothing here follows one on the host. A path the engine hands the helper
to bind is checked component by component to be no symlink (``lstat``); a symlink the plan
needs is recreated inside the sandbox as a symlink, where it resolves within the sandbox's own
root (the image's ``/usr``), never the host's. Store images are never written after their
import and a ``path`` root belongs to the caller, so a check made here still holds when the
helper mounts.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import InvalidRequest
from ..identity import maps_foreign_ids, require_searchable
from .store import NAME, ImageStore

HOST = "host"
_MAX_LINKS = 40  # as the kernel's path walk (MAXSYMLINKS)


@dataclass(frozen=True, slots=True)
class Root:
    """A resolved root: ``path`` is ``/`` for the host's; ``label`` names it in errors."""

    path: str
    label: str
    manifest: Mapping[str, object] | None = None
    hold: int = -1  # a store image: the fd whose flock keeps its content (ImageStore.hold)

    def release(self) -> None:
        """Let the store delete the image's content again (the engine has stopped)."""
        if self.hold >= 0:
            os.close(self.hold)
            object.__setattr__(self, "hold", -1)

    @property
    def is_host(self) -> bool:
        return self.path == "/"


def validated_rootfs(value: object) -> str:
    """The ``rootfs`` option as given: ``"host"``, an image name, or an absolute path
    (checked when the engine starts, since an image may be built meanwhile)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value or "\0" in value:
        raise InvalidRequest(f"rootfs: expected 'host', an image name or an absolute path, "
                             f"got {value!r}")
    if value != HOST and not value.startswith("/") and not NAME.match(value):
        raise InvalidRequest(f"rootfs: {value!r} is neither 'host', an image name (lowercase "
                             "letters, digits, '.', '_', '-') nor an absolute path")
    return value


def resolve(value: str, store: ImageStore | None = None) -> Root:
    """The root ``value`` names. A missing image raises ImageNotFound, which names the
    command that builds it; a found one is held until ``Root.release()`` (its content is not
    deleted meanwhile, even by a rebuild). A path must be a directory the caller owns that
    nobody else can write, since whoever can write it decides what every sandbox on it
    runs."""
    if value == HOST:
        return Root("/", "the host's /usr")
    if not value.startswith("/"):
        store = store or ImageStore()
        image = store.get(value)
        _require_reachable(image.root, f"image {value!r}")
        return Root(image.root, f"image {value!r}", image.manifest, store.hold(image))
    path = os.path.realpath(value)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InvalidRequest(f"rootfs: {value}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidRequest(f"rootfs: {value} is not a directory")
    if st.st_uid != os.geteuid():
        raise InvalidRequest(f"rootfs: {value} belongs to uid {st.st_uid}, not to this user "
                             f"(uid {os.geteuid()}): a root filesystem must be the caller's")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise InvalidRequest(f"rootfs: {value} is writable by others (mode "
                             f"{stat.S_IMODE(st.st_mode):04o}); chmod go-w it")
    if path == "/":
        return Root("/", "the host's /usr")
    _require_reachable(path, f"rootfs: {value}")
    return Root(path, path)


def _require_reachable(path: str, what: str) -> None:
    """As root, the helper mounts the root as the sandbox's leased uid."""
    if maps_foreign_ids():
        require_searchable(path, what, "keep the root elsewhere")


def plain(root: str, relative: str) -> str | None:
    """``root/relative`` when no component below ``root`` is a symlink (the last may be
    anything but one), else None: the only host paths of an image the helper may bind."""
    current = root
    for part in relative.strip("/").split("/"):
        if part in ("", ".", ".."):
            return None
        current = os.path.join(current, part)
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                return None
        except OSError:
            return None
    return current


def resolve_in(root: str, path: str) -> str | None:
    """The host path of the sandbox path ``path`` under ``root``, following symlinks the
    way the sandbox will (absolute ones from ``root``, ``..`` stopping at it); None when it
    does not exist or loops."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        current = os.path.join(root, *done, part)
        try:
            st = os.lstat(current)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_LINKS:
                return None
            target = os.readlink(current)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        done.append(part)
    return os.path.join(root, *done)


def binary_exists(root: str, path: str) -> bool:
    """Whether ``root`` offers an executable regular file at the sandbox path ``path``."""
    found = resolve_in(root, path) if root != "/" else path
    return found is not None and os.path.isfile(found) and os.access(found, os.X_OK)
