"""The safe image importer (isol8.images.extract, isol8.images.oci) against hostile archives.

Every archive is built here with tarfile/io (no binary fixtures). Each hostile case asserts
both the refusal (or skip/strip) and that nothing appeared outside the destination. The
suite runs as root and as an unprivileged user.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import importlib.util
import io
import json
import lzma
import os
import platform
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from isol8.images import oci
from isol8.images.extract import Caps, Refused, UnpackFailed, unpack, write_tree

from conftest import child_pids

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


# ---- building archives ----

def _file(name: str, data: bytes = b"", mode: int = 0o644, mtime: int = 1_600_000_000):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, mtime
    return info, data


def _entry(name: str, kind: bytes, linkname: str = "", mode: int = 0o755):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    return info, None


def _dir(name: str, mode: int = 0o755):
    return _entry(name, tarfile.DIRTYPE, mode=mode)


def _sym(name: str, target: str):
    return _entry(name, tarfile.SYMTYPE, target, 0o777)


def _hard(name: str, target: str):
    return _entry(name, tarfile.LNKTYPE, target, 0o644)


def tar_bytes(members, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def write_tar(path: Path, members, compress=None, fmt=tarfile.PAX_FORMAT) -> Path:
    data = tar_bytes(members, fmt)
    path.write_bytes(compress(data) if compress else data)
    return path


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    root = tmp_path / "dest"
    root.mkdir()
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host directory the importer must never write into; the test user can write it, so
    a broken importer would succeed there, rootless too."""
    path = tmp_path / "outside"
    path.mkdir()
    yield path
    assert sorted(os.listdir(path)) == [], "the importer wrote outside its destination"


@pytest.fixture(autouse=True)
def _nothing_left():
    """No extraction child and no open fd survive a test, whatever its outcome (the only
    temporary file, a decompressed outer tarball, is O_TMPFILE: it has no name to leave)."""
    fds = sorted(os.listdir("/proc/self/fd"))
    yield
    assert child_pids() == []
    assert sorted(os.listdir("/proc/self/fd")) == fds


# ---- plain tarballs ----

def test_absolute_symlink_kept_setuid_stripped_and_modes_kept(tmp_path, dest):
    archive = write_tar(tmp_path / "a.tar", [
        _dir("./"), _dir("usr/bin"), _file("usr/bin/su", b"#!/bin/sh\n", 0o4755),
        _file("usr/bin/wall", b"w", 0o2755), _file("etc/shadow", b"x", 0o640),
        _sym("usr/bin/python", "/usr/bin/python3.11"), _dir("ro", 0o555),
        _file("ro/inside", b"i", 0o444), _dir("tmp", 0o1777)])
    report = unpack(str(archive), str(dest))
    assert os.readlink(dest / "usr/bin/python") == "/usr/bin/python3.11"
    assert stat.S_IMODE((dest / "usr/bin/su").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "usr/bin/wall").stat().st_mode) == 0o755
    assert sorted(report.stripped) == ["usr/bin/su", "usr/bin/wall"]
    assert stat.S_IMODE((dest / "etc/shadow").stat().st_mode) == 0o640
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o755  # u+rwx added
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777
    assert (dest / "usr/bin/su").stat().st_mtime == 1_600_000_000
    assert (dest / "usr/bin/su").stat().st_uid == os.getuid()  # never chowned
    assert report.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert report.files == 9 and report.bytes == len(b"#!/bin/sh\n") + 3
    shutil.rmtree(dest)  # the store can always delete what it imported


@pytest.mark.parametrize("name", ["../escape", "a/../../x", "/../../escape"])
def test_member_leaving_the_root_is_refused_by_name(tmp_path, dest, outside, name):
    archive = write_tar(tmp_path / "a.tar", [_file("ok", b"1"), _file(name, b"evil"),
                                             _file("after", b"2")])
    report = unpack(str(archive), str(dest))
    assert report.refused == [f"member '{name}' leaves the image root ({name!r})"]
    assert not (tmp_path / "escape").exists() and not (tmp_path / "x").exists()
    assert sorted(os.listdir(dest)) == ["after", "ok"]


def test_the_issues_hostile_tarball(tmp_path, dest, outside):
    """Issue 12's case: an absolute symlink, a setuid file and a ``..`` member aimed at a
    real host directory. It imports with the link kept, the bit stripped and the member
    refused by name; nothing lands outside."""
    archive = write_tar(tmp_path / "a.tar", [
        _file(f"../{outside.name}/pwned", b"evil"),
        _sym("bin/sh", "/usr/bin/dash"), _file("usr/bin/passwd", b"p", 0o4755)],
        gzip.compress)
    report = unpack(str(archive), str(dest))
    assert len(report.refused) == 1
    assert report.refused[0].startswith(f"member '../{outside.name}/pwned' leaves the image")
    assert report.stripped == ["usr/bin/passwd"]
    assert os.readlink(dest / "bin/sh") == "/usr/bin/dash"
    assert stat.S_IMODE((dest / "usr/bin/passwd").stat().st_mode) == 0o755
    assert not (outside / "pwned").exists() and os.listdir(outside) == []


def test_dotdot_staying_inside_is_normalised(tmp_path, dest):
    archive = write_tar(tmp_path / "a.tar", [_dir("a"), _file("a/../b", b"1")])
    unpack(str(archive), str(dest))
    assert (dest / "b").read_bytes() == b"1"


def test_hardlink_outside_the_root_is_refused(tmp_path, dest):
    archive = write_tar(tmp_path / "a.tar", [_hard("passwd", "../../etc/passwd")])
    report = unpack(str(archive), str(dest))
    assert report.refused == ["hard link 'passwd' points outside the image root "
                              "('../../etc/passwd')"]
    assert not (dest / "passwd").exists()


def test_hardlink_inside_is_made_and_through_a_symlink_stays_inside(tmp_path, dest, outside):
    (outside / "secret").write_bytes(b"host")
    archive = write_tar(tmp_path / "a.tar", [
        _file("f", b"data"), _hard("g", "f"), _sym("out", str(outside)),
        _hard("h", "out/secret")])
    with pytest.raises(Refused, match="hard link 'h': its target 'out/secret' is not in"):
        unpack(str(archive), str(dest))
    assert os.stat(dest / "g").st_ino == os.stat(dest / "f").st_ino
    (outside / "secret").unlink()


def test_devices_and_fifos_skipped(tmp_path, dest):
    archive = write_tar(tmp_path / "a.tar", [
        _entry("dev/null", tarfile.CHRTYPE, mode=0o666), _entry("dev/sda", tarfile.BLKTYPE),
        _entry("run/fifo", tarfile.FIFOTYPE), _file("ok", b"1")])
    report = unpack(str(archive), str(dest))
    assert report.skipped == ["dev/null", "dev/sda", "run/fifo"]
    assert not (dest / "dev/null").exists() and not (dest / "run/fifo").exists()
    assert (dest / "ok").read_bytes() == b"1"


def test_size_cap(tmp_path, dest):
    archive = write_tar(tmp_path / "a.tar", [_file("a", b"x" * 600), _file("b", b"y" * 600)])
    with pytest.raises(Refused, match=r"member 'b' \(600 bytes\) takes the contents over the "
                                      r"size cap of 1000 bytes"):
        unpack(str(archive), str(dest), caps=Caps(max_bytes=1000))
    assert not (dest / "b").exists()


def test_size_cap_counts_a_sparse_files_apparent_size(tmp_path, dest):
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as fh:
        fh.truncate(1 << 30)
        fh.seek(12345)
        fh.write(b"middle")
    if not shutil.which("tar"):
        pytest.skip("GNU tar is not installed")
    subprocess.run(["tar", "-C", str(tmp_path), "--sparse", "--format=posix", "-cf",
                    str(tmp_path / "s.tar"), "sparse"], check=True)
    assert (tmp_path / "s.tar").stat().st_size < 1 << 20
    with pytest.raises(Refused, match="size cap"):
        unpack(str(tmp_path / "s.tar"), str(dest), caps=Caps(max_bytes=1 << 29))
    shutil.rmtree(dest)
    dest.mkdir()
    unpack(str(tmp_path / "s.tar"), str(dest))
    out = dest / "sparse"
    assert out.stat().st_size == 1 << 30 and out.stat().st_blocks * 512 <= 64 << 10
    with open(out, "rb") as fh:
        fh.seek(12340)
        assert fh.read(16) == b"\0" * 5 + b"middle" + b"\0" * 5


def test_inode_cap(tmp_path, dest):
    archive = write_tar(tmp_path / "a.tar", [_file(f"f{i}", b"") for i in range(11)])
    with pytest.raises(Refused, match=r"more than 10 members \(the inode cap\); member 'f10'"):
        unpack(str(archive), str(dest), caps=Caps(max_inodes=10))
    assert not (dest / "f10").exists()


def test_symlink_to_root_then_member_below_it_stays_inside(tmp_path, dest, outside):
    archive = write_tar(tmp_path / "a.tar", [
        _sym("link", "/"), _file("link/isol8-import-escape", b"evil"),
        _sym("away", str(outside)), _file("away/x", b"evil")])
    with pytest.raises(Refused, match=f"member 'away/x': '{'away'}' is a dangling symlink"):
        unpack(str(archive), str(dest))
    assert (dest / "isol8-import-escape").read_bytes() == b"evil"  # "/" is dest's root
    assert not os.path.exists("/isol8-import-escape")


def test_in_root_resolution_alone_keeps_members_inside(tmp_path, dest, outside):
    """write_tree in this process, without the child's chroot: openat2(RESOLVE_IN_ROOT) by
    itself keeps every write, link and whiteout inside dest."""
    (outside / "secret").write_bytes(b"host")
    hostile = [[_sym("away", str(outside)), _file("away/x", b"evil")],
               [_sym("away", str(outside)), _hard("h", "away/secret")],
               [_sym("away", str(outside)), _file("away/.wh.secret")],
               [_sym("away", f"../../{outside.name}"), _file("away/x", b"evil")]]
    root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for number, members in enumerate(hostile):
            with open(write_tar(tmp_path / f"{number}.tar", members), "rb") as archive:
                try:
                    write_tree(archive.fileno(), root, Caps(), layer=True)
                except Refused as exc:
                    assert "'away'" in str(exc) or "'away/secret'" in str(exc)
            assert sorted(os.listdir(outside)) == ["secret"]
            assert (outside / "secret").read_bytes() == b"host"
    finally:
        os.close(root)
    (outside / "secret").unlink()


def test_long_names_pax_and_gnu(tmp_path, dest):
    deep = "/".join(["d" * 60] * 6)  # 365 characters
    members = [_dir(deep), _file(f"{deep}/{'f' * 200}", b"long"),
               _sym("l", f"{deep}/{'f' * 200}"), _hard("h", f"{deep}/{'f' * 200}")]
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        shutil.rmtree(dest)
        dest.mkdir()
        unpack(str(write_tar(tmp_path / "a.tar", members, fmt=fmt)), str(dest))
        assert (dest / deep / ("f" * 200)).read_bytes() == b"long"
        assert os.readlink(dest / "l") == f"{deep}/{'f' * 200}"
        assert (dest / "h").read_bytes() == b"long"


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress, bz2.compress],
                         ids=["gzip", "xz", "bzip2"])
def test_compressed(tmp_path, dest, compress):
    archive = write_tar(tmp_path / "a.tar.x", [_dir("etc"), _file("etc/hostname", b"img\n")],
                        compress)
    report = unpack(str(archive), str(dest))
    assert (dest / "etc/hostname").read_bytes() == b"img\n"
    assert report.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()


def test_zstd_refused_by_name_without_the_module(tmp_path, dest):
    if importlib.util.find_spec("zstandard"):
        pytest.skip("the zstandard module is installed: zstd is accepted")
    archive = tmp_path / "a.tar.zst"
    archive.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(64))
    with pytest.raises(Refused, match="zstd-compressed and the 'zstandard' module"):
        unpack(str(archive), str(dest))


def test_zstd_with_the_module(tmp_path, dest):
    zstandard = pytest.importorskip("zstandard", reason="the optional zstandard module")
    whole = tar_bytes([_file("etc/os-release", b"zstd\n")])
    frames = [zstandard.ZstdCompressor().compress(whole[:1024]),
              zstandard.ZstdCompressor().compress(whole[1024:])]  # zstd:chunked: many frames
    (tmp_path / "a.tar.zst").write_bytes(b"".join(frames))
    unpack(str(tmp_path / "a.tar.zst"), str(dest))
    assert (dest / "etc/os-release").read_bytes() == b"zstd\n"


def test_corrupt_and_truncated_archives_refused(tmp_path, dest):
    data = tar_bytes([_file("a", b"x" * 5000), _file("b", b"y")])
    (tmp_path / "t.tar").write_bytes(data[:2048])
    with pytest.raises(Refused, match="corrupt or truncated at member 'a'"):
        unpack(str(tmp_path / "t.tar"), str(dest))
    bad = bytearray(data)
    bad[data.index(b"b\0") + 148: data.index(b"b\0") + 150] = b"99"  # header checksum
    (tmp_path / "c.tar").write_bytes(bytes(bad))
    shutil.rmtree(dest)
    dest.mkdir()
    with pytest.raises(Refused, match="corrupt tar header"):
        unpack(str(tmp_path / "c.tar"), str(dest))
    (tmp_path / "g.tar.gz").write_bytes(gzip.compress(data)[:-20])
    shutil.rmtree(dest)
    dest.mkdir()
    with pytest.raises(Refused, match="corrupt"):
        unpack(str(tmp_path / "g.tar.gz"), str(dest))


def test_hostile_metadata_values(tmp_path, dest):
    """A PAX mtime of nan or 1e300 and a huge pax header are handled, not crashes."""
    nan, huge = _file("nan", b"1"), _file("huge", b"2")
    nan[0].pax_headers, huge[0].pax_headers = {"mtime": "nan"}, {"mtime": "1e300"}
    unpack(str(write_tar(tmp_path / "a.tar", [nan, huge])), str(dest))
    assert (dest / "nan").stat().st_mtime == 0 and (dest / "huge").stat().st_mtime == 1 << 33
    big = _file("big", b"3")
    big[0].pax_headers = {"comment": "x" * (2 << 20)}
    shutil.rmtree(dest)
    dest.mkdir()
    with pytest.raises(Refused, match="a PAX header of .* bytes at byte 0"):
        unpack(str(write_tar(tmp_path / "b.tar", [big])), str(dest))


def test_sparse_map_claiming_too_many_runs_refused(tmp_path, dest):
    info, _ = _file("GNUSparseFile.0/s", b"")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                        "GNU.sparse.name": "s", "GNU.sparse.realsize": "100"}
    data = b"1000000000\n".ljust(512, b"\0")
    info.size = len(data)
    archive = write_tar(tmp_path / "a.tar", [(info, data)])
    with pytest.raises(Refused, match="member 's': a sparse map of 1000000000 runs"):
        unpack(str(archive), str(dest))


def test_dest_must_be_empty(tmp_path, dest):
    (dest / "old").write_bytes(b"")
    with pytest.raises(UnpackFailed, match="is not empty"):
        unpack(str(write_tar(tmp_path / "a.tar", [_file("a")])), str(dest))


def test_the_child_runs_in_another_user_namespace(tmp_path, dest):
    report = unpack(str(write_tar(tmp_path / "a.tar", [_file("a")])), str(dest))
    assert report.userns and report.userns != os.stat("/proc/self/ns/user").st_ino


CONFINED = """
import errno, json, os, resource, socket, sys
from isol8.images.unpack_main import _confine
status = os.open("/proc/self/status", os.O_RDONLY)
namespaces = os.open("/proc/self/ns", os.O_RDONLY | os.O_DIRECTORY)
_confine(os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY))
fields = dict(line.split(":", 1) for line in os.pread(status, 1 << 16, 0).decode().splitlines())
out = {key: fields[key].strip() for key in ("CapEff", "CapPrm", "Uid")}
out["uid"] = os.getuid()
out["ns"] = {name: os.stat(name, dir_fd=namespaces).st_ino for name in ("user", "mnt", "ipc")}
out["root"] = sorted(os.listdir("/"))
for name, attempt in (("chroot", lambda: os.chroot("/")),
                      ("mknod", lambda: os.mknod("/null", 0o20666, os.makedev(1, 3))),
                      ("setuid", lambda: os.setuid(1)),
                      ("kill", lambda: os.kill(os.getppid(), 0)),
                      ("socket", lambda: socket.socket(socket.AF_UNIX)),
                      ("prlimit", lambda: resource.prlimit(os.getppid(), resource.RLIMIT_CORE))):
    try:
        attempt()
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode[exc.errno]
print(json.dumps(out))
"""


def test_the_child_is_chrooted_without_capabilities(dest):
    """What keeps a root importer off the machine if openat2 were bypassed: it sees only
    dest, holds no capability (so no second chroot, no device node), cannot change uid,
    cannot signal or touch other processes of its (host) uid, nor open a socket, and has its
    own user, mount and IPC namespaces (SysV IPC permissions compare uids)."""
    (dest / "only-this").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-c", CONFINED, str(dest)], capture_output=True,
                          text=True, check=True)
    out = json.loads(proc.stdout)
    assert out["CapEff"] == out["CapPrm"] == "0000000000000000"
    # uid 0 of the throwaway namespace, the user outside (the status fd was opened outside)
    assert out["uid"] == 0 and out["Uid"].split()[0] == str(os.getuid())
    assert out["root"] == ["only-this"]
    for name, inode in out["ns"].items():
        assert inode != os.stat(f"/proc/self/ns/{name}").st_ino, name
    assert (out["chroot"], out["mknod"]) == ("EPERM", "EPERM")
    assert out["setuid"] in ("EPERM", "EINVAL")  # uid 1 is not even mapped
    assert (out["kill"], out["socket"], out["prlimit"]) == ("EPERM", "EPERM", "EPERM")


def test_real_tree_round_trips(tmp_path, dest):
    source = Path("/usr/share/doc")
    if not shutil.which("tar") or not source.is_dir():
        pytest.skip("needs GNU tar and /usr/share/doc")
    archive = tmp_path / "doc.tar"
    subprocess.run(["tar", "-C", str(source), "-cf", str(archive), "."], check=True)
    report = unpack(str(archive), str(dest))

    def listing(root: Path) -> dict[str, str]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath, name)
                rel = str(path.relative_to(root))
                if path.is_symlink():
                    out[rel] = "-> " + os.readlink(path)
                elif path.is_file():
                    out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
                else:
                    out[rel] = "dir"
        return out

    expected = listing(source)
    assert listing(dest) == expected
    assert report.files == len(expected) + 1  # "./" too


# ---- layers and whiteouts ----

def test_layers_whiteouts_and_replacement(tmp_path, dest):
    one = write_tar(tmp_path / "1.tar", [
        _dir("etc"), _file("etc/keep", b"1"), _file("etc/gone", b"1"), _dir("var/cache"),
        _file("var/cache/a", b"1"), _dir("var/cache/sub"), _file("var/cache/sub/b", b"1"),
        _file("replaced", b"old"), _sym("l", "/etc"), _dir("tree/deep"),
        _file("tree/deep/f", b"1")])
    two = write_tar(tmp_path / "2.tar", [
        _file("etc/.wh.gone"), _file("var/cache/new", b"2"), _file("var/cache/.wh..wh..opq"),
        _file("replaced", b"new"), _dir("l"), _file("l/inside", b"2"), _file(".wh.tree"),
        _file("etc/.wh.missing")])
    unpack(str(one), str(dest))
    unpack(str(two), str(dest), layer=True)
    assert (dest / "etc/keep").exists() and not (dest / "etc/gone").exists()
    assert sorted(os.listdir(dest / "var/cache")) == ["new"]
    assert (dest / "replaced").read_bytes() == b"new"
    assert not (dest / "l").is_symlink() and (dest / "l/inside").exists()
    assert not (dest / "tree").exists()
    assert not list(dest.rglob(".wh.*"))


def test_earlier_layer_symlink_is_not_followed_outside(tmp_path, dest, outside):
    unpack(str(write_tar(tmp_path / "1.tar", [_sym("evil", "/"), _sym("away", str(outside))])),
           str(dest))
    unpack(str(write_tar(tmp_path / "2.tar", [_file("evil/isol8-layer-escape", b"x")])),
           str(dest), layer=True)
    assert (dest / "isol8-layer-escape").exists()
    assert not os.path.exists("/isol8-layer-escape")
    with pytest.raises(Refused, match="'away' is a dangling symlink"):
        unpack(str(write_tar(tmp_path / "3.tar", [_file("away/x", b"x")])), str(dest),
               layer=True)


# ---- OCI layouts and docker save ----

def _blob(root: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    (root / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_layout(root: Path, layers: list[bytes], *, platform_arch: str = ARCH) -> dict:
    root.mkdir()
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    config = {"architecture": platform_arch, "os": "linux",
              "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/w"},
              "rootfs": {"type": "layers", "diff_ids": []}}
    descs = [dict(_blob(root, gzip.compress(layer)),
                  mediaType="application/vnd.oci.image.layer.v1.tar+gzip") for layer in layers]
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": dict(_blob(root, json.dumps(config).encode()),
                               mediaType="application/vnd.oci.image.config.v1+json"),
                "layers": descs}
    mdesc = dict(_blob(root, json.dumps(manifest).encode()),
                 mediaType="application/vnd.oci.image.manifest.v1+json",
                 platform={"os": "linux", "architecture": platform_arch})
    other = dict(_blob(root, b"{}"), mediaType="application/vnd.oci.image.manifest.v1+json",
                 platform={"os": "linux", "architecture": "s390x" if ARCH != "s390x" else "arm"})
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2,
                                                 "manifests": [other, mdesc]}))
    return {"manifest": mdesc["digest"], "layers": [d["digest"] for d in descs]}


LAYERS = [tar_bytes([_dir("etc"), _file("etc/a", b"1"), _file("etc/b", b"1"), _dir("opt"),
                     _file("opt/old", b"1"), _file("bin/su", b"s", 0o4755)]),
          tar_bytes([_file("etc/.wh.b"), _dir("opt"), _file("opt/.wh..wh..opq"),
                     _file("opt/new", b"2")])]


def _check_applied(dest: Path) -> None:
    assert (dest / "etc/a").exists() and not (dest / "etc/b").exists()
    assert os.listdir(dest / "opt") == ["new"]
    assert stat.S_IMODE((dest / "bin/su").stat().st_mode) == 0o755


def test_oci_layout_directory_and_tarball(tmp_path, dest, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmpdir"))  # where a gzip layout is unpacked
    (tmp_path / "tmpdir").mkdir()
    facts = make_layout(tmp_path / "layout", LAYERS)
    assert oci.detect(str(tmp_path / "layout")) == "oci"
    report = oci.import_layout(str(tmp_path / "layout"), str(dest))
    _check_applied(dest)
    assert report.manifest_digest == facts["manifest"]
    assert report.config == {"Env": ["PATH=/usr/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/w"}
    assert [f"sha256:{r.sha256}" for r in report.layers] == facts["layers"]
    assert report.layers[0].stripped == ["bin/su"]
    for compress, suffix in ((None, "tar"), ("gz", "tar.gz")):
        archive = tmp_path / f"layout.{suffix}"
        with tarfile.open(archive, f"w:{compress}" if compress else "w") as tf:
            tf.add(tmp_path / "layout", arcname=".")
        assert oci.detect(str(archive)) == "oci"
        out = tmp_path / f"out-{suffix}"
        out.mkdir()
        assert oci.import_layout(str(archive), str(out)).manifest_digest == facts["manifest"]
        _check_applied(out)
    assert os.listdir(tmp_path / "tmpdir") == []


def test_oci_caps_hold_across_layers(tmp_path, dest):
    make_layout(tmp_path / "layout", [tar_bytes([_file("a", b"x" * 600)]),
                                      tar_bytes([_file("b", b"y" * 600)])])
    with pytest.raises(Refused, match=r"layer sha256:[0-9a-f]{64}: member 'b' \(600 bytes\) "
                                      r"takes the contents over the size cap of 400 bytes"):
        oci.import_layout(str(tmp_path / "layout"), str(dest), caps=Caps(max_bytes=1000))


def test_oci_corrupted_layer_refused_naming_its_digest(tmp_path, dest):
    facts = make_layout(tmp_path / "layout", LAYERS)
    bad = tmp_path / "layout/blobs/sha256" / facts["layers"][1].split(":")[1]
    bad.write_bytes(gzip.compress(tar_bytes([_file("etc/evil", b"x")])))
    with pytest.raises(Refused, match=f"blob {facts['layers'][1]} does not match"):
        oci.import_layout(str(tmp_path / "layout"), str(dest))


def test_oci_corrupted_manifest_and_hostile_layer_refused(tmp_path, dest):
    facts = make_layout(tmp_path / "layout", [tar_bytes([_file("../escape", b"x")])])
    layout = oci.import_layout(str(tmp_path / "layout"), str(dest))
    assert layout.layers[0].refused == ["member '../escape' leaves the image root "
                                        "('../escape')"]
    assert os.listdir(dest) == [] and not (tmp_path / "escape").exists()
    manifest = tmp_path / "layout/blobs/sha256" / facts["manifest"].split(":")[1]
    manifest.write_bytes(manifest.read_bytes() + b" ")
    shutil.rmtree(dest)
    dest.mkdir()
    with pytest.raises(Refused, match=f"blob {facts['manifest']} does not match"):
        oci.import_layout(str(tmp_path / "layout"), str(dest))


def test_oci_nested_index_and_an_image_listed_twice(tmp_path, dest):
    facts = make_layout(tmp_path / "layout", LAYERS)
    index_path = tmp_path / "layout/index.json"
    nested = dict(_blob(tmp_path / "layout", index_path.read_bytes()),
                  mediaType="application/vnd.oci.image.index.v1+json")
    index_path.write_text(json.dumps({"schemaVersion": 2, "manifests": [nested, nested]}))
    assert oci.import_layout(str(tmp_path / "layout"), str(dest)).manifest_digest == \
        facts["manifest"]
    _check_applied(dest)


def test_oci_blob_that_is_a_fifo_refused(tmp_path, dest):
    facts = make_layout(tmp_path / "layout", LAYERS)
    blob = tmp_path / "layout/blobs/sha256" / facts["layers"][0].split(":")[1]
    blob.unlink()
    os.mkfifo(blob)
    with pytest.raises(Refused, match=f"'blobs/sha256/{blob.name}' is not a regular file"):
        oci.import_layout(str(tmp_path / "layout"), str(dest))
    with pytest.raises(UnpackFailed, match="is not a regular file"):
        unpack(str(blob), str(dest))


def test_oci_without_our_platform_refused(tmp_path, dest):
    make_layout(tmp_path / "layout", LAYERS, platform_arch="mips64le")
    with pytest.raises(Refused, match=f"0 images for linux/{ARCH}"):
        oci.import_layout(str(tmp_path / "layout"), str(dest))


def test_docker_save_legacy(tmp_path, dest):
    tars = LAYERS
    config = {"config": {"Cmd": ["bash"]}, "rootfs": {
        "type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(t).hexdigest()}" for t in tars]}}
    config_bytes = json.dumps(config).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    members = [_file(config_name, config_bytes)]
    names = []
    for number, data in enumerate(tars):
        layer_id = hashlib.sha256(b"id%d" % number).hexdigest()
        members += [_dir(layer_id), _file(f"{layer_id}/layer.tar", data),
                    _file(f"{layer_id}/VERSION", b"1.0")]
        names.append(f"{layer_id}/layer.tar")
    manifest = [{"Config": config_name, "RepoTags": ["x:latest"], "Layers": names}]
    members.append(_file("manifest.json", json.dumps(manifest).encode()))
    archive = write_tar(tmp_path / "save.tar", members)
    assert oci.detect(str(archive)) == "docker"
    report = oci.import_layout(str(archive), str(dest))
    _check_applied(dest)
    assert report.kind == "docker" and report.config == {"Cmd": ["bash"]}
    assert report.config_digest == "sha256:" + config_name[:-5]
    # a layer that is not what the config's diff_ids say is refused naming it
    members[2] = _file(f"{names[0]}", tar_bytes([_file("evil", b"x")]))
    shutil.rmtree(dest)
    dest.mkdir()
    with pytest.raises(Refused, match=f"layer {names[0]} .*does not match"):
        oci.import_layout(str(write_tar(tmp_path / "bad.tar", members)), str(dest))


def test_docker_save_layer_symlinks(tmp_path, dest):
    """Older docker writes a layer shared by two images once, the other ``layer.tar`` a
    symlink to it; a symlink leaving the archive is refused, never read from the host."""
    data = LAYERS[0]
    diff_id = f"sha256:{hashlib.sha256(data).hexdigest()}"
    config = json.dumps({"rootfs": {"diff_ids": [diff_id, diff_id]}}).encode()
    manifest = [{"Config": "c.json", "Layers": ["a/layer.tar", "b/layer.tar"]}]
    members = [_file("c.json", config), _file("manifest.json", json.dumps(manifest).encode()),
               _file("a/layer.tar", data), _sym("b/layer.tar", "../a/layer.tar")]
    report = oci.import_layout(str(write_tar(tmp_path / "s.tar", members)), str(dest))
    assert [layer.sha256 for layer in report.layers] == [diff_id[7:]] * 2
    members[3] = _sym("b/layer.tar", "../../../etc/passwd")
    shutil.rmtree(dest)
    dest.mkdir()
    with pytest.raises(Refused, match="'b/layer.tar' leaves the image root"):
        oci.import_layout(str(write_tar(tmp_path / "t.tar", members)), str(dest))


def test_docker_save_layer_path_outside_the_archive_refused(tmp_path, dest):
    config = json.dumps({"rootfs": {"diff_ids": ["sha256:" + "0" * 64]}}).encode()
    manifest = [{"Config": "c.json", "Layers": ["../../etc/passwd"]}]
    archive = write_tar(tmp_path / "save.tar", [
        _file("c.json", config), _file("manifest.json", json.dumps(manifest).encode())])
    with pytest.raises(Refused, match="'../../etc/passwd' leaves the image root"):
        oci.import_layout(str(archive), str(dest))


def test_plain_rootfs_tarball_detected(tmp_path):
    archive = write_tar(tmp_path / "r.tar.gz", [_dir("./"), _dir("bin"), _dir("etc")],
                        gzip.compress)
    assert oci.detect(str(archive)) == "rootfs"
