#!/usr/bin/env bash
# scripts/vm/build.sh - prepare everything scripts/vm/run.sh needs to boot a test VM.
#
# Usage: scripts/vm/build.sh [--refresh] [--force] [--quiet]
#
#   --refresh  re-resolve the newest Debian linux-image-6.1.0-*-amd64 (normally the
#              version recorded in the stamp is reused, so a warm run does no apt work)
#   --force    rebuild the initramfs and re-check packages even if the stamp is current
#   --quiet    print nothing on success
#
# What it does (idempotent; a second run with everything cached returns in a few ms):
#   1. apt-get installs what is missing of: qemu-system-x86 busybox-static lvm2
#      thin-provisioning-tools e2fsprogs xfsprogs btrfs-progs kmod cpio xz-utils
#      (apt-get update only when an install or download needs it).
#   2. Fetches the kernel package the `linux-image-amd64` metapackage depends on
#      (a Debian 6.1 kernel) with `apt-get download`, unpacks it with `dpkg-deb -x`
#      into the cache and runs `depmod -b` on the unpacked tree. Nothing is installed
#      into /boot or the host's /lib/modules.
#   3. Builds an initramfs: static busybox + the virtio/9p/overlay and dm-mod/
#      dm-thin-pool/dm-snapshot/loop modules (with their dependencies, resolved through
#      modules.dep) + an /init that mounts the host's / (virtio-9p, read-only) under a
#      tmpfs overlay, mounts the run dir and the working directory, and switch_roots
#      into it to run scripts/vm/guest-init.sh.
#   4. Writes "$CACHE/stamp" (a sourceable file with the paths run.sh needs).
#
# Cache dir: ${TOPOLVM_VM_CACHE:-/var/cache/topolvm-rs/vm}
set -euo pipefail

CACHE=${TOPOLVM_VM_CACHE:-/var/cache/topolvm-rs/vm}
SELF=$(readlink -f "${BASH_SOURCE[0]}")
STAMP=$CACHE/stamp

REFRESH=0 FORCE=0 QUIET=0
for arg in "$@"; do
    case $arg in
        --refresh) REFRESH=1 ;;
        --force) FORCE=1 ;;
        --quiet) QUIET=1 ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"; exit 0 ;;
        *) echo "build.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

log() { [[ $QUIET == 1 ]] || echo "build.sh: $*" >&2; }
die() { echo "build.sh: error: $*" >&2; exit 1; }

# Packages (and one command each provides, for the cheap warm check).
PACKAGES=(qemu-system-x86 busybox-static lvm2 thin-provisioning-tools e2fsprogs xfsprogs btrfs-progs kmod cpio xz-utils)
COMMANDS=(qemu-system-x86_64 busybox lvm thin_check mkfs.ext4 mkfs.xfs mkfs.btrfs modprobe depmod cpio xz)
# Modules put into the initramfs and loaded by /init (dependencies are added).
INITRD_MODULES=(virtio_pci virtio_blk virtio_console virtio_rng 9pnet_virtio 9p overlay
    dm-mod dm-thin-pool dm-snapshot loop)

# The key changes whenever this script changes (the /init it writes is embedded below).
KEY=$(sha256sum "$SELF")
KEY=${KEY%% *}

# ---- warm path: nothing to do ------------------------------------------------------
warm_ok() {
    [[ -f $STAMP ]] || return 1
    local VM_KEY='' VM_BOOTIMG='' VM_INITRD='' VM_MODDIR=''
    # shellcheck source=/dev/null
    source "$STAMP" || return 1
    [[ $VM_KEY == "$KEY" && -f $VM_BOOTIMG && -f $VM_INITRD && -f $VM_MODDIR/modules.dep ]] || return 1
    local c
    for c in "${COMMANDS[@]}"; do
        command -v "$c" >/dev/null 2>&1 || [[ -x /usr/sbin/$c || -x /sbin/$c ]] || return 1
    done
}
if [[ $REFRESH == 0 && $FORCE == 0 ]] && warm_ok; then
    exit 0
fi

# ---- cold path, serialized between concurrent callers ------------------------------
[[ $(id -u) == 0 ]] || die "must run as root (apt-get, cache in $CACHE)"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
# Somebody else may have finished the work while we waited for the lock.
if [[ $REFRESH == 0 && $FORCE == 0 ]] && warm_ok; then
    exit 0
fi
export PATH=$PATH:/usr/sbin:/sbin
export DEBIAN_FRONTEND=noninteractive

APT_UPDATED=0
apt_update() {
    if [[ $APT_UPDATED == 0 ]]; then
        log "apt-get update"
        apt-get update -qq >&2
        APT_UPDATED=1
    fi
}

# 1. packages
missing=()
for p in "${PACKAGES[@]}"; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [[ $st == installed ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    apt_update
    log "apt-get install ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
[[ -x /bin/busybox ]] || die "/bin/busybox missing after installing busybox-static"
file_is_static() { ! LC_ALL=C ldd "$1" >/dev/null 2>&1; }
file_is_static /bin/busybox || die "/bin/busybox is not static (busybox-static expected)"

# 2. kernel package
resolve_kernel() {
    local show dep
    show=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null || true)
    dep=$(sed -n 's/^Depends: *//p' <<<"$show" | tr ',' '\n' | grep -oE 'linux-image-6\.1\.0-[0-9]+-amd64( \(= [^)]*\))?' | head -n1 || true)
    if [[ -n $dep ]]; then
        KPKG=${dep%% *}
        KVERSION=$(sed -n 's/.*(= \(.*\))/\1/p' <<<"$dep")
        if [[ -z $KVERSION ]]; then
            KVERSION=$(apt-cache show --no-all-versions "$KPKG" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)
        fi
        return 0
    fi
    # Fallback: the highest-numbered 6.1.0 ABI among the packages apt knows.
    KPKG=$(apt-cache pkgnames linux-image-6.1.0- 2>/dev/null | grep -E '^linux-image-6\.1\.0-[0-9]+-amd64(-unsigned)?$' | sort -V | tail -n1 || true)
    [[ -n $KPKG ]] || return 1
    KVERSION=$(apt-cache show --no-all-versions "$KPKG" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)
    [[ -n $KVERSION ]]
}

KPKG='' KVERSION=''
if [[ $REFRESH == 0 && -f $STAMP ]]; then
    # Reuse the kernel recorded last time (only the initramfs or packages need work).
    KPKG=$(sed -n "s/^VM_KPKG='\(.*\)'$/\1/p" "$STAMP")
    KVERSION=$(sed -n "s/^VM_KVERSION='\(.*\)'$/\1/p" "$STAMP")
fi
if [[ -z $KPKG || -z $KVERSION ]]; then
    if ! resolve_kernel; then
        apt_update
        resolve_kernel || die "cannot find a linux-image-6.1.0-*-amd64 package in apt"
    fi
fi
KDIR=$CACHE/kernel/${KPKG}_${KVERSION}
if [[ ! -f $KDIR/.unpacked ]]; then
    log "fetching $KPKG=$KVERSION"
    dl=$CACHE/download
    rm -rf "$dl" "$KDIR"
    mkdir -p "$dl"
    fetch() { (cd "$dl" && apt-get download -qq -o APT::Sandbox::User=root "$KPKG=$KVERSION" >&2); }
    if ! fetch; then
        apt_update
        if ! fetch; then
            # The recorded version may have left the archive: resolve again.
            resolve_kernel || die "cannot resolve the kernel package"
            KDIR=$CACHE/kernel/${KPKG}_${KVERSION}
            fetch || die "apt-get download $KPKG=$KVERSION failed"
        fi
    fi
    deb=$(find "$dl" -maxdepth 1 -name '*.deb' | head -n1)
    [[ -n $deb ]] || die "apt-get download produced no .deb"
    mkdir -p "$KDIR.tmp"
    dpkg-deb -x "$deb" "$KDIR.tmp"
    kver=$(basename "$(find "$KDIR.tmp/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)")
    [[ -n $kver ]] || die "no lib/modules/<version> in $deb"
    depmod -b "$KDIR.tmp" "$kver"
    touch "$KDIR.tmp/.unpacked"
    rm -rf "$KDIR"
    mv "$KDIR.tmp" "$KDIR"
    rm -rf "$dl"
    # Drop kernels of older stamps.
    find "$CACHE/kernel" -mindepth 1 -maxdepth 1 ! -path "$KDIR" -exec rm -rf {} +
fi
KVER=$(basename "$(find "$KDIR/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)")
MODDIR=$KDIR/lib/modules/$KVER
VMLINUZ=$KDIR/boot/vmlinuz-$KVER
[[ -f $VMLINUZ ]] || die "no $VMLINUZ"
# The bzImage is xz-compressed, and decompressing it under TCG costs ~2.5 s per boot.
# qemu boots the uncompressed ELF vmlinux directly (PVH entry point, CONFIG_PVH=y), so
# extract it once (what the kernel's scripts/extract-vmlinux does).
VMLINUX=$KDIR/vmlinux
if [[ ! -f $VMLINUX ]]; then
    off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$VMLINUZ" | head -n1 | cut -d: -f1 || true)
    if [[ -n $off ]]; then
        tail -c +"$((off + 1))" "$VMLINUZ" | xz -dc 2>/dev/null >"$VMLINUX.tmp" || true
        if [[ $(head -c 4 "$VMLINUX.tmp" | od -An -c | tr -d ' ') == 177ELF ]]; then
            mv "$VMLINUX.tmp" "$VMLINUX"
        fi
    fi
    rm -f "$VMLINUX.tmp"
fi
# Boot image: the ELF if we have it, else the bzImage.
BOOTIMG=$VMLINUZ
[[ -f $VMLINUX ]] && BOOTIMG=$VMLINUX

# 3. initramfs
log "building initramfs for $KVER"
work=$(mktemp -d "$CACHE/initrd.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,dev,proc,sys,lower,upper,newroot,lib/modules}
cp /bin/busybox "$work/bin/busybox"
ln -s busybox "$work/bin/sh"
: >"$work/modules.load"
mapfile -t insmods < <(modprobe -d "$KDIR" -S "$KVER" -a --show-depends "${INITRD_MODULES[@]}" | awk '$1 == "insmod" {print $2}')
declare -A seen=()
for ko in "${insmods[@]}"; do
    [[ -n ${seen[$ko]:-} ]] && continue
    seen[$ko]=1
    rel=${ko#"$MODDIR"/}
    # CPU-specific soft dependencies (crc32c-intel needs SSE4.2, which -cpu qemu64 lacks).
    [[ $rel == kernel/arch/x86/crypto/* ]] && continue
    mkdir -p "$work/lib/modules/$(dirname "$rel")"
    cp "$ko" "$work/lib/modules/$rel"
    echo "/lib/modules/$rel" >>"$work/modules.load"
done
{
    # Values baked in at build time.
    printf 'KVER=%q\nMODDIR=%q\n' "$KVER" "$MODDIR"
} >"$work/build.conf"
cat >"$work/init" <<'INIT'
#!/bin/sh
# initramfs /init written by scripts/vm/build.sh (busybox sh, PID 1).
# Everything here runs from RAM (busybox applets), which is much faster under TCG than
# exec'ing host binaries over 9p, so as much of the set-up as possible is done here.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
. /build.conf
N=/newroot
R=$N/run/topolvm-vm
DEBUG=0
grep -q 'topolvm.debug=1' /proc/cmdline && DEBUG=1
mark() {
    [ $DEBUG = 1 ] || return 0
    local up
    if [ -e /proc/uptime ]; then read -r up _ </proc/uptime; else read -r up _ <$N/proc/uptime; fi
    echo "topolvm-vm init: $up $*" >/dev/console
}
fail() {
    echo "topolvm-vm init: $*" >/dev/console
    [ -d "$R" ] && echo "topolvm-vm init: $*" >"$R/setup-error" 2>/dev/null
    poweroff -f
}
while read -r m; do
    insmod "$m" || fail "insmod $m failed"
    mark "$m"
done </modules.load
mark "modules loaded"
MSIZE=512000
O9P="trans=virtio,version=9p2000.L,msize=$MSIZE"
mount -t 9p -o "$O9P,ro,cache=loose" hostroot /lower || fail "cannot mount the host root (9p tag hostroot)"
mount -t tmpfs -o mode=0755 tmpfs /upper || fail "tmpfs"
mkdir -p /upper/rw /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/rw,workdir=/upper/work overlay $N || fail "overlay mount failed"
mark "root overlay mounted"
mount -t devtmpfs devtmpfs $N/dev || fail "devtmpfs"
mount --move /proc $N/proc
mount --move /sys $N/sys
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs $N/run || fail "tmpfs /run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $N/tmp || fail "tmpfs /tmp"
mkdir -p $R
mount -t 9p -o "$O9P,cache=none" run $R || fail "cannot mount the run dir (9p tag run)"
[ -f $R/vm.conf ] && [ -f $R/guest-init.sh ] || fail "no vm.conf or guest-init.sh in the run dir"
. $R/vm.conf
mark "run dir mounted"
# /dev extras devtmpfs does not make
mkdir -p $N/dev/pts $N/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=000 devpts $N/dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $N/dev/shm
ln -s /proc/self/fd $N/dev/fd
ln -s /proc/self/fd/0 $N/dev/stdin
ln -s /proc/self/fd/1 $N/dev/stdout
ln -s /proc/self/fd/2 $N/dev/stderr
mount -t cgroup2 cgroup2 $N/sys/fs/cgroup 2>/dev/null
mkdir -p $N/run/lock $N/run/lvm $N/var/tmp
hostname topolvm-vm
ifconfig lo 127.0.0.1 up
# The guest kernel's modules (for on-demand loading by the host's kmod): the unpacked
# tree in the cache, seen through the host root.
mkdir -p "$N/lib/modules/$KVER"
mount --bind "$N$MODDIR" "$N/lib/modules/$KVER" || fail "bind-mount $MODDIR"
mark "modules bound"
echo /sbin/modprobe >$N/proc/sys/kernel/modprobe
# The caller's working directory, read-write at the same path.
mkdir -p "$N$CWD" 2>/dev/null
mount -t 9p -o "$O9P,cache=mmap" cwd "$N$CWD" || fail "cannot mount the working directory $CWD (9p tag cwd)"
mark "cwd mounted"
# Private lvm config (no udev, no lvmpolld, no dmeventd).
mkdir -p $N/etc/topolvm-vm
cp -r $R/lvm $N/etc/topolvm-vm/lvm || fail "cannot copy the lvm config"
[ -c $N/dev/mapper/control ] || fail "no /dev/mapper/control: device-mapper did not load"
mark "switch_root"
exec switch_root $N /bin/bash /run/topolvm-vm/guest-init.sh
fail "switch_root failed"
INIT
chmod 0755 "$work/init"
(cd "$work" && find . -mindepth 1 ! -name 'initramfs.*' | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -1 >"$work/initramfs.cpio.gz"
mv "$work/initramfs.cpio.gz" "$CACHE/initramfs.cpio.gz"

# 4. stamp
cat >"$STAMP.tmp" <<EOF
# written by scripts/vm/build.sh; sourced by scripts/vm/run.sh
VM_KEY='$KEY'
VM_KPKG='$KPKG'
VM_KVERSION='$KVERSION'
VM_KVER='$KVER'
VM_VMLINUZ='$VMLINUZ'
VM_BOOTIMG='$BOOTIMG'
VM_INITRD='$CACHE/initramfs.cpio.gz'
VM_MODDIR='$MODDIR'
EOF
mv "$STAMP.tmp" "$STAMP"
log "ready: $KPKG $KVERSION (kernel $KVER) in $CACHE"
