"""The execution result: the small, stable contract upstream clients rely on."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceUsage:
    """A superset of upstream's ``resourceUsage``.

    ``enforced`` names the backend of each limit ("cgroup2", "cgroup1", "rlimit",
    "watchdog"; see isol8.limits), so a caller knows what really held. ``memory_mb`` is the
    peak too: an ephemeral sandbox holds nothing once its run is over.

    ``limits_reached`` names every limit that ended or cut the run, as far as its backend
    can see it, in a fixed order: "pids" (a fork or thread refused by a pids cgroup: never
    with the rlimit backend, which cannot report), "memory" (OOM), "output" (a stream cut
    at max_output_size), "file_size" (killed by SIGXFSZ), "timeout". A persistent run
    reports what happened during it.
    """

    cpu_time_ms: int
    cpu_percent: float
    memory_mb: float | None
    peak_memory_mb: float | None
    oom: bool
    enforced: dict[str, str | None]
    # what the filtered proxy moved for the run; 0 without a network, None (left out of the
    # wire form) with the host's, which nothing counts
    network_bytes_in: int | None = 0
    network_bytes_out: int | None = 0
    limits_reached: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        wire: dict[str, object] = {
            "cpuPercent": self.cpu_percent,
            "memoryMB": self.memory_mb,
            "peakMemoryMB": self.peak_memory_mb,
            "networkBytesIn": self.network_bytes_in,
            "networkBytesOut": self.network_bytes_out,
            "cpuTimeMs": self.cpu_time_ms,
            "oom": self.oom,
            "enforced": dict(self.enforced),
            "limitsReached": list(self.limits_reached),
        }
        if self.network_bytes_in is None:
            del wire["networkBytesIn"], wire["networkBytesOut"]
        return wire


@dataclass(frozen=True, slots=True)
class NetworkLog:
    """One request as upstream's ``networkLogs`` has it (``durationMs`` on the wire): TLS
    and other tunnels have method ``CONNECT`` and path None."""

    timestamp: str
    method: str
    host: str
    path: str | None
    action: str  # "ALLOW" or "BLOCK"
    duration_ms: int
    reason: str = ""  # the rule that decided, or why it failed

    def masked(self, secrets: list[str]) -> NetworkLog:
        """The entry with every secret value in its host, path and reason as ``***``: code
        that puts a secret in a URL (``?key=...``, ``<secret>.example.com``) must not get
        it back in clear through the log, as it does not through stdout."""
        def mask(text: str) -> str:
            for secret in secrets:
                text = text.replace(secret, "***")
            return text
        return replace(self, host=mask(self.host), reason=mask(self.reason),
                       path=mask(self.path) if self.path is not None else None)

    def to_dict(self) -> dict[str, object]:
        return {
            "timestamp": self.timestamp,
            "method": self.method,
            "host": self.host,
            "path": self.path,
            "action": self.action,
            "durationMs": self.duration_ms,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionResult:
    stdout: str
    stderr: str
    exit_code: int
    duration_ms: int
    truncated: bool
    execution_id: str
    runtime: str
    timestamp: str
    resource_usage: ResourceUsage
    files: dict[str, str] | None = None  # output_paths: {path: base64}
    network_logs: list[NetworkLog] | None = None  # log_network=True, filtered mode

    def to_dict(self) -> dict[str, object]:
        """The camelCase wire form of upstream's ``ExecutionResult``."""
        wire: dict[str, object] = {
            "stdout": self.stdout,
            "stderr": self.stderr,
            "exitCode": self.exit_code,
            "durationMs": self.duration_ms,
            "truncated": self.truncated,
            "executionId": self.execution_id,
            "runtime": self.runtime,
            "timestamp": self.timestamp,
            "resourceUsage": self.resource_usage.to_dict(),
        }
        if self.files is not None:
            wire["files"] = dict(self.files)
        if self.network_logs:  # upstream: an empty list is left out
            wire["networkLogs"] = [entry.to_dict() for entry in self.network_logs]
        return wire


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEvent:
    """One event of ``execute_stream()``: upstream's ``{type, data, phase}``.

    ``type`` is "stdout", "stderr", "exit" (``data`` is the exit code as a string) or
    "error"; ``phase`` is "setup" for a setup script's events, else "code". The stream's
    last ``exit`` carries ``limits_reached`` as ``ResourceUsage`` has it; the wire form
    names it (``limitsReached``) only when it is not empty, so an ordinary stream keeps
    upstream's exact shape.

    That last ``exit`` also carries the run's ``result`` (as ``execute()`` would have
    returned it), so a caller that accounts for runs (the server's metrics and audit) needs
    no second path; it is not part of the wire form, nor of equality.
    """

    type: str
    data: str
    phase: str = "code"
    limits_reached: list[str] = field(default_factory=list)
    result: ExecutionResult | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, object]:
        wire: dict[str, object] = {"type": self.type, "data": self.data, "phase": self.phase}
        if self.limits_reached:
            wire["limitsReached"] = list(self.limits_reached)
        return wire
