//! Generated protobuf and gRPC code for topolvm-rs.
//!
//! - [`lvmd`]: the lvmd API, protobuf package `proto`, wire-compatible with TopoLVM's lvmd.

/// lvmd's gRPC API (protobuf package `proto`).
#[allow(missing_debug_implementations, deprecated, clippy::all)]
pub mod lvmd {
    tonic::include_proto!("proto");
}
