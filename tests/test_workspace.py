"""workspace_dir: a persistent /sandbox that outlives the engine, copied, never mounted.

The archive that comes back from the sandbox is hostile input: the attacks below run inside
a sandbox (a background process that outlives its run, a read-write mount that reaches the
workspace) or are archives fed to the host-side extraction as the sandbox could have forged
them. Nothing may land outside the workspace, exceed ``sandbox_size``, or damage the
previous workspace.
"""

import io
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
import textwrap

import pytest

from isol8 import InvalidRequest, Isol8, Isol8Error
from isol8.fdtree import remove_tree
from isol8.untar import Refused
from isol8.workspace import unpack

from conftest import GUARD_PY, child_pids, host_tempdir, run_py, run_sh


@pytest.fixture
def workspace(tmp_path):
    path = tmp_path / "ws"
    os.chmod(tmp_path, 0o755)
    return path


def _leftovers(workspace):
    return [p.name for p in workspace.parent.iterdir() if p.name.startswith(".isol8-")]


def test_the_workspace_survives_the_engine_and_resumes(workspace):
    with Isol8(mode="persistent", workspace_dir=workspace) as eng:
        eng.execute("import json; json.dump([1, 2], open('/sandbox/data.json', 'w'))")
        eng.execute(cmd="mkdir -p deep/er && echo note > deep/er/n.txt && echo x > gone")
    assert json.loads((workspace / "data.json").read_text()) == [1, 2]
    with Isol8(mode="persistent", workspace_dir=workspace) as eng:
        r = eng.execute("import json; print(sum(json.load(open('/sandbox/data.json'))))")
        assert r.stdout == "3"
        r = eng.execute(cmd="cat deep/er/n.txt; stat -c %U deep/er/n.txt; rm gone")
        assert r.stdout.splitlines() == ["note", "sandbox"]
    assert not (workspace / "gone").exists()  # deletions are saved too
    assert _leftovers(workspace) == []


def test_what_each_kind_of_file_becomes_both_ways(workspace):
    """Modes, mtimes, hard links, holes, odd names; a fifo is left out."""
    with Isol8(mode="persistent", workspace_dir=workspace) as eng:
        r = eng.execute(cmd="mkdir -m 750 d && printf run > d/x && chmod 751 d/x "
                            "&& touch -d @1000000000 d/x && ln d/x hard && mkfifo pipe "
                            "&& truncate -s 3M holes && printf end >> holes "
                            "&& printf odd > $'name \\xff\\n'")
        assert r.exit_code == 0, r.stderr
    x = workspace / "d" / "x"
    assert stat.S_IMODE(os.stat(workspace / "d").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(x).st_mode) == 0o751 and os.stat(x).st_mtime == 1000000000
    assert os.path.samestat(os.stat(x), os.stat(workspace / "hard"))
    assert not os.path.lexists(workspace / "pipe")
    holes = os.stat(workspace / "holes")
    assert holes.st_size == (3 << 20) + 3 and holes.st_blocks * 512 < 1 << 20
    assert (workspace / os.fsdecode(b"name \xff\n")).read_bytes() == b"odd"
    with Isol8(mode="persistent", workspace_dir=workspace) as eng:
        r = eng.execute(cmd="stat -c '%a %h %Y' d/x; cat hard; tail -c 3 holes; echo")
        assert r.stdout.splitlines()[:2] == ["751 2 1000000000", "runend"]


def test_links_inside_the_workspace_stay_links_and_are_never_followed(workspace, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "host-secret").write_text("HOST-SECRET")
    with Isol8(mode="persistent", workspace_dir=workspace) as eng:
        eng.execute(cmd="ln -s /etc/passwd pw; ln -s / root; mkdir d; ln -s d d2")
    assert os.readlink(workspace / "pw") == "/etc/passwd"
    assert os.readlink(workspace / "root") == "/"
    os.symlink(outside, workspace / "host-link")  # made on the host: restored as a link too
    with Isol8(mode="persistent", workspace_dir=workspace) as eng:
        # Inside, the link resolves in the sandbox's own view.
        assert eng.execute(cmd="readlink root; ls d2").stdout == "/"
        r = eng.execute(cmd="readlink host-link; cat host-link/host-secret")
        assert r.stdout == str(outside) and "HOST-SECRET" not in r.stdout


# --- the archive that comes back, forged -----------------------------------------------------

def _tar(*members, fmt=tarfile.PAX_FORMAT, end=True):
    """An archive of ``members``; without ``end``, only the members (no end-of-archive
    blocks, no padding), for bytes inserted into a stream."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
        written = archive.offset
    return buffer.getvalue() if end else buffer.getvalue()[:written]


def _member(name, kind=tarfile.REGTYPE, data=b"", linkname="", mode=0o644, size=None,
            pax=None):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    info.size = size if size is not None else len(data) if kind == tarfile.REGTYPE else 0
    info.pax_headers = pax or {}
    return info, (data if kind == tarfile.REGTYPE else None)


def _chunks(data, size=777):
    """As the pipe hands it over: in pieces that split headers and records anywhere."""
    return (data[i:i + size] for i in range(0, len(data), size))


@pytest.fixture
def saved(workspace):
    """A workspace holding what a previous save left: every refused archive keeps it."""
    workspace.mkdir()
    (workspace / "keep.txt").write_text("previous")
    (workspace / "sub").mkdir()
    (workspace / "sub" / "more.txt").write_text("more")
    return workspace


def _intact(workspace):
    assert sorted(p.name for p in workspace.iterdir()) == ["keep.txt", "sub"]
    assert (workspace / "keep.txt").read_text() == "previous"
    assert (workspace / "sub" / "more.txt").read_text() == "more"
    assert _leftovers(workspace) == []


def _ustar_header(name, size, kind=b"0", size_field=None):
    """A ustar header built by hand, for what tarfile will not write."""
    block = bytearray(512)
    block[0:len(name)] = name
    block[100:108] = b"0000644\0"
    block[108:116] = block[116:124] = b"0000000\0"
    block[124:136] = size_field or b"%011o\0" % size
    block[136:148] = b"%011o\0" % 0
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


SPARSE_01 = _member("huge", data=b"x", pax={"GNU.sparse.map": "0,1",
                                            "GNU.sparse.size": str(10**12)})

FORGED = {
    # The review's: a few bytes claiming a terabyte of holes.
    "sparse 0.1": (_tar(SPARSE_01), "sparse"),
    "sparse 0.0": (_tar(_member("huge", data=b"x", pax={
        "GNU.sparse.size": str(10**12), "GNU.sparse.numblocks": "1",
        "GNU.sparse.offset": "0", "GNU.sparse.numbytes": "1"})), "sparse"),
    "sparse 1.0": (_tar(_member("huge", data=b"1\n0\n1\n".ljust(512, b"\0") + b"x", pax={
        "GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "huge",
        "GNU.sparse.realsize": str(10**12)})), "sparse"),
    "GNU sparse type": (_ustar_header(b"./huge", 0, b"S") + bytes(1024), "sparse"),
    "member over the limit": (_ustar_header(b"./big", 10**9) + b"x" * 512, "over sandbox_size"),
    "total over the limit": (_tar(*[_member(f"f{i}", data=b"y" * 600_000) for i in range(3)]),
                             "over sandbox_size"),
    "absolute name": (_tar(_member("/abs.txt", data=b"abs")), "not a plain relative path"),
    "dot-dot": (_tar(_member("a/../../escape.txt", data=b"up")), "not a plain relative path"),
    "file through a symlink": (_tar(_member("via", tarfile.SYMTYPE, linkname="/tmp"),
                                    _member("via/planted.txt", data=b"x")), "cannot be extracted"),
    "file under a file": (_tar(_member("f", data=b"1"), _member("f/under", data=b"2")),
                          "cannot be extracted"),
    "name twice": (_tar(_member("f", data=b"1"), _member("f", data=b"2")), "cannot be extracted"),
    "no directory first": (_tar(_member("a/b.txt", data=b"1")), "cannot be extracted"),
    "hard link out": (_tar(_member("hard", tarfile.LNKTYPE, linkname="/etc/passwd")),
                      "not a plain relative path"),
    "hard link to nothing": (_tar(_member("hard", tarfile.LNKTYPE, linkname="missing")),
                             "cannot be extracted"),
    "hard link to a directory": (_tar(_member("d", tarfile.DIRTYPE),
                                      _member("hard", tarfile.LNKTYPE, linkname="d")),
                                 "other than a regular file"),
    "character device": (_tar(_member("dev", tarfile.CHRTYPE)), "character device"),
    "block device": (_tar(_member("dev", tarfile.BLKTYPE)), "block device"),
    "GNU long name": (_tar(_member("n" * 200, data=b"x"), fmt=tarfile.GNU_FORMAT),
                      "not POSIX ustar"),
    "unknown pax key": (_tar(_member("f", data=b"x", pax={"SCHILY.xattr.user.a": "b"})),
                        "pax key"),
    "huge pax header": (_tar(_member("f", data=b"x", pax={"comment": "c" * 70_000})),
                        "malformed pax header"),
    "bad checksum": (_ustar_header(b"./f", 0)[:148] + b"0000000\0" + _ustar_header(b"./f", 0)[156:]
                     + bytes(1024), "checksum"),
    "base-256 size": (_ustar_header(b"./f", 0, size_field=b"\x80" + bytes(10) + b"\x01")
                      + bytes(1024), "size field"),
    "data after the end": (_tar(_member("f", data=b"x")) + b"forged", "after its end"),
    "truncated": (_tar(_member("f", data=b"x" * 2000))[:1500], "ends inside"),
}


def test_an_archive_as_the_archiver_writes_it_is_extracted(saved):
    data = _tar(_member(".", tarfile.DIRTYPE, mode=0o755),
                _member("d", tarfile.DIRTYPE, mode=0o500),
                _member("d/suid", data=b"#!/bin/sh\n", mode=0o6755),
                _member("d/hard", tarfile.LNKTYPE, linkname="d/suid"),
                _member("link", tarfile.SYMTYPE, linkname="/etc/passwd"),
                _member("fifo", tarfile.FIFOTYPE),
                _member("zeros", data=bytes(300_000) + b"end"),
                _member("n" * 200, data=b"long name"))
    assert unpack(_chunks(data), str(saved), 1 << 20) == ""
    assert sorted(os.listdir(saved)) == ["d", "link", "n" * 200, "zeros"]
    assert stat.S_IMODE(os.stat(saved / "d").st_mode) == 0o700  # the owner may write it
    assert stat.S_IMODE(os.stat(saved / "d" / "suid").st_mode) == 0o755
    assert os.path.samestat(os.stat(saved / "d" / "suid"), os.stat(saved / "d" / "hard"))
    assert os.readlink(saved / "link") == "/etc/passwd"
    assert (saved / "zeros").read_bytes()[-4:] == b"\0end"
    assert (saved / ("n" * 200)).read_bytes() == b"long name"
    assert _leftovers(saved) == []


@pytest.mark.parametrize("name", FORGED)
def test_a_forged_archive_fails_the_save_and_keeps_the_workspace(saved, tmp_path, name):
    data, message = FORGED[name]
    fds = os.listdir("/proc/self/fd")
    with pytest.raises(Refused, match=message):
        unpack(_chunks(data), str(saved), 1 << 20)
    assert os.listdir("/proc/self/fd") == fds
    _intact(saved)
    assert sorted(os.listdir(tmp_path)) == ["ws"]  # nothing beside it, nothing outside
    assert not os.path.exists("/tmp/planted.txt")


def test_a_member_over_the_limit_is_refused_before_its_data_arrives(saved):
    arrived = []

    def archive():
        yield _ustar_header(b"./big", 10**9)
        arrived.append("data")
        yield b"\0" * 65536

    with pytest.raises(Refused, match="over sandbox_size"):
        unpack(archive(), str(saved), 1 << 20)
    assert arrived == []
    _intact(saved)


def test_an_error_from_the_archiver_keeps_the_workspace(saved):
    def archive():
        yield _tar(_member("new.txt", data=b"new"))
        raise Isol8Error("the archiver failed")

    with pytest.raises(Isol8Error, match="archiver failed"):
        unpack(archive(), str(saved), 1 << 20)
    _intact(saved)


def test_a_forged_archive_through_the_archivers_pipe_never_arrives(workspace):
    """The review's attack: a background process, same uid as the archiver, stops it and
    writes a forged sparse member into its stdout. stop() kills every process of the
    session before the archiver starts, so the forgery never happens."""
    forged = _tar(_member("forged", data=b"x", pax={"GNU.sparse.map": "0,1",
                                                     "GNU.sparse.size": str(64 << 20)}),
                  end=False)
    daemon = GUARD_PY + textwrap.dedent(f"""
        import os, signal
        forged = {forged!r}
        open('/tmp/daemon.pid', 'w').write(str(os.getpid()))
        while True:
            for pid in os.listdir('/proc'):
                try:
                    argv = open(f'/proc/{{pid}}/cmdline', 'rb').read().split(b'\\0')
                except OSError:
                    continue
                if argv[0].endswith(b'tar') and b'-cf' in argv:
                    os.kill(int(pid), signal.SIGSTOP)
                    with open(f'/proc/{{pid}}/fd/1', 'wb') as out:
                        out.write(forged)
                    os.kill(int(pid), signal.SIGCONT)
                    raise SystemExit
    """)
    with Isol8(mode="persistent", workspace_dir=workspace, sandbox_size="8m") as eng:
        r = run_py(eng, "import os\nfor i in range(300):\n"
                        "    open(f'/sandbox/f{i:03}', 'wb').write(os.urandom(20000))")
        assert r.exit_code == 0, r.stderr
        eng.put_file("/tmp/daemon.py", daemon)
        eng.execute(cmd="python3 /tmp/daemon.py >/dev/null 2>&1 &")
        r = eng.execute(cmd="sleep 0.5; kill -0 $(cat /tmp/daemon.pid) && echo alive")
        assert r.stdout == "alive"  # the attacker is there when stop() begins
    assert not (workspace / "forged").exists()
    names = [f"f{i:03}" for i in range(300)]
    assert sorted(set(os.listdir(workspace)) - {"main.py"}) == names
    assert all(os.path.getsize(workspace / f"f{i:03}") == 20000 for i in range(300))


# --- the save fails: the workspace stays, the engine still ends -----------------------------

def test_a_failed_save_keeps_the_workspace_and_still_tears_everything_down(workspace):
    with Isol8(mode="persistent", workspace_dir=workspace, sandbox_size="8m") as eng:
        eng.execute(cmd="echo v1 > version")
    fds = sorted(os.listdir("/proc/self/fd"))
    eng = Isol8(mode="persistent", workspace_dir=workspace, sandbox_size="8m")
    # Apparent size past sandbox_size: written out whole, it would pass the bound.
    r = eng.execute(cmd="echo v2 > version && truncate -s 100M sparse; sleep 1000 &")
    assert r.exit_code == 0
    assert child_pids() != []
    with pytest.raises(Isol8Error, match=f"{re.escape(str(workspace))}.*sandbox_size.*previous"):
        eng.stop()
    assert child_pids() == []  # the sandbox is gone all the same
    assert sorted(os.listdir("/proc/self/fd")) == fds
    assert eng._session is None and eng._cgroups is None
    assert sorted(os.listdir(workspace)) == ["version"]
    assert (workspace / "version").read_text() == "v1\n"
    assert _leftovers(workspace) == []


def test_a_sparse_sandbox_costs_neither_time_nor_memory_at_stop(tmp_path):
    """The review's /sandbox: 100 sparse files of 250 MB (25 GB apparent) in the default
    512 MiB tmpfs took stop() 80 s and grew the supervisor to 707 MiB. The save now stops
    at sandbox_size and holds no archive in memory. Measured in a fresh interpreter: its
    peak RSS is its own."""
    os.chmod(tmp_path, 0o755)
    script = textwrap.dedent(f"""
        import resource, time
        from isol8 import Isol8, Isol8Error
        eng = Isol8(mode="persistent", workspace_dir={str(tmp_path / 'ws')!r})
        eng.execute(cmd="for i in $(seq 100); do truncate -s 250M sparse$i; done")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.monotonic()
        try:
            eng.stop()
        except Isol8Error as exc:
            assert "sandbox_size" in str(exc), exc
        else:
            raise AssertionError("saved")
        print(time.monotonic() - started,
              resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    took, grew_kib = out.stdout.split()
    assert float(took) < 20 and int(grew_kib) < 64 << 10, out.stdout
    assert os.listdir(tmp_path / "ws") == []


# --- deep trees ------------------------------------------------------------------------------

@pytest.fixture
def deep_workspace(workspace):
    yield workspace
    # pytest's own cleanup of old tmp_paths recurses (shutil.rmtree): never leave it a deep
    # tree, even when the test fails.
    if workspace.parent.exists():
        parent = os.open(workspace.parent.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            remove_tree(parent, workspace.parent.name)
        finally:
            os.close(parent)


DESCEND = "import os\nfor _ in range(1500):\n    os.chdir('d')\n"


def test_a_1500_deep_tree_is_saved_and_restored(deep_workspace):
    workspace = deep_workspace
    with Isol8(mode="persistent", workspace_dir=workspace) as eng:
        r = eng.execute("import os\nfor _ in range(1500):\n    os.mkdir('d'); os.chdir('d')\n"
                        "open('f', 'w').write('bottom')")
        assert r.exit_code == 0, r.stderr
    fd = os.open(workspace, os.O_RDONLY)
    try:
        path = "/".join(["d"] * 1500) + "/f"
        with open(os.open(path, os.O_RDONLY, dir_fd=fd)) as bottom:
            assert bottom.read() == "bottom"
    finally:
        os.close(fd)
    with Isol8(mode="persistent", workspace_dir=workspace) as eng:
        r = eng.execute(DESCEND + "print(open('f').read())")
        assert r.stdout == "bottom", r.stderr
        assert eng.execute(cmd="rm -rf d main.py").exit_code == 0
    assert os.listdir(workspace) == []  # the deep tree went from the host too
    assert _leftovers(workspace) == []


# --- the workspace's path --------------------------------------------------------------------

@pytest.fixture
def shared():
    """A host directory a sandbox can reach (as root: others may search it)."""
    with host_tempdir("isol8-ws-") as base:
        (base / "shared").mkdir()
        (base / "shared").chmod(0o777)
        secret = base / "secret"
        secret.mkdir(mode=0o700)
        (secret / "key").write_text("TOP-SECRET")
        yield base


def test_a_workspace_swapped_for_a_symlink_is_never_followed(shared):
    """The review's attack: another engine's read-write mount reaches the workspace's
    parent; its sandbox replaces the workspace with a symlink to a directory it may not
    read, for the next session to restore."""
    ws = shared / "shared" / "ws"
    victim = Isol8(mode="persistent", workspace_dir=ws)
    mount = [{"source": str(shared / "shared"), "target": "/sandbox/shared", "readonly": False}]
    with Isol8(mounts=mount) as attacker:
        r = run_sh(attacker, f"rm -rf /sandbox/shared/ws && ln -s {shared}/secret "
                             "/sandbox/shared/ws && echo swapped")
        assert r.stdout == "swapped", r.stderr
    with pytest.raises(Isol8Error, match=f"{ws} has a symlink at {ws}"):
        victim.execute(cmd="cat key")
    victim.stop()
    with pytest.raises(InvalidRequest, match="symlink"):
        Isol8(mode="persistent", workspace_dir=ws)
    assert os.listdir(shared / "secret") == ["key"]


def test_a_symlink_anywhere_in_the_path_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(InvalidRequest, match=f"symlink at {tmp_path / 'link'}.*realpath"):
        Isol8(mode="persistent", workspace_dir=tmp_path / "link" / "ws")
    assert not (tmp_path / "real" / "ws").exists()
    Isol8(mode="persistent", workspace_dir=tmp_path / "real" / "ws")  # the real path is fine


def test_a_workspace_in_or_around_a_read_write_mount_is_refused(shared):
    base = shared / "shared"
    for source, ws in ((base, base / "ws"), (base, base), (base / "ws" / "data", base / "ws")):
        source.mkdir(parents=True, exist_ok=True)
        mount = [{"source": str(source), "target": "/sandbox/m", "readonly": False}]
        with pytest.raises(InvalidRequest, match="read-write mount"):
            Isol8(mode="persistent", workspace_dir=ws, mounts=mount)
    read_only = [{"source": str(base), "target": "/sandbox/m", "readonly": True}]
    Isol8(mode="persistent", workspace_dir=base / "ws", mounts=read_only)


def test_mounts_under_sandbox_are_not_copied_into_the_workspace(shared, workspace):
    (shared / "shared" / "host.txt").write_text("host file")
    mount = [{"source": str(shared / "shared"), "target": "/sandbox/m", "readonly": True}]
    with Isol8(mode="persistent", workspace_dir=workspace, mounts=mount) as eng:
        assert eng.execute(cmd="cat m/host.txt; echo mine > mine").stdout == "host file"
    assert not (workspace / "m" / "host.txt").exists()
    assert (workspace / "mine").read_text() == "mine\n"


# --- restore ---------------------------------------------------------------------------------

def test_a_workspace_over_the_sandbox_size_is_refused_clearly(workspace):
    workspace.mkdir()
    (workspace / "big").write_bytes(os.urandom(9 << 20))
    eng = Isol8(mode="persistent", workspace_dir=workspace, sandbox_size="8m")
    with pytest.raises(Isol8Error, match="holds more than sandbox_size"):
        eng.execute(cmd="true")
    eng.stop()
    assert os.path.getsize(workspace / "big") == 9 << 20


def test_restore_leaves_out_what_is_not_a_file_directory_or_link(workspace):
    workspace.mkdir()
    os.mkfifo(workspace / "pipe")
    (workspace / "f").write_text("f")
    with Isol8(mode="persistent", workspace_dir=workspace) as eng:
        assert eng.execute(cmd="ls").stdout == "f"


def test_the_workspace_is_capped_by_the_sandbox_size(workspace):
    with Isol8(mode="persistent", workspace_dir=workspace, sandbox_size="8m") as eng:
        r = eng.execute(cmd="head -c 20000000 /dev/zero > big")
        assert r.exit_code != 0 and "No space left" in r.stderr


def test_workspace_dir_needs_persistent_mode(workspace):
    with pytest.raises(InvalidRequest, match="workspace_dir"):
        Isol8(workspace_dir=workspace)
    with pytest.raises(InvalidRequest, match="workspace_dir"):
        Isol8(mode="persistent", workspace_dir=42)
