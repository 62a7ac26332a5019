"""The local image store: content-addressed root filesystems with a manifest each.

Layout under the store root (``$ISOL8_IMAGES``, else ``$XDG_DATA_HOME/isol8/images``, else
``~/.local/share/isol8/images``; as root ``/var/lib/isol8/images``)::

    sha256-<hex>/rootfs/        the unpacked tree, never written after its import
    sha256-<hex>/manifest.json  what it is (see Image.manifest)
    names/<name>                a symlink to ../sha256-<hex>, replaced atomically
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import Isol8Error

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


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


class ImageStore:
    def __init__(self, root: str | None = None) -> None:
        self.root = root or default_root()

    def get(self, name: str) -> Image:
        if not NAME.match(name):
            raise ImageNotFound(f"image name {name!r} is not valid (lowercase letters, "
                                "digits, '.', '_' and '-', at most 64)")
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
