//! What the Controller service knows of the cluster, kept current by two watches (the
//! controller-rs pattern, without a general reflector store): every LogicalVolume, reduced to
//! the fields the RPCs read, indexed by name and by `status.volumeID`; and every Node's
//! metadata, reduced to its topology label and its `capacity.topolvm.io/*` annotations.
//!
//! Keeping only these fields is what lets 10,000 LogicalVolumes fit in a few MiB: a full object
//! carries managedFields, labels and annotations the RPCs never read.
//!
//! Every change bumps a [`tokio::sync::watch`] counter, so an RPC waiting for the node agent's
//! answer wakes as soon as the watch event arrives instead of polling.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use topolvm_core::crd::LogicalVolume;
use topolvm_core::names;
use tracing::{debug, warn};

/// The fields of a LogicalVolume the Controller service reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRecord {
    pub name: String,
    pub uid: String,
    pub node_name: String,
    pub device_class: String,
    /// `spec.source`: the name of the LogicalVolume this one is made from.
    pub source: String,
    /// `spec.size` in bytes; `None` when unparseable.
    pub size: Option<u64>,
    pub volume_id: String,
    pub code: i32,
    pub message: String,
    /// `status.currentSize` in bytes.
    pub current_size: Option<u64>,
    pub deleting: bool,
    pub created: Option<Timestamp>,
    /// `metadata.generation`: raised by every spec change, not by status writes, so a waiter
    /// can tell an event from before its own spec change from one after it.
    pub generation: i64,
}

impl VolumeRecord {
    /// The record of a full object.
    pub fn of(lv: &LogicalVolume) -> Self {
        let status = lv.status.clone().unwrap_or_default();
        Self {
            name: lv.name_any(),
            uid: lv.uid().unwrap_or_default(),
            node_name: lv.spec.node_name.clone(),
            device_class: lv.spec.device_class.clone(),
            source: lv.spec.source.clone(),
            size: lv.spec.size_bytes().ok(),
            current_size: status.current_size_bytes().and_then(Result::ok),
            volume_id: status.volume_id,
            code: status.code,
            message: status.message,
            deleting: lv.meta().deletion_timestamp.is_some(),
            created: lv.meta().creation_timestamp.as_ref().map(|t| t.0),
            generation: lv.meta().generation.unwrap_or_default(),
        }
    }

    /// `status.currentSize`, else `spec.size` (TopoLVM's fallback for objects it recovered).
    pub fn current_or_spec_size(&self) -> Option<u64> {
        self.current_size.or(self.size)
    }
}

/// The fields of a Node the Controller service reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRecord {
    /// The value of the label `topology.topolvm.io/node`, if any.
    pub topology: Option<String>,
    /// The `capacity.topolvm.io/*` annotations.
    pub capacity: BTreeMap<String, String>,
}

impl NodeRecord {
    /// The record of a Node's labels and annotations.
    pub fn of(labels: &BTreeMap<String, String>, annotations: &BTreeMap<String, String>) -> Self {
        Self {
            topology: labels.get(names::TOPOLOGY_NODE_KEY).cloned(),
            capacity: annotations
                .iter()
                .filter(|(k, _)| names::capacity_annotation_device_class(k).is_some())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

#[derive(Debug, Default)]
struct Volumes {
    by_name: HashMap<String, Arc<VolumeRecord>>,
    /// `status.volumeID` → name.
    by_id: HashMap<String, String>,
}

impl Volumes {
    fn insert(&mut self, record: VolumeRecord) {
        if let Some(old) = self.by_name.get(&record.name)
            && !old.volume_id.is_empty()
            && old.volume_id != record.volume_id
        {
            self.by_id.remove(&old.volume_id);
        }
        if !record.volume_id.is_empty() {
            self.by_id
                .insert(record.volume_id.clone(), record.name.clone());
        }
        self.by_name.insert(record.name.clone(), Arc::new(record));
    }

    /// Forgets `name`; with `uid`, only if the record is of that object (a late Delete event
    /// of an earlier object must not drop the one recreated under its name).
    fn remove(&mut self, name: &str, uid: Option<&str>) {
        if uid.is_some_and(|uid| self.by_name.get(name).is_some_and(|r| r.uid != uid)) {
            return;
        }
        if let Some(old) = self.by_name.remove(name)
            && self.by_id.get(&old.volume_id).map(String::as_str) == Some(name)
        {
            self.by_id.remove(&old.volume_id);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    volumes: Volumes,
    nodes: HashMap<String, NodeRecord>,
    volumes_synced: bool,
    nodes_synced: bool,
}

/// The shared view of LogicalVolumes and Nodes.
#[derive(Debug)]
pub struct Cache {
    state: RwLock<State>,
    changed: watch::Sender<u64>,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            state: RwLock::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Cache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping the service would: keep serving.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// True once both watches have listed everything.
    pub fn synced(&self) -> bool {
        let state = self.read();
        state.volumes_synced && state.nodes_synced
    }

    pub fn volume(&self, name: &str) -> Option<Arc<VolumeRecord>> {
        self.read().volumes.by_name.get(name).cloned()
    }

    pub fn volume_by_id(&self, volume_id: &str) -> Option<Arc<VolumeRecord>> {
        let state = self.read();
        let name = state.volumes.by_id.get(volume_id)?;
        state.volumes.by_name.get(name).cloned()
    }

    pub fn node(&self, name: &str) -> Option<NodeRecord> {
        self.read().nodes.get(name).cloned()
    }

    /// Calls `f` with every Node's name and record.
    pub fn nodes<T>(
        &self,
        f: impl FnOnce(&mut dyn Iterator<Item = (&str, &NodeRecord)>) -> T,
    ) -> T {
        let state = self.read();
        let mut iter = state.nodes.iter().map(|(k, v)| (k.as_str(), v));
        f(&mut iter)
    }

    /// Records a LogicalVolume (also used by the service right after its own writes, so a
    /// following lookup does not depend on the watch being fast).
    pub fn apply_volume(&self, lv: &LogicalVolume) {
        self.write().volumes.insert(VolumeRecord::of(lv));
        self.bump();
    }

    pub fn delete_volume(&self, name: &str) {
        self.write().volumes.remove(name, None);
        self.bump();
    }

    fn delete_volume_of(&self, lv: &LogicalVolume) {
        let uid = lv.uid();
        self.write().volumes.remove(&lv.name_any(), uid.as_deref());
        self.bump();
    }

    fn replace_volumes(&self, volumes: Volumes) {
        let mut state = self.write();
        state.volumes = volumes;
        state.volumes_synced = true;
        drop(state);
        self.bump();
    }

    pub fn apply_node(&self, name: &str, record: NodeRecord) {
        self.write().nodes.insert(name.to_owned(), record);
        self.bump();
    }

    pub fn delete_node(&self, name: &str) {
        self.write().nodes.remove(name);
        self.bump();
    }

    fn replace_nodes(&self, nodes: HashMap<String, NodeRecord>) {
        let mut state = self.write();
        state.nodes = nodes;
        state.nodes_synced = true;
        drop(state);
        self.bump();
    }

    /// Fills the cache as a finished first listing would.
    #[cfg(test)]
    pub fn loaded(&self, nodes: HashMap<String, NodeRecord>, volumes: &[LogicalVolume]) {
        let mut listed = Volumes::default();
        for lv in volumes {
            listed.insert(VolumeRecord::of(lv));
        }
        self.replace_volumes(listed);
        self.replace_nodes(nodes);
    }

    /// Follows LogicalVolumes until `shutdown`.
    pub async fn follow_volumes(
        self: Arc<Self>,
        api: Api<LogicalVolume>,
        shutdown: CancellationToken,
    ) {
        let stream = watcher(api).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut relist: Option<Volumes> = None;
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = stream.next() => event,
            };
            match event {
                None => return,
                Some(Err(e)) => warn!(error = %e, "watching LogicalVolumes"),
                Some(Ok(Event::Init)) => relist = Some(Volumes::default()),
                Some(Ok(Event::InitApply(lv))) => {
                    relist
                        .get_or_insert_with(Volumes::default)
                        .insert(VolumeRecord::of(&lv));
                }
                Some(Ok(Event::InitDone)) => {
                    let volumes = relist.take().unwrap_or_default();
                    debug!(count = volumes.by_name.len(), "LogicalVolumes listed");
                    self.replace_volumes(volumes);
                }
                Some(Ok(Event::Apply(lv))) => self.apply_volume(&lv),
                Some(Ok(Event::Delete(lv))) => self.delete_volume_of(&lv),
            }
        }
    }

    /// Follows Node metadata until `shutdown`.
    pub async fn follow_nodes(
        self: Arc<Self>,
        api: Api<PartialObjectMeta<Node>>,
        shutdown: CancellationToken,
    ) {
        let stream = kube::runtime::watcher(api, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut relist: Option<HashMap<String, NodeRecord>> = None;
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = stream.next() => event,
            };
            match event {
                None => return,
                Some(Err(e)) => warn!(error = %e, "watching Nodes"),
                Some(Ok(Event::Init)) => relist = Some(HashMap::new()),
                Some(Ok(Event::InitApply(node))) => {
                    relist.get_or_insert_with(HashMap::new).insert(
                        node.name_any(),
                        NodeRecord::of(node.labels(), node.annotations()),
                    );
                }
                Some(Ok(Event::InitDone)) => self.replace_nodes(relist.take().unwrap_or_default()),
                Some(Ok(Event::Apply(node))) => self.apply_node(
                    &node.name_any(),
                    NodeRecord::of(node.labels(), node.annotations()),
                ),
                Some(Ok(Event::Delete(node))) => self.delete_node(&node.name_any()),
            }
        }
    }
}

fn watcher(
    api: Api<LogicalVolume>,
) -> impl futures::Stream<Item = Result<Event<LogicalVolume>, watcher::Error>> {
    kube::runtime::watcher(api, watcher::Config::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use topolvm_core::crd::{LogicalVolumeSpec, LogicalVolumeStatus};

    fn lv(name: &str, uid: &str, volume_id: &str) -> LogicalVolume {
        let mut lv = LogicalVolume::new(
            name,
            LogicalVolumeSpec {
                name: name.to_owned(),
                node_name: "n1".to_owned(),
                size: Quantity("1Gi".to_owned()),
                ..LogicalVolumeSpec::default()
            },
        );
        lv.metadata.uid = Some(uid.to_owned());
        lv.status = Some(LogicalVolumeStatus {
            volume_id: volume_id.to_owned(),
            ..Default::default()
        });
        lv
    }

    #[test]
    fn both_indexes_follow_updates_and_deletes() {
        let cache = Cache::default();
        cache.apply_volume(&lv("a", "u1", ""));
        assert!(cache.volume("a").is_some());
        assert!(cache.volume_by_id("u1").is_none());
        cache.apply_volume(&lv("a", "u1", "u1"));
        assert_eq!(
            cache.volume_by_id("u1").map(|r| r.name.clone()),
            Some("a".to_owned())
        );
        // The object is deleted and made again under its name before the Delete event of the
        // first one arrives: the new one stays.
        cache.apply_volume(&lv("a", "u2", ""));
        assert!(
            cache.volume_by_id("u1").is_none(),
            "the old id left with its object"
        );
        cache.delete_volume_of(&lv("a", "u1", "u1"));
        assert_eq!(
            cache.volume("a").map(|r| r.uid.clone()),
            Some("u2".to_owned())
        );
        cache.delete_volume_of(&lv("a", "u2", ""));
        assert!(cache.volume("a").is_none());
    }

    #[test]
    fn nodes_keep_only_the_topology_label_and_capacity_annotations() {
        let labels = BTreeMap::from([
            (names::TOPOLOGY_NODE_KEY.to_owned(), "n1".to_owned()),
            ("kubernetes.io/hostname".to_owned(), "n1".to_owned()),
        ]);
        let annotations = BTreeMap::from([
            ("capacity.topolvm.io/ssd".to_owned(), "5".to_owned()),
            ("node.alpha.kubernetes.io/ttl".to_owned(), "0".to_owned()),
        ]);
        let record = NodeRecord::of(&labels, &annotations);
        assert_eq!(record.topology.as_deref(), Some("n1"));
        assert_eq!(
            record.capacity,
            BTreeMap::from([("capacity.topolvm.io/ssd".to_owned(), "5".to_owned())])
        );
    }
}
