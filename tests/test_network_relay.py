"""The filtered proxy's byte relay (isol8.network.relay), on real TCP sockets on loopback.

Each test builds the proxy's picture: an "app" socket (the sandboxed client) connected to
the relay's client socket, and the relay's upstream socket connected to a "server" socket.
The app and server ends are driven by threads with blocking sockets, like separate programs;
the relay runs on an asyncio loop in the test's main thread, as on the supervisor's loop.
Every test checks that the relay leaves nothing behind: no reader or writer on the loop and
no fd (its pipes) open.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import hashlib
import math
import os
import random
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from isol8.network import relay as relay_mod
from isol8.network.relay import ByteCount, relay

MiB = 1 << 20


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


FAMILIES = [
    pytest.param(socket.AF_INET, id="ipv4"),
    pytest.param(
        socket.AF_INET6,
        id="ipv6",
        marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback in this kernel"),
    ),
]


def tcp_pair(family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        near = socket.create_connection(listener.getsockname()[:2])
        far, _ = listener.accept()
    return near, far


class Rig:
    """app <-> rc  [relay]  ru <-> srv"""

    def __init__(self, family: int = socket.AF_INET) -> None:
        self.app, self.rc = tcp_pair(family)
        self.ru, self.srv = tcp_pair(family)
        self.rc.setblocking(False)
        self.ru.setblocking(False)
        self.count = ByteCount()

    def relay(self, **kwargs: Any) -> Coroutine[Any, Any, None]:
        return relay(self.rc, self.ru, self.count, **kwargs)

    def close(self) -> None:
        for sock in (self.app, self.rc, self.ru, self.srv):
            sock.close()


@pytest.fixture
def rigs() -> Iterator[Callable[..., Rig]]:
    """Makes rigs; at teardown closes their sockets, which ends any peer thread still
    blocked on one, and checks every peer thread ended."""
    made: list[Rig] = []

    def make(family: int = socket.AF_INET) -> Rig:
        made.append(Rig(family))
        return made[-1]

    Peer.started.clear()
    yield make
    for rig in made:
        rig.close()
    for peer in Peer.started:
        peer.join(10)
        assert not peer.is_alive(), f"the peer thread {peer.fn.__name__} did not end"


class Peer(threading.Thread):
    """One end driven like a separate program; result() re-raises what it raised."""

    started: list[Peer] = []

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        super().__init__(daemon=True)
        Peer.started.append(self)
        self.fn, self.args = fn, args
        self.value: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.fn(*self.args)
        except BaseException as e:
            self.error = e

    def result(self, timeout: float = 20) -> Any:
        self.join(timeout)
        assert not self.is_alive(), f"{self.fn.__name__} did not finish"
        if self.error is not None:
            raise self.error
        return self.value


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def assert_unregistered(rig: Rig) -> None:
    loop = asyncio.get_running_loop()
    for sock in (rig.rc, rig.ru):
        assert not loop.remove_reader(sock.fileno()), "a reader was left on the loop"
        assert not loop.remove_writer(sock.fileno()), "a writer was left on the loop"


def loop_errors() -> list[dict[str, Any]]:
    """What the running loop's exception handler receives from now on: an exception escaping
    a relay callback lands there (logged, not raised), so each test checks it stays empty."""
    loop = asyncio.get_running_loop()
    handler = loop.get_exception_handler()
    if handler is not None:
        return handler.errors  # type: ignore[attr-defined,no-any-return]
    errors: list[dict[str, Any]] = []

    def record(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        errors.append(context)

    record.errors = errors  # type: ignore[attr-defined]
    loop.set_exception_handler(record)
    return errors


async def run_relay(rig: Rig, timeout: float = 20, fds: bool = True, **kwargs: Any) -> float:
    """Runs the relay to its end; checks it cleaned up (its fds too unless ``fds`` is false:
    another relay running alongside opens and closes its own) and that no callback raised;
    returns how long it took."""
    errors = loop_errors()
    before = fd_count()
    t0 = time.monotonic()
    await asyncio.wait_for(rig.relay(**kwargs), timeout)
    elapsed = time.monotonic() - t0
    assert_unregistered(rig)
    if fds:
        assert fd_count() == before, "the relay left an fd open"
    assert not errors, f"a callback raised: {errors}"
    return elapsed


def queued(sock: socket.socket, request: int) -> int:
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), request, buf)
    return buf[0]


def reset(sock: socket.socket) -> None:
    """close() with SO_LINGER 0: the kernel sends RST instead of FIN (tcp(7))."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def send_all_then_shut(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def recv_digest(sock: socket.socket) -> tuple[int, bytes]:
    """Reads to EOF: (length, sha256)."""
    digest = hashlib.sha256()
    buf = bytearray(MiB)
    view = memoryview(buf)
    total = 0
    while n := sock.recv_into(view):
        digest.update(view[:n])
        total += n
    return total, digest.digest()


def recv_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def exchange(sock: socket.socket, data: bytes) -> tuple[int, bytes]:
    """Sends ``data`` then EOF while reading the other way to EOF, at the same time."""
    sender = Peer(send_all_then_shut, sock, data)
    got = recv_digest(sock)
    sender.result()
    return got


class Flood:
    """Sends from ``sock`` as fast as it is accepted until stopped or the socket fails;
    ``sent`` is what the kernel accepted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = 0
        self.stop = threading.Event()
        sock.settimeout(0.1)  # wakes to check stop while the peer does not read
        self.peer = Peer(self._run)

    def _run(self) -> None:
        chunk = memoryview(bytes(MiB))
        while not self.stop.is_set():
            try:
                self.sent += self.sock.send(chunk)
            except TimeoutError:
                continue
            except OSError:
                return

    def end(self) -> None:
        self.stop.set()
        self.peer.result()


async def until_stalled(flood: Flood, timeout: float = 10) -> None:
    """Waits until the flood's sender has made no progress for 0.3 s."""
    deadline = time.monotonic() + timeout
    last = -1
    while flood.sent != last:
        assert time.monotonic() < deadline, "the flood never stalled: nothing pushed back"
        last = flood.sent
        await asyncio.sleep(0.3)


async def loop_cpu_while_idle(seconds: float) -> float:
    """CPU the loop's thread spends while the test only sleeps on it: what the relay's
    callbacks cost. A relay that spins shows ``seconds``."""
    cpu = time.thread_time()
    await asyncio.sleep(seconds)
    return time.thread_time() - cpu


# -- data ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_large_transfer_both_ways_at_once_is_intact_and_counted(rigs, family):
    size = 50 * MiB + 12345  # not a multiple of any buffer or pipe size
    up = random.Random(1).randbytes(size)
    down = random.Random(2).randbytes(size)
    rig = rigs(family)
    app = Peer(exchange, rig.app, up)
    srv = Peer(exchange, rig.srv, down)
    asyncio.run(run_relay(rig))
    assert srv.result() == (size, hashlib.sha256(up).digest())
    assert app.result() == (size, hashlib.sha256(down).digest())
    assert (rig.count.up, rig.count.down) == (size, size)


def test_half_close_reaches_the_server_which_can_still_answer(rigs):
    rig = rigs()
    answer = b"response:" + bytes(3 * MiB)

    def server() -> bytes:
        request = b""
        while chunk := rig.srv.recv(65536):  # EOF only once the app shut its side
            request += chunk
        rig.srv.sendall(answer)  # the other direction still works after the EOF
        rig.srv.shutdown(socket.SHUT_WR)
        return request

    def app() -> tuple[int, bytes]:
        rig.app.sendall(b"GET / HTTP/1.0\r\n\r\n")
        rig.app.shutdown(socket.SHUT_WR)
        return recv_digest(rig.app)

    srv_peer, app_peer = Peer(server), Peer(app)
    asyncio.run(run_relay(rig))
    assert srv_peer.result() == b"GET / HTTP/1.0\r\n\r\n"
    assert app_peer.result() == (len(answer), hashlib.sha256(answer).digest())
    assert (rig.count.up, rig.count.down) == (18, len(answer))


def test_eof_waits_for_the_pipe_to_drain(rigs):
    """The app sends a burst and shuts at once while the server is not reading yet: the relay
    reads the EOF while its pipe still holds bytes, and must pass it on only after them."""
    rig = rigs()
    data = random.Random(3).randbytes(8 * MiB)
    app = Peer(send_all_then_shut, rig.app, data)

    async def main() -> None:
        task = asyncio.ensure_future(run_relay(rig))
        await asyncio.sleep(0.5)  # the relay is blocked on the server, the pipe full
        rig.srv.shutdown(socket.SHUT_WR)
        srv = Peer(recv_digest, rig.srv)
        await task
        assert srv.result() == (len(data), hashlib.sha256(data).digest())

    asyncio.run(main())
    app.result()
    assert (rig.count.up, rig.count.down) == (len(data), 0)


def test_nothing_sent_either_way(rigs):
    rig = rigs()
    rig.app.shutdown(socket.SHUT_WR)
    rig.srv.shutdown(socket.SHUT_WR)
    elapsed = asyncio.run(run_relay(rig))
    assert elapsed < 1
    assert rig.app.recv(1) == b"" and rig.srv.recv(1) == b""
    assert (rig.count.up, rig.count.down) == (0, 0)


# -- hostile peers ------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["app", "srv"])
def test_reset_mid_transfer_ends_the_relay_and_spares_another(rigs, side):
    rig, other = rigs(), rigs()
    # The side that will be reset receives a stream; the other side of the rig sends it.
    sender = rig.srv if side == "app" else rig.app
    victim = rig.app if side == "app" else rig.srv
    flood = Flood(sender)

    async def main() -> None:
        before = fd_count()
        doomed = asyncio.ensure_future(run_relay(rig, fds=False))
        healthy = asyncio.ensure_future(run_relay(other, fds=False))
        await asyncio.sleep(0.3)  # bytes are flowing through the doomed relay
        assert rig.count.up + rig.count.down > 0
        reset(victim)
        await asyncio.wait_for(doomed, 2)  # returns, no exception
        # The loop still serves the other relay, from start to end.
        app = Peer(exchange, other.app, b"ping" * 1000)
        srv = Peer(exchange, other.srv, b"pong" * 1000)
        await healthy
        assert app.result()[0] == srv.result()[0] == 4000
        assert fd_count() == before - 1  # the victim's socket, closed by the reset

    asyncio.run(main())
    flood.end()


def test_idle_timeout_ends_a_silent_conversation(rigs):
    rig = rigs()  # connected both ways, nobody sends: a half-open peer
    elapsed = asyncio.run(run_relay(rig, idle_timeout=0.3))
    assert 0.3 <= elapsed < 2


def test_idle_timeout_counts_from_the_last_byte(rigs):
    rig = rigs()

    def trickle() -> None:
        for _ in range(8):  # a byte every 0.1 s for 0.8 s: never idle for 0.5 s
            rig.app.send(b"x")
            time.sleep(0.1)

    peer = Peer(trickle)
    elapsed = asyncio.run(run_relay(rig, idle_timeout=0.5))
    peer.result()
    assert 1.1 <= elapsed < 4  # the last byte at 0.7 s, then 0.5 s idle
    assert rig.count.up == 8


def test_urgent_data_does_not_make_the_loop_spin(rigs):
    """tcp_splice_read stops at the urgent mark while poll() says readable; a relay that
    only splices would spin on it forever (see relay.py)."""
    rig = rigs()

    async def main() -> None:
        task = asyncio.ensure_future(run_relay(rig))
        rig.app.send(b"abc")
        rig.app.send(b"!", socket.MSG_OOB)
        rig.app.send(b"def")
        cpu = await loop_cpu_while_idle(0.5)
        assert cpu < 0.15, f"the loop spun: {cpu:.2f} s of CPU in 0.5 s"
        rig.app.send(b"!", socket.MSG_OOB)  # an urgent byte alone, then EOF
        await asyncio.sleep(0.1)
        rig.app.shutdown(socket.SHUT_WR)
        rig.srv.shutdown(socket.SHUT_WR)
        await task

    asyncio.run(main())
    # The urgent bytes are out of band (no SO_OOBINLINE): the stream is the rest, in order.
    assert recv_all(rig.srv) == b"abcdef"
    assert rig.count.up == 6


# Run in a child process: the supervisor of an application that restored SIGPIPE's default
# action (as CLI tools do so that `prog | head` exits quietly). The app reset its connection
# and the proxy already read the error (getsockopt(SO_ERROR) consumes it, socket(7)), so the
# relay's next write into that socket fails with EPIPE, and splice(2) raises SIGPIPE with it.
# After the relay, the thread's signal mask is as before and no SIGPIPE is pending.
SIGPIPE_CHILD = """
import asyncio, signal, socket, struct, sys
from isol8.network.relay import ByteCount, relay

signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def pair():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        near = socket.create_connection(listener.getsockname())
        return near, listener.accept()[0]


app, rc = pair()
ru, srv = pair()
srv.sendall(b"x" * 100000)
app.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
app.close()
while not rc.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
    pass  # until the reset has arrived, and its error is consumed
rc.setblocking(False)
ru.setblocking(False)
asyncio.run(relay(rc, ru, ByteCount(), idle_timeout=5))
print("survived", signal.pthread_sigmask(signal.SIG_BLOCK, []), signal.sigpending())
"""


def test_a_write_into_a_reset_socket_does_not_kill_the_supervisor():
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(relay_mod.__file__)))
    env = {**os.environ, "PYTHONPATH": package_root}
    child = subprocess.run(
        [sys.executable, "-c", SIGPIPE_CHILD], env=env, capture_output=True, text=True, timeout=20
    )
    assert (child.returncode, child.stdout) == (0, "survived set() set()\n"), child.stderr


# -- backpressure and fairness ------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["up", "down"])
def test_backpressure_bounds_what_the_relay_holds(rigs, direction):
    """The receiver never reads: the relay must stop taking bytes from the sender once its
    pipe is full, without spinning, and deliver everything once the receiver reads."""
    rig = rigs()
    writer, reader = (rig.app, rig.srv) if direction == "up" else (rig.srv, rig.app)
    relay_in = rig.rc if direction == "up" else rig.ru  # the relay's socket facing the writer
    flood = Flood(writer)

    async def main() -> None:
        task = asyncio.ensure_future(run_relay(rig))
        await until_stalled(flood)
        cpu = await loop_cpu_while_idle(0.5)
        assert cpu < 0.15, f"the stalled relay spun: {cpu:.2f} s of CPU in 0.5 s"
        delivered = getattr(rig.count, direction)
        # What the writer's kernel accepted is in its send queue, in the relay socket's
        # receive queue, delivered, or held by the relay: the relay holds the rest.
        held = (
            flood.sent
            - queued(writer, termios.TIOCOUTQ)
            - queued(relay_in, termios.FIONREAD)
            - delivered
        )
        assert held <= relay_mod.PIPE_SIZE, f"the relay holds {held} bytes"
        assert flood.sent < 128 * MiB  # bounded by buffers, not by what the writer offers
        # Now the reader reads: everything flows again, up to the writer's EOF.
        flood.end()
        writer.settimeout(None)
        writer.shutdown(socket.SHUT_WR)
        got = Peer(recv_digest, reader)
        reader.shutdown(socket.SHUT_WR)
        await task
        assert got.result()[0] == flood.sent == getattr(rig.count, direction)

    asyncio.run(main())


def open_fds() -> set[int]:
    """This process's fds, without the one listdir() used for it (closed on return)."""
    return {int(fd) for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")}


def pipe_sizes(before: set[int]) -> list[int]:
    """F_GETPIPE_SZ of each pipe fd opened since ``before``: the relay's pipes."""
    return sorted(
        fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        for fd in open_fds() - before
        if os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
    )


@pytest.mark.parametrize("refused", [False, True], ids=["granted", "refused"])
def test_only_a_bulk_direction_grows_its_pipe_and_a_refusal_is_harmless(
    rigs, monkeypatch, refused
):
    """A direction whose receiver lags grows its pipe to PIPE_SIZE; the idle direction keeps
    the default one (pipe sizes count against the user's pipe-user-pages-soft). A size the
    kernel refuses (here one it cannot round: EINVAL, root or not) leaves the default pipe,
    and the relay goes on."""
    if refused:
        monkeypatch.setattr(relay_mod, "PIPE_SIZE", 1 << 40)
    r, w = os.pipe()
    default = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    os.close(r)
    os.close(w)
    rig = rigs()
    flood = Flood(rig.srv)  # the app does not read yet

    async def main() -> None:
        fds = open_fds()
        task = asyncio.ensure_future(run_relay(rig))
        await until_stalled(flood)
        grown = default if refused else relay_mod.PIPE_SIZE
        assert pipe_sizes(fds) == sorted([default, default, grown, grown])
        flood.end()
        rig.srv.settimeout(None)
        rig.srv.shutdown(socket.SHUT_WR)
        got = Peer(recv_digest, rig.app)
        rig.app.shutdown(socket.SHUT_WR)
        await task
        assert got.result()[0] == flood.sent == rig.count.down

    asyncio.run(main())


# The flood's two ends run in their own processes: in threads of this one, they would share
# the GIL with the loop and could never outrun the relay, so a relay without a per-wake
# budget would look fair.
FLOOD_SEND = """
import os, sys
chunk = bytes(1 << 20)
try:
    while True:
        os.write(int(sys.argv[1]), chunk)
except OSError:
    pass
"""
FLOOD_SINK = """
import os, sys
try:
    while os.read(int(sys.argv[1]), 1 << 20):
        pass
except OSError:
    pass
"""


@contextlib.contextmanager
def process_on(sock: socket.socket, code: str) -> Iterator[None]:
    """``code`` runs in a child process on a copy of ``sock`` (argv[1]) until the block ends."""
    fd = sock.fileno()
    proc = subprocess.Popen([sys.executable, "-c", code, str(fd)], pass_fds=[fd])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def test_a_flooded_and_a_stalled_relay_do_not_slow_another(rigs):
    """One relay carries a flood at full speed, one is stalled by a reader that never reads;
    small round trips through a third relay on the same loop stay quick. Without a per-wake
    budget, the flood's callback would hold the loop for as long as bytes keep coming."""
    rounds = 50
    flooded, stalled, quiet = rigs(), rigs(), rigs()

    def ping() -> float:
        t0 = time.monotonic()
        for _ in range(rounds):
            quiet.app.sendall(b"x" * 100)
            got = b""
            while len(got) < 100:
                got += quiet.app.recv(100 - len(got))
        quiet.app.shutdown(socket.SHUT_WR)
        return time.monotonic() - t0

    def echo() -> None:
        while data := quiet.srv.recv(65536):
            quiet.srv.sendall(data)
        quiet.srv.shutdown(socket.SHUT_WR)

    async def main() -> None:
        before = fd_count()
        tasks = [asyncio.ensure_future(run_relay(r, fds=False)) for r in (flooded, stalled, quiet)]
        stall = Flood(stalled.srv)
        await until_stalled(stall)
        with process_on(flooded.app, FLOOD_SEND), process_on(flooded.srv, FLOOD_SINK):
            await asyncio.sleep(0.3)  # the flood is up to speed
            moved = flooded.count.up
            echo_peer = Peer(echo)
            pinger = Peer(ping)
            while pinger.is_alive():
                await asyncio.sleep(0.05)
            took = pinger.result()
            echo_peer.result()
            moved = flooded.count.up - moved
        assert moved > 10 * MiB, "the flood was not flowing meanwhile"
        assert took < 2, f"{rounds} round trips took {took:.2f} s next to a flood"
        await tasks[2]
        stall.end()
        for task in tasks[:2]:
            task.cancel()
        await asyncio.gather(*tasks[:2], return_exceptions=True)
        assert fd_count() == before

    asyncio.run(main())


# -- cancellation and bad input -----------------------------------------------------------------


def test_cancellation_is_prompt_and_leaves_nothing(rigs):
    rig = rigs()
    flood = Flood(rig.srv)  # the app never reads: the pipe is full, a writer is registered

    async def main() -> None:
        errors = loop_errors()
        before = fd_count()
        task = asyncio.ensure_future(rig.relay())
        await until_stalled(flood)
        assert fd_count() == before + 4  # two pipes
        task.cancel()
        t0 = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - t0 < 0.5
        assert_unregistered(rig)
        assert fd_count() == before
        assert not errors

    asyncio.run(main())
    flood.end()


def test_bad_input_is_refused_clearly_and_leaves_nothing(rigs):
    rig = rigs()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setblocking(False)
    blocking_app, blocking_rc = tcp_pair()
    closed = socket.socket()
    closed.close()

    async def main() -> None:
        before = fd_count()
        cases = [
            ((blocking_rc, rig.ru), {}, "nonblocking"),
            ((rig.rc, udp), {}, "must be TCP"),
            ((rig.rc, rig.rc), {}, "same socket"),
            ((closed, rig.ru), {}, "closed"),
            ((rig.rc, rig.ru), {"idle_timeout": 0}, "idle_timeout"),
            ((rig.rc, rig.ru), {"idle_timeout": -1.0}, "idle_timeout"),
            ((rig.rc, rig.ru), {"idle_timeout": math.nan}, "idle_timeout"),
        ]
        for (client, upstream), kwargs, message in cases:
            with pytest.raises(ValueError, match=message):
                await relay(client, upstream, ByteCount(), **kwargs)
        assert fd_count() == before
        assert_unregistered(rig)

    try:
        asyncio.run(main())
    finally:
        for sock in (udp, blocking_app, blocking_rc):
            sock.close()


# --- forward_exactly: one Content-Length body, spliced -------------------------------------


def _forward(size: int, payload: bytes, shut: bool = False) -> tuple[int, bytes, bytes, int]:
    """Send ``payload`` into a fresh pair, forward ``size`` bytes of it; return the count
    delivered, what arrived, what is left unread in the source and fds leaked."""
    app, rc = tcp_pair()
    ru, srv = tcp_pair()
    rc.setblocking(False)
    ru.setblocking(False)
    delivered = [0]
    before = fd_count()
    try:
        sender = threading.Thread(target=lambda: (app.sendall(payload),
                                                  shut and app.shutdown(socket.SHUT_WR)))
        sender.start()
        received = bytearray()
        reader = threading.Thread(target=lambda: received.extend(
            b"".join(iter(lambda: srv.recv(1 << 20), b""))))
        reader.start()
        try:
            asyncio.run(asyncio.wait_for(relay_mod.forward_exactly(
                rc, ru, size, lambda n: delivered.__setitem__(0, delivered[0] + n),
                idle_timeout=5), 20))
        finally:
            ru.shutdown(socket.SHUT_WR)
            reader.join()
            sender.join()
        rc.setblocking(True)
        rc.settimeout(0.2)
        try:
            rest = rc.recv(1 << 20)
        except TimeoutError:
            rest = b""
        return delivered[0], bytes(received), rest, fd_count() - before
    finally:
        for sock in (app, rc, ru, srv):
            sock.close()


def test_forward_exactly_moves_that_many_bytes_and_not_one_more():
    body = os.urandom(3_000_000)
    delivered, received, rest, leaked = _forward(len(body), body + b"NEXT REQUEST")
    assert (delivered, received, rest, leaked) == (len(body), body, b"NEXT REQUEST", 0)


def test_forward_exactly_refuses_a_body_cut_short():
    with pytest.raises(EOFError):
        _forward(1_000_000, b"x" * 1000, shut=True)
