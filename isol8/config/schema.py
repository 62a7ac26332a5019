"""The config file's schema: upstream's keys and defaults, isol8's sections, and what each
value must be.

A file is checked key by key here, before anything is merged, so an error names the file
and the key the operator wrote (``defaults.memoryLimit``), not an engine option it became.
Upstream keys that mean nothing for isol8 are accepted, each with one warning naming it:
a file written for upstream keeps working and says what it no longer does. Any other key
is an error, since a misspelled key silently left at its default would hide intent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Container, Mapping

from ..errors import InvalidRequest
from ..images.root import validated_rootfs
from ..network.rules import NetworkFilter
from ..policy import (NETWORK_MODES, SECCOMP_MODES, boolean, choice, cpu_share, parse_size,
                      positive_int, validated_mounts)
from ..pool import pool_size
from ..remote_code import RemoteCodePolicy

# Sections merged key by key over their defaults (upstream's per-section merge); every
# other top-level key is replaced whole, arrays included.
TABLES = ("defaults", "network", "security", "remoteCode", "server", "mcp")


def default_values() -> dict[str, object]:
    """Upstream's defaults (isol8-api.md §3.3) with isol8's engine defaults where upstream
    has none. ``maxConcurrent`` has none here: the server's capacity follows the host
    unless a file sets it. A fresh copy each time: callers merge into it."""
    return {
        "maxConcurrent": None,
        "defaults": {"timeoutMs": 30_000, "memoryLimit": "512m", "cpuLimit": 1.0,
                     "pidsLimit": 64, "maxOutputSize": 1 << 20, "network": "none",
                     "sandboxSize": "512m", "tmpSize": "256m", "readonlyRootFs": True,
                     "image": "host", "mounts": []},
        "network": {"whitelist": [], "blacklist": []},
        "poolStrategy": "fast",
        "poolSize": {"clean": 1, "dirty": 1},
        "security": {"seccomp": "strict"},
        "remoteCode": {"enabled": False, "allowedSchemes": ["https"], "allowedHosts": [],
                       "blockedHosts": [], "maxCodeSize": 10 << 20, "fetchTimeoutMs": 30_000,
                       "requireHash": False},
        "server": {},
        "mcp": {},
    }


def _size(value: object, key: str) -> object:
    parse_size(value, key)  # type: ignore[arg-type]
    return value


def _patterns(name: str) -> Callable[[object, str], object]:
    def check(value: object, key: str) -> object:
        try:
            NetworkFilter.from_options({name: value})
        except InvalidRequest as exc:
            raise InvalidRequest(f"{key}: {exc}") from None
        return list(value)  # type: ignore[call-overload]
    return check


def _choice(allowed: tuple[str, ...]) -> Callable[[object, str], object]:
    return lambda value, key: choice(value, allowed, key)  # type: ignore[arg-type]


def _mounts(value: object, key: str) -> object:
    try:
        validated_mounts(value)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{key}: {exc}") from None
    return value


def _rootfs(value: object, key: str) -> object:
    try:
        return validated_rootfs(value)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{key}: {exc}") from None


def _pool_size(value: object, key: str) -> object:
    if isinstance(value, Mapping):
        unknown = sorted(str(k) for k in value if k not in ("clean", "dirty"))
        if unknown:
            raise InvalidRequest(f"{key}: unknown key(s) {', '.join(unknown)} "
                                 "(known: clean, dirty)")
        for part in ("clean", "dirty"):
            if part in value:
                pool_size(value[part], "fast")
        return dict(value)
    try:
        pool_size(value, "fast")
    except InvalidRequest as exc:
        raise InvalidRequest(f"{key}: {exc}") from None
    return value


def _remote_code(value: object, key: str) -> object:
    RemoteCodePolicy.from_mapping({key.rpartition(".")[2]: value})
    return value


def _table(value: object, key: str) -> object:
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{key}: expected a table/object, got {value!r}")
    return dict(value)


Check = Callable[[object, str], object]
# Every key isol8 uses, as "section.key" (or a top-level key), with its check; each returns
# the value to keep.
CHECKS: dict[str, Check] = {
    "maxConcurrent": positive_int,
    "defaults.timeoutMs": positive_int,
    "defaults.memoryLimit": _size,
    "defaults.cpuLimit": cpu_share,
    "defaults.pidsLimit": positive_int,
    "defaults.maxOutputSize": _size,
    "defaults.network": _choice(NETWORK_MODES),
    "defaults.sandboxSize": _size,
    "defaults.tmpSize": _size,
    "defaults.readonlyRootFs": boolean,
    "defaults.image": _rootfs,
    "defaults.mounts": _mounts,
    "network.whitelist": _patterns("whitelist"),
    "network.blacklist": _patterns("blacklist"),
    "poolStrategy": _choice(("fast", "secure")),
    "poolSize": _pool_size,
    "security.seccomp": _choice(SECCOMP_MODES),
    "server": _table,  # validated whole by ServerPolicy.from_mapping (Config.server_policy)
    "mcp": _table,     # validated whole by the MCP server's limits, when installed
}
for _key in ("enabled", "allowedSchemes", "allowedHosts", "blockedHosts", "maxCodeSize",
             "fetchTimeoutMs", "requireHash", "enableCache", "cacheTtl", "allowPrivate",
             "hosts", "caFile"):
    CHECKS[f"remoteCode.{_key}"] = _remote_code

# Upstream keys that mean nothing here, with what to use instead: accepted, one warning
# each. A whole section is listed by its name (each key in it is warned about).
IGNORED: dict[str, str] = {
    "cleanup": "Docker containers only; isol8 serve stops idle sessions after "
               "server.capacity.sessionTtlMs",
    "prebuiltImages": "Docker images only; build images with isol8 image build",
    "debug": "no debug mode here",
    "audit": "use isol8 serve --audit FILE (--audit-include-code, --audit-include-output)",
    "auth": "use isol8 serve --auth-db PATH",
    "security.customProfilePath": "isol8 compiles its own seccomp filter (strict or "
                                  "unconfined)",
}
# Values accepted with a warning: they ask for what isol8 never does.
IGNORED_VALUES: dict[tuple[str, object], str] = {
    ("defaults.readonlyRootFs", False): "isol8's root file system is always read-only",
}


def check_file(data: object, origin: str, only: Container[str] | None = None,
               ) -> tuple[dict[str, object], list[str]]:
    """One file's content, checked: the values isol8 uses (upstream's shape, only the keys
    given) and a warning for each key that means nothing here. Errors name ``origin`` and
    the key. With ``only``, every key name is checked but only those values: the rest are
    returned as written (a working-directory file's ignored mount of a missing path must
    not stop a run)."""
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"{origin}: expected a table/object at the top, got {data!r}")
    values: dict[str, object] = {}
    warnings: list[str] = []
    for top, value in data.items():
        top = str(top)
        if top == "$schema":  # a JSON file's pointer to upstream's schema, for editors
            continue
        if top in IGNORED:
            keys = [f"{top}.{k}" for k in value] if isinstance(value, Mapping) else [top]
            warnings += [f"{origin}: {k}: ignored ({IGNORED[top]})" for k in keys or [top]]
        elif top in TABLES and top not in CHECKS:
            if not isinstance(value, Mapping):
                raise InvalidRequest(f"{origin}: {top}: expected a table/object, got "
                                     f"{value!r}")
            checked = {}
            for name, item in value.items():
                key = f"{top}.{name}"
                if key in IGNORED:
                    warnings.append(f"{origin}: {key}: ignored ({IGNORED[key]})")
                    continue
                value = _checked(key, item, origin, only)
                reason = next((why for (k, v), why in IGNORED_VALUES.items()
                               if k == key and v is item), None)
                if reason:
                    warnings.append(f"{origin}: {key} = {json.dumps(item)}: ignored "
                                    f"({reason})")
                else:
                    checked[name] = value
            values[top] = checked
        else:
            values[top] = _checked(top, value, origin, only)
    return values, warnings


def _checked(key: str, value: object, origin: str, only: Container[str] | None) -> object:
    check = CHECKS.get(key)
    if check is None:
        section = key.rpartition(".")[0]
        if section:
            known = sorted(k.rpartition(".")[2] for k in [*CHECKS, *IGNORED]
                           if k.rpartition(".")[0] == section)
        else:
            known = sorted({k.partition(".")[0] for k in [*CHECKS, *IGNORED]})
        raise InvalidRequest(f"{origin}: unknown key {key} (known: {', '.join(known)})")
    if only is not None and key not in only:
        return value
    try:
        return check(value, key)
    except InvalidRequest as exc:
        message = str(exc)
        if not message.startswith(key):
            message = f"{key}: {message}"
        raise InvalidRequest(f"{origin}: {message}") from None
