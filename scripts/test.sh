#!/usr/bin/env bash
# The whole suite, in up to three stages. Every stage runs and reports even when an earlier one
# failed; a summary follows, and the script fails if any stage failed.
#   1. the suite as the invoking user (root or not)
#   2. as root only: the suite again as the unprivileged user isol8-ci, from a world-readable copy
#      (rootless is the headline, so both must pass). ISOL8_SKIP_ROOTLESS=1 skips it where an
#      unprivileged run of the suite follows anyway: scripts/fresh-machine.sh's "user make test"
#   3. as root only: the VM stage. This host's cgroups are hybrid (v1 controllers), so the cgroup v2
#      limit tests run in a qemu TCG VM (scripts/vm-limits-test.sh), as root and as a delegated user.
#      ISOL8_SKIP_VM=1 skips it for quick local runs; CI never sets it.
# The last line counts every stage's tests in the plain "total: N passed, N failed" form (from the
# stages' junit XML; a stage that failed before writing one counts as one failure).
set -euo pipefail
# The suite runs as if started by hand: a make that a test runs is not a sub-make of `make test`
# (it would print "Entering directory" lines and look for the outer make's jobserver).
unset MAKELEVEL MAKEFLAGS MFLAGS
vpy=${1:-.venv/bin/python}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
user=isol8-ci
work=$(mktemp -d /var/tmp/isol8-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
mkdir "$work/results"
names=() rcs=() secs=() xmls=()

stage() {  # stage NAME XML... -- CMD...: run CMD, record its status, time and junit files
  local name=$1 files=() t0 rc=0
  shift
  while [ "$1" != -- ]; do files+=("$1"); shift; done
  shift
  t0=$(date +%s)
  "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then echo "== stage $name ran no test (pytest exit 5): counted as a failure"; fi
  names+=("$name") rcs+=("$rc") secs+=("$(($(date +%s) - t0))") xmls+=("${files[*]}")
}

pytest_as_invoker() {
  echo "== isol8 tests as $(id -un) (uid $(id -u))"
  "$vpy" -m pytest -q -p no:cacheprovider --junitxml="$work/results/invoker.xml" tests
}

pytest_rootless() {  # a venv and copy of the tests that isol8-ci can read, then pytest as isol8-ci
  local copy=$work/rootless
  id -u "$user" >/dev/null 2>&1 ||
    useradd --system --no-create-home --shell /usr/sbin/nologin "$user" || return
  # A subordinate id range for the rootless image builds (mmdebstrap --mode=unshare maps it
  # with newuidmap): shadow's first default block, far from the sandboxes' uid range.
  grep -q "^$user:" /etc/subuid 2>/dev/null && grep -q "^$user:" /etc/subgid 2>/dev/null ||
    usermod --add-subuids 100000-165535 --add-subgids 100000-165535 "$user" || return
  # (a function called as a condition runs without set -e: each step checks for itself)
  mkdir "$copy" &&
    /usr/bin/python3 -m venv "$copy/venv" &&
    "$copy/venv/bin/pip" install -qq --disable-pip-version-check "${repo}[test]" &&
    cp -r tests packaging rootfs deploy pyproject.toml README.md Makefile "$copy/" &&
    # the wheel tests build from the source (ISOL8_SOURCE_DIR), which isol8-ci cannot read in
    # the checkout; under src/, so that its isol8/ does not shadow the installed package
    # (rootfs/ too: isol8/images/rootfs is a link to it)
    mkdir "$copy/src" &&
    cp -r setup.py MANIFEST.in pyproject.toml README.md csrc isol8 scripts rootfs "$copy/src/" &&
    mkdir "$copy/home" &&
    chown "$user:" "$copy/home" &&
    chmod -R a+rX "$copy" || return
  echo "== isol8 tests rootless, as $user"
  (cd "$copy" && setpriv --reuid="$user" --regid="$user" --clear-groups -- \
    env -i HOME="$copy/home" PATH=/usr/bin:/bin LANG=C.UTF-8 ISOL8_SOURCE_DIR="$copy/src" \
    "$copy/venv/bin/python" -m pytest -q -p no:cacheprovider \
    --junitxml="$copy/home/junit.xml" tests)
  local rc=$?
  cp "$copy/home/junit.xml" "$work/results/rootless.xml" 2>/dev/null || true
  return $rc
}

stage "$(id -un)" "$work/results/invoker.xml" -- pytest_as_invoker
if [ "$(id -u)" -eq 0 ]; then
  if [ "${ISOL8_SKIP_ROOTLESS:-}" = 1 ]; then
    echo "== rootless stage SKIPPED (ISOL8_SKIP_ROOTLESS=1): the caller runs the suite unprivileged itself"
  else
    stage rootless "$work/results/rootless.xml" -- pytest_rootless
  fi
  if [ "${ISOL8_SKIP_VM:-}" = 1 ]; then
    echo "== VM stage SKIPPED (ISOL8_SKIP_VM=1): cgroup v2 limits untested in this run (CI runs them)"
  else
    vmres=${ISOL8_VM_STAGE:-/var/tmp/isol8-vm}/results
    rm -f "$vmres/root.xml" "$vmres/user/junit.xml"  # a previous run's must not count
    stage vm "$vmres/root.xml" "$vmres/user/junit.xml" -- ./scripts/vm-limits-test.sh
  fi
fi

echo "== summary"
status=0 counts=()
for i in "${!names[@]}"; do
  [ "${rcs[$i]}" -eq 0 ] || status=1
  counts+=("${names[$i]}" "${rcs[$i]}" "${secs[$i]}" "${xmls[$i]}")
done
/usr/bin/python3 scripts/junit-summary.py "${counts[@]}"
exit $status
