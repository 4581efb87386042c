//! Shared core of topolvm-rs, a Rust reimplementation of TopoLVM that is name- and
//! wire-compatible with TopoLVM v0.41.
//!
//! Core owns the TopoLVM contract: everything lvmd, topolvm-node, topolvm-controller, the pod
//! webhook and topolvm-scheduler must agree on has its one definition here, and its tests
//! check it against TopoLVM's documented values.
//! - [`names`]: every Kubernetes, TopoLVM and LVM name the components share (annotations,
//!   labels, finalizers, StorageClass parameters, topology key, sockets);
//! - [`crd`]: the `LogicalVolume` custom resource;
//! - [`capacity_annotation`]: how an lvmd Watch message becomes a Node's
//!   `capacity.topolvm.io/*` annotations, and how each reader parses them (Go's rules);
//! - [`timestamp`]: the Go time formats of the two time-valued annotations;
//! - [`size`]: byte units and the volume size rules (alignment, default, minimum allocations,
//!   required/limit);
//! - [`quantity`]: exact conversion between Kubernetes quantities and bytes;
//! - [`capacity`]: free-space math of lvmd and the scheduler extender's score;
//! - [`config`]: the configuration error type, key-path-aware YAML decoding, durations.
//!
//! Each module has its own error type.
#![forbid(unsafe_code)]

pub mod capacity;
pub mod capacity_annotation;
pub mod config;
pub mod crd;
pub mod names;
pub mod quantity;
pub mod size;
pub mod timestamp;
