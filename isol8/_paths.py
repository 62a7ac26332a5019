"""Where isol8 keeps files on the host: the helper binary and per-user caches."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def helper_path() -> Path:
    """The C helper, built by ``pip install`` (or ``make``) next to the package."""
    return PACKAGE_DIR / "_bin" / "isol8-helper"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "isol8"
