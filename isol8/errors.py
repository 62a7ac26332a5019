"""The exceptions isol8 raises, each saying what went wrong and what to do about it."""

from __future__ import annotations

import errno as _errno
import os

from . import chroot


class Isol8Error(Exception):
    """Base class of every isol8 error."""


class InvalidRequest(Isol8Error, ValueError):
    """An option or request field is malformed; the message names the field."""


class RuntimeNotAvailable(Isol8Error):
    """The requested runtime's interpreter is not in the sandbox's root filesystem."""


class SetupScriptFailed(Isol8Error):
    """A request's ``setup_script`` exited non-zero (or timed out): the code did not run.

    Upstream's message; ``exit_code``, ``stdout`` and ``stderr`` are the script's, with
    secrets masked."""

    def __init__(self, reason: str, exit_code: int, stdout: str, stderr: str) -> None:
        super().__init__(f"{reason}: {stderr}" if stderr else reason)
        self.reason, self.exit_code, self.stdout, self.stderr = reason, exit_code, stdout, stderr


class SessionLost(Isol8Error):
    """A persistent REPL's interpreter is gone (it exited, crashed, or ignored a timeout and
    was killed), and its variables with it. The engine drops the session: the next call
    starts a new one."""


class SandboxSetupError(Isol8Error):
    """The helper failed while building or running the sandbox.

    Carries the failing ``step``, ``syscall``, ``errno`` and ``path`` exactly as the helper
    reported them, plus a ``hint`` for the common host configurations that cause them.
    """

    def __init__(self, step: str, syscall: str, err: int, path: str) -> None:
        self.step, self.syscall, self.errno, self.path = step, syscall, err, path
        self.hint = hint_for(step, syscall, err)
        name = _errno.errorcode.get(err, str(err))
        where = f" on {path}" if path else ""
        message = f"sandbox setup failed at step '{step}': {syscall}{where}: {name} ({os.strerror(err)})"
        super().__init__(f"{message}. {self.hint}" if self.hint else message)


class ProcessStartFailed(SandboxSetupError):
    """The init could not start one process: a request's file it could not write (a
    read-only or missing directory), a program that cannot run, no process left under the
    pids limit. That call fails; the sandbox, and a session's files and background
    processes, live on."""

    def __init__(self, syscall: str, err: int, path: str) -> None:
        super().__init__("exec", syscall, err, path)
        where = f" on {path}" if path else ""
        message = (f"the process could not start: {syscall}{where}: "
                   f"{_errno.errorcode.get(err, str(err))} ({os.strerror(err)})")
        self.args = (f"{message}. {self.hint}" if self.hint else message,)


USERNS_HINT = (
    "Unprivileged user namespaces are unavailable. Check, in this order: "
    "'sysctl user.max_user_namespaces' must be > 0; on Debian-patched kernels "
    "'sysctl kernel.unprivileged_userns_clone=1'; on Ubuntu 23.10+ "
    "'kernel.apparmor_restrict_unprivileged_userns=1' blocks them unless the isol8 AppArmor "
    "profile is installed (see README, 'AppArmor'); inside Docker, run with "
    "'--security-opt seccomp=unconfined --security-opt apparmor=unconfined'. "
    "'isol8 doctor' checks all of these."
)


CHROOT_HINT = (
    "This process is in a chroot, and the kernel refuses a chrooted process a user namespace "
    "(EPERM, whatever the sysctls say): enter the root with pivot_root, or move it over / "
    "with 'mount --move' in a private mount namespace, instead of a plain chroot "
    "('isol8 doctor' shows how)."
)


def hint_for(step: str, syscall: str, err: int) -> str:
    if step == "clone" and err == _errno.EPERM and chroot.this_process():
        return CHROOT_HINT
    if step == "clone" and err in (_errno.EPERM, _errno.EACCES, _errno.ENOSPC, _errno.EINVAL):
        return USERNS_HINT
    if step == "idmap" and err in (_errno.EPERM, _errno.EACCES):
        return USERNS_HINT
    if step == "rootfs" and syscall.startswith("mount") and err == _errno.EPERM:
        if "proc" in syscall:
            return ("The host's /proc is partly masked (typical inside Docker or Kubernetes), "
                    "so the kernel refuses a fresh /proc: run the container with an unmasked "
                    "/proc ('--security-opt systempaths=unconfined' / 'procMount: Unmasked').")
        return ("Mounting inside the user namespace was refused; an AppArmor or SELinux policy "
                "may deny mounts (see 'isol8 doctor').")
    if step == "exec" and err == _errno.ENOENT:
        return "The program does not exist in the sandbox's root filesystem."
    return ""
