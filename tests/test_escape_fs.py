"""Filesystem escape battery: nothing of the host is visible or writable but what the plan binds.

Every probe runs on the real kernel and asserts concrete evidence (an errno, a listing, a host
file that stays absent), and most carry a positive control in the same sandbox proving that
the probe itself would have succeeded against a path it is allowed to use.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import pytest

from isol8 import Isol8

from conftest import is_root, run_py, run_sh

# What the host rootfs plan may show at the top of the new root and in /etc (hand-written on
# purpose: a test derived from isol8.images would accept whatever the plan grows to bind).
ROOT_ENTRIES = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "sandbox", "tmp",
                "proc", "dev"}
ETC_ENTRIES = {"passwd", "group", "hostname", "nsswitch.conf", "hosts", "resolv.conf",
               "ld.so.cache", "ssl", "ca-certificates.conf", "alternatives", "localtime",
               "machine-id", "os-release", "gai.conf", "mime.types", "fonts", "services",
               "protocols"}
MOUNT_POINTS = {"/", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
                "/etc/ld.so.cache", "/etc/ssl/certs", "/etc/ssl/openssl.cnf",
                "/etc/ca-certificates.conf", "/etc/alternatives", "/etc/localtime",
                "/etc/gai.conf", "/etc/mime.types", "/etc/fonts", "/etc/services",
                "/etc/protocols", "/sandbox", "/tmp", "/proc", "/proc/sys", "/proc/sysrq-trigger", "/proc/irq",
                "/proc/bus", "/dev/null", "/dev/zero", "/dev/full", "/dev/random",
                "/dev/urandom", "/dev/tty", "/dev/pts", "/dev/shm"}


def _errors(result) -> dict:
    """The probe prints one JSON object on its last stdout line."""
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


# --- host secrets ------------------------------------------------------------------------

@pytest.fixture
def host_secrets(tmp_path):
    """Secret files planted on the host where an over-broad bind would expose them.

    As root also in /etc, /root, /home/<x>/.ssh and /run; in both modes in /var/tmp, the host
    /tmp and /dev/shm (the sandbox's are its own tmpfs), pytest's tmp dir and $HOME.
    """
    token = secrets.token_hex(16)
    name = f"isol8-test-secret-{token[:10]}"
    content = f"ISOL8-HOST-SECRET-{token}"
    files = [Path("/var/tmp") / name, Path("/tmp") / name, Path("/dev/shm") / name,
             tmp_path / name, Path.home() / name]
    dirs: list[Path] = []
    if is_root():
        files += [Path("/etc") / name, Path("/root") / name, Path("/run") / name,
                  Path("/home") / name / ".ssh" / "id_rsa"]
        dirs.append(Path("/home") / name)
    created = []
    try:
        for path in dict.fromkeys(files):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
            except OSError:
                continue
            created.append(path)
        assert len(created) >= 4, "could not plant host secrets"
        for path in created:  # positive control: the host itself can read every one
            assert path.read_text() == content
        yield name, content, created
    finally:
        for path in created:
            path.unlink(missing_ok=True)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def test_host_secret_files_are_invisible(engine, host_secrets):
    name, content, paths = host_secrets
    probe = f"""
import json, os
paths = {[str(p) for p in paths]!r}
out = {{}}
for p in paths:
    try:
        out[p] = open(p).read()
    except OSError as e:
        out[p] = e.errno
    parent = os.path.dirname(p)
    if os.path.isdir(parent) and {name!r} in os.listdir(parent):
        out[p + ' (listed)'] = True
# a symlink to the host path resolves inside the sandbox's root, not the host's
for i, p in enumerate(paths):
    os.symlink(p, f'/sandbox/link{{i}}')
    try:
        out['link ' + p] = open(f'/sandbox/link{{i}}').read()
    except OSError as e:
        out['link ' + p] = e.errno
print(json.dumps(out))
"""
    r = run_py(engine, probe)
    assert content not in r.stdout + r.stderr
    got = _errors(r)
    assert not any(k.endswith("(listed)") for k in got), got
    assert all(v == 2 for v in got.values()), got  # ENOENT for every path, direct or linked


def test_no_host_secret_anywhere_in_the_sandbox(engine, host_secrets):
    """grep every file outside /usr and /proc for the planted content (and the name)."""
    name, content, _ = host_secrets
    r = run_sh(engine, f"""
cd /
echo "needle-{content}" > /sandbox/control  # positive control: grep finds a planted copy
targets=$(find / -mindepth 1 -maxdepth 1 ! -type l ! -name usr ! -name proc)
grep -rlsF -- "{content}" $targets
find $targets -name '{name}*' 2>/dev/null
exit 0
""")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.split() == ["/sandbox/control"], r.stdout


def test_host_shadow_and_home_dirs_are_not_visible(engine):
    assert os.path.exists("/etc/shadow") and os.path.isdir("/root")  # they exist on the host
    r = run_py(engine, """
import json, os
out = {}
for p in ('/etc/shadow', '/etc/gshadow', '/etc/sudoers', '/etc/ssh', '/root', '/home',
          '/var', '/run', '/var/run', '/mnt', '/media', '/srv', '/opt', '/boot', '/work',
          '/tmp/.X11-unix', '/sys'):
    out[p] = os.path.lexists(p)
out['root entries'] = sorted(os.listdir('/'))
out['etc entries'] = sorted(os.listdir('/etc'))
print(json.dumps(out))
""")
    got = _errors(r)
    assert set(got.pop("root entries")) <= ROOT_ENTRIES
    etc = set(got.pop("etc entries"))
    assert etc <= ETC_ENTRIES and {"passwd", "group", "hosts"} <= etc
    assert not any(got.values()), {k for k, v in got.items() if v}


def test_passwd_is_synthesized_not_the_hosts(engine):
    host_users = {line.split(":")[0] for line in open("/etc/passwd")}
    r = run_sh(engine, "cut -d: -f1 /etc/passwd")
    inside = set(r.stdout.split())
    assert inside == {"root", "sandbox", "nobody"}
    assert host_users - inside  # the host has other accounts, none of which shows


def test_mount_table_holds_only_the_plan(engine):
    r = run_sh(engine, "cat /proc/self/mountinfo")
    assert r.exit_code == 0
    points = [line.split()[4] for line in r.stdout.splitlines()]
    assert {"/", "/usr", "/sandbox", "/tmp", "/proc"} <= set(points)
    # /usr's own submounts (MS_REC binds) are the only mounts allowed outside the list
    extra = [p for p in points if p not in MOUNT_POINTS and not p.startswith("/usr/")]
    assert extra == []
    # and the host's own mount table holds many more mounts than the sandbox shows
    host_points = {line.split()[4] for line in open("/proc/self/mountinfo")}
    assert host_points - set(points)


# --- writes outside the writable roots ---------------------------------------------------

def test_writes_to_root_usr_etc_dev_fail_read_only(engine):
    token = secrets.token_hex(6)
    targets = [f"/isol8-{token}", f"/usr/isol8-{token}", f"/usr/bin/isol8-{token}",
               f"/etc/isol8-{token}", f"/dev/isol8-{token}", f"/etc/ssl/certs/isol8-{token}",
               f"/lib/isol8-{token}"]
    r = run_py(engine, f"""
import errno, json, os
out = {{}}
for p in {targets!r}:
    try:
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        out[p] = 'created'
    except OSError as e:
        out[p] = errno.errorcode[e.errno]
# files the sandbox user owns (the synthesized /etc): only the read-only mount stops it
for p in ('/etc/passwd', '/etc/hosts', '/etc/hostname'):
    try:
        open(p, 'a').close()
        out[p] = 'opened'
    except OSError as e:
        out[p] = errno.errorcode[e.errno]
for p in ('/etc', '/usr/lib', '/'):
    try:
        os.mkdir(p + '/isol8-dir-{token}')
        out['mkdir ' + p] = 'created'
    except OSError as e:
        out['mkdir ' + p] = errno.errorcode[e.errno]
try:
    os.rename('/etc/passwd', '/etc/passwd.old')
    out['rename'] = 'renamed'
except OSError as e:
    out['rename'] = errno.errorcode[e.errno]
# positive control: the same calls work in /sandbox
os.close(os.open('/sandbox/ok', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
os.mkdir('/sandbox/okdir')
os.rename('/sandbox/ok', '/sandbox/okdir/ok')
out['control'] = os.path.exists('/sandbox/okdir/ok')
print(json.dumps(out))
""")
    got = _errors(r)
    assert got.pop("control") is True
    assert len(got) == len(targets) + 7 and got == {k: "EROFS" for k in got}, got
    for path in targets:  # and nothing reached the host
        assert not os.path.lexists(path)


def test_sandbox_is_writable_and_executable(engine):
    r = run_sh(engine, "cp /usr/bin/true /sandbox/t && /sandbox/t && echo exec-ok; "
                       "printf '#!/bin/sh\\necho script-ok\\n' > /sandbox/s.sh && "
                       "chmod +x /sandbox/s.sh && /sandbox/s.sh")
    assert (r.exit_code, r.stdout) == (0, "exec-ok\nscript-ok")


@pytest.mark.parametrize("directory", ["/tmp", "/dev/shm"])
def test_tmp_and_shm_are_writable_but_noexec(engine, directory):
    r = run_py(engine, f"""
import errno, json, mmap, os, shutil, subprocess
out = {{}}
for d in ('/sandbox', {directory!r}):
    shutil.copy('/usr/bin/true', d + '/t')
    os.chmod(d + '/t', 0o755)
    try:
        out[d + ' exec'] = subprocess.run([d + '/t']).returncode
    except OSError as e:
        out[d + ' exec'] = errno.errorcode[e.errno]
    # the dynamic loader trick: ld.so maps the program itself, with PROT_EXEC
    ld = [p for p in ('/lib64/ld-linux-x86-64.so.2', '/lib/ld-linux-aarch64.so.1')
          if os.path.exists(p)][0]
    out[d + ' ld.so'] = subprocess.run([ld, d + '/t'], capture_output=True).returncode
    with open(d + '/t', 'rb') as f:
        try:
            mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC).close()
            out[d + ' mmap'] = 'mapped'
        except OSError as e:
            out[d + ' mmap'] = errno.errorcode[e.errno]
print(json.dumps(out))
""")
    got = _errors(r)
    # positive control: the same binary runs, loads and maps from /sandbox
    assert (got["/sandbox exec"], got["/sandbox ld.so"], got["/sandbox mmap"]) == (0, 0, "mapped")
    assert got[f"{directory} exec"] == "EACCES"
    assert got[f"{directory} ld.so"] != 0
    assert got[f"{directory} mmap"] == "EPERM"


# --- path tricks ---------------------------------------------------------------------------

def test_dotdot_and_absolute_symlinks_stay_inside(engine):
    r = run_py(engine, """
import json, os
out = {}
root = os.stat('/')
def same_as_root(fd):
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (root.st_dev, root.st_ino)
# climbing with openat('..') from the root and from deep inside never leaves it
fd = os.open('/sandbox', os.O_PATH | os.O_DIRECTORY)
for _ in range(64):
    nxt = os.open('..', os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
    os.close(fd)
    fd = nxt
out['climb'] = same_as_root(fd)
os.close(fd)
out['dotdot listing'] = sorted(os.listdir('/sandbox/../../../../..')) == sorted(os.listdir('/'))
links = {
    'abs': '/etc/../../../../../../root',
    'abs-shadow': '/etc/../../../../etc/shadow',
    'rel': '../../../../../../../../etc/shadow',
    'proc-root': '/proc/self/root/../../../root',
    'proc-cwd': '/proc/self/cwd/../../../../home',
    'proc1-root': '/proc/1/root/etc/passwd',
    'proc1-cwd': '/proc/1/cwd',
}
for name, target in links.items():
    os.symlink(target, '/sandbox/' + name)
    try:
        p = '/sandbox/' + name
        out[name] = os.listdir(p) if os.path.isdir(p) else open(p).read()
    except OSError as e:
        out[name] = e.errno
# positive control: a symlink through '..' to a path that exists inside does resolve
os.symlink('/etc/../../../etc/passwd', '/sandbox/ok')
out['control'] = 'sandbox:x:1000' in open('/sandbox/ok').read()
print(json.dumps(out))
""")
    got = _errors(r)
    assert got.pop("climb") is True and got.pop("dotdot listing") is True
    assert got.pop("control") is True
    # ENOENT, except /proc/1/{root,cwd}: the init is not dumpable, so EACCES
    assert got == {"abs": 2, "abs-shadow": 2, "rel": 2, "proc-root": 2, "proc-cwd": 2,
                   "proc1-root": 13, "proc1-cwd": 13}, got


def test_proc_exe_cannot_be_opened_for_writing(engine):
    r = run_py(engine, """
import errno, json, os
out = {}
for p, flags in (('/proc/self/exe', os.O_WRONLY), ('/proc/self/exe', os.O_RDWR),
                 ('/proc/1/exe', os.O_WRONLY), ('/proc/1/exe', os.O_RDONLY),
                 ('/proc/1/mem', os.O_RDWR), ('/proc/1/environ', os.O_RDONLY)):
    try:
        os.close(os.open(p, flags))
        out[f'{p} {flags}'] = 'opened'
    except OSError as e:
        out[f'{p} {flags}'] = errno.errorcode[e.errno]
# positive control: the opens themselves work where allowed
os.close(os.open('/proc/self/exe', os.O_RDONLY))
os.close(os.open('/proc/self/comm', os.O_WRONLY))
out['control'] = True
print(json.dumps(out))
""")
    got = _errors(r)
    assert got.pop("control") is True
    assert all(v in ("EACCES", "EROFS", "ETXTBSY", "EPERM") for v in got.values()), got
    # the init's binary is the host's helper: not even readable through /proc/1/exe
    assert got[f"/proc/1/exe {os.O_RDONLY}"] == "EACCES"


def test_proc_sys_and_sysrq_trigger_are_read_only(engine):
    """Every writable-looking /proc/sys file refuses O_WRONLY|O_TRUNC with EROFS (O_TRUNC
    makes the kernel check the mount before the file's permissions, so EROFS proves the
    read-only mount, not just a missing write bit). Nothing is ever written."""
    r = run_py(engine, """
import errno, json, os, stat
out = {'tried': 0, 'opened': [], 'errnos': {}}
for dirpath, dirnames, filenames in os.walk('/proc/sys'):
    for f in filenames:
        p = os.path.join(dirpath, f)
        try:
            if not os.stat(p).st_mode & 0o222:
                continue
        except OSError:
            continue
        out['tried'] += 1
        try:
            os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
            out['opened'].append(p)
        except OSError as e:
            name = errno.errorcode[e.errno]
            out['errnos'][name] = out['errnos'].get(name, 0) + 1
for p in ('/proc/sysrq-trigger', '/proc/sys/kernel/hostname', '/proc/sys/vm/drop_caches',
          '/proc/sys/user/max_user_namespaces', '/proc/sys/kernel/core_pattern'):
    try:
        os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
        out[p] = 'opened'
    except OSError as e:
        out[p] = errno.errorcode[e.errno]
# positive control: a procfs file the process may write is opened for writing
os.close(os.open('/proc/self/comm', os.O_WRONLY))
out['control'] = True
print(json.dumps(out))
""")
    got = _errors(r)
    assert got["control"] is True
    assert got["tried"] > 50 and got["opened"] == [], got
    assert set(got["errnos"]) == {"EROFS"}, got["errnos"]
    for p in ("/proc/sys/kernel/hostname", "/proc/sys/vm/drop_caches",
              "/proc/sys/user/max_user_namespaces", "/proc/sys/kernel/core_pattern"):
        assert got[p] == "EROFS"
    expected = "EROFS" if os.path.exists("/proc/sysrq-trigger") else "ENOENT"
    assert got["/proc/sysrq-trigger"] == expected


def test_sys_is_absent_and_sysfs_cannot_be_mounted(engine):
    r = run_py(engine, """
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
out = {'sys': os.path.lexists('/sys') and os.listdir('/sys')}
os.mkdir('/sandbox/sys')
rc = libc.mount(b'sysfs', b'/sandbox/sys', b'sysfs', 0, None)
out['mount'] = errno.errorcode[ctypes.get_errno()] if rc else 'mounted'
out['listing'] = os.listdir('/sandbox/sys')
print(json.dumps(out))
""")
    assert _errors(r) == {"sys": False, "mount": "EPERM", "listing": []}


def test_device_nodes_cannot_be_created(engine):
    r = run_py(engine, """
import errno, json, os, stat
out = {}
for p, mode, dev in (('/sandbox/null', stat.S_IFCHR, os.makedev(1, 3)),
                     ('/sandbox/mem', stat.S_IFCHR, os.makedev(1, 1)),
                     ('/sandbox/sda', stat.S_IFBLK, os.makedev(8, 0)),
                     ('/tmp/kmsg', stat.S_IFCHR, os.makedev(1, 11)),
                     ('/dev/shm/null', stat.S_IFCHR, os.makedev(1, 3)),
                     ('/etc/fifo', stat.S_IFIFO, 0),
                     ('/dev/fifo', stat.S_IFIFO, 0)):
    try:
        os.mknod(p, mode | 0o666, dev)
        out[p] = 'created'
    except OSError as e:
        out[p] = errno.errorcode[e.errno]
# positive control: mknod itself works for a fifo in a writable directory
os.mknod('/sandbox/fifo', stat.S_IFIFO | 0o600)
out['control'] = stat.S_ISFIFO(os.stat('/sandbox/fifo').st_mode)
print(json.dumps(out))
""")
    got = _errors(r)
    assert got.pop("control") is True
    assert got == {"/sandbox/null": "EPERM", "/sandbox/mem": "EPERM", "/sandbox/sda": "EPERM",
                   "/tmp/kmsg": "EPERM", "/dev/shm/null": "EPERM", "/etc/fifo": "EROFS",
                   "/dev/fifo": "EROFS"}


@pytest.mark.parametrize("seccomp", ["strict", "unconfined"])
def test_remount_and_umount_fail(seccomp):
    """Denied by the seccomp filter and, without it, by the missing capabilities."""
    probe = """
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096
MNT_DETACH = 2
def call(fn, *args):
    return errno.errorcode[ctypes.get_errno()] if fn(*args) else 'ok'
out = {
    'remount /': call(libc.mount, None, b'/', None, MS_REMOUNT, None),
    'remount bind /': call(libc.mount, None, b'/', None, MS_REMOUNT | MS_BIND, None),
    'remount /usr': call(libc.mount, None, b'/usr', None, MS_REMOUNT | MS_BIND, None),
    'remount /proc/sys': call(libc.mount, None, b'/proc/sys', None, MS_REMOUNT | MS_BIND, None),
    'umount /proc': call(libc.umount2, b'/proc', 0),
    'umount -l /proc': call(libc.umount2, b'/proc', MNT_DETACH),
    'umount /usr': call(libc.umount2, b'/usr', MNT_DETACH),
    'umount /proc/sys': call(libc.umount2, b'/proc/sys', MNT_DETACH),
}
import subprocess
out['mount(8)'] = subprocess.run(['mount', '-o', 'remount,rw', '/'], capture_output=True).returncode
out['umount(8)'] = subprocess.run(['umount', '/usr'], capture_output=True).returncode
# still read-only and still mounted afterwards
for p in ('/x', '/usr/x', '/proc/sys/kernel/hostname'):
    try:
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
        out['write ' + p] = 'ok'
    except OSError as e:
        out['write ' + p] = errno.errorcode[e.errno]
out['usr mounted'] = os.path.exists('/usr/bin/bash')
print(json.dumps(out))
"""
    with Isol8(seccomp=seccomp) as eng:
        if seccomp == "unconfined":  # the filter is really off: a denied syscall now works
            assert "Seccomp:\t0" in eng.execute(cmd="cat /proc/self/status").stdout
        got = _errors(run_py(eng, probe))
    assert got.pop("usr mounted") is True
    assert got.pop("mount(8)") != 0 and got.pop("umount(8)") != 0
    assert {k: v for k, v in got.items() if k.startswith("write")} == {
        "write /x": "EROFS", "write /usr/x": "EROFS", "write /proc/sys/kernel/hostname": "EROFS"}
    assert {v for k, v in got.items() if not k.startswith("write")} == {"EPERM"}, got


def test_no_run_and_no_host_sockets(engine):
    r = run_sh(engine, """
ls -d /run /var/run /var 2>&1
# positive control: find sees a socket when there is one
python3 -c "import socket; socket.socket(socket.AF_UNIX).bind('/sandbox/own.sock')"
find / -path /proc -prune -o -type s -print 2>/dev/null
exit 0
""")
    assert r.stdout.splitlines() == [
        "ls: cannot access '/run': No such file or directory",
        "ls: cannot access '/var/run': No such file or directory",
        "ls: cannot access '/var': No such file or directory",
        "/sandbox/own.sock"], r.stdout + r.stderr


# --- things that must keep working ------------------------------------------------------------

def test_process_substitution_and_dev_fd_work(engine):
    r = engine.execute(cmd="cat <(echo from-subst); echo piped | cat /dev/stdin; "
                           "cat /dev/stdin; ls /dev/fd/ | head -3; "
                           "diff <(echo a) <(echo a) && echo same; cat /dev/fd/0 </dev/null; "
                           "exec 5< <(echo via-fd5); cat /dev/fd/5",
                       stdin="from-stdin\n")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "from-subst\npiped\nfrom-stdin\n0\n1\n2\nsame\nvia-fd5"


def test_dev_stdout_and_stderr_can_be_opened(engine):
    # Root mode: the pipes are given to the sandbox's host uid; owned by unmapped host root
    # (0600) they could not be reopened through /proc/self/fd.
    r = engine.execute(cmd="echo out >/dev/stdout; echo err >/dev/stderr; "
                           "echo fd1 >/proc/self/fd/1; python3 -c \"open('/dev/stdout', 'w')"
                           ".write('py')\"")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "out\nfd1\npy", "err")


# --- size and inode caps ----------------------------------------------------------------------

def _free(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_sandbox_and_tmp_size_caps_hold():
    marker = f"isol8-fill-{secrets.token_hex(6)}"
    host_dirs = [d for d in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(d)]
    before = {d: _free(d) for d in host_dirs}
    with Isol8(sandbox_size="8m", tmp_size="4m") as eng:
        r = eng.execute(cmd=f"""
dd if=/dev/zero of=/sandbox/{marker} bs=1M count=64 2>&1 | grep -o 'No space left on device'
stat -c %s /sandbox/{marker}
dd if=/dev/zero of=/tmp/{marker} bs=1M count=64 2>&1 | grep -o 'No space left on device'
stat -c %s /tmp/{marker}
dd if=/dev/zero of=/dev/shm/{marker} bs=1M count=128 2>&1 | grep -o 'No space left on device'
stat -c %s /dev/shm/{marker}
""")
        assert r.exit_code == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == lines[2] == lines[4] == "No space left on device"
        assert int(lines[1]) == 8 << 20 and int(lines[3]) == 4 << 20
        assert int(lines[5]) <= 64 << 20
        # the engine is fine afterwards, and the next sandbox starts empty
        again = eng.execute(cmd="ls -A /sandbox /tmp; df -B1 --output=used /sandbox | tail -1")
        assert again.exit_code == 0 and marker not in again.stdout
    for d in host_dirs:  # the host is unaffected: no file, no space taken
        assert not os.path.exists(os.path.join(d, marker))
        assert _free(d) > before[d] - (32 << 20), d  # loose: other writers share the host


def test_inode_cap_hits_enospc_before_the_size():
    with Isol8(sandbox_size="4m", tmp_size="4m") as eng:
        r = eng.execute("""
import errno, os
n = 0
try:
    while n < 100000:
        open(f'/sandbox/f{n}', 'w').close()
        n += 1
    print('no limit')
except OSError as e:
    print(errno.errorcode[e.errno], n)
st = os.statvfs('/sandbox')
print(st.f_bfree * st.f_frsize, st.f_ffree)
""")
    assert r.exit_code == 0, r.stderr
    err, created = r.stdout.splitlines()[0].split()
    free_bytes, free_inodes = map(int, r.stdout.splitlines()[1].split())
    assert err == "ENOSPC"
    assert 900 <= int(created) <= 1100  # the cap is 1024 inodes for a 4 MiB tmpfs
    assert free_inodes == 0 and free_bytes > 3 << 20  # space left over: inodes ran out
