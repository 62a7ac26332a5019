"""Safe extraction of image archives (helper H1 fills this in; the signature is the contract)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Isol8Error


class Refused(Isol8Error):
    """The archive holds something an image may not: the message names the member."""


@dataclass(frozen=True, slots=True)
class Caps:
    max_bytes: int = 16 << 30
    max_inodes: int = 2_000_000


@dataclass(slots=True)
class Report:
    sha256: str = ""  # of the archive stream as read (compressed bytes)
    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)  # device nodes and the like
    stripped: list[str] = field(default_factory=list)  # setuid/setgid bits removed


def unpack(archive: str, dest: str, *, caps: Caps = Caps(), layer: bool = False) -> Report:
    """Unpack the tar ``archive`` (a path; plain, gzip or xz) into the existing empty
    directory ``dest`` (or, with ``layer=True``, onto the tree already there, honouring OCI
    whiteouts), inside a throwaway user and mount namespace."""
    raise NotImplementedError
