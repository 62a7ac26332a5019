"""``isol8 image build|list|rm|import|export``: the store from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import time
from typing import IO

from ..errors import InvalidRequest
from .store import Image, ImageStore, check_name, manifest


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    image = sub.add_parser("image", help="build, import, list, export and remove root "
                                         "filesystem images")
    isub = image.add_subparsers(dest="image_command", required=True)

    b = isub.add_parser("build", help="build an image from a recipe (rootfs/*.toml) with "
                                      "mmdebstrap; a no-op when the recipe is unchanged")
    b.add_argument("name", help="the image's name (and its recipe's, unless --base)")
    b.add_argument("--base", metavar="RECIPE",
                   help="the recipe to build (a name like python, or a .toml path); "
                        "default: NAME")
    b.add_argument("--install", metavar="PKG", nargs="+", action="extend", default=[],
                   help="also bake these packages in: pip packages for a python base, npm "
                        "for node")
    b.add_argument("--index-url", metavar="URL",
                   help="the package index --install uses (pip's --index-url, npm's "
                        "--registry)")
    b.add_argument("--force", action="store_true", help="rebuild even when up to date")
    b.add_argument("--mode", choices=("unshare", "root", "fakechroot"),
                   help="mmdebstrap's mode (default: unshare as root or with a subuid "
                        "range, else fakechroot)")

    ls = isub.add_parser("list", help="the store's images")
    ls.add_argument("--json", action="store_true", help="each image's manifest, as JSON")

    rm = isub.add_parser("rm", help="remove images (their files too, unless another name "
                                    "uses them)")
    rm.add_argument("names", nargs="+", metavar="NAME")

    im = isub.add_parser("import", help="import a tarball (plain, gzip or xz), an OCI image "
                                        "layout or a docker save archive")
    im.add_argument("source", metavar="FILE|DIR")
    im.add_argument("--name", required=True, help="the image's name in the store")

    ex = isub.add_parser("export", help="write an image's root filesystem as a tarball")
    ex.add_argument("name")
    ex.add_argument("-o", "--output", metavar="FILE",
                    help="where to write it (default: standard output, unless a terminal)")


def main(args: argparse.Namespace) -> int:
    store = ImageStore()
    cmd = args.image_command
    if cmd == "build":
        from .build import Progress, build

        progress = Progress(args.name)
        outcome = build(args.name, base=args.base, install=args.install, force=args.force,
                        mode=args.mode, index_url=args.index_url, store=store,
                        progress=progress)
        img = outcome.image
        progress.done(f"{'built' if outcome.built else 'up to date'}, {_short(img.digest)}, "
                      f"{_size(img.manifest.get('size'))}")
        return 0
    if cmd == "list":
        images = store.list()
        if args.json:
            json.dump([{**img.manifest, "name": img.name, "digest": img.digest,
                        "root": img.root} for img in images], sys.stdout, indent=1)
            print()
            return 0
        rows = [("NAME", "DIGEST", "SIZE", "CREATED", "SOURCE")]
        rows += [(img.name, _short(img.digest), _size(img.manifest.get("size")),
                  str(img.manifest.get("created", ""))[:19].replace("T", " "),
                  str(img.manifest.get("source", ""))) for img in images]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[4])
        return 0
    if cmd == "rm":
        for name in args.names:
            with store.lock(name):
                digest = store.remove(name)
            print(f"removed {name} ({_short(digest)})")
        return 0
    if cmd == "import":
        t0 = time.monotonic()
        img = import_image(args.source, args.name, store)
        refused = img.manifest.get("refused")
        for reason in refused if isinstance(refused, list) else []:
            print(f"isol8: import: refused {reason}", file=sys.stderr)
        print(f"imported {img.name} ({_short(img.digest)}, {_size(img.manifest.get('size'))}, "
              f"{time.monotonic() - t0:.1f} s)")
        return 0
    if cmd == "export":
        img = store.get(args.name)
        if args.output:
            tmp = f"{args.output}.{os.getpid()}.tmp"
            try:
                with open(tmp, "wb") as fh:
                    export(img, fh)
                os.rename(tmp, args.output)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            if sys.stdout.isatty():
                raise InvalidRequest("isol8 image export: standard output is a terminal; "
                                     "give -o FILE or redirect it")
            sys.stdout.flush()
            export(img, sys.stdout.buffer)
        return 0
    raise InvalidRequest(f"unknown image command {cmd!r}")


def import_image(source: str, name: str, store: ImageStore) -> Image:
    """A root filesystem tarball through extract.unpack; an OCI layout (directory or
    archive) or a docker save archive through oci.import_layout, its layers applied in
    order. The digest is the archive's sha256, or the OCI manifest's (an older docker save,
    which has none: its config's)."""
    from . import oci
    from .extract import unpack

    check_name(name)
    if not os.path.exists(source):
        raise InvalidRequest(f"isol8 image import: {source!r} does not exist")
    kind = oci.detect(source)
    with store.lock(name), store.staging(name) as staging:
        content = os.path.join(staging, "image")
        rootfs = os.path.join(content, "rootfs")
        os.makedirs(rootfs, 0o755)
        extra: dict[str, object] = {"imported_from": os.path.abspath(source), "format": kind}
        if kind == "rootfs":
            report = unpack(source, rootfs)
            digest, size, files = report.sha256, report.bytes, report.files
            layers = [report]
        else:
            layout = oci.import_layout(source, rootfs)
            digest = (layout.manifest_digest or layout.config_digest).removeprefix("sha256:")
            size, files, layers = layout.bytes, layout.files, layout.layers
            extra["config"] = layout.config
        extra["skipped"] = sum(len(layer.skipped) for layer in layers)
        extra["stripped"] = sum(len(layer.stripped) for layer in layers)
        # Members left out (a name or hard link leaving the root), each with its reason.
        extra["refused"] = [reason for layer in layers for reason in layer.refused]
        data = manifest(name=name, digest="sha256-" + digest, source="import",
                        rootfs=rootfs, size=size, files=files, extra=extra)
        return store.commit(name, content, "sha256-" + digest, data)


def export(img: Image, out: IO[bytes]) -> None:
    """The rootfs as a streamed tar (pax, numeric owners). A rootless store's files are all
    the user's: they are written as root's, as they were in the image."""
    me = os.geteuid()

    def owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
        if me != 0 and info.uid == me:
            info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(img.root)):
            tar.add(os.path.join(img.root, entry), arcname=entry, filter=owner)


def _short(digest: str) -> str:
    return digest.removeprefix("sha256-")[:12]


def _size(size: object) -> str:
    if not isinstance(size, int):
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
