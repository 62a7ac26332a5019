"""One sandbox's lifecycle: spawn the helper, run a process in it, kill it, reap it.

The helper is ``posix_spawn``'ed (vfork-fast, and never a fork of this possibly threaded
interpreter) with one SOCK_SEQPACKET socket as fd 3. Teardown is always the same and always
complete: SIGKILL to the sandbox's PID 1 through a pidfd (the kernel then kills every process
of the pid namespace, setsid and double-fork daemons included), close the socket (the init
also exits on hang-up, should the pidfd not have arrived yet), and wait for the helper, which
exits only after the kernel has reaped the whole namespace.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import select
import signal
import socket
import time
import warnings
from collections.abc import Callable, Generator
from typing import Any, Protocol, TypeVar
from dataclasses import dataclass, field

from . import protocol
from ._paths import helper_path
from .errors import Isol8Error, ProcessStartFailed, SandboxSetupError
from .interrupts import signals_deferred
from .cgroups import SandboxCgroups
from .output import CappedOutput
from .secrets import Masker

T = TypeVar("T")
CONTROL_FD = 3  # where the helper expects its socket (csrc/helper.h)
_RECV_ANCILLARY = socket.CMSG_SPACE(4 * protocol.MAX_EXEC_FDS)
_READ_CHUNK = 1 << 16
_PIPE_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class RunSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    stdin: bytes
    files: list[tuple[str, bytes]]  # (absolute path, content), written in order before exec


@dataclass(slots=True)
class RunOutcome:
    stdout: CappedOutput
    stderr: CappedOutput
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    started_ns: int | None = None  # CLOCK_MONOTONIC when the init forked the process
    ended_ns: int | None = None
    oom: bool = False
    cancelled: bool = False
    lost: bool = False  # a REPL's interpreter hung up: its state is gone
    gone: bool = False  # the whole sandbox ended (its init exited or was killed)
    cpu_us: int | None = None  # the init's rusage of every process it reaped
    network: Any = None  # network="filtered": the run's proxy usage (network.NetworkUsage)
    peak_bytes: int | None = None  # the init's watchdog peak (or the largest maxrss)
    error: dict[str, object] | None = field(default=None)


class Sandbox:
    """A running helper and the sandbox behind it.

    ``listeners``: with a capture record in the config (``protocol.Listen``), the sockets
    the helper made inside the sandbox's network namespace, in the config's order, once
    their event has been received; the filtered-network proxy (issue 10) serves them.
    ``destroy()`` closes them: a socket holds its namespace alive (``sk_alloc`` takes a
    reference on it). ``network``, when given, is called with them as they arrive and
    returns what serves them (``network.ProxyHandle``), which then owns and closes them.
    """

    def __init__(self, config: bytes, config_fds: list[int],
                 network: NetworkHook | None = None) -> None:
        helper = helper_path()
        if not os.access(helper, os.X_OK):
            raise Isol8Error(f"the isol8 helper is missing at {helper}: "
                             "reinstall the package (pip install .) or run 'make build'")
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._pidfd = -1
        self.listeners: list[tuple[protocol.Listener, socket.socket]] = []
        self._network = network
        self.proxy: ServedNetwork | None = None
        fd = theirs.fileno()
        try:
            if fd == CONTROL_FD:  # dup2(3, 3) would leave FD_CLOEXEC set
                fd = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, CONTROL_FD + 1)
            # A bare argv[0]: the sandbox can read it in /proc/1/cmdline, and the install
            # path may name a user.
            self.pid = os.posix_spawn(str(helper), ["isol8-helper"], {},
                                      file_actions=[(os.POSIX_SPAWN_DUP2, fd, CONTROL_FD)])
        except BaseException:
            self._sock.close()
            raise
        finally:
            if fd != theirs.fileno():
                os.close(fd)
            theirs.close()
        self._alive = True
        try:
            self._send(config, config_fds)
        except BaseException:
            self.destroy()
            raise

    def _send(self, message: bytes, fds: list[int] | None = None) -> None:
        ancillary = ([(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                     if fds else [])
        try:
            self._sock.sendmsg([message], ancillary)
        except BrokenPipeError:
            pass  # the helper already failed; its error event says why
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                raise Isol8Error(f"request of {len(message)} bytes is too large for the "
                                 "control socket (argv and env must stay under ~200 KiB)") from None
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def receive(self) -> dict[str, Any] | None:
        """The next event, or None when the helper has hung up."""
        with signals_deferred():  # fds received must reach their owner before any interrupt
            return self._receive()

    def _receive(self) -> dict[str, Any] | None:
        # A helper that exited with our exec request unread makes the kernel report
        # ECONNRESET once, before the events still queued for us (its error report among
        # them): so one retry.
        for _ in range(2):
            try:
                # MSG_CMSG_CLOEXEC: received fds are close-on-exec from the start, with no
                # window for a thread's fork+exec to inherit them (SCM_RIGHTS drops the flag)
                data, ancdata, _, _ = self._sock.recvmsg(protocol.MAX_EVENT + 1,
                                                         _RECV_ANCILLARY,
                                                         socket.MSG_CMSG_CLOEXEC)
                break
            except ConnectionResetError:
                continue
            except BlockingIOError:
                return None
        else:
            return None
        fds = [fd for level, kind, raw in ancdata
               if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
               for fd in array.array("i", raw[: len(raw) - len(raw) % 4])]
        if not data:
            close_all(fds)
            return None
        try:
            event = protocol.parse_event(data)
        except protocol.ProtocolError:
            close_all(fds)
            raise
        if event["event"] == "started" and len(fds) == 1 and self._pidfd < 0:
            self._pidfd = fds.pop()
        elif event["event"] == "unmapped":
            warn_unmapped(event)
        elif event["event"] == "listeners":
            self._adopt_listeners(event, fds)
            fds = []
        close_all(fds)
        return event

    def _adopt_listeners(self, event: dict[str, Any], fds: list[int]) -> None:
        """Keep the sockets of a "listeners" event; anything unexpected (a second event, a
        socket of another kind than announced) is refused and its fds closed."""
        try:
            if self.listeners or not self._alive:
                raise protocol.ProtocolError("unexpected listeners event")
            kinds = protocol.parse_listeners(event, len(fds))
        except protocol.ProtocolError:
            close_all(fds)
            raise
        adopted = []
        try:
            for kind in kinds:
                sock = socket.socket(fileno=fds[0])  # family and type come from the fd
                fds.pop(0)
                adopted.append((kind, sock))
                wanted = socket.SOCK_STREAM if kind.proto == "tcp" else socket.SOCK_DGRAM
                if sock.type != wanted:
                    raise protocol.ProtocolError(f"listener {kind} is not a {kind.proto} socket")
        except BaseException:
            for _, sock in adopted:
                sock.close()
            close_all(fds)
            raise
        self.listeners = adopted
        if self._network is not None:
            self.proxy = self._network(adopted)

    def network_usage(self) -> Any:
        """What the sandbox did through its proxy since the last call, or None without one."""
        return self.proxy.take() if self.proxy is not None else None

    def start_process(self, run_id: int, spec: RunSpec, stdout_w: int, stderr_w: int, *,
                      final: bool, stdin_fd: int = -1) -> None:
        """Ask the init to run ``spec``; ``stdin_fd``, when given, replaces ``spec.stdin``
        (the warm pool's zygote gets its control socket there)."""
        memfds = [sealed_memfd("isol8-stdin", spec.stdin)] if stdin_fd < 0 else []
        try:
            for _, content in spec.files:
                memfds.append(sealed_memfd("isol8-file", content))
            stdin = memfds.pop(0) if stdin_fd < 0 else stdin_fd
            try:
                self._send(protocol.encode_exec(run_id, spec.argv, spec.env, spec.cwd,
                                                [path for path, _ in spec.files], final=final),
                           [stdin, stdout_w, stderr_w, *memfds])
            finally:
                if stdin_fd < 0:
                    os.close(stdin)
        finally:
            close_all(memfds)

    def kill_run(self, run_id: int) -> None:
        """Kill one run's process tree (persistent mode); its exit event follows."""
        self._send(protocol.encode_kill(run_id))

    def start_reader(self, run_id: int, paths: tuple[str, ...], limit: int,
                     stream_w: int) -> None:
        """Ask the init to read ``paths`` into ``stream_w`` (``protocol.FileStream``) from a
        fork of itself, as run ``run_id``."""
        self._send(protocol.encode_read(run_id, paths, limit), [stream_w])

    def hand_over(self, fds: list[int]) -> None:
        """Give the init pipes that background processes may still write to: it discards
        their output inside the sandbox until their last writer is gone. Ours are closed;
        if the init is gone, so are the writers."""
        per_message = protocol.MAX_EXEC_FDS
        try:
            for start in range(0, len(fds), per_message):
                self._send(protocol.encode_drain(), fds[start:start + per_message])
        except OSError:
            pass
        finally:
            close_all(fds)

    def kill_all(self, deadline: float) -> bool:
        """Kill every process but the init and wait until all are reaped, so that nothing
        of the user's is left to interfere with what the supervisor runs next. Events of
        the killed runs are passed over. False if the init did not confirm in time."""
        self._send(protocol.encode_kill_all())
        while (remaining := deadline - time.monotonic()) > 0:
            if not select.select([self._sock], [], [], remaining)[0]:
                return False
            event = self.receive()
            if event is None:
                return False
            if event["event"] == "killed":
                return True
        return False

    def destroy(self) -> None:
        """Kill everything in the sandbox and reap the helper. Idempotent."""
        if not self._alive:
            return
        self._alive = False
        if self._pidfd < 0:
            self._sock.setblocking(False)
            try:
                while self._pidfd < 0 and self.receive() is not None:
                    pass
            except (protocol.ProtocolError, OSError):
                pass
        if self._pidfd >= 0:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.close(self._pidfd)
            self._pidfd = -1
        if self.proxy is not None:
            self.proxy.close()  # it closes the listeners once it no longer serves them
        else:
            for _, sock in self.listeners:
                sock.close()
        self.listeners = []
        self._sock.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def sealed_memfd(name: str, data: bytes) -> int:
    """An immutable in-memory file: code and stdin of any size, never on argv."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


Chunk = tuple[str, bytes]  # ("stdout" or "stderr", bytes masked and within the cap)


class ServedNetwork(Protocol):
    """What serves a sandbox's listeners (``network.ProxyHandle``)."""

    def take(self) -> Any: ...

    def close(self) -> None: ...


NetworkHook = Callable[[list[tuple[protocol.Listener, socket.socket]]], ServedNetwork]


class Sink(Protocol):
    """Where a pipe's data goes (``CappedOutput``, ``protocol.FileStream``): ``feed`` and
    ``end`` return what to pass on."""

    def feed(self, data: bytes) -> bytes: ...

    def end(self) -> bytes: ...


def run_ephemeral(config: bytes, spec: RunSpec, *, deadline: float, max_output: int,
                  owner: tuple[int, int] | None = None,
                  cgroup: SandboxCgroups | None = None,
                  secrets: list[bytes] | None = None) -> RunOutcome:
    """``stream_ephemeral`` run to its end: the output is in the outcome's buffers."""
    return finish(stream_ephemeral(config, spec, deadline=deadline, max_output=max_output,
                                   owner=owner, cgroup=cgroup, secrets=secrets))


def finish(run: Generator[object, None, T]) -> T:
    """Drive a streaming run to its end and return its outcome (the output stays in the
    outcome's buffers)."""
    while True:
        try:
            next(run)
        except StopIteration as done:
            return done.value


def stream_ephemeral(config: bytes, spec: RunSpec, *, deadline: float, max_output: int,
                     owner: tuple[int, int] | None = None,
                     cgroup: SandboxCgroups | None = None,
                     secrets: list[bytes] | None = None,
                     cancel_fd: int = -1,
                     network: NetworkHook | None = None) -> Generator[Chunk, None, RunOutcome]:
    """Run one process in a fresh sandbox, yielding its output as it arrives, then destroy
    the sandbox, whatever happens (closing the generator early kills the run).

    ``owner`` is the sandbox user's host uid and gid when it is not ours (root mode): the
    pipes are given to it, or reopening them through ``/dev/stdout`` inside would fail (a
    pipe is 0600, and host root is unmapped inside). ``cgroup``: the sandbox's leaves,
    whose fds travel with the config and whose OOM reports end the run (the caller reads
    and removes them afterwards). ``network`` serves the sandbox's listeners (``Sandbox``).
    The rest is ``stream_once``'s.
    """
    def launch(out_w: int, err_w: int) -> Sandbox:
        sandbox = Sandbox(config, cgroup.fds if cgroup else [], network)
        try:
            if cgroup:
                cgroup.close_fds()
            sandbox.start_process(1, spec, out_w, err_w, final=True)
        except BaseException:
            sandbox.destroy()
            raise
        return sandbox

    return (yield from stream_once(launch, deadline=deadline, max_output=max_output,
                                   owner=owner, cgroup=cgroup, secrets=secrets,
                                   cancel_fd=cancel_fd))


def stream_once(launch: Callable[[int, int], Sandbox], *, deadline: float, max_output: int,
                owner: tuple[int, int] | None, cgroup: SandboxCgroups | None,
                secrets: list[bytes] | None, cancel_fd: int) -> Generator[Chunk, None, RunOutcome]:
    """Start run 1 of a sandbox that ends with it (``launch(stdout_w, stderr_w)`` returns
    the sandbox, whole or destroyed), yield its output as it arrives, then destroy it.

    Returns when the process exits (a background child cannot hold the call open: its
    pipes are read to EOF only after the namespace is dead) or at the deadline. Only the
    wait is interruptible; setup and teardown defer signals, so a Ctrl-C (or any exception
    a signal handler raises) lands after the sandbox is fully built or fully gone, never
    between a spawn and its bookkeeping. ``secrets`` are masked in both streams before the
    cap applies. ``cancel_fd`` turning readable ends the run from another thread (the async
    engine's cancellation).
    """
    outcome = RunOutcome(CappedOutput(max_output, Masker(secrets or [])),
                         CappedOutput(max_output, Masker(secrets or [])))
    sandbox: Sandbox | None = None
    pipes: dict[int, tuple[str, Sink]] = {}
    write_ends: list[int] = []
    try:
        with signals_deferred():
            out_w, err_w = open_pipes(outcome, owner, pipes, write_ends)
            sandbox = launch(out_w, err_w)
            outcome.started_ns = time.monotonic_ns()  # the init's "spawned" refines it
            close_all(write_ends)  # ours must go, or the pipes never reach EOF
            write_ends.clear()
        try:
            yield from supervise(sandbox, outcome, pipes, deadline, cgroup, cancel_fd, 1)
        finally:
            with signals_deferred():
                sandbox.destroy()
                outcome.network = sandbox.network_usage()
        # Every writer is dead now: what is left in the pipes is read to EOF, capped.
        yield from flush_pipes(pipes)
    finally:
        with signals_deferred():
            if sandbox is not None:
                sandbox.destroy()
            close_all(write_ends)
            close_all(list(pipes))
    if outcome.error is not None:
        raise error_from_event(outcome.error)
    return outcome


def open_pipes(outcome: RunOutcome, owner: tuple[int, int] | None,
               pipes: dict[int, tuple[str, Sink]], write_ends: list[int]
               ) -> tuple[int, int]:
    """The run's stdout and stderr pipes, recorded in ``pipes`` (read ends, with their
    sinks) and ``write_ends`` as they are made, so the caller can always close them."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    pipes[out_r] = ("stdout", outcome.stdout)
    write_ends.append(out_w)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pipes[err_r] = ("stderr", outcome.stderr)
    write_ends.append(err_w)
    for fd in pipes:
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size for this user: the default works
        if owner is not None:
            os.fchown(fd, *owner)  # one inode per pipe: both ends change
    return out_w, err_w


def flush_pipes(pipes: dict[int, tuple[str, Sink]]) -> Generator[Chunk, None, None]:
    """The end of a run's output: what its pipes hold now, then what the maskers held."""
    for fd, (name, sink) in pipes.items():
        kept = sink.feed(drain(fd))
        if kept:
            yield name, kept
    for name, sink in pipes.values():
        kept = sink.end()
        if kept:
            yield name, kept


def supervise(sandbox: Sandbox, outcome: RunOutcome,
              pipes: dict[int, tuple[str, Sink]], deadline: float,
              cgroup: SandboxCgroups | None, cancel_fd: int,
              run_id: int, done: socket.socket | None = None) -> Generator[Chunk, None, None]:
    """Read the run's output and the helper's events until the run's exit, an OOM, an
    error, a cancellation or the deadline, whichever comes first (recorded in outcome).
    An error that names another run (one that could not start: a zygote, a process nobody
    waits for) is that run's own; one that names no run is the init's last word.

    ``done``: a REPL's socket, whose 4-byte status (or hang-up) ends a cell instead of an
    exit event."""
    poller = select.poll()
    poller.register(sandbox.fileno(), select.POLLIN)
    for fd in pipes:
        poller.register(fd, select.POLLIN)
    oom_fd = cgroup.oom_eventfd if cgroup else -1
    done_fd = done.fileno() if done is not None else -1
    for fd in (oom_fd, cancel_fd, done_fd):
        if fd >= 0:
            poller.register(fd, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            outcome.timed_out = True
            return
        for fd, _ in poller.poll(max(1, int(min(remaining, 3600) * 1000 + 0.999))):
            if fd in pipes:
                data = os.read(fd, _READ_CHUNK)
                if data:
                    name, sink = pipes[fd]
                    kept = sink.feed(data)
                    if kept:
                        yield name, kept
                else:
                    poller.unregister(fd)
                continue
            if fd == oom_fd:  # v1: the kernel OOM-killed a process; the sandbox ends now
                outcome.oom = True
                return
            if fd == cancel_fd:
                outcome.cancelled = True
                return
            if fd == done_fd:
                assert done is not None
                status = recv_or_hangup(done, 8)
                outcome.ended_ns = time.monotonic_ns()
                if len(status) == 4:
                    outcome.exit_code = int.from_bytes(status, "little", signed=True)
                else:
                    outcome.lost = True
                return
            event = sandbox.receive()
            if event is None:
                # The init died without reporting: a cgroup OOM kill of the whole sandbox
                # (v2 memory.oom.group) is one legitimate way; anything else is an error.
                outcome.gone = True
                if cgroup and cgroup.usage().oom:
                    outcome.oom = True
                else:
                    outcome.error = {"step": "helper", "syscall": "exit",
                                     "errno": errno.ECHILD, "path": ""}
                return
            kind = event["event"]
            if kind == "spawned" and event["id"] == run_id:
                outcome.started_ns = int(event["t"])
            elif kind == "oom":  # the init's watchdog killed the runs, or the sandbox
                outcome.oom = True
                outcome.peak_bytes = int(event["usage"])
                outcome.gone = "id" not in event
                return
            elif kind == "exit" and event["id"] == run_id:
                outcome.ended_ns = time.monotonic_ns()
                outcome.exit_code = event.get("code")  # type: ignore[assignment]
                outcome.signal = event.get("signal")  # type: ignore[assignment]
                outcome.cpu_us = event.get("cpu_us")  # type: ignore[assignment]
                outcome.peak_bytes = event.get("peak")  # type: ignore[assignment]
                return
            elif kind == "error" and event.get("id", run_id) == run_id:
                outcome.error = event
                return


def recv_or_hangup(sock: socket.socket, size: int) -> bytes:
    """Up to ``size`` bytes, or b"" once the peer has hung up. A peer that exits with bytes
    of ours unread makes af_unix report ECONNRESET once, before EOF (unix_release_sock): a
    hang-up all the same."""
    try:
        return sock.recv(size)
    except ConnectionResetError:
        return b""


def drain(fd: int) -> bytes:
    """What a pipe holds now: everything up to EOF when its writers are dead (at most the
    pipe's buffer), else what is there."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            break  # a writer lives on (a persistent sandbox's background process)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def warn_unmapped(event: dict[str, Any]) -> None:
    """As root, a mount the helper could not idmap keeps the plain ownership: say so, once
    per mount and reason (the warnings registry), since its files then behave otherwise."""
    warnings.warn(f"isol8: mount {event['target']} is not idmapped ({event['reason']}): host "
                  "files show as nobody inside and only their 'other' permission bits apply",
                  RuntimeWarning, stacklevel=2)


def is_start_failure(event: dict[str, Any]) -> bool:
    """Whether an "error" event is one run's failure to start (it names the run), after
    which the init lives on, rather than the init's own failure, after which it is gone."""
    return "id" in event


def error_from_event(event: dict[str, Any]) -> Isol8Error:
    if is_start_failure(event):
        return ProcessStartFailed(str(event["syscall"]), int(event["errno"]), str(event["path"]))
    return SandboxSetupError(str(event["step"]), str(event["syscall"]), int(event["errno"]),
                             str(event["path"]))
