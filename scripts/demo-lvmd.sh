#!/usr/bin/env bash
# lvmd alone: set-up, then lvmd on a loop-device volume group with an embedded default
# configuration, driven through its gRPC API with lvmdctl. Leaves nothing behind.
#
# On a machine without device-mapper (like this project's build machines) LVM runs in
# metadata-only mode: volumes are created, tagged, resized and removed in the volume group's
# metadata but not activated. With device-mapper they are real block devices.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

scripts/setup.sh
LVMD=$PWD/target/debug/lvmd
LVMDCTL=$PWD/target/debug/lvmdctl

work=$(mktemp -d /tmp/topolvm-demo.XXXXXX)
loop="" lvmd_pid="" vg="demo$$"
cleanup() {
    set +e
    [[ -n $lvmd_pid ]] && kill "$lvmd_pid" 2>/dev/null && wait "$lvmd_pid" 2>/dev/null
    if [[ -n $loop ]]; then
        lvm vgremove -ff -y "$vg" >/dev/null 2>&1
        lvm pvremove -ff -y "$loop" >/dev/null 2>&1
        losetup -d "$loop"
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

export LVM_SYSTEM_DIR=$work/lvm LC_ALL=C LVM_SUPPRESS_FD_WARNINGS=1
mkdir -p "$LVM_SYSTEM_DIR"
if dmsetup version >/dev/null 2>&1; then
    mode="real device-mapper"
    printf 'activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }\nbackup { backup = 0 archive = 0 }\n' >"$LVM_SYSTEM_DIR/lvm.conf"
else
    mode="metadata only (this kernel has no device-mapper)"
    printf 'global { activation = 0 }\nbackup { backup = 0 archive = 0 }\n' >"$LVM_SYSTEM_DIR/lvm.conf"
fi

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "a 4 GiB loop device with volume group $vg ($mode)"
truncate -s 4G "$work/disk.img"
loop=$(losetup -f --show "$work/disk.img")
lvm pvcreate -q "$loop" 2>/dev/null
lvm vgcreate -q "$vg" "$loop" 2>/dev/null
lvm vgs "$vg" 2>/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/lvmd.yaml" <<YAML
socket-name: $work/lvmd.sock
lvm-command-prefix: [lvm]
metrics-listen: 127.0.0.1:$port
device-classes:
  - name: ssd
    volume-group: $vg
    default: true
    spare-gb: 1
  - name: missing
    volume-group: no-such-vg
YAML
step "lvmd with this configuration"
cat "$work/lvmd.yaml"
"$LVMD" --config "$work/lvmd.yaml" >"$work/lvmd.log" 2>&1 &
lvmd_pid=$!
for _ in $(seq 100); do [[ -S $work/lvmd.sock ]] && break; sleep 0.1; done
ctl() { echo "\$ lvmdctl $*"; "$LVMDCTL" --socket "$work/lvmd.sock" "$@"; }

step "capacity (the class whose volume group is missing is reported, the other keeps serving)"
ctl watch --count 1
step "create a 1 GiB volume, then repeat the request (idempotent)"
ctl create pvc-demo-1 1073741824
ctl create pvc-demo-1 1073741824
ctl list
echo "\$ lvm lvs -o lv_name,lv_size,lv_tags $vg"
lvm lvs -o lv_name,lv_size,lv_tags "$vg" 2>/dev/null
step "grow it to 2 GiB; a request that does not fit is refused before lvm runs"
ctl resize pvc-demo-1 2147483648
ctl create too-big 10737418240 || true
ctl free
step "remove it (twice: removing a missing volume succeeds)"
ctl remove pvc-demo-1
ctl remove pvc-demo-1
ctl list
step "the missing class answers UNAVAILABLE"
ctl -c missing free || true
step "metrics: lvm invocations by subcommand"
python3 - "$port" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
for line in body.splitlines():
    if line.startswith(("lvmd_lvm_commands_total", "lvmd_volumegroup_available_bytes", "lvmd_device_class_available")):
        print(line)
PY
step "done; lvmd log follows"
kill "$lvmd_pid"; wait "$lvmd_pid" || true; lvmd_pid=""
tail -n 20 "$work/lvmd.log"
