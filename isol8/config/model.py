"""``load_config()`` and ``Config``: the effective configuration, where each value came
from, and its translations for the engine, the server and code URLs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..errors import InvalidRequest
from ..policy import parse_size
from ..remote_code import RemoteCodePolicy
from . import files
from .cwd import tighten
from .schema import TABLES, check_file, default_values

# defaults.* that isol8 serve applies to a request's options (its engine options, by their
# wire names); mounts need the policy's grants, and readonlyRootFs is always true
SERVER_DEFAULTS = ("timeoutMs", "memoryLimit", "cpuLimit", "pidsLimit", "maxOutputSize",
                   "network", "sandboxSize", "tmpSize", "image")

if TYPE_CHECKING:
    from ..mcp.limits import McpLimits
    from ..server.policy import ServerPolicy

DEFAULT = "default"


@dataclass
class Config:
    """The effective configuration in upstream's shape (camelCase, per section).

    ``sources`` maps each key (``defaults.timeoutMs``, ``poolStrategy``, ``server.ceilings``)
    to where its value came from: ``"default"``, a file's path, or a working-directory
    file's path followed by `` (working directory)``. ``warnings`` are the lines a command
    prints (keys ignored, files shadowed); the library prints nothing."""

    values: dict[str, object] = field(default_factory=default_values)
    sources: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    policy_files: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        for top, value in self.values.items():
            if isinstance(value, dict) and top in TABLES and value:
                for name in value:
                    self.sources.setdefault(f"{top}.{name}", DEFAULT)
            else:
                self.sources.setdefault(top, DEFAULT)

    def merge(self, checked: Mapping[str, object], origin: str) -> None:
        """A trusted file's checked values over the current ones, section by section
        (arrays and scalars replace)."""
        for top, value in checked.items():
            current = self.values.get(top)
            if top in TABLES and isinstance(value, dict) and isinstance(current, dict):
                current.update(value)
                self.sources.pop(top, None)
                for name in value:
                    self.sources[f"{top}.{name}"] = origin
            else:
                self.values[top] = value
                self.sources[top] = origin

    def section(self, name: str) -> Mapping[str, object] | None:
        """A section as given (``"mcp"``, ``"server"``), or None when no file set it."""
        value = self.values.get(name)
        if not isinstance(value, dict) or all(
                self.sources.get(key) == DEFAULT for key in self._keys(name)):
            return None
        return value

    def _keys(self, name: str) -> list[str]:
        return [key for key in self.sources if key == name or key.startswith(name + ".")]

    def engine_options(self) -> dict[str, object]:
        """Keyword arguments for ``Isol8(...)`` (and ``AsyncIsol8``), from ``defaults``,
        ``network``, ``security``, the pool keys and ``remoteCode``."""
        d = self.values["defaults"]
        net = self.values["network"]
        assert isinstance(d, dict) and isinstance(net, dict)
        security = self.values["security"]
        assert isinstance(security, dict)
        options: dict[str, object] = {
            "timeout_ms": d["timeoutMs"], "memory_limit": d["memoryLimit"],
            "cpu_limit": d["cpuLimit"], "pids_limit": d["pidsLimit"],
            "max_output_size": parse_size(d["maxOutputSize"], "defaults.maxOutputSize"),
            "network": d["network"], "sandbox_size": d["sandboxSize"],
            "tmp_size": d["tmpSize"], "rootfs": d["image"], "seccomp": security["seccomp"],
            "pool_strategy": self.values["poolStrategy"],
            "pool_size": self.values["poolSize"], "remote_code": self.remote_code(),
        }
        if d["mounts"]:
            options["mounts"] = list(d["mounts"])
        if d["network"] == "filtered" and (net["whitelist"] or net["blacklist"]):
            options["network_filter"] = {"whitelist": list(net["whitelist"]),
                                         "blacklist": list(net["blacklist"])}
        return options

    def remote_code(self) -> RemoteCodePolicy:
        """The ``remoteCode`` section as the engine's ``remote_code=`` policy."""
        section = self.values["remoteCode"]
        assert isinstance(section, dict)
        return RemoteCodePolicy.from_mapping(section)

    def server_policy(self) -> ServerPolicy:
        """The ``server`` section as isol8 serve's policy (needs the server extra); a
        top-level ``maxConcurrent`` is its ``capacity.maxConcurrent`` unless that is set.
        Errors name the file and the key."""
        from ..server.policy import ServerPolicy

        section = dict(self.values["server"])  # type: ignore[call-overload]
        concurrent = self.values.get("maxConcurrent")
        capacity = section.get("capacity", {})
        if concurrent is not None and isinstance(capacity, Mapping) \
                and "maxConcurrent" not in capacity:
            section["capacity"] = {**capacity, "maxConcurrent": concurrent}
        try:
            policy = ServerPolicy.from_mapping(section)
        except InvalidRequest as exc:
            origin = self._origin("server")
            if origin == DEFAULT:
                origin = self.sources.get("maxConcurrent", DEFAULT)
            prefix = "" if origin in self.policy_files else "server."
            raise InvalidRequest(f"{origin}: {prefix}{exc}") from None
        # upstream's server runs with config.defaults and config.remoteCode (a client's
        # options override the defaults within the policy, never the remote-code policy)
        if "remoteCode" not in section and self._origin("remoteCode") != DEFAULT:
            policy = replace(policy, remote_code=self.remote_code())
        return replace(policy, defaults=self._wire_defaults())

    def _wire_defaults(self) -> dict[str, object]:
        """The ``defaults`` a file set, as the wire's option names; the network lists too
        when the default network is filtered."""
        d, net = self.values["defaults"], self.values["network"]
        assert isinstance(d, dict) and isinstance(net, dict)
        wire = {name: d[name] for name in SERVER_DEFAULTS
                if self.sources.get(f"defaults.{name}", DEFAULT) != DEFAULT}
        if d["network"] == "filtered" and (net["whitelist"] or net["blacklist"]):
            wire["networkFilter"] = {"whitelist": list(net["whitelist"]),
                                     "blacklist": list(net["blacklist"])}
        return wire

    def mcp_limits(self) -> McpLimits:
        """The ``mcp`` section as the MCP server's limits; errors name the file."""
        from ..mcp.limits import McpLimits

        try:
            return McpLimits.from_mapping(self.values["mcp"])  # type: ignore[arg-type]
        except InvalidRequest as exc:
            raise InvalidRequest(f"{self._origin('mcp')}: {exc}") from None

    def _origin(self, name: str) -> str:
        """The file(s) a section came from."""
        return ", ".join(sorted({self.sources[k] for k in self._keys(name)} - {DEFAULT})) \
            or DEFAULT

    def to_dict(self) -> dict[str, object]:
        return {"files": list(self.files), "values": self.values,
                "sources": dict(sorted(self.sources.items())),
                "warnings": list(self.warnings)}


def load_config(cwd: str | None = None, path: str | None = None) -> Config:
    """The configuration ``isol8`` commands use, for a host that wants the same.

    ``path`` (else ``$ISOL8_CONFIG``, else ``~/.isol8/config.toml`` or ``config.json``) is
    read in full; ``isol8.config.json`` in ``cwd`` (default: the current directory) only
    for keys that tighten (isol8.config.cwd). The library never calls this on its own: an
    embedding host's engines must not change with a file in the user's home, so a host
    opts in with ``Isol8(**load_config().engine_options())``."""
    config = Config()
    trusted, config.warnings = files.trusted_file(path)
    if trusted is not None:
        data, is_policy = files.read(trusted)
        checked, warnings = check_file(data, trusted)
        config.merge(checked, trusted)
        config.files.append(trusted)
        config.warnings += warnings
        if is_policy:
            config.policy_files.add(trusted)
        if config.section("mcp") is not None:
            try:  # checked now when the MCP server is installed (it is light to import)
                config.mcp_limits()
            except ImportError:
                pass
    local = files.cwd_file(cwd, trusted)
    if local is not None:
        data, _ = files.read(local)
        config.warnings += tighten(config.values, config.sources, data, local)
        config.files.append(local)
    return config
