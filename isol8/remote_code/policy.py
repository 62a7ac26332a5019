"""``RemoteCodePolicy``: upstream's ``remoteCode`` settings, validated once.

Upstream's keys and defaults (isol8-api.md §3.3, §5.9): ``enabled`` (false),
``allowedSchemes`` (["https"]), ``allowedHosts`` (regexes, search semantics; empty allows
any), ``blockedHosts`` (regexes; deny wins), ``maxCodeSize`` (10 MiB), ``fetchTimeoutMs``
(30 s), ``requireHash`` (false). ``enableCache`` and ``cacheTtl`` are accepted and do
nothing, as upstream's do nothing.

isol8's own keys, for operators who serve code from their own network and for tests:
``allowPrivate`` (let the fetch reach private and loopback addresses; the SSRF guard of the
filtered network is otherwise applied to every hop), ``hosts`` (name to address pins, as
``network_filter["hosts"]``) and ``caFile`` (a PEM bundle trusted instead of the system's).

Upstream's config default puts private ranges in ``blockedHosts`` as regexes; here those
regexes are not needed, since the guard judges the resolved address (after every redirect),
which no hostname regex can.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import InvalidRequest
from ..network.rules import NetworkFilter
from ..policy import parse_size, positive_int

MAX_CODE_SIZE = 10 << 20
FETCH_TIMEOUT_MS = 30_000
SCHEMES = ("https", "http")
KEYS = ("enabled", "allowedSchemes", "allowedHosts", "blockedHosts", "maxCodeSize",
        "fetchTimeoutMs", "requireHash", "enableCache", "cacheTtl", "allowPrivate", "hosts",
        "caFile")


@dataclass(frozen=True, slots=True)
class RemoteCodePolicy:
    enabled: bool = False
    allowed_schemes: tuple[str, ...] = ("https",)
    max_code_size: int = MAX_CODE_SIZE
    fetch_timeout_ms: int = FETCH_TIMEOUT_MS
    require_hash: bool = False
    ca_file: str | None = None
    # allowedHosts, blockedHosts, allowPrivate and hosts, as the proxy's rules and guard
    hosts: NetworkFilter = NetworkFilter()

    @classmethod
    def from_mapping(cls, data: Mapping[str, object] | None) -> RemoteCodePolicy:
        """Upstream's camelCase ``remoteCode`` object (None: the default, disabled); every
        error names the key."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise InvalidRequest(f"remoteCode must be a mapping, not {type(data).__name__}")
        unknown = sorted(str(k) for k in data if k not in KEYS)
        if unknown:
            raise InvalidRequest(f"remoteCode: unknown key(s) {', '.join(map(repr, unknown))}; "
                                 f"known: {', '.join(KEYS)}")
        schemes = data.get("allowedSchemes", ["https"])
        if (not isinstance(schemes, list) or not schemes
                or any(s not in SCHEMES for s in schemes)):
            raise InvalidRequest(f"remoteCode.allowedSchemes: a non-empty list of "
                                 f"{' and '.join(SCHEMES)}, not {schemes!r}")
        size = data.get("maxCodeSize", MAX_CODE_SIZE)
        if not isinstance(size, (str, int)):
            raise InvalidRequest(f"remoteCode.maxCodeSize: a size (bytes, or like \"1m\"), "
                                 f"not {size!r}")
        ca_file = data.get("caFile")
        if ca_file is not None and (not isinstance(ca_file, str) or not os.path.isfile(ca_file)):
            raise InvalidRequest(f"remoteCode.caFile: {ca_file!r} is not a file")
        return cls(
            enabled=_flag(data, "enabled"),
            allowed_schemes=tuple(schemes),
            max_code_size=parse_size(size, "remoteCode.maxCodeSize"),
            fetch_timeout_ms=positive_int(data.get("fetchTimeoutMs", FETCH_TIMEOUT_MS),
                                          "remoteCode.fetchTimeoutMs"),
            require_hash=_flag(data, "requireHash"),
            ca_file=ca_file,
            hosts=NetworkFilter.from_options({
                "whitelist": data.get("allowedHosts", []),
                "blacklist": data.get("blockedHosts", []),
                "allow_private": _flag(data, "allowPrivate"),
                "hosts": data.get("hosts", {}),
            }),
        )


def _flag(data: Mapping[str, object], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"remoteCode.{key} must be true or false, not {value!r}")
    return value
