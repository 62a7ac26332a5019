"""A run of several steps in one sandbox: setup script, then the code, then output files.

Each step is its own process under the init (a ``Session`` run), so one sandbox's
``/sandbox`` and ``/tmp`` carry the setup's work to the code and the code's files to the
collector. One deadline covers setup and code (upstream gives each its own, up to 4x the
timeout); collecting ``output_paths`` is isol8's own work and gets a grace period of its
own. Everything happens inside the sandbox's mount namespace, so no path the code controls
is ever resolved by the supervisor.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass

from .runtimes import BASH, SANDBOX_HOME
from .sandbox import RunOutcome, RunSpec, finish
from .session import Session

SETUP_PATH = "/tmp/.isol8-setup.sh"
SETUP_TIMED_OUT = "SETUP SCRIPT TIMED OUT"
COLLECT_LIMIT = (64 << 20) * 4 // 3 + 4096  # output_paths: 64 MiB in all, base64-encoded
_COLLECT_GRACE = 10.0

# Each readable regular file as "path NUL base64 NUL"; the rest is skipped, as upstream
# skips missing files.
_COLLECT = ('for p; do [ -f "$p" ] && [ -r "$p" ] || continue; '
            'printf "%s\\0" "$p"; base64 -w0 -- "$p" || exit 1; printf "\\0"; done')

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
        staged.files = _collect(session, stages.output_paths, owner, cancel_fd)
    return staged


def in_phase(phase: str, run: Generator[tuple[str, bytes], None, RunOutcome],
             ) -> Generator[Event, None, RunOutcome]:
    while True:
        try:
            name, data = next(run)
        except StopIteration as done:
            return done.value
        yield phase, name, data


def _collect(session: Session, paths: tuple[str, ...], owner: tuple[int, int] | None,
             cancel_fd: int) -> dict[str, str]:
    """Read ``paths`` inside the sandbox, unmasked (file contents are the caller's, and
    masking base64 would corrupt it): nothing of this reaches the stream."""
    spec = RunSpec([BASH, "-c", _COLLECT, "isol8", *paths], {"PATH": "/usr/bin:/bin"},
                   SANDBOX_HOME, b"", [])
    outcome = finish(session.run(spec, deadline=time.monotonic() + _COLLECT_GRACE,
                                 max_output=COLLECT_LIMIT, owner=owner, secrets=[],
                                 cancel_fd=cancel_fd))
    return parse_collected(outcome.stdout.data())


def parse_collected(data: bytes) -> dict[str, str]:
    """``path NUL base64 NUL`` entries; an entry cut short (the limit) is left out."""
    parts = data.split(b"\0")
    files = {}
    for i in range(0, len(parts) - 2, 2):
        files[parts[i].decode("utf-8", "surrogateescape")] = parts[i + 1].decode("ascii")
    return files
