"""Deferring signal handlers around the steps that must not be split by an exception.

A Ctrl-C (or any exception a Python signal handler raises) between a spawn and the line that
records the child would leave a helper nobody reaps. ``signals_deferred`` makes such a step
atomic for Python handlers, at two levels:

* the kernel's: every signal is blocked in this thread, so none is delivered here;
* Python's: a handler runs in the main thread between bytecodes whenever *any* thread took the
  signal (CPython's C handler only sets a flag, and the main thread acts on it). Blocking in
  one thread moves delivery to another that does not block it: an agent host always has some
  (executor threads, an HTTP client's pool), and with four idle threads 250 interrupted runs
  left 34 helpers behind. So, in the main thread, each Python handler is also swapped for a
  recorder for the duration, and what it recorded is raised again once the real handlers are
  back, under the kernel block, so that it runs as the block lifts: after the step, never in
  it.

About 10 us a deferral in the main thread, 5 in others (benchmarks/ measured the
enum-converting ``signal.pthread_sigmask`` at 160 us a pair: the C-level ``_signal`` is used
throughout).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # CPython's C module, no stub
import _thread
import contextlib
import signal
import threading
from collections.abc import Generator

_ALL_SIGNALS = _signal.valid_signals()
_recorded: list[int] = []
_depth = 0  # nested deferrals in the main thread: only the outer one swaps


def _record(signum: int, frame: object) -> None:
    _recorded.append(signum)


@contextlib.contextmanager
def signals_deferred() -> Generator[None, None, None]:
    """Run the block with signal handlers deferred to its end.

    The mask is read first and blocked inside ``try``: a handler already due runs as the
    blocking call returns, and its exception, raised before a ``try`` that follows it, would
    leave every signal blocked in this thread for good (pytest-timeout's SIGALRM did, and the
    next test's subprocess inherited the mask and could not be stopped).
    """
    global _depth
    old = _signal.pthread_sigmask(signal.SIG_BLOCK, ())
    swapped: dict[int, object] = {}
    # Only the main thread runs Python handlers (and may set them): isol8 may be imported
    # first in another one, so the main thread is asked for, not remembered at import.
    outer = _depth == 0 and _thread.get_ident() == threading.main_thread().ident
    try:
        _signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
        if outer:
            _depth = 1
            for signum in _ALL_SIGNALS:
                handler = _signal.getsignal(signum)
                if callable(handler):
                    # signal() first runs a handler already due: its exception ends the
                    # swap here, and the finally restores what was swapped so far
                    _signal.signal(signum, _record)
                    swapped[signum] = handler
        yield
    finally:
        try:
            if outer:
                _depth = 0
                _restore(swapped)
        finally:
            try:
                if outer:
                    _raise_recorded()
            finally:
                _signal.pthread_sigmask(signal.SIG_SETMASK, old)


# While the real handlers go back, another thread may take a signal: signal() and
# raise_signal() run a handler already due before returning. Such an exception is kept until
# every step is done (a handler left swapped would swallow that signal for good), then raised.

def _restore(swapped: dict[int, object]) -> None:
    error: BaseException | None = None
    for signum, handler in swapped.items():
        while _signal.getsignal(signum) is _record:  # signal() raised before its change
            try:
                _signal.signal(signum, handler)
            except BaseException as exc:
                error = error or exc
    if error is not None:
        raise error


def _raise_recorded() -> None:
    """Each recorded signal sent again to this thread, where it is still blocked: pending,
    it runs its real handler as the caller lifts the mask."""
    error: BaseException | None = None
    while _recorded:
        try:
            _signal.raise_signal(_recorded.pop(0))
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error
