"""Runtimes: how code of each language is started inside the sandbox.

Code is always written to a file by the user process itself (from a memfd), never passed on
argv: argv caps one string at 128 KiB, so code of any size works. Node code is an ``.mjs``
module, as upstream's file mode, unless ``file_extension`` says otherwise. ``cmd`` is a
command line and runs as ``bash -c`` exactly as upstream; being argv, it is bounded by the
kernel's 128 KiB per argument.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidRequest

SANDBOX_HOME = "/sandbox"
BASH = "/usr/bin/bash"


@dataclass(frozen=True, slots=True)
class Runtime:
    name: str
    binary: str
    extension: str
    extensions: tuple[str, ...]

    def argv(self, script: str) -> list[str]:
        return [self.binary, script]


RUNTIMES: dict[str, Runtime] = {
    rt.name: rt
    for rt in (
        Runtime("python", "/usr/bin/python3", ".py", (".py",)),
        Runtime("node", "/usr/bin/node", ".mjs", (".mjs", ".js", ".cjs")),
        Runtime("bash", BASH, ".sh", (".sh",)),
    )
}


class UnknownRuntime(InvalidRequest):
    """The runtime name or file extension is not one isol8 knows."""


def get_runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise UnknownRuntime(
            f'Unknown runtime: "{name}". Available: {", ".join(RUNTIMES)}') from None


def detect_runtime(filename: str) -> Runtime:
    """The runtime for a file name, by extension (``.py``, ``.js/.mjs/.cjs``, ``.sh``)."""
    lowered = filename.lower()
    for runtime in RUNTIMES.values():
        if any(lowered.endswith(ext) for ext in runtime.extensions):
            return runtime
    raise UnknownRuntime(f"Cannot detect the runtime of {filename!r}: use one of "
                         + ", ".join(ext for rt in RUNTIMES.values() for ext in rt.extensions)
                         + " or pass a runtime")


def base_env() -> dict[str, str]:
    """Upstream's base environment plus HOME, USER, LANG and TMPDIR; nothing from the host."""
    return {
        "PATH": "/sandbox/.local/bin:/sandbox/.npm-global/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": SANDBOX_HOME,
        "USER": "sandbox",
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "PYTHONUNBUFFERED": "1",
        "PYTHONUSERBASE": "/sandbox/.local",
        "NPM_CONFIG_PREFIX": "/sandbox/.npm-global",
        "NODE_PATH": "/usr/local/lib/node_modules:/sandbox/.npm-global/lib/node_modules:"
                     "/sandbox/node_modules",
    }
