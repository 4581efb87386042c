//! Readiness that follows whether one named cluster-scoped object exists, through a watch on
//! that object alone (a field selector on its name): seconds after it is created or deleted,
//! at the cost of one idle watch. topolvm-node and topolvm-controller use it for the CSIDriver
//! object, without which kubelet cannot mount TopoLVM volumes (TopoLVM checks once a minute).

use std::fmt::Debug;

use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::endpoints::Readiness;

/// Sets `readiness` to whether the object `name` of `api` exists, until `shutdown`. Watch
/// errors are retried with backoff; the last known answer stands meanwhile.
pub async fn follow<K>(api: Api<K>, name: &str, readiness: Readiness, shutdown: CancellationToken)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    // During a (re-)list: whether the object was seen since the list started.
    let mut seen_in_list = false;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        let present = match event {
            None => return,
            Some(Err(e)) => {
                warn!(error = %e, %kind, %name, "watching an object readiness depends on");
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
                info!(%kind, %name, "the object exists");
            } else {
                warn!(%kind, %name, "the object is missing; not ready until it is created");
            }
        }
        readiness.set_ready(present);
    }
}
