#!/usr/bin/env bash
# The README's two commands on a fresh Debian 12 machine, from a clean clone: proves that the
# project's own files install everything `make run` and `make test` need.
#
#   scripts/fresh-machine.sh      as root; ISOL8_FRESH_SRC names the git repository to clone
#                                 (default: this one; its HEAD, i.e. what is committed)
#
# 1. mmdebstrap (installed here when missing) bootstraps a minimal bookworm root in
#    /var/tmp/isol8-fresh: variant apt plus git, make, ca-certificates and python3.
# 2. The root is entered as a machine would run it, inside `unshare --mount --propagation
#    private`, so no mount reaches the host's own /: the root is bound onto itself and moved over
#    / before the chroot (a process whose root is not its mount namespace's root is "chrooted",
#    and the kernel refuses it CLONE_NEWUSER), with /proc, /sys (rbind: the cgroup hierarchies)
#    and /dev (rbind: /dev/pts, /dev/shm) bound, and tmpfs on /run and /tmp.
# 3. This machine reaches the package registries through its own settings, which are the
#    environment, not the project: /etc/apt, resolv.conf, the local CA certificates (installed in
#    the root with update-ca-certificates) and the pip configuration (files and PIP_* variables)
#    are carried in read-only, and so is every local path those settings name that the root
#    lacks (local wheel directories, keyrings, constraint files).
# 4. In the root, as a new user would (each step timed, every step runs):
#      user make run (before any admin step)  must fail and print the exact command to run
#      admin: scripts/system-deps.sh          as root, in the admin's own clone
#      user make run                          as the unprivileged user isol8-dev: prints 256
#      root make run                          prints 256
#      root make test                         root and VM stages (scripts/test.sh; its rootless
#                                             stage is the next step's run)
#      user make test                         the suite as isol8-dev, from its own clone
# The root is removed on exit, whatever happened; a later run starts from nothing (nothing is
# cached between runs). The last line repeats `make test`'s total.
set -euo pipefail
SELF=$(readlink -f "${BASH_SOURCE[0]}")
ROOT=/var/tmp/isol8-fresh
DEV=isol8-dev
# Variables that carry this machine's registry settings into the root (read-only paths they
# name are bound in too).
CARRY_RE='^(PIP_[A-Z_]+|SSL_CERT_FILE|SSL_CERT_DIR|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|NODE_EXTRA_CA_CERTS|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY|CI)='

log() { echo "fresh-machine: $*"; }
die() { echo "fresh-machine: $*" >&2; exit 1; }

# ---- on the host ----------------------------------------------------------------------------

host() {
  local src=${ISOL8_FRESH_SRC:-$(cd "$(dirname "$SELF")/.." && pwd)} t0 rc=0
  [ "$(id -u)" -eq 0 ] || die "run as root (it bootstraps and enters a Debian root)"
  exec 9>"$ROOT.lock"
  flock -n 9 || die "another run holds $ROOT.lock"
  trap 'cleanup && rm -f "$ROOT.lock"' EXIT
  trap 'exit 130' INT TERM HUP
  cleanup  # a previous run killed before its own cleanup
  ensure_mmdebstrap

  t0=$(date +%s)
  local sources=() opts=() f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && grep -qvE '^[[:space:]]*(#|$)' "$f" && sources+=("$f")
  done
  [ ${#sources[@]} -gt 0 ] || die "no apt sources in /etc/apt"
  for f in /etc/apt/apt.conf.d/*; do  # how this machine's apt reaches its mirror
    grep -q '^[[:space:]]*Acquire' "$f" 2>/dev/null && opts+=("--aptopt=$f")
  done
  if ! mmdebstrap --quiet --variant=apt --include=git,make,ca-certificates,python3 \
      "${opts[@]}" bookworm "$ROOT" "${sources[@]}" >"$ROOT.bootstrap.log" 2>&1; then
    cat "$ROOT.bootstrap.log" >&2
    die "mmdebstrap failed"
  fi
  rm -f "$ROOT.bootstrap.log"
  # What a first boot does (systemd-machine-id-setup): mmdebstrap leaves the id to it.
  [ -s "$ROOT/etc/machine-id" ] || tr -d - </proc/sys/kernel/random/uuid >"$ROOT/etc/machine-id"
  git clone -q --bare --no-hardlinks "$src" "$ROOT/srv/isol8.git"
  log "bootstrapped Debian $(cat "$ROOT/etc/debian_version") in $(($(date +%s) - t0)) s" \
    "($(du -sh "$ROOT" | cut -f1)); testing $(git -C "$src" rev-parse --short HEAD) from $src"

  unshare --mount --propagation private -- "$SELF" --enter "$ROOT" "$(readlink /proc/self/ns/mnt)" &
  wait $! || rc=$?  # in the background, so that a signal's trap runs at once
  return $rc
}

ensure_mmdebstrap() {  # idempotent; the apt log is printed only on failure
  command -v mmdebstrap >/dev/null && return 0
  local out
  out=$(mktemp)
  log "installing mmdebstrap"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mmdebstrap ||
         { apt-get update && DEBIAN_FRONTEND=noninteractive \
           apt-get install -y --no-install-recommends mmdebstrap; }; } >"$out" 2>&1; then
    cat "$out" >&2
    rm -f "$out"
    die "could not install mmdebstrap"
  fi
  rm -f "$out"
}

cleanup() {  # end the machine's processes, then remove the root (never with mounts under it)
  stop_machine
  [ -e "$ROOT" ] || return 0
  if grep -qF " $ROOT" /proc/self/mountinfo; then
    echo "fresh-machine: mounts under $ROOT on the host; not removing it" >&2
    return 1
  fi
  # The VM stage's logs outlive the root (its console is slow; they say what a timeout hit).
  if [ -d "$ROOT/var/tmp/isol8-vm/results" ]; then
    rm -rf "$ROOT.vm-results"
    cp -r "$ROOT/var/tmp/isol8-vm/results" "$ROOT.vm-results" 2>/dev/null &&
      echo "fresh-machine: the VM stage's logs are kept in $ROOT.vm-results" >&2
  fi
  rm -rf --one-file-system "$ROOT" "$ROOT.bootstrap.log" "$ROOT.mntns"
}

stop_machine() {  # end whatever still runs in the machine's mount namespace
  local ns n=0 i
  ns=$(cat "$ROOT.mntns" 2>/dev/null) || return 0
  # never the host's own namespace (that would be every process of this machine)
  if [ "$ns" = "$(readlink /proc/self/ns/mnt)" ]; then
    rm -f "$ROOT.mntns"
    return 0
  fi
  # Python (pytest) gets SIGINT: on KeyboardInterrupt it tears its fixtures down (sandboxes, and
  # cgroups on the shared /sys). The shells and makes around it are killed at once, or they
  # would start the next stage; whatever is left after 15 s is killed too.
  n=$(($(signal_ns "$ns" INT 'python*') + $(signal_ns "$ns" KILL '!python*')))
  for i in $(seq 30); do
    [ "$(signal_ns "$ns" 0 '*')" -eq 0 ] && break
    sleep 0.5
  done
  for i in 1 2 3; do  # again: a process may have forked meanwhile
    [ "$(signal_ns "$ns" KILL '*')" -eq 0 ] && break
    sleep 0.5
  done
  [ "$n" -eq 0 ] || log "ended $n processes still running in the fresh root"
  rm -f "$ROOT.mntns"
}

signal_ns() {  # signal_ns NS SIG COMM: SIG to the processes in mount namespace NS whose command
  # name matches the glob COMM ('!GLOB': does not match); prints how many got it
  local p n=0 comm
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$1" ] || continue
    comm=$(cat "$p/comm" 2>/dev/null) || continue
    # shellcheck disable=SC2053 # a glob on purpose
    if [[ $3 == !* ]]; then [[ $comm != ${3#!} ]] || continue; else [[ $comm == $3 ]] || continue; fi
    kill -s "$2" "${p#/proc/}" 2>/dev/null && n=$((n + 1))
  done
  echo "$n"
}

# ---- in the private mount namespace (as root, before the chroot) ------------------------------

enter() {
  local root=$1 host_ns=$2 path vars=()
  [ "$(readlink /proc/self/ns/mnt)" != "$host_ns" ] ||
    die "--enter runs only in the private mount namespace that the script makes"
  readlink /proc/self/ns/mnt >"$root.mntns"  # for stop_machine
  mount --bind "$root" "$root"
  mount --rbind /proc "$root/proc"
  mount --rbind /sys "$root/sys"
  mount --rbind /dev "$root/dev"
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"

  # This machine's registry settings: apt, DNS, CA certificates, pip. /etc/apt is a copy, not
  # a read-only bind: packages write there as they install (postgresql-common's postinst adds
  # apt.conf.d/02autoremove-postgresql), as on any machine.
  rm -rf "$root/etc/apt" && cp -a /etc/apt "$root/etc/apt"
  carry /etc/resolv.conf "$root/etc/resolv.conf"
  [ -d /usr/local/share/ca-certificates ] &&
    carry /usr/local/share/ca-certificates "$root/usr/local/share/ca-certificates"
  for path in /etc/pip.conf /etc/xdg/pip; do
    [ -e "$path" ] && carry "$path" "$root$path"
  done
  for path in "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
    [ -f "$path" ] && carry "$path" "$root/root${path#"$HOME"}"
  done
  while read -r path; do
    [ -e "$root$path" ] || carry "$path" "$root$path"
  done < <(named_paths)
  mapfile -t vars < <(env | grep -E "$CARRY_RE" || true)

  cd "$root"
  mount --move . /
  exec chroot . /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb "${vars[@]}" \
    /bin/bash -c "$(declare -p DEV CARRY_RE; declare -f log machine step as_dev); machine"
}

carry() {  # carry SRC DST: bind SRC read-only at DST (created as an empty file or directory)
  if [ -d "$1" ]; then mkdir -p "$2"; else mkdir -p "$(dirname "$2")"; [ -e "$2" ] || : >"$2"; fi
  mount --bind "$1" "$2"
  mount -o remount,bind,ro "$2"
}

named_paths() {  # local paths named by the apt sources and pip settings (files and PIP_*)
  set +e  # a missing settings file is no error (this runs in its own process)
  {
    sed -n 's/^[[:space:]]*Signed-By:[[:space:]]*//p; s/.*\[[^]]*signed-by=\([^] ]*\).*/\1/p' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
      2>/dev/null
    cat /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf" \
      2>/dev/null | sed -n 's/^[^#;=]*=//p'
    env | sed -n 's/^\(PIP_[A-Z_]*\|SSL_CERT_FILE\|SSL_CERT_DIR\|REQUESTS_CA_BUNDLE\|CURL_CA_BUNDLE\|NODE_EXTRA_CA_CERTS\)=//p'
  } | tr ' \t' '\n\n' | sed 's#^file://##; s#/*$##' | grep '^/' | while read -r p; do
    # a local index (.../simple) links to files beside it: carry its whole repository
    [ "${p##*/}" = simple ] && p=${p%/simple}
    [ -e "$p" ] && echo "$p"
  done | sort -u
}

# ---- in the fresh root (as its root user) ------------------------------------------------------

machine() {
  set -uo pipefail
  local names=() rcs=() secs=() total i status=0
  export DEV CARRY_RE
  export -f as_dev
  cd /
  # The admin's part of this machine's environment: the local CA certificates into the bundle.
  if [ -n "$(ls -A /usr/local/share/ca-certificates 2>/dev/null)" ]; then
    update-ca-certificates >/dev/null 2>&1 || log "update-ca-certificates failed"
  fi
  git -c advice.detachedHead=false clone -q /srv/isol8.git /root/isol8 &&
    useradd --create-home --shell /bin/bash "$DEV" &&
    git -c advice.detachedHead=false clone -q /srv/isol8.git "/home/$DEV/isol8" &&
    chown -R "$DEV:" "/home/$DEV/isol8" || { log "could not prepare the clones"; return 1; }

  # An unprivileged user who runs `make run` before the admin did is told the exact command.
  step "user make run, before the admin step" bash -c '
    out=$(as_dev "cd ~/isol8 && make run" 2>&1) && { echo "$out"; echo "expected a failure"; exit 1; }
    echo "$out" | grep -E "^ +sudo " || { echo "$out"; echo "no command printed"; exit 1; }'
  step "admin: ./scripts/system-deps.sh" bash -c 'cd /root/isol8 && ./scripts/system-deps.sh'
  step "user make run" bash -c 'set -o pipefail; as_dev "cd ~/isol8 && make run" |
    tee /tmp/user-run.out && [ "$(tail -n1 /tmp/user-run.out)" = 256 ]'
  step "root make run" bash -c 'set -o pipefail; cd /root/isol8 && make run |
    tee /tmp/root-run.out && [ "$(tail -n1 /tmp/root-run.out)" = 256 ]'
  # Root's `make test` without its rootless stage (the suite as the system user isol8-ci): the
  # step after it runs the same suite unprivileged, as a real user from that user's own clone,
  # so a second unprivileged pass would only add ten minutes.
  step "root make test" bash -c 'set -o pipefail; cd /root/isol8 &&
    ISOL8_SKIP_ROOTLESS=1 make test 2>&1 | tee /tmp/make-test.out'
  # The unprivileged user's own `make test` (its one stage: the suite as that user), now that
  # root's `make test` has installed the test packages as an admin would.
  step "user make test" bash -c 'set -o pipefail; as_dev "cd ~/isol8 && make test" 2>&1 |
    tee /tmp/user-test.out'

  echo "== fresh-machine summary ($(python3 --version), node $(node --version 2>/dev/null ||
    echo missing), git $(git --version | cut -d' ' -f3))"
  for i in "${!names[@]}"; do
    [ "${rcs[$i]}" -eq 0 ] || status=1
    printf '  %-40s %-16s %5s s\n' "${names[$i]}" \
      "$([ "${rcs[$i]}" -eq 0 ] && echo ok || echo "FAILED (exit ${rcs[$i]})")" "${secs[$i]}"
  done
  # Both runs' totals in one closing line; a run that printed none counts as one failure.
  for i in /tmp/make-test.out /tmp/user-test.out; do
    grep -E '^total: [0-9]+ passed, [0-9]+ failed' "$i" 2>/dev/null | tail -n1 | grep . ||
      echo "total: 0 passed, 1 failed, 0 skipped"
  done | awk '{p += $2; f += $4; s += $6} END {print "total: " p " passed, " f " failed, " s " skipped"}'
  return $status
}

step() {  # step NAME CMD...: runs CMD, records its status and time
  local name=$1 t0 rc=0
  shift
  echo "== fresh-machine: $name"
  t0=$(date +%s)
  "$@" || rc=$?
  names+=("$name") rcs+=("$rc") secs+=("$(($(date +%s) - t0))")
  log "$name: $([ "$rc" -eq 0 ] && echo ok || echo "FAILED (exit $rc)") in ${secs[-1]} s"
}

as_dev() {  # as_dev SCRIPT: the unprivileged user's shell, with a login's clean environment
  local vars=()
  mapfile -t vars < <(env | grep -E "$CARRY_RE" || true)
  setpriv --reuid="$DEV" --regid="$DEV" --init-groups -- \
    env -i HOME="/home/$DEV" USER="$DEV" LOGNAME="$DEV" PATH=/usr/local/bin:/usr/bin:/bin \
    LANG=C.UTF-8 TERM=dumb "${vars[@]}" bash -c "$1"
}

case ${1:-} in
  --enter) shift; enter "$@" ;;
  "") host ;;
  *) echo "usage: scripts/fresh-machine.sh  (as root; ISOL8_FRESH_SRC=REPO to test another clone)" >&2
     exit 2 ;;
esac
