#!/usr/bin/env bash
# VM tier: builds lvmd's vm_tier test binary on the host and runs it once inside a qemu VM with
# real device-mapper and two scratch disks (scripts/vm/run.sh). Fails if the VM cannot boot.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

scripts/vm/build.sh
# The test binary starts target/debug/lvmd (CARGO_BIN_EXE_lvmd); cargo builds both.
exe=$(cargo test -p lvmd --features vm-tier --test vm_tier --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "vm_tier":
        print(m["executable"])
')
if [[ -z $exe ]]; then
    echo "test-vm-tier: could not build the vm_tier test binary" >&2
    exit 1
fi
echo "test-vm-tier: running $exe in the VM"
exec scripts/vm/run.sh --disk 1G --disk 1G --mem 2048 --timeout 1500 --env RUST_BACKTRACE -- \
    "$exe" --test-threads=1
