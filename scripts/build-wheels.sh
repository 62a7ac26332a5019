#!/usr/bin/env bash
# Builds the release files of the last commit into dist/: the sdist, from a clean checkout of
# HEAD (a working tree's leftovers, such as an old isol8.egg-info/SOURCES.txt, which setuptools
# reads back, or the helper `make build` left, must not leak into it), then from the sdist, as pip
# would build it, one wheel per architecture, x86_64 and aarch64, each carrying a static helper
# and tagged manylinux_2_17_<arch>.manylinux2014_<arch> (setup.py says why that tag is honest).
#   scripts/build-wheels.sh            with .venv/bin/python (its test extra has setuptools and
#                                      build: no build isolation, nothing downloaded)
#   PYTHON=/path/to/python scripts/build-wheels.sh
# No Docker: the helper is static, so the other architecture's wheel needs only Debian's cross
# compiler (installed here through scripts/system-deps.sh, as root), and its ELF header, not the
# build machine, decides the tag. ISOL8_REQUIRE_STATIC=1 makes a failed static link fail the
# build instead of putting a dynamic helper into a wheel. tests/test_wheel.py checks the wheels'
# helpers (static, right machine) and runs the aarch64 one under qemu-user.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
py=${PYTHON:-.venv/bin/python}
native=$(uname -m)
declare -A cc=([x86_64]=x86_64-linux-gnu-gcc [aarch64]=aarch64-linux-gnu-gcc)
declare -A cross_pkgs=([x86_64]="gcc-x86-64-linux-gnu libc6-dev-amd64-cross"
                       [aarch64]="gcc-aarch64-linux-gnu libc6-dev-arm64-cross")
[ -n "${cc[$native]:-}" ] || { echo "build-wheels: unsupported build machine $native" >&2; exit 1; }
other=$([ "$native" = x86_64 ] && echo aarch64 || echo x86_64)
# shellcheck disable=SC2086  # the package list is meant to split
./scripts/system-deps.sh ${cross_pkgs[$other]}
cc[$native]=${CC:-cc}

version=$(git show HEAD:pyproject.toml |
  "$py" -c 'import sys, tomllib; print(tomllib.load(sys.stdin.buffer)["project"]["version"])')
mkdir -p dist
rm -f dist/isol8-"$version".tar.gz dist/isol8-"$version"-*.whl
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export ISOL8_REQUIRE_STATIC=1
dirty=$(git diff --quiet HEAD || echo " (uncommitted changes left out)")
echo "build-wheels: commit $(git rev-parse --short HEAD)$dirty"
mkdir "$work/checkout"
git archive HEAD | tar -x -C "$work/checkout"
"$py" -m build --no-isolation --sdist --outdir dist "$work/checkout"
tar -xzf dist/isol8-"$version".tar.gz -C "$work"
for arch in x86_64 aarch64; do
  # A fresh tree per architecture: setuptools' build/ directory is named after the build
  # machine, not the target, so a second build would reuse the first one's files.
  rm -rf "$work/$arch" && cp -r "$work/isol8-$version" "$work/$arch"
  CC=${cc[$arch]} "$py" -m build --no-isolation --wheel --outdir dist \
    -C--build-option=--plat-name=manylinux_2_17_"$arch" "$work/$arch"
done
ls -l dist/isol8-"$version"*
