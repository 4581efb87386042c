//! The built-in kubelet plugin registrar (`--register-with-kubelet`): what the
//! node-driver-registrar sidecar does, inside topolvm-node.
//!
//! kubelet watches `<kubelet root>/plugins_registry` for new Unix sockets
//! (kubernetes/kubernetes pkg/kubelet/pluginmanager/pluginwatcher), asks each for `GetInfo`,
//! hands a `CSIPlugin` to its CSI handler, which accepts a driver whose supported versions
//! include a 1.x (kubernetes/kubernetes pkg/volume/csi/csi_plugin.go, `ValidatePlugin`), and
//! tells the plugin the outcome with `NotifyRegistrationStatus`
//! (kubernetes/kubernetes pkg/kubelet/pluginmanager/operationexecutor/operation_generator.go).
//! From then on kubelet calls the CSI socket named in `endpoint` (as the host sees it) and
//! writes the CSINode object itself.
//!
//! Like kubernetes-csi/node-driver-registrar cmd/csi-node-driver-registrar/node_register.go and
//! main.go: the socket is `<registration dir>/<driver name>-reg.sock`, a stale one is removed
//! before listening, the socket is only its owner's (0600, as its umask 0077), the supported
//! versions are `["1.0.0"]`, and the socket is removed at shutdown (it does so on SIGTERM).
//!
//! Where it differs: when kubelet refuses the registration, the sidecar exits so that its
//! container restarts and a new socket makes kubelet try again. topolvm-node serves volumes
//! already published and must not restart for that, so it logs kubelet's reason, fails its
//! readiness check `kubelet-registration`, removes the socket and creates it again after a delay
//! (doubling from [`Retry::first`] up to [`Retry::max`]). A new socket is what makes kubelet try
//! again: a plugin its handler refused at `RegisterPlugin` stays in kubelet's actual state of the
//! world until the socket goes away or its timestamp changes. The readiness check also fails
//! until the first registration succeeds, as the sidecar's `kubelet-registration-probe` mode
//! fails until kubelet has called it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use topolvm_core::names::PLUGIN_NAME;
use topolvm_proto::pluginregistration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
    registration_server::{Registration, RegistrationServer},
};
use topolvm_runtime::endpoints::Readiness;
use tracing::{error, info, instrument, warn};

/// kubelet's plugin type of a CSI driver (kubernetes/kubernetes
/// staging/src/k8s.io/kubelet/pkg/apis/pluginregistration/v1/constants.go, `CSIPlugin`).
pub const CSI_PLUGIN_TYPE: &str = "CSIPlugin";

/// The versions node-driver-registrar announces (its `supportedVersions`); kubelet's CSI
/// handler wants a 1.x among them.
pub const SUPPORTED_VERSIONS: [&str; 1] = ["1.0.0"];

/// kubelet's registration directory under its root directory.
pub const PLUGINS_REGISTRY: &str = "plugins_registry";

/// The name of the readiness check that passes while kubelet has accepted the plugin.
pub const READINESS_CHECK: &str = "kubelet-registration";

/// The registration directory below kubelet's root directory `kubelet_dir`.
pub fn registration_dir(kubelet_dir: &Path) -> PathBuf {
    kubelet_dir.join(PLUGINS_REGISTRY)
}

/// The registration socket in `registration_dir`: `<driver name>-reg.sock`, the name
/// node-driver-registrar gives it, so either registrar replaces the other's stale socket.
pub fn socket_path(registration_dir: &Path) -> PathBuf {
    registration_dir.join(format!("{PLUGIN_NAME}-reg.sock"))
}

/// How long to wait before offering kubelet a new socket after it refused the plugin.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(1),
            max: Duration::from_secs(120),
        }
    }
}

/// The registrar's settings.
#[derive(Debug, Clone)]
pub struct RegistrarOptions {
    /// kubelet's registration directory (`--plugin-registration-dir`) as this process sees it.
    pub registration_dir: PathBuf,
    /// The CSI socket as kubelet sees it on the host (`--kubelet-registration-path`).
    pub endpoint: PathBuf,
    pub retry: Retry,
}

/// Why the registrar stopped.
#[derive(Debug, Error)]
pub enum Error {
    #[error("registration socket: {0}")]
    Socket(#[from] topolvm_runtime::unix::Error),
}

/// Serves the Registration service on the registration socket until `shutdown`, offering a new
/// socket after kubelet refuses the plugin. `registered` is ready while kubelet has accepted it.
pub async fn serve(
    options: RegistrarOptions,
    registered: Readiness,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let socket = socket_path(&options.registration_dir);
    let mut delay = options.retry.first;
    loop {
        let refused = shutdown.child_token();
        let service = RegistrationService {
            endpoint: options.endpoint.to_string_lossy().into_owned(),
            registered: registered.clone(),
            refused: refused.clone(),
        };
        let listener = topolvm_runtime::unix::bind(&socket).await?;
        info!(
            socket = %socket.display(),
            endpoint = %options.endpoint.display(),
            "waiting for kubelet to register the CSI plugin"
        );
        let routes = tonic::service::Routes::new(RegistrationServer::new(service));
        topolvm_runtime::unix::serve(listener, &socket, routes, refused).await?;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        warn!(
            socket = %socket.display(),
            retry_in = ?delay,
            "offering kubelet a new registration socket after a delay"
        );
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(options.retry.max);
    }
}

/// The Registration service of one registration socket.
#[derive(Debug)]
struct RegistrationService {
    endpoint: String,
    registered: Readiness,
    /// Cancelled when kubelet refuses the plugin: this socket's server stops.
    refused: CancellationToken,
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    #[instrument(skip_all, fields(name = PLUGIN_NAME, endpoint = %self.endpoint))]
    async fn get_info(
        &self,
        _request: Request<InfoRequest>,
    ) -> Result<Response<PluginInfo>, Status> {
        info!("kubelet asked for the plugin's registration info");
        Ok(Response::new(PluginInfo {
            r#type: CSI_PLUGIN_TYPE.to_owned(),
            name: PLUGIN_NAME.to_owned(),
            endpoint: self.endpoint.clone(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }))
    }

    #[instrument(skip_all, fields(registered = request.get_ref().plugin_registered))]
    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            info!("kubelet registered the CSI plugin");
            self.registered.set_ready(true);
        } else {
            error!(
                kubelet_error = %status.error,
                "kubelet refused to register the CSI plugin"
            );
            self.registered.set_ready(false);
            self.refused.cancel();
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}
