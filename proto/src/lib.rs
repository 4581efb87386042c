//! Generated protobuf and gRPC code for topolvm-rs.
//!
//! - [`lvmd`]: the lvmd API, protobuf package `proto`, wire-compatible with TopoLVM's lvmd.
//! - [`csi`]: the Container Storage Interface, protobuf package `csi.v1` (CSI spec v1.12.0):
//!   the Identity, Controller, GroupController, SnapshotMetadata and Node services, with
//!   tonic clients (`*_client`) and server traits (`*_server`).
//! - [`pluginregistration`]: kubelet's plugin registration API v1 (protobuf package
//!   `pluginregistration`), which a plugin serves under `<kubelet root>/plugins_registry`.
//!
//! Connecting over a Unix socket is `topolvm_runtime::unix::connect`.

/// lvmd's gRPC API (protobuf package `proto`).
#[allow(missing_debug_implementations, deprecated, clippy::all)]
pub mod lvmd {
    tonic::include_proto!("proto");
}

/// CSI v1 (protobuf package `csi.v1`), spoken by kubelet and the CSI sidecars.
#[allow(missing_debug_implementations, deprecated, clippy::all)]
pub mod csi {
    tonic::include_proto!("csi.v1");
}

/// kubelet's plugin registration API v1 (protobuf package `pluginregistration`): the service a
/// plugin serves on its registration socket, kubelet being the client.
#[allow(missing_debug_implementations, deprecated, clippy::all)]
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}
