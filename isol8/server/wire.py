"""The JSON body of ``POST /execute``, as upstream's ``RemoteIsol8`` sends it, checked and
mapped onto the local engine: ``{"sessionId"?, "request": {...}, "options": {...}}``.

Pure (no I/O): a body becomes an ``ExecuteBody`` of camelCase dicts holding only known,
well-typed fields, which the server policy (isol8.server.policy) then clamps or refuses, and
which ``engine_kwargs``/``request_kwargs`` turn into ``Isol8(**...)`` and ``execute(**...)``
keywords. Unknown fields are dropped, as upstream's server ignores them; a known field of the
wrong type raises ``WireError`` naming it, which the app answers with 400 (upstream answers
every error with 500, even a client's own mistake: isol8-api.md §8.3).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequest

MAX_SESSION_ID = 128
# Printable ASCII without "/" (the id travels in DELETE /session/{id}) or whitespace.
_SESSION_ID = re.compile(r"[!-.0-~]{1,%d}\Z" % MAX_SESSION_ID)


class WireError(InvalidRequest):
    """A field of the body is invalid; ``field`` is its dotted wire path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _string(path: str, value: object) -> str:
    if not isinstance(value, str):
        raise WireError(path, f"expected a string, got {_kind(value)}")
    return value


def _integer(path: str, value: object) -> int:
    # JSON has one number type: 1.0 is an integer to a TypeScript client.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise WireError(path, f"expected a positive integer, got {value!r}")
    return value


def _number(path: str, value: object) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise WireError(path, f"expected a positive number, got {value!r}")
    return value


def _size(path: str, value: object) -> str | int:
    """Upstream's size syntax ("512m") or a byte count; the engine parses the text."""
    if isinstance(value, str):
        return value
    return _integer(path, value)


def _boolean(path: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise WireError(path, f"expected true or false, got {value!r}")
    return value


def _object(path: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WireError(path, f"expected an object, got {_kind(value)}")
    return value


def _string_map(path: str, value: object) -> dict[str, str]:
    return {key: _string(f"{path}.{key}", item) for key, item in _object(path, value).items()}


def _string_list(path: str, value: object) -> list[str]:
    if not isinstance(value, list):
        raise WireError(path, f"expected a list of strings, got {_kind(value)}")
    return [_string(f"{path}[{i}]", item) for i, item in enumerate(value)]


def _file_content(path: str, value: object) -> str | bytes:
    """A string, or a Node ``Buffer`` as ``JSON.stringify`` writes it
    (``{"type": "Buffer", "data": [bytes]}``), which is what ``RemoteIsol8`` sends for one."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("type") == "Buffer":
        data = value.get("data")
        if isinstance(data, list) and all(
                isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in data):
            return bytes(data)
    raise WireError(path, "expected a string or a Buffer")


def _files(path: str, value: object) -> dict[str, str | bytes]:
    return {name: _file_content(f"{path}[{name!r}]", item)
            for name, item in _object(path, value).items()}


def _any(path: str, value: object) -> object:
    return value


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


# camelCase wire name -> (engine keyword, checker). The engine validates values further
# (its messages use the keyword; ``wire_name`` maps them back).
REQUEST_FIELDS: dict[str, tuple[str, Callable[[str, object], object]]] = {
    "code": ("code", _string),
    "runtime": ("runtime", _string),
    "cmd": ("cmd", _string),
    "timeoutMs": ("timeout_ms", _integer),
    "env": ("env", _string_map),
    "stdin": ("stdin", _string),
    "fileExtension": ("file_extension", _string),
    "files": ("files", _files),
    "workdir": ("workdir", _string),
    "outputPaths": ("output_paths", _string_list),
    "setupScript": ("setup_script", _string),
    "installPackages": ("install_packages", _string_list),
    # honoured only when the server's policy enables remoteCode (isol8.server.policy)
    "codeUrl": ("code_url", _string),
    "codeHash": ("code_hash", _string),
    "allowInsecureCodeUrl": ("allow_insecure_code_url", _boolean),
}
# Upstream request fields this server cannot honour: refused rather than silently dropped,
# since dropping them would run something other than what was asked.
UNSUPPORTED_REQUEST = {
    "agentFlags": "the agent runtime is not supported by this server",
}

OPTION_FIELDS: dict[str, tuple[str, Callable[[str, object], object]]] = {
    "network": ("network", _string),
    "networkFilter": ("network_filter", _object),
    "cpuLimit": ("cpu_limit", _number),
    "memoryLimit": ("memory_limit", _size),
    "pidsLimit": ("pids_limit", _integer),
    "maxOutputSize": ("max_output_size", _integer),
    "sandboxSize": ("sandbox_size", _size),
    "tmpSize": ("tmp_size", _size),
    "timeoutMs": ("timeout_ms", _integer),
    "secrets": ("secrets", _string_map),
    "logNetwork": ("log_network", _boolean),
    "tmpExec": ("tmp_exec", _boolean),
    "strictLimits": ("strict_limits", _boolean),
    "repl": ("repl", _boolean),
    "security": ("seccomp", _object),  # {"seccomp": ...}; flattened by _options
    "mounts": ("mounts", _any),
    "image": ("rootfs", _string),  # a store image (isol8.server.policy checks it)
    # Upstream options the policy refuses (they weaken isolation), never passed on.
    "readonlyRootFs": ("", _boolean),
    "persist": ("", _boolean),
    "debug": ("", _boolean),
}
# networkFilter's keys, camelCase on the wire (isol8.network.rules.KNOWN_KEYS).
FILTER_FIELDS = {"whitelist": "whitelist", "blacklist": "blacklist",
                 "allowPrivate": "allow_private", "hosts": "hosts",
                 "maxConnections": "max_connections", "capture": "capture"}
_SECCOMP = ("strict", "unconfined")


@dataclass(slots=True)
class ExecuteBody:
    """A checked body: camelCase dicts of known fields only, None/absent fields left out."""

    session_id: str | None
    request: dict[str, object]
    options: dict[str, object] = field(default_factory=dict)
    # The server turned logNetwork on for its audit log, not for the client: the result's
    # networkLogs are the log's, and left out of the answer.
    logs_for_audit: bool = False


def parse_execute(body: object) -> ExecuteBody:
    """Check a decoded ``POST /execute`` body; raises ``WireError`` naming the field."""
    body = _object("body", body)
    session_id = body.get("sessionId")
    if session_id is not None and not (isinstance(session_id, str)
                                       and _SESSION_ID.match(session_id)):
        raise WireError("sessionId", f"expected 1 to {MAX_SESSION_ID} printable characters "
                        f"without '/' or spaces, got {session_id!r}")
    if "request" not in body or body["request"] is None:
        raise WireError("request", "missing")
    request = _object("request", body["request"])
    options = body.get("options")
    return ExecuteBody(session_id, _request(request),
                       _options(_object("options", options)) if options is not None else {})


def _request(raw: Mapping[str, object]) -> dict[str, object]:
    for name, why in UNSUPPORTED_REQUEST.items():
        if raw.get(name):
            raise WireError(f"request.{name}", why)
    return {name: REQUEST_FIELDS[name][1](f"request.{name}", value)
            for name, value in raw.items() if name in REQUEST_FIELDS and value is not None}


def _options(raw: Mapping[str, object]) -> dict[str, object]:
    out = {name: OPTION_FIELDS[name][1](f"options.{name}", value)
           for name, value in raw.items() if name in OPTION_FIELDS and value is not None}
    if "security" in out:
        security = out.pop("security")
        seccomp = security.get("seccomp")  # type: ignore[attr-defined]
        if seccomp is not None:
            if seccomp not in _SECCOMP:
                raise WireError("options.security.seccomp",
                                f"expected one of {', '.join(_SECCOMP)}, got {seccomp!r} "
                                "(custom profiles are not supported)")
            out["seccomp"] = seccomp
    if "networkFilter" in out:
        out["networkFilter"] = {
            key: value for key, value in out["networkFilter"].items()  # type: ignore[attr-defined]
            if value is not None}
    return out


def engine_kwargs(options: Mapping[str, object]) -> dict[str, Any]:
    """``Isol8(**...)`` keywords from checked (and policed) camelCase options. The engine
    validates network_filter's keys itself, so an unknown one is a 400, not a silent drop."""
    kwargs: dict[str, Any] = {}
    for name, value in options.items():
        if name == "seccomp":
            kwargs["seccomp"] = value
        elif name == "networkFilter":
            kwargs["network_filter"] = {FILTER_FIELDS.get(k, k): v
                                        for k, v in value.items()}  # type: ignore[attr-defined]
        elif OPTION_FIELDS[name][0]:
            kwargs[OPTION_FIELDS[name][0]] = value
    return kwargs


def request_kwargs(request: Mapping[str, object]) -> dict[str, object]:
    """``execute(**...)`` keywords from a checked camelCase request."""
    return {REQUEST_FIELDS[name][0]: value for name, value in request.items()}


_WIRE_NAMES = {snake: f"options.{camel}" for camel, (snake, _) in OPTION_FIELDS.items() if snake}
_WIRE_NAMES.update({"network_filter": "options.networkFilter",
                    "seccomp": "options.security.seccomp"})
_WIRE_NAMES.update({snake: f"request.{camel}" for camel, (snake, _) in REQUEST_FIELDS.items()
                    if snake not in ("timeout_ms",)})
_LEADING_NAME = re.compile(r"^([a-z_]+)(?=[:\[ ])")


def wire_message(message: str) -> str:
    """An engine error message with its leading keyword (``memory_limit: ...``) in the wire's
    name (``options.memoryLimit: ...``), so a client sees the field it sent."""
    match = _LEADING_NAME.match(message)
    if match and match.group(1) in _WIRE_NAMES:
        return _WIRE_NAMES[match.group(1)] + message[match.end():]
    return message
