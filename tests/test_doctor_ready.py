"""``isol8 doctor --ready``, the pods' readiness probe (deploy/k8s): it passes here, and a
process under a container runtime's restrictions gets one line naming the one it hit.

The restrictions are real and reach no further than a child process: a seccomp filter
like containerd's default profile for a container without CAP_SYS_ADMIN (loaded in the
child before it execs the probe), and /proc overmounted in a private mount namespace (in a
user namespace of its own when rootless). No sysctl of the host is touched.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from isol8 import doctor

PROBE_CODE = "import sys; from isol8.cli import main; sys.exit(main(['doctor', '--ready']))"

# Loads, in this child, what containerd's and Docker's default seccomp profiles deny a
# container without CAP_SYS_ADMIN (contrib/seccomp/seccomp_default.go): clone with
# CLONE_NEWUSER and unshare(CLONE_NEWUSER) fail with EPERM, clone3 with ENOSYS (its flags sit
# behind a pointer the filter cannot read); then it execs the probe, which inherits it.
DENY_USERNS = f"""
import os, sys
from isol8 import _native
lib = _native.libseccomp()
ctx = lib.seccomp_init(0x7FFF0000)  # allow the rest
NEWUSER, MASKED_EQ = 0x10000000, 7
def deny(code, name, *cmps):
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    array = (_native.ArgCmp * len(cmps))(*cmps) if cmps else None
    assert lib.seccomp_rule_add_array(ctx, 0x00050000 | code, nr, len(cmps), array) == 0
deny({errno.EPERM}, "clone", (0, MASKED_EQ, NEWUSER, NEWUSER))
deny({errno.EPERM}, "unshare", (0, MASKED_EQ, NEWUSER, NEWUSER))
deny({errno.ENOSYS}, "clone3")
assert lib.seccomp_load(ctx) == 0
os.execv(sys.executable, [sys.executable, "-c", sys.argv[1]])
"""


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout + proc.stderr
    return lines[0]


def test_ready_here_runs_a_sandbox_quickly():
    code = PROBE_CODE
    started = time.monotonic()
    proc = _run([sys.executable, "-c", code])
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first, *warnings = proc.stdout.splitlines()
    assert first.startswith("ready: a sandbox ran 'true' in ") and first.endswith(" ms")
    # no cgroup delegated (rootless here) is a warning naming the best-effort limits
    assert all(w.startswith("warning: limits: ") and "best effort" in w for w in warnings)
    # a probe every 10 s: the whole process (interpreter, imports, sandbox) takes ~0.2-0.3 s
    # here; the pods give it 5 s
    assert elapsed < 5, elapsed


def test_ready_under_a_seccomp_filter_refusing_user_namespaces_names_the_filter():
    proc = _run([sys.executable, "-c", DENY_USERNS, PROBE_CODE])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = _one_line(proc)
    assert line.startswith("not ready: user namespaces refused by a seccomp filter")
    assert "seccompProfile" in line and "at step 'clone'" in line


def test_ready_with_a_masked_proc_names_proc_mount():
    # what procMount: Default leaves: files of /proc overmounted (here /proc/keys with
    # /dev/null, as runc does), in a mount namespace of this child only
    inner = (f"mount --bind /dev/null /proc/keys && exec {sys.executable} -c "
             f"\"{PROBE_CODE}\"")
    unshare = ["unshare", "--mount"] if os.geteuid() == 0 else \
        ["unshare", "--user", "--map-root-user", "--mount"]
    # The kernel refuses a new proc in a user namespace only if no proc mount of the mount
    # namespace is fully visible (fs/namespace.c, mount_too_revealing): in a chroot whose
    # host /proc is still mounted, hidden, the mask blocks nothing. Asked of the kernel
    # itself, without isol8:
    kernel = _run([*unshare, "sh", "-c", "mount --bind /dev/null /proc/keys && exec unshare "
                   "--user --map-root-user --mount --pid --fork --mount-proc true"])
    if kernel.returncode == 0:
        pytest.skip("another proc mount of this mount namespace is fully visible (a "
                    "chroot's hidden host /proc): the kernel allows a new proc despite the mask")
    proc = _run([*unshare, "sh", "-c", inner])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = _one_line(proc)
    assert line.startswith("not ready: /proc is masked (/proc/keys overmounted)")
    assert "procMount: Unmasked" in line and "hostUsers: false" in line


README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_example(name: str) -> str:
    marker = f"<!-- example: {name} -->"
    text = README.read_text()
    block = text.split(marker, 1)[1].split("<!-- /example -->", 1)[0]
    return re.search(r"```sh\n(.*?)```", block, re.S).group(1)


def test_readme_ready_example_runs_verbatim():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", _readme_example("k8s-ready")], capture_output=True,
                          text=True, env=env, timeout=60)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ready: a sandbox ran 'true' in "), proc.stdout + proc.stderr
    assert lines[-1] == "exit 0"


# The reason, from the facts a pod shows (pure: synthetic inputs).

FILTERED = doctor.Confinement(masked=(), filtered=True, label="unconfined")
MASKED = doctor.Confinement(masked=("/proc/keys", "/proc/kcore", "/proc/scsi", "/proc/acpi"),
                            filtered=True, label="cri-containerd.apparmor.d (enforce)")
OK_USERNS = doctor.check_userns("63000", None, 1000)
OK_CHROOT = doctor.check_chroot(False)
OK_APPARMOR = doctor.check_apparmor(None, None, 1000, "/h")
AT_CLONE = "sandbox setup failed at step 'clone': clone on user namespace: EPERM"
AT_ROOTFS = "sandbox setup failed at step 'rootfs': mount(proc) on /proc: EPERM"


def test_reason_sysctl_and_apparmor_restriction_come_first():
    off = doctor.check_userns("0", None, 1000)
    reason = doctor.not_ready_reason(AT_CLONE, off, OK_CHROOT, OK_APPARMOR, FILTERED, True)
    assert reason.startswith("user namespaces refused (user namespaces): ")
    assert "max_user_namespaces=0" in reason
    restricted = doctor.check_apparmor("1", "", 1000, "/h")
    reason = doctor.not_ready_reason(AT_ROOTFS, OK_USERNS, OK_CHROOT, restricted, MASKED, True)
    assert reason.startswith("user namespaces refused (apparmor): ")
    assert "isol8-helper" in reason


def test_reason_follows_the_failing_step():
    # a filter at the clone step is the filter, even beside a masked /proc
    assert "seccomp filter" in doctor.not_ready_reason(AT_CLONE, OK_USERNS, OK_CHROOT,
                                                       OK_APPARMOR, MASKED, True)
    # past the clone, a filter that let the namespaces through is not blamed
    reason = doctor.not_ready_reason(AT_ROOTFS, OK_USERNS, OK_CHROOT, OK_APPARMOR, MASKED,
                                     True)
    assert reason.startswith("/proc is masked (/proc/keys, /proc/kcore, /proc/scsi, ...")
    confined = doctor.Confinement(masked=(), filtered=False, label="docker-default (enforce)")
    reason = doctor.not_ready_reason("sandbox setup failed at step 'rootfs': mount: EACCES",
                                     OK_USERNS, OK_CHROOT, OK_APPARMOR, confined, True)
    assert "docker-default (enforce)" in reason and "appArmorProfile" in reason


def test_reason_without_a_known_restriction_quotes_the_error():
    clean = doctor.Confinement(masked=(), filtered=False, label="unconfined")
    reason = doctor.not_ready_reason(AT_CLONE, OK_USERNS, OK_CHROOT, OK_APPARMOR, clean, True)
    assert reason == f"a real sandbox failed to run 'true': {AT_CLONE}"


def test_reason_apparmor_restriction_with_unreadable_profiles_only_rootless():
    # a pod's uid 1000 under Ubuntu's restriction, securityfs not mounted: the profile
    # list cannot be read, so the check only warns; the failed sandbox makes it the cause
    unknown = doctor.check_apparmor("1", None, 1000, "/h")
    clean = doctor.Confinement(masked=(), filtered=False, label="unconfined")
    reason = doctor.not_ready_reason(AT_ROOTFS, OK_USERNS, OK_CHROOT, unknown, clean, True)
    assert reason.startswith("user namespaces without capabilities (apparmor): ")
    assert "apparmor_restrict_unprivileged_userns=1" in reason and "isol8-helper" in reason
    # root is exempt from the restriction: not blamed
    exempt = doctor.check_apparmor("1", None, 0, "/h")
    reason = doctor.not_ready_reason(AT_ROOTFS, OK_USERNS, OK_CHROOT, exempt, clean, False)
    assert reason.startswith("a real sandbox failed")


@pytest.mark.parametrize("label, confined", [
    ("unconfined", False), ("terminal (unconfined)", False),
    ("cri-containerd.apparmor.d (enforce)", True)])
def test_confinement_reads_the_label(label, confined):
    assert doctor.confinement("", "Seccomp:\t0\n", label).confined is confined
