//! The CSI Identity and Node services of topolvm-node, on a Unix socket for kubelet and the
//! node-driver-registrar.
//!
//! - [`node`]: the tonic service, the only place CSI statuses are built (from [`Error`]);
//! - [`validate`]: request checking; [`locate`]: finding a volume through lvmd;
//! - [`volumes`]: publish, unpublish, stats and expansion; [`ephemeral`]: inline volumes;
//! - [`mount`]: the operating system (mkfs, mount, mountinfo, resize), with its own error.
//!
//! Where this differs from TopoLVM, and why, is in the README.

pub mod ephemeral;
pub mod locate;
pub mod mount;
pub mod node;
pub mod validate;
pub mod volumes;

use std::path::PathBuf;

use thiserror::Error;
use tokio_util::sync::CancellationToken;
use topolvm_csi_server::identity::{IdentityService, Readiness};

use crate::lvmd_client::{LatestReport, LvmdConnection};

pub use node::NodeService;

/// The CSI service's settings.
#[derive(Debug, Clone)]
pub struct CsiOptions {
    /// The socket kubelet and the registrar connect to.
    pub socket: PathBuf,
    /// kubelet's root directory; every publish target must lie under it.
    pub kubelet_dir: PathBuf,
    /// The Node's name: the node ID and the topology value.
    pub node_name: String,
}

/// Why a Node RPC failed, named by what went wrong; [`node`] picks the gRPC code.
#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("access mode {0} is not supported: TopoLVM volumes are SINGLE_NODE_WRITER")]
    UnsupportedAccessMode(String),
    #[error("{path} is not under the kubelet directory {kubelet_dir}")]
    OutsideKubeletDir { path: PathBuf, kubelet_dir: PathBuf },
    #[error("volume {0} is not on this node")]
    VolumeNotFound(String),
    #[error("volume {volume_id} is not published at {path}")]
    NotAtPath { volume_id: String, path: PathBuf },
    #[error("volume {0} is not active (no device)")]
    VolumeInactive(String),
    #[error("lvmd has not reported its device classes yet")]
    LvmdNotReady,
    #[error("lvmd {operation}: {message}")]
    Lvmd {
        operation: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("{target} already holds {what}")]
    TargetBusy { target: PathBuf, what: String },
    #[error(
        "{device} holds a {found} filesystem, not {wanted}; refusing to reformat it (change the \
         fsType or move the data)"
    )]
    OtherFilesystem {
        device: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("{0} has no filesystem and a read-only publish cannot make one")]
    UnformattedReadOnly(PathBuf),
    #[error("{0} is mounted read-only; its filesystem cannot grow")]
    ReadOnlyExpand(PathBuf),
    #[error("volume {0} exists and is not an inline ephemeral volume")]
    NotEphemeral(String),
    #[error(transparent)]
    Os(#[from] mount::FsError),
    #[error(transparent)]
    Condition(#[from] crate::volume_condition::BadAttr),
}

/// Why the CSI server stopped.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error("CSI socket: {0}")]
    Socket(#[from] topolvm_runtime::unix::Error),
    #[error("registering the CSI metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Serves the Identity and Node services on `options.socket` until `shutdown`.
pub async fn serve(
    options: CsiOptions,
    lvmd: LvmdConnection,
    report: LatestReport,
    ready: Readiness,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let node = NodeService::new(&options, lvmd, report, &registry)?;
    let identity = IdentityService::new(env!("CARGO_PKG_VERSION"), ready);
    let mut routes = tonic::service::Routes::default();
    routes = routes.add_service(identity.server());
    routes = routes.add_service(node.server());
    let listener = topolvm_runtime::unix::bind(&options.socket).await?;
    topolvm_runtime::unix::serve(listener, &options.socket, routes, shutdown).await?;
    Ok(())
}
