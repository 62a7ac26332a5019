#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages isol8 needs, only those missing (idempotent).
#   system-deps.sh           what `make run` needs:
#                            gcc, libc6-dev  build the helper (static when libc.a is there)
#                            python3-venv    the project's venv
#                            libseccomp2     loaded through ctypes (no -dev package)
#   system-deps.sh --test    also what `make test` needs. Sandboxes run on the host's rootfs, so
#                            every program a test runs inside one must be installed on the host:
#                            nodejs          the node runtime (Debian's 18 or a newer one)
#                            mount           mount(8)/umount(8), which the escape tests try
#                            procps          ps, which the process-isolation tests read
#                            git             run inside mounted repositories
#                            passwd          useradd: the rootless stage's user (scripts/test.sh)
#                            netbase         /etc/services and protocols, which the synthesized
#                                            /etc is compared with
#                            fontconfig      fc-match (with the font it depends on), for the
#                                            sandbox's view of the host's fonts
#                            python3-requests the HTTP client agents use most, fetched through
#                                            the filtered network's proxy
#                            openssl         the test certificate of the TLS pass-through tests
#                            curl            the client most agents' shell commands use, through
#                                            the filtered network's proxy and its capture
#                            mmdebstrap      builds the image recipes (isol8 image build)
#                            uidmap          newuidmap/newgidmap: rootless unshare-mode builds
#                            fakechroot, fakeroot  rootless builds without a subuid range
#                            gcc-aarch64-linux-gnu, libc6-dev-arm64-cross  the aarch64 wheel's
#                                            static helper (tests/test_wheel.py, make wheels)
#                            qemu-user       runs that helper for its smoke test
#                            python3-pip, npm  install_packages' managers on the host rootfs
#                                            (a fresh Debian has neither)
#                            haproxy, postgresql  the balancer and the shared key store of the
#                                            multi-node tests (each test starts its own)
#   system-deps.sh [--test] PKG...   and these too (the benchmark adds bubblewrap)
# As root it runs apt-get with its output in $ISOL8_APT_LOG (default
# /var/log/isol8-system-deps.log), printed whole if apt-get fails; on success one line says what
# was installed and how long it took. As any other user it installs nothing: it names the missing
# packages and prints the exact command an admin runs, then fails.
# The VM stage's packages (qemu, busybox...) are installed by scripts/tcgvm.sh setup.
set -euo pipefail
need=(gcc libc6-dev python3-venv libseccomp2)
args=("$@")
if [ "${1:-}" = --test ]; then
  need+=(nodejs mount procps git passwd netbase fontconfig python3-requests openssl curl
        mmdebstrap uidmap fakechroot fakeroot gcc-aarch64-linux-gnu libc6-dev-arm64-cross
        qemu-user python3-pip npm haproxy postgresql)
  shift
fi
need+=("$@")

missing=()
for pkg in "${need[@]}"; do
  # NodeSource's nodejs carries its own npm and conflicts with Debian's: the command is enough.
  if [ "$pkg" = npm ] && command -v npm >/dev/null; then continue; fi
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  self=$0
  [[ $self == */* ]] || self=./$self
  {
    echo "isol8: missing system packages: ${missing[*]}"
    echo "isol8: installing them needs root; run:"
    printf '    sudo %q' "$self"; [ ${#args[@]} -eq 0 ] || printf ' %q' "${args[@]}"; echo
    echo "isol8: or install just these:"
    echo "    sudo apt-get install -y --no-install-recommends ${missing[*]}"
  } >&2
  exit 1
fi

log=${ISOL8_APT_LOG:-/var/log/isol8-system-deps.log}
: >"$log"
export DEBIAN_FRONTEND=noninteractive
apt=(apt-get -o DPkg::Lock::Timeout=300)  # wait for another apt-get rather than fail
install=("${apt[@]}" install -y --no-install-recommends "${missing[@]}")
installed() { dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" {print $2}' | sort; }
fail() {
  cat "$log" >&2
  echo "isol8: $1 failed (the full apt log above is kept in $log)" >&2
  exit 1
}

t0=$(date +%s)
before=$(installed)
# Package lists are needed once: a fresh root has none (update first); stale ones show up as a
# failed install (update, then retry).
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
  "${apt[@]}" update >>"$log" 2>&1 || fail "apt-get update"
  "${install[@]}" >>"$log" 2>&1 || fail "apt-get install ${missing[*]}"
elif ! "${install[@]}" >>"$log" 2>&1; then
  "${apt[@]}" update >>"$log" 2>&1 || fail "apt-get update"
  "${install[@]}" >>"$log" 2>&1 || fail "apt-get install ${missing[*]}"
fi
added=$(comm -13 <(echo "$before") <(installed) | wc -l)
echo "isol8: installed ${missing[*]} ($added packages with their dependencies)" \
  "in $(($(date +%s) - t0)) s; apt log: $log"
