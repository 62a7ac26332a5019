"""Which config files apply, and reading one.

The trusted file is ``path`` if given, else ``$ISOL8_CONFIG``, else ``~/.isol8/config.toml``
or ``~/.isol8/config.json`` (TOML wins when both exist; the JSON one is then named in a
warning, so an edit to it that does nothing is not a mystery). The working directory's
``isol8.config.json`` is found here too, but only ``cwd.tighten`` reads it.

A server policy file (isol8 serve's ``--config`` before config files existed) is read as
the ``server`` section of a config file, so ``--config FILE`` and ``$ISOL8_CONFIG`` keep
working with it. It is told apart by its top-level keys: one of the policy's own
(``runtimes``, ``images``, ``ceilings``, ``allow``, ``capacity``, ``mounts``), or a
``network`` table holding the policy's ``modes``, ``allowPrivate`` or ``pins`` (a config
file's ``network`` holds ``whitelist`` and ``blacklist``). A file mixing both is an error
naming the key to move under ``[server]``.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping

from ..errors import InvalidRequest

CWD_FILE = "isol8.config.json"
_POLICY_KEYS = ("runtimes", "images", "ceilings", "allow", "capacity", "mounts")
_POLICY_NETWORK_KEYS = ("modes", "allowPrivate", "pins")


def home_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".isol8")


def trusted_file(path: str | None) -> tuple[str | None, list[str]]:
    """The file read in full, or None, and the warnings of its lookup."""
    if path is not None:
        return _existing(path, "config file"), []
    env = os.environ.get("ISOL8_CONFIG")
    if env:
        return _existing(env, "$ISOL8_CONFIG"), []
    toml, json_file = (os.path.join(home_dir(), name) for name in ("config.toml",
                                                                    "config.json"))
    if os.path.isfile(toml):
        warnings = [f"{json_file}: ignored (config.toml is read when both exist)"] \
            if os.path.isfile(json_file) else []
        return toml, warnings
    return (json_file if os.path.isfile(json_file) else None), []


def cwd_file(cwd: str | None, trusted: str | None) -> str | None:
    """The working directory's ``isol8.config.json``, unless it is the trusted file."""
    candidate = os.path.join(cwd if cwd is not None else os.getcwd(), CWD_FILE)
    if not os.path.isfile(candidate):
        return None
    if trusted is not None and os.path.samefile(candidate, trusted):
        return None
    return os.path.abspath(candidate)


def _existing(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise InvalidRequest(f"{what}: {path} is not a file")
    return os.path.abspath(path)


def read(path: str) -> tuple[Mapping[str, object], bool]:
    """A file's content as a config mapping (JSON if the name ends in ``.json``, else TOML;
    a server policy file as the ``server`` section), and whether it was a policy file."""
    try:
        with open(path, "rb") as fh:
            data = json.load(fh) if path.endswith(".json") else tomllib.load(fh)
    except (OSError, ValueError) as exc:  # TOMLDecodeError and JSONDecodeError too
        raise InvalidRequest(f"{path}: {exc}") from None
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"{path}: expected a table/object at the top, got {data!r}")
    if is_policy_file(data, path):
        return {"server": data}, True
    return data, False


def is_policy_file(data: Mapping[str, object], path: str) -> bool:
    network = data.get("network")
    policy = [k for k in _POLICY_KEYS if k in data]
    if isinstance(network, Mapping) and any(k in network for k in _POLICY_NETWORK_KEYS):
        policy.append("network")
    if not policy:
        return False
    other = sorted(str(k) for k in data if k not in (*_POLICY_KEYS, "network"))
    if other:
        raise InvalidRequest(f"{path}: {policy[0]} is a server policy key and {other[0]} a "
                             f"config key: in a config file, put the policy under [server] "
                             f"(\"server\" in JSON)")
    return True
