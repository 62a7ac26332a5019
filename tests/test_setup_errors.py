"""A helper failure names step, syscall, errno and path, and leaves nothing behind."""

import dataclasses
import errno
import os
import re
import subprocess
import sys
import time

import pytest

from isol8 import Isol8, SandboxSetupError, identity
from isol8.errors import USERNS_HINT, hint_for
from isol8.protocol import BindRO, config_message
from isol8.sandbox import RunSpec, run_ephemeral

from conftest import child_pids

SPEC = RunSpec(["/usr/bin/true"], {}, "/sandbox", b"", [])


def run_helper(extra_mounts=(), spec=SPEC):
    """Run the real helper with the engine's plan plus extra mounts."""
    eng = Isol8()
    eng.start()
    host = identity.acquire(eng.options.uid_range)
    try:
        body = eng._config_body + b"".join(op.encode() for op in extra_mounts)
        return run_ephemeral(config_message(body, host_uid=host.uid, host_gid=host.gid), spec,
                             deadline=time.monotonic() + 30,
                             max_output=1024)
    finally:
        host.release()


def test_failing_mount_reports_step_syscall_errno_path():
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(SandboxSetupError) as info:
        run_helper([BindRO("/nonexistent-isol8-source", "/mnt/x")])
    err = info.value
    assert (err.step, err.syscall, err.errno, err.path) == (
        "rootfs", "stat", errno.ENOENT, "/nonexistent-isol8-source")
    assert "step 'rootfs': stat on /nonexistent-isol8-source: ENOENT" in str(err)
    assert len(os.listdir("/proc/self/fd")) == fds
    assert child_pids() == []


def test_the_plain_plan_runs():
    assert run_helper().exit_code == 0  # positive control for the failures below


def test_exec_failure_is_reported():
    with pytest.raises(SandboxSetupError) as info:
        run_helper(spec=dataclasses.replace(SPEC, argv=["/sandbox"]))  # a directory
    assert (info.value.step, info.value.syscall, info.value.errno) == ("exec", "execve",
                                                                       errno.EACCES)


@pytest.mark.parametrize("step, syscall, err", [("clone", "clone", errno.EPERM),
                                                ("clone", "clone", errno.ENOSPC),
                                                ("idmap", "write", errno.EPERM)])
def test_user_namespace_failures_say_what_to_do(step, syscall, err):
    assert hint_for(step, syscall, err) == USERNS_HINT
    assert "apparmor_restrict_unprivileged_userns" in USERNS_HINT
    assert "max_user_namespaces" in USERNS_HINT


def test_masked_proc_hint():
    assert "systempaths=unconfined" in hint_for("rootfs", "mount(proc)", errno.EPERM)


# Runs in a child process: it enters a user namespace of its own (full capabilities there,
# none on the host), sets that namespace's user.max_user_namespaces to 0 exactly as a host
# administrator would, then runs the CLI. The helper's clone(CLONE_NEWUSER) must fail, and
# the message must say what to do.
USERNS_DISABLED = r"""
import ctypes, os, sys
uid, gid = os.geteuid(), os.getegid()
if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:
    sys.exit(f"unshare: {os.strerror(ctypes.get_errno())}")
for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                   ("gid_map", f"{gid} {gid} 1")):
    with open(f"/proc/self/{name}", "w") as fh:
        fh.write(text)
with open("/proc/sys/user/max_user_namespaces", "w") as fh:
    fh.write("0")
from isol8.cli import main
sys.exit(main(["exec", "-e", "print(1)"]))
"""


def test_disabled_user_namespaces_say_what_to_do():
    p = subprocess.run([sys.executable, "-c", USERNS_DISABLED], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert re.search(r"sandbox setup failed at step 'clone': clone3? on user namespace: ENOSPC",
                     p.stderr)
    assert "user.max_user_namespaces" in p.stderr and "isol8 doctor" in p.stderr
