"""The seccomp policy on the real kernel, through the multi-call probe (tests/probe/probe.c).

Each denied syscall is called with arguments that make an EXECUTED call fail with a
distinctive errno (EFAULT, EBADF, EINVAL, ...). Inside the sandbox it must fail with exactly
the policy's errno; in the same sandbox without the filter (``seccomp="unconfined"``) it must
fail differently, which proves the filter, not the kernel's own checks, produced the errno.

A few syscalls check a capability before reading any argument, so unfiltered they also fail
with EPERM (CAPABILITY_FIRST). For those, and for every other non-ENOSYS denial, the probe's
"traced" mode stacks a SECCOMP_RET_TRACE filter on the named syscalls: with no tracer the
kernel fails them with ENOSYS without running them, unless the policy's ERRNO (which takes
precedence over TRACE) denies them first.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import ATTEMPT_PY, host_tempdir, run_probe, run_py
from isol8 import Isol8, seccomp
from isol8._native import syscall_name, syscall_number

NAME = errno.errorcode
SIGSYS_EXIT = 128 + signal.SIGSYS

# Every unconditional denial, by the errno the policy returns.
DENIED = {name: NAME[code] for code, names in seccomp.DENY.items() for name in names}
# Denials that depend on arguments (pseudo-names of the probe).
ARG_DENIED = {
    "clone_newuser": "EPERM", "clone_newns": "EPERM", "clone_newnet": "EPERM",
    "clone_newpid": "EPERM", "clone_newuts": "EPERM", "clone_newipc": "EPERM",
    "clone_newcgroup": "EPERM", "clone_newtime": "EPERM",
    "unshare_user": "EPERM",
    "socket_vsock": "EAFNOSUPPORT", "socket_alg": "EAFNOSUPPORT",
    "socket_packet": "EAFNOSUPPORT", "socket_key": "EAFNOSUPPORT",
    "socket_netlink_audit": "EAFNOSUPPORT", "socket_high_bits": "EAFNOSUPPORT",
    "socketpair_packet": "EAFNOSUPPORT", "socketpair_alg": "EAFNOSUPPORT",
    "ioctl_tiocsti": "EPERM", "ioctl_tiocsti_high": "EPERM", "ioctl_tioclinux": "EPERM",
    "personality_rie": "ENOSYS", "personality_addr_no_randomize": "ENOSYS",
    "chmod_setuid_high_bits": "EPERM",
    # RLIMIT_CORE stays 1: setting it succeeds without running (OK, where the kernel would
    # fault on the pointer), or EPERM when prlimit64 also asks for the old value.
    "setrlimit_core": "OK", "setrlimit_core_high_bits": "OK", "prlimit_core": "OK",
    "prlimit_core_old": "EPERM",
}
# Calls the policy must let through, and that succeed in the sandbox.
ALLOWED = ("getpid_ok", "clone_fork_ok", "socket_inet_ok", "socket_inet6_ok", "socket_unix_ok",
           "socket_netlink_route_ok", "ioctl_tiocgwinsz_ok", "personality_query",
           "personality_linux_ok", "open_nocreat_mode_ok", "openat_nocreat_mode_ok",
           "prlimit_core_read_ok")
# Calls the policy lets through to the kernel, which answers them: the same errno either way.
PASSED_THROUGH = {"setrlimit_fsize_efault": "EFAULT", "prlimit_fsize_efault": "EFAULT"}
# Unfiltered, the kernel refuses these with EPERM before it looks at any argument, so the
# plain run cannot tell the filter's EPERM from the kernel's; the traced run can. (Syscalls
# compiled out of the kernel answer ENOSYS instead, which the plain run does tell apart.)
CAPABILITY_FIRST = {
    "pivot_root": "may_mount(): CAP_SYS_ADMIN over the mount namespace",
    "acct": "CAP_SYS_PACCT", "swapoff": "CAP_SYS_ADMIN", "reboot": "CAP_SYS_BOOT",
    "sethostname": "CAP_SYS_ADMIN over the uts namespace",
    "setdomainname": "CAP_SYS_ADMIN over the uts namespace",
    "vhangup": "CAP_SYS_TTY_CONFIG",
    "syslog": "kernel.dmesg_restrict=1 (with 0, READ_ALL of a NULL buffer is EINVAL)",
    "kexec_load": "CAP_SYS_BOOT (ENOSYS without CONFIG_KEXEC)",
    "kexec_file_load": "CAP_SYS_BOOT (ENOSYS without CONFIG_KEXEC_FILE)",
    "init_module": "CAP_SYS_MODULE (ENOSYS without CONFIG_MODULES)",
    "finit_module": "CAP_SYS_MODULE (ENOSYS without CONFIG_MODULES)",
    "delete_module": "CAP_SYS_MODULE (ENOSYS without CONFIG_MODULES)",
    "lookup_dcookie": "CAP_SYS_ADMIN before Linux 6.10 removed it (ENOSYS since)",
    "open_by_handle_at": "CAP_DAC_READ_SEARCH on kernels before its check was relaxed",
}
# Syscalls newer than the libseccomp 2.5.4 upstream table: statmount, listmount, mseal.
NEW_SYSCALLS = (457, 458, 462)


def native_nr(name: str) -> int:
    """The syscall number libseccomp resolves on this architecture (negative: none)."""
    return syscall_number(name)


def libseccomp_knows(nr: int) -> bool:
    return syscall_name(nr) is not None


# S_ISUID and S_ISGID in every mode argument; a syscall the build's libseccomp does not know
# (fchmodat2 before 2.5.5) has no rule and gets the base filter's ENOSYS instead.
SETID_SYSCALLS = ("open_creat", "open_tmpfile", "openat_creat", "openat_tmpfile", "creat",
                  "mknod", "mknodat", "mkdir", "mkdirat", "chmod", "fchmod", "fchmodat",
                  "fchmodat2")
ARG_DENIED.update({
    f"{call}_{bit}": "EPERM" if native_nr(call.split("_")[0]) >= 0 else "ENOSYS"
    for call in SETID_SYSCALLS for bit in ("setuid", "setgid")})
EXPECTED = {**DENIED, **ARG_DENIED}


def probe_table(engine: Isol8, probe: bytes, mode: str, names) -> dict[str, str]:
    result = run_probe(engine, probe, mode, *names)
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    table = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert list(table) == list(names), result.stdout
    assert "UNKNOWN" not in table.values(), f"probe.c lacks a case: {table}"
    return table


@pytest.fixture(scope="module")
def unconfined() -> Isol8:
    with Isol8(seccomp="unconfined") as eng:
        yield eng


ALL_NAMES = (*EXPECTED, *ALLOWED, *PASSED_THROUGH, "prlimit_core_pid1")
# Denied names this architecture has no syscall for (vm86, vm86old on x86_64): the probe
# prints NOTARCH and the policy compiles no rule for them.
NOT_ON_ARCH = tuple(n for n in DENIED if native_nr(n) < 0)
ON_ARCH = tuple(n for n in EXPECTED if n not in NOT_ON_ARCH)
TRACED_NAMES = tuple(n for n in ON_ARCH if EXPECTED[n] != "ENOSYS")


@pytest.fixture(scope="module")
def filtered_run(engine, probe_binary) -> dict[str, str]:
    return probe_table(engine, probe_binary, "syscall", ALL_NAMES)


@pytest.fixture(scope="module")
def unfiltered_run(unconfined, probe_binary) -> dict[str, str]:
    return probe_table(unconfined, probe_binary, "syscall", ALL_NAMES)


@pytest.fixture(scope="module")
def traced_runs(engine, unconfined, probe_binary) -> tuple[dict[str, str], dict[str, str]]:
    return (probe_table(engine, probe_binary, "traced", TRACED_NAMES),
            probe_table(unconfined, probe_binary, "traced", TRACED_NAMES))


@pytest.mark.parametrize("name", ON_ARCH)
def test_denied_with_policy_errno(filtered_run, name):
    assert filtered_run[name] == EXPECTED[name]


@pytest.mark.parametrize("name", NOT_ON_ARCH)
def test_denied_name_absent_on_this_arch(filtered_run, name):
    assert filtered_run[name] == "NOTARCH"


@pytest.mark.parametrize("name", ON_ARCH)
def test_unfiltered_call_fails_differently(filtered_run, unfiltered_run, name):
    """The proof that the filter produced the errno: without it the kernel answers otherwise."""
    got = unfiltered_run[name]
    if got == filtered_run[name]:
        assert name in CAPABILITY_FIRST and got == "EPERM", \
            f"{name}: {got} with and without the filter; the probe cannot tell them apart"
    else:
        assert got != "OK" or name.startswith("personality_"), \
            f"{name} succeeded without the filter: its probe arguments are not harmless"


@pytest.mark.parametrize("name", TRACED_NAMES)
def test_policy_denies_before_trace(traced_runs, name):
    filtered, unfiltered = traced_runs
    assert filtered[name] == EXPECTED[name]
    assert unfiltered[name] == "ENOSYS"  # traced, never executed


@pytest.mark.parametrize("name", ALLOWED)
def test_control_calls_succeed(filtered_run, unfiltered_run, name):
    assert filtered_run[name] == "OK"
    assert unfiltered_run[name] == "OK"


@pytest.mark.parametrize("name", PASSED_THROUGH)
def test_other_rlimits_reach_the_kernel(filtered_run, unfiltered_run, name):
    assert filtered_run[name] == unfiltered_run[name] == PASSED_THROUGH[name]


def test_core_limit_of_pid_1_is_not_set_either(filtered_run, unfiltered_run):
    """prlimit64(1, RLIMIT_CORE, new, NULL) matches two rules (pid 1: EPERM; the core limit:
    success without running); libseccomp's rule order picks one, and either leaves the init
    alone: the kernel, running it, would fault on the pointer."""
    assert unfiltered_run["prlimit_core_pid1"] == "EFAULT"
    assert filtered_run["prlimit_core_pid1"] in ("OK", "EPERM")


def test_traced_mode_tells_allowed_calls(engine, probe_binary):
    """The traced run is only a proof if an allowed call under it does answer ENOSYS."""
    table = probe_table(engine, probe_binary, "traced", ("getpid_ok", "socket_inet_ok"))
    assert table == {"getpid_ok": "ENOSYS", "socket_inet_ok": "ENOSYS"}


@pytest.mark.parametrize("nr", NEW_SYSCALLS)
def test_syscall_unknown_to_libseccomp_gets_enosys(engine, unconfined, probe_binary, nr):
    unfiltered = probe_table(unconfined, probe_binary, "rawsyscall", [str(nr)])[str(nr)]
    if unfiltered == "ENOSYS":
        pytest.skip(f"this kernel has no syscall {nr}")
    filtered = probe_table(engine, probe_binary, "rawsyscall", [str(nr)])[str(nr)]
    if libseccomp_knows(nr):
        assert filtered == unfiltered  # a newer libseccomp: allowed like any known syscall
    else:
        assert filtered == "ENOSYS"


def test_x32_syscall_kills_the_process(engine, unconfined, probe_binary):
    killed = run_probe(engine, probe_binary, "x32")
    assert killed.exit_code == SIGSYS_EXIT, (killed.exit_code, killed.stdout, killed.stderr)
    assert "x32" not in killed.stdout
    survived = run_probe(unconfined, probe_binary, "x32")
    assert survived.exit_code == 0 and survived.stdout.startswith("x32 "), survived


def test_i386_int80_kills_the_process(engine, unconfined, probe_binary):
    survived = run_probe(unconfined, probe_binary, "int80")
    if survived.exit_code == 128 + signal.SIGSEGV:
        pytest.skip("no IA32 emulation in this kernel: int $0x80 faults")
    assert survived.exit_code == 0 and survived.stdout.strip() == "int80 OK", survived
    killed = run_probe(engine, probe_binary, "int80")
    assert killed.exit_code == SIGSYS_EXIT, (killed.exit_code, killed.stdout, killed.stderr)
    assert "int80" not in killed.stdout


def test_compiled_policy_is_compiled_once_per_process():
    first = seccomp.compiled_policy()
    assert seccomp.compiled_policy() is first  # from memory
    assert len(first.filters) == 2 and all(len(f) % 8 == 0 for f in first.filters)
    assert seccomp.compiled_policy(unconfined=True).filters == ()


# A sandbox with a read-write mount of the caller's cache directory replaces every compiled
# policy it finds there with an allow-all program (two filters of one instruction, RET ALLOW,
# in the old cache's layout), and leaves a file to show it could write there.
POISON_PY = """
import glob, os, struct
allow_all = struct.pack('<HBBI', 0x06, 0, 0, 0x7FFF0000)
blob = (struct.pack('<I', len(allow_all)) + allow_all) * 2
os.makedirs('/mnt/cache/isol8/seccomp', exist_ok=True)
replaced = []
for path in glob.glob('/mnt/cache/**/*.bpf', recursive=True):
    open(path, 'wb').write(blob)
    replaced.append(path)
open('/mnt/cache/isol8/seccomp/written-by-the-sandbox', 'w').close()
print(replaced)
"""
# A new supervisor process with that cache runs a sandbox that opens an AF_PACKET socket: the
# policy answers EAFNOSUPPORT; without a filter the kernel answers EPERM (no CAP_NET_RAW).
VICTIM_PY = """
from isol8 import Isol8
code = (
    "import errno, socket\\n"
    "try:\\n"
    "    socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\\n"
    "    print('created')\\n"
    "except OSError as e:\\n"
    "    print(errno.errorcode[e.errno])\\n")
with Isol8() as engine:
    result = engine.execute(code)
print(result.stdout.strip() or result.stderr)
"""


def test_a_sandbox_cannot_swap_the_policy_of_later_sandboxes(tmp_path):
    """Through a read-write mount of the user's cache directory, a sandbox once replaced the
    on-disk policy with an allow-all program, and every later sandbox of that user ran
    without a filter (issue 9). Each supervisor process now compiles the policy itself:
    nothing of it is on disk to swap, and the next supervisor's sandboxes are filtered. (A
    read-write mount of the supervisor's own cache is refused as well: test_mounts.py; this
    cache is another supervisor's.)"""
    with host_tempdir("isol8-seccomp-cache-", mode=0o777) as cache:
        env = {**os.environ, "XDG_CACHE_HOME": str(cache), "HOME": str(cache)}

        def victim() -> str:
            proc = subprocess.run([sys.executable, "-c", VICTIM_PY], env=env, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
            return proc.stdout.strip()

        assert victim() == "EAFNOSUPPORT"  # a first supervisor with that cache
        mount = {"source": str(cache), "target": "/mnt/cache", "readonly": False}
        with Isol8(mounts=[mount]) as attacker:
            poisoned = run_py(attacker, POISON_PY)
        assert poisoned.exit_code == 0, poisoned.stderr
        assert (cache / "isol8" / "seccomp" / "written-by-the-sandbox").exists()  # it could
        assert victim() == "EAFNOSUPPORT", "a later sandbox ran without the filter"
        assert poisoned.stdout.strip() == "[]"  # no policy on disk to replace


SETID_PROBE = ATTEMPT_PY + """
import json, os, stat, subprocess
d = {root!r}
for name in ('f', 'c'):
    open(d + '/' + name, 'w').close()
fd = os.open(d + '/g', os.O_WRONLY | os.O_CREAT, 0o644)
out = {{
    'chmod u+s': attempt(lambda: os.chmod(d + '/f', 0o4755)),
    'chmod g+s': attempt(lambda: os.chmod(d + '/f', 0o2755)),
    'fchmod u+s': attempt(lambda: os.fchmod(fd, 0o4755)),
    'open 04755': attempt(lambda: os.close(os.open(d + '/n1', os.O_WRONLY | os.O_CREAT, 0o4755))),
    'open 02755': attempt(lambda: os.close(os.open(d + '/n2', os.O_WRONLY | os.O_CREAT, 0o2755))),
    'mknod 04755': attempt(lambda: os.mknod(d + '/n3', stat.S_IFREG | 0o4755)),
    'mkdir 02755': attempt(lambda: os.mkdir(d + '/n4', 0o2755)),
    'chmod 0750': attempt(lambda: os.chmod(d + '/c', 0o750)),
    'open 0755': attempt(lambda: os.close(os.open(d + '/n5', os.O_WRONLY | os.O_CREAT, 0o755))),
}}
shell = subprocess.run(['sh', '-c', 'chmod u+s {root}/g; chmod g+s {root}/g'],
                       capture_output=True, text=True)
out['chmod(1)'] = [shell.returncode, shell.stderr.count('Operation not permitted')]
out['setid left'] = sorted(name for name in os.listdir(d)
                           if os.stat(d + '/' + name).st_mode & (stat.S_ISUID | stat.S_ISGID))
print(json.dumps(out))
"""


def setid_attempts(engine: Isol8, root: str) -> dict:
    result = run_py(engine, f"import os; os.makedirs({root!r}, exist_ok=True)\n"
                    + SETID_PROBE.format(root=root))
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("root", ["/sandbox/setid", "/tmp/setid"])
def test_setuid_and_setgid_bits_cannot_be_set(engine, unconfined, root):
    """In a mode argument of any kind: chmod, fchmod, open(O_CREAT), mknod, mkdir; and chmod(1)
    reports it. The same probe without the filter sets every bit (the kernel allows the owner
    to), which proves the filter, not the tmpfs or the kernel, refuses."""
    got = setid_attempts(engine, root)
    controls = {key: got.pop(key) for key in ("chmod 0750", "open 0755")}
    assert controls == {"chmod 0750": "ok", "open 0755": "ok"}
    assert got.pop("chmod(1)") == [1, 2]
    assert got.pop("setid left") == []
    assert got == dict.fromkeys(got, "EPERM"), got

    free = setid_attempts(unconfined, root)
    assert free.pop("chmod(1)") == [0, 0]
    assert free.pop("setid left") == ["f", "g", "n1", "n2", "n3"]
    assert free == dict.fromkeys(free, "ok"), free
