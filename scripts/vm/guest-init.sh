#!/bin/bash
# scripts/vm/guest-init.sh - runs INSIDE the VM as PID 1, after the initramfs /init
# (written by build.sh) has mounted everything and switch_rooted into the host's / under a
# tmpfs overlay. run.sh copies it into the run dir, which the guest sees at
# /run/topolvm-vm. It runs the command with its stdout/stderr on two virtio-serial ports,
# writes the exit code to /run/topolvm-vm/exit and powers the VM off.
# Not meant to be run on the host. Uses bash builtins where it can: every exec of a host
# binary goes over 9p, which is slow under TCG.
set -u
R=/run/topolvm-vm
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

halt() {
    # busybox poweroff -f syncs, then powers off at once; qemu exits.
    /bin/busybox poweroff -f 2>/dev/null
    echo o >/proc/sysrq-trigger
    while :; do read -r -t 60 _ </dev/zero; done
}
fail() {
    echo "topolvm-vm guest: $*" >/dev/console 2>/dev/null
    echo "topolvm-vm guest: $*" >"$R/setup-error" 2>/dev/null
    halt
}
[[ $$ == 1 ]] || { echo "guest-init.sh runs only as the VM's init" >&2; exit 2; }

CWD='' NDISKS=0
# shellcheck source=/dev/null
source "$R/vm.conf" || fail "cannot read $R/vm.conf"

# Scratch disks, in --disk order (matched by their virtio serial "topolvm-N").
disks=()
for ((i = 0; i < NDISKS; i++)); do
    dev=''
    for s in /sys/block/vd*/serial; do
        [[ -f $s && $(<"$s") == "topolvm-$i" ]] || continue
        dev=${s%/serial}
        dev=/dev/${dev##*/}
    done
    [[ -n $dev && -b $dev ]] || fail "scratch disk $i (serial topolvm-$i) not found"
    disks+=("$dev")
done

# Output ports.
port() {
    local p
    for p in /sys/class/virtio-ports/*; do
        [[ -f $p/name && $(<"$p/name") == "$1" ]] && { echo "/dev/${p##*/}"; return 0; }
    done
    return 1
}
out=$(port topolvm.stdout) || fail "no virtio-serial port topolvm.stdout"
err=$(port topolvm.stderr) || fail "no virtio-serial port topolvm.stderr"

cd "$CWD" || fail "cd $CWD"
: >"$R/started"
if [[ $(</proc/cmdline) == *topolvm.debug=1* ]]; then
    read -r up _ </proc/uptime
    echo "topolvm-vm guest: $up running the command" >/dev/console
fi
# env.sh (written by run.sh) exports PATH and the --env variables; cmd.sh sets CMD=(...).
(
    for v in $(compgen -e); do unset "$v" 2>/dev/null; done
    export HOME=/root USER=root LOGNAME=root SHELL=/bin/bash
    # shellcheck source=/dev/null
    source "$R/env.sh"
    export TOPOLVM_IN_VM=1
    export TOPOLVM_VM_DISKS="${disks[*]}"
    export LVM_SYSTEM_DIR=/etc/topolvm-vm/lvm
    CMD=()
    # shellcheck source=/dev/null
    source "$R/cmd.sh"
    exec "${CMD[@]}"
) </dev/null >"$out" 2>"$err"
rc=$?
echo "$rc" >"$R/exit"
halt
