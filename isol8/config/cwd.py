"""The working directory's ``isol8.config.json``: read only for what cannot weaken
isolation.

Upstream reads ``./isol8.config.json`` first and trusts it in full. An agent working in a
cloned repository would then run with whatever the repository's author chose:
``network: "host"``, mounts of the user's home, seccomp off. Here the file is checked like
any other (unknown keys are errors) and each key then either tightens what is in effect or
is ignored with a warning naming the file and the key:

- limits (``defaults.timeoutMs``, ``memoryLimit``, ``cpuLimit``, ``pidsLimit``,
  ``maxOutputSize``, ``sandboxSize``, ``tmpSize``; ``remoteCode.maxCodeSize`` and
  ``fetchTimeoutMs``) apply only when lower than the value in effect;
- ``defaults.network`` applies only as ``"none"``, ``security.seccomp`` only as
  ``"strict"``, ``defaults.readonlyRootFs`` only as true, ``remoteCode.enabled`` only as
  false and ``remoteCode.requireHash`` only as true;
- ``network.blacklist`` and ``remoteCode.blockedHosts`` entries are added to those in
  effect (a deny never widens);
- everything else is ignored: ``network.whitelist`` (it replaces the one in effect, which
  could widen it), ``defaults.mounts``, ``defaults.image``, the rest of ``remoteCode``,
  the pool settings, ``maxConcurrent``, and the ``server`` and ``mcp`` sections (an
  operator's policy is not a repository's to set).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from ..policy import parse_size
from .schema import TABLES, check_file

# (value in effect, value in the file) -> the value to apply, or None to ignore the key.
Rule = Callable[[object, object], object | None]


def _lower(number: Callable[[object], float]) -> Rule:
    return lambda current, new: new if number(new) < number(current) else None


def _only(allowed: object) -> Rule:
    return lambda current, new: new if new == allowed else None


def _added(current: object, new: object) -> object:
    return list(dict.fromkeys([*current, *new]))  # type: ignore[misc]


def _bytes(value: object) -> float:
    return parse_size(value, "size")  # type: ignore[arg-type]


def _number(value: object) -> float:
    return float(value)  # type: ignore[arg-type]


_LOWER = "not lower than the {current} in effect"
_ONLY = "a working-directory file may only tighten it ({current} in effect)"
_ADDED = ""  # never ignored
# Each key a working-directory file may set: how it applies, and why it was not applied.
RULES: dict[str, tuple[Rule, str]] = {
    "defaults.timeoutMs": (_lower(_number), _LOWER),
    "defaults.memoryLimit": (_lower(_bytes), _LOWER),
    "defaults.cpuLimit": (_lower(_number), _LOWER),
    "defaults.pidsLimit": (_lower(_number), _LOWER),
    "defaults.maxOutputSize": (_lower(_bytes), _LOWER),
    "defaults.sandboxSize": (_lower(_bytes), _LOWER),
    "defaults.tmpSize": (_lower(_bytes), _LOWER),
    "defaults.network": (_only("none"), _ONLY),
    "defaults.readonlyRootFs": (_only(True), _ONLY),
    "network.blacklist": (_added, _ADDED),
    "security.seccomp": (_only("strict"), _ONLY),
    "remoteCode.enabled": (_only(False), _ONLY),
    "remoteCode.requireHash": (_only(True), _ONLY),
    "remoteCode.blockedHosts": (_added, _ADDED),
    "remoteCode.maxCodeSize": (_lower(_bytes), _LOWER),
    "remoteCode.fetchTimeoutMs": (_lower(_number), _LOWER),
}
_REFUSED = "a working-directory file may not set it: it could weaken isolation"


def tighten(values: dict[str, object], sources: dict[str, str], data: Mapping[str, object],
            path: str) -> list[str]:
    """Apply the file's tightening keys to ``values`` (recording ``sources``); the warnings
    for the keys ignored."""
    checked, warnings = check_file(data, path, only=RULES)
    label = f"{path} (working directory)"
    for top, value in checked.items():
        entries = value.items() if isinstance(value, dict) and top in TABLES \
            and top not in ("server", "mcp") else [(None, value)]
        for name, new in entries:
            key = top if name is None else f"{top}.{name}"
            rule, why = RULES.get(key, (None, _REFUSED))
            section = values.get(top)
            current = section.get(name) if isinstance(section, dict) else section
            applied = rule(current, new) if rule is not None else None
            if applied is None:
                why = why.format(current=json.dumps(current))
                warnings.append(f"{path}: {key}: ignored ({why})")
                continue
            assert isinstance(section, dict)
            section[name] = applied
            sources[key] = label
    return warnings
