//! What the Controller service knows of the cluster, kept current by two reflectors (kube's
//! `watcher(..).modify(..).reflect(writer)`, as kube-rs's examples keep a store): every
//! LogicalVolume and every Node's metadata, each trimmed on arrival to the fields the RPCs read,
//! with an index of LogicalVolumes by `status.volumeID` derived from the store.
//!
//! Trimming is what lets 10,000 LogicalVolumes fit in a few MiB: a full object carries
//! managedFields, labels and annotations the RPCs never read.
//!
//! The service's own writes (the object it just created or patched) enter the same stream as
//! the watch's events, so the reflector stays the store's only writer and a following lookup
//! does not depend on the watch being fast.
//!
//! Every change bumps a [`tokio::sync::watch`] counter, so an RPC waiting for the node agent's
//! answer wakes as soon as the watch event arrives instead of polling.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use futures::channel::mpsc;
use futures::{Stream, StreamExt, future, stream};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::store::{Writer, WriterDropped};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
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

/// The write side of a [`Cache`]: the reflectors' writers and the service's own writes, taken
/// by [`Cache::follow`].
pub struct Feeds {
    volumes: Writer<LogicalVolume>,
    nodes: Writer<PartialObjectMeta<Node>>,
    own_writes: mpsc::UnboundedReceiver<Event<LogicalVolume>>,
}

impl std::fmt::Debug for Feeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeds").finish_non_exhaustive()
    }
}

/// The shared view of LogicalVolumes and Nodes.
pub struct Cache {
    volumes: Store<LogicalVolume>,
    nodes: Store<PartialObjectMeta<Node>>,
    /// `status.volumeID` → name, rebuilt from the store on every relist and kept up by the
    /// events after it. Only a hint: a lookup checks the stored object's id.
    by_id: RwLock<HashMap<String, String>>,
    own_writes: mpsc::UnboundedSender<Event<LogicalVolume>>,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("volumes", &self.volumes.len())
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

/// Keeps only what [`VolumeRecord::of`] reads.
fn trim_volume(lv: &mut LogicalVolume) {
    let meta = &mut lv.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
    meta.finalizers = None;
    meta.owner_references = None;
}

/// Keeps only what [`NodeRecord::of`] reads.
fn trim_node(node: &mut PartialObjectMeta<Node>) {
    let meta = &mut node.metadata;
    meta.managed_fields = None;
    meta.finalizers = None;
    meta.owner_references = None;
    if let Some(labels) = meta.labels.as_mut() {
        labels.retain(|k, _| k == names::TOPOLOGY_NODE_KEY);
    }
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| names::capacity_annotation_device_class(k).is_some());
    }
}

/// A Delete event for an object the store no longer holds under its name: the object was
/// deleted and made again, and the store already has the new one (from our own write). The
/// watch itself delivers a Delete before the new object's Apply, so only our writes run ahead.
fn is_stale_delete(store: &Store<LogicalVolume>, event: &Event<LogicalVolume>) -> bool {
    let Event::Delete(lv) = event else {
        return false;
    };
    store
        .get(&ObjectRef::new(&lv.name_any()))
        .is_some_and(|stored| stored.uid() != lv.uid())
}

impl Cache {
    /// An empty cache, and what fills it.
    pub fn new() -> (Arc<Self>, Feeds) {
        let volumes = Writer::default();
        let nodes = Writer::default();
        let (own_writes, own_receiver) = mpsc::unbounded();
        let cache = Arc::new(Self {
            volumes: volumes.as_reader(),
            nodes: nodes.as_reader(),
            by_id: RwLock::default(),
            own_writes,
            changed: watch::channel(0).0,
        });
        let feeds = Feeds {
            volumes,
            nodes,
            own_writes: own_receiver,
        };
        (cache, feeds)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Returns once both stores have listed everything; an error if the watches stopped first.
    pub async fn ready(&self) -> Result<(), WriterDropped> {
        self.volumes.wait_until_ready().await?;
        self.nodes.wait_until_ready().await
    }

    pub fn volume(&self, name: &str) -> Option<Arc<VolumeRecord>> {
        self.volumes
            .get(&ObjectRef::new(name))
            .map(|lv| Arc::new(VolumeRecord::of(&lv)))
    }

    pub fn volume_by_id(&self, volume_id: &str) -> Option<Arc<VolumeRecord>> {
        let name = self
            .by_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(volume_id)
            .cloned()?;
        self.volume(&name).filter(|r| r.volume_id == volume_id)
    }

    pub fn node(&self, name: &str) -> Option<NodeRecord> {
        self.nodes
            .get(&ObjectRef::new(name))
            .map(|node| NodeRecord::of(node.labels(), node.annotations()))
    }

    /// Calls `f` with every Node's name and record.
    pub fn nodes<T>(
        &self,
        f: impl FnOnce(&mut dyn Iterator<Item = (&str, &NodeRecord)>) -> T,
    ) -> T {
        let records: Vec<(String, NodeRecord)> = self
            .nodes
            .state()
            .iter()
            .map(|node| {
                (
                    node.name_any(),
                    NodeRecord::of(node.labels(), node.annotations()),
                )
            })
            .collect();
        let mut iter = records.iter().map(|(k, v)| (k.as_str(), v));
        f(&mut iter)
    }

    /// Records a LogicalVolume the service has just written (the API server's answer), ahead of
    /// its watch event.
    pub fn apply_volume(&self, lv: &LogicalVolume) {
        // Fails only once `follow` has ended: the process is stopping.
        let _ = self.own_writes.unbounded_send(Event::Apply(lv.clone()));
    }

    /// Keeps the id index in step with an event the store has just applied.
    fn index(&self, event: &Event<LogicalVolume>) {
        let mut by_id = self.by_id.write().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Apply(lv) => {
                if let Some(id) = lv.status.as_ref().map(|s| &s.volume_id)
                    && !id.is_empty()
                {
                    by_id.insert(id.clone(), lv.name_any());
                }
            }
            Event::Delete(lv) => {
                if let Some(id) = lv.status.as_ref().map(|s| &s.volume_id)
                    && by_id.get(id).is_some_and(|name| *name == lv.name_any())
                {
                    by_id.remove(id);
                }
            }
            Event::InitDone => {
                *by_id = self
                    .volumes
                    .state()
                    .iter()
                    .filter_map(|lv| {
                        let id = &lv.status.as_ref()?.volume_id;
                        (!id.is_empty()).then(|| (id.clone(), lv.name_any()))
                    })
                    .collect();
                debug!(count = self.volumes.len(), "LogicalVolumes listed");
            }
            Event::Init | Event::InitApply(_) => {}
        }
    }

    /// Follows LogicalVolumes and Node metadata until `shutdown`.
    pub async fn follow(
        self: Arc<Self>,
        feeds: Feeds,
        volumes: Api<LogicalVolume>,
        nodes: Api<PartialObjectMeta<Node>>,
        shutdown: CancellationToken,
    ) {
        let config = watcher::Config::default();
        self.run(
            feeds,
            watcher(volumes, config.clone()).default_backoff(),
            watcher(nodes, config).default_backoff(),
            shutdown,
        )
        .await;
    }

    /// Feeds the stores from these event streams (and the service's own writes).
    async fn run(
        &self,
        feeds: Feeds,
        volume_events: impl Stream<Item = watcher::Result<Event<LogicalVolume>>> + Send,
        node_events: impl Stream<Item = watcher::Result<Event<PartialObjectMeta<Node>>>> + Send,
        shutdown: CancellationToken,
    ) {
        let store = self.volumes.clone();
        let volumes = stream::select(volume_events, feeds.own_writes.map(Ok))
            .filter(move |event| {
                let keep = !event.as_ref().is_ok_and(|e| is_stale_delete(&store, e));
                future::ready(keep)
            })
            .modify(trim_volume)
            .reflect(feeds.volumes);
        let nodes = node_events.modify(trim_node).reflect(feeds.nodes);
        let mut volumes = std::pin::pin!(volumes);
        let mut nodes = std::pin::pin!(nodes);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(event) = volumes.next() => match event {
                    Ok(event) => self.index(&event),
                    Err(e) => warn!(error = %e, "watching LogicalVolumes"),
                },
                Some(event) = nodes.next() => if let Err(e) = event {
                    warn!(error = %e, "watching Nodes");
                },
                else => return,
            }
            self.bump();
        }
    }
}

/// A cache as a finished first listing leaves it, fed by the test through
/// [`Cache::apply_volume`] and [`Cache::delete_volume`] instead of watches.
#[cfg(test)]
impl Cache {
    pub fn loaded(nodes: HashMap<String, NodeRecord>, volumes: &[LogicalVolume]) -> Arc<Self> {
        let (cache, mut feeds) = Self::new();
        let mut listing = vec![Event::Init];
        listing.extend(volumes.iter().cloned().map(Event::InitApply));
        listing.push(Event::InitDone);
        for mut event in listing {
            if let Event::InitApply(lv) = &mut event {
                trim_volume(lv);
            }
            feeds.volumes.apply_watcher_event(&event);
            cache.index(&event);
        }
        feeds.nodes.apply_watcher_event(&Event::Init);
        for (name, record) in nodes {
            let mut meta = kube::api::ObjectMeta {
                name: Some(name),
                labels: Some(BTreeMap::new()),
                annotations: Some(record.capacity),
                ..Default::default()
            };
            if let (Some(labels), Some(topology)) = (meta.labels.as_mut(), record.topology) {
                labels.insert(names::TOPOLOGY_NODE_KEY.to_owned(), topology);
            }
            let node = PartialObjectMeta::<Node> {
                types: None,
                metadata: meta,
                _phantom: std::marker::PhantomData,
            };
            feeds.nodes.apply_watcher_event(&Event::InitApply(node));
        }
        feeds.nodes.apply_watcher_event(&Event::InitDone);
        tokio::spawn({
            let cache = cache.clone();
            async move {
                cache
                    .run(
                        feeds,
                        stream::pending(),
                        stream::pending(),
                        CancellationToken::new(),
                    )
                    .await;
            }
        });
        cache
    }

    /// The watch's Delete event for the stored object `name`.
    pub fn delete_volume(&self, name: &str) {
        if let Some(lv) = self.volumes.get(&ObjectRef::new(name)) {
            let _ = self
                .own_writes
                .unbounded_send(Event::Delete(lv.as_ref().clone()));
        }
    }
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

    /// Waits until the cache's task has applied everything sent so far: `marker` is sent
    /// last and the own writes are applied in order.
    async fn settled(cache: &Cache, marker: &str) {
        let seen = cache.volume(marker).map(|r| r.generation).unwrap_or(-1);
        let mut next = lv(marker, marker, "");
        next.metadata.generation = Some(seen + 1);
        cache.apply_volume(&next);
        let mut changes = cache.subscribe();
        while cache.volume(marker).map(|r| r.generation) != Some(seen + 1) {
            changes.changed().await.expect("the cache runs");
        }
    }

    #[tokio::test]
    async fn the_id_index_follows_updates_deletes_and_listings() {
        let cache = Cache::loaded(HashMap::new(), &[lv("listed", "u0", "u0")]);
        assert_eq!(
            cache.volume_by_id("u0").map(|r| r.name.clone()),
            Some("listed".to_owned())
        );
        cache.apply_volume(&lv("a", "u1", ""));
        settled(&cache, "marker").await;
        assert!(cache.volume("a").is_some());
        assert!(cache.volume_by_id("u1").is_none());
        cache.apply_volume(&lv("a", "u1", "u1"));
        settled(&cache, "marker").await;
        assert_eq!(
            cache.volume_by_id("u1").map(|r| r.name.clone()),
            Some("a".to_owned())
        );
        // The object is deleted and made again under its name (our own write) before the
        // Delete event of the first one arrives: the new one stays.
        cache.apply_volume(&lv("a", "u2", ""));
        settled(&cache, "marker").await;
        assert!(
            cache.volume_by_id("u1").is_none(),
            "the old id left with its object"
        );
        let _ = cache
            .own_writes
            .unbounded_send(Event::Delete(lv("a", "u1", "u1")));
        settled(&cache, "marker").await;
        assert_eq!(
            cache.volume("a").map(|r| r.uid.clone()),
            Some("u2".to_owned())
        );
        cache.delete_volume("a");
        settled(&cache, "marker").await;
        assert!(cache.volume("a").is_none());
    }

    #[test]
    fn trimming_keeps_what_the_records_read() {
        let mut full = lv("a", "u1", "u1");
        full.metadata.annotations = Some(BTreeMap::from([("a".to_owned(), "b".to_owned())]));
        full.metadata.finalizers = Some(vec!["topolvm.io/logicalvolume".to_owned()]);
        let before = VolumeRecord::of(&full);
        trim_volume(&mut full);
        assert_eq!(VolumeRecord::of(&full), before);
        assert!(full.metadata.annotations.is_none());
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
