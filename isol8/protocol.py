"""The wire format between the supervisor and ``isol8-helper``: pure functions, no I/O.

Messages to the helper are a type byte followed by records (``u16 tag, u16 0, u32 length,
payload``, little-endian); strings are NUL-terminated. Messages from the helper are single
JSON objects. Everything coming back is parsed as untrusted: the sandbox's PID 1 shares its
uid with user code, so every event is size-capped, type-checked and rejected when malformed.
``csrc/helper.h`` mirrors the tags.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

MSG_CONFIG = b"C"
MSG_EXEC = b"X"
MSG_KILL = b"K"
MSG_READ = b"R"
MSG_DRAIN = b"D"
MAX_EVENT = 4096  # the helper formats every event into a 4 KiB buffer
MAX_FILES = 64  # files written before an exec (the code is one), one memfd each
MAX_EXEC_FDS = 3 + MAX_FILES
MAX_ARGS = 4096  # argv entries, and env entries, of one exec request
MAX_READ_PATHS = 256  # paths of one read request
READ_CHUNK = 1 << 16  # the largest chunk of a read stream
MAX_LISTENERS = 8  # sockets of one capture record
MAX_NFT = 16384  # bytes of the nftables batch (isol8.network.nft's are 1.5 and 3.2 KiB)


class Tag(IntEnum):
    HOST_UID = 1
    HOST_GID = 2
    HOSTNAME = 3
    NEW_NETNS = 4
    SECCOMP = 5
    RLIMIT = 6
    STAGING_DIR = 7
    CGROUP_FDS = 8
    MEMORY_WATCH = 9
    OP_BIND_RO = 10
    OP_TMPFS = 11
    OP_DIR = 12
    OP_FILE = 13
    OP_SYMLINK = 14
    OP_PROC = 15
    OP_BIND_DEV = 16
    OP_DEVPTS = 17
    OP_RO_SELF = 18
    WATCH_PATH = 19
    EXEC_ID = 20
    ARG = 21
    ENV = 22
    CWD = 23
    FILE_PATH = 24
    FINAL = 25
    OP_BIND_HOST = 26
    READ_LIMIT = 27
    CAPTURE = 28
    NFT = 29


TMPFS_NOEXEC = 1
BIND_HOST_RDONLY = 1  # flag bit of OP_BIND_HOST


class ProtocolError(ValueError):
    """A message could not be encoded, or a helper event was malformed."""


def cstr(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    if b"\0" in raw:
        raise ProtocolError(f"NUL byte in {raw[:40]!r}")
    return raw + b"\0"


def record(tag: Tag, payload: bytes) -> bytes:
    return struct.pack("<HHI", tag, 0, len(payload)) + payload


# -- mount plan operations ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BindRO:
    source: str
    target: str

    def encode(self) -> bytes:
        return record(Tag.OP_BIND_RO, cstr(self.source) + cstr(self.target))


@dataclass(frozen=True, slots=True)
class BindDev:
    source: str
    target: str

    def encode(self) -> bytes:
        return record(Tag.OP_BIND_DEV, cstr(self.source) + cstr(self.target))


@dataclass(frozen=True, slots=True)
class Tmpfs:
    target: str
    size: int
    inodes: int
    mode: int = 0o755
    noexec: bool = False

    def encode(self) -> bytes:
        flags = TMPFS_NOEXEC if self.noexec else 0
        return record(Tag.OP_TMPFS, struct.pack("<IIQQ", self.mode, flags, self.size, self.inodes)
                      + cstr(self.target))


@dataclass(frozen=True, slots=True)
class Dir:
    target: str
    mode: int = 0o755

    def encode(self) -> bytes:
        return record(Tag.OP_DIR, struct.pack("<I", self.mode) + cstr(self.target))


@dataclass(frozen=True, slots=True)
class File:
    target: str
    content: bytes
    mode: int = 0o644

    def encode(self) -> bytes:
        return record(Tag.OP_FILE, struct.pack("<I", self.mode) + cstr(self.target) + self.content)


@dataclass(frozen=True, slots=True)
class Symlink:
    link_target: str
    path: str

    def encode(self) -> bytes:
        return record(Tag.OP_SYMLINK, cstr(self.link_target) + cstr(self.path))


@dataclass(frozen=True, slots=True)
class Proc:
    target: str = "/proc"

    def encode(self) -> bytes:
        return record(Tag.OP_PROC, cstr(self.target))


@dataclass(frozen=True, slots=True)
class Devpts:
    target: str = "/dev/pts"

    def encode(self) -> bytes:
        return record(Tag.OP_DEVPTS, cstr(self.target))


@dataclass(frozen=True, slots=True)
class ReadOnlySelf:
    """Re-bind a path onto itself read-only (``/proc/sys`` and friends)."""

    target: str

    def encode(self) -> bytes:
        return record(Tag.OP_RO_SELF, cstr(self.target))


@dataclass(frozen=True, slots=True)
class BindHost:
    """A host directory or file the caller asked for (the engine option ``mounts``): bound
    recursively, nosuid and nodev, and read-only (submounts too) unless ``readonly`` is false.
    ``source`` is already resolved; the helper refuses it if a symlink appeared in it since."""

    source: str
    target: str
    readonly: bool = True

    def encode(self) -> bytes:
        flags = BIND_HOST_RDONLY if self.readonly else 0
        return record(Tag.OP_BIND_HOST, struct.pack("<I", flags) + cstr(self.source)
                      + cstr(self.target))


MountOp = (BindRO | BindDev | Tmpfs | Dir | File | Symlink | Proc | Devpts | ReadOnlySelf
           | BindHost)


@dataclass(frozen=True, slots=True)
class Listen:
    """A listening socket the helper creates inside the sandbox's new network namespace,
    while it still holds CAP_NET_BIND_SERVICE there, and hands to the supervisor. TCP is
    listening (backlog 512), every socket is nonblocking and close-on-exec. ``loopback``:
    on 127.0.0.1 only; otherwise on the dual-stack wildcard ``[::]`` (``0.0.0.0`` when the
    kernel has no IPv6). ``port`` 0: the kernel picks one (the "listeners" event says which).
    """

    proto: Literal["tcp", "udp"]
    port: int
    loopback: bool = False

    def encode(self) -> bytes:
        if self.proto not in ("tcp", "udp") or not 0 <= self.port <= 0xFFFF:
            raise ProtocolError(f"bad listener {self}")
        return struct.pack("<BBH", ord("T" if self.proto == "tcp" else "U"),
                           ord("L" if self.loopback else "A"), self.port)


@dataclass(frozen=True, slots=True)
class HelperConfig:
    """Everything about a sandbox except the host ids, which change per sandbox as root."""

    hostname: str
    new_netns: bool
    seccomp_filters: tuple[bytes, ...]
    mounts: tuple[MountOp, ...]
    staging_dir: str = "/tmp"
    memory_watch: int = 0  # bytes; 0: no watchdog (a memory cgroup enforces the limit)
    watch_paths: tuple[str, ...] = ()
    # network="filtered" (issue 10): local default routes on lo, so that every address is
    # this namespace's own, and these listeners; needs new_netns
    capture: tuple[Listen, ...] = ()
    # an nfnetlink batch (isol8.network.nft.batch) the helper replays in the sandbox's netns
    # after the capture's routes, before the capability drop; needs capture
    nft: bytes = b""


def encode_config_body(cfg: HelperConfig) -> bytes:
    """The records of a config: encoded once per engine, they are the same for every sandbox."""
    parts = [
        record(Tag.HOSTNAME, cstr(cfg.hostname)),
        record(Tag.NEW_NETNS, b"\1" if cfg.new_netns else b"\0"),
        record(Tag.STAGING_DIR, cstr(cfg.staging_dir)),
    ]
    parts += [record(Tag.SECCOMP, bpf) for bpf in cfg.seccomp_filters]
    parts += [op.encode() for op in cfg.mounts]
    if cfg.memory_watch:
        parts.append(record(Tag.MEMORY_WATCH, struct.pack("<Q", cfg.memory_watch)))
        parts += [record(Tag.WATCH_PATH, cstr(path)) for path in cfg.watch_paths]
    if cfg.capture:
        if not cfg.new_netns or len(cfg.capture) > MAX_LISTENERS:
            raise ProtocolError(f"capture needs a new network namespace and at most "
                                f"{MAX_LISTENERS} listeners")
        parts.append(record(Tag.CAPTURE, b"".join(lst.encode() for lst in cfg.capture)))
    if cfg.nft:
        if not cfg.capture or len(cfg.nft) > MAX_NFT:
            raise ProtocolError(f"an nftables batch needs capture and at most {MAX_NFT} bytes")
        parts.append(record(Tag.NFT, cfg.nft))
    return b"".join(parts)


def config_message(body: bytes, *, host_uid: int, host_gid: int,
                   rlimits: tuple[tuple[int, int, int], ...] = (),
                   cgroup_kinds: bytes = b"", ops: tuple[MountOp, ...] = ()) -> bytes:
    """The config message for one sandbox: what changes per sandbox (host ids, rlimits that
    depend on the request's timeout, the kinds of the cgroup fds sent along: b"D" a v2
    directory, b"P" a v1 cgroup.procs), then the engine's encoded body, then this sandbox's
    own mount ops (the helper runs them after the body's)."""
    parts = [MSG_CONFIG, record(Tag.HOST_UID, struct.pack("<I", host_uid)),
             record(Tag.HOST_GID, struct.pack("<I", host_gid))]
    parts += [record(Tag.RLIMIT, struct.pack("<IQQ", *lim)) for lim in rlimits]
    if cgroup_kinds:
        parts.append(record(Tag.CGROUP_FDS, cgroup_kinds))
    parts.append(body)
    parts += [op.encode() for op in ops]
    return b"".join(parts)


def encode_exec(run_id: int, argv: list[str], env: dict[str, str], cwd: str,
                files: list[str], *, final: bool = False) -> bytes:
    """An exec request; its fds (stdin, stdout, stderr, then one per file, in the order of
    ``files``) travel with it. The files are written before the exec.

    ``final``: the sandbox ends when this process exits (ephemeral mode), without waiting
    for the supervisor to kill it.
    """
    if not argv or not argv[0].startswith("/"):
        raise ProtocolError("argv[0] must be an absolute path inside the sandbox")
    parts = [MSG_EXEC, record(Tag.EXEC_ID, struct.pack("<I", run_id)), record(Tag.CWD, cstr(cwd))]
    parts += [record(Tag.ARG, cstr(arg)) for arg in argv]
    parts += [record(Tag.ENV, cstr(f"{key}={value}")) for key, value in env.items()]
    if len(files) > MAX_FILES:
        raise ProtocolError(f"at most {MAX_FILES} files per request")
    if len(argv) > MAX_ARGS or len(env) > MAX_ARGS:
        raise ProtocolError(f"at most {MAX_ARGS} arguments and {MAX_ARGS} environment "
                            "variables per process")
    parts += [record(Tag.FILE_PATH, cstr(path)) for path in files]
    if final:
        parts.append(record(Tag.FINAL, b"\1"))
    return b"".join(parts)


def encode_kill(run_id: int) -> bytes:
    return MSG_KILL + record(Tag.EXEC_ID, struct.pack("<I", run_id))


def encode_kill_all() -> bytes:
    """Every process but the init; "killed" answers once all are reaped."""
    return MSG_KILL


def encode_read(run_id: int, paths: tuple[str, ...], limit: int) -> bytes:
    """Read ``paths`` into a stream (see ``FileStream``) of at most ``limit`` file bytes; the
    write end of its pipe travels with the request. The reader is run ``run_id``: "spawned"
    and "exit" report it, and ``encode_kill(run_id)`` ends it."""
    if len(paths) > MAX_READ_PATHS:
        raise ProtocolError(f"at most {MAX_READ_PATHS} paths per read")
    if any(not path.startswith("/") for path in paths):
        raise ProtocolError("read paths must be absolute")
    parts = [MSG_READ, record(Tag.EXEC_ID, struct.pack("<I", run_id)),
             record(Tag.READ_LIMIT, struct.pack("<Q", limit))]
    parts += [record(Tag.FILE_PATH, cstr(path)) for path in paths]
    return b"".join(parts)


def encode_drain() -> bytes:
    """Pipes for the init to read and discard until their last writer is gone; their read
    ends travel with the request."""
    return MSG_DRAIN


class FileStream:
    """The reader's stream, parsed as untrusted: chunks of ``u32 index, u32 length`` and that
    many bytes of ``paths[index]``; a chunk of length 0 ends the file, complete.

    Only the requested paths can come back (an index names one; no name is read from the
    stream), each at most once and in order, with at most ``limit`` bytes in all. A file
    whose end never came (the reader was stopped, killed or skipped the rest) is left out;
    anything malformed ends the stream, keeping the files completed before it. ``feed`` and
    ``end`` are the sink interface of ``sandbox.supervise``: nothing of it is output.
    """

    def __init__(self, paths: tuple[str, ...], limit: int) -> None:
        self.files: dict[str, bytes] = {}
        self.malformed = False
        self._paths, self._limit = paths, limit
        self._held = 0  # bytes of the completed files
        self._head = bytearray()  # a chunk header, until its 8 bytes are in
        self._index = -1  # the file being received
        self._next = 0  # the lowest index a new file may have
        self._current = bytearray()
        self._need = 0  # bytes of the current chunk still to come

    def feed(self, data: bytes) -> bytes:
        view = memoryview(data)
        while view and not self.malformed:
            if self._need:
                taken = view[: self._need]
                self._current += taken
                self._need -= len(taken)
                view = view[len(taken):]
                continue
            missing = 8 - len(self._head)
            self._head += view[:missing]
            view = view[missing:]
            if len(self._head) == 8:
                index, length = struct.unpack("<II", self._head)
                self._head.clear()
                self._chunk(index, length)
        return b""

    def end(self) -> bytes:
        return b""

    def _chunk(self, index: int, length: int) -> None:
        if index != self._index:
            if not self._next <= index < len(self._paths):
                self._fail()
                return
            self._index, self._next, self._current = index, index + 1, bytearray()
        if length == 0:
            self.files[self._paths[index]] = bytes(self._current)
            self._held += len(self._current)
            self._index, self._current = -1, bytearray()
        elif length > READ_CHUNK or self._held + len(self._current) + length > self._limit:
            self._fail()
        else:
            self._need = length

    def _fail(self) -> None:
        self.malformed = True
        self._current = bytearray()


# -- events from the helper -----------------------------------------------------------------

_EVENT_FIELDS: dict[str, dict[str, type]] = {
    "started": {"pid": int},
    "ready": {"t": int},
    "spawned": {"id": int, "pid": int, "t": int},
    "exit": {"id": int},
    "error": {"step": str, "syscall": str, "errno": int, "path": str},
    "oom": {"usage": int},
    "killed": {},  # after a kill-all: no process but the init is left
    # as root, a caller's mount left without an idmap: its file system cannot be idmapped
    # (reason: the errno name, EINVAL for overlayfs), or it is read-write in a sandbox
    # without a seccomp filter (nothing would refuse a setuid file on the host)
    "unmapped": {"target": str, "reason": str},
    # the capture's sockets, passed with it in the order of the config (see parse_listeners);
    # ipv6: false when the kernel has none (IPv4 sockets, no ::/0 route)
    "listeners": {"kinds": str, "ipv6": bool},
}
_OPTIONAL_FIELDS: dict[str, dict[str, type]] = {
    "exit": {"code": int, "signal": int, "cpu_us": int, "peak": int},
    "error": {"id": int},
    "oom": {"id": int},  # a persistent sandbox's run killed by the watchdog
    # with an NFT record: true, the ruleset is in place; false, this kernel has no nftables
    # (no NETLINK_NETFILTER, or no nf_tables behind it), so UDP elsewhere than 53 reaches
    # nobody rather than being rejected, and no other TCP port is captured
    "listeners": {"nft": bool},
}


def parse_event(data: bytes) -> dict[str, object]:
    """Decode one helper event, refusing anything that is not exactly the expected shape."""
    if not data or len(data) > MAX_EVENT:
        raise ProtocolError(f"helper event of {len(data)} bytes")
    try:
        event = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"helper event is not JSON: {data[:80]!r}") from exc
    if not isinstance(event, dict) or event.get("event") not in _EVENT_FIELDS:
        raise ProtocolError(f"unknown helper event: {data[:80]!r}")
    kind = event["event"]
    required, optional = _EVENT_FIELDS[kind], _OPTIONAL_FIELDS.get(kind, {})
    for key, value in event.items():
        if key == "event":
            continue
        expected = required.get(key) or optional.get(key)
        if expected is None or type(value) is not expected:
            raise ProtocolError(f"bad field {key!r} in helper event {kind!r}")
    if any(key not in event for key in required):
        raise ProtocolError(f"missing field in helper event {kind!r}")
    if kind == "exit" and ("code" in event) == ("signal" in event):
        raise ProtocolError("exit event needs exactly one of code and signal")
    return event


@dataclass(frozen=True, slots=True)
class Listener:
    """One socket of a "listeners" event: ``host`` is ``[::]``, ``0.0.0.0`` or
    ``127.0.0.1``, ``port`` the one it is bound to."""

    proto: Literal["tcp", "udp"]
    host: str
    port: int


_LISTENER = re.compile(r"(tcp|udp):(\[::\]|0\.0\.0\.0|127\.0\.0\.1):([1-9][0-9]{0,4})")


def parse_listeners(event: dict[str, object], nfds: int) -> list[Listener]:
    """The "kinds" of a "listeners" event, one per fd that came with it: each must be
    ``proto:host:port`` and there must be exactly ``nfds``, at most MAX_LISTENERS."""
    kinds = str(event["kinds"]).split(",")
    if not 0 < nfds <= MAX_LISTENERS or len(kinds) != nfds:
        raise ProtocolError(f"listeners event names {len(kinds)} sockets and carries {nfds}")
    out = []
    for kind in kinds:
        match = _LISTENER.fullmatch(kind)
        if match is None or int(match[3]) > 0xFFFF:
            raise ProtocolError(f"bad listener {kind[:40]!r}")
        out.append(Listener(match[1], match[2], int(match[3])))  # type: ignore[arg-type]
    return out
