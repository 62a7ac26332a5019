"""Host directories and files mounted into the sandbox (the engine option ``mounts``).

Every test runs a real sandbox on the real kernel, in both modes. As root a mount is
idmapped (its owner is the sandbox user inside) but looked up as the sandbox's leased host
uid, which only "other" permissions let search the parents: so the host trees here live under
/var/tmp (world-searchable, unlike pytest's tmp_path as root), and are made world-writable
where a test needs the kernel, not file permissions, to be what refuses a write (the plain
mapping of a mount that cannot be idmapped).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from isol8 import InvalidRequest, Isol8, SandboxSetupError, images, policy, protocol

from conftest import ATTEMPT_PY, host_tempdir, is_root, run_py, run_sh


@pytest.fixture
def host_dir():
    """A host directory the sandbox's uid can reach in either mode."""
    with host_tempdir("isol8-mounts-") as path:
        yield path


@pytest.fixture
def project(host_dir):
    """host_dir/project: a checkout with a file and a subdirectory, everyone may write (so a
    refused write is the mount's doing), and a secret next to it, outside the source."""
    src = host_dir / "project"
    (src / "pkg").mkdir(parents=True)
    (src / "README").write_text("hello from the host\n")
    (src / "pkg" / "mod.py").write_text("VALUE = 42\n")
    (host_dir / "outside-secret").write_text("HOST-OUTSIDE-SECRET\n")
    for path in (src, src / "pkg"):
        path.chmod(0o777)
    for path in (src / "README", src / "pkg" / "mod.py", host_dir / "outside-secret"):
        path.chmod(0o666)
    return src


def _json(result) -> dict:
    """The probe prints one JSON object on its last stdout line."""
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


WRITE_PROBE = ATTEMPT_PY + """
import json, os
root = {root!r}
out = {{
    'append': attempt(lambda: open(root + '/README', 'a').close()),
    'create': attempt(lambda: open(root + '/new.txt', 'x').close()),
    'mkdir': attempt(lambda: os.mkdir(root + '/newdir')),
    'unlink': attempt(lambda: os.unlink(root + '/README')),
    'rename': attempt(lambda: os.rename(root + '/README', root + '/R2')),
    'chmod': attempt(lambda: os.chmod(root + '/README', 0o600)),
    'sub create': attempt(lambda: open(root + '/pkg/new.py', 'x').close()),
    'control': attempt(lambda: open('/sandbox/control.txt', 'x').close()),
}}
print(json.dumps(out))
"""


# --- read-only and read-write --------------------------------------------------------------

def test_read_only_mount_is_readable_and_every_write_fails_erofs(project):
    with Isol8(mounts=[{"source": str(project), "target": "/sandbox/project"}]) as eng:
        r = run_py(eng, "import sys; sys.path.insert(0, '/sandbox/project')\n"
                        "import pkg.mod; print(open('/sandbox/project/README').read().strip(),"
                        " pkg.mod.VALUE)")
        assert r.stdout == "hello from the host 42", r.stderr
        got = _json(run_py(eng, WRITE_PROBE.format(root="/sandbox/project")))
    assert got.pop("control") == "ok"  # the probe can write where it is allowed to
    assert got == dict.fromkeys(got, "EROFS"), got
    assert sorted(os.listdir(project)) == ["README", "pkg"]
    assert (project / "README").read_text() == "hello from the host\n"


def test_read_write_mount_writes_land_on_the_host(project):
    with Isol8(mounts=[{"source": str(project), "target": "/mnt/work", "readonly": False}]) \
            as eng:
        r = run_sh(eng, "echo 'appended in the sandbox' >> /mnt/work/README && "
                        "mkdir /mnt/work/out && echo result > /mnt/work/out/file.txt && "
                        "rm /mnt/work/pkg/mod.py && echo done")
        assert (r.exit_code, r.stdout) == (0, "done"), r.stderr
    assert (project / "README").read_text() == "hello from the host\nappended in the sandbox\n"
    assert (project / "out" / "file.txt").read_text() == "result\n"
    assert not (project / "pkg" / "mod.py").exists()
    # rootless the sandbox user is the caller; as root the mount is idmapped and what the
    # sandbox creates belongs to the source's owner (the caller here, root)
    assert (project / "out" / "file.txt").stat().st_uid == project.stat().st_uid == os.getuid()


def test_mount_flags_are_nosuid_nodev_and_the_root_stays_read_only(project):
    mounts = [{"source": str(project), "target": "/sandbox/ro"},
              {"source": str(project / "pkg"), "target": "/mnt/a/rw", "readonly": False}]
    with Isol8(mounts=mounts) as eng:
        r = run_py(eng, """
import errno, json
out = {}
for line in open('/proc/self/mountinfo'):
    fields = line.split()
    if fields[4] in ('/sandbox/ro', '/mnt/a/rw'):
        out[fields[4]] = sorted(fields[5].split(',')[:3])
try:
    open('/mnt/new', 'x')
    out['/mnt/new'] = 'created'
except OSError as e:
    out['/mnt/new'] = errno.errorcode[e.errno]
print(json.dumps(out))
""")
    got = _json(r)
    assert got["/sandbox/ro"] == ["nodev", "nosuid", "ro"]
    assert got["/mnt/a/rw"] == ["nodev", "nosuid", "rw"]
    assert got["/mnt/new"] == "EROFS"  # /mnt is the new root's, read-only like it


@pytest.mark.root_only  # only root can put a submount into the host tree
def test_submounts_of_a_read_only_mount_are_read_only(project):
    sub = project / "pkg"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0777,size=1m", "isol8-test", str(sub)],
                   check=True)
    try:
        probe = ("import errno\ntry:\n    open('/sandbox/p/pkg/x', 'w').write('1'); print('ok')\n"
                 "except OSError as e:\n    print(errno.errorcode[e.errno])")
        with Isol8(mounts=[{"source": str(project), "target": "/sandbox/p"}]) as eng:
            assert run_py(eng, probe).stdout == "EROFS"
        # positive control: the same submount is writable through a read-write mount
        with Isol8(mounts=[{"source": str(project), "target": "/sandbox/p",
                            "readonly": False}]) as eng:
            assert run_py(eng, probe).stdout == "ok"
        assert (sub / "x").read_text() == "1"
    finally:
        subprocess.run(["umount", str(sub)], check=True)


def test_file_mounts(project, host_dir):
    config = host_dir / "settings.json"
    config.write_text('{"debug": true}')
    config.chmod(0o666)
    mounts = [{"source": str(config), "target": "/sandbox/conf/settings.json"},
              {"source": str(project / "README"), "target": "/mnt/README", "readonly": False}]
    with Isol8(mounts=mounts) as eng:
        r = run_py(eng, """
import errno, json, os
out = {'settings': json.load(open('/sandbox/conf/settings.json')),
       'is file': os.path.isfile('/sandbox/conf/settings.json')}
try:
    open('/sandbox/conf/settings.json', 'a')
except OSError as e:
    out['ro write'] = errno.errorcode[e.errno]
with open('/mnt/README', 'a') as fh:
    fh.write('edited\\n')
print(json.dumps(out))
""")
    assert _json(r) == {"settings": {"debug": True}, "is file": True, "ro write": "EROFS"}
    assert (project / "README").read_text() == "hello from the host\nedited\n"


def test_persistent_sessions_see_the_host_tree_live(project):
    with Isol8(mode="persistent",
               mounts=[{"source": str(project), "target": "/sandbox/p", "readonly": False}]) \
            as eng:
        assert eng.execute(cmd="cat /sandbox/p/README").stdout == "hello from the host"
        (project / "README").write_text("changed on the host\n")
        eng.execute(cmd="echo from-run-2 > /sandbox/p/run2")
        assert eng.execute(cmd="cat /sandbox/p/README /sandbox/p/run2").stdout == \
            "changed on the host\nfrom-run-2"
    assert (project / "run2").read_text() == "from-run-2\n"


def test_no_setuid_or_setgid_file_reaches_the_host(project):
    """A setuid file made through a read-write mount would be one on the host, owned by the
    caller (rootless) or the source's owner (as root, idmapped): the seccomp filter refuses
    the bits in every mode argument. Checked on the host, in both modes."""
    with Isol8(mounts=[{"source": str(project), "target": "/sandbox/p", "readonly": False}]) \
            as eng:
        r = run_py(eng, ATTEMPT_PY + """
import json, os, stat, subprocess
p = '/sandbox/p'
os.close(os.open(p + '/plain', os.O_WRONLY | os.O_CREAT, 0o755))
out = {
    'open': attempt(lambda: os.close(os.open(p + '/a', os.O_WRONLY | os.O_CREAT, 0o4755))),
    'tmpfile': attempt(lambda: os.close(os.open(p, os.O_WRONLY | os.O_TMPFILE, 0o2755))),
    'mknod': attempt(lambda: os.mknod(p + '/b', stat.S_IFREG | 0o6755)),
    'mkdir': attempt(lambda: os.mkdir(p + '/c', 0o2755)),
    'chmod new': attempt(lambda: os.chmod(p + '/plain', 0o4755)),
    'chmod host file': attempt(lambda: os.chmod(p + '/README', 0o2666)),
    'chmod dir': attempt(lambda: os.chmod(p + '/pkg', 0o2777)),
}
out['chmod(1)'] = subprocess.run(['chmod', 'u+s,g+s', p + '/plain', p + '/README'],
                                 capture_output=True).returncode
print(json.dumps(out))
""")
    got = _json(r)
    assert got.pop("chmod(1)") == 1
    assert got == dict.fromkeys(got, "EPERM"), got
    assert (project / "plain").is_file()  # the control: plain modes go through
    setid = [str(path) for path in [project, *project.rglob("*")]
             if path.lstat().st_mode & (stat.S_ISUID | stat.S_ISGID)]
    assert setid == []



# --- sources under the host's /tmp ---------------------------------------------------------
# The helper stages the new root on a tmpfs over /tmp; sources are cloned before it is
# mounted, so /tmp paths are the host's.

@pytest.fixture
def tmp_source(tmp_path):
    """A fresh directory under the host's /tmp, as agent hosts mount: pytest's tmp_path
    rootless; as root tmp_path sits in /tmp/pytest-of-root (0700), which the sandbox's
    leased uid may not search, so a mkdtemp() directory straight under /tmp."""
    if not is_root():
        yield tmp_path
        return
    with host_tempdir("isol8-tmp-src-", under="/tmp") as path:
        yield path


@pytest.fixture
def tmp_lock():
    """Tests that create /tmp/<name> or mount /tmp itself run one at a time, across
    processes (a root and a rootless suite): an flock on /tmp, which every user can open."""
    fd = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def test_sources_under_the_host_tmp(tmp_source):
    assert str(tmp_source).startswith("/tmp/")
    (tmp_source / "repo").mkdir()
    (tmp_source / "repo" / "marker").write_text("from the host's /tmp\n")
    (tmp_source / "settings.json").write_text('{"tmp": true}')
    for path in (tmp_source / "repo", tmp_source / "repo" / "marker",
                 tmp_source / "settings.json"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    mounts = [{"source": str(tmp_source / "repo"), "target": "/sandbox/repo"},
              {"source": str(tmp_source / "settings.json"), "target": "/mnt/settings.json"},
              {"source": str(tmp_source), "target": "/mnt/workspace"}]
    with Isol8(mounts=mounts) as eng:
        r = run_sh(eng, "cat /sandbox/repo/marker /mnt/settings.json; echo; "
                        "ls /mnt/workspace; ls /sandbox/repo")
    assert (r.exit_code, r.stdout.splitlines()) == (0, [
        "from the host's /tmp", '{"tmp": true}', "repo", "settings.json", "marker"]), r.stderr


def test_the_host_tmp_itself_as_a_source(tmp_source, tmp_lock):
    """/tmp is the host's, not the new root the helper stages there (its usr, etc, proc)."""
    (tmp_source / "marker").write_text("host tmp\n")
    (tmp_source / "marker").chmod(0o644)
    with Isol8(mounts=[{"source": "/tmp", "target": "/mnt/host-tmp"}]) as eng:
        r = run_sh(eng, f"cat /mnt/host-tmp/{tmp_source.relative_to('/tmp')}/marker; "
                        "ls -a /mnt/host-tmp")
    assert r.exit_code == 0, r.stderr
    first, *entries = r.stdout.splitlines()
    assert first == "host tmp"
    assert str(tmp_source).split("/")[2] in entries
    assert not {"usr", "proc", "sandbox"} & set(entries), entries


@pytest.mark.parametrize("name", ["etc", "usr", "sandbox"])
def test_a_source_named_like_the_staged_root(tmp_lock, name):
    """/tmp/etc is the host's /tmp/etc, never the synthesized /etc of the staging tree."""
    source = Path("/tmp") / name
    source.mkdir(mode=0o755)  # fails loudly if a stale one is in the way
    try:
        source.chmod(0o755)
        (source / "marker").write_text(f"host /tmp/{name}\n")
        (source / "marker").chmod(0o644)
        with Isol8(mounts=[{"source": str(source), "target": "/sandbox/shadow"}]) as eng:
            r = run_sh(eng, "ls -A /sandbox/shadow; cat /sandbox/shadow/marker")
    finally:
        shutil.rmtree(source)
    assert (r.exit_code, r.stdout.splitlines()) == (0, ["marker", f"host /tmp/{name}"]), \
        r.stderr


# --- ownership: idmapped as root -----------------------------------------------------------

def test_git_commits_in_a_read_write_mount_of_a_private_repo(tmp_source):
    """An agent's checkout: a 0700 repository of the caller's (root's, as root) under /tmp.
    Its owner is the sandbox user inside (git's safe.directory check passes) and the commit's
    files belong to the owner on the host, in both modes."""
    repo = tmp_source / "repo"
    git = ["git", "-c", "user.name=host", "-c", "user.email=host@example.com", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "README").write_text("v1\n")
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-qm", "from the host"], check=True)
    repo.chmod(0o700)
    with Isol8(mounts=[{"source": str(repo), "target": "/sandbox/repo", "readonly": False}]) \
            as eng:
        r = run_sh(eng, "cd /sandbox/repo && stat -c '%U %a' . README && echo v2 > README && "
                        "git -c user.name=a -c user.email=a@b commit -qam 'from the sandbox' "
                        "&& git log --format=%s")
    assert r.exit_code == 0, r.stderr
    assert "dubious ownership" not in r.stderr
    assert r.stdout.splitlines() == ["sandbox 700", "sandbox 644", "from the sandbox",
                                     "from the host"]
    log = subprocess.run([*git, "log", "--format=%s"], capture_output=True, text=True,
                         check=True).stdout.split()
    assert log[:2] == ["from", "the"] and "sandbox" in log
    assert (repo / "README").read_text() == "v2\n"
    objects = [path for path in (repo / ".git" / "objects").rglob("*") if path.is_file()]
    assert len(objects) >= 6  # the host's commit, tree, blob and the sandbox's three
    assert {path.stat().st_uid for path in [*objects, repo / "README"]} == {os.getuid()}


@pytest.mark.root_only
def test_as_root_the_source_owner_is_the_sandbox_user(host_dir):
    """Any owner, not only root: a tree owned by an unused uid shows as `sandbox`, its other
    users' files as nobody, and what the sandbox creates belongs to that owner on the host."""
    owner, other = 4_000_123, 4_000_456  # no account has them
    src = host_dir / "owned"
    src.mkdir(mode=0o700)
    (src / "mine").write_text("owner's\n")
    (src / "theirs").write_text("someone else's\n")
    os.chown(src, owner, owner)
    os.chown(src / "mine", owner, owner)
    os.chown(src / "theirs", other, other)
    (src / "mine").chmod(0o600)
    (src / "theirs").chmod(0o600)
    with Isol8(mounts=[{"source": str(src), "target": "/sandbox/o", "readonly": False}]) as eng:
        r = run_sh(eng, "cd /sandbox/o && stat -c '%n %U %G' . mine theirs && cat mine && "
                        "{ cat theirs 2>/dev/null || echo denied; } && mkdir new && "
                        "echo x > new/file")
    assert r.stdout.splitlines() == [". sandbox sandbox", "mine sandbox sandbox",
                                     "theirs nobody nogroup", "owner's", "denied"], r.stderr
    for path in (src / "new", src / "new" / "file"):
        assert (path.stat().st_uid, path.stat().st_gid) == (owner, owner)


@pytest.mark.root_only
def test_as_root_the_source_is_looked_up_as_the_leased_uid(host_dir):
    """Never as host root: a parent that stops being searchable by others after the engine
    was built fails the setup with EACCES, though root could still reach the source."""
    gate = host_dir / "gate"
    (gate / "src").mkdir(parents=True)
    gate.chmod(0o755)
    with Isol8(mounts=[{"source": str(gate / "src"), "target": "/sandbox/s"}]) as eng:
        gate.chmod(0o700)
        with pytest.raises(SandboxSetupError) as info:
            eng.execute(cmd="true")
        gate.chmod(0o711)  # search is all it takes
        assert eng.execute(cmd="stat -c %U /sandbox/s").stdout == "sandbox"
    assert (info.value.syscall, info.value.errno, info.value.path) == (
        "openat2", 13, str(gate / "src"))  # EACCES


@pytest.mark.root_only
def test_a_file_system_that_cannot_be_idmapped_falls_back_and_says_so(host_dir):
    """overlayfs has no idmapped mounts (EINVAL): the mount keeps plain ownership, as before
    idmapping (root's files show as nobody), and a RuntimeWarning names it and the reason."""
    for name in ("lower", "upper", "work", "merged"):
        (host_dir / name).mkdir()
    (host_dir / "lower" / "marker").write_text("from the lower layer\n")
    (host_dir / "lower" / "marker").chmod(0o644)
    merged = host_dir / "merged"
    subprocess.run(["mount", "-t", "overlay", "isol8-test", "-o",
                    f"lowerdir={host_dir / 'lower'},upperdir={host_dir / 'upper'},"
                    f"workdir={host_dir / 'work'}", str(merged)], check=True)
    try:
        merged.chmod(0o755)
        with Isol8(mounts=[{"source": str(merged), "target": "/mnt/ovl"}]) as eng:
            with pytest.warns(RuntimeWarning, match=r"mount /mnt/ovl is not idmapped "
                                                    r"\(EINVAL\)"):
                r = run_sh(eng, "stat -c %U /mnt/ovl/marker && cat /mnt/ovl/marker")
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    assert r.stdout.splitlines() == ["nobody", "from the lower layer"], r.stderr


@pytest.mark.root_only
def test_without_a_seccomp_filter_read_write_mounts_are_not_idmapped(project):
    """seccomp="unconfined" lifts the setuid refusal, so a read-write mount does not make the
    sandbox the source's owner (root here): it writes as its leased uid, and is told why.
    A read-only mount stays idmapped."""
    mounts = [{"source": str(project), "target": "/sandbox/rw", "readonly": False},
              {"source": str(project), "target": "/sandbox/ro"}]
    with Isol8(seccomp="unconfined", mounts=mounts) as eng:
        with pytest.warns(RuntimeWarning, match="mount /sandbox/rw is not idmapped "
                                                r"\(read-write without a seccomp filter\)"):
            r = run_sh(eng, "stat -c %U /sandbox/rw /sandbox/ro && touch /sandbox/rw/new")
    assert r.stdout.splitlines() == ["nobody", "sandbox"], r.stderr
    assert (project / "new").stat().st_uid >= 65536  # the leased uid, never root


# --- escapes -------------------------------------------------------------------------------

@pytest.mark.parametrize("seccomp", ["strict", "unconfined"])  # unconfined: capabilities alone
def test_code_cannot_remount_or_unmount_a_read_only_mount(project, seccomp):
    with Isol8(seccomp=seccomp, mounts=[{"source": str(project), "target": "/sandbox/p"}]) \
            as eng:
        r = run_py(eng, """
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_REMOUNT, MS_BIND, MNT_DETACH = 1, 32, 4096, 2
out = {}
def call(name, fn):
    rc = fn()
    out[name] = 'ok' if rc == 0 else errno.errorcode[ctypes.get_errno()]
call('remount rw', lambda: libc.mount(None, b'/sandbox/p', None, MS_REMOUNT | MS_BIND, None))
call('bind over', lambda: libc.mount(b'/sandbox', b'/sandbox/p', None, MS_BIND, None))
call('umount', lambda: libc.umount2(b'/sandbox/p', MNT_DETACH))

class Attr(ctypes.Structure):
    _fields_ = [('set', ctypes.c_uint64), ('clr', ctypes.c_uint64),
                ('prop', ctypes.c_uint64), ('userns', ctypes.c_uint64)]
attr = Attr(0, 1, 0, 0)  # clear MOUNT_ATTR_RDONLY
call('mount_setattr', lambda: libc.syscall(442, -100, b'/sandbox/p', 0, ctypes.byref(attr),
                                           ctypes.sizeof(attr)))
call('open_tree', lambda: 0 if libc.syscall(428, -100, b'/sandbox/p', 1) >= 0 else -1)
try:
    open('/sandbox/p/README', 'a')
    out['write after'] = 'ok'
except OSError as e:
    out['write after'] = errno.errorcode[e.errno]
print(json.dumps(out))
""")
    got = _json(r)
    assert got.pop("write after") == "EROFS"
    if seccomp == "strict":  # mount and umount2 EPERM from seccomp, the new mount API ENOSYS
        assert all(v in ("EPERM", "ENOSYS") for v in got.values()), got
    else:  # no CAP_SYS_ADMIN left in any set
        assert got == dict.fromkeys(got, "EPERM"), got
    assert (project / "README").read_text() == "hello from the host\n"


def test_dotdot_from_the_mount_point_stays_in_the_sandbox(project, host_dir):
    with Isol8(mounts=[{"source": str(project), "target": "/sandbox/p", "readonly": False}]) \
            as eng:
        r = run_py(eng, f"""
import json, os
out = {{'parent': sorted(os.listdir('/sandbox/p/..')),
        'sibling': os.path.lexists('/sandbox/p/../outside-secret'),
        'realpath': os.path.realpath('/sandbox/p/../../..'),
        'host path': os.path.lexists({str(host_dir / 'outside-secret')!r}),
        'deep': os.path.lexists('/sandbox/p/../../var/tmp')}}
os.chdir('/sandbox/p/pkg')
for _ in range(8):
    os.chdir('..')
out['cwd'] = os.getcwd()
out['cwd entries'] = sorted(os.listdir('.'))
print(json.dumps(out))
""")
    got = _json(r)
    assert "p" in got["parent"] and "outside-secret" not in got["parent"]
    assert got["sibling"] is False and got["host path"] is False and got["deep"] is False
    assert got["realpath"] == "/" and got["cwd"] == "/"
    assert "var" not in got["cwd entries"] and "work" not in got["cwd entries"]


def test_symlinks_in_the_source_resolve_inside_the_sandbox(project, host_dir):
    outside = host_dir / "outside-secret"
    (project / "to-passwd").symlink_to("/etc/passwd")
    (project / "to-shadow").symlink_to("/etc/shadow")
    (project / "to-host-file").symlink_to(outside)
    (project / "to-host-dir").symlink_to(host_dir)
    (project / "relative").symlink_to("../outside-secret")
    # positive control: on the host every link reaches its target
    assert (project / "to-host-file").read_text() == "HOST-OUTSIDE-SECRET\n"
    assert (project / "relative").read_text() == "HOST-OUTSIDE-SECRET\n"
    assert (project / "to-host-dir" / "outside-secret").exists()
    with Isol8(mounts=[{"source": str(project), "target": "/sandbox/p"}]) as eng:
        r = run_py(eng, """
import errno, json, os
out = {}
for name in ('to-passwd', 'to-shadow', 'to-host-file', 'to-host-dir/outside-secret',
             'relative'):
    try:
        out[name] = open('/sandbox/p/' + name).read()
    except OSError as e:
        out[name] = errno.errorcode[e.errno]
out['sandbox passwd'] = open('/etc/passwd').read()
print(json.dumps(out))
""")
    got = _json(r)
    assert "HOST-OUTSIDE-SECRET" not in r.stdout
    # /etc/passwd through the link is the sandbox's synthesized one, not the host's
    assert got.pop("to-passwd") == got.pop("sandbox passwd")
    assert got == {"to-shadow": "ENOENT", "to-host-file": "ENOENT",
                   "to-host-dir/outside-secret": "ENOENT", "relative": "ENOENT"}


def test_source_is_resolved_when_the_engine_is_built(host_dir):
    for name, text in (("a", "tree a"), ("b", "tree b")):
        (host_dir / name).mkdir()
        (host_dir / name / "which").write_text(text)
        (host_dir / name).chmod(0o755)
        (host_dir / name / "which").chmod(0o644)
    link = host_dir / "current"
    link.symlink_to(host_dir / "a")
    with Isol8(mounts=[{"source": str(link), "target": "/sandbox/p"}]) as eng:
        link.unlink()
        link.symlink_to(host_dir / "b")  # re-pointed after the engine was built
        assert eng.execute(cmd="cat /sandbox/p/which").stdout == "tree a"


def test_a_symlink_swapped_into_the_resolved_source_fails_setup(host_dir):
    real, moved = host_dir / "real", host_dir / "moved"
    real.mkdir()
    real.chmod(0o755)
    with Isol8(mounts=[{"source": str(real), "target": "/sandbox/p"}]) as eng:
        real.rename(moved)
        real.symlink_to(moved)
        with pytest.raises(SandboxSetupError) as info:
            eng.execute(cmd="true")
    assert (info.value.syscall, info.value.errno, info.value.path) == (
        "openat2", 40, str(real))  # ELOOP


# --- validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("target", [
    "/etc/x", "/tmp/x", "/usr/local", "/", "/sandbox", "/sandbox/", "/mnt", "/mnt//",
    "/sandboxes/x", "/mntx", "sandbox/x", "relative", "", None, 42,
    "/sandbox/../etc", "/sandbox/a/../../etc", "/mnt/..", "/sandbox/main.py", "/sandbox/x\0y",
])
def test_bad_targets_are_refused(host_dir, target):
    with pytest.raises(InvalidRequest, match=r"mounts\[0\]\.target"):
        Isol8(mounts=[{"source": str(host_dir), "target": target}])


def test_targets_are_normalized(host_dir):
    eng = Isol8(mounts=[{"source": str(host_dir), "target": "/sandbox//a/./b/"}])
    assert [m.target for m in eng.options.mounts] == ["/sandbox/a/b"]
    assert eng.options.mounts[0].readonly is True


@pytest.mark.parametrize("source, message", [
    ("/nonexistent/isol8-src", "does not exist"),
    ("relative/dir", "absolute host path"),
    ("", "expected a host path"),
    (None, "expected a host path"),
    ("/proc/self", "host's /proc"),
    ("/sys", "host's /sys"),
    ("/dev/null", "not a directory or a regular file"),
    ("/", "proc mount"),
])
def test_bad_sources_are_refused(source, message):
    with pytest.raises(InvalidRequest, match=r"mounts\[0\]\.source") as info:
        Isol8(mounts=[{"source": source, "target": "/sandbox/x"}])
    assert message in str(info.value)


@pytest.mark.parametrize("mounts, message", [
    ("/var/tmp", "expected a list"),
    ({"source": "/var/tmp", "target": "/sandbox/x"}, "expected a list"),
    (["/var/tmp:/sandbox/x"], "expected a mapping"),
    ([{"source": "/var/tmp", "target": "/sandbox/x", "readonly": "yes"}], "readonly"),
    ([{"source": "/var/tmp", "target": "/sandbox/x", "mode": "rw"}], "unknown key"),
    # (/usr: nothing mounts a kernel file system below it, as a bootstrap under /var/tmp may)
    ([{"source": "/usr/share", "target": "/sandbox/x"},
      {"source": "/usr", "target": "/sandbox/x/"}], "duplicate target /sandbox/x"),
    ([{"source": "/usr/share", "target": "/mnt/a/b"},
      {"source": "/usr", "target": "/mnt/a"}], "/mnt/a/b is inside /mnt/a"),
    ([{"source": "/usr", "target": f"/mnt/{i}"} for i in range(33)], "at most 32"),
])
def test_bad_mount_lists_are_refused(mounts, message):
    with pytest.raises(InvalidRequest, match="mounts") as info:
        Isol8(mounts=mounts)
    assert message in str(info.value)


def test_siblings_with_a_common_prefix_are_not_nested(host_dir):
    eng = Isol8(mounts=[{"source": str(host_dir), "target": "/mnt/a"},
                        {"source": str(host_dir), "target": "/mnt/a-b"},
                        {"source": str(host_dir), "target": "/mnt/ab"}])
    assert len(eng.options.mounts) == 3


@pytest.mark.root_only
def test_as_root_a_source_others_cannot_reach_is_refused(host_dir):
    private = host_dir / "private"
    (private / "src").mkdir(parents=True)
    private.chmod(0o700)
    with pytest.raises(InvalidRequest, match="not searchable by others") as info:
        Isol8(mounts=[{"source": str(private / "src"), "target": "/sandbox/x"}])
    assert f"chmod o+x {private}" in str(info.value)


# --- the plan and its wire form ------------------------------------------------------------

def test_plan_places_mounts_after_the_sandbox_tmpfs_and_makes_mnt(host_dir):
    sizes = images.TmpfsSizes(sandbox=1 << 20, tmp=1 << 20)
    default = images.host_plan(sizes, host_network=False)
    assert not any(isinstance(op, protocol.BindHost) for op in default)
    assert protocol.Dir("/mnt") not in default  # the default root has no /mnt
    opts = Isol8(mounts=[{"source": str(host_dir), "target": "/sandbox/p"},
                         {"source": str(host_dir), "target": "/mnt/x", "readonly": False}]).options
    plan = list(images.host_plan(sizes, host_network=False, mounts=opts.mounts))
    binds = [plan.index(protocol.BindHost(str(host_dir), "/sandbox/p", True)),
             plan.index(protocol.BindHost(str(host_dir), "/mnt/x", False))]
    sandbox_tmpfs = next(i for i, op in enumerate(plan)
                         if isinstance(op, protocol.Tmpfs) and op.target == "/sandbox")
    assert sandbox_tmpfs < plan.index(protocol.Dir("/mnt")) < min(binds)


def test_bind_host_wire_layout():
    ro = protocol.BindHost("/src", "/sandbox/p").encode()
    rw = protocol.BindHost("/src", "/sandbox/p", readonly=False).encode()
    payload = b"/src\0/sandbox/p\0"
    assert ro == struct.pack("<HHI", 26, 0, 4 + len(payload)) + struct.pack("<I", 1) + payload
    assert rw == struct.pack("<HHI", 26, 0, 4 + len(payload)) + struct.pack("<I", 0) + payload
    with pytest.raises(protocol.ProtocolError):
        protocol.BindHost("/s\0", "/sandbox/p").encode()


# --- isol8's own files ---------------------------------------------------------------------
# A read-write mount that is, contains or lies inside what runs the supervisor or steers the
# next sandboxes would let user code rewrite it (issue 9: the seccomp cache, through a mount
# of the caller's home). Read-only mounts of the same paths stay allowed.

INSTALLED = ("package", "helper binary", "Python prefix", "interpreter", "standard library")


def _rw(source) -> list[dict]:
    return [{"source": str(source), "target": "/mnt/x", "readonly": False}]


@pytest.mark.parametrize("what", INSTALLED)
def test_read_write_mounts_of_the_installation_are_refused(what):
    path = Path(policy.own_files()[what])
    cases = [(path, "is"), (path.parent, "contains")]
    inside = next((p for p in sorted(path.iterdir()) if p.is_dir()), None) \
        if path.is_dir() else None
    if inside is not None:
        cases.append((inside, "is inside"))
    own = policy.own_files()
    for source, relation in cases:
        with pytest.raises(InvalidRequest) as info:
            Isol8(mounts=_rw(source))
        message = str(info.value)
        # the first of isol8's files the source overlaps is named (the helper's directory
        # is inside the package too)
        named = [w for w, p in own.items() if f"{relation} isol8's own {w} ({p})" in message]
        assert message.startswith(f"mounts[0].source: {source} {relation} isol8's own "), \
            message
        assert named and "Mount it read-only" in message, message
    try:  # read-only: fine (as root, a checkout under a 0700 home is unreachable anyway)
        Isol8(mounts=[{"source": str(path), "target": "/mnt/x"}])
    except InvalidRequest as exc:
        assert "isol8's own" not in str(exc) and "is not reachable" in str(exc), exc


def test_a_read_write_mount_of_the_callers_home_with_the_cache_is_refused(host_dir,
                                                                          monkeypatch):
    """The attack of issue 9: the caller's home, mounted read-write, holds isol8's cache."""
    home = host_dir / "home"
    (home / ".cache" / "isol8").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    cache = home / ".cache" / "isol8"
    for source in (home, home / ".cache", cache):
        with pytest.raises(InvalidRequest, match=f"isol8's own cache \\({cache}\\)"):
            Isol8(mounts=_rw(source))
    (host_dir / "elsewhere").mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(host_dir / "elsewhere"))
    with pytest.raises(InvalidRequest, match="isol8's own cache"):
        Isol8(mounts=_rw(host_dir / "elsewhere"))
    (home / "work").mkdir()
    Isol8(mounts=_rw(home / "work"))  # not a parent of the cache any more
    with Isol8(mounts=[{"source": str(home), "target": "/mnt/home"}]) as eng:  # read-only
        r = run_sh(eng, "ls -a /mnt/home/.cache; touch /mnt/home/.cache/isol8/x")
    assert "isol8" in r.stdout and "Read-only file system" in r.stderr, (r.stdout, r.stderr)


STEERING = {  # what the next isol8 trusts, each moved into host_dir by its variable
    "configuration": ("HOME", "home", "home/.isol8"),
    "configuration file": ("ISOL8_CONFIG", "etc/config.toml", "etc/config.toml"),
    "image store": ("ISOL8_IMAGES", "img/images", "img/images"),
    "package cache": ("ISOL8_PACKAGE_CACHE", "pkg/packages", "pkg/packages"),
}


@pytest.mark.parametrize("what", STEERING)
def test_read_write_mounts_of_what_steers_the_next_sandboxes_are_refused(what, host_dir,
                                                                        monkeypatch):
    """A sandbox that could write ~/.isol8/config.toml would set network "host" for every
    later run; one that could write the image store or the package cache would choose what
    later sandboxes run. Refused whether or not the path exists yet (the sandbox could
    create it through its parent)."""
    variable, value, path = STEERING[what]
    for xdg in ("XDG_CACHE_HOME", "XDG_DATA_HOME"):  # apart, so each parent holds one file
        monkeypatch.setenv(xdg, str(host_dir / "xdg" / xdg))
    monkeypatch.setenv(variable, str(host_dir / value))
    own = Path(os.path.realpath(host_dir / path))
    assert policy.own_files()[what] == str(own)
    own.parent.mkdir(parents=True, exist_ok=True)
    with pytest.raises(InvalidRequest, match=f"contains isol8's own {what} \\({own}\\)"):
        Isol8(mounts=_rw(own.parent))  # before it exists
    if what == "configuration file":
        own.write_text("")
    else:
        own.mkdir()
    for source, relation in ((own.parent, "contains"), (own, "is")):
        with pytest.raises(InvalidRequest, match=f"{relation} isol8's own {what} \\({own}\\)"):
            Isol8(mounts=_rw(source))
    with Isol8(mounts=[{"source": str(own.parent), "target": "/mnt/x"}]) as eng:  # read-only
        r = run_sh(eng, f"ls -a /mnt/x; echo '[network]' > /mnt/x/{own.name}/config.toml")
    assert own.name in r.stdout.split() and ("Read-only file system" in r.stderr
                                             or "Not a directory" in r.stderr), r


def test_an_engines_own_package_cache_is_refused_as_a_read_write_mount(host_dir):
    cache = host_dir / "shared" / "cache"
    cache.mkdir(parents=True)
    with pytest.raises(InvalidRequest, match=f"contains isol8's own package cache \\({cache}\\)"):
        Isol8(package_cache=str(cache), mounts=_rw(host_dir / "shared"))
    Isol8(package_cache=False, mounts=_rw(host_dir / "shared"))  # no cache: an ordinary dir


def test_a_symlink_to_isol8s_files_is_resolved_before_the_check(host_dir):
    package = policy.own_files()["package"]
    (host_dir / "link").symlink_to(os.path.dirname(package))
    with pytest.raises(InvalidRequest, match=f"contains isol8's own package \\({package}\\)"):
        Isol8(mounts=_rw(host_dir / "link"))


@pytest.mark.root_only  # only root leases host uids
def test_a_read_write_mount_of_the_uid_leases_is_refused():
    leases = policy.own_files()["uid leases"]
    os.makedirs(leases, exist_ok=True)
    with pytest.raises(InvalidRequest, match=f"is isol8's own uid leases \\({leases}\\)"):
        Isol8(mounts=_rw(leases))
