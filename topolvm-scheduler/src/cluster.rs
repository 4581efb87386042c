//! The extender's view of the cluster (only with `--watch-cluster`): pods and claims for the
//! burst accounting, and node metadata for `nodeCacheCapable: true`.
//!
//! Reflector stores are filled by watches in the background; a request only reads what is
//! there and never waits on the API server. Until the first lists arrive, nothing is counted
//! as pending (TopoLVM's behaviour), and the extender's own reservations already apply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{
    EphemeralVolumeSource, Node, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimStatus, Pod, PodSpec, PodStatus, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use topolvm_core::names::capacity_annotation_device_class;
use tracing::{debug, info, warn};

use crate::accounting::{
    ClaimKey, ClaimState, PendingPlacements, ReservationTable, SELECTED_NODE_ANNOTATION,
    claim_state,
};
use crate::metrics::Metrics;

/// Node metadata as cached for `NodeNames` requests.
pub type NodeMeta = PartialObjectMeta<Node>;

/// Pods in these phases never start, so they are not watched at all.
const NOT_TERMINAL_PODS: &str = "status.phase!=Succeeded,status.phase!=Failed";

/// Shared state of the cluster view.
#[derive(Debug)]
pub struct ClusterState {
    pending: RwLock<Arc<PendingPlacements>>,
    reservations: Mutex<ReservationTable>,
    nodes: Store<NodeMeta>,
    synced: AtomicBool,
    metrics: Arc<Metrics>,
}

/// The writing end of the node cache, handed to the node watch (or to a test).
#[derive(Debug)]
pub struct NodeCacheWriter(pub reflector::store::Writer<NodeMeta>);

/// The reservation table, locked. While it is held, the pending placements cannot change
/// either, so a request sees both from the same moment.
#[derive(Debug)]
pub struct Promises<'a> {
    pub reservations: MutexGuard<'a, ReservationTable>,
    pub pending: Arc<PendingPlacements>,
}

impl ClusterState {
    pub fn new(reservation_ttl: Duration, metrics: Arc<Metrics>) -> (Arc<Self>, NodeCacheWriter) {
        let (nodes, writer) = reflector::store();
        let state = Arc::new(Self {
            pending: RwLock::new(Arc::new(PendingPlacements::default())),
            reservations: Mutex::new(ReservationTable::new(reservation_ttl)),
            nodes,
            synced: AtomicBool::new(false),
            metrics,
        });
        (state, NodeCacheWriter(writer))
    }

    /// Locks the reservations, after dropping expired ones.
    pub fn promises(&self) -> Promises<'_> {
        let mut reservations = self
            .reservations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        reservations.expire(Instant::now());
        let pending = self
            .pending
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Promises {
            reservations,
            pending,
        }
    }

    /// Publishes new pending placements and drops the reservations they supersede, atomically
    /// for requests (both happen under the reservation lock).
    pub fn set_pending(&self, pending: PendingPlacements) {
        let mut reservations = self
            .reservations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let dropped = reservations.drop_superseded(|uid| pending.is_placed(uid));
        reservations.expire(Instant::now());
        self.metrics.set_pending_pods(pending.pending_pods());
        self.metrics.set_reservations(reservations.len());
        if dropped > 0 {
            debug!(
                dropped,
                "reservations superseded by placements seen in the cluster"
            );
        }
        *self.pending.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pending);
    }

    /// Drops the reservation of a pod that is gone.
    pub fn forget_pod(&self, uid: &str) {
        let mut reservations = self
            .reservations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if reservations.remove(uid) {
            self.metrics.set_reservations(reservations.len());
        }
    }

    /// Records the current number of reservations in the metrics.
    pub fn report_reservations(&self, count: usize) {
        self.metrics.set_reservations(count);
    }

    /// A node from the cache.
    pub fn node(&self, name: &str) -> Option<Arc<NodeMeta>> {
        self.nodes.get(&ObjectRef::new(name))
    }

    /// True once the first lists of pods and claims have been read.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }
}

/// Watches pods, claims and nodes until `shutdown`, keeping `state` current.
pub async fn watch(
    client: kube::Client,
    state: Arc<ClusterState>,
    node_writer: NodeCacheWriter,
    shutdown: CancellationToken,
) {
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let (claim_store, claim_writer) = reflector::store::<PersistentVolumeClaim>();
    let changed = Arc::new(Notify::new());
    let tasks = TaskTracker::new();

    let pods = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(NOT_TERMINAL_PODS),
    )
    .default_backoff()
    .modify(slim_pod)
    .reflect(pod_writer);
    tasks.spawn(drive("pods", pods, shutdown.clone(), {
        let (state, changed) = (state.clone(), changed.clone());
        move |event: &Event<Pod>| {
            if let Event::Delete(pod) = event
                && let Some(uid) = pod.metadata.uid.as_deref()
            {
                state.forget_pod(uid);
            }
            changed.notify_one();
        }
    }));

    let claims = watcher(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(slim_claim)
    .reflect(claim_writer);
    tasks.spawn(drive("persistentvolumeclaims", claims, shutdown.clone(), {
        let changed = changed.clone();
        move |_: &Event<PersistentVolumeClaim>| changed.notify_one()
    }));

    // An Api of PartialObjectMeta makes metadata-only requests: no node status is transferred.
    let nodes = watcher(Api::<NodeMeta>::all(client), watcher::Config::default())
        .default_backoff()
        .modify(slim_node)
        .reflect(node_writer.0);
    tasks.spawn(drive(
        "nodes",
        nodes,
        shutdown.clone(),
        |_: &Event<NodeMeta>| {},
    ));

    tasks.spawn(keep_pending(
        state,
        pod_store,
        claim_store,
        changed,
        shutdown.clone(),
    ));
    tasks.close();
    tasks.wait().await;
}

/// Runs a watch stream until `shutdown`, handing each event to `on_event`. Errors are logged;
/// the stream's backoff retries them.
async fn drive<K, S>(
    kind: &'static str,
    stream: S,
    shutdown: CancellationToken,
    on_event: impl Fn(&Event<K>) + Send + 'static,
) where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            item = stream.next() => match item {
                Some(Ok(event)) => on_event(&event),
                Some(Err(e)) => warn!(kind, error = %e, "watch failed; retrying"),
                None => return,
            },
        }
    }
}

/// Recomputes the pending placements whenever pods or claims change.
async fn keep_pending(
    state: Arc<ClusterState>,
    pods: Store<Pod>,
    claims: Store<PersistentVolumeClaim>,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = shutdown.cancelled() => return,
        ready = async { tokio::try_join!(pods.wait_until_ready(), claims.wait_until_ready()) } => {
            if ready.is_err() {
                return;
            }
        }
    }
    state.synced.store(true, Ordering::Relaxed);
    info!("pods and claims listed; capacity of placed but unprovisioned pods now counts");
    loop {
        let (pods, claims) = (pods.clone(), claims.clone());
        let computed = tokio::task::spawn_blocking(move || {
            let claim_index: HashMap<ClaimKey, ClaimState> = claims
                .state()
                .iter()
                .filter_map(|c| claim_state(c))
                .collect();
            let snapshot = pods.state();
            PendingPlacements::compute(snapshot.iter().map(|p| p.as_ref()), &claim_index)
        })
        .await;
        match computed {
            Ok(pending) => state.set_pending(pending),
            Err(e) => warn!(error = %e, "computing pending placements failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed.notified() => {}
        }
    }
}

fn retain_capacity_annotations(meta: &mut ObjectMeta) {
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|k, _| capacity_annotation_device_class(k).is_some());
    }
}

/// Keeps only what the accounting reads, so a large cluster's pods cost little memory.
fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.labels = None;
    pod.metadata.owner_references = None;
    retain_capacity_annotations(&mut pod.metadata);
    if let Some(spec) = &mut pod.spec {
        let volumes = spec.volumes.take().map(|volumes| {
            volumes
                .into_iter()
                .filter(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some())
                .map(|v| Volume {
                    name: v.name,
                    persistent_volume_claim: v.persistent_volume_claim,
                    ephemeral: v.ephemeral.map(|_| EphemeralVolumeSource::default()),
                    ..Default::default()
                })
                .collect()
        });
        *spec = PodSpec {
            node_name: spec.node_name.take(),
            volumes,
            ..Default::default()
        };
    }
    if let Some(status) = &mut pod.status {
        *status = PodStatus {
            phase: status.phase.take(),
            ..Default::default()
        };
    }
}

fn slim_claim(claim: &mut PersistentVolumeClaim) {
    claim.metadata.managed_fields = None;
    claim.metadata.labels = None;
    if let Some(annotations) = &mut claim.metadata.annotations {
        annotations.retain(|k, _| k == SELECTED_NODE_ANNOTATION);
    }
    if let Some(spec) = &mut claim.spec {
        *spec = PersistentVolumeClaimSpec {
            volume_name: spec.volume_name.take(),
            ..Default::default()
        };
    }
    if let Some(status) = &mut claim.status {
        *status = PersistentVolumeClaimStatus {
            phase: status.phase.take(),
            ..Default::default()
        };
    }
}

fn slim_node(node: &mut NodeMeta) {
    node.metadata.managed_fields = None;
    node.metadata.labels = None;
    retain_capacity_annotations(&mut node.metadata);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Container, PersistentVolumeClaimVolumeSource};

    use super::*;
    use crate::accounting::pod_claim_names;

    #[test]
    fn slimming_keeps_what_the_accounting_reads() {
        let mut pod = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                uid: Some("u".into()),
                annotations: Some(BTreeMap::from([
                    ("capacity.topolvm.io/ssd".to_owned(), "5".to_owned()),
                    ("big".to_owned(), "x".repeat(1000)),
                ])),
                labels: Some(BTreeMap::from([("a".to_owned(), "b".to_owned())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ..Default::default()
                }],
                volumes: Some(vec![
                    Volume {
                        name: "data".into(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: "claim".into(),
                            read_only: None,
                        }),
                        ..Default::default()
                    },
                    Volume {
                        name: "cfg".into(),
                        ..Default::default()
                    },
                    Volume {
                        name: "scratch".into(),
                        ephemeral: Some(EphemeralVolumeSource::default()),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                host_ip: Some("10.0.0.1".into()),
                ..Default::default()
            }),
        };
        slim_pod(&mut pod);
        assert_eq!(
            pod.metadata.annotations,
            Some(BTreeMap::from([(
                "capacity.topolvm.io/ssd".to_owned(),
                "5".to_owned()
            )]))
        );
        assert!(pod.metadata.labels.is_none());
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert!(spec.containers.is_empty());
        assert_eq!(pod_claim_names(&pod), ["claim", "p-scratch"]);
        let status = pod.status.as_ref().expect("status");
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert!(status.host_ip.is_none());

        let mut claim = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("c".into()),
                namespace: Some("ns".into()),
                annotations: Some(BTreeMap::from([
                    (SELECTED_NODE_ANNOTATION.to_owned(), "n1".to_owned()),
                    ("other".to_owned(), "x".to_owned()),
                ])),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                volume_name: Some("pv".into()),
                storage_class_name: Some("topolvm".into()),
                ..Default::default()
            }),
            status: None,
        };
        let before = claim_state(&claim);
        slim_claim(&mut claim);
        assert_eq!(claim_state(&claim), before);
        assert_eq!(
            claim.metadata.annotations.as_ref().map(BTreeMap::len),
            Some(1)
        );
    }

    #[tokio::test]
    async fn node_cache_and_reservation_bookkeeping() {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let (state, mut writer) = ClusterState::new(Duration::from_secs(30), metrics);
        assert!(state.node("n1").is_none());
        let mut node = NodeMeta::default();
        node.metadata.name = Some("n1".into());
        writer.0.apply_watcher_event(&Event::Apply(node));
        assert!(state.node("n1").is_some());
        assert!(!state.is_synced());

        {
            let mut promises = state.promises();
            promises.reservations.reserve(
                "u1",
                "ns/p",
                [("ssd".to_owned(), 5)].into(),
                ["n1"],
                Instant::now(),
            );
        }
        state.forget_pod("u1");
        assert!(state.promises().reservations.is_empty());
    }
}
