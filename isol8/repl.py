"""The persistent REPL (``repl=True``): one Python interpreter in the session's sandbox, whose
``__main__`` survives between runs, so variables and imports do (the smolagents style).

Each run hands the interpreter its code and stdio over its control socket and ends when the
interpreter reports the cell's status (isol8/interp_main.py). An exception is a result:
the traceback in stderr, exit code 1. A timeout interrupts the cell with SIGINT, sent from
inside the sandbox (the supervisor is outside its pid namespace); a cell that does not stop
within a grace period takes the interpreter with it: that run still reports its timeout,
and the next one raises ``SessionLost``, as does a run during which the interpreter died.
"""

from __future__ import annotations

import time
from collections.abc import Generator

from .errors import Isol8Error, SessionLost
from .interpreter import send_code, start_interpreter
from .output import CappedOutput
from .runtimes import BASH
from .sandbox import (Chunk, RunOutcome, RunSpec, Sink, close_all, flush_pipes, open_pipes,
                      supervise)
from .interrupts import signals_deferred
from .secrets import Masker
from .session import Session

_INTERRUPT_GRACE = 1.0  # seconds for a cell to stop at SIGINT
_KILL_GRACE = 5.0
_OOM_REPORT_GRACE = 0.1  # seconds for the watchdog's report of a kill, after a hang-up
_TRUE = "/usr/bin/true"


class Repl:
    def __init__(self, session: Session, python: str) -> None:
        self.session = session
        self.run_id = session.new_run_id()
        self.interpreter = start_interpreter(session.sandbox, self.run_id, python, "repl",
                                             final=False)
        self.control, self.pid = self.interpreter.control, self.interpreter.pid
        self.lost: str | None = None  # why the interpreter is gone

    def run(self, spec: RunSpec, *, deadline: float, max_output: int,
            owner: tuple[int, int] | None, secrets: list[bytes],
            cancel_fd: int) -> Generator[Chunk, None, RunOutcome]:
        """One cell: ``spec``'s last file is the code; the others are written first."""
        if self.lost is not None:
            raise self._lost_error()
        session = self.session
        if len(spec.files) > 1:  # request files: written by a process of their own
            written = yield from session.run(
                RunSpec([_TRUE], spec.env, spec.cwd, b"", spec.files[:-1]), deadline=deadline,
                max_output=max_output, owner=owner, secrets=secrets, cancel_fd=cancel_fd)
            if written.exit_code != 0:
                raise Isol8Error(f"writing the request's files failed: {written.stderr.text()}")
        outcome = RunOutcome(CappedOutput(max_output, Masker(secrets)),
                             CappedOutput(max_output, Masker(secrets)))
        pipes: dict[int, tuple[str, Sink]] = {}
        write_ends: list[int] = []
        sent = ended = False
        session.sandbox.network_usage()  # what went before the cell is not its own
        try:
            with signals_deferred():
                out_w, err_w = open_pipes(outcome, owner, pipes, write_ends)
                send_code(self.control, spec, out_w, err_w)
                sent = True
                outcome.started_ns = time.monotonic_ns()
                close_all(write_ends)
                write_ends.clear()
            yield from supervise(session.sandbox, outcome, pipes, deadline, session.cgroup,
                                 cancel_fd, -1, done=self.control)
            if (outcome.timed_out or outcome.cancelled or outcome.oom) and not outcome.gone:
                yield from self._interrupt(outcome, pipes)
            ended = True
            outcome.network = session.sandbox.network_usage()
            yield from flush_pipes(pipes)
        finally:
            with signals_deferred():
                if sent and not ended and session.alive:
                    # Abandoned mid-cell (a stream closed early, an exception): the cell is
                    # interrupted now, or its status would answer the next request.
                    for _ in self._interrupt(outcome, pipes):
                        pass
                close_all(write_ends)
                session.adopt(list(pipes))
        if outcome.lost and not outcome.oom:
            self._lost_to_memory(outcome)
        session.check(outcome)
        if outcome.lost and outcome.oom:  # this run reports the OOM; the next one raises
            self.lost, outcome.lost = "the interpreter was killed for exceeding the memory " \
                                      "limit", False
        if outcome.lost:
            self.lost = "the interpreter exited during a run (os._exit, a crash or a kill)"
            raise self._lost_error()
        return outcome

    def _lost_to_memory(self, outcome: RunOutcome) -> None:
        """Whether the interpreter that hung up was killed for memory: its hang-up can
        overtake the report. A memory cgroup counts the kill (v2 sends no event for it);
        the init's watchdog reports its kill as an event, read here within a short grace."""
        session = self.session
        if (session.cgroup is not None
                and session.cgroup.usage().oom_kills > session.oom_kills_seen):
            outcome.oom = True
            return
        probe = RunOutcome(outcome.stdout, outcome.stderr)  # the output is flushed: no pipes
        for _ in supervise(session.sandbox, probe, {}, time.monotonic() + _OOM_REPORT_GRACE,
                           session.cgroup, -1, -1):
            pass
        outcome.oom, outcome.gone = probe.oom, outcome.gone or probe.gone
        outcome.peak_bytes = probe.peak_bytes or outcome.peak_bytes
        outcome.error = outcome.error or probe.error

    def _lost_error(self) -> SessionLost:
        return SessionLost(f"the REPL session is lost: {self.lost}; its variables are gone, "
                           "and the next call starts a new session")

    def _interrupt(self, outcome: RunOutcome, pipes: dict[int, tuple[str, Sink]],
                   ) -> Generator[Chunk, None, None]:
        """SIGINT to the cell (at a timeout, a cancellation or an OOM kill of one of its
        processes); if it does not stop, kill the interpreter."""
        timed_out, cancelled, oom = outcome.timed_out, outcome.cancelled, outcome.oom
        outcome.timed_out = outcome.cancelled = outcome.oom = False
        session = self.session
        session.fire(RunSpec([BASH, "-c", 'kill -INT "$1"', "isol8", str(self.pid)],
                             {"PATH": "/usr/bin:/bin"}, "/", b"", []))
        yield from supervise(session.sandbox, outcome, pipes, time.monotonic() + _INTERRUPT_GRACE,
                             session.cgroup, -1, -1, done=self.control)
        if outcome.timed_out:
            session.sandbox.kill_run(self.run_id)
            outcome.timed_out = False
            yield from supervise(session.sandbox, outcome, pipes,
                                 time.monotonic() + _KILL_GRACE, session.cgroup, -1, -1,
                                 done=self.control)
            self.lost = "a cell ignored its timeout's interrupt and the interpreter was killed"
            outcome.lost = False  # this run reports its timeout; the next raises
        outcome.timed_out, outcome.cancelled = timed_out, cancelled
        outcome.oom = outcome.oom or oom
        outcome.exit_code = None
