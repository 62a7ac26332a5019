"""workspace_dir: a persistent /sandbox that outlives the engine, copied, never mounted."""

import io
import json
import os
import tarfile

import pytest

from isol8 import InvalidRequest, Isol8
from isol8.workspace import unpack


@pytest.fixture
def workspace(tmp_path):
    path = tmp_path / "ws"
    os.chmod(tmp_path, 0o755)
    return path


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
    leftovers = [p for p in workspace.parent.iterdir() if p.name.startswith(".isol8-")]
    assert leftovers == []


def test_links_inside_the_workspace_stay_links_and_are_never_followed(workspace):
    outside = workspace.parent / "outside"
    outside.mkdir()
    with Isol8(mode="persistent", workspace_dir=workspace) as eng:
        eng.execute(cmd="ln -s /etc/passwd pw; ln -s / root; mkdir d; ln -s d d2")
    assert os.readlink(workspace / "pw") == "/etc/passwd"
    assert os.readlink(workspace / "root") == "/"
    with Isol8(mode="persistent", workspace_dir=workspace) as eng:
        # Inside, the link resolves in the sandbox's own view.
        assert eng.execute(cmd="readlink root; ls d2").stdout == "/"


def _tar(*members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _member(name, kind=tarfile.REGTYPE, data=b"", linkname="", mode=0o644):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


def test_a_hostile_archive_cannot_write_outside_the_workspace(workspace, tmp_path):
    # What code in the sandbox could make the saved archive hold, since it can write into
    # the archiver's pipe: absolute names, .., a link and then a file through it, a hard
    # link, a device, a setuid bit.
    victim = tmp_path / "victim"
    victim.mkdir()
    workspace.mkdir()
    data = _tar(
        _member("/abs.txt", data=b"abs"),
        _member("../escape.txt", data=b"up"),
        _member("a/../../escape2.txt", data=b"up"),
        _member("via", tarfile.SYMTYPE, linkname=str(victim)),
        _member("via/planted.txt", data=b"planted"),
        _member("link", tarfile.SYMTYPE, linkname=str(victim)),
        _member("link/chained", tarfile.SYMTYPE, linkname="/"),
        _member("f", data=b"file first"),
        _member("f/under", data=b"a file under a file"),
        _member("hard", tarfile.LNKTYPE, linkname="/etc/passwd"),
        _member("dev", tarfile.CHRTYPE),
        _member("suid", data=b"#!/bin/sh\n", mode=0o4755),
        _member("ok/file.txt", data=b"fine"),
    )
    unpack(data, str(workspace))
    assert list(victim.iterdir()) == []  # nothing written, and no link made, through a link
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "escape2.txt").exists()
    assert (workspace / "ok" / "file.txt").read_bytes() == b"fine"
    assert os.readlink(workspace / "link") == str(victim)
    assert (workspace / "f").read_bytes() == b"file first"  # the rest still came through
    assert (workspace / "abs.txt").read_bytes() == b"abs"  # made relative
    assert not os.path.islink(workspace / "via")  # the directory came first, and stays
    assert (workspace / "via" / "planted.txt").read_bytes() == b"planted"
    assert not (workspace / "hard").exists() and not (workspace / "dev").exists()
    assert os.stat(workspace / "suid").st_mode & 0o7777 == 0o755


def test_the_workspace_is_capped_by_the_sandbox_size(workspace):
    with Isol8(mode="persistent", workspace_dir=workspace, sandbox_size="8m") as eng:
        r = eng.execute(cmd="head -c 20000000 /dev/zero > big")
        assert r.exit_code != 0 and "No space left" in r.stderr


def test_workspace_dir_needs_persistent_mode(workspace):
    with pytest.raises(InvalidRequest, match="workspace_dir"):
        Isol8(workspace_dir=workspace)
    with pytest.raises(InvalidRequest, match="workspace_dir"):
        Isol8(mode="persistent", workspace_dir=42)
