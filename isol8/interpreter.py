"""Python interpreters that wait for code inside a sandbox (isol8/interp_main.py): the warm
pool's zygotes and the persistent REPL.

The interpreter's control socket is its stdin at start-up; the supervisor keeps the other
end. A request is ``marshal`` of ``(argv, env, cwd)`` (data the supervisor made, read by
the sandbox: nothing from inside is ever unmarshalled here) with stdin, stdout, stderr and
the code as fds; the only things read back are a 5-byte hello and 4-byte statuses.
"""

from __future__ import annotations

import array
import marshal
import os
import select
import socket
from pathlib import Path

from .errors import Isol8Error
from .runtimes import SANDBOX_HOME, base_env
from .sandbox import RunSpec, Sandbox, close_all, drain, sealed_memfd

SOURCE = Path(__file__).with_name("interp_main.py").read_text()
READY_TIMEOUT = 10.0


def start_interpreter(sandbox: Sandbox, run_id: int, python: str, mode: str, *,
                      final: bool) -> tuple[socket.socket, int]:
    """Start the interpreter in ``mode`` ("zygote" or "repl") as run ``run_id`` and wait
    until it is ready; returns its control socket and its pid inside the sandbox."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # Its start-up output, if any, explains an interpreter that never said it was ready.
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    try:
        sandbox.start_process(run_id, RunSpec([python, "-c", SOURCE, mode], base_env(),
                                              SANDBOX_HOME, b"", []),
                              out_w, out_w, final=final, stdin_fd=theirs.fileno())
        theirs.close()
        os.close(out_w)
        out_w = -1
        ready, _, _ = select.select([ours], [], [], READY_TIMEOUT)
        hello = ours.recv(8) if ready else b""
        if len(hello) != 5 or hello[:1] != b"R":
            said = drain(out_r).decode(errors="replace").strip()
            raise Isol8Error(f"the sandbox's Python ({mode}) did not start: "
                             f"{said or 'no answer'}")
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
        close_all([fd for fd in (out_r, out_w) if fd >= 0])
    return ours, int.from_bytes(hello[1:], "little")


def send_code(control: socket.socket, spec: RunSpec, stdout_w: int, stderr_w: int) -> None:
    """Hand ``spec`` (its last file is the code) and the run's stdio to the interpreter."""
    code = sealed_memfd("isol8-code", spec.files[-1][1])
    stdin = sealed_memfd("isol8-stdin", spec.stdin)
    try:
        control.sendmsg([marshal.dumps((spec.argv, spec.env, spec.cwd))],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                          array.array("i", (stdin, stdout_w, stderr_w, code)))])
    finally:
        close_all([code, stdin])
