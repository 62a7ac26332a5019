"""Python interpreters that wait for code inside a sandbox (isol8/interp_main.py): the warm
pool's zygotes and the persistent REPL.

The interpreter's control socket is its stdin at start-up; the supervisor keeps the other
end. A request is ``marshal`` of ``(argv, env, cwd)`` (data the supervisor made, read by
the sandbox: nothing from inside is ever unmarshalled here) with stdin, stdout, stderr and
the code as fds; the only things read back are a 5-byte hello, a zygote's 1-byte ``A``
(it holds the request) and a REPL's 4-byte statuses.
"""

from __future__ import annotations

import array
import marshal
import os
import re
import select
import socket
import time
from pathlib import Path

from .errors import Isol8Error
from .runtimes import SANDBOX_HOME, base_env
from .sandbox import RunSpec, Sandbox, close_all, drain, recv_or_hangup, sealed_memfd

SOURCE = Path(__file__).with_name("interp_main.py").read_text()
READY_TIMEOUT = 10.0


class Interpreter:
    """An interpreter started as run ``run_id`` of a sandbox: its control socket, and its
    start-up output until it has said it is ready."""

    def __init__(self, sandbox: Sandbox, run_id: int, python: str, mode: str, *,
                 final: bool) -> None:
        self.run_id, self.mode, self.pid = run_id, mode, 0
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Its start-up output, if any, explains an interpreter that never said it was ready.
        self._out_r, out_w = os.pipe2(os.O_CLOEXEC)
        try:
            sandbox.start_process(run_id, RunSpec([python, "-c", SOURCE, mode], base_env(),
                                                  SANDBOX_HOME, b"", []),
                                  out_w, out_w, final=final, stdin_fd=theirs.fileno())
        except BaseException:
            self.close()
            raise
        finally:
            theirs.close()
            os.close(out_w)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> int:
        """Its pid inside the sandbox, once it has finished starting; raises if it never
        does (it exited, or ``timeout`` passed)."""
        if self._out_r < 0:
            return self.pid
        ready, _, _ = select.select([self.control], [], [], timeout)
        hello = self.control.recv(8) if ready else b""
        if len(hello) != 5 or hello[:1] != b"R":
            said = drain(self._out_r).decode(errors="replace").strip()
            raise Isol8Error(f"the sandbox's Python ({self.mode}) did not start: "
                             f"{said or 'no answer'}")
        os.close(self._out_r)
        self._out_r = -1
        self.pid = int.from_bytes(hello[1:], "little")
        return self.pid

    def took_run(self, deadline: float, cancel_fd: int = -1) -> bool:
        """After ``send_code``: False if this zygote died without taking the run.

        kill(2) returns once SIGKILL is queued; the zygote exits, and its socket closes,
        only when it is next scheduled. So the request to a zygote killed just before the
        run (by a background process of a persistent session) may be sent while it dies:
        the send succeeds, and its exit report would end the run as 137 with no output.
        It says ``A`` once it holds the request and before the code runs, so a hang-up
        without it means the code never ran: the caller starts the run cold. A hang-up with
        our request unread reports ECONNRESET first (net/unix/af_unix.c,
        unix_release_sock), the same death. Reaching ``deadline`` or a readable
        ``cancel_fd`` first counts as taken: the caller's supervision then times out or
        cancels the run, and kills it."""
        poller = select.poll()
        poller.register(self.control, select.POLLIN)
        if cancel_fd >= 0:
            poller.register(cancel_fd, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            timeout_ms = max(1, int(min(remaining, 3600) * 1000 + 0.999))
            ready = [fd for fd, _ in poller.poll(timeout_ms)]
            if cancel_fd in ready:
                return True
            if not ready:
                continue
            said = recv_or_hangup(self.control, 8)
            if said == b"A":
                return True
            if not said:
                return False
            # Otherwise its hello, unread because nothing waited for it: the answer follows.

    def close(self) -> None:
        self.control.close()
        if self._out_r >= 0:
            os.close(self._out_r)
            self._out_r = -1


def start_interpreter(sandbox: Sandbox, run_id: int, python: str, mode: str, *,
                      final: bool) -> Interpreter:
    """Start the interpreter in ``mode`` ("zygote" or "repl") as run ``run_id`` and wait
    until it is ready."""
    interpreter = Interpreter(sandbox, run_id, python, mode, final=final)
    try:
        interpreter.wait_ready()
    except BaseException:
        interpreter.close()
        raise
    return interpreter


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


# Variables that shape the interpreter while it starts: a zygote started before they were
# known cannot honour them, so such runs start an interpreter of their own.
_STARTUP_VARIABLES = re.compile(r"^(PYTHON|LC_|LANG$|LANGUAGE$)")


def zygote_can_run(spec: RunSpec) -> bool:
    """Whether a zygote runs ``spec`` exactly as ``python3 <script>`` would: the code is its
    only file (others are written by the init), and no start-up variable differs."""
    base = base_env()
    return (len(spec.files) == 1 and len(spec.argv) == 2 and spec.argv[1] == spec.files[0][0]
            and not any(_STARTUP_VARIABLES.match(k) and base.get(k) != v
                        for k, v in spec.env.items()))
