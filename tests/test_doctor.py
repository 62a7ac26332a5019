"""``isol8 doctor``: the pure checks on other hosts' /proc, and the real command on this one.

The synthetic inputs mirror what those hosts show: a Docker container's masked /proc and
seccomp status, Ubuntu 24.04's AppArmor restriction, a hybrid systemd cgroup layout (this
machine's, abridged), a unified one with a delegated user scope.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import isol8
from isol8 import chroot, doctor
from isol8.identity import DEFAULT_UID_RANGE

REPO = Path(__file__).resolve().parent.parent
HELPER = "/opt/isol8/lib/python3.12/site-packages/isol8/_bin/isol8-helper"

HYBRID_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = "9:name=systemd:/\n4:memory:/process_api/b4b6\n1:cpu:/\n0::/\n"

UNIFIED_MOUNTINFO = """\
24 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw
25 24 0:23 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
26 25 0:24 / /proc/sys/fs/binfmt_misc rw,relatime shared:13 - autofs systemd-1 rw,fd=32
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 \
rw,nsdelegate,memory_recursiveprot
"""
UNIFIED_CGROUP = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/isol8.scope\n"

# A container under Docker's default security options, abridged: /proc subtrees bound
# read-only, files masked with /dev/null binds, directories with empty read-only tmpfs.
DOCKER_MOUNTINFO = """\
1290 1050 0:95 / / rw,relatime master:400 - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
1291 1290 0:98 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1292 1290 0:99 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
1300 1290 0:100 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate
1051 1291 0:98 /bus /proc/bus ro,nosuid,nodev,noexec,relatime - proc proc rw
1054 1291 0:98 /sys /proc/sys ro,nosuid,nodev,noexec,relatime - proc proc rw
1055 1291 0:98 /sysrq-trigger /proc/sysrq-trigger ro,nosuid,nodev,noexec,relatime - proc proc rw
1056 1291 0:101 / /proc/acpi ro,relatime - tmpfs tmpfs ro
1057 1291 0:99 /null /proc/kcore rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
1058 1291 0:99 /null /proc/keys rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
1059 1291 0:99 /null /proc/timer_list rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
1060 1291 0:102 / /proc/scsi ro,relatime - tmpfs tmpfs ro
"""
UNFILTERED_STATUS = "Name:\tpython3\nNoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\n"
DOCKER_STATUS = "Name:\tpython3\nNoNewPrivs:\t0\nSeccomp:\t2\nSeccomp_filters:\t1\n"
ACTIONS = "kill_process kill_thread trap errno user_notif trace log allow"


# kernel

def test_kernel_5_4_fails_naming_the_minimum():
    check = doctor.check_kernel("5.4.0-150-generic")
    assert check.status == "fail"
    assert "5.12" in check.detail and "mount_setattr" in check.detail
    assert check.action


@pytest.mark.parametrize("release", ["5.12.0", "6.8.0-45-generic", "6.18.44-fc-v657"])
def test_kernel_5_12_and_later_pass(release):
    assert doctor.check_kernel(release).status == "ok"


# user namespaces and AppArmor

def test_userns_off_by_max_user_namespaces_fails_naming_the_sysctl():
    check = doctor.check_userns("0\n", None, euid=1000)
    assert check.status == "fail"
    assert "user.max_user_namespaces=0" in check.detail
    assert "sysctl -w user.max_user_namespaces=" in check.action


def test_userns_off_by_debian_sysctl_fails_rootless_and_warns_as_root():
    rootless = doctor.check_userns("96365\n", "0\n", euid=1000)
    assert rootless.status == "fail"
    assert "kernel.unprivileged_userns_clone=0" in rootless.detail
    assert "kernel.unprivileged_userns_clone=1" in rootless.action
    assert doctor.check_userns("96365\n", "0\n", euid=0).status == "warn"


def test_userns_missing_from_the_kernel_fails():
    assert "CONFIG_USER_NS" in doctor.check_userns(None, None, euid=1000).detail


def test_userns_allowed():
    check = doctor.check_userns("96365\n", "1\n", euid=1000)
    assert check.status == "ok" and "96365" in check.detail


def test_apparmor_restriction_without_profile_fails_naming_the_profile_and_its_install():
    loaded = "snap.firefox.firefox (enforce)\nunprivileged_userns (enforce)\n"
    check = doctor.check_apparmor("1\n", loaded, euid=1000, helper=HELPER)
    assert check.status == "fail"
    assert "kernel.apparmor_restrict_unprivileged_userns=1" in check.detail
    assert "isol8-helper" in check.detail
    for step in ("/etc/apparmor.d/isol8-helper", HELPER, "apparmor_parser -r"):
        assert step in check.action


def test_apparmor_action_matches_the_shipped_profile():
    action = doctor.check_apparmor("1", "", euid=1000, helper=HELPER).action
    profile = (REPO / "packaging" / "apparmor" / "isol8-helper").read_text()
    assert "packaging/apparmor/isol8-helper" in action
    assert "@{isol8_helper}" in action and "@{isol8_helper}=" in profile
    assert re.search(r"^profile isol8-helper @\{isol8_helper\} flags=\(unconfined\) \{$",
                     profile, re.M)
    assert re.search(r"^\s+userns,$", profile, re.M)


def test_apparmor_restriction_with_profile_loaded_passes():
    loaded = "isol8-helper (unconfined)\nunprivileged_userns (enforce)\n"
    check = doctor.check_apparmor("1\n", loaded, euid=1000, helper=HELPER)
    assert check.status == "ok" and HELPER in check.detail


def test_apparmor_unreadable_profiles_or_root_only_warn():
    assert doctor.check_apparmor("1\n", None, euid=1000, helper=HELPER).status == "warn"
    assert doctor.check_apparmor("1\n", "", euid=0, helper=HELPER).status == "warn"


@pytest.mark.parametrize("restrict", [None, "0\n"])
def test_apparmor_without_restriction_passes(restrict):
    assert doctor.check_apparmor(restrict, None, euid=1000, helper=HELPER).status == "ok"


# seccomp

def test_seccomp_ok_names_actions_and_libseccomp():
    check = doctor.check_seccomp(UNFILTERED_STATUS, ACTIONS, "2.5.4")
    assert check.status == "ok" and "2.5.4" in check.detail and "user_notif" in check.detail


def test_seccomp_missing_action_or_kernel_support_fails():
    assert doctor.check_seccomp(UNFILTERED_STATUS, "kill_thread trap allow", "2.5.4").status \
        == "fail"
    assert doctor.check_seccomp("Name:\tpython3\n", None, "2.5.4").status == "fail"


def test_seccomp_without_libseccomp_fails_with_the_package():
    check = doctor.check_seccomp(UNFILTERED_STATUS, ACTIONS, None)
    assert check.status == "fail" and "libseccomp2" in check.action


# cgroups

def test_hybrid_cgroups_like_this_host():
    v2_dir = doctor.cgroup_v2_dir(HYBRID_MOUNTINFO, HYBRID_CGROUP)
    assert v2_dir == "/sys/fs/cgroup/unified"
    check = doctor.check_cgroups(HYBRID_MOUNTINFO, v2_dir, "hugetlb\n", v2_writable=True)
    assert check.status == "warn"
    assert "layout hybrid" in check.detail
    assert "v1 controllers cpu, memory, pids;" in check.detail  # not name=systemd or xattr
    assert "cgroup2 at /sys/fs/cgroup/unified with controllers hugetlb" in check.detail
    assert "backend per limit" in check.detail
    assert "systemd.unified_cgroup_hierarchy=1" in check.action


def test_limits_report_says_what_is_best_effort():
    hard = doctor.check_limits({"memory": "cgroup1", "pids": "cgroup1", "cpu": "cgroup2"})
    assert hard.status == "ok" and "memory by cgroup1" in hard.detail
    soft = doctor.check_limits({"memory": "watchdog", "pids": "rlimit", "cpu": "rlimit"})
    assert soft.status == "warn" and "best effort for memory, cpu" in soft.detail
    assert "ISOL8_CGROUP_PARENT" in soft.action
    assert doctor.check_limits(None).status == "warn"


def test_delegation_offer_needs_unified_v2_and_a_user_manager_with_memory():
    offer = doctor.delegation_offer("unified", 1000, True, "cpu memory pids\n")
    assert offer == "systemd-run --user --scope -p Delegate=yes -- <command>"
    assert doctor.delegation_offer("unified", 1000, True, None) == offer  # unreadable: offer
    assert doctor.delegation_offer("hybrid", 1000, True, "cpu memory pids") is None
    assert doctor.delegation_offer("unified", 0, True, "cpu memory pids") is None
    assert doctor.delegation_offer("unified", 1000, False, "cpu memory pids") is None
    assert doctor.delegation_offer("unified", 1000, True, "cpu pids") is None


def test_limits_under_the_watchdog_offer_the_delegated_scope():
    soft = {"memory": "watchdog", "pids": "rlimit", "cpu": "rlimit"}
    check = doctor.check_limits(soft, doctor.DELEGATED_SCOPE)
    assert check.status == "warn" and "memory by watchdog" in check.detail
    assert "systemd-run --user --scope -p Delegate=yes -- <command>" in check.action
    assert "leaf" in check.action and "ISOL8_CGROUP_PARENT" in check.action
    assert "systemd-run" not in doctor.check_limits(soft).action  # nothing to offer here
    hard = doctor.check_limits(dict.fromkeys(("memory", "pids", "cpu"), "cgroup2"),
                               doctor.DELEGATED_SCOPE)
    assert hard.status == "ok" and not hard.action


def test_cgroup_layout():
    assert doctor.cgroup_layout(HYBRID_MOUNTINFO) == "hybrid"
    assert doctor.cgroup_layout(UNIFIED_MOUNTINFO) == "unified"


def test_unified_delegated_cgroups_pass():
    v2_dir = doctor.cgroup_v2_dir(UNIFIED_MOUNTINFO, UNIFIED_CGROUP)
    assert v2_dir == ("/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/"
                      "app.slice/isol8.scope")
    check = doctor.check_cgroups(UNIFIED_MOUNTINFO, v2_dir, "cpu memory pids\n",
                                 v2_writable=True)
    assert check.status == "ok" and "layout unified" in check.detail


def test_unified_undelegated_cgroups_warn_with_delegation():
    check = doctor.check_cgroups(UNIFIED_MOUNTINFO, "/sys/fs/cgroup/x", "cpu memory pids",
                                 v2_writable=False)
    assert check.status == "warn" and doctor.DELEGATED_SCOPE in check.action


def test_legacy_cgroups():
    v1_only = "\n".join(line for line in HYBRID_MOUNTINFO.splitlines() if "cgroup2" not in line)
    assert doctor.cgroup_v2_dir(v1_only, HYBRID_CGROUP) is None
    assert "layout legacy" in doctor.check_cgroups(v1_only, None, None, False).detail


def test_cgroup_v2_dir_inside_a_cgroup_namespace_mount():
    mountinfo = "35 24 0:30 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert doctor.cgroup_v2_dir(mountinfo, "0::/kubepods/pod1/c1\n") == "/sys/fs/cgroup/c1"
    assert doctor.cgroup_v2_dir(mountinfo, "0::/kubepods/pod1\n") == "/sys/fs/cgroup"
    assert doctor.cgroup_v2_dir(mountinfo, "0::/other\n") is None


# containers

def test_docker_masked_proc_fails_naming_the_unmask_options():
    check = doctor.check_container(["/.dockerenv"], DOCKER_MOUNTINFO, UNFILTERED_STATUS, None)
    assert check.status == "fail"
    assert "/proc/kcore" in check.detail and "/.dockerenv" in check.detail
    assert "systempaths=unconfined" in check.action
    assert "procMount: Unmasked" in check.action


def test_docker_seccomp_and_apparmor_warn_naming_unconfined():
    no_masks = UNIFIED_MOUNTINFO  # its only /proc submount, binfmt_misc, hides nothing
    check = doctor.check_container(["/.dockerenv"], no_masks, DOCKER_STATUS,
                                   "docker-default (enforce)\n")
    assert check.status == "warn"
    assert "seccomp=unconfined" in check.action
    assert "apparmor=unconfined" in check.action


@pytest.mark.parametrize("label", [None, "unconfined\n", "terminal (unconfined)\n"])
def test_unconfined_host_passes(label):
    check = doctor.check_container([], UNIFIED_MOUNTINFO, UNFILTERED_STATUS, label)
    assert check.status == "ok" and check.detail == "no container markers"


def test_container_markers():
    markers = doctor.container_markers(
        ["/run/.containerenv"], {"KUBERNETES_SERVICE_HOST": "10.96.0.1"},
        "0::/kubepods/burstable/pod42/cri-containerd-abc.scope\n")
    assert markers == ["/run/.containerenv", "KUBERNETES_SERVICE_HOST is set",
                       "/proc/1/cgroup mentions containerd, kubepods"]
    assert doctor.container_markers([], {}, "0::/init.scope\n") == []


# chroot

ROOT_AT_SLASH = ("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
                 "22 27 0:21 / /proc rw - proc proc rw\n")
# `chroot /srv/debian`, /srv/debian a directory on the host's root file system: the root
# mount is out of reach, its submounts show relative to the new root.
PLAIN_CHROOT = "41 40 0:21 / /proc rw - proc proc rw\n44 40 0:5 / /dev rw - devtmpfs udev rw\n"


def test_chroot_into_a_directory_shows_no_mount_at_the_root():
    assert chroot.chrooted(PLAIN_CHROOT, None, None) is True
    assert chroot.chrooted(PLAIN_CHROOT, True, True) is True


def test_chroot_compared_with_init_when_it_shares_the_mount_namespace():
    assert chroot.chrooted(ROOT_AT_SLASH, True, False) is True  # a chroot onto a mount
    assert chroot.chrooted(ROOT_AT_SLASH, True, True) is False
    # another mount namespace than init's (unshare, containers): init's root says nothing
    assert chroot.chrooted(ROOT_AT_SLASH, False, False) is None
    assert chroot.chrooted(ROOT_AT_SLASH, None, None) is None
    assert chroot.chrooted("", None, None) is None  # no /proc: nothing to go by


def test_chroot_check_fails_naming_the_kernel_rule_and_the_way_in():
    check = doctor.check_chroot(True)
    assert check.status == "fail"
    assert "chroot" in check.detail and "EPERM" in check.detail
    assert "mount --move" in check.action and "pivot_root" in check.action
    assert doctor.check_chroot(False).status == "ok"
    assert doctor.check_chroot(None).status == "ok"


def test_this_host_is_not_a_chroot():
    assert chroot.this_process() is not True


# Builds a root on a tmpfs in a private mount namespace (nothing reaches the host's mounts)
# holding what this venv's python needs, bound from the host, then enters it either with a
# plain chroot or as a machine would (bound onto itself, moved over /, then chroot).
_ENTER_ROOT = r"""
set -eu
how=$1 base=$2; shift 2
mount -t tmpfs isol8-test "$base"
r=$base/root
mkdir -p "$r/tmp" "$r/etc" "$r/proc" "$r/sys" "$r/dev" "$r/usr"
for l in bin lib lib64 sbin; do [ -L "/$l" ] && ln -s "$(readlink "/$l")" "$r/$l"; done
mount --rbind /usr "$r/usr"; mount --rbind /proc "$r/proc"; mount --rbind /sys "$r/sys"
mount --rbind /dev "$r/dev"; mount --bind /etc "$r/etc"
for p in "$@"; do mkdir -p "$r$p"; mount --bind "$p" "$r$p"; done
if [ "$how" = plain ]; then cd "$r"; exec chroot "$r" "$PY" -m isol8 doctor; fi
mount --rbind "$r" "$r"; cd "$r"; mount --move . /; exec chroot . "$PY" -m isol8 doctor
"""


def _doctor_in_a_root(how: str, tmp_path: Path) -> subprocess.CompletedProcess:
    package = Path(isol8.__file__).resolve().parent.parent
    paths = sorted({str(Path(sys.prefix)), str(package)})
    # bind each tree once, and nothing /usr already brings
    binds = [p for p in paths if not p.startswith("/usr/")
             and not any(p.startswith(q + "/") for q in paths)]
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                           _ENTER_ROOT, "enter", how, str(tmp_path), *binds],
                          env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "PY": sys.executable,
                               "LANG": "C.UTF-8"},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.root_only
def test_doctor_in_a_plain_chroot_names_the_chroot(tmp_path):
    proc = _doctor_in_a_root("plain", tmp_path)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert re.search(r"^\[ok\]\s+user namespaces$", out, re.M), out  # the sysctls allow it
    assert re.search(r"^\[fail\]\s+chroot\n\s+this process runs in a chroot", out, re.M), out
    sandbox = out[out.index("[fail] sandbox"):]
    assert "clone" in sandbox and "EPERM" in sandbox and "in a chroot" in sandbox, out


@pytest.mark.root_only
def test_doctor_in_a_root_entered_as_a_machine_would_passes(tmp_path):
    proc = _doctor_in_a_root("moved", tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert re.search(r"^\[ok\]\s+chroot$", out, re.M), out
    assert re.search(r"^\[ok\]\s+sandbox$", out, re.M), out


# the rest

def test_mountinfo_paths_are_unescaped():
    (mount,) = doctor.parse_mountinfo(r"40 24 0:40 / /mnt/my\040dir rw - tmpfs tmpfs rw")
    assert mount.point == "/mnt/my dir" and mount.fstype == "tmpfs"


def test_identity_names_the_uid_range_as_root():
    start, count = DEFAULT_UID_RANGE
    assert f"{start}-{start + count - 1}" in doctor.check_identity(0, True).detail
    assert "1234" in doctor.check_identity(1234, False).detail
    assert "root inside a user namespace" in doctor.check_identity(0, False).detail


def test_failed_sandbox_reports_the_setup_error():
    message = "sandbox setup failed at step 'clone': clone on user namespace: EPERM"
    check = doctor.check_sandbox(message)
    assert check.status == "fail" and message in check.detail


def test_render_shows_status_detail_and_fix():
    text = doctor.render([doctor.Check("kernel", "ok", "fine"),
                          doctor.Check("sandbox", "fail", "broken", "do this")])
    assert text.splitlines() == ["[ok]   kernel", "       fine", "[fail] sandbox",
                                 "       broken", "       fix: do this",
                                 "isol8 cannot run sandboxes on this host: fix the [fail] "
                                 "checks above."]


# the real command on this host

def _cgroup_layout() -> str:
    """An oracle independent of doctor's parser: which cgroup filesystems are mounted."""
    fstypes = {line.split(" - ")[1].split()[0]
               for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    v1, v2 = "cgroup" in fstypes, "cgroup2" in fstypes
    return "hybrid" if v1 and v2 else "unified" if v2 else "legacy" if v1 else "absent"


def test_doctor_command_on_this_host():
    proc = subprocess.run([sys.executable, "-m", "isol8", "doctor"], capture_output=True,
                          text=True, timeout=90)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert re.search(r"^\[ok\]\s+user namespaces$", out, re.M), out
    assert re.search(r"^\[ok\]\s+sandbox$", out, re.M), out
    cgroups = re.search(r"^\[\w+\]\s+cgroups\n((?: {7}.*\n)+)", out, re.M)
    assert cgroups and f"layout {_cgroup_layout()}" in cgroups.group(1), out
    assert out.rstrip().endswith("isol8 can run sandboxes on this host.")


# --- network: what 'host' would expose -------------------------------------------------------

PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:D2F0 0100007F:0277 01 00000000:00000000 00:00000000 00000000  1000        0 2 1
"""
PROC_NET_UDP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  7: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 3 2 0 0
"""
PROC_NET_UNIX = """\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 20 @/tmp/dbus-x
0000000000000000: 00000002 00000000 00010000 0001 01 21 @/tmp/dbus-x
0000000000000000: 00000002 00000000 00010000 0001 01 22 /run/systemd/private
0000000000000000: 00000003 00000000 00000000 0001 03 23
"""


def test_network_counts_what_host_mode_would_expose():
    assert doctor.listening_sockets(PROC_NET_TCP, PROC_NET_UDP) == 2  # not the connected one
    assert doctor.abstract_sockets(PROC_NET_UNIX) == ["@/tmp/dbus-x"]
    check = doctor.check_network(["eth0", "lo"], 2, ["@/tmp/dbus-x"])
    assert check.status == "ok"
    assert "'none' (the default)" in check.detail and "interfaces eth0," in check.detail
    assert "2 listening TCP/UDP sockets" in check.detail
    assert "1 abstract unix sockets (@/tmp/dbus-x)" in check.detail


def test_network_check_sees_this_hosts_own_listener():
    import socket
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        before = doctor.listening_sockets(doctor._proc_net("tcp", "tcp6"), "")
        server.listen(1)
        after = doctor.listening_sockets(doctor._proc_net("tcp", "tcp6"), "")
    assert after == before + 1


def test_nftables_is_the_kernels_netlink_not_the_nft_program():
    present, absent = doctor.check_nftables(True), doctor.check_nftables(False)
    assert present.status == "ok" and "not needed" in present.detail
    assert absent.status == "warn" and "reaches nobody" in absent.detail
