#!/usr/bin/env bash
# A throw-away qemu TCG (software-emulated) VM with a real cgroup v2 hierarchy, for tests that
# the host's cgroup setup cannot run. Debian's kernel is downloaded, never installed (installing
# it pulls udev, which rewrites /dev permissions); a busybox initramfs mounts the host / read-only
# over 9p with a tmpfs overlay (guest writes are discarded at power-off) and cgroup2 with
# nsdelegate at /sys/fs/cgroup.
#   tcgvm.sh setup     idempotent; caches about 45 MB in ${TCGVM_DIR:-~/.cache/tcgvm}
#   tcgvm.sh run [--results DIR] [--mem 1G] [--cpus 2] [--timeout S] [-e NAME[=VAL]] -- CMD...
#       runs CMD as root in the guest (cwd and environment: see below); exits with CMD's status,
#       124 on timeout, 125 if the guest never reported one (qemu, boot or mount failure).
# The guest command gets `env -i` plus PATH, HOME=/root, LANG=C.UTF-8, TERM=dumb, TCGVM_GUEST=1
# and each -e; it starts in the caller's cwd (host paths are the same in the guest). DIR is a
# writable host directory shared at the same path; the console (stdout) is slow (~230 KB/s):
# write bulky output into DIR.
set -euo pipefail
DIR=${TCGVM_DIR:-${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}/.cache/tcgvm}
SELF=$(readlink -f "${BASH_SOURCE[0]}")
PKGS=(qemu-system-x86 busybox-static cpio kmod xz-utils)
MODULES=(virtio_pci 9pnet_virtio 9p overlay)
die() { echo "tcgvm: $*" >&2; exit 125; }
usage() {
  echo "usage: tcgvm.sh setup" >&2
  echo "       tcgvm.sh run [--results DIR] [--mem 1G] [--cpus 2] [--timeout S] [-e NAME[=VAL]] -- CMD..." >&2
  exit 2
}

kernel_pkg() {  # linux-image-6.1.0-NN-amd64 today; TCGVM_KERNEL_PKG pins it
  [ -n "${TCGVM_KERNEL_PKG:-}" ] && { echo "$TCGVM_KERNEL_PKG"; return; }
  apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1
}

setup() {
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  flock 9
  local missing=() p
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "missing packages: ${missing[*]} (install them as root)"
    echo "tcgvm: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    local install=(apt-get install -y -qq --no-install-recommends "${missing[@]}")
    "${install[@]}" >/dev/null 2>&1 || { apt-get update -qq && "${install[@]}" >/dev/null; }
  fi
  local pkg
  pkg=$(kernel_pkg)
  if [ -z "$pkg" ]; then  # no package lists yet, or stale ones
    apt-get update -qq >/dev/null 2>&1 || true
    pkg=$(kernel_pkg)
  fi
  if [ -z "$pkg" ]; then  # offline: keep whatever kernel is cached
    [ -f "$DIR/current" ] && [ -f "$DIR/$(cat "$DIR/current")/.ok" ] ||
      die "cannot resolve the kernel package from linux-image-amd64"
    pkg=$(cat "$DIR/current")
  fi
  if [ ! -f "$DIR/$pkg/.ok" ]; then
    local tmp
    tmp=$(mktemp -d "$DIR/.build.XXXXXX")
    # shellcheck disable=SC2064 # expanded now, on purpose
    trap "rm -rf '$tmp'" EXIT
    echo "tcgvm: fetching $pkg" >&2
    if ! download "$pkg" "$tmp"; then  # stale lists: the ABI left the mirror
      apt-get update -qq >/dev/null 2>&1 || true
      [ -n "${TCGVM_KERNEL_PKG:-}" ] || pkg=$(kernel_pkg)
      download "$pkg" "$tmp" || die "apt-get download $pkg failed"
    fi
    [ -f "$DIR/$pkg/.ok" ] || unpack_kernel "$pkg" "$tmp"
    rm -rf "$tmp"
    trap - EXIT
  fi
  local cpio="$DIR/$pkg/initramfs.cpio"
  if [ ! -s "$cpio" ] || [ "$SELF" -nt "$cpio" ]; then build_initramfs "$DIR/$pkg"; fi
  echo "$pkg" >"$DIR/current.tmp" && mv "$DIR/current.tmp" "$DIR/current"
  for p in "$DIR"/linux-image-*; do  # prune older ABIs
    [ -d "$p" ] && [ "${p##*/}" != "$pkg" ] && rm -rf "$p"
  done
  return 0
}

download() {  # download PKG DIR: the .deb only, never installed (see the header)
  (cd "$2" && apt-get -q -o APT::Sandbox::User=root download "$1" >/dev/null 2>&1)
}

unpack_kernel() {  # unpack privately: vmlinux (PVH) or vmlinuz, the 9p/overlay modules
  local pkg=$1 tmp=$2 out deb kver m n=0
  deb=$(ls "$tmp"/*.deb)
  mkdir "$tmp/root"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp/root" --wildcards './boot/*' \
    './lib/modules/*' './usr/lib/modules/*' 2>/dev/null || true  # 400 MB for ~5 s
  rm -f "$deb"
  [ -d "$tmp/root/lib/modules" ] ||
    { mkdir -p "$tmp/root/lib" && ln -s ../usr/lib/modules "$tmp/root/lib/modules"; }
  kver=$(ls "$tmp/root/lib/modules/" | head -n1)
  [ -n "$kver" ] && [ -f "$tmp/root/boot/vmlinuz-$kver" ] || die "unexpected layout in $pkg"
  depmod -b "$tmp/root" "$kver"  # the .deb ships no modules.dep
  out="$tmp/out"
  mkdir -p "$out/modules"
  for m in $(modprobe -a -d "$tmp/root" -S "$kver" --show-depends "${MODULES[@]}" |
             awk '$1 == "insmod" && !seen[$2]++ {print $2}'); do  # in load order
    n=$((n + 1))
    local name
    name=$(printf '%02d-%s' "$n" "${m##*/}")
    case $m in
      *.ko.xz) xz -dc "$m" >"$out/modules/${name%.xz}" ;;
      *.ko.zst) zstd -qdc "$m" >"$out/modules/${name%.zst}" ;;
      *) cp "$m" "$out/modules/$name" ;;
    esac
  done
  [ "$n" -gt 0 ] || die "no modules found for ${MODULES[*]}"
  cp "$tmp/root/boot/vmlinuz-$kver" "$out/vmlinuz"
  echo "$kver" >"$out/kver"
  # Unpacking the xz bzImage costs ~3 s of every TCG boot: extract the ELF vmlinux once and boot
  # it through its PVH entry point; fall back to the bzImage without xz payload or PVH.
  local off
  off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$out/vmlinuz" | head -n1 | cut -d: -f1 || true)
  if [ -n "$off" ] && grep -qx 'CONFIG_PVH=y' "$tmp/root/boot/config-$kver" &&
     { tail -c +$((off + 1)) "$out/vmlinuz" || true; } |
       xz -dc --single-stream >"$out/vmlinux" 2>/dev/null &&
     [ "$(head -c4 "$out/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ]; then
    echo vmlinux >"$out/boot"
  else
    rm -f "$out/vmlinux"
    echo vmlinuz >"$out/boot"
  fi
  touch "$out/.ok"
  rm -rf "${DIR:?}/$pkg"
  mv "$out" "$DIR/$pkg"
}

build_initramfs() {  # uncompressed newc cpio: static busybox, the modules, /init (~3 MB, 0.1 s)
  local kdir=$1 tmp
  tmp=$(mktemp -d "$DIR/.initramfs.XXXXXX")
  mkdir -p "$tmp/bin" "$tmp/dev" "$tmp/proc" "$tmp/sys" "$tmp/modules"
  cp /bin/busybox "$tmp/bin/busybox"
  cp "$kdir"/modules/*.ko "$tmp/modules/"
  cat >"$tmp/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
exec </dev/null >/dev/console 2>&1
fail() { echo "tcgvm guest: $*"; sync; poweroff -f; }
stty -onlcr </dev/console 2>/dev/null
mount -t proc proc /proc && mount -t sysfs sysfs /sys || fail "proc/sysfs"
for m in /modules/*.ko; do insmod "$m" || fail "insmod $m"; done
results=
for w in $(cat /proc/cmdline); do case $w in tcgvm.results=*) results=${w#*=} ;; esac; done
p9=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /host /rw /newroot
mount -t 9p -o "$p9,ro,cache=loose" host /host || fail "9p host"
mount -t tmpfs -o mode=0755 tmpfs /rw && mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
  fail overlay
r=/newroot
mount -t proc proc $r/proc && mount -t sysfs sysfs $r/sys || fail "proc/sysfs in root"
mount -t cgroup2 -o nsdelegate cgroup2 $r/sys/fs/cgroup || fail cgroup2
mount -t devtmpfs devtmpfs $r/dev || fail devtmpfs
mkdir -p $r/dev/pts $r/dev/shm $r/run
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts $r/dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $r/dev/shm
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs $r/run
ln -sfn /proc/self/fd $r/dev/fd; ln -sf /proc/self/fd/0 $r/dev/stdin
ln -sf /proc/self/fd/1 $r/dev/stdout; ln -sf /proc/self/fd/2 $r/dev/stderr
[ -n "$results" ] && mkdir -p "$r$results" && mount -t 9p -o "$p9" results "$r$results" ||
  fail "9p results"
ip link set lo up
hostname tcgvm
# Move the new root over / as switch_root does: a plain chroot would leave the command
# "chrooted", where the kernel refuses CLONE_NEWUSER. This shell keeps the initramfs as its root.
cd $r && mount --move . / || fail "mount --move"
chroot . /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root LANG=C.UTF-8 TERM=dumb TCGVM_GUEST=1 /bin/bash "$results/.tcgvm-cmd"
echo $? >".$results/.tcgvm-rc"
sync
echo 0 >/proc/sys/kernel/printk  # no "reboot: Power down" line
poweroff -f
INIT
  chmod 755 "$tmp/init"
  (cd "$tmp" && find . -mindepth 1 | cpio -o -H newc --quiet -R 0:0) >"$kdir/initramfs.cpio.tmp"
  mv "$kdir/initramfs.cpio.tmp" "$kdir/initramfs.cpio"
  rm -rf "$tmp"
}

run() {
  local results="" mem=1G cpus=2 timeout=900 envs=() own=0
  while [ $# -gt 0 ]; do
    case $1 in
      --results) results=$2; shift 2 ;;
      --mem) mem=$2; shift 2 ;;
      --cpus) cpus=$2; shift 2 ;;
      --timeout) timeout=$2; shift 2 ;;
      -e) envs+=("$2"); shift 2 ;;
      --) shift; break ;;
      *) usage ;;
    esac
  done
  [ $# -gt 0 ] || die "run: no command"
  [ -f "$DIR/current" ] || die "not set up: run 'tcgvm.sh setup' first"
  local kdir
  kdir="$DIR/$(cat "$DIR/current")"
  [ -f "$kdir/.ok" ] && [ -s "$kdir/initramfs.cpio" ] || die "incomplete cache in $kdir: run setup"
  if [ -z "$results" ]; then results=$(mktemp -d /var/tmp/tcgvm-results.XXXXXX); own=1; fi
  mkdir -p "$results"
  results=$(cd "$results" && pwd -P)
  case $results in  # it goes on the kernel command line and into qemu's option syntax
    *[[:space:],]*) die "the results path may not contain whitespace or commas: $results" ;;
  esac
  local cmdfile="$results/.tcgvm-cmd" e
  {
    echo "# written by tcgvm.sh run"
    for e in "${envs[@]}"; do
      if [[ $e == *=* ]]; then printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"
      elif [ -n "${!e+x}" ]; then printf 'export %s=%q\n' "$e" "${!e}"; fi
    done
    printf 'cd -- %q || exit 125\n' "$PWD"
    printf 'exec'; printf ' %q' "$@"; printf '\n'
  } >"$cmdfile"
  rm -f "$results/.tcgvm-rc"
  local qpid st=0 interrupted=0
  timeout -k 10 "$timeout" qemu-system-x86_64 -accel tcg,thread=multi -M q35 -cpu max \
    -smp "$cpus" -m "$mem" -nodefaults -no-user-config -display none -no-reboot -serial stdio \
    -kernel "$kdir/$(cat "$kdir/boot")" -initrd "$kdir/initramfs.cpio" \
    -append "console=ttyS0 quiet loglevel=1 panic=-1 mitigations=off tcgvm.results=$results" \
    -fsdev local,id=host,path=/,security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=host,mount_tag=host \
    -fsdev "local,id=res,path=$results,security_model=none,multidevs=remap" \
    -device virtio-9p-pci,fsdev=res,mount_tag=results </dev/null &
  qpid=$!
  trap 'kill -TERM $qpid 2>/dev/null; interrupted=1' INT TERM HUP
  while :; do
    wait "$qpid" && st=0 || st=$?
    kill -0 "$qpid" 2>/dev/null || break  # a trapped signal interrupted wait: wait again
  done
  trap - INT TERM HUP
  if [ "$interrupted" -eq 1 ]; then
    echo "tcgvm: interrupted" >&2; st=130
  elif [ "$st" -eq 124 ] || [ "$st" -eq 137 ]; then
    echo "tcgvm: timed out after ${timeout}s" >&2; st=124
  elif [[ $(cat "$results/.tcgvm-rc" 2>/dev/null) =~ ^[0-9]{1,3}$ ]]; then
    st=$(cat "$results/.tcgvm-rc")
  else
    echo "tcgvm: the guest reported no exit status (qemu exit $st)" >&2; st=125
  fi
  [ "$own" -eq 1 ] && rm -rf "$results"
  return "$st"
}

case ${1:-} in
  setup) shift; setup "$@" ;;
  run) shift; run "$@" ;;
  *) usage ;;
esac
