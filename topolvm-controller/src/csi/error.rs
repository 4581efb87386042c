//! Why a Controller RPC failed, in the service's own terms: each variant names one domain
//! failure with the fields a reader needs. `service.rs` alone picks the gRPC code for each (the
//! only place statuses are built); nothing here knows tonic.

use topolvm_core::capacity_annotation::NodeCapacityError;
use topolvm_core::size::{SizeError, SmallerThanSource};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field that must be set is empty.
    #[error("{field} is empty")]
    Missing { field: &'static str },
    /// ControllerExpandVolume without `capacity_range` (the CSI spec makes it REQUIRED there).
    #[error("capacity_range is required")]
    NoCapacityRange,
    /// A name that, lower-cased, is no valid object name.
    #[error("{field} {name:?} lower-cased is not a valid Kubernetes object name")]
    InvalidName { field: &'static str, name: String },
    /// A volume capability that is neither block nor mount.
    #[error("a volume capability is neither block nor mount")]
    NoAccessType,
    /// An access mode other than SINGLE_NODE_WRITER.
    #[error("access mode {mode} is not supported; only SINGLE_NODE_WRITER is")]
    UnsupportedAccessMode { mode: String },
    /// Topology requirements none of whose segments carries our key.
    #[error("no topology segment carries the key {key}")]
    NoTopologyKey { key: &'static str },
    /// A content source of neither kind.
    #[error("volume_content_source has neither a snapshot nor a volume")]
    UntypedContentSource,
    /// The capacity range cannot be satisfied.
    #[error(transparent)]
    Size(#[from] SizeError),
    /// The requested size is smaller than the content source's.
    #[error(transparent)]
    SmallerThanSource(#[from] SmallerThanSource),
    /// A clone or restore into another device class than its source's (both for humans).
    #[error("device class {class} differs from the source's {source_class}")]
    ClassDiffersFromSource { class: String, source_class: String },
    /// The content source's node is outside the topology requirement.
    #[error("the source is on node {node}, which the topology requirement excludes")]
    SourceNodeExcluded { node: String },
    /// The API server refused the LogicalVolume as invalid (422).
    #[error("the API server refused the LogicalVolume: {source}")]
    InvalidObject {
        #[source]
        source: kube::Error,
    },
    /// A content source named by an empty id.
    #[error("the content source's id is empty")]
    EmptySourceId,
    /// The volume, snapshot or source named in the request does not exist (`what` says which).
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// A LogicalVolume of this name exists with other parameters.
    #[error("{name} exists with other parameters (size {size:?}, source {source_name:?})")]
    AlreadyExists {
        name: String,
        size: String,
        source_name: String,
    },
    /// Without topology requirements, not even the Node with the most room has `wanted` bytes.
    #[error(
        "no node has {wanted} bytes free in device class {class}; the most is {most} on {node}"
    )]
    NoCapacity {
        /// The device class, for humans.
        class: String,
        wanted: u64,
        most: i64,
        node: String,
    },
    /// No Node exists at all.
    #[error("can not find any node")]
    NoNode,
    /// The node agent (or lvmd behind it) refused, with this gRPC code number and message.
    #[error("{message}")]
    Refused { code: i32, message: String },
    /// The request's deadline passed while waiting (`during` says for what).
    #[error("deadline passed while {during}")]
    Deadline { during: &'static str },
    /// The cache went away while waiting: the process is stopping.
    #[error("stopped while {during}")]
    Stopped { during: &'static str },
    /// The LogicalVolume is being deleted; a retry after that succeeds.
    #[error("{name} is being deleted; retry once it is gone")]
    BeingDeleted { name: String },
    /// The caches have not listed LogicalVolumes and Nodes yet.
    #[error("the controller is still loading LogicalVolumes and Nodes; retry")]
    NotSynced,
    /// A LogicalVolume whose sizes cannot be read (`what` names its role in the request).
    #[error("{what} {id} has no readable size")]
    UnreadableSize { what: &'static str, id: String },
    /// A Node whose capacity annotation cannot be read.
    #[error("Node {node}: {source}")]
    UnreadableCapacity {
        node: String,
        #[source]
        source: NodeCapacityError,
    },
    /// The API server refused or could not be reached while `context`.
    #[error("{context}: {source}")]
    Kube {
        context: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// The mapping of a kube error met while `context`, for `map_err`.
    pub fn kube(context: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { context, source }
    }
}
