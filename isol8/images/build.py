"""``isol8 image build``: a recipe through mmdebstrap to a tarball, then into the store.

Always a tarball, never a directory: a rootless build's directory would hold files owned by
subordinate ids the user cannot remove, and the tarball goes through the same safe importer
(isol8.images.extract.unpack) as any imported archive, so a build gets no trust an import
does not. mmdebstrap's mode:

- ``unshare`` as root, or rootless when the user has an /etc/subuid and /etc/subgid range and
  the distribution's setuid ``newuidmap``/``newgidmap`` (package uidmap). isol8's own runtime
  never needs them; only this build does, to own files as several ids inside the image.
- ``root`` as root, on request.
- ``fakechroot`` rootless otherwise (packages fakechroot and fakeroot).

Downloaded .debs are kept in an apt cache directory across builds (mmdebstrap's sync-in and
sync-out hooks, its manual's recipe); apt checks every cached .deb against the archive's
hashes before using it, so a damaged cache entry is downloaded again, never installed. A
build syncs its .debs out to its own staging directory, and each new one enters the cache
by a rename, so concurrent builds never see a half-written .deb there.
"""

from __future__ import annotations

import collections
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._paths import cache_dir
from ..errors import InvalidRequest, Isol8Error
from . import recipes
from .store import Image, ImageStore, manifest

# Kept out of every image: documentation, manual pages and translations (ecosystem.md 6.4).
_EXCLUDE = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/info/*",
            "/usr/share/locale/*", "/usr/share/lintian/*", "/usr/share/linda/*")
# mmdebstrap's "I: ..." lines, mapped to the steps a user sees.
_STEPS = (("running apt-get update", "resolving"), ("downloading packages", "downloading"),
          ("extracting archives", "extracting"), ("installing", "installing"),
          ("running --customize-hook", "customizing"), ("creating tarball", "packing"))
STEP_ORDER = tuple(step for _, step in _STEPS) + ("importing",)
_INSTALLED = "/tmp/isol8-installed.json"
_HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
_BUILD_CA = "/tmp/isol8-build-ca.crt"


class BuildFailed(Isol8Error):
    """mmdebstrap (or a hook of the recipe) failed: the message carries its last lines."""


@dataclass(frozen=True, slots=True)
class Outcome:
    image: Image
    built: bool  # False: the image was up to date, nothing was done
    seconds: float


def apt_cache() -> str:
    return "/var/cache/isol8/apt" if os.geteuid() == 0 else str(cache_dir() / "apt")


def choose_mode(requested: str | None = None) -> str:
    """The mmdebstrap mode for this user, or an error that says what to install or set up."""
    if shutil.which("mmdebstrap") is None:
        raise Isol8Error("image builds need mmdebstrap, which is not installed: "
                         "sudo apt-get install mmdebstrap uidmap")
    root = os.geteuid() == 0
    if requested == "root" and not root:
        raise InvalidRequest("--mode root needs root; rootless builds use unshare or "
                             "fakechroot")
    if requested in ("root", "fakechroot") or (requested is None and root):
        mode = requested or "unshare"
        if mode == "fakechroot":
            _need_fakechroot()
        return mode
    if requested == "unshare" or has_subids():
        if not root and not has_subids():
            raise Isol8Error(_rootless_help())
        return "unshare"
    if shutil.which("fakechroot") and shutil.which("fakeroot"):
        return "fakechroot"
    raise Isol8Error(_rootless_help())


def has_subids() -> bool:
    """A rootless unshare build maps a range of subordinate ids: the user needs one in both
    /etc/subuid and /etc/subgid, and newuidmap/newgidmap to map it."""
    if not (shutil.which("newuidmap") and shutil.which("newgidmap")):
        return False
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return all(_subid_entry(path, (user, str(uid))) for path in ("/etc/subuid", "/etc/subgid"))


def _subid_entry(path: str, owners: tuple[str, str]) -> bool:
    try:
        with open(path) as fh:
            return any(line.split(":", 1)[0] in owners for line in fh)
    except OSError:
        return False


def _need_fakechroot() -> None:
    if not (shutil.which("fakechroot") and shutil.which("fakeroot")):
        raise Isol8Error("--mode fakechroot needs fakechroot and fakeroot: "
                         "sudo apt-get install fakechroot fakeroot")


def _rootless_help() -> str:
    user = pwd.getpwuid(os.geteuid()).pw_name
    return ("a rootless image build needs a range of subordinate ids (an admin runs: "
            f"sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}; "
            "sudo apt-get install uidmap) or fakechroot (sudo apt-get install fakechroot "
            "fakeroot); as root, builds need neither")


def mmdebstrap_command(recipe: recipes.Recipe, install: Sequence[str], *, mode: str,
                       tarball: str, staging: str, cache: str,
                       index_url: str | None = None) -> list[str]:
    """The whole build as one mmdebstrap command line. Hooks run in this order: the apt cache
    is synced in before apt runs; after the packages are installed come the recipe's files,
    its setup script, the --install packages and their listing, then the .debs are synced
    out to ``staging``/debs (mmdebstrap then empties the image's apt cache and lists)."""
    cmd = ["mmdebstrap", f"--mode={mode}", f"--variant={recipe.variant}",
           "--skip=essential/unlink",  # keeps the essential .debs for the cache's sync-out
           "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/",
           f"--setup-hook=sync-in {shlex.quote(cache)} /var/cache/apt/archives/"]
    cmd += [f"--dpkgopt=path-exclude={pattern}" for pattern in _EXCLUDE]
    if recipe.packages:
        cmd.append("--include=" + ",".join(recipe.packages))
    for i, (path, content) in enumerate(sorted(recipe.files.items())):
        local = os.path.join(staging, f"file{i}")
        with open(local, "w") as fh:
            fh.write(content)
        cmd += [f"--customize-hook=mkdir -p \"$1\"{shlex.quote(os.path.dirname(path))}",
                f"--customize-hook=upload {shlex.quote(local)} {shlex.quote(path)}"]
    # The setup script and installers run in the new root with a fixed environment; they
    # reach registries with the host's CA bundle (a TLS-inspecting proxy's CA is in it, and
    # not in the image's), copied in for the build only. Their caches stay in /tmp, which
    # mmdebstrap empties.
    chroot = ('chroot "$1" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:'
              '/sbin:/bin HOME=/root LANG=C.UTF-8 npm_config_cache=/tmp/isol8-npm '
              'PIP_NO_CACHE_DIR=1 ')
    runs = recipe.setup or install
    if runs and os.path.isfile(_HOST_CA):
        cmd.append(f"--customize-hook=upload {_HOST_CA} {_BUILD_CA}")
        chroot += (f"NODE_EXTRA_CA_CERTS={_BUILD_CA} PIP_CERT={_BUILD_CA} "
                   f"SSL_CERT_FILE={_BUILD_CA} ")
    if recipe.setup:
        cmd.append(f"--customize-hook={chroot}/bin/sh -ec {shlex.quote(recipe.setup)}")
    if install:
        names = " ".join(shlex.quote(p) for p in install)
        if recipe.installer == "pip":
            index = f" --index-url {shlex.quote(index_url)}" if index_url else ""
            cmd += [
                f"--customize-hook={chroot}python3 -m pip install --no-cache-dir "
                "--break-system-packages --root-user-action=ignore "
                f"--disable-pip-version-check{index} -- {names}",
                # What pip installed, beside Debian's own python3-* packages.
                f"--customize-hook={chroot}/bin/sh -c 'python3 -m pip list "
                "--disable-pip-version-check --format json "
                f"--path /usr/local/lib/python3*/dist-packages' > \"$1\"{_INSTALLED}"]
        else:
            registry = f" --registry {shlex.quote(index_url)}" if index_url else ""
            cmd += [
                f"--customize-hook={chroot}npm install --global --no-audit --no-fund "
                f"--no-update-notifier{registry} -- {names}",
                f"--customize-hook={chroot}npm ls --global --json --depth=0 "
                f"> \"$1\"{_INSTALLED}"]
        cmd.append(f"--customize-hook=download {_INSTALLED} "
                   f"{shlex.quote(os.path.join(staging, 'installed.json'))}")
        cmd.append(f"--customize-hook=rm -f \"$1\"{_INSTALLED}")
    if runs:
        cmd.append(f"--customize-hook=rm -rf \"$1\"{_BUILD_CA} \"$1\"/tmp/isol8-npm")
    cmd += ["--customize-hook=sync-out /var/cache/apt/archives "
            f"{shlex.quote(os.path.join(staging, 'debs'))}", recipe.suite, tarball]
    return cmd


def keep_debs(synced: str, cache: str) -> int:
    """Move the .debs a build synced out into the cache, each by one rename of a complete
    copy (the cache may be on another file system). Returns how many were new."""
    try:
        names = [n for n in os.listdir(synced) if n.endswith(".deb")]
    except FileNotFoundError:  # the extract variant runs no hooks: nothing synced out
        return 0
    new = 0
    for name in names:
        if os.path.exists(os.path.join(cache, name)):
            continue  # a .deb's file name holds its version: same name, same package
        part = os.path.join(cache, f".{name}.{os.getpid()}.part")
        shutil.copyfile(os.path.join(synced, name), part)
        os.rename(part, os.path.join(cache, name))
        new += 1
    return new


def parse_installed(path: str, installer: str) -> dict[str, str]:
    """{name: version} from ``pip list --format json`` or ``npm ls --global --json``."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    if installer == "pip":
        return {d["name"]: d["version"] for d in data if isinstance(d, dict)}
    deps = data.get("dependencies", {}) if isinstance(data, dict) else {}
    return {name: d.get("version", "") for name, d in deps.items() if isinstance(d, dict)}


class Progress:
    """One line per step: on a terminal the same line rewritten, else plain lines."""

    def __init__(self, name: str, stream=None) -> None:
        self.name, self.stream = name, stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()
        self.step = ""

    def __call__(self, step: str) -> None:
        if step == self.step:
            return
        self.step = step
        line = f"isol8: image {self.name}: {step} ({time.monotonic() - self.t0:.1f} s)"
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self, message: str) -> None:
        self.stream.write(("\r\033[K" if self.tty else "") + f"isol8: image {self.name}: "
                          f"{message} ({time.monotonic() - self.t0:.1f} s)\n")
        self.stream.flush()


def run_mmdebstrap(cmd: list[str], progress: Callable[[str], None]) -> None:
    """Run it with its messages parsed into steps; on failure, raise with its last lines."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    env = {k: v for k, v in os.environ.items()
           if k in ("PATH", "HOME", "LANG", "TMPDIR", "USER", "LOGNAME")}
    env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, text=True, errors="replace")
    assert proc.stdout is not None
    reached = -1
    try:
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if not line.startswith("I: "):
                continue
            step = next((step for marker, step in _STEPS if marker in line), None)
            # Steps only move forward: a hook's own "installing" line is not a new step.
            if step is not None and STEP_ORDER.index(step) > reached:
                reached = STEP_ORDER.index(step)
                progress(step)
    finally:
        rc = proc.wait()
    if rc != 0:
        raise BuildFailed(f"mmdebstrap failed (exit {rc}); its last lines:\n" +
                          "\n".join(tail))


def build(name: str, *, base: str | None = None, install: Sequence[str] = (),
          force: bool = False, mode: str | None = None, index_url: str | None = None,
          store: ImageStore | None = None,
          progress: Callable[[str], None] = lambda step: None) -> Outcome:
    """Build image ``name`` from recipe ``base`` (default: the recipe called ``name``) plus
    ``install`` packages, unless the image of that name was built from the same recipe and
    packages (``force`` rebuilds anyway)."""
    from .extract import unpack  # the safe importer (see module docstring)

    t0 = time.monotonic()
    store = store or ImageStore()
    recipe = recipes.load(base or name)
    install = tuple(install)
    recipes.check_install(recipe, install)
    if index_url is not None and not index_url.startswith(("http://", "https://")):
        raise InvalidRequest(f"--index-url {index_url!r}: expected an http:// or https:// URL")
    recipe_digest = recipe.digest(install)
    with store.lock(name):
        current = store.find(name)
        if (current is not None and not force
                and current.manifest.get("recipe_digest") == recipe_digest):
            return Outcome(current, False, time.monotonic() - t0)
        mode = choose_mode(mode)
        cache = apt_cache()
        os.makedirs(cache, mode=0o755, exist_ok=True)
        with store.staging(name) as staging:
            work, content = os.path.join(staging, "work"), os.path.join(staging, "image")
            os.mkdir(work, 0o700)
            tarball = os.path.join(work, "rootfs.tar")
            cmd = mmdebstrap_command(recipe, install, mode=mode, tarball=tarball,
                                     staging=work, cache=cache, index_url=index_url)
            os.mkdir(os.path.join(work, "debs"), 0o700)
            run_mmdebstrap(cmd, progress)
            keep_debs(os.path.join(work, "debs"), cache)
            progress("importing")
            rootfs = os.path.join(content, "rootfs")
            os.makedirs(rootfs, 0o755)
            report = unpack(tarball, rootfs)
            os.unlink(tarball)
            digest = "sha256-" + report.sha256
            installed = parse_installed(os.path.join(work, "installed.json"),
                                        recipe.installer)
            data = manifest(name=name, digest=digest, source="build", rootfs=rootfs,
                            size=report.bytes, files=report.files, recipe=recipe.name,
                            recipe_digest=recipe_digest, installed=installed,
                            extra={"install": list(install), "mode": mode,
                                   "build_seconds": round(time.monotonic() - t0, 1)})
            image = store.commit(name, content, digest, data)
    return Outcome(image, True, time.monotonic() - t0)
