"""Package names a request may ask to install, checked before anything runs.

A name reaches pip's or npm's argv. Both parse options anywhere on their command line, so a
"package" ``--index-url=http://evil`` would redirect the install and ``-e .`` or a path would
install whatever the sandbox holds; a URL would fetch from a host the network policy did not
mean to allow. So a name is only a registry name with an optional version: PEP 508's name,
extras and version specifiers for pip (no URL, no environment marker), npm's
``[@scope/]name[@version-or-range]`` for npm. Anything else is refused, naming the entry.
The install also ends the options with ``--``, so a name could not be read as one anyway.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ..errors import InvalidRequest

MAX_PACKAGES = 64
MAX_LENGTH = 214  # npm's limit on a name; far above any real PEP 508 requirement

# PEP 508: a name starts and ends with a letter or digit; extras are names; a specifier is
# an operator and a version (PEP 440 characters, '*' for prefix matching).
_PEP508_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_SPECIFIER = r"(?:===|==|!=|~=|<=|>=|<|>)\s*[A-Za-z0-9._+!*-]+"
_PIP = re.compile(
    rf"(?P<name>{_PEP508_NAME})\s*"
    rf"(?:\[\s*{_PEP508_NAME}(?:\s*,\s*{_PEP508_NAME})*\s*\])?\s*"
    rf"(?P<spec>{_SPECIFIER}(?:\s*,\s*{_SPECIFIER})*)?\Z")
# npm: lowercase URL-safe names, not starting with '.' or '_'; a version, range or tag after
# '@' (no spaces, no protocol: 'git+', 'file:', 'npm:' aliases and URLs all carry ':' or '/').
_NPM_NAME = r"(?:@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*"
_NPM = re.compile(rf"(?P<name>{_NPM_NAME})(?:@(?P<spec>[A-Za-z0-9.^~<>=*+_|-]+))?\Z")


def normalized_name(name: str) -> str:
    """PEP 503's normalized form: the name pip, PyPI's simple index and manifests agree on."""
    return re.sub(r"[-_.]+", "-", name).lower()


def validated_packages(value: object, manager: str) -> tuple[str, ...]:
    """``install_packages`` as a tuple of names for ``manager`` ("pip" or "npm"), trimmed,
    deduplicated in order; raises InvalidRequest naming the first bad entry."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidRequest("install_packages: expected a list of package names, got "
                             f"{type(value).__name__}")
    if len(value) > MAX_PACKAGES:
        raise InvalidRequest(f"install_packages: at most {MAX_PACKAGES} packages, "
                             f"got {len(value)}")
    pattern = _PIP if manager == "pip" else _NPM
    kind = ("a PEP 508 name with optional extras and version specifiers (e.g. 'requests', "
            "'numpy==1.26.4')" if manager == "pip" else
            "an npm name with an optional @version (e.g. 'lodash', '@types/node@20')")
    names: list[str] = []
    for i, entry in enumerate(value):
        where = f"install_packages[{i}]"
        if not isinstance(entry, str):
            raise InvalidRequest(f"{where}: expected a string, got {type(entry).__name__}")
        name = entry.strip()
        if not name:
            raise InvalidRequest(f"{where}: empty package name")
        if len(name) > MAX_LENGTH:
            raise InvalidRequest(f"{where}: {len(name)} characters, over {MAX_LENGTH}")
        if name.startswith("-"):
            raise InvalidRequest(f"{where} {name!r}: starts with '-': an option, not a "
                                 "package (options cannot be passed through install_packages)")
        if "://" in name or name.startswith(("/", ".", "~")) or "\0" in name:
            raise InvalidRequest(f"{where} {name!r}: URLs and paths are not installable; "
                                 f"name a package from the index")
        if not pattern.match(name):
            raise InvalidRequest(f"{where} {name!r}: not {kind}")
        if name not in names:
            names.append(name)
    return tuple(names)


def satisfied(packages: Sequence[str], installed: Mapping[str, str], manager: str) -> bool:
    """Whether an image whose manifest lists ``installed`` ({name: version}) already has
    every package asked for. Deliberately minimal (no PEP 440 algebra in the stdlib-only
    core): a bare name needs the package, ``name==version`` needs that exact version; any
    other specifier, or extras, is not judged and means the install runs."""
    if not packages:
        return True
    norm = normalized_name if manager == "pip" else str
    have = {norm(k): str(v) for k, v in installed.items()}
    for package in packages:
        match = (_PIP if manager == "pip" else _NPM).match(package)
        if match is None or (manager == "pip" and "[" in package):
            return False
        name = norm(match.group("name"))
        if name not in have:
            return False
        spec = (match.group("spec") or "").replace(" ", "")
        if not spec:
            continue
        exact = spec[2:] if manager == "pip" and spec.startswith("==") else spec
        if manager == "pip" and (not spec.startswith("==") or "," in spec or "*" in spec):
            return False
        if manager == "npm" and not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", spec):
            return False
        if exact.lower() != have[name].lower():
            return False
    return True
