#!/usr/bin/env bash
# scripts/vm/run.sh - run one command as root inside a throw-away qemu VM (Debian 6.1
# kernel, software emulation) where device-mapper works: real LVM activation, thin pools,
# snapshots, /dev/VG/LV, mkfs and mount.
#
# Usage:
#   scripts/vm/run.sh [--disk SIZE]... [--mem MiB] [--cpus N] [--timeout SECS]
#                     [--env NAME[=VALUE]]... [--keep] -- CMD [ARGS...]
#
#   --disk SIZE      add a fresh sparse scratch disk (truncate(1) size: 1G, 512M, ...) as
#                    virtio-blk; repeatable. Guest paths are in $TOPOLVM_VM_DISKS
#                    (space-separated, in --disk order: /dev/vda /dev/vdb ...).
#   --mem MiB        guest memory (default 2048)
#   --cpus N         guest vCPUs (default 2)
#   --timeout SECS   kill the VM after SECS seconds, boot included (default 1200)
#   --env NAME       pass the caller's NAME into the guest (if set); NAME=VALUE sets it
#   --keep           keep the run dir (console log, outputs) and print its path
#
# Inside the guest CMD runs as root in the caller's working directory, which is shared
# read-write at the same path; the rest of the host's / is visible read-only under a
# tmpfs overlay (writes outside the working directory vanish with the VM). The
# environment is empty except PATH (the caller's), HOME=/root, the --env variables and
#   TOPOLVM_IN_VM=1, TOPOLVM_VM_DISKS="/dev/vda ...", LVM_SYSTEM_DIR=<guest lvm config:
#   no udev sync/rules, no lvmpolld, no dmeventd monitoring, no backups>.
# stdin is /dev/null. CMD's stdout and stderr are streamed to run.sh's stdout and stderr.
#
# Exit status: CMD's exit status; 124 if the VM hit --timeout; 125 if the VM failed to
# boot or crashed before CMD finished (a message and the tail of the kernel console log
# go to stderr in both cases); 2 for a usage error.
#
# Environment: TOPOLVM_VM_CACHE (cache dir, see build.sh), TOPOLVM_VM_DEBUG=1 (full
# kernel log on the console log instead of "quiet"), TMPDIR (where run dirs go).
#
# Example:
#   scripts/vm/run.sh --disk 1G -- sh -c 'pvcreate $TOPOLVM_VM_DISKS && vgcreate vg $TOPOLVM_VM_DISKS'
set -euo pipefail

HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
CACHE=${TOPOLVM_VM_CACHE:-/var/cache/topolvm-rs/vm}

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
}
die() { echo "run.sh: $*" >&2; exit 2; }

DISKS=() ENVS=() MEM=2048 CPUS=2 TIMEOUT=1200 KEEP=0
while (($#)); do
    case $1 in
        --disk) (($# >= 2)) || usage; DISKS+=("$2"); shift 2 ;;
        --disk=*) DISKS+=("${1#*=}"); shift ;;
        --mem) (($# >= 2)) || usage; MEM=$2; shift 2 ;;
        --mem=*) MEM=${1#*=}; shift ;;
        --cpus) (($# >= 2)) || usage; CPUS=$2; shift 2 ;;
        --cpus=*) CPUS=${1#*=}; shift ;;
        --timeout) (($# >= 2)) || usage; TIMEOUT=$2; shift 2 ;;
        --timeout=*) TIMEOUT=${1#*=}; shift ;;
        --env) (($# >= 2)) || usage; ENVS+=("$2"); shift 2 ;;
        --env=*) ENVS+=("${1#*=}"); shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        *) echo "run.sh: unexpected argument: $1 (put the command after --)" >&2; usage ;;
    esac
done
(($#)) || { echo "run.sh: no command given" >&2; usage; }
[[ $MEM =~ ^[0-9]+$ && $MEM -ge 256 ]] || die "--mem wants MiB >= 256, got '$MEM'"
[[ $CPUS =~ ^[0-9]+$ && $CPUS -ge 1 ]] || die "--cpus wants a positive number, got '$CPUS'"
[[ $TIMEOUT =~ ^[0-9]+$ && $TIMEOUT -ge 1 ]] || die "--timeout wants seconds, got '$TIMEOUT'"
((${#DISKS[@]} <= 20)) || die "at most 20 --disk"
for d in "${DISKS[@]}"; do
    [[ $d =~ ^[0-9]+[KMGT]?$ ]] || die "--disk wants a size like 1G or 512M, got '$d'"
done
for e in "${ENVS[@]}"; do
    [[ ${e%%=*} =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--env wants NAME or NAME=VALUE, got '$e'"
done
CWD=$(pwd -P)
[[ $CWD != / ]] || die "cannot run from / (the working directory is shared read-write into the guest)"

"$HERE/build.sh" --quiet || { echo "run.sh: build.sh failed" >&2; exit 125; }
VM_BOOTIMG='' VM_INITRD=''
# shellcheck source=/dev/null
source "$CACHE/stamp"

RUN=$(mktemp -d "${TMPDIR:-/tmp}/topolvm-vm.XXXXXX")
QPID='' OUTPID='' ERRPID=''
# shellcheck disable=SC2317  # invoked through trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $QPID ]] && kill -0 "$QPID" 2>/dev/null; then
        kill -TERM "$QPID" 2>/dev/null || true
        wait "$QPID" 2>/dev/null || true
    fi
    for p in $OUTPID $ERRPID; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [[ $KEEP == 1 ]]; then
        echo "run.sh: run dir kept: $RUN" >&2
    else
        rm -rf "$RUN"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "run.sh: error at line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'echo "run.sh: interrupted" >&2; exit 130' INT
trap 'echo "run.sh: terminated" >&2; exit 143' TERM

SHARE=$RUN/share
mkdir -p "$SHARE/lvm"
cp "$HERE/guest-init.sh" "$SHARE/guest-init.sh"
cp "$HERE/lvm.conf" "$SHARE/lvm/lvm.conf"
# Read by the initramfs /init (busybox sh) and by guest-init.sh.
printf 'CWD=%q\nNDISKS=%q\n' "$CWD" "${#DISKS[@]}" >"$SHARE/vm.conf"
{
    printf 'export PATH=%q\n' "$PATH"
    for e in "${ENVS[@]}"; do
        if [[ $e == *=* ]]; then
            printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"
        elif [[ -n ${!e+set} ]]; then
            printf 'export %s=%q\n' "$e" "${!e}"
        fi
    done
} >"$SHARE/env.sh"
{
    printf 'CMD=('
    printf '%q ' "$@"
    printf ')\n'
} >"$SHARE/cmd.sh"

# pci=noacpi: routing PCI IRQs through ACPI links costs ~0.7 s of boot under TCG.
# tsc=reliable: TCG's TSC is consistent across vCPUs; saves falling back to the HPET.
APPEND="console=ttyS0 panic=-1 mitigations=off 8250.nr_uarts=1 tsc=reliable pci=noacpi"
if [[ ${TOPOLVM_VM_DEBUG:-0} == 1 ]]; then
    APPEND+=" topolvm.debug=1"
else
    APPEND+=" quiet"
fi
# shellcheck disable=SC2054  # commas are qemu option syntax
QEMU=(qemu-system-x86_64
    -accel tcg,thread=multi,tb-size=256 -cpu qemu64 -machine pc
    -m "$MEM" -smp "$CPUS"
    -nodefaults -no-user-config -display none -vga none -monitor none -no-reboot
    -serial "file:$RUN/console.log"
    -kernel "$VM_BOOTIMG" -initrd "$VM_INITRD"
    -append "$APPEND"
    -fsdev "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap"
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
    -fsdev "local,id=run,path=$SHARE,security_model=none"
    -device virtio-9p-pci,fsdev=run,mount_tag=run
    -fsdev "local,id=cwd,path=$CWD,security_model=none,multidevs=remap"
    -device virtio-9p-pci,fsdev=cwd,mount_tag=cwd
    -device virtio-rng-pci
    -device virtio-serial-pci,id=vser
    -chardev "pipe,id=cout,path=$RUN/stdout"
    -device virtserialport,bus=vser.0,chardev=cout,name=topolvm.stdout
    -chardev "pipe,id=cerr,path=$RUN/stderr"
    -device virtserialport,bus=vser.0,chardev=cerr,name=topolvm.stderr
)
for i in "${!DISKS[@]}"; do
    truncate -s "${DISKS[$i]}" "$RUN/disk$i.img"
    QEMU+=(-drive "file=$RUN/disk$i.img,format=raw,if=none,id=disk$i,cache=unsafe,discard=unmap"
        -device "virtio-blk-pci,drive=disk$i,serial=topolvm-$i")
done

# Output: qemu writes each port into a FIFO (path.out; path.in is never written);
# cat copies it to our stdout/stderr as it arrives and ends when qemu closes it.
for f in stdout stderr; do
    mkfifo "$RUN/$f.in" "$RUN/$f.out"
done
cat "$RUN/stdout.out" &
OUTPID=$!
cat "$RUN/stderr.out" >&2 &
ERRPID=$!

timeout -k 10 "$TIMEOUT" "${QEMU[@]}" </dev/null >"$RUN/qemu.log" 2>&1 &
QPID=$!
qrc=''
while [[ -z $qrc ]]; do
    done_pid='' st=0
    wait -n -p done_pid "$QPID" $OUTPID $ERRPID || st=$?
    case $done_pid in
        "$QPID") qrc=$st ;;
        # Our stdout/stderr went away (e.g. `run.sh ... | head`): keep draining the FIFO,
        # or the guest would block on a full pipe until the timeout.
        "$OUTPID") cat "$RUN/stdout.out" >/dev/null & OUTPID=$! ;;
        "$ERRPID") cat "$RUN/stderr.out" >/dev/null & ERRPID=$! ;;
        '') [[ $st -gt 128 ]] || { wait "$QPID" || qrc=$?; qrc=${qrc:-0}; } ;;
    esac
done
QPID=''

# qemu had the FIFOs open if it got far enough to start the guest; then the cats see EOF
# now. If it died before opening them, they are still blocked in open(): end them.
for _ in $(seq 20); do
    kill -0 "$OUTPID" 2>/dev/null || kill -0 "$ERRPID" 2>/dev/null || break
    sleep 0.1
done
for p in $OUTPID $ERRPID; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
done
OUTPID='' ERRPID=''

show_logs() {
    if [[ -s $RUN/qemu.log ]]; then
        echo "run.sh: qemu said:" >&2
        tail -n 20 "$RUN/qemu.log" >&2
    fi
    [[ -f $SHARE/setup-error ]] && cat "$SHARE/setup-error" >&2
    if [[ -s $RUN/console.log ]]; then
        echo "run.sh: last lines of the kernel console log:" >&2
        tail -n 40 "$RUN/console.log" >&2
    else
        echo "run.sh: the kernel console log is empty (TOPOLVM_VM_DEBUG=1 boots without 'quiet')" >&2
    fi
}
if [[ -f $SHARE/exit ]]; then
    rc=$(<"$SHARE/exit")
    [[ $rc =~ ^[0-9]+$ ]] || { echo "run.sh: bad exit status from the guest: '$rc'" >&2; exit 125; }
    exit "$rc"
fi
if [[ $qrc == 124 || $qrc == 137 ]]; then
    echo "run.sh: VM timed out after ${TIMEOUT}s (CMD: $*)" >&2
    show_logs
    exit 124
fi
if [[ -f $SHARE/started ]]; then
    echo "run.sh: VM died while running the command (qemu exit $qrc, no exit status written)" >&2
else
    echo "run.sh: VM failed to boot (qemu exit $qrc)" >&2
fi
show_logs
exit 125
