"""Engine options: defaults as upstream, and validation that names the offending field."""

from __future__ import annotations

import os
import posixpath
import re
import stat
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass

from . import _paths
from .errors import InvalidRequest
from .images.root import validated_rootfs
from .images.store import default_root as image_store_root
from .packages.cache import default_root
from .identity import (DEFAULT_UID_RANGE, LEASE_DIR, default_uid_range, maps_foreign_ids,
                       require_searchable, validate_uid_range)
from .limits import Limits
from .network.rules import NetworkFilter

NETWORK_MODES = ("none", "host", "filtered")
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


# cgroup v2's cpu.max is a quota per 100 ms period, which the kernel takes only from 1 ms
# (min_cfs_quota_period; less is EINVAL in tg_set_cfs_bandwidth): 0.01 of a cpu at least.
# Linux runs at most 8192 cpus (NR_CPUS), so more is a mistake, and int() of an infinite
# quota would fail before the write.
MIN_CPU_LIMIT, MAX_CPU_LIMIT = 0.01, 8192.0


def cpu_share(value: object, field: str) -> float:
    cpu = positive_number(value, field)
    if not MIN_CPU_LIMIT <= cpu <= MAX_CPU_LIMIT:
        raise InvalidRequest(f"{field}: expected {MIN_CPU_LIMIT} to {MAX_CPU_LIMIT:g} cpus, "
                             f"got {value!r}")
    return cpu


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


def boolean(value: object, field: str) -> bool:
    # Only real booleans: the string "false" is truthy.
    if not isinstance(value, bool):
        raise InvalidRequest(f"{field}: expected true or false, got {value!r}")
    return value


def choice(value: str, allowed: tuple[str, ...], field: str) -> str:
    if value not in allowed:
        raise InvalidRequest(f"{field}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


# -- mounts: host directories and files bound into the sandbox ------------------------------

MOUNT_ROOTS = ("/sandbox", "/mnt")
MAX_MOUNTS = 32
# Kernel interfaces, never a caller's data: a host /proc would hand out /proc/<pid>/root.
_KERNEL_TREES = ("/proc", "/sys", "/dev")
# The same file systems found mounted below a source (the bind is recursive) refuse it too.
_KERNEL_FS = frozenset({"proc", "sysfs", "devtmpfs", "devpts", "securityfs", "debugfs",
                        "tracefs", "bpf", "cgroup", "cgroup2", "configfs", "efivarfs",
                        "binfmt_misc", "fusectl", "pstore"})
# Where every code run writes its program (``/sandbox/main<ext>``): a mount there would fail
# every run (read-only) or overwrite the host file with the code (read-write).
_CODE_FILE = re.compile(r"^/sandbox/main\.[^/]*$")


@dataclass(frozen=True, slots=True)
class Mount:
    """A validated mount: ``source`` resolved on the host, ``target`` normalized."""

    source: str
    target: str
    readonly: bool = True


def _mount_source(value: object, field: str, readonly: bool = True,
                  also_own: Mapping[str, str] | None = None) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value or "\0" in value:
        raise InvalidRequest(f"{field}: expected a host path, got {value!r}")
    if not os.path.isabs(value):
        raise InvalidRequest(f"{field}: must be an absolute host path, got {value!r}")
    # Resolved once, now: the plan carries a path without symlinks, so re-pointing a symlink
    # on the host later cannot redirect the mount, and the helper opens it with
    # RESOLVE_NO_SYMLINKS, so a symlink swapped into the resolved path fails the setup.
    resolved = os.path.realpath(value)
    try:
        mode = os.stat(resolved).st_mode
    except OSError as exc:
        raise InvalidRequest(f"{field}: {value} {_reason(exc)}") from None
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise InvalidRequest(f"{field}: {value} is not a directory or a regular file")
    if not readonly:
        _refuse_own_files(resolved, value, field, also_own)
    for tree in _KERNEL_TREES:
        if resolved == tree or resolved.startswith(tree + "/"):
            raise InvalidRequest(f"{field}: {value} is in the host's {tree}, which cannot be "
                                 "mounted into a sandbox")
    kernel_fs = _kernel_fs_below(resolved)
    if kernel_fs:
        raise InvalidRequest(f"{field}: {value} holds {kernel_fs[1]} (a {kernel_fs[0]} mount), "
                             "which cannot be mounted into a sandbox")
    if maps_foreign_ids():
        _require_reachable_by_others(resolved, value, field)
    return resolved


def _kernel_fs_below(path: str) -> tuple[str, str] | None:
    """A kernel file system mounted at or below ``path``, as (type, mount point)."""
    prefix = path.rstrip("/") + "/"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
        fstype = rest.split()[0]
        if fstype in _KERNEL_FS and (point == path or point.startswith(prefix)):
            return fstype, point
    return None


def _reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "does not exist"
    return f"cannot be used: {exc.strerror}"


def _require_reachable_by_others(resolved: str, value: str, field: str) -> None:
    """The source itself needs no "other" bits once idmapped: its owner's bits apply
    inside; its parents do (isol8.identity.require_searchable)."""
    require_searchable(resolved, f"{field}: {value}", "mount a path whose parents are")


def own_files() -> dict[str, str]:
    """What runs or steers this supervisor and the next sandboxes, by what it is: the
    package with its helper binary, the Python prefix it runs from and the interpreter with
    its standard library, the per-user cache, the uid leases, the configuration the next
    isol8 reads as trusted (``~/.isol8``, ``$ISOL8_CONFIG``: a sandbox writing there could
    turn on ``network: "host"`` for every later run), the image store whose images later
    sandboxes run on and the package download cache they install from (one tenant's write
    would poison every other's), each resolved. As root a read-write mount is idmapped to the
    source's owner, so the sandbox writes there as root; rootless, as the caller, who owns
    all of it."""
    from .config.files import home_dir  # isol8.config imports this module

    paths = sysconfig.get_paths()
    found: dict[str, str | os.PathLike[str] | None] = {
        "package": _paths.PACKAGE_DIR, "helper binary": _paths.helper_path(),
        "Python prefix": sys.prefix, "Python exec prefix": sys.exec_prefix,
        "interpreter": sys.executable, "standard library": paths["stdlib"],
        "platform standard library": paths["platstdlib"], "cache": _paths.cache_dir(),
        "uid leases": os.path.dirname(LEASE_DIR),
        "configuration": home_dir(), "configuration file": os.environ.get("ISOL8_CONFIG"),
        "image store": image_store_root(), "package cache": default_root(),
    }
    return {what: os.path.realpath(os.fspath(path)) for what, path in found.items() if path}


def _refuse_own_files(resolved: str, value: object, field: str,
                      also_own: Mapping[str, str] | None) -> None:
    """A read-write mount may neither contain one of isol8's own files nor lie inside one:
    either way user code could rewrite what the supervisor executes or trusts next (the
    seccomp cache an older isol8 loads, the helper, a module). Read-only mounts of them are
    fine."""
    own = own_files()
    own.update({what: os.path.realpath(path) for what, path in (also_own or {}).items()})
    overlap = overlapping(resolved, own)
    if overlap:
        relation, what, path = overlap
        raise InvalidRequest(
            f"{field}: {value} {relation} isol8's own {what} ({path}); a read-write mount "
            "would let sandboxed code rewrite what runs the supervisor and the next sandboxes. "
            "Mount it read-only, or mount a directory that does not contain it")


def overlapping(resolved: str, files: Mapping[str, str]) -> tuple[str, str, str] | None:
    """(relation, what, path) of the file in ``files`` (what -> resolved path) that the
    resolved ``resolved`` is, contains or lies inside, the closest relation first; None if
    none."""
    overlaps = []  # (rank, relation, what, path)
    for what, path in files.items():
        if path == resolved:
            overlaps.append((0, "is", what, path))
        elif path.startswith(resolved.rstrip("/") + "/"):
            overlaps.append((1, "contains", what, path))
        elif resolved.startswith(path + "/"):
            overlaps.append((2, "is inside", what, path))
    if not overlaps:
        return None
    _, relation, what, path = min(overlaps, key=lambda o: o[0])
    return relation, what, path


def _mount_target(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise InvalidRequest(f"{field}: expected an absolute path inside the sandbox, "
                             f"got {value!r}")
    if ".." in value.split("/"):
        raise InvalidRequest(f"{field}: must not contain '..', got {value!r}")
    target = "/" + posixpath.normpath(value).lstrip("/")
    if not any(target.startswith(root + "/") for root in MOUNT_ROOTS):
        raise InvalidRequest(f"{field}: must be a path inside /sandbox or /mnt (not /sandbox "
                             f"or /mnt itself), got {value!r}")
    if _CODE_FILE.match(target):
        raise InvalidRequest(f"{field}: {target} is where isol8 writes the code of a run; "
                             "mount somewhere else, e.g. a directory under /sandbox")
    return target


def validated_mounts(value: object, also_own: Mapping[str, str] | None = None
                     ) -> tuple[Mount, ...]:
    """``[{"source": host path, "target": sandbox path, "readonly": True}, ...]``;
    ``also_own`` names more of isol8's files than ``own_files()`` (an engine's own package
    cache), which a read-write mount must not reach either."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise InvalidRequest('mounts: expected a list of {"source", "target", "readonly"} '
                             f"mappings, got {value!r}")
    items = list(value)  # type: ignore[call-overload]
    if len(items) > MAX_MOUNTS:
        raise InvalidRequest(f"mounts: at most {MAX_MOUNTS} mounts, got {len(items)}")
    mounts = []
    for i, item in enumerate(items):
        field = f"mounts[{i}]"
        if isinstance(item, Mount):
            item = {"source": item.source, "target": item.target, "readonly": item.readonly}
        if not isinstance(item, dict):
            raise InvalidRequest(f'{field}: expected a mapping with "source" and "target", '
                                 f"got {item!r}")
        unknown = sorted(str(k) for k in item if k not in ("source", "target", "readonly"))
        if unknown:
            raise InvalidRequest(f"{field}: unknown key(s) {', '.join(unknown)} (expected "
                                 "source, target, readonly)")
        readonly = item.get("readonly", True)
        if not isinstance(readonly, bool):
            raise InvalidRequest(f"{field}.readonly: expected true or false, got {readonly!r}")
        target = _mount_target(item.get("target"), f"{field}.target")
        source = _mount_source(item.get("source"), f"{field}.source", readonly, also_own)
        mounts.append(Mount(source, target, readonly))
    # One mount per target, none inside another: a mount point inside a host mount would
    # have to be created in the host's directory.
    for i, a in enumerate(mounts):
        for b in mounts[i + 1:]:
            if a.target == b.target:
                raise InvalidRequest(f"mounts: duplicate target {a.target}")
            outer, inner = sorted((a.target, b.target), key=len)
            if inner.startswith(outer + "/"):
                raise InvalidRequest(f"mounts: {inner} is inside {outer}; nested mount "
                                     "targets are not supported")
    return tuple(mounts)


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOptions:
    mode: str = "ephemeral"
    network: str = "none"
    timeout_ms: int = 30_000
    max_output_size: int = 1 << 20
    sandbox_size: int = 512 << 20
    tmp_size: int = 256 << 20
    tmp_exec: bool = False
    seccomp: str = "strict"
    uid_range: tuple[int, int] = DEFAULT_UID_RANGE
    limits: Limits = Limits(memory=512 << 20, cpu=1.0, pids=64)
    cgroup_parent: str | None = None
    secrets: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    network_filter: NetworkFilter | None = None  # network="filtered" only
    log_network: bool = False
    rootfs: str = "host"  # "host", an image name or a path (isol8.images.root)
    package_index_url: str | None = None  # install_packages' index (isol8.packages.index)
    package_cache: str | None = None  # the shared download cache's root; None: no cache

    @classmethod
    def build(cls, *, mode: str = "ephemeral", network: str = "none", timeout_ms: int = 30_000,
              max_output_size: int = 1 << 20, sandbox_size: str | int = "512m",
              tmp_size: str | int = "256m", tmp_exec: bool = False, seccomp: str = "strict",
              uid_range: tuple[int, int] | None = None,
              memory_limit: str | int = "512m", cpu_limit: float = 1.0, pids_limit: int = 64,
              strict_limits: bool = False,
              cgroup_parent: str | None = None,
              secrets: dict[str, str] | None = None,
              mounts: object = None, network_filter: object = None,
              log_network: bool = False, rootfs: object = "host",
              package_index_url: str | None = None,
              package_cache: str | bool = True) -> "EngineOptions":
        parent = cgroup_parent or os.environ.get("ISOL8_CGROUP_PARENT") or None
        if parent is not None and not os.path.isabs(parent):
            raise InvalidRequest(f"cgroup_parent: expected an absolute path, got {parent!r}")
        network = choice(network, NETWORK_MODES, "network")
        cache = _package_cache(package_cache)
        if network_filter is not None and network != "filtered":
            raise InvalidRequest(f"network_filter: needs network='filtered' (network is "
                                 f"{network!r}, which it would not restrict)")
        return cls(
            mode=choice(mode, MODES, "mode"),
            limits=Limits(memory=parse_size(memory_limit, "memory_limit"),
                          cpu=cpu_share(cpu_limit, "cpu_limit"),
                          pids=positive_int(pids_limit, "pids_limit"),
                          strict=bool(strict_limits)),
            cgroup_parent=parent,
            secrets=tuple(env_mapping(secrets, "secrets").items()),
            network=network,
            network_filter=(NetworkFilter.from_options(network_filter)  # type: ignore[arg-type]
                            if network == "filtered" else None),
            log_network=boolean(log_network, "log_network"),
            timeout_ms=positive_int(timeout_ms, "timeout_ms"),
            max_output_size=positive_int(max_output_size, "max_output_size"),
            sandbox_size=parse_size(sandbox_size, "sandbox_size"),
            tmp_size=parse_size(tmp_size, "tmp_size"),
            tmp_exec=boolean(tmp_exec, "tmp_exec"),
            seccomp=choice(seccomp, SECCOMP_MODES, "seccomp"),
            uid_range=(default_uid_range() if uid_range is None
                       else validate_uid_range(uid_range)),
            mounts=validated_mounts(mounts, {"package cache": cache} if cache else None),
            rootfs=validated_rootfs(rootfs),
            package_index_url=_index_url(package_index_url),
            package_cache=cache,
        )


def _index_url(value: object) -> str | None:
    """The option, else ``$ISOL8_PACKAGE_INDEX`` (how a server's operator sets it), else None
    (the public registries)."""
    if value is None:
        value = os.environ.get("ISOL8_PACKAGE_INDEX") or None
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise InvalidRequest(f"package_index_url (or $ISOL8_PACKAGE_INDEX): expected an "
                             f"http(s) URL, got {value!r}")
    return value.rstrip("/")


def _package_cache(value: object) -> str | None:
    """True: the default root (isol8.packages.cache); False: none; else an absolute path."""
    if value is True:
        return default_root()
    if value is False:
        return None
    if not isinstance(value, str) or not os.path.isabs(value):
        raise InvalidRequest(f"package_cache: expected True, False or an absolute path, "
                             f"got {value!r}")
    return value
