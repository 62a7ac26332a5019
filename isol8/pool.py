"""The warm pool: sandboxes made ahead of time, each serving exactly one ephemeral run.

A pooled sandbox is fully set up (namespaces, root, seccomp, placed in its cgroups) and its
init waits for a request. A Python one also holds a zygote: an interpreter already started
and waiting for code (isol8/interp_main.py), so a run pays neither the sandbox's setup nor
the interpreter's start. Nothing is ever cleaned and reused: a pooled sandbox dies with
its run, and a background thread makes the next one.

Pools are per engine, so limits, network and mounts (engine options) key them implicitly;
within an engine they are keyed by kind: ``python`` (zygotes) and ``plain`` (ready
sandboxes for node, bash and ``cmd`` runs, and for Python runs a zygote cannot serve).
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable

from .cgroups import SandboxCgroups
from .errors import InvalidRequest, Isol8Error
from .identity import HostIdentity
from .interpreter import Interpreter, send_code, start_interpreter
from .runtimes import get_runtime
from .sandbox import NetworkHook, RunSpec, Sandbox, error_from_event
from .interrupts import signals_deferred

_READY_TIMEOUT = 10.0
# A ready zygote takes a run within microseconds. The wait runs with signals deferred
# (stream_once's launch), so it is bounded; past it the run counts as taken, and its
# supervision (deadline, cancellation) takes over.
_TAKE_TIMEOUT = 1.0
MAX_POOL = 64
_RUN_ID = 1


class Pooled:
    """One ready sandbox; ``python`` is the interpreter to hold ready, or None."""

    def __init__(self, config: bytes, host: HostIdentity, cgroup: SandboxCgroups | None,
                 python: str | None, network: NetworkHook | None = None) -> None:
        self.host, self.cgroup = host, cgroup
        self.kind = "python" if python is not None else "plain"
        self.pool: WarmPool | None = None  # the pool it was taken from
        self.zygote: Interpreter | None = None
        # Kept, with the cgroup's placement fds, for a cold start should the zygote die
        # before its run (see launch); destroy() closes them.
        self._config, self._network = config, network
        self.sandbox = Sandbox(config, cgroup.fds if cgroup else [], network)
        self.baseline_cpu_ns = 0
        try:
            self._await({"started", "ready"})  # "started" brings the pidfd
            if python is not None:
                self.zygote = start_interpreter(self.sandbox, _RUN_ID, python, "zygote",
                                                final=True)
                self._await({"spawned"})
        except BaseException:
            self.sandbox.destroy()
            if self.zygote is not None:
                self.zygote.close()
            raise
        if cgroup is not None:  # what the zygote's start-up cost is not the run's
            self.baseline_cpu_ns = cgroup.usage().cpu_ns or 0

    def _await(self, names: set[str]) -> None:
        """Consume the helper's events up to all of ``names``: a setup error surfaces
        here, at warm-up, and the run later sees only its own events."""
        deadline = time.monotonic() + _READY_TIMEOUT
        missing = set(names)
        while missing:
            if not select.select([self.sandbox], [], [], max(0, deadline - time.monotonic()))[0]:
                raise Isol8Error(f"the pooled sandbox sent no {sorted(missing)} within "
                                 f"{_READY_TIMEOUT} s")
            event = self.sandbox.receive()
            if event is None:
                raise Isol8Error("the pooled sandbox's helper exited during warm-up")
            if event["event"] == "error":
                raise error_from_event(event)
            missing.discard(str(event["event"]))

    def healthy(self) -> bool:
        """Nothing happened while it waited: no event from the init (a dead zygote's exit,
        an error), no hang-up from the zygote."""
        watched = [self.sandbox] + ([self.zygote.control] if self.zygote is not None else [])
        return not select.select(watched, [], [], 0)[0]

    def launch(self, spec: RunSpec, stdout_w: int, stderr_w: int) -> Sandbox:
        """Start ``spec`` as the sandbox's one run (id 1); the sandbox ends with it.

        A zygote killed (from the host: nothing else runs in here) before it took the run
        leaves a dead sandbox, even when ``healthy()`` said otherwise: its hang-up and exit
        report may come after the request was sent (``Interpreter.took_run``). The run then
        starts cold, in a new sandbox in the same cgroups and lease, and never reports the
        zygote's death as its own."""
        if self.zygote is not None:
            try:
                send_code(self.zygote.control, spec, stdout_w, stderr_w)
                if self.zygote.took_run(time.monotonic() + _TAKE_TIMEOUT):
                    return self.sandbox
            except OSError:
                pass  # EPIPE, ECONNRESET: it was gone before the request
            self.sandbox.destroy()
            self.zygote.close()
            self.zygote = None
            self.sandbox = Sandbox(self._config, self.cgroup.fds if self.cgroup else [],
                                   self._network)
        self.sandbox.start_process(_RUN_ID, spec, stdout_w, stderr_w, final=True)
        return self.sandbox

    def destroy(self) -> None:
        with signals_deferred():
            self.sandbox.destroy()
            if self.zygote is not None:
                self.zygote.close()
            if self.cgroup is not None:
                self.cgroup.destroy()
            self.host.release()


class WarmPool:
    """``size`` ready sandboxes per kind, refilled by one background thread."""

    def __init__(self, make: Callable[[str], Pooled], size: int) -> None:
        self._make = make
        self._size = size
        self._ready: dict[str, list[Pooled]] = {}
        self._in_use: dict[str, int] = {}
        self._failed: dict[str, BaseException] = {}
        self._changed = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def warm(self, kinds: list[str]) -> None:
        """Keep ``size`` sandboxes of each kind ready from now on (idempotent)."""
        with self._changed:
            for kind in kinds:
                self._ready.setdefault(kind, [])
                self._in_use.setdefault(kind, 0)
            if self._thread is None and self._size > 0:
                self._thread = threading.Thread(target=self._refill, daemon=True,
                                                name="isol8-pool")
                self._thread.start()
            self._changed.notify()

    def take(self, kind: str) -> Pooled | None:
        """A ready sandbox of ``kind``, or None. Its replacement is made once the caller
        calls ``release()``: made during the run, it would compete with it (as root, the
        new helper's cgroup v1 placement holds the kernel's cgroup lock through an RCU
        grace period, which the run's own teardown then waits for: ~9 ms measured)."""
        with self._changed:
            ready = self._ready.get(kind)
            if not ready:
                return None
            entry = ready.pop(0)
            self._in_use[kind] += 1
        entry.pool = self
        if entry.healthy():
            return entry
        entry.destroy()
        self.release(entry)
        return None

    def release(self, entry: Pooled) -> None:
        """``entry``'s run is over (and the sandbox destroyed): make its replacement."""
        with self._changed:
            self._in_use[entry.kind] -= 1
            self._changed.notify_all()

    def wait_ready(self, timeout: float) -> bool:
        """Block until every pool is full (benchmarks and tests start from a warm state)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: all(len(v) >= self._size or k in self._failed
                            for k, v in self._ready.items()), timeout)

    def _missing(self) -> str | None:
        for kind, ready in self._ready.items():
            if len(ready) + self._in_use[kind] < self._size and kind not in self._failed:
                return kind
        return None

    def _refill(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._closed or self._missing() is not None)
                if self._closed:
                    return
                kind = self._missing()
            assert kind is not None
            try:
                entry = self._make(kind)
            except Exception as exc:  # e.g. no python3: stop warming it, runs go cold
                with self._changed:
                    self._failed[kind] = exc
                    self._changed.notify_all()
                continue
            with self._changed:
                if not self._closed:
                    self._ready[kind].append(entry)
                    self._changed.notify_all()
                    continue
            entry.destroy()

    def close(self) -> None:
        """Stop refilling and destroy every ready sandbox."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._changed:
            entries = [e for ready in self._ready.values() for e in ready]
            self._ready.clear()
        for entry in entries:
            entry.destroy()


def pool_size(value: object, strategy: object) -> int:
    """Upstream's ``pool_size``: N, or ``{"clean": N, "dirty": M}``. Only clean sandboxes
    exist here (nothing is reused), so ``dirty`` and ``pool_strategy`` ("fast" or
    "secure") are accepted and mean nothing more."""
    if strategy not in ("fast", "secure"):
        raise InvalidRequest(f"pool_strategy: expected fast or secure, got {strategy!r}")
    if isinstance(value, dict):
        value = value.get("clean", 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_POOL:
        raise InvalidRequest(f"pool_size: expected 0 to {MAX_POOL}, got {value!r}")
    return value


def prewarm_kinds(value: object) -> list[str]:
    """Upstream's ``prewarm``: True (every runtime) or ``{"runtimes": [...]}``, as the
    pools that serve them."""
    if value is None or value is False:
        return []
    if value is True:
        return ["python", "plain"]
    runtimes = value.get("runtimes") if isinstance(value, dict) else None
    if not isinstance(runtimes, list):
        raise InvalidRequest("prewarm: expected True or {'runtimes': [...]}")
    return list(dict.fromkeys("python" if get_runtime(name).name == "python" else "plain"
                              for name in runtimes))
