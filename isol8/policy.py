"""Engine options: defaults as upstream, and validation that names the offending field."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import InvalidRequest
from .identity import DEFAULT_UID_RANGE, validate_uid_range
from .limits import Limits

NETWORK_MODES = ("none", "host")
MODES = ("ephemeral", "persistent")
SECCOMP_MODES = ("strict", "unconfined")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: str | int, field: str) -> int:
    """Bytes from upstream's size syntax (``512m``, ``1.5g``, ``1048576``; base 1024)."""
    if isinstance(value, bool):
        raise InvalidRequest(f"{field}: expected a size like '512m', got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value).strip())
        if not match:
            raise InvalidRequest(f"{field}: expected a size like '512m', got {value!r}")
        size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise InvalidRequest(f"{field}: must be positive, got {value!r}")
    return size


def positive_int(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidRequest(f"{field}: expected a positive integer, got {value!r}")
    return value


def positive_number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidRequest(f"{field}: expected a positive number, got {value!r}")
    return float(value)


def env_mapping(value: object, field: str) -> dict[str, str]:
    """Environment variables: names without '=' or NUL, string values without NUL."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field}: expected a mapping of names to strings")
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise InvalidRequest(f"{field}: invalid variable name {key!r}")
        if not isinstance(item, str) or "\0" in item:
            raise InvalidRequest(f"{field}: value of {key} must be a string without NUL bytes")
    return dict(value)


def choice(value: str, allowed: tuple[str, ...], field: str) -> str:
    if value not in allowed:
        raise InvalidRequest(f"{field}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOptions:
    mode: str = "ephemeral"
    network: str = "none"
    timeout_ms: int = 30_000
    max_output_size: int = 1 << 20
    sandbox_size: int = 512 << 20
    tmp_size: int = 256 << 20
    seccomp: str = "strict"
    uid_range: tuple[int, int] = DEFAULT_UID_RANGE
    limits: Limits = Limits(memory=512 << 20, cpu=1.0, pids=64)
    cgroup_parent: str | None = None
    secrets: tuple[tuple[str, str], ...] = ()

    @classmethod
    def build(cls, *, mode: str = "ephemeral", network: str = "none", timeout_ms: int = 30_000,
              max_output_size: int = 1 << 20, sandbox_size: str | int = "512m",
              tmp_size: str | int = "256m", seccomp: str = "strict",
              uid_range: tuple[int, int] = DEFAULT_UID_RANGE,
              memory_limit: str | int = "512m", cpu_limit: float = 1.0, pids_limit: int = 64,
              strict_limits: bool = False,
              cgroup_parent: str | None = None,
              secrets: dict[str, str] | None = None) -> "EngineOptions":
        parent = cgroup_parent or os.environ.get("ISOL8_CGROUP_PARENT") or None
        if parent is not None and not os.path.isabs(parent):
            raise InvalidRequest(f"cgroup_parent: expected an absolute path, got {parent!r}")
        return cls(
            mode=choice(mode, MODES, "mode"),
            limits=Limits(memory=parse_size(memory_limit, "memory_limit"),
                          cpu=positive_number(cpu_limit, "cpu_limit"),
                          pids=positive_int(pids_limit, "pids_limit"),
                          strict=bool(strict_limits)),
            cgroup_parent=parent,
            secrets=tuple(env_mapping(secrets, "secrets").items()),
            network=choice(network, NETWORK_MODES, "network"),
            timeout_ms=positive_int(timeout_ms, "timeout_ms"),
            max_output_size=positive_int(max_output_size, "max_output_size"),
            sandbox_size=parse_size(sandbox_size, "sandbox_size"),
            tmp_size=parse_size(tmp_size, "tmp_size"),
            seccomp=choice(seccomp, SECCOMP_MODES, "seccomp"),
            uid_range=validate_uid_range(tuple(uid_range)),
        )
