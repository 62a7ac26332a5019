"""The remote clients' shared core, free of I/O (httpx's model): what each call sends, how
each answer becomes a result, an event or the engine's own exception, and when a call may
be repeated. ``RemoteIsol8`` and ``AsyncRemoteIsol8`` differ only in how they wait.

The wire is upstream's (isol8-api.md §4.1): camelCase JSON, ``{request, options,
sessionId}`` bodies, ``ExecutionResult.to_dict()`` answers and ``{error, type?}`` errors.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from ..errors import (InvalidRequest, Isol8Error, ProcessStartFailed, RuntimeNotAvailable,
                      SandboxSetupError, SessionLost, SetupScriptFailed)
from ..limits import LimitsUnavailable
from ..packages import PackageInstallFailed
from ..result import ExecutionResult, NetworkLog, ResourceUsage, StreamEvent
from .errors import (AuthenticationError, CapacityExceeded, NotFound, OptionsConflict,
                     RemoteConnectionError, RemoteError, RemoteFileNotFound, RequestTooLarge,
                     SessionNotFound, ShuttingDown)

# Engine keyword -> the wire's option name (isol8.server.wire.OPTION_FIELDS, reversed; a test
# keeps the two equal). ``seccomp`` travels as ``security: {seccomp}``.
OPTION_NAMES = {
    "network": "network", "network_filter": "networkFilter", "cpu_limit": "cpuLimit",
    "memory_limit": "memoryLimit", "pids_limit": "pidsLimit",
    "max_output_size": "maxOutputSize", "sandbox_size": "sandboxSize", "tmp_size": "tmpSize",
    "timeout_ms": "timeoutMs", "secrets": "secrets", "log_network": "logNetwork",
    "tmp_exec": "tmpExec", "strict_limits": "strictLimits", "repl": "repl",
    "mounts": "mounts", "seccomp": "security", "rootfs": "image",
}
FILTER_NAMES = {"whitelist": "whitelist", "blacklist": "blacklist",
                "allow_private": "allowPrivate", "hosts": "hosts",
                "max_connections": "maxConnections", "capture": "capture"}
REQUEST_NAMES = {
    "code": "code", "runtime": "runtime", "cmd": "cmd", "timeout_ms": "timeoutMs",
    "env": "env", "stdin": "stdin", "file_extension": "fileExtension", "files": "files",
    "workdir": "workdir", "output_paths": "outputPaths", "setup_script": "setupScript",
    "install_packages": "installPackages", "code_url": "codeUrl", "code_hash": "codeHash",
    "allow_insecure_code_url": "allowInsecureCodeUrl",
}
# Local engine settings that belong to the server's host, not to a request.
SERVER_SIDE = ("uid_range", "cgroup_parent", "pool_size", "pool_strategy", "prewarm",
               "workspace_dir", "max_concurrent", "package_index_url", "package_cache",
               "remote_code")

DEFAULT_RUN_TIMEOUT_MS = 30_000  # the engine's default timeout_ms
# A run's answer may wait for admission (the server's queue) and a setup script on top of
# the run itself; beyond this slack a silent server is reported as RemoteTimeout.
ANSWER_SLACK_S = 60.0
CALL_TIMEOUT_S = 30.0  # everything that is not a run
CONNECT_TIMEOUT_S = 10.0
_FIELD = re.compile(r"^([A-Za-z_][\w.]*(?:\[[^\]]*\])?): ")


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request: ``path`` relative to the host, a JSON body or query parameters."""

    method: str
    path: str
    body: object = None
    params: Mapping[str, str] | None = None
    timeout: float = CALL_TIMEOUT_S

    @property
    def idempotent(self) -> bool:
        """Only a GET may be repeated after a broken connection: a POST or DELETE may
        have been carried out already."""
        return self.method == "GET"


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer, headers lower-cased."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One entry of ``GET /sessions`` (upstream's ``{id, isActive, lastAccessedAt}``)."""

    id: str
    is_active: bool
    last_accessed_at: int  # ms since the epoch


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteExecutionResult(ExecutionResult):
    """An ``ExecutionResult`` from a server, plus what its policy lowered: ``clamped`` is
    ``[{field, requested, applied}]``, empty when every option was within its ceiling."""

    clamped: list[dict[str, object]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        wire = ExecutionResult.to_dict(self)
        if self.clamped:
            wire["clamped"] = [dict(entry) for entry in self.clamped]
        return wire


WS_PATH = "/execute/ws"
STREAMING = ("auto", "websocket", "sse")


def ws_query(message: object) -> dict[str, str]:
    """The WebSocket upgrade's query for the ``execute`` message ``message``: its session
    id, which a balancer pinning sessions (deploy/haproxy) can only read there, since the
    upgrade has no body. The server reads the message's own."""
    sid = message.get("sessionId") if isinstance(message, dict) else None
    return {"sessionId": sid} if isinstance(sid, str) else {}


class Core:
    """Everything a remote client knows, and every decision it makes, without I/O. The sync
    and async clients take the same arguments and hand them here whole."""

    def __init__(self, host: str, api_key: str | None, session_id: str | None,
                 options: Mapping[str, object], *, streaming: str = "auto",
                 http_timeout: float | None = None, max_retries: int = 3,
                 max_retry_wait: float = 30.0) -> None:
        self.base_url = _base_url(host)
        if streaming not in STREAMING:
            raise InvalidRequest(f"streaming: expected one of {', '.join(STREAMING)}, got "
                                 f"{streaming!r}")
        self.streaming = streaming
        if api_key is None:
            api_key = os.environ.get("ISOL8_API_KEY")
        if session_id is not None and (not isinstance(session_id, str) or not session_id):
            raise InvalidRequest(f"session_id: expected a non-empty string, got {session_id!r}")
        self.session_id = session_id
        self.options = wire_options(options, session_id)
        self.headers = {"Accept": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        if http_timeout is not None and (isinstance(http_timeout, bool)
                                         or not isinstance(http_timeout, (int, float))
                                         or not http_timeout > 0):
            raise InvalidRequest(f"http_timeout: expected seconds > 0, got {http_timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidRequest(f"max_retries: expected an integer >= 0, got {max_retries!r}")
        self.http_timeout = http_timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait

    # -- calls ------------------------------------------------------------------------------

    def health(self) -> Call:
        return Call("GET", "/health")

    def execute(self, code: str | None, fields: Mapping[str, object]) -> Call:
        body = self.execute_body(code, fields)
        return Call("POST", "/execute", body, timeout=self.run_timeout(body))

    def stream(self, code: str | None, fields: Mapping[str, object]) -> Call:
        """``POST /execute/stream`` (SSE); the WebSocket sends ``ws_message(call)``."""
        body = self.execute_body(code, fields)
        return Call("POST", "/execute/stream", body, timeout=self.run_timeout(body))

    @staticmethod
    def ws_message(call: Call) -> dict[str, object]:
        """The WebSocket's ``execute`` message: the same body, ``sessionId`` included
        (upstream's client leaves it out, so its WS streams are never in the session)."""
        assert isinstance(call.body, dict)
        return {"type": "execute", **call.body}

    def execute_body(self, code: str | None, fields: Mapping[str, object]) -> dict[str, object]:
        body: dict[str, object] = {"request": wire_request(code, fields)}
        if self.options:
            body["options"] = self.options
        if self.session_id is not None:
            body["sessionId"] = self.session_id
        return body

    def put_file(self, path: str, content: str | bytes) -> Call:
        sid = self._require_session("put_file")
        if isinstance(content, str):
            content = content.encode()
        if not isinstance(content, (bytes, bytearray, memoryview)):
            raise InvalidRequest(f"put_file: content of {path} must be str or bytes")
        return Call("POST", "/file", {"sessionId": sid, "path": _path(path, "put_file"),
                                      "content": base64.b64encode(content).decode()})

    def get_file(self, path: str) -> Call:
        sid = self._require_session("get_file")
        return Call("GET", "/file", params={"sessionId": sid, "path": _path(path, "get_file")})

    def sessions(self) -> Call:
        return Call("GET", "/sessions")

    def delete_session(self, session_id: str | None = None) -> Call:
        sid = session_id if session_id is not None else self.session_id
        if not isinstance(sid, str) or not sid:
            raise InvalidRequest(f"session id: expected a non-empty string, got {sid!r}")
        return Call("DELETE", "/session/" + quote(sid, safe=""))

    def _require_session(self, what: str) -> str:
        if self.session_id is None:
            raise Isol8Error(f"{what}: needs a session (RemoteIsol8(session_id=...)): an "
                             "ephemeral sandbox is gone when its run ends")
        return self.session_id

    def run_timeout(self, body: Mapping[str, object]) -> float:
        """How long to wait for a run's answer: the run's own timeout plus the slack."""
        if self.http_timeout is not None:
            return float(self.http_timeout)
        request, options = body["request"], body.get("options") or {}
        assert isinstance(request, dict) and isinstance(options, dict)
        ms = request.get("timeoutMs") or options.get("timeoutMs") or DEFAULT_RUN_TIMEOUT_MS
        return (ms / 1000 if isinstance(ms, (int, float)) else 0) + ANSWER_SLACK_S

    def timeout_of(self, call: Call) -> float:
        return self.http_timeout if self.http_timeout is not None else call.timeout

    # -- answers ----------------------------------------------------------------------------

    def checked(self, answer: Answer) -> object:
        """The answer's JSON, or the exception its error stands for."""
        if answer.status >= 400:
            raise error_from(answer)
        try:
            return json.loads(answer.body)
        except ValueError:
            raise RemoteError(f"the server answered {answer.status} with a body that is not "
                              f"JSON: {answer.body[:200]!r}", answer.status) from None

    def check_health(self, answer: Answer) -> None:
        body = self.checked(answer)
        if not isinstance(body, dict) or body.get("status") != "ok":
            raise RemoteError(f"Remote server health check failed: {body!r}", answer.status)

    def result(self, answer: Answer) -> RemoteExecutionResult:
        return result_from_wire(self.checked(answer))

    def file_content(self, answer: Answer) -> bytes:
        body = self.checked(answer)
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str):
            raise RemoteError(f"GET /file: no content in {body!r}", answer.status)
        try:
            return base64.b64decode(content, validate=True)
        except binascii.Error as exc:
            raise RemoteError(f"GET /file: content is not base64: {exc}", answer.status) from None

    def session_list(self, answer: Answer) -> list[SessionInfo]:
        body = self.checked(answer)
        entries = body.get("sessions") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            raise RemoteError(f"GET /sessions: no sessions in {body!r}", answer.status)
        return [SessionInfo(str(e["id"]), bool(e.get("isActive")),
                            int(e.get("lastAccessedAt") or 0)) for e in entries]

    def retry_delay(self, call: Call, attempt: int, answer: Answer | None = None,
                    error: Exception | None = None) -> float | None:
        """Seconds to wait before repeating ``call`` (``attempt`` retries done so far), or
        None to give up. A 429 was refused before anything ran, so it is repeated whatever
        the method, after the server's ``Retry-After`` (never without one, never beyond
        ``max_retry_wait``); a broken connection or a 502/503/504 only for a GET."""
        if attempt >= self.max_retries:
            return None
        if answer is not None and answer.status == 429:
            wait = retry_after(answer.headers)
            return wait if wait is not None and wait <= self.max_retry_wait else None
        transient = (error is not None or (answer is not None
                                           and answer.status in (502, 503, 504)))
        if transient and call.idempotent:
            return float(min(0.2 * 2**attempt, self.max_retry_wait))
        return None


def wire_options(options: Mapping[str, object], session_id: str | None) -> dict[str, object]:
    """The engine's keyword options as the wire's ``options`` (the server validates the
    values, and names the wire's field when it refuses one)."""
    out: dict[str, object] = {}
    for name, value in options.items():
        if name == "mode":
            wanted = "persistent" if session_id is not None else "ephemeral"
            if value != wanted:
                raise InvalidRequest(f"mode: a remote engine is persistent exactly when it "
                                     f"has a session_id (here {wanted}), got {value!r}")
            continue
        if name in SERVER_SIDE:
            raise InvalidRequest(f"{name}: a setting of the server's host, which its operator "
                                 "chooses; RemoteIsol8 cannot send it")
        if name not in OPTION_NAMES:
            raise InvalidRequest(f"{name}: unknown option (RemoteIsol8 sends "
                                 f"{', '.join(sorted(OPTION_NAMES))})")
        if value is None:
            continue
        if name == "seccomp":
            out["security"] = {"seccomp": value}
        elif name == "network_filter" and isinstance(value, Mapping):
            out["networkFilter"] = {FILTER_NAMES.get(k, k): v for k, v in value.items()}
        elif name == "mounts" and isinstance(value, (list, tuple)):
            out["mounts"] = [dict(m) if isinstance(m, Mapping) else m for m in value]
        else:
            out[OPTION_NAMES[name]] = dict(value) if isinstance(value, Mapping) else value
    return out


def wire_request(code: str | None, fields: Mapping[str, object]) -> dict[str, object]:
    """``execute()``'s arguments as the wire's ``request``. Bytes travel as text when they
    are UTF-8 (the same bytes arrive), file contents that are not as a Node ``Buffer``
    (``{"type": "Buffer", "data": [...]}``, what upstream's client sends for one)."""
    out: dict[str, object] = {}
    for name, value in {"code": code, **fields}.items():
        if name not in REQUEST_NAMES:
            raise InvalidRequest(f"{name}: unknown request field (execute() takes "
                                 f"{', '.join(sorted(REQUEST_NAMES))})")
        if value is None:
            continue
        if name == "stdin" and isinstance(value, (bytes, bytearray, memoryview)):
            try:
                value = bytes(value).decode()
            except UnicodeDecodeError:
                raise InvalidRequest("stdin: the wire carries stdin as text: bytes must be "
                                     "UTF-8") from None
        elif name == "files" and isinstance(value, Mapping):
            value = {path: _file_content(content) for path, content in value.items()}
        elif name in ("env",) and isinstance(value, Mapping):
            value = dict(value)
        elif name == "output_paths" and isinstance(value, tuple):
            value = list(value)
        out[REQUEST_NAMES[name]] = value
    return out


def _file_content(content: object) -> object:
    if isinstance(content, (bytes, bytearray, memoryview)):
        data = bytes(content)
        try:
            return data.decode()
        except UnicodeDecodeError:
            return {"type": "Buffer", "data": list(data)}
    return content


def _path(path: object, what: str) -> str:
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise InvalidRequest(f"{what}: {path!r} must be an absolute path")
    return path


def _base_url(host: object) -> str:
    if not isinstance(host, str):
        raise InvalidRequest(f"host: expected a URL such as http://127.0.0.1:3000, got {host!r}")
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
            or parts.fragment:
        raise InvalidRequest(f"host: expected a URL such as http://127.0.0.1:3000, got {host!r}")
    return host.rstrip("/")


# -- results, events, errors ------------------------------------------------------------------

def result_from_wire(wire: object) -> RemoteExecutionResult:
    """``ExecutionResult.to_dict()`` read back. Upstream's server sends ``resourceUsage``
    only with auditing on, and without isol8's fields: absent ones get their defaults."""
    try:
        if not isinstance(wire, dict):
            raise TypeError(f"expected an object, got {type(wire).__name__}")
        usage = wire.get("resourceUsage") or {}
        logs = wire.get("networkLogs")
        return RemoteExecutionResult(
            stdout=wire["stdout"], stderr=wire["stderr"], exit_code=int(wire["exitCode"]),
            duration_ms=int(wire["durationMs"]), truncated=bool(wire["truncated"]),
            execution_id=wire["executionId"], runtime=wire["runtime"],
            timestamp=wire["timestamp"],
            resource_usage=ResourceUsage(
                cpu_time_ms=int(usage.get("cpuTimeMs", 0)),
                cpu_percent=float(usage.get("cpuPercent", 0)),
                memory_mb=usage.get("memoryMB"), peak_memory_mb=usage.get("peakMemoryMB"),
                oom=bool(usage.get("oom", False)), enforced=dict(usage.get("enforced", {})),
                network_bytes_in=usage.get("networkBytesIn"),
                network_bytes_out=usage.get("networkBytesOut"),
                limits_reached=list(usage.get("limitsReached", []))),
            files=dict(wire["files"]) if wire.get("files") is not None else None,
            network_logs=[NetworkLog(e["timestamp"], e["method"], e["host"], e.get("path"),
                                     e["action"], int(e["durationMs"])) for e in logs]
            if logs else None,
            clamped=list(wire.get("clamped") or []))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RemoteError(f"the server's result is not an ExecutionResult ({exc!r}): "
                          f"{str(wire)[:200]}") from None


def event_from_wire(raw: str | bytes) -> StreamEvent:
    """One streamed event. A server's failure report (an ``error`` event with no
    ``phase``, as upstream's server sends when the run could not happen, or one carrying
    ``status``) is raised as ``Rejected``, for the caller to raise the exception it stands
    for, as the local engine raises it."""
    try:
        wire = json.loads(raw)
        kind, data = wire["type"], wire.get("data", "")
        if not isinstance(kind, str) or not isinstance(data, str):
            raise TypeError("type and data must be strings")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RemoteError(f"the server sent an event that is not a StreamEvent: "
                          f"{str(raw)[:200]}") from None
    if kind == "error" and ("phase" not in wire or "status" in wire):
        # isol8's server adds what POST /execute would have answered: ``status``,
        # ``errorType`` (its ``type``), 409's ``fields``, 429's ``retryAfter``.
        status = wire.get("status") if isinstance(wire.get("status"), int) else 500
        error = {k: v for k, v in wire.items()
                 if k not in ("type", "data", "status", "errorType", "retryAfter")}
        error.update(error=data, type=wire.get("errorType"))
        retry = wire.get("retryAfter")
        headers = {"retry-after": str(retry)} if isinstance(retry, int) else {}
        raise Rejected(Answer(status, headers, json.dumps(error).encode()))
    return StreamEvent(type=kind, data=data, phase=wire.get("phase", "code"),
                       limits_reached=list(wire.get("limitsReached") or []))


class Rejected(Exception):
    """A streamed run was refused before any event (``answer`` says why): nothing ran, so
    the client may retry it (a 429) or raises ``error_from(answer)``."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(f"HTTP {answer.status}")
        self.answer = answer


class EventReader:
    """A run's streamed events, read one by one: knows when the run's last event came, so
    a connection that ends before it is an error rather than a silently short stream."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.done = False
        self._last: StreamEvent | None = None

    def feed(self, raw: str | bytes) -> StreamEvent:
        try:
            event = event_from_wire(raw)
        except Rejected as rejected:
            if self._last is None:
                raise
            raise error_from(rejected.answer) from None
        # The last event is the code's exit, or a failed setup script's (after its error).
        self.done = event.type == "exit" and (
            event.phase == "code" or (self._last is not None and self._last.type == "error"))
        self._last = event
        return event

    def end(self) -> None:
        if not self.done:
            raise RemoteConnectionError(f"{self.url}: the stream ended before the run's exit "
                                        "event")


# The engine's exceptions a server names in ``type``; the server's own validation error
# (WireError) is an InvalidRequest to the caller.
_ENGINE_TYPES: dict[str, type[Isol8Error]] = {
    cls.__name__: cls for cls in (InvalidRequest, RuntimeNotAvailable, SetupScriptFailed,
                                  SessionLost, SandboxSetupError, ProcessStartFailed,
                                  LimitsUnavailable, PackageInstallFailed)}
_ENGINE_TYPES["WireError"] = InvalidRequest
_BY_STATUS: dict[int, type[RemoteError]] = {
    401: AuthenticationError, 403: AuthenticationError, 404: NotFound,
    409: OptionsConflict, 413: RequestTooLarge, 429: CapacityExceeded, 503: ShuttingDown}
# A 404 carries no type: its message tells a session from a file (isol8.server.routes.files;
# "No active container" is upstream's and the engine's words for a session not started).
_NOT_FOUND = {"Session not found": SessionNotFound, "No active container": SessionNotFound,
              "File not found": RemoteFileNotFound}


def error_from(answer: Answer) -> Isol8Error:
    """The exception an error answer stands for: the engine's own class when the server
    names one, else one of isol8.client.errors by status. Every one has ``status``."""
    try:
        body = json.loads(answer.body)
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    message = body.get("error")
    if not isinstance(message, str):
        text = answer.body[:200].decode("utf-8", "replace").strip()
        message = f"HTTP {answer.status}" + (f": {text}" if text else "")
    status = answer.status
    engine_type = _ENGINE_TYPES.get(str(body.get("type")))
    exc: Isol8Error
    if (engine_type is None and status in (400, 422)) or engine_type is InvalidRequest:
        exc = InvalidRequest(message)
        exc.field = body.get("field") or _leading_field(message)  # type: ignore[attr-defined]
    elif engine_type is not None:
        exc = _rebuilt(engine_type, message, body)
    elif status == 410:
        exc = SessionLost(message)
    elif status == 409:
        fields = body.get("fields")
        exc = OptionsConflict(message, status, list(fields) if isinstance(fields, list) else [])
    elif status == 429:
        exc = CapacityExceeded(message, status, retry_after(answer.headers))
    elif status == 401 and "Authorization" in message:
        exc = AuthenticationError(f"{message} (pass api_key=, or set ISOL8_API_KEY)", status)
    elif status == 404:
        kind = next((k for prefix, k in _NOT_FOUND.items() if message.startswith(prefix)),
                    NotFound)
        exc = kind(message, status)
    else:
        exc = _BY_STATUS.get(status, RemoteError)(message, status)
    exc.status = status  # type: ignore[attr-defined]
    return exc


def _rebuilt(cls: type[Isol8Error], message: str, body: Mapping[str, object]) -> Isol8Error:
    """The engine's exception with the server's message. Its constructor wants what only
    the server saw (a syscall, an errno), so it is bypassed; what the answer carries is
    filled in."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    if isinstance(exc, SetupScriptFailed):
        stderr = str(body.get("stderr") or "")
        exc.exit_code = int(body.get("exitCode") or 1)  # type: ignore[call-overload]
        exc.stdout, exc.stderr = str(body.get("stdout") or ""), stderr
        exc.reason = message[:-len(stderr) - 2] if stderr and message.endswith(
            ": " + stderr) else message
    elif isinstance(exc, PackageInstallFailed):
        exc.exit_code = int(body.get("exitCode") or 1)  # type: ignore[call-overload]
        exc.stderr = str(body.get("stderr") or "")
    elif isinstance(exc, SandboxSetupError):
        exc.step, exc.syscall, exc.errno, exc.path, exc.hint = "", "", 0, "", ""
    return exc


def _leading_field(message: str) -> str | None:
    match = _FIELD.match(message)
    return match.group(1) if match else None


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
