"""``isol8 doctor``: what this host supports, and what isol8 does about each thing.

Every check is a pure function of the facts it needs (file contents, paths, ids), so the
tests can feed it a Docker container's or an Ubuntu 24.04 host's /proc without either.
``gather()`` is the only place that reads the real host, and it also runs one real sandbox:
the static checks explain a failure, but only the helper itself proves that the kernel,
the LSMs and the container runtime let it through.

A ``fail`` means sandboxes cannot start (``main()`` exits 1); a ``warn`` means they can, but
something is degraded, or would break for another user or a later isol8.
"""

from __future__ import annotations

import os
import re
import socket
import textwrap
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import _paths, chroot
from .identity import default_uid_range, maps_foreign_ids

MIN_KERNEL = (5, 12)
# What the seccomp filters use (isol8/seccomp.py); the kernel refuses a filter naming others.
SECCOMP_ACTIONS = ("allow", "errno", "kill_process")
# Container runtimes' names as they appear in PID 1's cgroup paths.
_CONTAINER_CGROUP_HINTS = ("docker", "kubepods", "containerd", "libpod", "lxc")
# The one mount under /proc that does not hide anything (it sits on an empty directory).
_PROC_EMPTY_DIR_MOUNTS = ("/proc/sys/fs/binfmt_misc",)
# Superblock options of a v1 cgroup mount that are not controller names.
_V1_NON_CONTROLLERS = {"rw", "ro", "clone_children", "noprefix", "xattr", "cpuset_v2_mode",
                       "favordynmods"}
# The v2 controllers isol8's limits need delegated (memory.max, pids.max).
_V2_NEEDED = ("memory", "pids")
# A scope of the user's systemd manager with a cgroup subtree of its own (isol8.delegation).
DELEGATED_SCOPE = "systemd-run --user --scope -p Delegate=yes -- <command>"

APPARMOR_INSTALL = (
    "install isol8's profile: copy packaging/apparmor/isol8-helper to "
    "/etc/apparmor.d/isol8-helper, set @{{isol8_helper}} in it to {helper}, then run "
    "'sudo apparmor_parser -r /etc/apparmor.d/isol8-helper' (see README, 'AppArmor')"
)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # "ok" | "warn" | "fail"
    detail: str
    action: str = ""


@dataclass(frozen=True, slots=True)
class Mount:
    root: str
    point: str
    fstype: str
    options: tuple[str, ...]  # superblock options: where v1 cgroups name their controllers


def parse_mountinfo(text: str) -> list[Mount]:
    """The fields of /proc/self/mountinfo the checks need (see proc(5) for the layout)."""
    mounts = []
    for line in text.splitlines():
        before, sep, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        options = tuple(tail[2].split(",")) if len(tail) > 2 else ()
        mounts.append(Mount(_unescape(fields[3]), _unescape(fields[4]), tail[0], options))
    return mounts


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in paths as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _status_field(proc_status: str, name: str) -> str | None:
    for line in proc_status.splitlines():
        key, sep, value = line.partition(":")
        if sep and key == name:
            return value.strip()
    return None


def check_kernel(release: str) -> Check:
    needs = ("isol8 needs 5.12 for mount_setattr (recursive read-only mounts), and uses "
             "close_range(CLOSE_RANGE_CLOEXEC) (5.11) and CLONE_PIDFD (5.2)")
    match = re.match(r"(\d+)\.(\d+)", release)
    if not match:
        return Check("kernel", "warn", f"cannot parse the release {release!r}; {needs}")
    version = (int(match.group(1)), int(match.group(2)))
    if version < MIN_KERNEL:
        return Check("kernel", "fail", f"Linux {release} is too old; {needs}",
                     "upgrade to a 5.12 or newer kernel (Debian 12, Ubuntu 22.04, RHEL 9 "
                     "and later ship one)")
    return Check("kernel", "ok", f"Linux {release}; {needs}")


def check_userns(max_user_namespaces: str | None, unprivileged_userns_clone: str | None,
                 euid: int) -> Check:
    """The distribution switches that refuse clone(CLONE_NEWUSER) outright."""
    if max_user_namespaces is None:
        return Check("user namespaces", "fail",
                     "/proc/sys/user/max_user_namespaces is missing: this kernel was built "
                     "without user namespaces (CONFIG_USER_NS)",
                     "use a kernel with CONFIG_USER_NS=y (every major distribution's is)")
    if max_user_namespaces.strip() == "0":
        return Check("user namespaces", "fail",
                     "user.max_user_namespaces=0 forbids user namespaces to everyone, root "
                     "included; every sandbox starts in a new one",
                     "sudo sysctl -w user.max_user_namespaces=15000, and persist it in "
                     "/etc/sysctl.d/")
    if unprivileged_userns_clone is not None and unprivileged_userns_clone.strip() == "0":
        detail = ("kernel.unprivileged_userns_clone=0 (a Debian kernel patch) forbids user "
                  "namespaces to unprivileged users")
        fix = "sudo sysctl -w kernel.unprivileged_userns_clone=1, and persist it in /etc/sysctl.d/"
        if euid == 0:
            return Check("user namespaces", "warn",
                         f"{detail}; root is exempt, but rootless use of isol8 fails here", fix)
        return Check("user namespaces", "fail", detail, fix)
    return Check("user namespaces", "ok",
                 f"allowed (user.max_user_namespaces={max_user_namespaces.strip()}); every "
                 "sandbox gets its own user, mount, pid, net, ipc, uts and cgroup namespaces")


def check_chroot(chrooted: bool | None) -> Check:
    """A chrooted process gets EPERM for every new user namespace (isol8.chroot says why):
    the sysctls above cannot see it, so they read ok while the sandbox fails."""
    if chrooted is None:
        return Check("chroot", "ok",
                     "no sign of a chroot (a chroot onto another mount's root, in a mount "
                     "namespace init does not share, would not show: the sandbox check below "
                     "is the answer)")
    if not chrooted:
        return Check("chroot", "ok", "not in a chroot: this process's root is its mount "
                                     "namespace's root")
    return Check("chroot", "fail",
                 "this process runs in a chroot: its root is not its mount namespace's root "
                 "(no mount at / in /proc/self/mountinfo, or a root other than init's), and "
                 "the kernel refuses a chrooted process a user namespace (EPERM from "
                 "clone(CLONE_NEWUSER), whatever the sysctls say), so no sandbox can start",
                 "enter the root as a machine would, not with a plain chroot: in a private "
                 "mount namespace (unshare --mount --propagation private), bind the root onto "
                 "itself and move it over / (mount --rbind R R; cd R; mount --move . /; chroot "
                 ".), or pivot_root into it; systemd-nspawn and container runtimes do this")


def check_apparmor(restrict_userns: str | None, loaded_profiles: str | None, euid: int,
                   helper: str) -> Check:
    """Ubuntu 23.10+ lets an unconfined program create a user namespace, then strips every
    capability in it, so the helper fails at its uid map or first mount unless a profile
    names it. ``loaded_profiles`` is None when unreadable (the list is root-only)."""
    install = APPARMOR_INSTALL.format(helper=helper)
    if restrict_userns is None or restrict_userns.strip() != "1":
        return Check("apparmor", "ok",
                     "no AppArmor restriction on user namespaces "
                     "(kernel.apparmor_restrict_unprivileged_userns is absent or 0)")
    restricted = "kernel.apparmor_restrict_unprivileged_userns=1"
    if euid == 0:
        return Check("apparmor", "warn",
                     f"{restricted}; root (CAP_SYS_ADMIN) is exempt, but rootless use of isol8 "
                     "needs the isol8-helper profile", install)
    if loaded_profiles is None:
        return Check("apparmor", "warn",
                     f"{restricted}, and only root can list the loaded profiles, so whether "
                     "the isol8-helper profile is loaded is unknown; the sandbox check below "
                     "is the answer", install)
    for line in loaded_profiles.splitlines():
        name, _, mode = line.partition(" ")
        if name == "isol8-helper":
            return Check("apparmor", "ok",
                         f"{restricted}; the isol8-helper profile is loaded {mode.strip()} and "
                         f"grants userns, provided its path is {helper}")
    return Check("apparmor", "fail",
                 f"{restricted} and no isol8-helper profile is loaded: the helper's user "
                 "namespace gets no capabilities, so it cannot map ids or mount", install)


def check_seccomp(proc_status: str, actions_avail: str | None,
                  libseccomp_version: str | None) -> Check:
    """libseccomp compiles the filter, once per process (never cached on disk, where a
    sandbox with a read-write mount could swap it: isol8.seccomp)."""
    if _status_field(proc_status, "Seccomp") is None:
        return Check("seccomp", "fail",
                     "the kernel has no seccomp support (no Seccomp line in /proc/self/status)",
                     "use a kernel built with CONFIG_SECCOMP_FILTER=y")
    available = (actions_avail or "").split()
    missing = [a for a in SECCOMP_ACTIONS if a not in available]
    if missing:
        return Check("seccomp", "fail",
                     f"the kernel lacks the filter actions {', '.join(missing)} "
                     f"(seccomp/actions_avail: {actions_avail or 'absent'})",
                     "upgrade the kernel")
    what = ("every sandbox runs under isol8's filter: foreign architectures killed, unknown "
            "syscalls ENOSYS, a deny-list of namespace, mount, keyring, tracing and bpf calls")
    if libseccomp_version is None:
        return Check("seccomp", "fail",
                     f"kernel actions: {' '.join(available)}; libseccomp.so.2 cannot be loaded, "
                     "so no filter can be compiled and only seccomp='unconfined' runs",
                     "install libseccomp2 (apt-get install libseccomp2 / dnf install libseccomp)")
    return Check("seccomp", "ok",
                 f"kernel actions: {' '.join(available)}; libseccomp {libseccomp_version}; "
                 f"{what}")


def cgroup_v2_dir(mountinfo: str, proc_cgroup: str) -> str | None:
    """Our own cgroup v2 directory, under which the engine creates its cgroups."""
    mount = next((m for m in parse_mountinfo(mountinfo) if m.fstype == "cgroup2"), None)
    path = next((line[3:] for line in proc_cgroup.splitlines() if line.startswith("0::")), None)
    if mount is None or path is None:
        return None
    root = mount.root.rstrip("/")
    if root and not (path == root or path.startswith(root + "/")):
        return None  # our cgroup lies outside what this mount shows
    rel = path[len(root):]
    return mount.point.rstrip("/") + rel if rel not in ("", "/") else mount.point


def _v1_controllers(mounts: list[Mount]) -> list[str]:
    return sorted({opt for m in mounts if m.fstype == "cgroup" for opt in m.options
                   if opt not in _V1_NON_CONTROLLERS and "=" not in opt})


def cgroup_layout(mountinfo: str) -> str:
    """hybrid (v1 controllers beside a v2 tree), unified, legacy (v1 only) or absent."""
    mounts = parse_mountinfo(mountinfo)
    v2 = any(m.fstype == "cgroup2" for m in mounts)
    v1 = bool(_v1_controllers(mounts))
    return "hybrid" if v2 and v1 else "unified" if v2 else "legacy" if v1 else "absent"


def delegation_offer(layout: str, euid: int, user_manager: bool,
                     manager_controllers: str | None) -> str | None:
    """The command that gives an unprivileged supervisor a delegated cgroup v2 subtree
    here (isol8.delegation then claims it), or None: it needs a unified hierarchy, a systemd
    user manager of this user, and memory among the controllers systemd gives that manager
    (when its cgroup.controllers can be read)."""
    if euid == 0 or layout != "unified" or not user_manager:
        return None
    if manager_controllers is not None and "memory" not in manager_controllers.split():
        return None
    return DELEGATED_SCOPE


def check_cgroups(mountinfo: str, v2_dir: str | None, v2_controllers: str | None,
                  v2_writable: bool) -> Check:
    mounts = parse_mountinfo(mountinfo)
    v2 = [m for m in mounts if m.fstype == "cgroup2"]
    v1 = _v1_controllers(mounts)
    layout = cgroup_layout(mountinfo)
    facts = [f"layout {layout}"]
    if v1:
        facts.append(f"v1 controllers {', '.join(v1)}")
    if v2:
        controllers = (v2_controllers or "").split()
        facts.append(f"cgroup2 at {v2[0].point} with controllers "
                     f"{', '.join(controllers) or 'none'}")
        if v2_dir is not None:
            facts.append(f"our cgroup {v2_dir} is "
                         + ("writable (delegated)" if v2_writable else "not writable"))
    does = ("isol8 picks a backend per limit from these (the 'limits' line says which): "
            "a delegated cgroup v2 subtree first, then writable v1 hierarchies, then rlimits "
            "and its memory watchdog")
    detail = f"{'; '.join(facts)}. {does}"
    v2_ready = (layout == "unified" and v2_writable
                and all(c in (v2_controllers or "").split() for c in _V2_NEEDED))
    if v2_ready:
        return Check("cgroups", "ok", detail)
    if layout in ("hybrid", "legacy", "absent"):
        fix = ("for those limits, boot with a unified cgroup v2 hierarchy "
               "(systemd.unified_cgroup_hierarchy=1 on the kernel command line)")
    else:
        fix = ("for those limits, delegate memory and pids to isol8's cgroup: run it alone in "
               f"a unit or scope with Delegate=yes ({DELEGATED_SCOPE}); isol8 moves itself "
               "into a leaf of it and makes its cgroups beside")
    return Check("cgroups", "warn", detail, fix)


def check_overlayfs(filesystems: str) -> Check:
    registered = any(line.split()[-1:] == ["overlay"] for line in filesystems.splitlines())
    state = "registered" if registered else "not registered (modprobe overlay loads it)"
    return Check("overlayfs", "ok",
                 f"overlay is {state}; isol8 does not use it: the sandbox's root is a tmpfs "
                 "with the host's /usr bound read-only")


def check_nftables(netfilter_netlink: bool) -> Check:
    """Filtered networking loads a small nftables ruleset into each sandbox's own namespace
    through netlink (the nft binary is never run); without it, it still works."""
    if netfilter_netlink:
        return Check("nftables", "ok",
                     "the kernel's netfilter netlink is available: network 'filtered' rejects "
                     "UDP other than DNS at once and can capture every TCP port "
                     "(network_filter capture='all'); the nft program is not needed")
    return Check("nftables", "warn",
                 "the kernel has no netfilter netlink (CONFIG_NF_TABLES): network 'filtered' "
                 "still serves HTTP and HTTPS, but UDP other than DNS reaches nobody instead "
                 "of being rejected, and capture='all' captures only ports 80 and 443")


def _netfilter_netlink() -> bool:
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER).close()
    except OSError:
        return False
    return True


_NETLINK_NETFILTER = 12


def listening_sockets(tcp: str, udp: str) -> int:
    """TCP sockets in LISTEN (state 0A) and bound UDP sockets in /proc/net/{tcp,tcp6,udp,udp6}
    text (concatenated): the services a sandbox with the host's network could reach."""
    count = 0
    for text, listening in ((tcp, "0A"), (udp, "07")):
        for line in text.splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[0].endswith(":") and fields[3] == listening:
                count += 1
    return count


def abstract_sockets(unix: str) -> list[str]:
    """The abstract unix socket names (``@...``) in /proc/net/unix text, deduplicated."""
    names = set()
    for line in unix.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7].startswith("@"):
            names.add(fields[7])
    return sorted(names)


def check_network(interfaces: list[str], listening: int, abstract: list[str]) -> Check:
    """What ``network="host"`` would hand a sandbox here; ``none`` hands it nothing."""
    others = [name for name in interfaces if name != "lo"]
    shown = ", ".join(abstract[:3]) + (", ..." if len(abstract) > 3 else "")
    return Check("network", "ok",
                 "'none' (the default) gives each sandbox an empty network namespace with "
                 "only its own lo; 'host' (only when asked for) shares this host's: "
                 f"interfaces {', '.join(others) or 'none but lo'}, {listening} listening "
                 f"TCP/UDP sockets (loopback services included), {len(abstract)} abstract unix "
                 f"sockets{' (' + shown + ')' if abstract else ''}, and the whole internet")


def container_markers(existing: Iterable[str], environ: Mapping[str, str],
                      init_cgroup: str) -> list[str]:
    """Why we believe we run in a container; no single marker is reliable on its own."""
    markers = list(existing)
    if "KUBERNETES_SERVICE_HOST" in environ:
        markers.append("KUBERNETES_SERVICE_HOST is set")
    hints = sorted({h for h in _CONTAINER_CGROUP_HINTS if h in init_cgroup})
    if hints:
        markers.append(f"/proc/1/cgroup mentions {', '.join(hints)}")
    return markers


@dataclass(frozen=True, slots=True)
class Confinement:
    """What a container runtime put around this process that can stop a nested sandbox."""

    masked: tuple[str, ...]  # /proc files and directories overmounted (procMount Default)
    filtered: bool  # a seccomp filter is installed (Seccomp: 2)
    label: str  # the AppArmor label, "unconfined" without one

    @property
    def confined(self) -> bool:
        return not (self.label == "unconfined" or self.label.endswith("(unconfined)"))


def confinement(mountinfo: str, proc_status: str, apparmor_label: str | None) -> Confinement:
    masked = sorted(m.point for m in parse_mountinfo(mountinfo)
                    if m.point.startswith("/proc/") and m.point not in _PROC_EMPTY_DIR_MOUNTS)
    return Confinement(tuple(masked), _status_field(proc_status, "Seccomp") == "2",
                       (apparmor_label or "unconfined").strip())


def check_container(markers: list[str], mountinfo: str, proc_status: str,
                    apparmor_label: str | None) -> Check:
    """What a container runtime does to us that breaks nesting: the kernel refuses a fresh
    /proc in a new user namespace while any file of the current one is overmounted, Docker's
    default seccomp profile refuses clone(CLONE_NEWUSER), unshare and mount, and its
    docker-default AppArmor profile refuses mount."""
    found = confinement(mountinfo, proc_status, apparmor_label)
    where = (f"container markers: {'; '.join(markers)}" if markers
             else "no container markers")
    if not (found.masked or found.filtered or found.confined):
        nest = ("; /proc is unmasked and no seccomp filter or AppArmor profile confines isol8"
                if markers else "")
        return Check("container", "ok", where + nest)
    findings, fixes = [], []
    if found.masked:
        shown = ", ".join(found.masked[:6]) + (", ..." if len(found.masked) > 6 else "")
        findings.append(f"/proc is masked ({shown} are overmounted), so the kernel refuses the "
                        "sandbox its own /proc")
        fixes.append("run the container with an unmasked /proc: docker/podman "
                      "'--security-opt systempaths=unconfined', Kubernetes "
                      "'securityContext.procMount: Unmasked'")
    if found.filtered:
        findings.append("a seccomp filter already confines this process (Docker's default "
                        "profile refuses clone(CLONE_NEWUSER), unshare and mount)")
        fixes.append("if the sandbox check fails, run the container with "
                     "'--security-opt seccomp=unconfined' (Kubernetes: seccompProfile "
                     "Unconfined)")
    if found.confined:
        findings.append(f"the AppArmor profile {found.label} confines this process (Docker's "
                        "docker-default denies mount)")
        fixes.append("if the sandbox check fails, run the container with "
                     "'--security-opt apparmor=unconfined'")
    return Check("container", "fail" if found.masked else "warn",
                 f"{where}; {'; '.join(findings)}", "; ".join(fixes))


def check_identity(euid: int, foreign_ids: bool) -> Check:
    if foreign_ids:
        start, count = default_uid_range()
        return Check("identity", "ok",
                     f"running as root: each sandbox's uid 1000 maps to its own host uid from "
                     f"{start}-{start + count - 1} (the default, outside systemd's ranges and "
                     "/etc/subuid and /etc/subgid; the engine's uid_range option), never root "
                     "and never an existing account")
    who = "root inside a user namespace" if euid == 0 else "rootless"
    return Check("identity", "ok",
                 f"{who}: each sandbox's uid 1000 maps to your uid {euid}, the only mapping "
                 "the kernel allows without real root; run as root on the host to give every "
                 "sandbox a host uid of its own")


def check_limits(enforced: dict[str, str | None] | None, offer: str | None = None) -> Check:
    """What the real sandbox run reported enforcing each limit (isol8.limits); ``offer``:
    the command that would give this user a delegated cgroup (delegation_offer)."""
    if enforced is None:
        return Check("limits", "warn", "unknown: the real sandbox did not run")
    from .limits import HARD

    listing = ", ".join(f"{c} by {b}" for c, b in enforced.items())
    soft = [c for c, b in enforced.items() if b not in HARD[c]]
    if not soft:
        return Check("limits", "ok", f"{listing}: all hard limits")
    detail = (f"{listing}; best effort for {', '.join(soft)} (the watchdog counts memory every "
              "10 ms while it grows, and misses what README 'Limits' lists; the cpu rlimit is "
              "a CPU-seconds budget, not a rate); strict_limits=True refuses to run here")
    if offer:
        return Check("limits", "warn", detail,
                     "for hard limits without root, start isol8 (or the program that embeds "
                     f"it) as the only process of a delegated scope: {offer}; isol8 moves "
                     "itself into a leaf of it and uses cgroup v2 (or pass a delegated subtree "
                     "as cgroup_parent / ISOL8_CGROUP_PARENT)")
    return Check("limits", "warn", detail,
                 "for hard limits give isol8 a cgroup: run as root, or delegate a cgroup v2 "
                 "subtree with memory, pids and cpu enabled (systemd: Delegate=yes) and pass it "
                 "as cgroup_parent / ISOL8_CGROUP_PARENT, or start isol8 alone in it")


def check_sandbox(error: str | None) -> Check:
    if error is None:
        return Check("sandbox", "ok", "a real sandbox ran 'true' end to end")
    return Check("sandbox", "fail", f"a real sandbox failed to run 'true': {error}",
                 "the [fail] and [warn] checks above say why; the message names the failing step")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _libseccomp_version() -> str | None:
    from . import _native

    try:
        return _native.version()
    except OSError:
        return None


def _user_manager() -> bool:
    """A systemd user manager runs for us: its private socket is in our runtime directory."""
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return os.path.exists(os.path.join(runtime, "systemd", "private"))


def _manager_controllers() -> str | None:
    uid = os.getuid()
    return _read(f"/sys/fs/cgroup/user.slice/user-{uid}.slice/user@{uid}.service/"
                 "cgroup.controllers")


def _probe(timeout_ms: int = 15_000) -> tuple[str | None, dict[str, str | None] | None]:
    """Run one real sandbox: the only check no sysctl or LSM can talk its way past. Returns
    the error, if any, and the backend that enforced each limit."""
    from .engine import Isol8
    from .errors import Isol8Error

    try:
        with Isol8() as engine:
            result = engine.execute(cmd="true", timeout_ms=timeout_ms)
    except (Isol8Error, OSError) as exc:
        return str(exc), None
    enforced = dict(result.resource_usage.enforced)
    if result.exit_code != 0:
        return f"exit code {result.exit_code}: {result.stderr.strip()}", enforced
    return None, enforced


def gather() -> list[Check]:
    """Read this host's facts and run every check on them."""
    euid = os.geteuid()
    helper = str(_paths.helper_path())
    mountinfo = _read("/proc/self/mountinfo") or ""
    status = _read("/proc/self/status") or ""
    v2_dir = cgroup_v2_dir(mountinfo, _read("/proc/self/cgroup") or "")
    v2_writable = v2_dir is not None and all(
        os.access(p, os.W_OK) for p in (v2_dir, os.path.join(v2_dir, "cgroup.procs")))
    v2_controllers = _read(os.path.join(v2_dir, "cgroup.controllers")) if v2_dir else None
    error, enforced = _probe()
    markers = container_markers(
        [p for p in ("/.dockerenv", "/run/.containerenv") if os.path.exists(p)],
        os.environ, _read("/proc/1/cgroup") or "")
    return [
        check_kernel(os.uname().release),
        check_userns(_read("/proc/sys/user/max_user_namespaces"),
                     _read("/proc/sys/kernel/unprivileged_userns_clone"), euid),
        check_chroot(chroot.this_process()),
        check_apparmor(_read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
                       _read("/sys/kernel/security/apparmor/profiles"), euid, helper),
        check_seccomp(status, _read("/proc/sys/kernel/seccomp/actions_avail"),
                      _libseccomp_version()),
        check_cgroups(mountinfo, v2_dir, v2_controllers, v2_writable),
        check_overlayfs(_read("/proc/filesystems") or ""),
        check_nftables(_netfilter_netlink()),
        check_network(sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net")
                      else [],
                      listening_sockets(_proc_net("tcp", "tcp6"), _proc_net("udp", "udp6")),
                      abstract_sockets(_read("/proc/net/unix") or "")),
        check_container(markers, mountinfo, status,
                        _read("/proc/self/attr/apparmor/current")),
        check_identity(euid, maps_foreign_ids()),
        check_limits(enforced, delegation_offer(cgroup_layout(mountinfo), euid,
                                                _user_manager(), _manager_controllers())),
        check_sandbox(error),
    ]


def render(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{'[' + check.status + ']':<7}{check.name}")
        lines += textwrap.wrap(check.detail, 96, initial_indent=" " * 7,
                               subsequent_indent=" " * 7)
        if check.action:
            lines += textwrap.wrap(check.action, 96, initial_indent=" " * 7 + "fix: ",
                                   subsequent_indent=" " * 12)
    lines.append("isol8 cannot run sandboxes on this host: fix the [fail] checks above."
                 if _blocked(checks) else "isol8 can run sandboxes on this host.")
    return "\n".join(lines)


def _proc_net(*names: str) -> str:
    return "".join(_read(f"/proc/net/{name}") or "" for name in names)


def main(ready: bool = False) -> int:
    if ready:
        return ready_main()
    checks = gather()
    print(render(checks))
    return 1 if _blocked(checks) else 0


def _blocked(checks: list[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


# ``isol8 doctor --ready``: a container's readiness probe (deploy/k8s). It runs every few
# seconds, so it runs the sandbox and reads only the few /proc files that explain a failure;
# the full report stays one ``isol8 doctor`` away.
READY_TIMEOUT_MS = 4_000


def not_ready_reason(error: str, userns: Check, chroot_check: Check, apparmor: Check,
                     found: Confinement, rootless: bool) -> str:
    """One line naming the restriction that stopped the sandbox and the setting that lifts
    it. The static facts say what is in the way; the helper's failing step says which of
    them bit (a seccomp filter that allows user namespaces may sit beside a masked /proc)."""
    for check in (userns, chroot_check, apparmor):
        if check.status == "fail":
            return (f"user namespaces refused ({check.name}): {check.detail}; "
                    f"fix: {check.action}")
    at_clone = "at step 'clone'" in error
    if found.filtered and at_clone:
        return ("user namespaces refused by a seccomp filter on this process (a container "
                "runtime's default profile allows clone with namespace flags, clone3, unshare "
                "and mount only to a container holding CAP_SYS_ADMIN); fix: Kubernetes "
                "securityContext.seccompProfile type Unconfined, or a Localhost profile that "
                f"allows them ({error})")
    if rootless and apparmor.status != "ok":
        # restricted, and whether the helper's profile is loaded cannot be read here (a
        # container seldom mounts securityfs): the likeliest cause, named as such
        return (f"user namespaces without capabilities (apparmor): {apparmor.detail}; "
                f"fix: {apparmor.action} ({error})")
    if found.masked and not at_clone:
        shown = ", ".join(found.masked[:3]) + (", ..." if len(found.masked) > 3 else "")
        return (f"/proc is masked ({shown} overmounted), so the kernel refuses the sandbox a "
                "/proc of its own; fix: Kubernetes securityContext.procMount: Unmasked (which "
                "needs hostUsers: false), docker/podman --security-opt systempaths=unconfined "
                f"({error})")
    if found.confined and not at_clone:
        return (f"the AppArmor profile {found.label} confines this process (a runtime's "
                "default profile denies mount); fix: Kubernetes "
                "securityContext.appArmorProfile type Unconfined, docker/podman "
                f"--security-opt apparmor=unconfined ({error})")
    return f"a real sandbox failed to run 'true': {error}"


def ready_main() -> int:
    """Exit 0 when a sandbox ran here, else 1 with the reason on one line. A limit enforced
    only at best effort (no cgroup delegated to the container) is a warning, not a failure:
    sandboxes still run, and the full report says what to delegate."""
    started = time.monotonic()
    error, enforced = _probe(READY_TIMEOUT_MS)
    if error is not None:
        euid = os.geteuid()
        found = confinement(_read("/proc/self/mountinfo") or "",
                            _read("/proc/self/status") or "",
                            _read("/proc/self/attr/apparmor/current"))
        reason = not_ready_reason(
            error,
            check_userns(_read("/proc/sys/user/max_user_namespaces"),
                         _read("/proc/sys/kernel/unprivileged_userns_clone"), euid),
            check_chroot(chroot.this_process()),
            check_apparmor(_read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
                           _read("/sys/kernel/security/apparmor/profiles"), euid,
                           str(_paths.helper_path())),
            found, euid != 0)
        print(f"not ready: {reason}")
        return 1
    print(f"ready: a sandbox ran 'true' in {(time.monotonic() - started) * 1000:.0f} ms")
    limits = check_limits(enforced)
    if limits.status != "ok":
        print(f"warning: limits: {limits.detail}")
    return 0
