//! Why a Controller RPC failed, in the service's own terms. `service.rs` turns it into the
//! gRPC status (the only place statuses are built).

use topolvm_core::size::SizeError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or malformed.
    #[error("{0}")]
    Invalid(String),
    /// The capacity range cannot be satisfied.
    #[error("{0}")]
    Size(#[from] SizeError),
    /// The volume or snapshot named in the request does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A volume or snapshot of this name exists with other parameters.
    #[error("{0}")]
    AlreadyExists(String),
    /// No node has room for the volume.
    #[error("{0}")]
    NoCapacity(String),
    /// The requested size is smaller than the content source's.
    #[error(transparent)]
    SmallerThanSource(#[from] topolvm_core::size::SmallerThanSource),
    /// The node agent (or lvmd behind it) refused, with this gRPC code number and message.
    #[error("{message}")]
    Refused { code: i32, message: String },
    /// The request's deadline passed while waiting for the node agent.
    #[error("{0}")]
    Deadline(String),
    /// The object is being deleted; a retry after that succeeds.
    #[error("{0}")]
    BeingDeleted(String),
    /// The caches have not listed LogicalVolumes and Nodes yet.
    #[error("the controller is still loading LogicalVolumes and Nodes; retry")]
    NotSynced,
    /// No Node exists at all.
    #[error("can not find any node")]
    NoNode,
    /// An object in the API holds a value we cannot read.
    #[error("{0}")]
    Corrupt(String),
    /// The API server refused or could not be reached.
    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    pub fn kube(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let context = context.into();
        move |source| Error::Kube { context, source }
    }
}
