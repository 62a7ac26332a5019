"""Privileges inside the sandbox, seen from inside: no capabilities, no_new_privs, seccomp,
uid/gid 1000 mapped to one unprivileged host id, no nested namespaces, setuid bits that do
nothing, and a PID 1 that user code can neither read nor trace."""

from __future__ import annotations

import json
import os

import pytest

from conftest import run_py, run_sh
from isol8 import Isol8, identity

CAP_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


@pytest.fixture(scope="module")
def unconfined() -> Isol8:
    with Isol8(seccomp="unconfined") as eng:
        yield eng


def status_of(engine: Isol8, pid: str) -> dict[str, str]:
    result = run_sh(engine, f"cat /proc/{pid}/status")
    assert result.exit_code == 0, result.stderr
    return {k: v.strip() for k, v in (line.split(":", 1) for line in result.stdout.splitlines())}


@pytest.mark.parametrize("pid", ["self", "1"], ids=["user-process", "init"])
def test_no_privileges_left(engine, pid):
    status = status_of(engine, pid)
    for cap_set in CAP_SETS:
        assert int(status[cap_set], 16) == 0, (cap_set, status[cap_set])
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # SECCOMP_MODE_FILTER
    if "Seccomp_filters" in status:  # Linux 5.9+
        assert status["Seccomp_filters"] == "2"  # the base and the args filter
    assert status["Uid"].split() == ["1000"] * 4
    assert status["Gid"].split() == ["1000"] * 4


def test_sandbox_user_identity(engine):
    result = run_sh(engine, "id -u; id -g; id -un; id -gn; id -G; id")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:5] == ["1000", "1000", "sandbox", "sandbox", "1000"]
    assert lines[5] == "uid=1000(sandbox) gid=1000(sandbox) groups=1000(sandbox)"


@pytest.mark.parametrize("flags", ["-U", "-r", "-n", "-m", "-p -f", "-i", "-u", "-C"])
def test_nested_namespaces_fail(engine, flags):
    result = run_sh(engine, f"unshare {flags} true")
    assert result.exit_code != 0
    assert "unshare failed: Operation not permitted" in result.stderr  # the filter's EPERM


def test_nested_user_namespace_fails_without_the_filter(unconfined):
    """max_user_namespaces=0 in the sandbox's own user namespace blocks it even unfiltered."""
    result = run_sh(unconfined, "unshare -U true")
    assert result.exit_code != 0
    assert "unshare failed: No space left on device" in result.stderr
    result = run_sh(unconfined, "unshare -n true")  # no CAP_SYS_ADMIN either
    assert result.exit_code != 0
    assert "unshare failed: Operation not permitted" in result.stderr


def test_every_mount_is_nosuid(engine):
    result = run_sh(engine, "cat /proc/self/mountinfo")
    assert result.exit_code == 0, result.stderr
    mounts = {line.split()[4]: line.split()[5].split(",") for line in result.stdout.splitlines()}
    assert {"/", "/usr", "/sandbox", "/tmp"} <= set(mounts)
    for point, options in mounts.items():
        assert "nosuid" in options, (point, options)


# Runs each setuid/setgid binary of the host's /usr with its stdout and stderr on a pipe that
# is already full, so the binary blocks in its first write, fully exec'd, while its
# credentials are read from /proc. Binaries that exit without writing are not observed.
SETUID_PROBE = r"""
import fcntl, json, os, stat, time
found = []
for top in ("/usr/bin", "/usr/sbin", "/usr/lib", "/usr/libexec"):
    for root, _, files in os.walk(top):
        for f in files:
            p = os.path.join(root, f)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_ISUID and os.access(p, os.X_OK):
                found.append(p)

def observe(path):
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(w, True)
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(w, 1)
            os.dup2(w, 2)
            os.execv(path, [path, "--help"])
        finally:
            os._exit(127)
    os.close(w)
    seen = None
    for _ in range(500):
        try:
            st = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status"))
        except OSError:
            break
        state = st["State"].split()[0]
        if state == "Z":
            break  # exited without writing
        if st["Name"].strip() == os.path.basename(path)[:15] and state == "S":
            seen = {k: st[k].split() for k in ("Uid", "Gid", "CapEff", "CapPrm")}
            break
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return seen

print(json.dumps({p: observe(p) for p in found}))
"""


def test_setuid_binary_gains_nothing(engine):
    result = run_py(engine, SETUID_PROBE, timeout_ms=60_000)
    assert result.exit_code == 0, result.stderr
    seen = {path: creds for path, creds in json.loads(result.stdout).items() if creds}
    assert seen, "no setuid binary of the host's /usr could be observed running"
    for path, creds in seen.items():
        assert creds["Uid"] == ["1000"] * 4, (path, creds)  # real, effective, saved, fs
        assert creds["Gid"] == ["1000"] * 4, (path, creds)
        assert int(creds["CapEff"][0], 16) == 0 and int(creds["CapPrm"][0], 16) == 0, path


INIT_PROBE = r"""
import ctypes, errno, json, os
out = {}
def attempt(key, fn):
    try:
        fn()
        out[key] = "OK"
    except OSError as e:
        out[key] = errno.errorcode[e.errno]
def read(path):
    with open(path, "rb") as f:
        f.read(16)
for name in ("mem", "environ", "auxv", "maps"):
    attempt(name, lambda: read(f"/proc/1/{name}"))
attempt("fd", lambda: os.listdir("/proc/1/fd"))
attempt("exe", lambda: os.readlink("/proc/1/exe"))
attempt("root", lambda: os.listdir("/proc/1/root/"))
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
for request, name in ((16, "ptrace_attach"), (0x4206, "ptrace_seize")):
    rc = libc.ptrace(ctypes.c_long(request), ctypes.c_long(1), None, None)
    out[name] = "OK" if rc == 0 else errno.errorcode[ctypes.get_errno()]
print(json.dumps(out))
"""


@pytest.mark.parametrize("filtered", [True, False], ids=["seccomp", "unconfined"])
def test_init_is_not_dumpable(engine, unconfined, filtered):
    """Not dumpable on its own: the same holds without the seccomp filter."""
    result = run_py(engine if filtered else unconfined, INIT_PROBE)
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    for key in ("mem", "environ", "auxv", "maps", "fd", "exe", "root"):
        assert out[key] in ("EACCES", "EPERM"), (key, out[key])
    assert out["ptrace_attach"] == "EPERM" and out["ptrace_seize"] == "EPERM", out


def id_maps(engine: Isol8) -> list[list[str]]:
    result = run_sh(engine, "cat /proc/self/uid_map /proc/self/gid_map")
    assert result.exit_code == 0, result.stderr
    return [line.split() for line in result.stdout.splitlines()]


@pytest.mark.root_only
def test_root_supervisor_maps_a_dedicated_host_id(engine):
    uid_map, gid_map = id_maps(engine)
    start, count = identity.DEFAULT_UID_RANGE
    assert uid_map[0] == "1000" and uid_map[2] == "1", uid_map
    host_uid = int(uid_map[1])
    assert host_uid != 0 and start <= host_uid < start + count, host_uid
    assert gid_map == uid_map  # the gid leased with the uid


@pytest.mark.rootless_only
def test_rootless_supervisor_maps_its_own_ids(engine):
    uid_map, gid_map = id_maps(engine)
    assert uid_map == ["1000", str(os.geteuid()), "1"]
    assert gid_map == ["1000", str(os.getegid()), "1"]
