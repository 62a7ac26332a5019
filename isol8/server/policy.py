"""The server policy: what a remote client may ask of the engine.

Upstream's server passes a client's ``options`` straight to its engine, so any client can
turn on the host's network, drop seccomp, mount host paths or ask for all of the host's
memory (isol8-api.md §4.3, §8.3). Here the operator sets ceilings and allowances; numeric
options above a ceiling are clamped (and the response lists what was, in ``clamped``), and
options that weaken isolation are refused with 400 naming the field unless allowed.

Schema (TOML or JSON, every key optional; an unknown key is an error, since a misspelled
allowance silently left at its default would hide the operator's intent)::

    runtimes = ["python", "node", "bash"]     # allowed runtimes (default: all)
    images = ["python", "node"]               # options.image: store images clients may
                                              # run on (default: every image in the
                                              # server's store; [] none). Never a path.
    [ceilings]                                # upper bounds, wire names and syntax
    timeoutMs = 300000
    memoryLimit = "2g"
    cpuLimit = 2.0
    pidsLimit = 256
    maxOutputSize = 16777216                  # or "16m"
    sandboxSize = "2g"
    tmpSize = "1g"
    [network]
    modes = ["none", "filtered"]              # "host" only if listed
    allowPrivate = false                      # networkFilter.allowPrivate
    pins = false                              # networkFilter.hosts
    [allow]
    seccompUnconfined = false                 # options.security.seccomp = "unconfined"
    [[mounts]]                                # host paths clients may mount (default: none)
    source = "/srv/datasets"                  # this path or anything under it
    writable = false                          # read-write too (default: read-only only)
    [capacity]                                # admission control (isol8.server.capacity)
    maxConcurrent = 4                         # executions at once (default 2 x usable cpus)
    maxQueue = 256                            # waiting for room; beyond: 429 (default 64 x
                                              # maxConcurrent; 0 answers 429 at once)
    queueTimeoutMs = 10000                    # longest wait in the queue, then 429
    retryAfterS = 1                           # the 429s' Retry-After
    memoryBudget = "12g"                      # sum of memoryLimit over live sandboxes
                                              # (default 3/4 of MemAvailable at start)
    tmpfsBudget = "12g"                       # sum of sandboxSize + tmpSize + /dev/shm
                                              # (default 3/4 of MemAvailable + SwapFree)
    maxBodySize = "16m"                       # request body; beyond: 413
    maxCodeSize = "1m"                        # request.code, cmd, setupScript; beyond: 413
    maxSessions = 64                          # sessions alive, every key; beyond: 429
    maxSessionsPerKey = 16                    # sessions alive per API key; beyond: 429
    sessionTtlMs = 3600000                    # idle sessions stopped after this
    drainTimeoutMs = 30000                    # SIGTERM: runs killed after this
    maxEngines = 4                            # shared engines (option sets) kept
    [remoteCode]                              # request.codeUrl (isol8.remote_code): off
    enabled = true                            # unless enabled here; upstream's keys; a
    allowedHosts = ["^raw\\.githubusercontent\\.com$"]  # client's options cannot change it

A client's ``mounts`` are checked against ``[[mounts]]`` after resolving symlinks, and sent
to the engine resolved (its helper opens them with RESOLVE_NO_SYMLINKS), so a symlink
planted under a listed directory cannot lead a mount outside it. Always refused in this
version: ``readonlyRootFs: false``, ``persist``, ``debug``. ``image`` names an image of
the server's store (isol8.images), never a host path: a client naming a directory as its
root would be a mount of it.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace

from ..errors import InvalidRequest
from ..images.root import HOST
from ..images.store import NAME
from ..policy import (NETWORK_MODES, Mount, overlapping, parse_size, positive_int,
                      validated_mounts)
from ..remote_code import RemoteCodePolicy
from ..runtimes import RUNTIMES
from .wire import ExecuteBody, WireError

# The engine's defaults (isol8.policy.EngineOptions.build), in bytes where sizes: an absent
# option takes them, so the ceiling must bound them too.
ENGINE_DEFAULTS: dict[str, float | int] = {
    "timeoutMs": 30_000, "memoryLimit": 512 << 20, "cpuLimit": 1.0, "pidsLimit": 64,
    "maxOutputSize": 1 << 20, "sandboxSize": 512 << 20, "tmpSize": 256 << 20,
}
DEFAULT_CEILINGS: dict[str, float | int] = {
    "timeoutMs": 300_000, "memoryLimit": 2 << 30, "cpuLimit": 2.0, "pidsLimit": 256,
    "maxOutputSize": 16 << 20, "sandboxSize": 2 << 30, "tmpSize": 1 << 30,
}
_SIZES = ("memoryLimit", "maxOutputSize", "sandboxSize", "tmpSize")
_ALWAYS_REFUSED: dict[str, Callable[[object], bool]] = {
    "readonlyRootFs": lambda v: v is False,
    "persist": lambda v: v is True,
    "debug": lambda v: v is True,
}
_TOP_KEYS = ("runtimes", "images", "ceilings", "network", "allow", "capacity", "mounts",
             "remoteCode")
DEFAULT_MAX_ENGINES = 4
# Queued requests per execution slot, by default. A burst of clients beyond it is answered
# 429 and comes back after Retry-After, and every such round trip costs the server (and the
# clients) CPU the runs could have had: at 200 clients on 2 cores, a queue of 4 per slot
# gave 0.77x the library's throughput, 64 per slot 0.87x (benchmarks/server_load.py). A
# queued request holds its body: maxQueue x maxBodySize bounds that memory.
QUEUE_PER_SLOT = 64


@dataclass(frozen=True, slots=True)
class Clamped:
    """One value lowered to its ceiling: the wire path, what was asked, what applies."""

    field: str
    requested: object
    applied: float | int

    def to_dict(self) -> dict[str, object]:
        return {"field": self.field, "requested": self.requested, "applied": self.applied}


def _meminfo(name: str) -> int:
    """A /proc/meminfo line in bytes (0 if absent)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key == name:
                    return int(value.split()[0]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True, slots=True)
class CapacityPolicy:
    """How much the server runs at once (isol8.server.capacity). Every field is a
    ``[capacity]`` key of the policy file, in camelCase; sizes in bytes.

    The defaults follow the host as the server starts. Budgets sum each sandbox's *limits*
    (what it may take, not what it uses now), so a full server cannot drive the host into
    its own OOM killer; MemAvailable is read once, since the sandboxes admitted later draw
    it down themselves. tmpfs pages are memory (or swap) too: a write into /sandbox is
    charged to the writer's memory cgroup, but the pages of a sandbox whose memory limit a
    weaker backend enforces are not, hence a budget of their own."""

    max_concurrent: int = 4
    max_queue: int = 16
    queue_timeout_ms: int = 10_000
    retry_after_s: int = 1
    memory_budget: int = 4 << 30
    tmpfs_budget: int = 4 << 30
    max_body_size: int = 16 << 20
    max_code_size: int = 1 << 20
    max_sessions: int = 64
    max_sessions_per_key: int = 16
    session_ttl_ms: int = 3_600_000
    drain_timeout_ms: int = 30_000
    max_engines: int = DEFAULT_MAX_ENGINES

    @classmethod
    def for_host(cls) -> CapacityPolicy:
        cpus = len(os.sched_getaffinity(0))
        available = _meminfo("MemAvailable") or 4 << 30  # no /proc/meminfo: assume 4 GiB
        concurrent = max(2, 2 * cpus)
        return cls(max_concurrent=concurrent, max_queue=QUEUE_PER_SLOT * concurrent,
                   memory_budget=available * 3 // 4,
                   tmpfs_budget=(available + _meminfo("SwapFree")) * 3 // 4)

    @classmethod
    def from_mapping(cls, data: object) -> CapacityPolicy:
        known = {_camel(f.name): f.name for f in fields(cls)}
        section = _section(data, "capacity", tuple(known))
        base = cls.for_host()
        values: dict[str, int] = {}
        for key, value in section.items():
            path, name = f"capacity.{key}", known[key]
            if name.endswith(("_budget", "_size")):
                values[name] = parse_size(value, path)  # type: ignore[arg-type]
            elif name == "max_queue":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise InvalidRequest(f"{path}: expected an integer >= 0, got {value!r}")
                values[name] = value
            else:
                values[name] = positive_int(value, path)
        if "max_concurrent" in values and "max_queue" not in values:
            values["max_queue"] = QUEUE_PER_SLOT * values["max_concurrent"]
        return replace(base, **values)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


@dataclass(frozen=True, slots=True)
class ServerPolicy:
    ceilings: Mapping[str, float | int] = field(default_factory=lambda: dict(DEFAULT_CEILINGS))
    network_modes: tuple[str, ...] = ("none", "filtered")
    allow_private: bool = False
    pins: bool = False
    seccomp_unconfined: bool = False
    runtimes: tuple[str, ...] = tuple(RUNTIMES)
    capacity: CapacityPolicy = field(default_factory=CapacityPolicy.for_host)
    mounts: tuple[MountGrant, ...] = ()
    images: tuple[str, ...] | None = None  # None: every image in the store
    remote_code: RemoteCodePolicy = RemoteCodePolicy()  # request.codeUrl; off by default
    # options a request gets unless it sets them: a config file's [defaults]
    # (isol8.config), not a key of the policy file
    defaults: Mapping[str, object] = field(default_factory=dict)
    # what this server keeps on the host (its key store, audit log, config file), by what
    # it is, resolved: no client mount may reach them, even inside a grant, read-only
    # either (the audit log holds every tenant's code, the key store every key's hash and
    # a writable one would let a tenant mint keys). Set by `isol8 serve`.
    state_files: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def default(cls) -> ServerPolicy:
        return cls()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ServerPolicy:
        """Read a policy file: JSON if it ends in ``.json``, else TOML. Errors name the file
        and the key."""
        name = os.fspath(path)
        try:
            with open(name, "rb") as fh:
                data = json.load(fh) if name.endswith(".json") else tomllib.load(fh)
        except (OSError, ValueError) as exc:  # TOMLDecodeError and JSONDecodeError too
            raise InvalidRequest(f"{name}: {exc}") from None
        try:
            return cls.from_mapping(data)
        except InvalidRequest as exc:
            raise InvalidRequest(f"{name}: {exc}") from None

    @classmethod
    def from_mapping(cls, data: object) -> ServerPolicy:
        section = _section(data, "policy", _TOP_KEYS)
        policy = cls()
        ceilings = dict(policy.ceilings)
        for name, value in _section(section.get("ceilings", {}), "ceilings",
                                    tuple(DEFAULT_CEILINGS)).items():
            ceilings[name] = _ceiling(name, value)
        net = _section(section.get("network", {}), "network", ("modes", "allowPrivate", "pins"))
        allow = _section(section.get("allow", {}), "allow", ("seccompUnconfined",))
        return replace(
            policy, ceilings=ceilings,
            network_modes=_names(net.get("modes", list(policy.network_modes)),
                                 "network.modes", NETWORK_MODES),
            allow_private=_flag(net.get("allowPrivate", False), "network.allowPrivate"),
            pins=_flag(net.get("pins", False), "network.pins"),
            seccomp_unconfined=_flag(allow.get("seccompUnconfined", False),
                                     "allow.seccompUnconfined"),
            capacity=CapacityPolicy.from_mapping(section.get("capacity", {})),
            runtimes=_names(section.get("runtimes", list(policy.runtimes)), "runtimes",
                            tuple(RUNTIMES)),
            mounts=_grants(section.get("mounts", [])),
            images=_image_names(section["images"]) if "images" in section else None,
            remote_code=RemoteCodePolicy.from_mapping(
                section.get("remoteCode")))  # type: ignore[arg-type]

    def apply(self, body: ExecuteBody) -> tuple[ExecuteBody, list[Clamped]]:
        """The body this server will run: refused fields raise ``WireError`` (400), numeric
        options are clamped to the ceilings and every ceiling'd option is filled in, so two
        bodies that run alike have equal options (the engine key, isol8.server.engines)."""
        options, request = {**self.defaults, **body.options}, dict(body.request)
        self._refuse(options, request)
        if options.get("mounts") not in (None, [], ()):
            options["mounts"] = [{"source": m.source, "target": m.target,
                                  "readonly": m.readonly}
                                 for m in self._granted(options["mounts"])]
        clamped: list[Clamped] = []
        for name, ceiling in self.ceilings.items():
            requested = options.get(name)
            value = (ENGINE_DEFAULTS[name] if requested is None
                     else _wire_value(f"options.{name}", name, requested))
            if value > ceiling:
                value = ceiling
                if requested is not None:
                    clamped.append(Clamped(f"options.{name}", requested, ceiling))
            options[name] = value
        options.setdefault("network", "none")
        timeout = request.get("timeoutMs")
        if isinstance(timeout, int) and timeout > self.ceilings["timeoutMs"]:
            request["timeoutMs"] = self.ceilings["timeoutMs"]
            clamped.append(Clamped("request.timeoutMs", timeout, self.ceilings["timeoutMs"]))
        return replace(body, options=options, request=request), clamped

    def _refuse(self, options: Mapping[str, object], request: Mapping[str, object]) -> None:
        for name, weakens in _ALWAYS_REFUSED.items():
            if name in options and weakens(options[name]):
                raise WireError(f"options.{name}", "not allowed by the server policy")
        network = options.get("network", "none")
        if network not in self.network_modes:
            raise WireError("options.network", f"{network!r} is not allowed by the server "
                            f"policy (allowed: {', '.join(self.network_modes)})")
        if options.get("seccomp") == "unconfined" and not self.seccomp_unconfined:
            raise WireError("options.security.seccomp",
                            "'unconfined' is not allowed by the server policy")
        net_filter = options.get("networkFilter")
        if isinstance(net_filter, Mapping):
            if net_filter.get("allowPrivate") is True and not self.allow_private:
                raise WireError("options.networkFilter.allowPrivate",
                                "not allowed by the server policy")
            if net_filter.get("hosts") and not self.pins:
                raise WireError("options.networkFilter.hosts",
                                "pins are not allowed by the server policy")
        image = options.get("image")
        if image is not None and image != HOST:
            if not isinstance(image, str) or not NAME.match(image):
                raise WireError("options.image", "expected the name of an image in the "
                                "server's store: host paths and registry references are "
                                "not allowed by the server policy")
            if self.images is not None and image not in self.images:
                raise WireError("options.image", f"{image!r} is not allowed by the server "
                                f"policy (allowed: {', '.join(self.images) or 'none'})")
        if request.get("codeUrl") and not self.remote_code.enabled:
            raise WireError("request.codeUrl", "remote code is disabled on this server (its "
                            "policy's remoteCode); send the code itself")
        runtime = request.get("runtime")
        if isinstance(runtime, str) and runtime in RUNTIMES and runtime not in self.runtimes:
            raise WireError("request.runtime", f"{runtime!r} is not allowed by the server "
                            f"policy (allowed: {', '.join(self.runtimes)})")
        if "cmd" in request and "bash" not in self.runtimes:
            raise WireError("request.cmd", "shell commands (bash) are not allowed by the "
                            "server policy")


    def _granted(self, value: object) -> tuple[Mount, ...]:
        """The client's mounts, resolved, each inside a grant that allows its mode."""
        try:
            mounts = validated_mounts(value)
        except InvalidRequest as exc:
            where, _, why = str(exc).partition(": ")
            raise WireError(f"options.{where}", why) from None
        for i, mount in enumerate(mounts):
            grant = next((g for g in self.mounts if g.covers(mount.source)), None)
            if grant is None:
                raise WireError(f"options.mounts[{i}].source", f"{mount.source} is not a "
                                "path the server policy lets clients mount")
            overlap = overlapping(mount.source, self.state_files)
            if overlap:
                relation, what, path = overlap
                raise WireError(f"options.mounts[{i}].source", f"{mount.source} {relation} "
                                f"this server's own {what} ({path}), which no client may mount")
            if not mount.readonly and not grant.writable:
                raise WireError(f"options.mounts[{i}].readonly", f"{grant.source} may only "
                                "be mounted read-only by the server policy")
        return mounts


@dataclass(frozen=True, slots=True)
class MountGrant:
    """A ``[[mounts]]`` entry: a host path (resolved at load) clients may mount, or mount
    anything under."""

    source: str
    writable: bool = False

    def covers(self, path: str) -> bool:
        return path == self.source or path.startswith(self.source.rstrip("/") + "/")


def _grants(value: object) -> tuple[MountGrant, ...]:
    if not isinstance(value, list):
        raise InvalidRequest(f"mounts: expected a list of tables/objects, got {value!r}")
    grants = []
    for i, item in enumerate(value):
        entry = _section(item, f"mounts[{i}]", ("source", "writable"))
        source = entry.get("source")
        if not isinstance(source, str) or not os.path.isabs(source):
            raise InvalidRequest(f"mounts[{i}].source: expected an absolute host path, "
                                 f"got {source!r}")
        if not os.path.exists(source):
            raise InvalidRequest(f"mounts[{i}].source: {source} does not exist")
        grants.append(MountGrant(os.path.realpath(source),
                                 _flag(entry.get("writable", False), f"mounts[{i}].writable")))
    return tuple(grants)


def _wire_value(path: str, name: str, value: object) -> float | int:
    """A ceiling'd option as a number (sizes in bytes), for comparison and the engine key."""
    if name in _SIZES:
        try:
            return parse_size(value, path)  # type: ignore[arg-type]
        except InvalidRequest as exc:
            raise WireError(path, str(exc).split(": ", 1)[1]) from None
    return value  # type: ignore[return-value]  # wire.py checked the type


def _ceiling(name: str, value: object) -> float | int:
    path = f"ceilings.{name}"
    if name in _SIZES:
        return parse_size(value, path)  # type: ignore[arg-type]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidRequest(f"{path}: expected a positive number, got {value!r}")
    if name != "cpuLimit" and not float(value).is_integer():
        raise InvalidRequest(f"{path}: expected an integer, got {value!r}")
    return value if name == "cpuLimit" else int(value)


def _image_names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and NAME.match(v)
                                               for v in value):
        raise InvalidRequest("images: expected a list of image names")
    return tuple(value)


def _section(value: object, path: str, known: tuple[str, ...]) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{path}: expected a table/object, got {value!r}")
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise InvalidRequest(f"{path}: unknown key(s) {', '.join(unknown)} "
                             f"(known: {', '.join(known)})")
    return value


def _names(value: object, path: str, known: tuple[str, ...]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{path}: expected a list of strings, got {value!r}")
    for item in value:
        if item not in known:
            raise InvalidRequest(f"{path}: unknown {item!r} (known: {', '.join(known)})")
    return tuple(dict.fromkeys(value))


def _flag(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{path}: expected true or false, got {value!r}")
    return value
