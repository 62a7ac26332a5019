"""A persistent sandbox: one init for the engine's life, every run a new process in it.

``/sandbox`` and ``/tmp`` persist, and so do background processes (an agent starts a server
in one call and queries it in the next): a run starts under a subreaper leader in the init,
so a timeout kills that run's tree and nothing else, while what the run leaves behind passes
to pid 1 when it ends. Runs are serialized by the engine.

Background processes keep the run's stdout and stderr open after the run is over. Closing
our ends would kill them with SIGPIPE at their next write, so the pipes go to the init,
which discards what they carry inside the sandbox (csrc/drain.c), where the sandbox's cgroup
pays for it, until their last writer is gone.

A process that cannot start (a file it cannot write, no pid left) fails its own call only:
the init said so and lives on. Only an init that is gone ends the session.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import select
import time
from collections.abc import Generator
from typing import TYPE_CHECKING

from . import protocol
from .cgroups import SandboxCgroups
from .errors import Isol8Error
from .identity import HostIdentity
from .interpreter import Interpreter, send_code
from .output import CappedOutput
from .sandbox import (Chunk, NetworkHook, RunOutcome, RunSpec, Sandbox, Sink, close_all,
                      error_from_event,
                      finish, flush_pipes, is_start_failure, open_pipes,
                      supervise)
from .interrupts import signals_deferred
from .secrets import Masker

if TYPE_CHECKING:
    from .repl import Repl

_KILL_GRACE = 5.0  # seconds for a killed run's exit report to arrive
_READER_KILL_GRACE = 1.0  # the same for a reader, killed at its deadline
_STREAM_PIPE = 1 << 20


class Session:
    """``persistent``: the session outlives its runs. A session made for one staged run
    (setup script, output_paths) is not: nothing of the user's has to outlive its code."""

    def __init__(self, config: bytes, host: HostIdentity, cgroup: SandboxCgroups | None,
                 runtime: str | None, *, persistent: bool = True,
                 network: NetworkHook | None = None) -> None:
        self.host, self.cgroup, self.runtime = host, cgroup, runtime
        self.persistent = persistent
        self.sandbox = Sandbox(config, cgroup.fds if cgroup else [], network)
        if cgroup:
            cgroup.close_fds()
        self.alive = True
        # The cgroup's and the init's counters are the session's: runs report deltas.
        self.cpu_ns_seen = 0
        self.cpu_us_seen = 0
        self.oom_kills_seen = 0
        self.pids_max_seen = 0
        self._ids = itertools.count(1)
        self.repl: Repl | None = None  # repl=True: the interpreter, made on first use
        self.zygote: Interpreter | None = None  # the next Python run's, already starting

    def prepare_zygote(self, python: str) -> None:
        """Start the interpreter the next Python run will take, without waiting for it: it
        starts while the caller looks at this run's result. A background process may kill
        it before that run: the run then starts cold (see ``Interpreter.took_run``).
        ``self.zygote.wait_ready()`` waits for it, and names its pid in the sandbox."""
        if self.zygote is None and self.alive:
            with signals_deferred():
                self.zygote = Interpreter(self.sandbox, self.new_run_id(), python, "zygote",
                                          final=False)

    def _launch(self, spec: RunSpec, out_w: int, err_w: int,
                zygote: bool) -> tuple[int, Interpreter | None]:
        """Start ``spec`` as a new run, handed to the waiting zygote if allowed; its id, and
        the zygote used, which the caller must see take the run (``took_run``) and close
        once the run is over (closing a socket with its hello unread would reset the
        zygote's end before it has read the request)."""
        if zygote and self.zygote is not None:
            # Not waiting for its hello: a zygote still starting reads the request when it
            # is ready. One already gone refuses it (EPIPE, ECONNRESET): the run starts cold.
            waiting, self.zygote = self.zygote, None
            try:
                send_code(waiting.control, spec, out_w, err_w)
                return waiting.run_id, waiting
            except OSError:
                self._discard(waiting)
        return self._start_cold(spec, out_w, err_w), None

    def _start_cold(self, spec: RunSpec, out_w: int, err_w: int, stdin_fd: int = -1) -> int:
        run_id = self.new_run_id()
        self.sandbox.start_process(run_id, spec, out_w, err_w, final=False, stdin_fd=stdin_fd)
        return run_id

    def drop_zygote(self) -> None:
        """Kill the waiting zygote, if any: one started before a package install lacks the
        new user site on its sys.path (site.py adds it only if present at start-up)."""
        stale, self.zygote = self.zygote, None
        if stale is not None:
            self._discard(stale)

    def _discard(self, dead: Interpreter) -> None:
        """A zygote that will not take the run. Its exit report, whenever it comes, carries
        its own run id, which no supervision waits for."""
        self.sandbox.kill_run(dead.run_id)
        dead.close()

    def kill_all(self, timeout: float = _KILL_GRACE) -> None:
        """End every process of the session but its init (background processes, the
        zygote, a REPL's interpreter), e.g. before ``/sandbox`` is read back on the host."""
        with signals_deferred():
            for interpreter in (self.zygote, self.repl.interpreter if self.repl else None):
                if interpreter is not None:
                    interpreter.close()
            self.zygote = self.repl = None
            if not self.sandbox.kill_all(time.monotonic() + timeout):
                self.alive = False
                raise Isol8Error("the sandbox's init did not end its processes in time")

    def new_run_id(self) -> int:
        return next(self._ids)

    def adopt(self, fds: list[int]) -> None:
        """Pipes of a finished run: closed if no writer is left (poll says POLLHUP alone:
        nothing buffered, no writer), else handed to the init, which discards what comes."""
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        done = {fd for fd, revents in poller.poll(0) if revents == select.POLLHUP}
        close_all([fd for fd in fds if fd in done])
        self.sandbox.hand_over([fd for fd in fds if fd not in done])

    def fire(self, spec: RunSpec) -> None:
        """Start a process nobody waits for (its exit event is ignored), output discarded."""
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            self.sandbox.start_process(self.new_run_id(), spec, null, null, final=False)
        finally:
            os.close(null)

    def run(self, spec: RunSpec, *, deadline: float, max_output: int,
            owner: tuple[int, int] | None, secrets: list[bytes],
            cancel_fd: int, zygote: bool = False, stdout: Sink | None = None,
            stdin_fd: int = -1) -> Generator[Chunk, None, RunOutcome]:
        """Run ``spec`` as a new process of the session, yielding its output as it comes.

        ``stdout``: where its stdout goes instead of a buffer capped at ``max_output``
        (a workspace's archive streams through, kept nowhere). ``stdin_fd``: an fd that
        replaces ``spec.stdin``, closed here once the process has it (a writer on its other
        end then sees EPIPE if the process dies); never with ``zygote``."""
        assert stdin_fd < 0 or not zygote
        run_id, used = -1, None
        kept = CappedOutput(max_output, Masker(secrets))
        outcome = RunOutcome(stdout or kept,  # type: ignore[arg-type]
                             CappedOutput(max_output, Masker(secrets)))
        pipes: dict[int, tuple[str, Sink]] = {}
        write_ends: list[int] = [stdin_fd] if stdin_fd >= 0 else []
        ended = False
        self.sandbox.network_usage()  # what went before (background processes) is not its
        try:
            with signals_deferred():
                out_w, err_w = open_pipes(outcome, owner, pipes, write_ends)
                if stdin_fd >= 0:
                    run_id = self._start_cold(spec, out_w, err_w, stdin_fd)
                else:
                    run_id, used = self._launch(spec, out_w, err_w, zygote)
            # Interruptible: a zygote still starting takes the run once it is ready.
            if used is not None and not used.took_run(deadline, cancel_fd):
                with signals_deferred():  # it died before the code ran: the run starts cold
                    self._discard(used)
                    used, run_id = None, -1
                    run_id = self._start_cold(spec, out_w, err_w)
            with signals_deferred():
                outcome.started_ns = time.monotonic_ns()  # the init's "spawned" refines it
                close_all(write_ends)
                write_ends.clear()
            yield from supervise(self.sandbox, outcome, pipes, deadline, self.cgroup,
                                 cancel_fd, run_id)
            if (outcome.timed_out or outcome.cancelled or outcome.oom) and not outcome.gone:
                # Kill the run's tree only, then wait for its leader's exit report.
                self.sandbox.kill_run(run_id)
                timed_out, cancelled, oom = outcome.timed_out, outcome.cancelled, outcome.oom
                outcome.timed_out = outcome.cancelled = outcome.oom = False
                yield from supervise(self.sandbox, outcome, pipes,
                                     time.monotonic() + _KILL_GRACE, self.cgroup, -1, run_id)
                outcome.timed_out, outcome.cancelled = timed_out, cancelled
                outcome.oom = outcome.oom or oom
            ended = True
            outcome.network = self.sandbox.network_usage()
            # The program is done: what it wrote is in the pipes (later writes are not its).
            yield from flush_pipes(pipes)
        finally:
            with signals_deferred():
                if not ended and self.alive and run_id >= 0:
                    self.sandbox.kill_run(run_id)  # abandoned mid-run: the run dies
                if used is not None:
                    used.close()
                close_all(write_ends)
                self.adopt(list(pipes))
        self.check(outcome)
        return outcome

    def check(self, outcome: RunOutcome) -> None:
        """After a run: a session whose init is gone is over (the next run needs a new
        sandbox); an error raises, but one process that could not start ends only its call."""
        if outcome.gone or (outcome.error is not None and not is_start_failure(outcome.error)):
            self.alive = False
        if outcome.error is not None:
            raise error_from_event(outcome.error)

    def read_files(self, paths: tuple[str, ...], *, limit: int, deadline: float,
                   cancel_fd: int = -1) -> dict[str, bytes]:
        """The regular files among ``paths`` the sandbox user can read, at most ``limit``
        bytes in all, read inside the sandbox by a fork of the init (csrc/reader.c), which
        same-uid code can signal but neither read from nor write for. A file not complete at
        ``deadline`` (the reader stopped or slow) or a cancellation is left out, and the
        reader is killed."""
        stream = protocol.FileStream(paths, limit)
        outcome = RunOutcome(CappedOutput(0), CappedOutput(0))  # the reader writes neither
        pipes: dict[int, tuple[str, Sink]] = {}
        run_id = -1
        ended = False
        try:
            with signals_deferred():
                read_end, write_end = os.pipe2(os.O_CLOEXEC)
                pipes[read_end] = ("files", stream)
                try:
                    try:
                        fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, _STREAM_PIPE)
                    except OSError:
                        pass  # over /proc/sys/fs/pipe-max-size for this user
                    run_id = self.new_run_id()
                    self.sandbox.start_reader(run_id, paths, limit, write_end)
                finally:
                    os.close(write_end)
            finish(supervise(self.sandbox, outcome, pipes, deadline, self.cgroup, cancel_fd,
                             run_id))
            if (outcome.timed_out or outcome.cancelled or outcome.oom) and not outcome.gone:
                self.sandbox.kill_run(run_id)
                outcome.timed_out = outcome.cancelled = False
                finish(supervise(self.sandbox, outcome, pipes,
                                 time.monotonic() + _READER_KILL_GRACE, self.cgroup, -1,
                                 run_id))
            ended = True
            finish(flush_pipes(pipes))  # the reader is gone: what it wrote, up to EOF
        finally:
            with signals_deferred():
                if not ended and self.alive and run_id >= 0:
                    self.sandbox.kill_run(run_id)
                close_all(list(pipes))
        self.check(outcome)
        return stream.files

    def close(self) -> None:
        """Destroy the sandbox, everything in it, and the session's cgroups and lease."""
        with signals_deferred():
            self.sandbox.destroy()
            for interpreter in (self.zygote, self.repl.interpreter if self.repl else None):
                if interpreter is not None:
                    interpreter.close()
            if self.cgroup is not None:
                self.cgroup.destroy()
            self.host.release()
        self.alive = False

