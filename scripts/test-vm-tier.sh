#!/usr/bin/env bash
# VM tier: builds the vm_tier test binaries on the host and runs each once inside its own qemu
# VM with real device-mapper and two scratch disks (scripts/vm/run.sh): first lvmd's, then
# topolvm-node's (the CSI node service with real lvmd, mkfs, mount and resize; the reconciler's
# snapshots and clones with the control plane started in the VM; the whole stack with a real
# kubelet and containerd running pods, and its crash storm with real snapshots). Fails if a VM
# cannot boot.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

scripts/vm/build.sh
# The guest runs the control plane and kubelet (built once per machine, minutes the first time)
# and containerd with the test bed's images (unpacked and built once): both no-ops when cached.
e2e/scripts/build-control-plane.sh >/dev/null
e2e/scripts/build-node-runtime.sh >/dev/null

# The path of the vm_tier test binary of package $1 (built with feature vm-tier).
vm_tier_exe() {
    cargo test -p "$1" --features vm-tier --test vm_tier --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "vm_tier":
        print(m["executable"])
'
}

# lvmd's binary starts target/debug/lvmd (CARGO_BIN_EXE_lvmd); topolvm-node's finds it next to
# its own target directory, so build it explicitly.
cargo build -p lvmd --bin lvmd -p topolvm-controller --bin topolvm-controller -p topolvm-scheduler --bin topolvm-scheduler --quiet
lvmd_exe=$(vm_tier_exe lvmd)
node_exe=$(vm_tier_exe topolvm-node)
for exe in "$lvmd_exe" "$node_exe"; do
    if [[ -z $exe ]]; then
        echo "test-vm-tier: could not build a vm_tier test binary" >&2
        exit 1
    fi
done

echo "test-vm-tier: running $lvmd_exe in the VM"
scripts/vm/run.sh --disk 1G --disk 1G --mem 2048 --timeout 1500 --env RUST_BACKTRACE -- \
    "$lvmd_exe" --test-threads=1
# topolvm-node's needs room for etcd, kube-apiserver, kubelet and containerd besides the tests,
# and 2 GiB disks (sparse) for the pods' claims of every filesystem at once.
echo "test-vm-tier: running $node_exe in the VM"
scripts/vm/run.sh --disk 2G --disk 2G --mem 4096 --timeout 2400 --env RUST_BACKTRACE -- \
    "$node_exe" --test-threads=1
