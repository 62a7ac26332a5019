"""Image recipes: what goes into an image, as data (rootfs/<name>.toml).

A recipe names a Debian suite and mmdebstrap variant, the packages to install, files to
write and an optional setup script run inside the new root. Its digest is the sha256 of a
canonical JSON form of all that plus the extra packages ``--install`` bakes in: the store
compares it with the current image's to tell an unchanged recipe (nothing to do) from a
changed one (rebuild). Comments and key order in the TOML file do not change it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidRequest

SUITES = ("bookworm", "trixie")
VARIANTS = ("extract", "essential", "apt", "minbase", "buildd", "required", "important",
            "standard")
# mmdebstrap only unpacks these (no dpkg run, no customize hooks): no files, setup or installer.
_UNPACK_ONLY = ("extract",)
INSTALLERS = ("pip", "npm")
# Debian package names (policy 5.6.1), optionally with an architecture qualifier.
_DEB = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9]+)?$")
# A pip requirement or npm spec without options, URLs or paths: a name, optionally scoped
# (@scope/name, npm) or with extras, then an optional version constraint.
_PKG = re.compile(r"^(@[a-z0-9][a-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?"
                  r"((==|>=|<=|~=|!=|>|<|@)[A-Za-z0-9.*+!_^~-]+)?$")
_KEYS = {"description", "suite", "variant", "packages", "files", "setup", "installer"}


@dataclass(frozen=True, slots=True)
class Recipe:
    name: str
    suite: str
    variant: str
    packages: tuple[str, ...]
    files: Mapping[str, str] = field(default_factory=dict)
    setup: str = ""
    installer: str = ""  # "pip" or "npm": what --install uses; "" refuses --install
    description: str = ""

    def canonical(self, install: Sequence[str] = ()) -> bytes:
        """The bytes the digest covers: everything that changes the image, nothing else."""
        return json.dumps({"suite": self.suite, "variant": self.variant,
                           "packages": sorted(self.packages), "files": dict(self.files),
                           "setup": self.setup, "installer": self.installer,
                           "install": sorted(install)},
                          sort_keys=True, separators=(",", ":")).encode()

    def digest(self, install: Sequence[str] = ()) -> str:
        return "sha256-" + hashlib.sha256(self.canonical(install)).hexdigest()


def recipe_dirs() -> list[Path]:
    """Where recipes are looked up: ``$ISOL8_RECIPES`` (a path list), then the checkout's
    rootfs/ next to the package, then any packaged copy inside it."""
    dirs = [Path(p) for p in os.environ.get("ISOL8_RECIPES", "").split(os.pathsep) if p]
    here = Path(__file__).resolve().parent
    return dirs + [here.parent.parent / "rootfs", here / "rootfs"]


def find(name: str) -> Path | None:
    """The recipe file for ``name``: a path to a .toml file, or a recipe's name."""
    if name.endswith(".toml") or os.sep in name:
        return Path(name) if Path(name).is_file() else None
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", name):
        return None
    for d in recipe_dirs():
        if (d / f"{name}.toml").is_file():
            return d / f"{name}.toml"
    return None


def available() -> list[str]:
    names = {p.stem for d in recipe_dirs() if d.is_dir() for p in d.glob("*.toml")}
    return sorted(names)


def load(name: str) -> Recipe:
    path = find(name)
    if path is None:
        raise InvalidRequest(f"no recipe {name!r} (looked in "
                             f"{', '.join(str(d) for d in recipe_dirs())}; recipes there: "
                             f"{', '.join(available()) or 'none'})")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidRequest(f"recipe {path}: {exc}") from None
    return parse(path.stem, data, str(path))


def parse(name: str, data: Mapping[str, object], where: str = "recipe") -> Recipe:
    """Validate a recipe's table: every key known, every value of its type, names safe to
    pass to mmdebstrap and apt (none starts with '-')."""
    unknown = set(data) - _KEYS
    if unknown:
        raise InvalidRequest(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: "
                             f"{', '.join(sorted(_KEYS))})")
    suite = _string(data, "suite", where, "bookworm")
    if suite not in SUITES:
        raise InvalidRequest(f"{where}: suite {suite!r} is not one of {', '.join(SUITES)}")
    variant = _string(data, "variant", where, "essential")
    if variant not in VARIANTS:
        raise InvalidRequest(f"{where}: variant {variant!r} is not one of "
                             f"{', '.join(VARIANTS)}")
    packages = data.get("packages", [])
    if not isinstance(packages, list) or not all(isinstance(p, str) for p in packages):
        raise InvalidRequest(f"{where}: packages must be a list of strings")
    for pkg in packages:
        if not _DEB.match(pkg):
            raise InvalidRequest(f"{where}: {pkg!r} is not a Debian package name")
    files = data.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise InvalidRequest(f"{where}: files must be a table of path = \"content\"")
    for path in files:
        parts = path.split("/")
        if not path.startswith("/") or ".." in parts or "" in parts[1:]:
            raise InvalidRequest(f"{where}: file path {path!r} must be absolute and "
                                 "normalized (no '..', no '//')")
    installer = _string(data, "installer", where, "")
    if installer and installer not in INSTALLERS:
        raise InvalidRequest(f"{where}: installer {installer!r} is not one of "
                             f"{', '.join(INSTALLERS)}")
    setup = _string(data, "setup", where, "")
    if variant in _UNPACK_ONLY and (files or setup or installer):
        raise InvalidRequest(f"{where}: variant {variant!r} only unpacks packages: it runs no "
                             "hooks, so it takes no files, setup or installer")
    return Recipe(name, suite, variant, tuple(packages), dict(files), setup, installer,
                  _string(data, "description", where, ""))


def check_install(recipe: Recipe, packages: Sequence[str]) -> None:
    """``--install`` names: registry packages only (no options, URLs, paths), and only for a
    recipe that says which installer takes them."""
    if packages and not recipe.installer:
        raise InvalidRequest(f"recipe {recipe.name!r} has no installer: --install needs a "
                             "pip (python) or npm (node) base")
    for pkg in packages:
        if not _PKG.match(pkg):
            raise InvalidRequest(f"--install {pkg!r}: not a package name (an optional "
                                 "version like name==1.2 is fine; options, URLs and paths "
                                 "are not)")


def _string(data: Mapping[str, object], key: str, where: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise InvalidRequest(f"{where}: {key} must be a string")
    return value
