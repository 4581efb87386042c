#!/usr/bin/env bash
# Installs what topolvm-rs needs on a fresh Debian bookworm machine (root), then builds the
# workspace. Idempotent: a second run installs nothing and only lets cargo check the build.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

packages=(
    lvm2 thin-provisioning-tools   # the LVM under test
    util-linux                     # losetup
    e2fsprogs xfsprogs btrfs-progs # filesystems
    systemd                        # systemd-analyze verify for the unit file
    python3 python3-pip            # small helpers in the scripts; pip installs Helm's engine
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done

# Helm's chart engine (PyPI helm-python-sdk) for rendering deploy/charts/topolvm-rs.
scripts/install-helm.sh

# Cargo's own progress shows (a bar on a terminal, a line per crate otherwise).
echo "setup: building the workspace, debug, every target (the first time a few minutes on 2 cores: 2 min in a clean clone with the crates downloaded; then seconds)"
cargo build --workspace --all-targets
