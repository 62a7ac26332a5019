"""``Isol8``: the engine agent hosts embed. One fresh sandbox per ``execute()``.

The engine prepares everything that does not change between runs once, at ``start()``: the
seccomp filters, the mount plan and its encoded form, its own cgroups and the backend of
each limit. An execution then costs one helper spawn, the kernel's namespace setup, the
cgroup placement, and the program itself.
"""

from __future__ import annotations

import base64
import codecs
import dataclasses
import os
import threading
import time
import uuid
import weakref
from collections.abc import Generator, Iterator, Mapping
from datetime import datetime, timezone

from . import cgroups, etc, identity, images, limits, packages, pool, seccomp, workspace
from .errors import (InvalidRequest, Isol8Error, RuntimeNotAvailable, SessionLost,
                     SetupScriptFailed)
from .output import truncation_marker, with_timeout_marker
from .policy import EngineOptions, Mount, env_mapping, positive_int
from .protocol import HelperConfig, config_message, encode_config_body
from .request import (ExecutionRequest, validated_files, validated_output_paths,
                      validated_setup_script, validated_workdir)
from .result import ExecutionResult, NetworkLog, ResourceUsage, StreamEvent
from .runtimes import BASH, SANDBOX_HOME, base_env, get_runtime
from .sandbox import (RunOutcome, RunSpec, finish, stream_ephemeral,
                      stream_once)
from .interrupts import signals_deferred
from .interpreter import zygote_can_run
from .network.filtered import RESOLV_CONF, FilteredNetwork, PhasedNetwork
from .network.proxy import NetworkUsage
from .remote_code import RemoteCodePolicy
from .remote_code.fetch import fetch_code
from .repl import Repl
from .session import Session
from .staged import (SETUP_TIMED_OUT, Event, StagedOutcome, Stages, exit_status, in_phase,
                     run_stages, setup_spec)

_EXCLUSIVE = ("ExecutionRequest.code, ExecutionRequest.codeUrl, and ExecutionRequest.cmd are "
              "mutually exclusive — provide exactly one.")
_MISSING = "ExecutionRequest must include exactly one of: code, codeUrl, or cmd."
_WARM_UP_TIMEOUT = 30.0
_MAX_FILE_READ = (64 << 20) * 4 // 3 + 4  # get_file: 64 MiB, base64-encoded


class Isol8:
    """Runs untrusted code in rootless kernel sandboxes.

    Options follow upstream's names and defaults: ``network`` ("none", "host" or "filtered":
    HTTP(S) through the supervisor's proxy, by ``network_filter={"whitelist": [...],
    "blacklist": [...]}`` hostname regexes and isol8's keys, see isol8.network; with
    ``log_network=True`` each result carries ``network_logs``),
    ``timeout_ms`` (30 s), ``max_output_size`` (1 MiB per stream), ``sandbox_size`` (512m
    tmpfs ``/sandbox``), ``tmp_size`` (256m noexec tmpfs ``/tmp``). ``seccomp="unconfined"``
    drops only the syscall filter (every namespace, capability and mount rule stays); it
    exists to diagnose a program the filter breaks. ``uid_range`` is the host uid range
    sandboxes map to when the supervisor runs as root.

    Limits (upstream's defaults): ``memory_limit="512m"``, ``cpu_limit=1.0`` (cores),
    ``pids_limit=64``; each is enforced by the strongest backend this host offers for it
    (see isol8.limits), reported in every result's ``resource_usage.enforced``, and the
    limits a run reached in ``resource_usage.limits_reached``; ``strict_limits=True``
    refuses to start rather than degrade to a best-effort backend.
    ``cgroup_parent`` (or ``ISOL8_CGROUP_PARENT``) names a delegated cgroup v2 directory to
    create the engine's cgroups in, instead of the supervisor's own cgroup.

    ``secrets={name: value}`` are injected as environment variables (after the base set,
    before the request's ``env``) and every value is replaced by ``***`` in stdout and
    stderr, also when it is split across writes; ``env`` values are not masked (upstream).
    ``mounts=[{"source", "target", "readonly"}]`` binds host paths under /sandbox or /mnt.

    isol8's own: ``prewarm`` and ``pool_size`` (see ``start()``; ``pool_strategy`` is
    accepted as upstream's and changes nothing: no sandbox is ever reused); in persistent
    mode, ``repl=True`` (Python runs are cells of one live interpreter, see isol8.repl) and
    ``workspace_dir`` (/sandbox kept in a host directory across engines, see
    isol8.workspace). For ``install_packages``: ``package_index_url`` (the index pip or npm
    installs from, default ``$ISOL8_PACKAGE_INDEX``, else PyPI / registry.npmjs.org) and
    ``package_cache`` (the shared download cache's root, or False; see isol8.packages).
    ``remote_code`` (a ``RemoteCodePolicy`` or upstream's camelCase ``remoteCode`` mapping)
    lets ``execute(code_url=...)`` fetch code, off by default.
    """

    def __init__(self, *, pool_size: int | dict[str, int] = 1, pool_strategy: str = "fast",
                 prewarm: bool | dict[str, list[str]] | None = None, repl: bool = False,
                 workspace_dir: str | os.PathLike[str] | None = None,
                 remote_code: RemoteCodePolicy | Mapping[str, object] | None = None,
                 **options: object) -> None:
        self.options = EngineOptions.build(**options)  # type: ignore[arg-type]
        self._remote_code = (remote_code if isinstance(remote_code, RemoteCodePolicy)
                             else RemoteCodePolicy.from_mapping(remote_code))
        if repl is not False and (repl is not True or self.options.mode != "persistent"):
            raise InvalidRequest("repl: True needs mode='persistent' (a REPL keeps state "
                                 "between calls)")
        self._repl = repl
        if workspace_dir is not None and self.options.mode != "persistent":
            raise InvalidRequest("workspace_dir: needs mode='persistent'")
        self._workspace = (workspace.validated_dir(workspace_dir, self.options.mounts)
                           if workspace_dir is not None else None)
        self._pool_size = pool.pool_size(pool_size, pool_strategy)
        self._prewarm = pool.prewarm_kinds(prewarm)
        self._pool: pool.WarmPool | None = None
        self._config_body: bytes | None = None
        self._cgroups: cgroups.EngineCgroups | None = None
        self._enforced: dict[str, str | None] = {}
        self._max_file = 0
        self._root = images.Root("/", "the host's /usr")
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()
        self._session: Session | None = None  # persistent mode's one sandbox
        self._session_lock = threading.Lock()  # serializes its runs
        self._session_network: PhasedNetwork | None = None  # its proxy's phases (filtered)
        opts = self.options
        self._filtered = (FilteredNetwork(opts.network_filter)
                          if opts.network_filter is not None else None)
        # install_packages' indexes (validated now) and the shared cache, made at start()
        self._indexes = {manager: packages.package_index(manager, opts.package_index_url)
                         for manager in ("pip", "npm")}
        self._package_cache: packages.PackageCache | None = None
        # What serves a filtered sandbox's listeners (see Sandbox): None in other modes.
        self._network = self._filtered.serve if self._filtered is not None else None
        # Bytes nothing counted: none with no network, unknown with the host's (upstream
        # leaves them out then)
        self._no_bytes = None if opts.network == "host" else 0

    @property
    def repl(self) -> bool:
        """Whether python runs are cells of one interpreter (``repl=True``)."""
        return self._repl

    def __enter__(self) -> "Isol8":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, prewarm: bool | dict[str, list[str]] | None = None) -> None:
        """Compile the policy and mount plan, make the engine's cgroups and choose each
        limit's backend. Idempotent and thread-safe; ``execute()`` calls it lazily.

        ``prewarm`` (upstream's shapes: ``True`` for every runtime, or ``{"runtimes":
        [...]}``; also an engine option) starts the warm pool in ephemeral mode: ``pool_size``
        sandboxes per runtime kept set up, Python's with the interpreter already started,
        each serving one ``execute()`` and refilled in the background."""
        warm = self._start_engine(pool.prewarm_kinds(prewarm) or self._prewarm)
        if warm is not None:  # upstream's start() returns once the pool is warm
            warm.wait_ready(_WARM_UP_TIMEOUT)

    def _start_engine(self, kinds: list[str]) -> pool.WarmPool | None:
        """start() without waiting: ``execute()`` calls it lazily, and a run does not wait
        for a pool to fill (an empty one means a cold run)."""
        warm = None
        with self._lock:
            if self._config_body is None:
                self._start()
            if kinds and self.options.mode == "ephemeral" and self._pool_size:
                if self._pool is None:
                    self._pool = pool.WarmPool(self._make_pooled, self._pool_size)
                self._pool.warm(kinds)
                warm = self._pool
        return warm

    def _make_pooled(self, kind: str) -> pool.Pooled:
        host, sandbox_cgroups, config = self._claim(self.options.timeout_ms)
        try:
            return pool.Pooled(config, host, sandbox_cgroups,
                               get_runtime("python").binary if kind == "python" else None,
                               self._network)
        except BaseException:
            self._release(host, sandbox_cgroups)
            raise

    def _start(self) -> None:
        opts = self.options
        policy = seccomp.compiled_policy(unconfined=opts.seccomp == "unconfined")
        sizes = images.TmpfsSizes(sandbox=opts.sandbox_size, tmp=opts.tmp_size)
        filtered = self._filtered
        root = images.resolve(opts.rootfs)  # an image is held until the engine stops
        try:
            mounts = images.host_plan(
                sizes, host_network=opts.network == "host", tmp_exec=opts.tmp_exec,
                mounts=(*opts.mounts, *self._package_cache_mount()),
                resolv_conf=RESOLV_CONF if filtered else b"", root=root.path)
            nproc_applies = os.geteuid() != 0 or identity.maps_foreign_ids()
            engine_cgroups = cgroups.EngineCgroups(cgroups.discover_host(), opts.cgroup_parent,
                                                   limits.v1_wanted(nproc_applies))
        except BaseException:
            root.release()
            raise
        try:
            enforced = limits.enforcement(opts.limits, engine_cgroups.backend, nproc_applies)
        except BaseException:
            _close_engine(engine_cgroups, root)
            raise
        watchdog = enforced["memory"] == "watchdog"
        self._config_body = encode_config_body(HelperConfig(
            hostname=etc.HOSTNAME, new_netns=opts.network != "host",
            capture=filtered.listens if filtered else (),
            nft=filtered.nft if filtered else b"",
            seccomp_filters=policy.filters, mounts=mounts,
            memory_watch=opts.limits.memory if watchdog else 0,
            watch_paths=images.WRITABLE_TMPFS if watchdog else (),
        ))
        self._enforced = enforced
        self._root = root
        if filtered:
            filtered.start()  # the proxies' loop runs until stop()
        # No file can outgrow its tmpfs, which answers ENOSPC; RLIMIT_FSIZE sits one page
        # above the largest, so it only backs that up and never fires first.
        self._max_file = max(opts.sandbox_size, opts.tmp_size, images.SHM_SIZE) + 4096
        self._cgroups = engine_cgroups if (engine_cgroups.v2_dir or engine_cgroups.v1_dirs) \
            else None
        # A forgotten stop() still removes the engine's cgroups (and lets its image go), at
        # collection or exit.
        self._finalizer = weakref.finalize(self, _close_engine, engine_cgroups, root)

    def _package_cache_mount(self) -> tuple[Mount, ...]:
        """The shared download cache, read-only at packages.MOUNT: only filtered engines
        install (the index is reached through the proxy). A cache that cannot be made (a
        read-only home) means installs without one, not an engine that cannot start."""
        root = self.options.package_cache
        if self._filtered is None or root is None:
            return ()
        cache = packages.PackageCache(root, self._indexes["pip"].url)
        try:
            source = cache.ensure()
        except OSError:
            return ()
        self._package_cache = cache
        return (Mount(source, packages.MOUNT, True),)

    def stop(self) -> None:
        """Release the engine and its cgroups. Every sandbox is already gone when
        ``execute()`` returns."""
        try:
            with self._session_lock:
                session, self._session = self._session, None
                try:
                    if session is not None and self._workspace and session.alive:
                        workspace.save(session, self._workspace, self.options.sandbox_size)
                finally:
                    if session is not None:
                        session.close()
        finally:  # a failed save (it raises, naming the workspace) still ends everything
            with self._lock:
                if self._pool is not None:
                    self._pool.close()
                    self._pool = None
                if self._finalizer is not None:
                    self._finalizer()
                if self._config_body is not None and self._filtered is not None:
                    self._filtered.stop()
                self._config_body, self._cgroups, self._finalizer = None, None, None

    def put_file(self, path: str, content: str | bytes) -> None:
        """Write a file into the persistent sandbox (under /sandbox or /tmp), binary-safe.

        The sandbox user writes it, inside the sandbox's mount namespace: no symlink or path
        trick can make it land outside the sandbox."""
        self._require_session()
        result = self._execute(ExecutionRequest(cmd=":", files={path: content}))
        if result.exit_code != 0:
            raise Isol8Error(f"put_file {path}: {result.stderr or result.exit_code}")

    def get_file(self, path: str) -> bytes:
        """Read a file from the persistent sandbox, binary-safe (up to 64 MiB); read by the
        sandbox user inside the sandbox, like ``put_file``."""
        self._require_session()
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise InvalidRequest(f"get_file: {path!r} must be an absolute path")
        result = self._execute(ExecutionRequest(cmd='exec base64 -w0 -- "$ISOL8_PATH"',
                                                env={"ISOL8_PATH": path}),
                               max_output=_MAX_FILE_READ, masked=False)
        if result.exit_code != 0 or result.truncated:
            raise Isol8Error(f"get_file {path}: {result.stderr or 'larger than 64 MiB'}")
        return base64.b64decode(result.stdout)

    def _require_session(self) -> None:
        if self.options.mode != "persistent" or self._session is None:
            raise Isol8Error("No active container. Call execute() first in persistent mode.")

    def execute(self, code: str | None = None, *, runtime: str | None = None,
                cmd: str | None = None, timeout_ms: int | None = None,
                env: dict[str, str] | None = None, stdin: str | bytes | None = None,
                file_extension: str | None = None,
                files: dict[str, str | bytes] | None = None,
                workdir: str | None = None, output_paths: list[str] | None = None,
                setup_script: str | None = None,
                install_packages: list[str] | None = None, code_url: str | None = None,
                code_hash: str | None = None,
                allow_insecure_code_url: bool = False) -> ExecutionResult:
        """Run ``code`` (or the shell command ``cmd``) in a fresh sandbox and wait for it.

        ``files`` (``{absolute path: str | bytes}``, under /sandbox or /tmp) are written
        first, parent directories created; ``workdir`` (relative to /sandbox, confined to
        it, created if missing) is where the program starts. ``setup_script`` (bash, with
        the run's env and secrets) runs before the code within the same deadline; if it
        fails, ``SetupScriptFailed`` is raised and the code does not run (upstream).
        ``install_packages`` (pip for python, npm for node; needs network="filtered") are
        installed under /sandbox first, reaching only the package index, with their own
        timeout budget; ``PackageInstallFailed`` if that fails (see isol8.packages).
        ``output_paths`` are read after the run into ``result.files`` as base64; missing
        ones are skipped (upstream), and 64 MiB in all are returned at most.
        ``code_url`` (instead of ``code``) is fetched on the host first, as the engine's
        ``remote_code`` policy allows (off by default), its sha256 checked against
        ``code_hash`` when given; plain http needs ``allow_insecure_code_url``
        (isol8.remote_code).
        """
        return self._execute(ExecutionRequest(
            code=code, runtime=runtime, cmd=cmd, timeout_ms=timeout_ms, env=env, stdin=stdin,
            file_extension=file_extension, files=files, workdir=workdir,
            output_paths=output_paths, setup_script=setup_script,
            install_packages=install_packages, code_url=code_url, code_hash=code_hash,
            allow_insecure_code_url=allow_insecure_code_url))

    def _execute(self, request: ExecutionRequest, cancel_fd: int = -1,
                 max_output: int | None = None, masked: bool = True) -> ExecutionResult:
        request = self._fetched(request)
        started = time.monotonic()
        staged, usage, runtime_name = finish(
            self._run(request, started, cancel_fd, max_output, masked))
        if staged.main is None:
            raise _setup_failure(staged)
        return self._result(staged.main, usage, runtime_name, started, staged.files)

    def execute_stream(self, code: str | None = None, *, runtime: str | None = None,
                       cmd: str | None = None, timeout_ms: int | None = None,
                       env: dict[str, str] | None = None, stdin: str | bytes | None = None,
                       file_extension: str | None = None,
                       files: dict[str, str | bytes] | None = None,
                       workdir: str | None = None, output_paths: list[str] | None = None,
                       setup_script: str | None = None,
                       install_packages: list[str] | None = None,
                       code_url: str | None = None, code_hash: str | None = None,
                       allow_insecure_code_url: bool = False) -> Iterator[StreamEvent]:
        """Run like ``execute()``, yielding ``stdout``/``stderr`` events as output arrives,
        then ``exit`` (the code, as a string); a timeout gives an ``error`` event
        ``EXECUTION TIMED OUT`` first. Secrets are masked and the output cap applies, as in
        ``execute()``. Closing the iterator early (or breaking out of the loop) kills the
        run.

        A setup script's events come first with ``phase="setup"``, ending with its ``exit``;
        when it fails, ``error`` "Setup script failed (exit code N)" (or "SETUP SCRIPT TIMED
        OUT") and ``exit`` N end the stream, as upstream. A stream has no result to carry
        ``output_paths``, so they are not collected: use ``execute()`` for them."""
        return self._execute_stream(ExecutionRequest(
            code=code, runtime=runtime, cmd=cmd, timeout_ms=timeout_ms, env=env, stdin=stdin,
            file_extension=file_extension, files=files, workdir=workdir,
            output_paths=output_paths, setup_script=setup_script,
            install_packages=install_packages, code_url=code_url, code_hash=code_hash,
            allow_insecure_code_url=allow_insecure_code_url))

    def _execute_stream(self, request: ExecutionRequest,
                        cancel_fd: int = -1) -> Iterator[StreamEvent]:
        request = self._fetched(request)
        started = time.monotonic()
        run = self._run(dataclasses.replace(request, output_paths=None), started, cancel_fd)
        decoders = {(phase, name): codecs.getincrementaldecoder("utf-8")("replace")
                    for phase in ("setup", "code") for name in ("stdout", "stderr")}

        def tails(phase: str) -> Iterator[StreamEvent]:
            for name in ("stdout", "stderr"):
                tail = decoders[phase, name].decode(b"", final=True)
                if tail:
                    yield StreamEvent(type=name, data=tail, phase=phase)

        try:
            while True:
                try:
                    phase, name, data = next(run)
                except StopIteration as done:
                    staged, usage, runtime_name = done.value
                    break
                if name == "exit":  # the setup script succeeded
                    yield from tails(phase)
                    yield StreamEvent(type="exit", data=data.decode(), phase=phase)
                    continue
                text = decoders[phase, name].decode(data)
                if text:
                    yield StreamEvent(type=name, data=text, phase=phase)
        finally:
            run.close()
        outcome = staged.main
        if outcome is None:
            yield from tails("setup")
            failure = _setup_failure(staged)
            assert staged.setup is not None
            yield StreamEvent(type="error", data=failure.reason, phase="setup")
            yield StreamEvent(type="exit", data=str(failure.exit_code), phase="setup",
                              limits_reached=_limits_reached(staged.setup, usage))
            return
        yield from tails("code")
        for name, sink in (("stdout", outcome.stdout), ("stderr", outcome.stderr)):
            if sink.truncated:
                yield StreamEvent(type=name, data=truncation_marker(sink.total, sink.limit))
        result = self._result(outcome, usage, runtime_name, started)
        if outcome.timed_out and not result.resource_usage.oom:
            yield StreamEvent(type="error", data="EXECUTION TIMED OUT")
        yield StreamEvent(type="exit", data=str(result.exit_code),
                          limits_reached=result.resource_usage.limits_reached, result=result)

    def _run(self, request: ExecutionRequest, started: float, cancel_fd: int = -1,
             max_output: int | None = None, masked: bool = True,
             ) -> Generator[Event, None, tuple[StagedOutcome, cgroups.Usage, str]]:
        """One run: yields its output as it arrives, returns the outcome, the cgroup
        readings and the runtime's name. The sandbox's uid lease and cgroups live exactly
        as long as the run (ephemeral) or the session (persistent), whatever ends it."""
        timeout = positive_int(request.timeout_ms, "timeout_ms") \
            if request.timeout_ms is not None else self.options.timeout_ms
        if self._config_body is None:  # first: the root the runtimes are looked up in
            self._start_engine(self._prewarm)
        stages, runtime_name = self._stages(request)
        install = self._install_plan(request, runtime_name)
        if install is not None:  # a waiting interpreter would miss the new user site
            stages = dataclasses.replace(stages, zygote=False)
        opts = self.options
        cap = max_output or opts.max_output_size
        # get_file's own output is file content: masking could corrupt it, and the caller
        # owns the secrets anyway.
        secrets = [v.encode() for _, v in opts.secrets] if masked else []
        deadline = started + timeout / 1000
        if opts.mode == "persistent":
            staged, usage = yield from self._run_persistent(
                stages, runtime_name if request.cmd is None else None, deadline, cancel_fd,
                cap, secrets, install, timeout)
        elif stages.setup is not None or stages.output_paths or install is not None:
            staged, usage = yield from self._run_staged(stages, timeout, deadline, cancel_fd,
                                                        cap, secrets, install)
        elif (entry := self._pooled_for(stages, timeout)):
            staged, usage = yield from self._run_pooled(entry, stages.main, deadline,
                                                        cancel_fd, cap, secrets)
        else:
            staged, usage = yield from self._run_single(stages.main, timeout, deadline,
                                                        cancel_fd, cap, secrets)
        return staged, usage, runtime_name

    def _run_single(self, spec: RunSpec, timeout: int, deadline: float, cancel_fd: int,
                    max_output: int, secrets: list[bytes],
                    ) -> Generator[Event, None, tuple[StagedOutcome, cgroups.Usage]]:
        """The common case: one process, the sandbox ending with it (no per-run leader)."""
        host = sandbox_cgroups = None
        try:
            with signals_deferred():  # owned before any interrupt lands: see stream_ephemeral
                host, sandbox_cgroups, config = self._claim(timeout)
            outcome = yield from in_phase("code", stream_ephemeral(
                config, spec, deadline=deadline, max_output=max_output, owner=host.owner,
                cgroup=sandbox_cgroups, secrets=secrets, cancel_fd=cancel_fd,
                network=self._network))
            usage = sandbox_cgroups.usage() if sandbox_cgroups else cgroups.Usage()
        finally:
            with signals_deferred():
                self._release(host, sandbox_cgroups)
        return StagedOutcome(main=outcome), usage

    def _pooled_for(self, stages: Stages, timeout: int) -> pool.Pooled | None:
        """A warm sandbox that serves this run exactly as a cold one would, if any.

        Its rlimits were fixed for the engine's timeout (the CPU-time budget), so a longer
        request timeout runs cold."""
        warm = self._pool
        if warm is None or timeout > self.options.timeout_ms:
            return None
        if stages.zygote:
            entry = warm.take("python")
            if entry is not None:
                return entry
        return warm.take("plain")

    def _run_pooled(self, entry: pool.Pooled, spec: RunSpec, deadline: float, cancel_fd: int,
                    max_output: int, secrets: list[bytes],
                    ) -> Generator[Event, None, tuple[StagedOutcome, cgroups.Usage]]:
        try:
            outcome = yield from in_phase("code", stream_once(
                lambda out_w, err_w: entry.launch(spec, out_w, err_w), deadline=deadline,
                max_output=max_output, owner=entry.host.owner, cgroup=entry.cgroup,
                secrets=secrets, cancel_fd=cancel_fd))
            usage = entry.cgroup.usage() if entry.cgroup else cgroups.Usage()
            if usage.cpu_ns is not None:
                usage.cpu_ns -= entry.baseline_cpu_ns
        finally:
            entry.destroy()
            if entry.pool is not None:
                entry.pool.release(entry)
        return StagedOutcome(main=outcome), usage

    def _run_staged(self, stages: Stages, timeout: int, deadline: float, cancel_fd: int,
                    max_output: int, secrets: list[bytes],
                    install: packages.InstallPlan | None = None,
                    ) -> Generator[Event, None, tuple[StagedOutcome, cgroups.Usage]]:
        """Packages, setup script or output files: several processes in one throwaway
        session."""
        phased = self._filtered.phased() if self._filtered is not None else None
        session = self._new_session(timeout, network=phased)
        try:
            if install is not None:
                assert phased is not None
                deadline += self._install(session, phased, install, timeout, cancel_fd)
            staged = yield from run_stages(
                session, stages, deadline=deadline, max_output=max_output,
                owner=session.host.owner, secrets=secrets, cancel_fd=cancel_fd)
            usage = session.cgroup.usage() if session.cgroup else cgroups.Usage()
        finally:
            session.close()
        return staged, usage

    def _run_persistent(self, stages: Stages, code_runtime: str | None, deadline: float,
                        cancel_fd: int, max_output: int, secrets: list[bytes],
                        install: packages.InstallPlan | None = None, timeout: int = 0,
                        ) -> Generator[Event, None, tuple[StagedOutcome, cgroups.Usage]]:
        """A run in the engine's one sandbox, made on first use; runs are serialized."""
        with self._session_lock:
            session = self._session
            if session is not None and not session.alive:  # OOM or a lost init: start over
                session.close()
                session = self._session = None
            if session is not None and code_runtime and session.runtime not in (None,
                                                                                 code_runtime):
                raise InvalidRequest(
                    f'Cannot switch runtime from "{session.runtime}" to "{code_runtime}". '
                    "Each persistent container supports a single runtime. Create a new "
                    "Isol8 instance for a different runtime.")
            if session is None:
                phased = self._filtered.phased() if self._filtered is not None else None
                session = self._new_session(self.options.timeout_ms, persistent=True,
                                            network=phased)
                self._session_network = phased
                try:
                    if self._workspace:
                        workspace.restore(session, self._workspace,
                                          self.options.sandbox_size)
                except BaseException:
                    session.close()
                    raise
                self._session = session
                session.runtime = "python" if self._repl else None
            session.runtime = session.runtime or code_runtime
            try:
                if install is not None:
                    assert self._session_network is not None
                    deadline += self._install(session, self._session_network, install,
                                              timeout, cancel_fd)
                    session.drop_zygote()  # a new one starts, with the user site
                    packages.refresh_repl(session, install, deadline=deadline,
                                          owner=session.host.owner, cancel_fd=cancel_fd)
                if stages.repl and session.repl is None:
                    with signals_deferred():
                        session.repl = Repl(session, get_runtime("python").binary)
                staged = yield from run_stages(
                    session, stages, deadline=deadline, max_output=max_output,
                    owner=session.host.owner, secrets=secrets, cancel_fd=cancel_fd)
            except SessionLost:
                session.close()  # the next call starts a new session
                self._session = None
                raise
            if session.runtime == "python" and not self._repl:
                session.prepare_zygote(get_runtime("python").binary)
            usage = session.cgroup.usage() if session.cgroup else cgroups.Usage()
            # The counters are the session's: a run reports what it added.
            usage.oom, session.oom_kills_seen = (usage.oom_kills > session.oom_kills_seen,
                                                 usage.oom_kills)
            usage.pids_max, session.pids_max_seen = (usage.pids_max - session.pids_max_seen,
                                                     usage.pids_max)
            if usage.cpu_ns is not None:
                usage.cpu_ns, session.cpu_ns_seen = usage.cpu_ns - session.cpu_ns_seen, \
                    usage.cpu_ns
            outcome = staged.main
            if outcome is not None and outcome.cpu_us is not None:
                outcome.cpu_us, session.cpu_us_seen = outcome.cpu_us - session.cpu_us_seen, \
                    outcome.cpu_us
            return staged, usage

    def _install_plan(self, request: ExecutionRequest,
                      runtime_name: str) -> packages.InstallPlan | None:
        """``install_packages`` checked (names, runtime, network) before anything runs; None
        when there are none, or the root's image manifest already lists them all."""
        if request.install_packages is None:
            return None
        manager = packages.manager_for(runtime_name)
        names = packages.validated_packages(request.install_packages, manager)
        installed = (self._root.manifest or {}).get("installed")
        if not names or (isinstance(installed, dict)
                         and packages.satisfied(names, installed, manager)):
            return None
        if self._filtered is None:
            raise InvalidRequest(
                f"install_packages: needs network='filtered' (network is "
                f"{self.options.network!r}): the install reaches the package index through "
                "the proxy, which allows it the index's hosts only")
        binary = get_runtime(runtime_name).binary
        if manager == "npm":
            _require_binary(self._root, "/usr/bin/npm", "npm")
        return packages.install_plan(names, binary, self._indexes[manager],
                                     self._package_cache, self._filtered.env())

    @staticmethod
    def _install(session: Session, network: PhasedNetwork, plan: packages.InstallPlan,
                 timeout: int, cancel_fd: int) -> float:
        """The install phase in ``session``, with a timeout of its own (upstream); the
        seconds it took, by which the code's deadline moves."""
        return packages.run_install(session, plan, network,
                                    deadline=time.monotonic() + timeout / 1000,
                                    owner=session.host.owner, cancel_fd=cancel_fd)

    def _new_session(self, timeout_ms: int, *, persistent: bool = False,
                     network: PhasedNetwork | None = None) -> Session:
        with signals_deferred():
            host, sandbox_cgroups, config = self._claim(timeout_ms, oom_group=not persistent)
            try:
                return Session(config, host, sandbox_cgroups, None, persistent=persistent,
                               network=network.serve if network else self._network)
            except BaseException:
                self._release(host, sandbox_cgroups)
                raise

    def _claim(self, timeout_ms: int, *, oom_group: bool = True,
               ) -> tuple[identity.HostIdentity, cgroups.SandboxCgroups | None, bytes]:
        """A new sandbox's host identity, cgroup leaves and config message; called with
        signals deferred, and on failure nothing stays claimed."""
        opts = self.options
        host, sandbox_cgroups = identity.acquire(opts.uid_range), None
        try:
            if self._cgroups is not None:
                sandbox_cgroups = self._cgroups.new_sandbox(
                    opts.limits.memory, opts.limits.pids, opts.limits.cpu, oom_group=oom_group)
            assert self._config_body is not None
            config = config_message(
                self._config_body, host_uid=host.uid, host_gid=host.gid,
                rlimits=limits.rlimits(opts.limits, self._enforced, timeout_ms=timeout_ms,
                                       max_file=self._max_file, cpu_budget=not self._repl),
                cgroup_kinds=sandbox_cgroups.kinds if sandbox_cgroups else b"",
                ops=etc.per_sandbox_plan())
        except BaseException:
            self._release(host, sandbox_cgroups)
            raise
        return host, sandbox_cgroups, config

    @staticmethod
    def _release(host: identity.HostIdentity | None,
                 sandbox_cgroups: cgroups.SandboxCgroups | None) -> None:
        if sandbox_cgroups is not None:
            sandbox_cgroups.destroy()
        if host is not None:
            host.release()

    def _result(self, outcome: RunOutcome, usage: cgroups.Usage, runtime: str,
                started: float, files: dict[str, str] | None = None) -> ExecutionResult:
        oom = outcome.oom or usage.oom
        reached = _limits_reached(outcome, usage)
        # upstream: OOM and timeout both give 137; only timeout is marked
        exit_code = 137 if oom else exit_status(outcome)
        stderr = outcome.stderr.text()
        if outcome.timed_out and not oom:
            stderr = with_timeout_marker(stderr)
        end_ns = outcome.ended_ns or time.monotonic_ns()
        begin_ns = outcome.started_ns if outcome.started_ns is not None else int(started * 1e9)
        # The init's timestamp is data from inside the sandbox: clamp it to the call's span.
        begin_ns = min(max(begin_ns, int(started * 1e9)), end_ns)
        duration_ms = (end_ns - begin_ns) // 1_000_000
        cpu_ms = (usage.cpu_ns // 1_000_000 if usage.cpu_ns is not None
                  else (outcome.cpu_us or 0) // 1000)
        peak = usage.peak_bytes if usage.peak_bytes is not None else outcome.peak_bytes
        peak_mb = round(peak / (1 << 20), 2) if peak is not None else None
        net = outcome.network
        return ExecutionResult(
            stdout=outcome.stdout.text(),
            stderr=stderr,
            exit_code=exit_code,
            duration_ms=duration_ms,
            truncated=outcome.stdout.truncated or outcome.stderr.truncated,
            execution_id=str(uuid.uuid4()),
            runtime=runtime,
            timestamp=datetime.now(timezone.utc).isoformat(timespec="milliseconds")
                              .replace("+00:00", "Z"),
            resource_usage=ResourceUsage(
                cpu_time_ms=cpu_ms, cpu_percent=round(100 * cpu_ms / max(duration_ms, 1), 1),
                memory_mb=peak_mb, peak_memory_mb=peak_mb, oom=oom,
                enforced=dict(self._enforced), limits_reached=reached,
                network_bytes_in=net.bytes_in if net else self._no_bytes,
                network_bytes_out=net.bytes_out if net else self._no_bytes),
            files=files,
            network_logs=self._network_logs(net),
        )

    def _network_logs(self, net: NetworkUsage | None) -> list[NetworkLog] | None:
        if net is None or not self.options.log_network:
            return None
        # Longest first: a secret containing another must not be half-masked by it.
        secrets = sorted((v for _, v in self.options.secrets if v), key=len, reverse=True)
        return [log.masked(secrets) if secrets else log for log in net.logs]

    def _fetched(self, request: ExecutionRequest) -> ExecutionRequest:
        """A ``code_url`` request as the code it names (fetched before the run's clock
        starts, as upstream); any other request as it is."""
        if request.code_url is None:
            return request
        if (request.code or "").strip() or (request.cmd or "").strip():
            raise InvalidRequest(_EXCLUSIVE)
        code = fetch_code(request.code_url, self._remote_code, code_hash=request.code_hash,
                          allow_insecure=request.allow_insecure_code_url is True)
        return dataclasses.replace(request, code=code, code_url=None)

    def _stages(self, request: ExecutionRequest) -> tuple[Stages, str]:
        """The request, validated, as the processes to run, and the runtime's name."""
        code, cmd = request.code, request.cmd
        has_code = code is not None and code.strip() != ""
        has_cmd = cmd is not None and cmd.strip() != ""
        if has_code and has_cmd:
            raise InvalidRequest(_EXCLUSIVE)
        if not has_code and not has_cmd:
            raise InvalidRequest(_MISSING)
        # Upstream's order: the base set, then secrets, then the request's env.
        full_env = base_env()
        if self._filtered is not None:
            full_env.update(self._filtered.env())
        full_env.update(self.options.secrets)
        full_env.update(env_mapping(request.env, "env"))
        stdin = request.stdin
        stdin_bytes = stdin.encode() if isinstance(stdin, str) else bytes(stdin or b"")
        files = validated_files(request.files)
        cwd = validated_workdir(request.workdir)
        output_paths = validated_output_paths(request.output_paths)
        script = validated_setup_script(request.setup_script)
        if script is not None or has_cmd:
            _require_binary(self._root, BASH, "bash")
        setup = None
        if script is not None:  # files first, then the script: it sees them
            setup, files = setup_spec(script, full_env, files), []
        if has_cmd:
            assert cmd is not None
            main = RunSpec([BASH, "-c", cmd], full_env, cwd, stdin_bytes, files)
            return Stages(main, setup, output_paths), request.runtime or "bash"
        assert code is not None
        rt = get_runtime(request.runtime or "python")
        _require_binary(self._root, rt.binary, rt.name)
        extension = (_validated_extension(request.file_extension) if request.file_extension
                     else rt.extension)
        path = f"{SANDBOX_HOME}/main{extension}"
        main = RunSpec(rt.argv(path), full_env, cwd, stdin_bytes, [*files, (path, code.encode())])
        python = rt.name == "python"
        return Stages(main, setup, output_paths, repl=self._repl and python,
                      zygote=python and zygote_can_run(main)), rt.name


def _close_engine(engine_cgroups: cgroups.EngineCgroups, root: images.Root) -> None:
    try:
        engine_cgroups.close()
    finally:
        root.release()


def _setup_failure(staged: StagedOutcome) -> SetupScriptFailed:
    setup = staged.setup
    assert setup is not None and staged.setup_exit is not None
    reason = (SETUP_TIMED_OUT if setup.timed_out
              else f"Setup script failed (exit code {staged.setup_exit})")
    return SetupScriptFailed(reason, staged.setup_exit, setup.stdout.text(), setup.stderr.text())


def _limits_reached(outcome: RunOutcome, usage: cgroups.Usage) -> list[str]:
    """What ended or cut this run (see ResourceUsage.limits_reached); ``usage`` holds the
    run's own counters (a persistent session's are deltas)."""
    return limits.reached(
        pids=usage.pids_max > 0, memory=outcome.oom or usage.oom,
        output=outcome.stdout.truncated or outcome.stderr.truncated,
        file_size=limits.killed_by_file_size(outcome.exit_code, outcome.signal),
        timeout=outcome.timed_out)


def _require_binary(root: images.Root, path: str, name: str) -> None:
    if images.binary_exists(root.path, path):
        return
    package = {"python": "python3", "node": "nodejs"}.get(name, name)
    fix = (f"install it on the host (e.g. apt-get install {package})" if root.is_host
           else f"use an image that has it (e.g. isol8 image build {name})")
    raise RuntimeNotAvailable(f"runtime '{name}' is not available: {path} does not exist in "
                              f"the sandbox's root filesystem ({root.label}); {fix}")


def _validated_extension(ext: str) -> str:
    ext = ext if ext.startswith(".") else "." + ext
    if not ext[1:].isalnum() or len(ext) > 16:
        raise InvalidRequest(f"file_extension: invalid extension {ext!r}")
    return ext


__all__ = ["Isol8"]
