"""A helper failure names step, syscall, errno and path, and leaves nothing behind."""

import dataclasses
import errno
import os
import time

import pytest

from isol8 import Isol8, SandboxSetupError, identity
from isol8.errors import USERNS_HINT, hint_for
from isol8.protocol import BindRO, config_message
from isol8.sandbox import RunSpec, run_ephemeral

from conftest import child_pids

SPEC = RunSpec(["/usr/bin/true"], {}, "/sandbox", b"", None, None)


def run_helper(extra_mounts=(), spec=SPEC):
    """Run the real helper with the engine's plan plus extra mounts."""
    eng = Isol8()
    eng.start()
    host = identity.acquire(eng.options.uid_range)
    try:
        body = eng._config_body + b"".join(op.encode() for op in extra_mounts)
        return run_ephemeral(config_message(body, host.uid, host.gid), spec,
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
