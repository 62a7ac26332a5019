"""``ExecutionRequest``: what one run asks for, validated before anything is spawned."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from .errors import InvalidRequest
from .runtimes import SANDBOX_HOME

# Where request files may go: the sandbox's writable tmpfs mounts.
FILE_ROOTS = (SANDBOX_HOME + "/", "/tmp/")
MAX_REQUEST_FILES = 63  # one memfd each; the code is the 64th (protocol.MAX_FILES)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionRequest:
    """Upstream's request fields, snake_case. Exactly one of ``code``, ``code_url`` and
    ``cmd``."""

    code: str | None = None
    runtime: str | None = None
    cmd: str | None = None
    timeout_ms: int | None = None
    env: dict[str, str] | None = None
    stdin: str | bytes | None = None
    file_extension: str | None = None
    files: dict[str, str | bytes] | None = None
    workdir: str | None = None
    output_paths: list[str] | None = None
    setup_script: str | None = None
    install_packages: list[str] | None = None  # checked by isol8.packages.names
    # upstream's codeUrl, codeHash, allowInsecureCodeUrl (isol8.remote_code)
    code_url: str | None = None
    code_hash: str | None = None
    allow_insecure_code_url: bool = False


def validated_files(files: object) -> list[tuple[str, bytes]]:
    """``{absolute path: str | bytes}`` confined to /sandbox and /tmp, as (path, bytes)."""
    if files is None:
        return []
    if not isinstance(files, dict):
        raise InvalidRequest("files: expected a mapping of absolute paths to str or bytes")
    if len(files) > MAX_REQUEST_FILES:
        raise InvalidRequest(f"files: at most {MAX_REQUEST_FILES} files per request")
    out = []
    for path, content in files.items():
        if (not isinstance(path, str) or "\0" in path or posixpath.normpath(path) != path
                or not path.startswith(FILE_ROOTS)):
            raise InvalidRequest(f"files: {path!r} must be a normalized absolute path under "
                                 f"{SANDBOX_HOME} or /tmp")
        if isinstance(content, str):
            content = content.encode()
        if not isinstance(content, (bytes, bytearray, memoryview)):
            raise InvalidRequest(f"files: content of {path} must be str or bytes")
        out.append((path, bytes(content)))
    return out


def validated_workdir(workdir: object) -> str:
    """Upstream's rule: relative paths resolve against /sandbox; nothing may leave it."""
    if workdir is None:
        return SANDBOX_HOME
    if not isinstance(workdir, str) or "\0" in workdir:
        raise InvalidRequest("workdir: expected a path")
    resolved = posixpath.normpath(posixpath.join(SANDBOX_HOME, workdir))
    if resolved != SANDBOX_HOME and not resolved.startswith(SANDBOX_HOME + "/"):
        raise InvalidRequest("Working directory must be inside /sandbox")
    return resolved


MAX_OUTPUT_PATHS = 256


def validated_output_paths(paths: object) -> tuple[str, ...]:
    """Absolute paths to return after the run. They are read inside the sandbox, whose
    mount namespace confines them, so any path the sandbox user can read is allowed."""
    if paths is None:
        return ()
    if isinstance(paths, (str, bytes)) or not isinstance(paths, (list, tuple)):
        raise InvalidRequest("output_paths: expected a list of absolute paths")
    if len(paths) > MAX_OUTPUT_PATHS:
        raise InvalidRequest(f"output_paths: at most {MAX_OUTPUT_PATHS} paths")
    for path in paths:
        # NUL separates the collected entries, and a path cannot hold one anyway.
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise InvalidRequest(f"output_paths: {path!r} must be an absolute path")
    return tuple(dict.fromkeys(paths))


def validated_setup_script(script: object) -> str | None:
    if script is None:
        return None
    if not isinstance(script, str) or "\0" in script:
        raise InvalidRequest("setup_script: expected a bash script (str)")
    return script if script.strip() else None
