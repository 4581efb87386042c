#!/usr/bin/env bash
# The test command: set-up, then every tier. Exits non-zero if any tier fails or cannot run.
#   unit tier   cargo test --workspace          logic, parsing, validation, error mapping (no root)
#   fuzz tier   scripts/fuzz.sh                 coverage-guided inputs to the parsers of other programs' output
#   host tier   real lvm2 (metadata only) on loop devices, a real lvmd process and gRPC client
#   VM tier     real device-mapper in a qemu VM: thin pools, snapshots, activation, data usage
#   e2e tier    a real Kubernetes 1.20 control plane on loopback (built once, cached), containerd
# Set TOPOLVM_SKIP_VM=1 to leave out the VM tier when iterating locally (CI never does).
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

if [[ ${CI:-} == true && -n ${TOPOLVM_SKIP_VM:-} ]]; then
    echo "test: TOPOLVM_SKIP_VM is not allowed in CI" >&2
    exit 1
fi

scripts/setup.sh

echo "== style: rustfmt and clippy"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets --features lvmd/host-tier,lvmd/vm-tier,topolvm-e2e/e2e,topolvm-node/vm-tier --quiet -- -D warnings

echo "== unit tier"
cargo test --workspace --quiet

echo "== fuzz tier (five targets, 15 s each; the instrumented build is cached under /var/cache/topolvm-rs)"
scripts/fuzz.sh

echo "== host tier (real lvm2 in metadata mode on loop devices; needs root)"
cargo test -p lvmd --features host-tier --quiet --test host_tier --test systemd_unit

echo "== e2e tier (real etcd, kube-apiserver, kube-scheduler, kube-controller-manager)"
e2e/scripts/build-control-plane.sh
# deploy/monitoring/'s test has a real Prometheus (Debian's, cached) scrape the binaries.
e2e/scripts/fetch-prometheus.sh >/dev/null
# Debian's containerd and runc (unpacked, never installed) and the pause and app images built
# from busybox: the node's container runtime (tests/test_bed.rs here, kubelet in the VM tier).
e2e/scripts/build-node-runtime.sh >/dev/null
# The e2e tests start target/debug/{lvmd,topolvm-*}, which cargo does not build for another
# package's tests: build them first.
cargo build -p lvmd -p topolvm-node -p topolvm-controller -p topolvm-scheduler --bins --quiet
# Every test in e2e/tests (e2e/README.md lists them), one test binary each: the control plane
# itself and the Helm chart; topolvm-scheduler under the real kube-scheduler; leader election;
# topolvm-node with a real lvmd on loop devices (capacity, reconciler, secure metrics, its
# DaemonSet); topolvm-controller (webhook over TLS, node clean-up, failover, its Deployment, its
# CSI service with the real topolvm-node and lvmd, node deletion); every metric the dashboard
# and alerts use, exported and evaluated; the whole stack and the crash storm.
cargo test -p topolvm-e2e --features e2e --quiet

if [[ -n ${TOPOLVM_SKIP_VM:-} ]]; then
    echo "== VM tier skipped (TOPOLVM_SKIP_VM)"
else
    echo "== VM tier (real device-mapper inside qemu)"
    scripts/test-vm-tier.sh
fi
echo "== all tiers passed"
