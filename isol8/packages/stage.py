"""The install phase: one process in the run's own sandbox, before the setup script and the
code, and what the supervisor does with what it downloaded.

- The installer runs as the sandbox user with the run's limits, under its own deadline (the
  run's timeout, as upstream gives it its own budget), its output kept out of the stream
  (upstream). It gets the base environment and the proxy, not the request's ``env`` or the
  secrets: an install runs code the index serves (``setup.py``), which has no business with
  them.
- Its network is the index only: the sandbox's proxy judges by the index's policy for the
  phase (isol8.packages.index), then by the run's own rules again.
- pip installs into the user site under ``/sandbox/.local`` (``--user``, PYTHONUSERBASE), where
  the code's interpreter finds it. Debian marks its python EXTERNALLY-MANAGED (PEP 668),
  which refuses ``--user`` too unless told otherwise; the marker protects the
  distribution's own ``/usr`` from pip, and here that ``/usr`` is read-only and never
  touched: the user site lives in this sandbox's tmpfs and ends with it. So the installer,
  and only it, runs with PIP_BREAK_SYSTEM_PACKAGES=1, as upstream does. A venv would need
  python3-venv in every root and a different interpreter for the code.
- The shared cache is tried first with no index at all (a cached install sends nothing),
  then the index: pip downloads into ``DOWNLOADS`` and installs from there; the supervisor
  then reads those files back (Session.read_files, as output_paths are read), hashes them
  and caches each one whose hash the index publishes for its name (isol8.packages.cache).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass

from ..errors import Isol8Error, InvalidRequest
from ..network.filtered import PhasedNetwork
from ..runtimes import BASH, SANDBOX_HOME, base_env
from ..sandbox import RunOutcome, RunSpec, finish
from ..session import Session
from .cache import FILE_NAME, MOUNT, PackageCache
from .index import PackageIndex, published_hashes

SCRIPT_PATH = "/tmp/.isol8-install.sh"
DOWNLOADS = "/tmp/.isol8-downloads"
LISTING = "/tmp/.isol8-downloads.list"
_OUTPUT = 256 << 10  # what is kept of the installer's output, for the error's tail
_TAIL = 2000
_COLLECT_TIME = 30.0
_COLLECT_LIMIT = 256 << 20
_MAX_FILES = 512
_MAX_PROJECTS = 64  # index pages fetched per install: a listing cannot make it thousands
_NO_PIP = "No module named pip"

MANAGERS = {"python": "pip", "node": "npm"}

_PIP_SCRIPT = r"""
pip() { "$ISOL8_PYTHON" -m pip --disable-pip-version-check --no-input "$@"; }
rm -f "$ISOL8_DOWNLOADS.list"  # a persistent session's earlier install left one
cached="$ISOL8_CACHE/index.html"
if [ -n "$ISOL8_CACHE" ] && grep -qs '<a ' "$cached" \
   && pip install --user --no-index --find-links "$cached" -- "$@" >/dev/null 2>&1; then
  exit 0
fi
trusted=()
[ -n "$ISOL8_TRUSTED_HOST" ] && trusted=(--trusted-host "$ISOL8_TRUSTED_HOST")
rm -rf "$ISOL8_DOWNLOADS" && mkdir -p "$ISOL8_DOWNLOADS" || exit 1
pip download --no-cache-dir --dest "$ISOL8_DOWNLOADS" --index-url "$ISOL8_INDEX_URL" \
    "${trusted[@]}" -- "$@" || exit
(cd "$ISOL8_DOWNLOADS" && ls -1A) > "$ISOL8_DOWNLOADS.list"
pip install --user --no-index --find-links "$ISOL8_DOWNLOADS" -- "$@"
"""

_NPM_SCRIPT = r"""
export NPM_CONFIG_CACHE=/tmp/.isol8-npm-cache NPM_CONFIG_UPDATE_NOTIFIER=false \
    NPM_CONFIG_FUND=false NPM_CONFIG_AUDIT=false NPM_CONFIG_PROXY="$HTTP_PROXY" \
    NPM_CONFIG_HTTPS_PROXY="$HTTPS_PROXY" NPM_CONFIG_REGISTRY="$ISOL8_INDEX_URL/"
exec npm install --prefix /sandbox --no-save -- "$@"
"""


# A REPL cell: an interpreter started before the user site existed lacks it on sys.path
# (site.py adds it only if present), and its import caches predate the new files.
_REFRESH_PATH = "/tmp/.isol8-refresh.py"
_REFRESH = (b"import importlib as _i, site as _s, sys as _y\n"
            b"if _s.getusersitepackages() not in _y.path:\n"
            b"    _s.addsitedir(_s.getusersitepackages())\n"
            b"_i.invalidate_caches()\n"
            b"del _i, _s, _y\n")


class PackageInstallFailed(Isol8Error):
    """The installer exited non-zero (upstream's message, with the tail of its stderr):
    the setup script and the code did not run."""

    def __init__(self, exit_code: int, stderr: str) -> None:
        tail = stderr.strip()[-_TAIL:]
        if _NO_PIP in stderr:
            tail += (" (the root filesystem has no pip: on the host rootfs, apt-get install "
                     "python3-pip; an image's recipe must include python3-pip)")
        super().__init__(f"Package install failed (exit code {exit_code}): {tail}")
        self.exit_code, self.stderr = exit_code, stderr


@dataclass(frozen=True, slots=True)
class InstallPlan:
    packages: tuple[str, ...]
    spec: RunSpec
    index: PackageIndex
    cache: PackageCache | None


def manager_for(runtime: str) -> str:
    """The package manager of a runtime; bash has none isol8 can run (no apt in a
    read-only root)."""
    try:
        return MANAGERS[runtime]
    except KeyError:
        raise InvalidRequest(
            f"install_packages: the {runtime} runtime has no package manager isol8 can run "
            "(apt cannot write a read-only root); bake system packages into an image "
            "instead (isol8 image build), or use runtime python (pip) or node (npm)") from None


def install_plan(packages: tuple[str, ...], runtime_binary: str, index: PackageIndex,
                 cache: PackageCache | None, proxy_env: dict[str, str]) -> InstallPlan:
    """The installer process for ``packages`` (already validated for ``index.manager``).
    ``proxy_env``: the filtered network's variables; loopback is taken off NO_PROXY, since
    the index (even one on the host's loopback) is reached only through the proxy."""
    env = base_env()
    env.update(proxy_env)
    env.update({"NO_PROXY": "", "no_proxy": "", "ISOL8_INDEX_URL": index.sandbox_url,
                "ISOL8_TRUSTED_HOST": index.trusted_host or "",
                "ISOL8_CACHE": MOUNT if cache is not None else "",
                "ISOL8_DOWNLOADS": DOWNLOADS, "ISOL8_PYTHON": runtime_binary})
    # No configuration file: one an earlier run of a persistent session wrote under /sandbox
    # would otherwise choose the index, the links or the options (only its own sandbox's
    # installs, since the proxy and the supervisor's check still stand, but installs should
    # do what the request says).
    if index.manager == "pip":
        env.update({"PIP_BREAK_SYSTEM_PACKAGES": "1", "PIP_CONFIG_FILE": "/dev/null",
                    "PYTHONUSERBASE": f"{SANDBOX_HOME}/.local"})
        script = _PIP_SCRIPT
    else:
        env.update({"NPM_CONFIG_USERCONFIG": "/dev/null"})
        script = _NPM_SCRIPT
    spec = RunSpec([BASH, SCRIPT_PATH, *packages], env, SANDBOX_HOME, b"",
                   [(SCRIPT_PATH, script.encode())])
    return InstallPlan(packages, spec, index, cache if index.manager == "pip" else None)


def run_install(session: Session, plan: InstallPlan, network: PhasedNetwork, *,
                deadline: float, owner: tuple[int, int] | None, cancel_fd: int) -> float:
    """Run the installer in ``session`` (whose proxy ``network`` serves) under the index's
    policy, then the sandbox's own again; raise PackageInstallFailed if it failed, else
    cache what it downloaded. Returns the seconds it took (the code's deadline moves by
    that much)."""
    started = time.monotonic()
    network.use(plan.index.policy)
    try:
        outcome = finish(session.run(plan.spec, deadline=deadline, max_output=_OUTPUT,
                                     owner=owner, secrets=[], cancel_fd=cancel_fd))
    finally:
        network.use()
    status = _status(outcome)
    if status != 0:
        reason = "timed out" if outcome.timed_out else outcome.stderr.text()
        raise PackageInstallFailed(status, reason or outcome.stdout.text())
    if plan.cache is not None and session.alive:
        collect(session, plan.index, plan.cache, cancel_fd)
    return time.monotonic() - started


def refresh_repl(session: Session, plan: InstallPlan, *, deadline: float,
                 owner: tuple[int, int] | None, cancel_fd: int) -> None:
    """After a pip install, let a persistent session's live REPL see the packages: one
    internal cell adds the user site to its sys.path and drops the import caches; its
    variables stay."""
    repl = session.repl
    if repl is None or plan.index.manager != "pip":
        return
    spec = RunSpec([plan.spec.env["ISOL8_PYTHON"], _REFRESH_PATH], plan.spec.env,
                   SANDBOX_HOME, b"", [(_REFRESH_PATH, _REFRESH)])
    outcome = finish(repl.run(spec, deadline=deadline, max_output=_OUTPUT, owner=owner,
                              secrets=[], cancel_fd=cancel_fd))
    if _status(outcome) != 0:
        raise Isol8Error(f"install_packages: the REPL could not load the user site: "
                         f"{outcome.stderr.text()[-_TAIL:]}")


def collect(session: Session, index: PackageIndex, cache: PackageCache,
            cancel_fd: int = -1) -> dict[str, bool]:
    """Read back the files the installer downloaded, and cache each one whose bytes hash
    to what the index publishes for its name. Everything from the sandbox is untrusted:
    the listing (names checked, at most _MAX_FILES) and the bytes (hashed here). Returns
    ``{file name: cached}`` for every file considered."""
    deadline = time.monotonic() + _COLLECT_TIME
    listing = session.read_files((LISTING,), limit=1 << 20, deadline=deadline,
                                 cancel_fd=cancel_fd).get(LISTING, b"")
    known = cache.entries()
    names = [n for n in listing.decode("utf-8", "replace").splitlines()
             if FILE_NAME.match(n)][:_MAX_FILES]
    wanted = tuple(f"{DOWNLOADS}/{n}" for n in names)
    files = session.read_files(wanted, limit=_COLLECT_LIMIT, deadline=deadline,
                               cancel_fd=cancel_fd) if wanted else {}
    pages: dict[str, dict[str, str]] = {}
    result: dict[str, bool] = {}
    for name in names:
        data = files.get(f"{DOWNLOADS}/{name}")
        if data is None:
            result[name] = False
            continue
        digest = hashlib.sha256(data).hexdigest()
        if known.get(name) == digest and cache.has(name, digest):
            result[name] = True
            continue
        project = project_of(name)
        if project not in pages and (len(pages) >= _MAX_PROJECTS
                                     or time.monotonic() > deadline):
            result[name] = False  # past the budget: left for a later install to cache
            continue
        if project not in pages:
            try:
                pages[project] = published_hashes(index, project)
            except OSError:
                pages[project] = {}  # the page cannot be had: nothing of it is cached
        published = pages[project].get(name)
        result[name] = published is not None and cache.add(name, data, published)
    return result


def project_of(filename: str) -> str:
    """The project a distribution file belongs to: a wheel's first field (PEP 427), an
    sdist's name before its last '-' (PEP 625)."""
    if filename.endswith(".whl"):
        return filename.split("-", 1)[0]
    return re.sub(r"\.(tar\.gz|zip|tgz)$", "", filename).rsplit("-", 1)[0]


def _status(outcome: RunOutcome) -> int:
    if outcome.timed_out or outcome.oom:
        return 137
    if outcome.signal is not None:
        return 128 + outcome.signal
    return int(outcome.exit_code or 0) if not outcome.cancelled else 130
