"""The server's audit log (``isol8 serve --audit FILE``): one JSON line per execution; or,
behind a balancer, one row per execution in a PostgreSQL table every node shares (``--audit
postgresql://...``, :mod:`isol8.server.audit_postgres`).

A line has upstream's ``ExecutionAudit`` fields (isol8-api.md §5.10: ``executionId``,
``userId``, ``timestamp``, ``runtime``, ``codeHash``, ``exitCode``, ``durationMs``,
``resourceUsage``, ``securityEvents``, ``networkLogs``), plus ``sessionId`` and ``mode``; the
code (``code`` or ``cmd``, and ``setupScript``) with ``include_code``, and ``stdout`` and
``stderr`` with ``include_output`` (upstream's switches never put them on the record).
``executionId`` is the result's own, so a line can be found from a response.

The request's secrets never reach the file: every string written is masked as the engine
masks output (``***``), code and network paths included, and ``codeHash`` is the hash of the
masked code, since the hash of the real one would let anyone holding the log test guesses
of a short secret offline. It equals upstream's ``sha256(code)`` whenever the code holds no
secret. Env values, stdin, injected and fetched files are never written.

``record`` runs on the event loop after every run, so it only queues the run (a few
microseconds); one writer thread builds and appends the lines. Each line is one
``write(2)`` to a file opened ``O_APPEND``, which appends atomically to a regular file
(POSIX write(2): "the file offset shall be set to the end of the file prior to each write"
and Linux holds the inode lock for the write), so lines stay whole even beside another
process appending to the same file. A failing write is logged, never raised: an audit
problem must not fail the request that was already served.

Into PostgreSQL the writer inserts what is queued in batches, one transaction each. While the
database is unreachable (a restart, a failover) it retries a batch for about
``sum(INSERT_RETRIES)`` seconds, records queuing meanwhile within the same bounds, so a short
outage loses nothing; a longer one drops the batch, logged and counted as a failed write is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, TypeVar

from ..errors import InvalidRequest
from ..result import ExecutionResult
from ..secrets import MASK
from .keystore import StoreUnavailable, is_postgres_url
from .runs import mode_of
from .wire import ExecuteBody

if TYPE_CHECKING:
    from .audit_postgres import AuditTable

log = logging.getLogger(__name__)
T = TypeVar("T")

# Runs queued for the writer, in number and in characters of code and output: beyond
# either (a log file that stopped taking writes) runs are dropped and counted rather than
# held in memory without bound. The writer does tens of thousands of lines a second, far
# more than sandboxes can finish, so neither is reached while the file takes writes.
MAX_PENDING = 10_000
MAX_PENDING_CHARS = 256 << 20
CLOSE_TIMEOUT = 10.0
#: Rows per INSERT transaction into PostgreSQL, and the waits before retrying a batch.
INSERT_BATCH = 500
INSERT_RETRIES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
_MASK = MASK.decode()

# limits_reached names (isol8.limits.REACHED_ORDER) -> security event type and message.
LIMIT_EVENTS = {
    "pids": ("pids_limit", "a process or thread was refused at the pids limit"),
    "memory": ("oom", "the run reached its memory limit"),
    "output": ("output_truncated", "the output was cut at the output limit"),
    "file_size": ("file_size_limit", "a process was killed writing past the file size limit"),
    "timeout": ("timeout", "the run reached its time limit and was killed"),
}


class _Run:
    """What one line is made of, taken on the caller's thread: the body's dicts are not
    the writer's to read later. ``result`` is None for a run that ended without one, which
    ``failure`` (outcome, exception) describes instead."""

    __slots__ = ("owner", "result", "failure", "runtime", "at", "session_id", "mode", "code",
                 "secrets", "size")

    def __init__(self, owner: str, parsed: ExecuteBody, result: ExecutionResult | None,
                 output: bool, failure: tuple[str, BaseException] | None = None) -> None:
        # Fetched files are never written, nor the output unless asked: not kept either.
        self.result = result and replace(result, files=None,
                                         stdout=result.stdout if output else "",
                                         stderr=result.stderr if output else "")
        self.failure = failure and (failure[0], type(failure[1]).__name__, str(failure[1]))
        self.owner, self.at = owner, time.time()
        self.session_id, self.mode = parsed.session_id, mode_of(parsed)
        request = parsed.request
        runtime = request.get("runtime")
        self.runtime = runtime if isinstance(runtime, str) else None
        self.code = {name: value for name in ("code", "cmd", "setupScript")
                     if isinstance(value := request.get(name), str)}
        secrets = parsed.options.get("secrets")
        values = secrets.values() if isinstance(secrets, dict) else ()
        self.secrets = sorted({v for v in values if isinstance(v, str) and v}, key=len,
                              reverse=True)
        self.size = sum(map(len, self.code.values()))
        if self.result is not None:
            self.size += len(self.result.stdout) + len(self.result.stderr)


class AuditLog:
    """Appends one JSON line per execution to ``path`` (no path: records nothing), or a row
    to the ``audit_log`` table when ``path`` is a ``postgresql://`` URL; ``node`` names this
    node on its rows (default ``$ISOL8_NODE``, else the host name).

    The file is created 0600, and an existing regular file with group or other bits is
    tightened to 0600: with ``include_code`` it holds every tenant's code."""

    def __init__(self, path: str | None = None, *, include_code: bool = False,
                 include_output: bool = False, node: str | None = None) -> None:
        self.path, self.include_code, self.include_output = path, include_code, include_output
        self.name = path  # for messages: a URL's password is not for the logs
        self._queue: queue.Queue[_Run | None] = queue.Queue(MAX_PENDING)
        self._dropped = self._failed = self._pending_chars = 0
        self._lock = threading.Lock()  # the pending counts, taken by callers and the writer
        self._closed = False
        self._closing = threading.Event()  # cuts the writer's waits between retries short
        self._thread: threading.Thread | None = None
        if path is None:
            return
        if is_postgres_url(path):
            table = _open_table(path, node or os.environ.get("ISOL8_NODE")
                                or socket.gethostname())
            self.name = table.name
            self._thread = threading.Thread(target=self._insert_all, args=(table,),
                                            name="isol8-audit", daemon=True)
        else:
            # The writer owns the descriptor and closes it as it ends: were close() to do it
            # under a writer stuck in write(2), the write could land in whatever file the
            # number is reused for.
            fd = _open(path)
            self._thread = threading.Thread(target=self._write_all, args=(fd,),
                                            name="isol8-audit", daemon=True)
        self._thread.start()

    def record(self, owner: str, parsed: ExecuteBody, result: ExecutionResult) -> None:
        """Queue a finished run's line. Never raises, never blocks."""
        self._enqueue(lambda: _Run(owner, parsed, result, self.include_output))

    def failed(self, owner: str, parsed: ExecuteBody, outcome: str,
               error: BaseException) -> None:
        """Queue the line of a run that ended without a result: ``refused`` by the server
        policy (the requests an operator most wants to see), ``failed`` (its setup script,
        its sandbox's start, a lost session) or ``cancelled`` (the client left, or the drain
        deadline came). Never raises, never blocks."""
        self._enqueue(lambda: _Run(owner, parsed, None, self.include_output,
                                   (outcome, error)))

    def _enqueue(self, take: Callable[[], _Run]) -> None:
        if self._thread is None or self._closed:
            return
        try:
            run = take()
        except Exception:  # a malformed body must not fail a request already served
            log.exception("audit log %s: a record could not be taken", self.name)
            return
        with self._lock:
            if self._pending_chars + run.size <= MAX_PENDING_CHARS:
                try:
                    self._queue.put_nowait(run)
                    self._pending_chars += run.size
                    return
                except queue.Full:
                    pass
            self._dropped += 1
            dropped = self._dropped
        if dropped == 1 or dropped % 1000 == 0:
            log.error("audit log %s: %d records dropped, its writes are not keeping up",
                      self.name, dropped)

    def close(self) -> None:
        """Write what is queued and end the writer, within ``CLOSE_TIMEOUT``. A writer stuck
        in ``write(2)`` that long (a file that stopped taking writes) is left to end when
        the write returns, and what is still queued is dropped."""
        if self._thread is None or self._closed:
            return
        self._closed = True
        self._closing.set()
        deadline = time.monotonic() + CLOSE_TIMEOUT
        try:
            self._queue.put(None, timeout=CLOSE_TIMEOUT)
        except queue.Full:
            lost = 0
            while True:  # make room for the end: the writer would wait for it forever
                try:
                    self._queue.put_nowait(None)
                    break
                except queue.Full:
                    with contextlib.suppress(queue.Empty):
                        self._queue.get_nowait()
                        lost += 1
            log.error("audit log %s: %d records dropped at shutdown, its writes are stuck",
                      self.name, lost)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.error("audit log %s: the writer is stuck in a write, left behind", self.name)

    def _write_all(self, fd: int) -> None:
        try:
            while (run := self._queue.get()) is not None:
                with self._lock:
                    self._pending_chars -= run.size
                try:
                    data = self.line(run)
                except Exception:
                    log.exception("audit log %s: a record could not be built", self.name)
                    continue
                self._write(fd, data)
        finally:
            os.close(fd)

    def _insert_all(self, table: AuditTable) -> None:
        try:
            ending = False
            while not ending and (run := self._queue.get()) is not None:
                batch = [run]
                while len(batch) < INSERT_BATCH:
                    try:
                        run = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if run is None:
                        ending = True
                        break
                    batch.append(run)
                with self._lock:
                    self._pending_chars -= sum(run.size for run in batch)
                entries = []
                for run in batch:
                    try:
                        entries.append(self.entry(run))
                    except Exception:
                        log.exception("audit log %s: a record could not be built", self.name)
                self._insert(table, entries)
        finally:
            table.close()

    def _insert(self, table: AuditTable, entries: list[dict[str, object]]) -> None:
        """Insert one batch, retrying while the database is unreachable (not once closing:
        the shutdown is bounded); a batch it refuses is dropped at once."""
        waits = iter(INSERT_RETRIES)
        while entries:
            try:
                table.insert(entries)
            except StoreUnavailable as exc:
                wait = next(waits, None)
                if wait is not None and not self._closing.wait(wait):
                    continue
                problem = str(exc)
            except Exception as exc:  # a row the database refused: retrying cannot help
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if self._failed:
                    log.error("audit log %s: writing again after %d lost records", self.name,
                              self._failed)
                    self._failed = 0
                return
            if not self._failed:
                log.error("audit log %s: %d records lost: %s", self.name, len(entries),
                          problem)
            self._failed += len(entries)
            return

    def _write(self, fd: int, data: bytes) -> None:
        try:
            while data:  # a short write only after an error or a signal: finish the line
                data = data[os.write(fd, data):]
        except OSError as exc:
            self._failed += 1
            if self._failed == 1:
                log.error("audit log %s: write failed: %s", self.name, exc.strerror or exc)
            return
        if self._failed:
            log.error("audit log %s: writing again after %d lost records", self.name,
                      self._failed)
            self._failed = 0

    def line(self, run: _Run) -> bytes:
        """The run's JSON line (ASCII: a code's lone surrogates are escaped, not lost)."""
        return (json.dumps(self.entry(run), separators=(",", ":")) + "\n").encode()

    def entry(self, run: _Run) -> dict[str, object]:
        result = run.result
        code = _masked(run.code, run.secrets)
        source = code.get("code", code.get("cmd", ""))
        at = _iso(run.at)
        entry: dict[str, object] = {
            "executionId": result.execution_id if result else str(uuid.uuid4()),
            "userId": run.owner,
            "timestamp": at,
            "runtime": result.runtime if result else run.runtime,
            "codeHash": hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest(),
            "exitCode": result.exit_code if result else None,
            "durationMs": result.duration_ms if result else None,
            "resourceUsage": result.resource_usage.to_dict() if result else None,
            "securityEvents": security_events(result, at) if result else [],
            "sessionId": run.session_id,
            "mode": run.mode,
        }
        if run.failure is not None:
            outcome, kind, message = run.failure
            entry.update(outcome=outcome, error={"type": kind, "message": message})
            if outcome == "refused":
                entry["securityEvents"] = [{"type": "policy_refused", "message": message,
                                            "timestamp": at}]
        if result is not None and result.network_logs:
            entry["networkLogs"] = [item.to_dict() for item in result.network_logs]
        if self.include_output and result is not None:
            entry.update(stdout=result.stdout, stderr=result.stderr)
        masked = _masked(entry, run.secrets)
        masked["codeHash"] = entry["codeHash"]  # a hex digest: masking must not touch it
        if self.include_code:
            masked.update(code)  # masked once, as hashed
        return masked


def security_events(result: ExecutionResult, at: str) -> list[dict[str, object]]:
    """Upstream's ``SecurityEvent`` shape (``type``, ``message``, ``details``?,
    ``timestamp``): each limit the run reached, then each request the filter blocked."""
    reached = list(result.resource_usage.limits_reached)
    if result.resource_usage.oom and "memory" not in reached:
        reached.append("memory")
    if result.truncated and "output" not in reached:
        reached.append("output")
    events: list[dict[str, object]] = []
    for name, (kind, message) in LIMIT_EVENTS.items():
        if name in reached:
            events.append({"type": kind, "message": message, "timestamp": at})
    for entry in result.network_logs or ():
        if entry.action == "BLOCK":
            events.append({
                "type": "network_blocked",
                "message": f"{entry.method} {entry.host} blocked by the network filter",
                "details": {"method": entry.method, "host": entry.host, "path": entry.path,
                            "reason": entry.reason},
                "timestamp": entry.timestamp})
    return events


def _masked(value: T, secrets: list[str]) -> T:
    """Every string in ``value`` (nested dicts and lists) with each secret, longest first,
    replaced by the mask: where one secret contains another, the whole of it goes."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, _MASK)  # type: ignore[assignment]
        return value
    if isinstance(value, dict):
        return {key: _masked(item, secrets) for key, item in value.items()}  # type: ignore
    if isinstance(value, list):
        return [_masked(item, secrets) for item in value]  # type: ignore[return-value]
    return value


def _iso(at: float) -> str:
    """ISO 8601 in UTC, as the engine writes a result's ``timestamp``."""
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds")


def _open_table(url: str, node: str) -> AuditTable:
    try:
        from .audit_postgres import AuditTable
    except ImportError as exc:
        raise InvalidRequest(f"--audit postgresql://... needs the postgres extra "
                             f"(pip install 'isol8[postgres]'): {exc}") from None
    return AuditTable(url, node)


def _open(path: str) -> int:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise InvalidRequest(f"audit log {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        # Not a device such as /dev/stdout: its mode is the system's, not ours to change.
        if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    except OSError as exc:
        os.close(fd)
        raise InvalidRequest(f"audit log {path}: {exc.strerror}") from None
    return fd
