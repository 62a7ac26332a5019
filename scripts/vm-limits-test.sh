#!/usr/bin/env bash
# cgroup v2 limits for real: this machine's cgroups are hybrid (v1 controllers), so the limit
# tests run in a qemu TCG VM (scripts/tcgvm.sh) whose kernel has a pure cgroup v2 hierarchy.
#
# On the host (as root): builds a world-readable venv from /usr/bin/python3 with isol8 installed
# plus a copy of the tests in $ISOL8_VM_STAGE (default /var/tmp/isol8-vm; the venv is reused
# while the package sources are unchanged), precompiles everything (the guest CPU is ~20x
# slower), boots the VM and prints each pass's summary. Exit status: 0 when both passes pass.
# In the guest (TCGVM_GUEST=1, started by the host side), prepares cgroup v2 the way an admin or
# systemd would and runs the tests twice:
#   root  "+memory +pids +cpu" in the root cgroup's subtree_control; pytest as root in the root
#         cgroup (isol8 creates its cgroups under its own cgroup, i.e. the root)
#   user  a systemd-style delegated subtree /sys/fs/cgroup/deleg (supervisor/ holds the runner,
#         sandboxes/ has the controllers enabled); pytest as the unprivileged user isol8-vm with
#         ISOL8_CGROUP_PARENT=/sys/fs/cgroup/deleg/sandboxes
# Logs and junit XML stay in $ISOL8_VM_STAGE/results (the serial console is slow).
#   ISOL8_VM_TESTS  pytest targets relative to the repo (default: the limits, and the warm pool
#                   and REPL, whose sandboxes are placed, measured and torn down through cgroup v2
#                   there; crashes under pipe core patterns, which only a disposable kernel may
#                   set; and a supervisor alone in a delegated cgroup: tests/test_limits.py
#                   tests/test_pool.py tests/test_repl.py tests/test_coredump.py
#                   tests/test_cgroup_delegation.py)
#   ISOL8_VM_SMOKE=1  run the harness's own smoke test instead (VM, cgroup2 OOM, isol8 execute)
set -euo pipefail
USER_NAME=isol8-vm
CONTROLLERS="+memory +pids +cpu"

guest() {  # guest STAGE RESULTS TARGET...
  local stage=$1 results=$2 cg=/sys/fs/cgroup
  shift 2
  [ "${TCGVM_GUEST:-}" = 1 ] && [ "$(stat -fc %T $cg)" = cgroup2fs ] ||
    { echo "vm-limits-test: --guest runs only inside the TCG VM" >&2; exit 2; }
  local py="$stage/venv/bin/python" status=0
  local args=(-p no:cacheprovider -q -rfEs --durations=10 "$@")
  cd "$stage"

  # (a) root, in the root cgroup: controllers enabled for its children, as on a plain v2 host
  echo "$CONTROLLERS" >$cg/cgroup.subtree_control
  run_pass root "$results" "$py" -m pytest "${args[@]}" --junitxml="$results/root.xml" || status=1
  find $cg -mindepth 1 -type d >"$results/root.cgroups-left"

  # (b) unprivileged, in a delegated subtree, the way systemd delegates (Delegate=yes): the
  # user owns deleg/ and its delegatable files (/sys/kernel/cgroup/delegate) but not its
  # limits; everything below is the user's own.
  id -u $USER_NAME >/dev/null 2>&1 ||
    useradd --system --no-create-home --shell /usr/sbin/nologin $USER_NAME  # /etc is an overlay
  local d=$cg/deleg f home
  mkdir -p $d/supervisor $d/sandboxes
  echo "$CONTROLLERS" >$d/cgroup.subtree_control
  echo "$CONTROLLERS" >$d/sandboxes/cgroup.subtree_control
  chown $USER_NAME: $d
  for f in $(cat /sys/kernel/cgroup/delegate); do
    [ -e "$d/$f" ] && chown $USER_NAME: "$d/$f"
  done
  chown -R $USER_NAME: $d/supervisor $d/sandboxes
  echo $$ >$d/supervisor/cgroup.procs
  home=$(mktemp -d /tmp/isol8-vm-home.XXXXXX)
  mkdir -p "$results/user"
  chown $USER_NAME: "$home" "$results/user"
  run_pass user "$results" setpriv --reuid=$USER_NAME --regid=$USER_NAME --clear-groups -- \
    env -i HOME="$home" PATH=/usr/bin:/bin LANG=C.UTF-8 TCGVM_GUEST=1 \
    ISOL8_CGROUP_PARENT=$d/sandboxes \
    "$py" -m pytest "${args[@]}" --junitxml="$results/user/junit.xml" || status=1
  find $d/sandboxes -mindepth 1 -type d >"$results/user.cgroups-left"
  # Positive control: the sandboxes really ran under ISOL8_CGROUP_PARENT (the runner is in
  # supervisor/, so any CPU time charged to sandboxes/ is the sandboxes').
  local used
  used=$(awk '$1 == "usage_usec" {print $2}' $d/sandboxes/cpu.stat)
  echo "vm[user]: CPU time charged to $d/sandboxes: $((used / 1000)) ms"
  [ "$used" -gt 0 ] || { echo "vm[user]: nothing ran under ISOL8_CGROUP_PARENT"; status=1; }
  return $status
}

run_pass() {  # run_pass NAME RESULTS CMD...: log to RESULTS/NAME.log, one line on the console
  local name=$1 results=$2 t0 rc=0
  shift 2
  t0=$(date +%s%N)
  "$@" >"$results/$name.log" 2>&1 </dev/null || rc=$?
  echo "$rc" >"$results/$name.rc"
  echo "vm[$name]: exit $rc after $((($(date +%s%N) - t0) / 1000000)) ms:" \
    "$(tail -n1 "$results/$name.log")"
  return $rc
}

host() {
  local repo stage results t0 src targets=() t
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  stage=${ISOL8_VM_STAGE:-/var/tmp/isol8-vm}
  results=$stage/results
  [ "$(id -u)" -eq 0 ] ||
    { echo "vm-limits-test: run as root (it installs packages and prepares the guest)" >&2; exit 1; }
  t0=$(date +%s)
  "$repo/scripts/tcgvm.sh" setup

  mkdir -p "$stage"
  chmod 755 "$stage"
  exec 8>"$stage/.lock"
  flock 8
  # A venv every user can read (root's default python3 is a pyenv in a 0700 home), rebuilt only
  # when the package's sources change.
  src=$(cd "$repo" &&
    { /usr/bin/python3 --version; cat pyproject.toml setup.py isol8/*.py csrc/*.c csrc/*.h; } |
    sha256sum | cut -c1-16)
  if [ "$(cat "$stage/venv/.isol8-src" 2>/dev/null)" != "$src" ]; then
    echo "== VM stage: building the guest venv in $stage/venv"
    rm -rf "$stage/venv"
    /usr/bin/python3 -m venv "$stage/venv"
    "$stage/venv/bin/pip" install -qq --disable-pip-version-check "${repo}[test-core]"
    echo "$src" >"$stage/venv/.isol8-src"
  fi
  rm -rf "$stage/tests" "$stage/packaging" "$results"
  mkdir -p "$stage/tests" "$results"
  (cd "$repo/tests" && tar --exclude=__pycache__ -cf - .) | tar -xf - -C "$stage/tests"
  cp -rp "$repo/packaging" "$repo/pyproject.toml" "$stage/"
  if [ "${ISOL8_VM_SMOKE:-}" = 1 ]; then
    write_smoke_test "$results/smoke_test.py"
    targets=("$results/smoke_test.py")
  else
    for t in ${ISOL8_VM_TESTS:-tests/test_limits.py tests/test_pool.py tests/test_repl.py tests/test_coredump.py tests/test_cgroup_delegation.py}; do
      [ -e "$stage/${t%%::*}" ] ||
        { echo "vm-limits-test: ${t%%::*} not found in $repo" >&2; exit 1; }
      targets+=("$stage/$t")
    done
  fi
  # Precompile here: the guest would redo it at 1/20 speed on every boot (its writes are
  # discarded). pytest's assertion rewriting has its own .pyc: a collection run writes them.
  "$stage/venv/bin/python" -m compileall -q "$stage/venv" "$stage/tests" >/dev/null || true
  (cd "$stage" && env -u PYTHONDONTWRITEBYTECODE "$stage/venv/bin/python" -m pytest \
    -p no:cacheprovider -q --collect-only "${targets[@]}" >"$results/host-collect.log" 2>&1) || true
  chmod -R a+rX "$stage"

  echo "== VM stage: cgroup v2 limits in a TCG VM, as root then as delegated user $USER_NAME"
  local rc=0 name
  (cd "$stage" && "$repo/scripts/tcgvm.sh" run --results "$results" --mem 2G --cpus 2 \
    --timeout "${ISOL8_VM_TIMEOUT:-1200}" -- \
    /bin/bash "$repo/scripts/vm-limits-test.sh" --guest "$stage" "$results" "${targets[@]}") ||
    rc=$?
  for name in root user; do
    [ -f "$results/$name.rc" ] || continue
    if [ "$(cat "$results/$name.rc")" != 0 ]; then
      echo "---- $name pass: last lines of $results/$name.log"
      tail -n 60 "$results/$name.log"
    fi
    [ -s "$results/$name.cgroups-left" ] &&
      echo "note: cgroups left after the $name pass: $(tr '\n' ' ' <"$results/$name.cgroups-left")"
  done
  case $rc in
    0) echo "== VM stage passed in $(($(date +%s) - t0)) s (logs: $results)" ;;
    124) echo "== VM stage FAILED: the VM timed out (logs: $results)" ;;
    125) echo "== VM stage FAILED: the VM did not report (boot failure; logs: $results)" ;;
    *) echo "== VM stage FAILED (exit $rc) in $(($(date +%s) - t0)) s (logs: $results)" ;;
  esac
  # The closing lines over both passes, in the plain "N passed, N failed" form CI reads.
  /usr/bin/python3 "$repo/scripts/junit-summary.py" vm "$rc" "$(($(date +%s) - t0))" \
    "$results/root.xml $results/user/junit.xml" || true
  return $rc
}

write_smoke_test() {  # the harness's self-check: cgroup2 in the guest, OOM kill, isol8 runs
  cat >"$1" <<'PY'
import os, subprocess, sys
import pytest
from isol8 import Isol8

pytestmark = pytest.mark.skipif(os.environ.get("TCGVM_GUEST") != "1", reason="TCG VM only")
PARENT = os.environ.get("ISOL8_CGROUP_PARENT", "/sys/fs/cgroup")
ALLOC = "b = bytearray(200 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"


@pytest.fixture
def cgroup_50m():
    path = os.path.join(PARENT, f"smoke-{os.getpid()}")
    os.mkdir(path)
    with open(os.path.join(path, "memory.max"), "w") as fh:
        fh.write("50M")
    yield path
    os.rmdir(path)


def enter(path):
    return lambda: open(os.path.join(path, "cgroup.procs"), "w").write(str(os.getpid()))


def test_controllers():
    controllers = open(os.path.join(PARENT, "cgroup.subtree_control")).read().split()
    assert {"memory", "pids", "cpu"} <= set(controllers)


def test_isol8_executes():
    result = Isol8().execute("print(1)", runtime="python")
    assert (result.exit_code, result.stdout.strip()) == (0, "1"), result.stderr


def test_memory_max_kills_allocation(cgroup_50m):
    proc = subprocess.run([sys.executable, "-c", ALLOC], preexec_fn=enter(cgroup_50m))
    assert proc.returncode == -9
    events = dict(l.split() for l in open(os.path.join(cgroup_50m, "memory.events")))
    assert int(events["oom_kill"]) >= 1

PY
}

if [ "${1:-}" = --guest ]; then
  shift
  guest "$@"
else
  host "$@"
fi
