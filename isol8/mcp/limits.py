"""``McpLimits``: what one MCP server lets its callers hold and ask for.

A model drives these tools in a loop, unattended: it can open sessions and forget them,
ask for hour-long timeouts or pull a large file into its context. These limits bound that
on top of the engine's own (memory, output, pids...), which apply to every run as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import InvalidRequest
from ..policy import positive_int, positive_number

# The config file's camelCase keys, as the rest of isol8's config spells them.
_KEYS = {"maxSessions": "max_sessions", "sessionTtlSeconds": "session_ttl_s",
         "maxFileBytes": "max_file_bytes", "maxTimeoutMs": "max_timeout_ms",
         "maxConcurrent": "max_concurrent"}


@dataclass(frozen=True, slots=True, kw_only=True)
class McpLimits:
    """``max_sessions`` alive at once in one server (over stdio, in one connection);
    ``session_ttl_s`` of idleness after which a session is destroyed; ``max_file_bytes`` for
    one ``put_file`` or ``get_file``; ``max_timeout_ms`` a call may ask for;
    ``max_concurrent`` runs in flight (the rest wait their turn)."""

    max_sessions: int = 8
    session_ttl_s: float = 900.0
    max_file_bytes: int = 10 * 1024 * 1024
    max_timeout_ms: int = 300_000
    max_concurrent: int = 10

    def __post_init__(self) -> None:
        for key, name in _KEYS.items():
            value = getattr(self, name)
            if name == "session_ttl_s":
                positive_number(value, key)
            else:
                positive_int(value, key)

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> McpLimits:
        """The limits from a config file's ``mcp`` section (camelCase keys); a key this
        version does not know is an error naming it, since a misspelt limit silently left
        at its default is a limit nobody set."""
        if not isinstance(data, Mapping):
            raise InvalidRequest(f"mcp: expected a mapping of limits, got {data!r}")
        unknown = sorted(str(key) for key in data if key not in _KEYS)
        if unknown:
            raise InvalidRequest(f"mcp.{unknown[0]}: unknown key (known: "
                                 f"{', '.join(sorted(_KEYS))})")
        return cls(**{_KEYS[key]: value for key, value in data.items()})  # type: ignore[arg-type]

