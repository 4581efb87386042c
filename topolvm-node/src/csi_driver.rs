//! Readiness on the `storage.k8s.io/v1` CSIDriver object `topolvm.io`: without it kubelet does
//! not know how to mount TopoLVM volumes (podInfoOnMount, attachRequired), so TopoLVM's node
//! reports not ready until it exists. TopoLVM checks every minute and answers the CSI Probe
//! with an error meanwhile, which makes external-provisioner's start-up probe exit; we follow
//! the object with a watch (seconds, not a minute) and the Probe simply says "not ready".

use futures::StreamExt;
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio_util::sync::CancellationToken;
use topolvm_core::names::PLUGIN_NAME;
use topolvm_runtime::endpoints::Readiness;
use tracing::{info, warn};

/// Sets `readiness` to whether the CSIDriver object exists, until `shutdown`. Watch errors are
/// retried with backoff; the last known answer stands meanwhile.
pub async fn follow(client: kube::Client, readiness: Readiness, shutdown: CancellationToken) {
    let api: Api<CSIDriver> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={PLUGIN_NAME}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    // During a (re-)list, whether the object was seen since the list started.
    let mut seen_in_list = false;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        let present = match event {
            None => return,
            Some(Err(e)) => {
                warn!(error = %e, csidriver = PLUGIN_NAME, "watching the CSIDriver object");
                continue;
            }
            Some(Ok(Event::Init)) => {
                seen_in_list = false;
                continue;
            }
            Some(Ok(Event::InitApply(_))) => {
                seen_in_list = true;
                continue;
            }
            Some(Ok(Event::InitDone)) => seen_in_list,
            Some(Ok(Event::Apply(_))) => true,
            Some(Ok(Event::Delete(_))) => false,
        };
        if present != readiness.is_ready() {
            if present {
                info!(csidriver = PLUGIN_NAME, "the CSIDriver object exists");
            } else {
                warn!(
                    csidriver = PLUGIN_NAME,
                    "the CSIDriver object is missing; not ready until it is created"
                );
            }
        }
        readiness.set_ready(present);
    }
}
