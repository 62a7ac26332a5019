"""isol8 as a sandbox provider of the OpenAI Agents SDK (``agents.sandbox``), beside its
``docker`` and ``unix_local`` ones: ``SandboxRunConfig(client=Isol8SandboxClient())``.

A ``SandboxAgent``'s session is one persistent isol8 sandbox (``AsyncIsol8(mode=
"persistent")``); the SDK's shell and file tools reach it through ``_exec_internal``
(bash in the sandbox), ``read``/``write`` (``get_file``/``put_file``, binary-safe, done by
the sandbox's user inside its mount namespace), and its workspace is ``/sandbox``, the
sandbox's writable tmpfs (a manifest's default ``/workspace`` is moved there). Persist and
hydrate are tar streams of the workspace, made and unpacked inside the sandbox, so a crafted
archive can only write where the sandbox's own code could.

A run that reaches the engine's timeout is the SDK's ``ExecTimeoutError``, which its shell
tool reports as its timeout; an OOM kill is the exit code with isol8's sentence in stderr.
"""

from __future__ import annotations

import io
import posixpath
import shlex
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from agents.sandbox.errors import ExecTimeoutError, WorkspaceReadNotFoundError
from agents.sandbox.manifest import Manifest
from agents.sandbox.session.base_sandbox_session import BaseSandboxSession
from agents.sandbox.session.sandbox_client import (BaseSandboxClient,
                                                   BaseSandboxClientOptions)
from agents.sandbox.session.sandbox_session import SandboxSession
from agents.sandbox.session.sandbox_session_state import SandboxSessionState
from agents.sandbox.snapshot import SnapshotBase, SnapshotSpec, resolve_snapshot
from agents.sandbox.types import ExecResult, User

from ..async_engine import AsyncIsol8
from .contract import failure

WORKSPACE = "/sandbox"
_ARCHIVE = "/tmp/.isol8-workspace.tar"  # outside the workspace it holds


class Isol8SandboxSessionState(SandboxSessionState):
    type: Literal["isol8"] = "isol8"


class Isol8SandboxClientOptions(BaseSandboxClientOptions):
    """Nothing to choose per session: the engine's options are the client's."""

    type: Literal["isol8"] = "isol8"


class Isol8SandboxSession(BaseSandboxSession):
    """One persistent isol8 sandbox; made on first use, gone at shutdown."""

    state: Isol8SandboxSessionState

    def __init__(self, *, state: Isol8SandboxSessionState, options: dict[str, Any]) -> None:
        self.state = state
        self.engine = AsyncIsol8(**{**options, "mode": "persistent"})
        self._started = False

    async def _ensure_backend_started(self) -> None:
        await self.engine.start()
        self._started = True

    async def _shutdown_backend(self) -> None:
        self._started = False
        await self.engine.stop()

    async def running(self) -> bool:
        return self._started

    async def _exec_internal(self, *command: str | Path,
                             timeout: float | None = None) -> ExecResult:
        fields: dict[str, Any] = {"cmd": shlex.join(str(part) for part in command)}
        workdir = posixpath.relpath(self.state.manifest.root, WORKSPACE)
        if workdir != ".":
            fields["workdir"] = workdir
        if timeout is not None and timeout > 0:
            fields["timeout_ms"] = max(1, min(int(timeout * 1000),
                                              self.engine.options.timeout_ms))
        result = await self.engine.execute(**fields)
        limit = failure(result)
        if limit is not None and "timeout" in result.resource_usage.limits_reached \
                and not result.resource_usage.oom:
            raise ExecTimeoutError(command=command, timeout_s=result.duration_ms / 1000,
                                   context={"reason": limit})
        stderr = f"{result.stderr}\n{limit}" if limit and result.stderr else \
            (limit or result.stderr)
        return ExecResult(stdout=result.stdout.encode(), stderr=stderr.encode(),
                          exit_code=result.exit_code)

    async def read(self, path: Path, *, user: str | User | None = None) -> io.IOBase:
        target = await self._validate_path_access(path)
        try:
            return io.BytesIO(await self.engine.get_file(str(target)))
        except Exception as exc:
            if "No such file" in str(exc):
                raise WorkspaceReadNotFoundError(path=Path(path), cause=exc) from exc
            raise

    async def write(self, path: Path, data: io.IOBase, *,
                    user: str | User | None = None) -> None:
        target = await self._validate_path_access(path, for_write=True)
        payload = data.read()
        await self.engine.put_file(str(target), payload.encode()
                                   if isinstance(payload, str) else bytes(payload))

    async def persist_workspace(self) -> io.IOBase:
        """The workspace as a tar stream of workspace-relative members."""
        root = self.state.manifest.root
        made = await self.engine.execute(cmd=f"tar -C {shlex.quote(root)} -cf {_ARCHIVE} .")
        if made.exit_code != 0:
            raise RuntimeError(f"persisting the workspace failed: {made.stderr}")
        try:
            return io.BytesIO(await self.engine.get_file(_ARCHIVE))
        finally:
            await self.engine.execute(cmd=f"rm -f {_ARCHIVE}")

    async def hydrate_workspace(self, data: io.IOBase) -> None:
        """Unpacked inside the sandbox: the archive reaches nothing the code could not."""
        root = self.state.manifest.root
        payload = data.read()
        await self.engine.put_file(_ARCHIVE, payload.encode()
                                   if isinstance(payload, str) else bytes(payload))
        done = await self.engine.execute(
            cmd=f"mkdir -p {shlex.quote(root)} && tar -C {shlex.quote(root)} -xf {_ARCHIVE}"
                f"; status=$?; rm -f {_ARCHIVE}; exit $status")
        if done.exit_code != 0:
            raise RuntimeError(f"hydrating the workspace failed: {done.stderr}")


class Isol8SandboxClient(BaseSandboxClient[Isol8SandboxClientOptions | None]):
    """Makes each sandbox session an isol8 sandbox, with ``options`` as the engine's
    (``timeout_ms``, ``memory_limit``, ``network``, ``secrets``...)."""

    backend_id = "isol8"
    supports_default_options = True

    def __init__(self, **options: Any) -> None:
        options.pop("mode", None)
        AsyncIsol8(**options)  # bad options fail here, not at the agent's first call
        self._options = options

    async def create(self, *, snapshot: SnapshotSpec | SnapshotBase | None = None,
                     manifest: Manifest | None = None,
                     options: Isol8SandboxClientOptions | None = None) -> SandboxSession:
        manifest = _in_workspace(manifest or Manifest())
        self._validate_manifest_for_create(manifest)
        session_id = uuid.uuid4()
        state = Isol8SandboxSessionState(session_id=session_id, manifest=manifest,
                                         snapshot=resolve_snapshot(snapshot, str(session_id)))
        return self._wrap_session(Isol8SandboxSession(state=state, options=self._options))

    async def delete(self, session: SandboxSession) -> SandboxSession:
        inner = session._inner
        if isinstance(inner, Isol8SandboxSession):
            await inner.engine.stop()
        return session

    async def resume(self, state: SandboxSessionState) -> SandboxSession:
        """A new sandbox (an isol8 sandbox does not outlive its engine), which the SDK
        hydrates from the state's snapshot at start."""
        if not isinstance(state, Isol8SandboxSessionState):
            raise TypeError("Isol8SandboxClient.resume expects an Isol8SandboxSessionState")
        state.workspace_root_ready = False
        return self._wrap_session(Isol8SandboxSession(state=state, options=self._options))

    def deserialize_session_state(self, payload: dict[str, object]) -> SandboxSessionState:
        return self._deserialize_session_state_payload(payload, Isol8SandboxSessionState)


def _in_workspace(manifest: Manifest) -> Manifest:
    """The manifest with its root in /sandbox (the SDK's default, /workspace, moves there);
    a root elsewhere is refused, since only /sandbox is the sandbox's to keep."""
    root = PurePosixPath(posixpath.normpath(manifest.root))
    if str(root) == "/workspace":
        return manifest.model_copy(update={"root": WORKSPACE}, deep=True)
    if root != PurePosixPath(WORKSPACE) and PurePosixPath(WORKSPACE) not in root.parents:
        raise ValueError(f"Isol8SandboxClient: the manifest's root {manifest.root!r} must be "
                         f"{WORKSPACE} or under it (the sandbox's writable workspace)")
    return manifest
