//! Orphan LVs: LVs that carry our lvmd's ownership tag but whose LogicalVolume (or, for an
//! inline ephemeral volume, whose pod) no longer exists — left by a deletion while the node was
//! down and its finalizer was removed by force, or by an object deleted behind a crash
//! (TopoLVM issues 868 and 715). They hold space nobody can use.
//!
//! An LV is called an orphan only when the API server confirms it in this scan: a GET by the
//! `topolvm.io/logicalvolume` tag answers 404 or an object with another UID, or a paginated
//! LIST of every LogicalVolume (for LVs without that tag) has no object of that UID, or a LIST
//! of this node's pods has no pod of the `topolvm.io/ephemeral-pod` tag's UID. Never from a
//! cache that may be empty or stale. An LV without `topolvm.io/managed` is not ours and never
//! looked at.
//!
//! Orphans are reported (gauge, Node Event, warning log). They are removed only with
//! `--orphan-gc-after`, once seen orphaned in every scan for that long; the clock is kept in
//! memory, so a restart starts it again, which only ever delays a removal.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use prometheus::{IntGaugeVec, Opts, Registry};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use topolvm_core::crd::LogicalVolume;
use topolvm_core::names;
use topolvm_proto::lvmd as pb;
use tracing::{debug, info, warn};

use super::volumes::Volumes;
use crate::lvmd_client::{LatestReport, device_classes};

/// Event reason on the Node for an LV found orphaned.
pub const ORPHAN_EVENT_REASON: &str = "OrphanVolume";
/// Event reason on the Node for an orphan LV removed by `--orphan-gc-after`.
pub const ORPHAN_REMOVED_EVENT_REASON: &str = "OrphanVolumeRemoved";
/// Namespace of Events about cluster-scoped objects such as Nodes, as kubelet writes them.
const EVENT_NAMESPACE: &str = "default";
const COMPONENT: &str = "topolvm-node";
const PAGE_SIZE: u32 = 500;

/// Why one scan stopped without a verdict; the next scan tries again.
#[derive(Debug, Error)]
pub enum OrphanError {
    #[error("asking the API server: {0}")]
    Kube(#[from] kube::Error),
}

/// When to scan and whether to remove.
#[derive(Debug, Clone, Copy)]
pub struct OrphanOptions {
    pub first_scan_after: Duration,
    pub interval: Duration,
    /// Remove an LV seen orphaned for this long; `None`: only report.
    pub gc_after: Option<Duration>,
}

impl OrphanOptions {
    /// Scans every `interval` (the first one after at most 10 s) and removes orphans seen for
    /// `gc_after`.
    pub fn new(interval: Duration, gc_after: Option<Duration>) -> Self {
        Self {
            first_scan_after: interval.min(Duration::from_secs(10)),
            interval,
            gc_after,
        }
    }
}

impl Default for OrphanOptions {
    fn default() -> Self {
        Self {
            first_scan_after: Duration::from_secs(10),
            interval: Duration::from_secs(60),
            gc_after: None,
        }
    }
}

/// One LV found orphaned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub name: String,
    pub device_class: String,
    pub size_bytes: i64,
    /// Why it is an orphan, for the Event and the log.
    pub reason: String,
}

/// Finds, reports and (optionally) removes this node's orphan LVs.
pub struct OrphanScanner<V> {
    client: kube::Client,
    node_name: String,
    volumes: V,
    report: LatestReport,
    options: OrphanOptions,
    gauge: IntGaugeVec,
    /// When each current orphan was first seen (by LV name).
    first_seen: HashMap<String, Instant>,
}

impl<V> std::fmt::Debug for OrphanScanner<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrphanScanner")
            .field("node_name", &self.node_name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<V: Volumes> OrphanScanner<V> {
    pub fn new(
        client: kube::Client,
        node_name: String,
        volumes: V,
        report: LatestReport,
        options: OrphanOptions,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let gauge = IntGaugeVec::new(
            Opts::new(
                "topolvm_node_orphan_volumes",
                "LVs with topolvm-rs's ownership tag whose LogicalVolume or pod no longer exists.",
            )
            .const_label("node", &node_name),
            &["device_class"],
        )?;
        registry.register(Box::new(gauge.clone()))?;
        Ok(Self {
            client,
            node_name,
            volumes,
            report,
            options,
            gauge,
            first_seen: HashMap::new(),
        })
    }

    /// Scans soon after start and then every interval, until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut wait = self.options.first_scan_after;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = self.options.interval;
            if let Err(error) = self.scan().await {
                warn!(%error, "orphan LV scan gave no verdict");
            }
        }
    }

    /// One scan: find the orphans, report them and remove those old enough. Returns the
    /// orphans found.
    pub async fn scan(&mut self) -> Result<Vec<Orphan>, OrphanError> {
        let classes = match self.report.borrow().as_ref() {
            Some(report) => device_classes(report),
            None => {
                debug!("no report from lvmd yet; orphan scan skipped");
                return Ok(Vec::new());
            }
        };
        let candidates = self.tagged_lvs(&classes).await;
        let orphans = self.confirm(candidates).await?;

        let mut per_class: BTreeMap<&str, i64> = classes.iter().map(|c| (c.as_str(), 0)).collect();
        for orphan in &orphans {
            *per_class.entry(orphan.device_class.as_str()).or_default() += 1;
        }
        for (class, count) in per_class {
            self.gauge.with_label_values(&[class]).set(count);
        }

        let now = Instant::now();
        let current: HashSet<&str> = orphans.iter().map(|o| o.name.as_str()).collect();
        self.first_seen
            .retain(|name, _| current.contains(name.as_str()));
        for orphan in &orphans {
            if self.first_seen.contains_key(&orphan.name) {
                continue;
            }
            self.first_seen.insert(orphan.name.clone(), now);
            warn!(
                node = %self.node_name,
                volume = %orphan.name,
                device_class = %orphan.device_class,
                size_bytes = orphan.size_bytes,
                reason = %orphan.reason,
                "orphan LV"
            );
            let message = format!(
                "LV {} of device class {} ({} bytes) is an orphan: {}",
                orphan.name,
                names::device_class_for_humans(&orphan.device_class),
                orphan.size_bytes,
                orphan.reason
            );
            self.publish_event(ORPHAN_EVENT_REASON, &message).await;
        }
        if let Some(gc_after) = self.options.gc_after {
            for orphan in &orphans {
                let old_enough = self
                    .first_seen
                    .get(&orphan.name)
                    .is_some_and(|first| now.duration_since(*first) >= gc_after);
                if old_enough {
                    self.remove(orphan).await;
                }
            }
        }
        Ok(orphans)
    }

    /// Our LVs of every class (those with `topolvm.io/managed`), by name, with the class to
    /// name when removing them. A class lvmd cannot list is skipped this time.
    async fn tagged_lvs(
        &self,
        classes: &[String],
    ) -> BTreeMap<String, (String, pb::LogicalVolume)> {
        let mut found = BTreeMap::new();
        for class in classes {
            let lvs = match self.volumes.list_lvs(class).await {
                Ok(lvs) => lvs,
                Err(status) => {
                    warn!(device_class = %class, code = ?status.code(), message = %status.message(), "listing LVs for the orphan scan");
                    continue;
                }
            };
            for lv in lvs {
                if !lv.tags.iter().any(|t| t == names::LV_TAG_MANAGED) {
                    continue;
                }
                // Two thick classes may share a volume group: the tag says which one it is.
                let tagged_class = lv
                    .tags
                    .iter()
                    .find_map(|t| names::parse_lv_tag_device_class(t))
                    .map(str::to_owned);
                let class = tagged_class.unwrap_or_else(|| class.clone());
                found.entry(lv.name.clone()).or_insert((class, lv));
            }
        }
        found
    }

    /// Asks the API server about every candidate; any failed request ends the scan without a
    /// verdict.
    async fn confirm(
        &self,
        candidates: BTreeMap<String, (String, pb::LogicalVolume)>,
    ) -> Result<Vec<Orphan>, OrphanError> {
        let logical_volumes: Api<LogicalVolume> = Api::all(self.client.clone());
        let mut pod_uids: Option<HashSet<String>> = None;
        let mut object_uids: Option<HashSet<String>> = None;
        let mut orphans = Vec::new();
        for (name, (device_class, lv)) in candidates {
            let pod_tag = lv
                .tags
                .iter()
                .find_map(|t| names::parse_lv_tag_ephemeral_pod(t));
            let object_tag = lv
                .tags
                .iter()
                .find_map(|t| names::parse_lv_tag_logical_volume(t));
            let reason = if let Some(pod_uid) = pod_tag {
                if pod_uids.is_none() {
                    pod_uids = Some(self.pods_on_node().await?);
                }
                let alive = pod_uids.as_ref().is_some_and(|uids| uids.contains(pod_uid));
                (!alive).then(|| format!("no pod with UID {pod_uid} on this node"))
            } else if let Some(object) = object_tag {
                match logical_volumes.get_opt(object).await? {
                    None => Some(format!("LogicalVolume {object} does not exist")),
                    Some(found) if found.uid().as_deref() != Some(name.as_str()) => Some(format!(
                        "LogicalVolume {object} is another object (UID {})",
                        found.uid().unwrap_or_default()
                    )),
                    Some(_) => None,
                }
            } else {
                if object_uids.is_none() {
                    object_uids = Some(all_logical_volume_uids(&logical_volumes).await?);
                }
                let known = object_uids
                    .as_ref()
                    .is_some_and(|uids| uids.contains(&name));
                (!known).then(|| "no LogicalVolume has this UID".to_owned())
            };
            if let Some(reason) = reason {
                orphans.push(Orphan {
                    name,
                    device_class,
                    size_bytes: lv.size_bytes,
                    reason,
                });
            }
        }
        Ok(orphans)
    }

    async fn pods_on_node(&self) -> Result<HashSet<String>, OrphanError> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let params = ListParams::default()
            .fields(&format!("spec.nodeName={}", self.node_name))
            .limit(PAGE_SIZE);
        let mut uids = HashSet::new();
        let mut params = params;
        loop {
            let page = pods.list_metadata(&params).await?;
            uids.extend(page.items.iter().filter_map(ResourceExt::uid));
            match page.metadata.continue_.filter(|token| !token.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(uids),
            }
        }
    }

    async fn remove(&mut self, orphan: &Orphan) {
        let request = pb::RemoveLvRequest {
            name: orphan.name.clone(),
            device_class: orphan.device_class.clone(),
        };
        match self.volumes.remove_lv(request).await {
            Ok(()) => {}
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => {
                warn!(volume = %orphan.name, code = ?status.code(), message = %status.message(), "removing an orphan LV");
                return;
            }
        }
        info!(volume = %orphan.name, device_class = %orphan.device_class, "orphan LV removed");
        self.first_seen.remove(&orphan.name);
        let message = format!(
            "LV {} of device class {} ({} bytes) removed: {}",
            orphan.name,
            names::device_class_for_humans(&orphan.device_class),
            orphan.size_bytes,
            orphan.reason
        );
        self.publish_event(ORPHAN_REMOVED_EVENT_REASON, &message)
            .await;
    }

    /// A core/v1 Warning Event on this node's Node object. Losing one is logged, not fatal:
    /// the gauge and the log line carry the same news.
    async fn publish_event(&self, reason: &str, message: &str) {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", self.node_name)),
                namespace: Some(EVENT_NAMESPACE.to_owned()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Node".to_owned()),
                name: Some(self.node_name.clone()),
                // As kubelet does for its Events about a Node.
                uid: Some(self.node_name.clone()),
                ..ObjectReference::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some("Warning".to_owned()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: Some(COMPONENT.to_owned()),
                host: Some(self.node_name.clone()),
            }),
            reporting_component: Some(COMPONENT.to_owned()),
            reporting_instance: Some(self.node_name.clone()),
            ..Event::default()
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), EVENT_NAMESPACE);
        if let Err(error) = events.create(&PostParams::default(), &event).await {
            warn!(%error, reason, "publishing an Event on the Node");
        }
    }
}

async fn all_logical_volume_uids(api: &Api<LogicalVolume>) -> Result<HashSet<String>, OrphanError> {
    let mut params = ListParams::default().limit(PAGE_SIZE);
    let mut uids = HashSet::new();
    loop {
        let page = api.list_metadata(&params).await?;
        uids.extend(page.items.iter().filter_map(ResourceExt::uid));
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(uids),
        }
    }
}
