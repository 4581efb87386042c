#!/usr/bin/env bash
# VM tier: builds lvmd's and topolvm-node's vm_tier test binaries on the host and runs each once
# inside a qemu VM with real device-mapper and two scratch disks (scripts/vm/run.sh). Fails if
# the VM cannot boot.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

scripts/vm/build.sh
# The test binary starts target/debug/lvmd (CARGO_BIN_EXE_lvmd); cargo builds both.
# Prints the executable of integration test TEST of PACKAGE built with FEATURE.
test_binary() {
    cargo test -p "$1" --features "$2" --test "$3" --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])
' "$3"
}

# The test binary starts target/debug/lvmd (CARGO_BIN_EXE_lvmd); cargo builds both.
exe=$(test_binary lvmd vm-tier vm_tier)
if [[ -z $exe ]]; then
    echo "test-vm-tier: could not build the vm_tier test binary" >&2
    exit 1
fi
echo "test-vm-tier: running $exe in the VM"
scripts/vm/run.sh --disk 1G --disk 1G --mem 2048 --timeout 1500 --env RUST_BACKTRACE -- \
    "$exe" --test-threads=1

# topolvm-node's reconciler with snapshots and clones: the control plane runs in the VM too
# (about a minute to start under emulation), with target/debug/lvmd and topolvm-node.
cargo build -p lvmd --bin lvmd --quiet
exe=$(test_binary topolvm-node vm-tier vm_tier)
if [[ -z $exe ]]; then
    echo "test-vm-tier: could not build topolvm-node's vm_tier test binary" >&2
    exit 1
fi
echo "test-vm-tier: running $exe in the VM"
exec scripts/vm/run.sh --disk 1G --disk 1G --mem 4096 --timeout 1200 --env RUST_BACKTRACE -- \
    "$exe" --test-threads=1
