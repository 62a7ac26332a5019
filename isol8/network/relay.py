"""The byte relay of the filtered proxy: one TCP conversation, both ways, with splice(2).

Once the proxy has accepted a sandboxed client, connected the upstream and forwarded the bytes
it sniffed, :func:`relay` moves everything else on the supervisor's single event loop, which
serves every filtered sandbox at once. Why it is built this way:

* **splice through a pipe per direction.** ``socket -> pipe -> socket`` moves page references
  inside the kernel (``tcp_splice_read`` fills the pipe, ``splice_to_socket`` sends from it),
  so the bytes never enter Python's heap and each wake-up costs two syscalls however much it
  moves. ``benchmarks/relay_throughput.py`` (server, relay and client in three processes on
  this 2-core machine) measures a 100 MB download through it at 0.52-0.64 of a direct one's
  rate, through an asyncio streams relay at 0.20-0.37. The relay then spends about as much
  CPU as the client or the server (a second connection's TCP work, no copies): the gap to a
  direct download is a third busy process on two cores, more than the relay's own cost.
* **Backpressure is the pipe.** A direction reads from its source only while its pipe has
  room and writes only while the pipe holds bytes; a full pipe stops reading, so the peer's
  socket buffers fill and TCP flow control stalls the sender. What the supervisor holds per
  direction is one pipe's worth (``PIPE_SIZE`` bytes at most), whatever a sandbox sends or
  refuses to read. The bound is kept in bytes, by never asking splice for more than the
  capacity minus what the pipe holds: the kernel bounds a pipe by slots, and a slot takes a
  whole TCP fragment (up to 32 KiB), so a 64 KiB pipe accepts 260 KB from a socket. Readers
  and writers are registered only while they can make progress, and the kernel wakes the
  loop only when that is possible, so nothing spins.
* **Fairness.** One wake-up moves at most ``_BUDGET`` bytes, then returns to the loop
  (readiness is level-triggered, so the rest follows on the next turn): a flooding sandbox
  takes turns with every other connection instead of holding the loop.
* **Urgent data.** ``tcp_splice_read`` stops at the urgent mark (``tcp_read_sock`` breaks at
  ``urg_seq``) and returns EAGAIN although poll() reports the socket readable, forever: a
  hostile peer sending one ``MSG_OOB`` byte would make the loop spin. A readable wake-up that
  splices nothing into an empty pipe therefore does one ``recv()``, which steps over the mark
  (``tcp_recvmsg`` skips the urgent byte without ``SO_OOBINLINE``, as any recv()-based relay
  does), and puts what it read into the pipe.
* **SIGPIPE.** splice(2) has no ``MSG_NOSIGNAL``: writing into a socket the peer reset sends
  SIGPIPE to the writing thread (``sk_stream_error``), which kills the supervisor if the
  embedding application restored its default action (Python ignores it at startup, many CLI
  tools undo that). Each splice into a socket runs with SIGPIPE blocked in the thread, and an
  EPIPE takes the signal it left pending (sigtimedwait), so a hostile sandbox gets EPIPE at
  worst and the thread's mask is as the caller left it (children inherit masks).
* **Ends.** EOF on one side (splice returns 0) becomes ``shutdown(SHUT_WR)`` on the other once
  the pipe is drained (a half-close, RFC 9293 §3.6: the other direction goes on); any error
  on either socket ends both directions (a reset discards the peer's unread data anyway); no
  byte either way for ``idle_timeout`` seconds ends it too. The caller owns and closes the
  sockets; the relay closes its pipes and unregisters itself on every exit, cancellation
  included.

Pipe size: a direction starts with the default pipe (64 KiB) and grows it once, with
``F_SETPIPE_SZ`` to ``PIPE_SIZE``, when the pipe fills while its destination lags (a bulk
transfer). An unprivileged user may grow a pipe up to ``/proc/sys/fs/pipe-max-size`` and while
the user's pipes stay under ``/proc/sys/fs/pipe-user-pages-soft`` (64 MiB by default, summed
over all the user's pipes whatever they hold, pipe(7)); past that the kernel refuses with
EPERM (and new pipes get 8 KiB) and the relay keeps the pipe it has: slower, never broken.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ByteCount", "PIPE_SIZE", "forward_exactly", "relay"]

# The largest pipe a direction grows to: the most bytes it holds (backpressure bound). 1 MiB
# is the default pipe-max-size, the most an unprivileged user may ask for.
PIPE_SIZE = 1024 * 1024
# Bytes one wake-up may deliver before it yields the loop to other connections.
_BUDGET = 1024 * 1024
# A recv() past an urgent mark: at most one page, so it always fits the empty pipe it goes to
# (PIPE_BUF, pipe(7): a write of at most PIPE_BUF bytes is never split).
_URGENT_READ = 4096
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_SIGPIPE = {signal.SIGPIPE}
# asyncio runs a timer up to this much before its time (BaseEventLoop._run_once).
_CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution


@dataclass(slots=True)
class ByteCount:
    """Bytes delivered so far, per direction; the proxy sums them into the run's
    ``network_bytes_out`` (``up``) and ``network_bytes_in`` (``down``). Counted when written
    to the other side, so bytes a relay took in but could not deliver are never counted."""

    up: int = 0  # client -> upstream
    down: int = 0  # upstream -> client


async def relay(
    client: socket.socket,
    upstream: socket.socket,
    count: ByteCount,
    *,
    idle_timeout: float = 300.0,
) -> None:
    """Move bytes both ways until both directions have ended (EOF propagated with
    shutdown(SHUT_WR) to the other side), an error on either socket (then both are done),
    or ``idle_timeout`` seconds with no byte in either direction. Never closes the sockets
    (the caller does). Cancellation (task.cancel()) stops it promptly and leaves no
    reader/writer registered on the loop and no pipe fd open.

    Both sockets must be nonblocking TCP sockets (else ValueError) not owned by an asyncio
    transport (the relay registers its own reader and writer on them; asyncio refuses with
    RuntimeError). A socket error ends the relay normally: it is the peer's doing, not the
    caller's, and must not disturb other connections. OSError escapes only when the relay
    cannot start (pipe2: EMFILE, ENFILE), before any byte moved."""
    _check_socket(client, "client")
    _check_socket(upstream, "upstream")
    if client.fileno() == upstream.fileno():
        raise ValueError("relay: client and upstream are the same socket")
    if not idle_timeout > 0:  # also refuses NaN
        raise ValueError(f"relay: idle_timeout must be positive seconds, got {idle_timeout!r}")
    conversation = _Conversation(asyncio.get_running_loop(), count, idle_timeout)
    try:
        conversation.start(client, upstream)
        await conversation.done
    finally:
        conversation.close()


def _check_socket(sock: socket.socket, role: str) -> None:
    if sock.fileno() < 0:
        raise ValueError(f"relay: the {role} socket is closed")
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        raise ValueError(
            f"relay: the {role} socket must be TCP (AF_INET or AF_INET6, "
            f"SOCK_STREAM), got {sock!r}"
        )
    if sock.getblocking():
        # splice's SPLICE_F_NONBLOCK covers only the pipe; a blocking socket would stall the
        # supervisor's loop, and with it every other sandbox's connections.
        raise ValueError(f"relay: the {role} socket must be nonblocking, got {sock!r}")


def _splice_to_socket(pipe_r: int, sock_fd: int, count: int) -> int:
    """splice(2) from a pipe into a socket, never killed by SIGPIPE (see the module
    docstring). Costs two sigprocmask calls per splice: nothing next to the splice itself."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGPIPE)
    try:
        return os.splice(pipe_r, sock_fd, count, flags=_SPLICE_FLAGS)
    except BrokenPipeError:
        signal.sigtimedwait(_SIGPIPE, 0)  # the signal this EPIPE raised, pending while blocked
        raise
    finally:
        if signal.SIGPIPE not in old:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGPIPE)


def _grow_pipe(w: int) -> int | None:
    """Resizes the pipe whose write end is ``w`` to PIPE_SIZE; its new capacity in bytes, or
    None when the kernel refuses (EPERM: over pipe-max-size or the user's
    pipe-user-pages-soft; ENOMEM; EINVAL: a size it cannot round). A refusal leaves the pipe
    as it was, still working, so it never ends the conversation."""
    try:
        return fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        return None


class _Conversation:
    """The two directions of one relay, its idle timer and the future ``relay`` awaits."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: ByteCount, idle: float) -> None:
        self.loop = loop
        self.count = count
        self.idle = idle
        self.done: asyncio.Future[None] = loop.create_future()
        self.last_active = loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.directions: list[_Direction] = []
        self.closed = False

    def start(self, client: socket.socket, upstream: socket.socket) -> None:
        self.directions.append(_Direction(self, client, upstream, up=True))
        self.directions.append(_Direction(self, upstream, client, up=False))
        for direction in self.directions:
            direction.update_interest()
        self.timer = self.loop.call_at(self.last_active + self.idle, self._check_idle)

    def _check_idle(self) -> None:
        deadline = self.last_active + self.idle
        if self.loop.time() + _CLOCK_RESOLUTION >= deadline:
            self.end()
        else:  # bytes moved since the timer was set: one timer per idle period, not per byte
            self.timer = self.loop.call_at(deadline, self._check_idle)

    def direction_ended(self) -> None:
        if all(direction.ended for direction in self.directions):
            self.end()

    def end(self, error: BaseException | None = None) -> None:
        """Stops both directions now (pipes closed, loop unregistered) and wakes ``relay``."""
        self.close()
        if not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        for direction in self.directions:
            direction.close()


class _Direction:
    """``src -> pipe -> dst``. Invariants, kept after every wake-up: the reader on ``src`` is
    registered iff the source has not ended and the pipe is not known to be full; the writer
    on ``dst`` iff the pipe holds bytes (never more than ``capacity``). So each registered
    callback can make progress when the kernel calls it, and a stalled side waits in epoll,
    not in a loop."""

    def __init__(
        self, conv: _Conversation, src: socket.socket, dst: socket.socket, *, up: bool
    ) -> None:
        self.conv = conv
        self.loop = conv.loop
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.up = up
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.capacity = fcntl.fcntl(self.pipe_w, fcntl.F_GETPIPE_SZ)
        self.may_grow = self.capacity < PIPE_SIZE
        self.pending = 0  # bytes in the pipe
        self.full = False  # a splice into the pipe found no room: wait until some drains
        self.eof = False
        self.ended = False
        self.reading = False
        self.writing = False

    def update_interest(self) -> None:
        want_read = not self.eof and not self.full
        if want_read != self.reading:
            if want_read:
                self.loop.add_reader(self.src_fd, self._on_readable)
            else:
                self.loop.remove_reader(self.src_fd)
            self.reading = want_read
        want_write = self.pending > 0
        if want_write != self.writing:
            if want_write:
                self.loop.add_writer(self.dst_fd, self._on_writable)
            else:
                self.loop.remove_writer(self.dst_fd)
            self.writing = want_write

    def _on_readable(self) -> None:
        self._wake(readable=True)

    def _on_writable(self) -> None:
        self._wake(readable=False)

    def _wake(self, *, readable: bool) -> None:
        try:
            if self._transfer(readable):
                self.conv.last_active = self.loop.time()
            if self.ended:
                self.conv.direction_ended()
            if not self.conv.closed:
                self.update_interest()
        except OSError:  # reset, EPIPE, ETIMEDOUT...: the peer's doing; the conversation is over
            self.conv.end()
        except Exception as e:  # a bug: surface it from relay(), not in the loop's log
            self.conv.end(e)

    def _transfer(self, readable: bool) -> bool:
        """Fills and drains the pipe until neither moves or the budget is spent; returns
        whether any byte moved or an EOF arrived."""
        progress = False
        took = False
        budget = _BUDGET
        while budget > 0:
            moved = False
            if not self.eof and not self.full:
                try:
                    n = os.splice(
                        self.src_fd, self.pipe_w, self.capacity - self.pending, flags=_SPLICE_FLAGS
                    )
                except BlockingIOError:
                    if self.pending:
                        # Either the source is empty or the pipe has no free slot (a pipe has
                        # a fixed number of slots, one per fragment spliced): splice cannot
                        # tell. Stop reading until the writer drains some; if the source was
                        # merely empty, reading resumes after that drain.
                        moved = self._pipe_full()
                    elif readable and not took:
                        moved = self._read_past_urgent()
                else:
                    moved = True
                    if n == 0:
                        self.eof = True
                    else:
                        self.pending += n
                        took = True
                        if self.pending >= self.capacity:
                            self._pipe_full()
            if self.pending:
                try:
                    n = _splice_to_socket(self.pipe_r, self.dst_fd, self.pending)
                except BlockingIOError:
                    pass
                else:
                    self.pending -= n
                    if self.up:
                        self.conv.count.up += n
                    else:
                        self.conv.count.down += n
                    self.full = False
                    budget -= n
                    moved = True
            if not moved:
                break
            progress = True
        if self.eof and not self.pending and not self.ended:
            self.dst.shutdown(socket.SHUT_WR)
            self.ended = True
        return progress

    def _pipe_full(self) -> bool:
        """Called when the pipe may be full. The first time, it grows (returns True: the caller
        retries at once); then reading stops until the writer drains some.

        Growing only now is deliberate: a pipe that fills while its destination lags is a bulk
        transfer, and a bigger pipe means fewer, larger splices (1 MiB costs the relay about a
        fifth less CPU per byte than the default 64 KiB here). Pipe sizes count against the
        user's pipe-user-pages-soft whether or not they hold data, so the many small
        request/response conversations keep the default pipe."""
        if self.may_grow:
            self.may_grow = False
            capacity = _grow_pipe(self.pipe_w)
            if capacity is not None and capacity > self.capacity:
                self.capacity = capacity
                return True
        self.full = True
        return False

    def _read_past_urgent(self) -> bool:
        """The source polled readable, yet splice moved nothing into an empty pipe: it sits at
        an urgent mark (see the module docstring). recv() steps over it; what it returns goes
        into the pipe, ahead of anything spliced later, so the stream keeps its order."""
        try:
            data = self.src.recv(_URGENT_READ)
        except BlockingIOError:  # the urgent byte was all there was; it is consumed now
            return False
        if not data:
            self.eof = True
        else:
            os.write(self.pipe_w, data)  # the pipe is empty and data <= PIPE_BUF: all fits
            self.pending += len(data)
        return True

    def close(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.src_fd)
            self.reading = False
        if self.writing:
            self.loop.remove_writer(self.dst_fd)
            self.writing = False
        for fd in (self.pipe_r, self.pipe_w):
            os.close(fd)


async def forward_exactly(
    src: socket.socket,
    dst: socket.socket,
    size: int,
    delivered: Callable[[int], None],
    *,
    idle_timeout: float = 300.0,
) -> None:
    """Move exactly ``size`` bytes from ``src`` to ``dst`` through a pipe, as one direction
    of :func:`relay` does: a Content-Length body the proxy passes on without reading it
    into Python (a body read and written in Python runs at about a third of a direct
    download here). ``delivered(n)`` counts bytes as they reach ``dst``. Holds at most
    one pipe's worth, yields the loop after ``_BUDGET`` bytes, and steps over an urgent mark
    as the relay does. Raises EOFError when ``src`` ends early, TimeoutError after
    ``idle_timeout`` seconds without progress, OSError on a socket error; the pipe is closed
    on every exit."""
    loop = asyncio.get_running_loop()
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        capacity = (_grow_pipe(w) if size > _DEFAULT_PIPE else None) or _DEFAULT_PIPE
        held = 0
        stuck = False  # src woke us readable, yet splice found nothing: an urgent mark
        moved = 0
        while size or held:
            progressed = False
            if size and held < capacity:
                try:
                    if stuck and held == 0:
                        data = src.recv(min(_URGENT_READ, size))
                        if data:
                            os.write(w, data)
                        n = len(data)
                    else:
                        n = os.splice(
                            src.fileno(), w, min(size, capacity - held), flags=_SPLICE_FLAGS
                        )
                except BlockingIOError:
                    n = -1
                if n == 0:
                    raise EOFError("the body's sender closed before its end")
                if n > 0:
                    size, held, progressed = size - n, held + n, True
            if held:
                try:
                    n = _splice_to_socket(r, dst.fileno(), held)
                except BlockingIOError:
                    n = 0
                if n:
                    held -= n
                    moved += n
                    delivered(n)
                    progressed = True
            if progressed:
                stuck = False
                if moved >= _BUDGET:
                    moved = 0
                    await asyncio.sleep(0)  # other connections get their turn
                continue
            readable = bool(size) and held < capacity
            async with asyncio.timeout(idle_timeout):
                stuck = await _ready(loop, src if readable else None, dst if held else None)
    finally:
        os.close(r)
        os.close(w)


async def _ready(
    loop: asyncio.AbstractEventLoop, src: socket.socket | None, dst: socket.socket | None
) -> bool:
    """Wait until ``src`` is readable or ``dst`` writable; True if ``src`` woke it."""
    woke: asyncio.Future[bool] = loop.create_future()

    def wake(readable: bool) -> None:
        if not woke.done():
            woke.set_result(readable)

    if src is not None:
        loop.add_reader(src.fileno(), wake, True)
    if dst is not None:
        loop.add_writer(dst.fileno(), wake, False)
    try:
        return await woke
    finally:
        if src is not None:
            loop.remove_reader(src.fileno())
        if dst is not None:
            loop.remove_writer(dst.fileno())


_DEFAULT_PIPE = 65536
