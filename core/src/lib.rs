//! Shared core of topolvm-rs, a Rust reimplementation of TopoLVM that is name- and
//! wire-compatible with TopoLVM v0.41.
//!
//! Used by lvmd, topolvm-node, topolvm-controller and topolvm-scheduler:
//! - [`names`]: every Kubernetes, TopoLVM and LVM name the components share;
//! - [`crd`]: the `LogicalVolume` custom resource;
//! - [`quantity`]: exact conversion between Kubernetes quantities and bytes;
//! - [`size`]: byte units and the CSI volume size rules;
//! - [`capacity`]: free-space math of lvmd and the scheduler extender's score;
//! - [`config`]: the configuration error type, key-path-aware YAML decoding, durations.
//!
//! Each module has its own error type.
#![forbid(unsafe_code)]

pub mod capacity;
pub mod config;
pub mod crd;
pub mod names;
pub mod quantity;
pub mod size;
