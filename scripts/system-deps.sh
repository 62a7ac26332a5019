#!/usr/bin/env bash
# Installs the system packages isol8 needs, only when missing (idempotent, Debian/Ubuntu).
#   build: gcc and libc headers for the helper; python3-venv for the project's venv
#   run:   libseccomp2 (loaded through cffi in ABI mode: no -dev package needed)
#   extra packages to ensure can be passed as arguments (the benchmark adds bubblewrap).
set -euo pipefail
need=(gcc libc6-dev python3-venv libseccomp2 "$@")
missing=()
for pkg in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "isol8: missing system packages: ${missing[*]} (install them as root)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
