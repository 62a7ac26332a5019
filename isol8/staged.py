"""A run of several steps in one sandbox: setup script, then the code, then output files.

Each step is its own process under the init (a ``Session`` run), so one sandbox's
``/sandbox`` and ``/tmp`` carry the setup's work to the code and the code's files to the
collector. One deadline covers setup and code (upstream gives each its own, up to 4x the
timeout). Everything happens inside the sandbox's mount namespace, so no path the code
controls is ever resolved by the supervisor.

``output_paths`` are read where user code cannot steer them: by a fork of the non-dumpable
init (``Session.read_files``), after every process of the user's is killed when the sandbox
ends with the run. Reading them is isol8's own work: it may go on past the run's deadline by
``_COLLECT_GRACE``, no more, whatever a background process does to the reader.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Generator
from dataclasses import dataclass

from .runtimes import BASH, SANDBOX_HOME
from .sandbox import RunOutcome, RunSpec
from .session import Session

SETUP_PATH = "/tmp/.isol8-setup.sh"
SETUP_TIMED_OUT = "SETUP SCRIPT TIMED OUT"
COLLECT_LIMIT = 64 << 20  # output_paths: file bytes in all, before base64
_COLLECT_GRACE = 2.0

# (phase, "stdout" | "stderr", masked bytes), and ("setup", "exit", b"0") once a setup
# script has succeeded.
Event = tuple[str, str, bytes]


@dataclass(frozen=True, slots=True)
class Stages:
    main: RunSpec
    setup: RunSpec | None = None
    output_paths: tuple[str, ...] = ()
    repl: bool = False  # the main step is a cell of the session's REPL
    zygote: bool = False  # a waiting interpreter may run the main step (Python)


@dataclass(slots=True)
class StagedOutcome:
    main: RunOutcome | None  # None when the setup script failed
    setup: RunOutcome | None = None
    setup_exit: int | None = None
    files: dict[str, str] | None = None

    @property
    def setup_failed(self) -> bool:
        return self.main is None


def setup_spec(script: str, env: dict[str, str], files: list[tuple[str, bytes]]) -> RunSpec:
    """The setup script as a file run by bash as the sandbox user in /sandbox, with the
    run's full environment (secrets included), as upstream; the request's ``files`` are
    written first, so the script sees them."""
    return RunSpec([BASH, SETUP_PATH], env, SANDBOX_HOME, b"",
                   [*files, (SETUP_PATH, script.encode())])


def exit_status(outcome: RunOutcome) -> int:
    if outcome.timed_out or outcome.oom:
        return 137
    if outcome.signal is not None:
        return 128 + outcome.signal
    return int(outcome.exit_code or 0)


def run_stages(session: Session, stages: Stages, *, deadline: float, max_output: int,
               owner: tuple[int, int] | None, secrets: list[bytes], cancel_fd: int,
               ) -> Generator[Event, None, StagedOutcome]:
    """Run the stages in ``session``; yields ("setup" | "code", stream, bytes) as output
    arrives. A setup script that fails, times out or is cancelled ends the run there."""
    staged = StagedOutcome(main=None)
    if stages.setup is not None:
        setup = yield from in_phase("setup", session.run(
            stages.setup, deadline=deadline, max_output=max_output, owner=owner,
            secrets=secrets, cancel_fd=cancel_fd))
        staged.setup, staged.setup_exit = setup, exit_status(setup)
        if staged.setup_exit != 0 or setup.cancelled:
            return staged
        yield "setup", "exit", b"0"
    if stages.repl and session.repl is not None:
        main = session.repl.run(stages.main, deadline=deadline, max_output=max_output,
                                owner=owner, secrets=secrets, cancel_fd=cancel_fd)
    else:
        main = session.run(stages.main, deadline=deadline, max_output=max_output, owner=owner,
                           secrets=secrets, cancel_fd=cancel_fd, zygote=stages.zygote)
    staged.main = yield from in_phase("code", main)
    if stages.output_paths and session.alive and not staged.main.cancelled:
        staged.files = _collect(session, stages.output_paths, deadline, cancel_fd)
    return staged


def in_phase(phase: str, run: Generator[tuple[str, bytes], None, RunOutcome],
             ) -> Generator[Event, None, RunOutcome]:
    while True:
        try:
            name, data = next(run)
        except StopIteration as done:
            return done.value
        yield phase, name, data


def _collect(session: Session, paths: tuple[str, ...], deadline: float,
             cancel_fd: int) -> dict[str, str]:
    """``paths`` as base64, unmasked (file contents are the caller's, and masking base64
    would corrupt it): nothing of this reaches the stream. Missing, unreadable and
    non-regular files are skipped, as upstream skips missing ones; so are files that would
    take the total over ``COLLECT_LIMIT``."""
    deadline = max(deadline, time.monotonic()) + _COLLECT_GRACE
    if not session.persistent:  # nothing of the user's may outlive the code
        session.kill_all(deadline - time.monotonic())
    files = session.read_files(paths, limit=COLLECT_LIMIT, deadline=deadline,
                               cancel_fd=cancel_fd)
    return {path: base64.b64encode(data).decode("ascii") for path, data in files.items()}
