#!/usr/bin/env bash
# The test command: set-up, then every tier. Exits non-zero if any tier fails or cannot run.
#   unit tier   cargo test --workspace          logic, parsing, validation, error mapping (no root)
#   fuzz tier   scripts/fuzz.sh                 coverage-guided inputs to the parsers of other programs' output
#   host tier   real lvm2 (metadata only) on loop devices, a real lvmd process and gRPC client
#   VM tier     real device-mapper in a qemu VM: thin pools, snapshots, activation, data usage
#   e2e tier    a real Kubernetes 1.20 control plane on loopback (built once, cached)
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
cargo clippy --workspace --all-targets --features lvmd/host-tier,lvmd/vm-tier,topolvm-e2e/e2e,topolvm-scheduler/e2e,topolvm-node/e2e,topolvm-node/vm-tier,topolvm-runtime/e2e,topolvm-controller/e2e --quiet -- -D warnings

echo "== unit tier"
cargo test --workspace --quiet

echo "== fuzz tier (five targets, 15 s each; the instrumented build is cached under /var/cache/topolvm-rs)"
scripts/fuzz.sh

echo "== host tier (real lvm2 in metadata mode on loop devices; needs root)"
cargo test -p lvmd --features host-tier --quiet --test host_tier --test systemd_unit

echo "== e2e tier (real etcd, kube-apiserver, kube-scheduler, kube-controller-manager)"
e2e/scripts/build-control-plane.sh
# The harness's own tests (starts target/debug/{lvmd,topolvm-*}): the whole stack, the crash
# storm, and tests/chart.rs: the Helm chart and the plain manifests rendered from it (Helm's
# engine, a server-side dry run of every object, each binary's --help).
cargo build -p lvmd -p topolvm-node -p topolvm-controller -p topolvm-scheduler --bins --quiet
cargo test -p topolvm-e2e --features e2e --quiet
cargo test -p topolvm-scheduler --features e2e --quiet --test e2e
cargo test -p topolvm-runtime --features e2e --quiet --test leader
# topolvm-node against the control plane and a real lvmd on loop devices (starts target/debug/lvmd).
cargo build -p lvmd --bin lvmd --quiet
cargo test -p topolvm-node --features e2e --quiet --test capacity --test secure_metrics --test reconciler --test deploy
# topolvm-controller against the control plane: the pod webhook over TLS, node clean-up, leader
# failover, stray LogicalVolumes (no lvmd needed).
cargo test -p topolvm-controller --features e2e --quiet --test cluster
# The controller's Deployment, sidecars' RBAC and CSIDriver (deploy/manifests/) against the API server.
cargo test -p topolvm-controller --features e2e --quiet --test deploy
# topolvm-controller's CSI service with the real topolvm-node and lvmd (starts target/debug/{lvmd,topolvm-node}).
cargo build -p lvmd --bin lvmd -p topolvm-node --bin topolvm-node --quiet
cargo test -p topolvm-controller --features e2e --quiet --test csi --test node_deletion
# deploy/monitoring/: every metric, label and value the dashboard and alerts use is exported by
# the running lvmd, topolvm-node, topolvm-controller and topolvm-scheduler.
# A real Prometheus (Debian's, cached) scrapes them and evaluates the rules.
e2e/scripts/fetch-prometheus.sh >/dev/null
cargo build -p topolvm-scheduler --bin topolvm-scheduler --quiet
cargo test -p topolvm-controller --features e2e --quiet --test monitoring

if [[ -n ${TOPOLVM_SKIP_VM:-} ]]; then
    echo "== VM tier skipped (TOPOLVM_SKIP_VM)"
else
    echo "== VM tier (real device-mapper inside qemu)"
    scripts/test-vm-tier.sh
fi
echo "== all tiers passed"
