//! The CSI Identity service of topolvm-node and topolvm-controller, as TopoLVM's
//! (`NewIdentityServer` in `internal/driver/identity.go`, exported as `pkg/driver/identity.go` @
//! `46f8ac98fe59`): the plugin name `topolvm.io`, the capabilities CONTROLLER_SERVICE,
//! VOLUME_ACCESSIBILITY_CONSTRAINTS and online and offline volume expansion, and a Probe that
//! reports readiness.
//!
//! Unlike TopoLVM, Probe never fails: it answers `ready = false` while a check does not pass.
//! TopoLVM returns `FAILED_PRECONDITION` instead, and external-provisioner's start-up probe loop
//! exits on any Probe error other than `DEADLINE_EXCEEDED`, so a missing CSIDriver object or a
//! slow lvmd crash-loops the sidecars. `ready = false` makes them wait and ask again.

use std::fmt;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use topolvm_proto::csi;
use topolvm_proto::csi::plugin_capability::{self, service, volume_expansion};
use tracing::instrument;

use topolvm_core::names::PLUGIN_NAME;

/// Whether the plugin is ready to serve, asked on every Probe.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// The Identity service.
#[derive(Clone)]
pub struct IdentityService {
    vendor_version: String,
    ready: Readiness,
}

impl fmt::Debug for IdentityService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityService")
            .field("vendor_version", &self.vendor_version)
            .field("ready", &(self.ready)())
            .finish()
    }
}

impl IdentityService {
    /// An Identity service reporting `vendor_version` and asking `ready` on every Probe.
    pub fn new(vendor_version: impl Into<String>, ready: Readiness) -> Self {
        Self {
            vendor_version: vendor_version.into(),
            ready,
        }
    }

    /// The tonic server of this service.
    pub fn server(self) -> csi::identity_server::IdentityServer<Self> {
        csi::identity_server::IdentityServer::new(self)
    }
}

/// The capabilities TopoLVM announces, in its order.
pub fn plugin_capabilities() -> Vec<csi::PluginCapability> {
    let service = |t: service::Type| csi::PluginCapability {
        r#type: Some(plugin_capability::Type::Service(
            plugin_capability::Service { r#type: t as i32 },
        )),
    };
    let expansion = |t: volume_expansion::Type| csi::PluginCapability {
        r#type: Some(plugin_capability::Type::VolumeExpansion(
            plugin_capability::VolumeExpansion { r#type: t as i32 },
        )),
    };
    vec![
        service(service::Type::ControllerService),
        service(service::Type::VolumeAccessibilityConstraints),
        expansion(volume_expansion::Type::Online),
        expansion(volume_expansion::Type::Offline),
    ]
}

#[tonic::async_trait]
impl csi::identity_server::Identity for IdentityService {
    #[instrument(skip_all)]
    async fn get_plugin_info(
        &self,
        _request: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: PLUGIN_NAME.to_owned(),
            vendor_version: self.vendor_version.clone(),
            manifest: Default::default(),
        }))
    }

    #[instrument(skip_all)]
    async fn get_plugin_capabilities(
        &self,
        _request: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: plugin_capabilities(),
        }))
    }

    #[instrument(skip_all)]
    async fn probe(
        &self,
        _request: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse {
            ready: Some((self.ready)()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use csi::identity_server::Identity;

    fn service(ready: Arc<AtomicBool>) -> IdentityService {
        IdentityService::new("0.1.0", Arc::new(move || ready.load(Ordering::SeqCst)))
    }

    #[tokio::test]
    async fn plugin_info_is_topolvms_driver_name() {
        let info = service(Arc::new(AtomicBool::new(true)))
            .get_plugin_info(Request::new(Default::default()))
            .await
            .expect("info")
            .into_inner();
        // The CSIDriver object of TopoLVM's chart and every PV's spec.csi.driver say this name.
        assert_eq!(info.name, "topolvm.io");
        assert_eq!(info.vendor_version, "0.1.0");
        // csi-sanity: at most 63 characters, a DNS-1123-like name.
        assert!(info.name.len() <= 63);
    }

    #[tokio::test]
    async fn capabilities_are_topolvms_four() {
        let caps = service(Arc::new(AtomicBool::new(true)))
            .get_plugin_capabilities(Request::new(Default::default()))
            .await
            .expect("caps")
            .into_inner()
            .capabilities;
        // The enum names as the CSI spec's csi.proto spells them (identity.go's list).
        let names: Vec<String> = caps
            .iter()
            .map(|c| match c.r#type.as_ref().expect("type") {
                plugin_capability::Type::Service(s) => service::Type::try_from(s.r#type)
                    .expect("known")
                    .as_str_name()
                    .to_owned(),
                plugin_capability::Type::VolumeExpansion(e) => {
                    volume_expansion::Type::try_from(e.r#type)
                        .expect("known")
                        .as_str_name()
                        .to_owned()
                }
            })
            .collect();
        assert_eq!(
            names,
            [
                "CONTROLLER_SERVICE",
                "VOLUME_ACCESSIBILITY_CONSTRAINTS",
                "ONLINE",
                "OFFLINE"
            ]
        );
    }

    #[tokio::test]
    async fn probe_answers_not_ready_instead_of_an_error() {
        let ready = Arc::new(AtomicBool::new(false));
        let svc = service(ready.clone());
        let answer = svc
            .probe(Request::new(Default::default()))
            .await
            .expect("Probe never fails");
        assert_eq!(answer.into_inner().ready, Some(false));
        ready.store(true, Ordering::SeqCst);
        let answer = svc
            .probe(Request::new(Default::default()))
            .await
            .expect("ok");
        assert_eq!(answer.into_inner().ready, Some(true));
    }
}
