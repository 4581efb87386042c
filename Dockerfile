# The topolvm-rs image: every binary the chart runs (deploy/charts/topolvm-rs), at the paths its
# containers name (/lvmd, /topolvm-node, /topolvm-controller, /topolvm-scheduler), on a small
# Debian with the tools they call: mkfs/resize for ext4, xfs and btrfs, blkid, mount and nsenter
# (util-linux), and lvm2 for lvmd.
#
#   docker build -t topolvm-rs:devel .
#
# The COPY paths and binary names are checked by `cargo test -p topolvm-e2e --test dockerfile`.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# protoc comes from the protoc-bin-vendored crate: no system package is needed.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY proto proto
COPY core core
COPY runtime runtime
COPY csi-server csi-server
COPY lvmd lvmd
COPY test-kit test-kit
COPY e2e e2e
COPY topolvm-scheduler topolvm-scheduler
COPY topolvm-node topolvm-node
COPY topolvm-controller topolvm-controller
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p lvmd --bin lvmd --bin lvmdctl \
        -p topolvm-node --bin topolvm-node \
        -p topolvm-controller --bin topolvm-controller \
        -p topolvm-scheduler --bin topolvm-scheduler \
    && mkdir -p /out \
    && cp target/release/lvmd target/release/lvmdctl target/release/topolvm-node \
        target/release/topolvm-controller target/release/topolvm-scheduler /out/

FROM docker.io/library/debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        e2fsprogs xfsprogs btrfs-progs util-linux mount lvm2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/lvmd /lvmd
COPY --from=builder /out/lvmdctl /lvmdctl
COPY --from=builder /out/topolvm-node /topolvm-node
COPY --from=builder /out/topolvm-controller /topolvm-controller
COPY --from=builder /out/topolvm-scheduler /topolvm-scheduler
COPY deploy/lvmd-config/lvmd.yaml /etc/topolvm/lvmd.yaml.example
# No default entry point: each container of the chart names its binary.
CMD ["/topolvm-controller", "--help"]
