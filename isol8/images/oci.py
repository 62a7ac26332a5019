"""Importing OCI image layouts and ``docker save`` archives: layers applied in order through
the safe importer (isol8.images.extract), every blob checked against its digest.

Accepted inputs: an OCI image layout directory (``oci-layout``, ``index.json``,
``blobs/sha256/…``), a tarball of one (plain or compressed), and a ``docker save`` archive:
older docker writes ``manifest.json`` plus ``<id>/layer.tar`` and ``<config hex>.json``,
docker 25 and later writes an OCI layout with a ``manifest.json`` beside it.

Digests: an OCI blob's name is its digest, so nested indexes, the manifest, the config and
the layers are all verified as they are read (``index.json``, the layout's root, names them
and has none; a layer is checked by the extraction child, over the bytes it unpacks). Of an
index's manifests the one for linux/<this machine's architecture> is taken, or the only one
that states no platform; several candidates, or none, are refused with the platforms listed.
At most 256 layers are applied, each with what the caps left after the earlier ones. For
an older ``docker save`` the config's file name is its digest, and each ``layer.tar`` is
checked against the config's ``rootfs.diff_ids`` (the digest of the uncompressed layer,
which is what that format stores). A mismatch is Refused naming the blob.

A tarball is never unpacked to disk as a whole: its member table is read once, and each
layer is handed to the extraction child as a byte range of the same file. A compressed
tarball (``docker save | gzip``) is decompressed first into an anonymous temporary file
(O_TMPFILE), which vanishes with its fd. Names inside the archive (``manifest.json``'s
``Layers``, symlinks between its members) are resolved inside the archive or layout only: a
``Layers`` entry of ``../../etc/shadow`` is refused, not read.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import Any

from .. import _native
from .extract import (ArchiveBytes, Caps, Refused, Report, UnpackFailed, decompressed,
                      relative_parts, unpack_fd)

_JSON_MAX = 4 << 20  # an index, manifest or config larger than this is not one
_OUTER_MAX_MEMBERS = 200_000
_MAX_LAYERS = 256  # overlayfs stacks at most 128 (docker's limit is 127): a child per layer
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json"}
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}
_CONFIG_KEYS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User")


@dataclass(slots=True)
class OciReport:
    kind: str  # "oci" or "docker"
    manifest_digest: str  # "sha256:<hex>"; "" for an older docker save (it has no manifest blob)
    config_digest: str
    config: dict[str, Any]  # the image config's Env, Cmd, Entrypoint, WorkingDir, User
    layers: list[Report] = field(default_factory=list)

    @property
    def files(self) -> int:
        return sum(layer.files for layer in self.layers)

    @property
    def bytes(self) -> int:
        return sum(layer.bytes for layer in self.layers)


def detect(path: str) -> str:
    """``"oci"``, ``"docker"`` or ``"rootfs"`` (a plain root filesystem tarball), from a
    directory's entries or an archive's first members."""
    if os.path.isdir(path):
        names = set(os.listdir(path))
        if "index.json" in names or "oci-layout" in names:
            return "oci"
        if "manifest.json" in names:
            return "docker"
        raise Refused(f"{path} is a directory but not an OCI image layout (no index.json) "
                      "nor a docker save tree (no manifest.json)")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        tops = []
        try:
            with tarfile.open(fileobj=decompressed(ArchiveBytes(fd, 0, -1)), mode="r|") as tf:
                for _, member in zip(range(16), tf):
                    parts = relative_parts(member.name, member.name)
                    if parts:
                        tops.append(parts[0])
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise Refused(f"{path} is not a tar archive: {exc}") from None
    finally:
        os.close(fd)
    for top in tops:
        if top in ("oci-layout", "index.json", "blobs"):
            return "oci"
        if top in ("manifest.json", "repositories") or re.match(r"^[0-9a-f]{64}(\.json)?$", top):
            return "docker"
    return "rootfs"


class _Source:
    """The files of a layout: ``open(name)`` gives (fd, offset, length) of a member."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fds: list[int] = []
        self.dirfd = -1
        self.members: dict[tuple[str, ...], tuple[int, int]] = {}
        self.links: dict[tuple[str, ...], tuple[str, ...]] = {}
        if os.path.isdir(path):
            self.dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.fds.append(self.dirfd)
        else:
            try:
                self._index_tarball()
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()

    def _index_tarball(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self.fds.append(fd)
        raw = ArchiveBytes(fd, 0, -1)
        stream = decompressed(raw)
        if stream is not raw:  # random access needs the plain tar: an anonymous copy
            plain = tempfile.TemporaryFile(dir=os.environ.get("TMPDIR", "/var/tmp"))
            with plain:
                while chunk := stream.read(1 << 20):
                    plain.write(chunk)
                plain.flush()
                fd = os.dup(plain.fileno())
            self.fds.append(fd)
            os.lseek(fd, 0, os.SEEK_SET)  # the dup shares the copy's offset, now at its end
        self.fd = fd
        try:
            with os.fdopen(os.dup(fd), "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tf:
                for count, m in enumerate(iter(tf.next, None)):
                    if count > _OUTER_MAX_MEMBERS:
                        raise Refused(f"{self.path} has over {_OUTER_MAX_MEMBERS} members: "
                                      "not an image archive")
                    parts = relative_parts(m.name, m.name)
                    if m.isreg():
                        self.members[parts] = (m.offset_data, m.size)
                    elif m.issym():
                        self.links[parts] = relative_parts("/".join(parts[:-1] + (m.linkname,)),
                                                   m.name)
                    elif m.islnk():
                        self.links[parts] = relative_parts(m.linkname, m.name)
                    tf.members.clear()  # type: ignore[attr-defined]
        except tarfile.TarError as exc:
            raise Refused(f"{self.path} is not a readable tar archive: {exc}") from None

    def open(self, name: str) -> tuple[int, int, int]:
        parts = relative_parts(name, name)
        if self.dirfd >= 0:
            try:  # O_NONBLOCK: a fifo planted in the layout must not hang the import
                fd = _native.openat2(self.dirfd, "/".join(parts), os.O_RDONLY | os.O_NONBLOCK,
                                     0, _native.RESOLVE_IN_ROOT | _native.RESOLVE_NO_MAGICLINKS)
            except FileNotFoundError:
                raise Refused(f"{self.path}: {name!r} is missing") from None
            self.fds.append(fd)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise Refused(f"{self.path}: {name!r} is not a regular file")
            return fd, 0, -1
        for _ in range(16):  # a symlink chain between members, never outside the archive
            if parts in self.members:
                offset, size = self.members[parts]
                return self.fd, offset, size
            if parts not in self.links:
                break
            parts = self.links[parts]
        raise Refused(f"{self.path}: {name!r} is missing")

    def exists(self, name: str) -> bool:
        try:
            fd, _, _ = self.open(name)
        except Refused:
            return False
        if self.dirfd >= 0:
            self.fds.remove(fd)
            os.close(fd)
        return True

    def read_json(self, name: str, digest: str = "") -> Any:
        fd, offset, length = self.open(name)
        size = length if length >= 0 else os.fstat(fd).st_size
        if size > _JSON_MAX:
            raise Refused(f"{self.path}: {name!r} is {size} bytes, too large for image JSON")
        data = os.pread(fd, size, offset)
        if digest and f"sha256:{hashlib.sha256(data).hexdigest()}" != digest:
            raise Refused(f"{self.path}: blob {digest} does not match its contents")
        try:
            return json.loads(data)
        except ValueError as exc:
            raise Refused(f"{self.path}: {name!r} is not JSON: {exc}") from None


def _digest(descriptor: Any, what: str) -> str:
    """The checked ``digest`` of an OCI descriptor (a dict)."""
    digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise Refused(f"{what} has the digest {digest!r}: only sha256:<64 hex> is accepted")
    return digest


def _blob(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def _platform_ok(entry: dict[str, Any]) -> bool | None:
    """True for linux/<this machine's arch>, False for another platform, None if unstated."""
    plat = entry.get("platform")
    if not isinstance(plat, dict):
        return None
    arch = _ARCH.get(platform.machine(), platform.machine())
    return plat.get("os") == "linux" and plat.get("architecture") == arch


def _pick(source: _Source, index: Any, where: str) -> dict[str, Any]:
    """The manifest descriptor for this machine from an index, following nested indexes."""
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list) or not entries:
        raise Refused(f"{source.path}: {where} lists no manifests")
    ours = [e for e in entries if isinstance(e, dict) and _platform_ok(e)]
    unstated = [e for e in entries if isinstance(e, dict) and _platform_ok(e) is None]
    # one image under two tags is listed twice (docker save does): one candidate
    candidates = list({str(e.get("digest")): e for e in ours or unstated}.values())
    if len(candidates) != 1:
        plats = sorted({f"{e['platform'].get('os')}/{e['platform'].get('architecture')}"
                        for e in entries if isinstance(e, dict)
                        and isinstance(e.get("platform"), dict)})
        arch = _ARCH.get(platform.machine(), platform.machine())
        raise Refused(f"{source.path}: {where} has {len(candidates)} images for linux/{arch} "
                      f"(platforms: {', '.join(plats) or 'unstated'}); import a layout "
                      "holding exactly one")
    entry = candidates[0]
    if entry.get("mediaType") in _INDEX_TYPES:
        digest = _digest(entry, "a nested index")
        return _pick(source, source.read_json(_blob(digest), digest), f"index {digest}")
    return entry


def _config_subset(config: Any) -> dict[str, Any]:
    inner = config.get("config") if isinstance(config, dict) else None
    inner = inner if isinstance(inner, dict) else {}
    return {key: inner[key] for key in _CONFIG_KEYS if key in inner}


def _check_count(source: _Source, count: int) -> None:
    if count > _MAX_LAYERS:
        raise Refused(f"{source.path}: the image has {count} layers, over the {_MAX_LAYERS} "
                      "an import applies")


def _remaining(caps: Caps, layers: list[Report]) -> Caps:
    return Caps(caps.max_bytes - sum(r.bytes for r in layers),
                caps.max_inodes - sum(r.files for r in layers))


def _import_oci(source: _Source, dest: str, caps: Caps) -> OciReport:
    entry = _pick(source, source.read_json("index.json"), "index.json")
    digest = _digest(entry, "the manifest")
    manifest = source.read_json(_blob(digest), digest)
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    config_desc = manifest.get("config") if isinstance(manifest, dict) else None
    if not isinstance(layers, list) or not isinstance(config_desc, dict):
        raise Refused(f"{source.path}: manifest {digest} has no config or no layers")
    _check_count(source, len(layers))
    config_digest = _digest(config_desc, "the config")
    config = source.read_json(_blob(config_digest), config_digest)
    report = OciReport("oci", digest, config_digest, _config_subset(config))
    for layer in layers:
        layer_digest = _digest(layer, "a layer")
        fd, offset, length = source.open(_blob(layer_digest))
        report.layers.append(unpack_fd(fd, dest, caps=_remaining(caps, report.layers),
                                       layer=True, offset=offset, length=length,
                                       digest=layer_digest, label=f"layer {layer_digest}"))
    return report


def _import_docker(source: _Source, dest: str, caps: Caps) -> OciReport:
    manifest = source.read_json("manifest.json")
    if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
        count = len(manifest) if isinstance(manifest, list) else 0
        raise Refused(f"{source.path}: manifest.json lists {count} images; save exactly one")
    entry = manifest[0]
    config_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise Refused(f"{source.path}: manifest.json has no Config or no Layers")
    _check_count(source, len(layer_names))
    hexname = re.search(r"([0-9a-f]{64})(\.json)?$", config_name)
    config_digest = f"sha256:{hexname.group(1)}" if hexname else ""
    config = source.read_json(config_name, config_digest)
    diff_ids = config.get("rootfs", {}).get("diff_ids", []) if isinstance(config, dict) else []
    report = OciReport("docker", "", config_digest, _config_subset(config))
    for number, name in enumerate(layer_names):
        if not isinstance(name, str):
            raise Refused(f"{source.path}: manifest.json layer {number} is {name!r}")
        blob = re.match(r"^blobs/sha256/([0-9a-f]{64})$", "/".join(relative_parts(name, name)))
        if blob:
            digest = f"sha256:{blob.group(1)}"
        elif number < len(diff_ids) and isinstance(diff_ids[number], str):
            digest = diff_ids[number]  # an uncompressed layer.tar: its digest is the diff_id
        else:
            raise Refused(f"{source.path}: layer {name!r} has no digest to check it against")
        fd, offset, length = source.open(name)
        report.layers.append(unpack_fd(fd, dest, caps=_remaining(caps, report.layers),
                                       layer=True, offset=offset, length=length,
                                       digest=digest, label=f"layer {name} ({digest})"))
    return report


def import_layout(path: str, dest: str, *, caps: Caps = Caps()) -> OciReport:
    """Apply the image in ``path`` (an OCI layout directory or tarball, or a ``docker save``
    archive) onto the empty directory ``dest``, layer by layer in order; see the module
    docstring for what is verified. On an exception ``dest`` holds a partial tree."""
    if os.listdir(dest):
        raise UnpackFailed(f"{dest} is not empty: an image is imported into a new directory")
    source = _Source(path)
    try:
        if source.exists("index.json"):
            return _import_oci(source, dest, caps)
        if source.exists("manifest.json"):
            return _import_docker(source, dest, caps)
        raise Refused(f"{path} has neither index.json (OCI layout) nor manifest.json "
                      "(docker save)")
    finally:
        source.close()
