//! The Controller service's operations on LogicalVolume objects: create one and wait for the
//! node agent's answer, delete one and wait until it is gone, grow one. They speak
//! [`Error`]; `service.rs` turns requests and answers into CSI messages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use topolvm_core::crd::{LogicalVolume, LogicalVolumeSpec};
use topolvm_core::names;
use topolvm_core::quantity::format_bytes_quantity;
use topolvm_runtime::keyed_lock::KeyedLocks;
use tracing::{info, warn};

use super::cache::{Cache, VolumeRecord};
use super::error::Error;

/// How long an RPC without a gRPC deadline waits for the node agent. The sidecars always send
/// one (external-provisioner's `--timeout`, 10 s by default); this only bounds stray callers.
const WAIT_WITHOUT_DEADLINE: Duration = Duration::from_secs(300);

/// The API client, the caches and the locks.
#[derive(Clone)]
pub struct Volumes {
    client: kube::Client,
    cache: Arc<Cache>,
    /// Per request name (CreateVolume, CreateSnapshot) and per volume ID (the rest), as TopoLVM
    /// serializes them, so two retries of one request never race each other.
    pub(super) names: KeyedLocks,
    pub(super) ids: KeyedLocks,
}

impl std::fmt::Debug for Volumes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volumes")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// What a new LogicalVolume should be.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub name: String,
    pub spec: LogicalVolumeSpec,
}

impl Volumes {
    pub fn new(client: kube::Client, cache: Arc<Cache>) -> Self {
        Self {
            client,
            cache,
            names: KeyedLocks::default(),
            ids: KeyedLocks::default(),
        }
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    fn api(&self) -> Api<LogicalVolume> {
        Api::all(self.client.clone())
    }

    /// Waits until `check` answers, waking on every cache change, until `deadline`.
    async fn wait_for<T>(
        &self,
        deadline: Option<Instant>,
        during: &'static str,
        mut check: impl FnMut(&Cache) -> Option<Result<T, Error>>,
    ) -> Result<T, Error> {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + WAIT_WITHOUT_DEADLINE);
        let mut changes = self.cache.subscribe();
        loop {
            changes.borrow_and_update();
            if let Some(answer) = check(&self.cache) {
                return answer;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                // The cache was dropped: the process is stopping.
                Ok(Err(_)) => return Err(Error::Stopped { during }),
                Err(_) => return Err(Error::Deadline { during }),
            }
        }
    }

    /// Waits until both caches have listed everything once.
    pub async fn synced(&self, deadline: Option<Instant>) -> Result<(), Error> {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + WAIT_WITHOUT_DEADLINE);
        match tokio::time::timeout_at(deadline, self.cache.ready()).await {
            Ok(Ok(())) => Ok(()),
            // The deadline passed, or the watches stopped before they had listed.
            Ok(Err(_)) | Err(_) => Err(Error::NotSynced),
        }
    }

    /// The LogicalVolume whose `status.volumeID` is `volume_id`: the cache, then (the cache
    /// may lag behind another replica's write) a paged list from the API.
    pub async fn find_by_id(&self, volume_id: &str) -> Result<Option<Arc<VolumeRecord>>, Error> {
        if let Some(record) = self.cache.volume_by_id(volume_id) {
            return Ok(Some(record));
        }
        let api = self.api();
        let mut params = ListParams::default().limit(500);
        loop {
            let page = api
                .list(&params)
                .await
                .map_err(Error::kube("listing LogicalVolumes"))?;
            if let Some(lv) = page
                .items
                .iter()
                .find(|lv| lv.status.as_ref().is_some_and(|s| s.volume_id == volume_id))
            {
                return Ok(Some(Arc::new(VolumeRecord::of(lv))));
            }
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => return Ok(None),
            }
        }
    }

    /// Makes sure the LogicalVolume `wanted` exists (idempotent by name) and waits for the node
    /// agent: the record once `status.volumeID` is set; the node's code, after deleting the
    /// object, once `status.code` is set.
    pub async fn provision(
        &self,
        wanted: &Wanted,
        deadline: Option<Instant>,
    ) -> Result<Arc<VolumeRecord>, Error> {
        let api = self.api();
        let existing = api
            .get_opt(&wanted.name)
            .await
            .map_err(Error::kube("reading the LogicalVolume"))?;
        let lv = match existing {
            Some(lv) => self.reuse(lv, wanted)?,
            None => {
                let mut lv = LogicalVolume::new(&wanted.name, wanted.spec.clone());
                // Our node label lets the node agent's label-selected watch see it at once.
                if let Some(node) = names::node_label_value(&wanted.spec.node_name) {
                    lv.metadata.labels = Some(BTreeMap::from([(
                        names::LOGICAL_VOLUME_NODE_LABEL.to_owned(),
                        node.to_owned(),
                    )]));
                }
                match api.create(&PostParams::default(), &lv).await {
                    Ok(lv) => {
                        info!(name = %wanted.name, node = %wanted.spec.node_name, "LogicalVolume created");
                        lv
                    }
                    // Another replica (with its own lock) won the race.
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        let lv = api
                            .get(&wanted.name)
                            .await
                            .map_err(Error::kube("reading the LogicalVolume"))?;
                        self.reuse(lv, wanted)?
                    }
                    Err(source) if is_invalid(&source) => {
                        return Err(Error::InvalidObject { source });
                    }
                    Err(e) => return Err(Error::kube("creating the LogicalVolume")(e)),
                }
            }
        };
        let uid = lv.uid().unwrap_or_default();
        self.cache.apply_volume(&lv);
        let outcome = self
            .wait_for(
                deadline,
                "waiting for the node to create the volume",
                |cache| {
                    let record = cache.volume(&wanted.name).filter(|r| r.uid == uid)?;
                    if record.code != 0 {
                        return Some(Err(Error::Refused {
                            code: record.code,
                            message: record.message.clone(),
                        }));
                    }
                    (!record.volume_id.is_empty()).then_some(Ok(record))
                },
            )
            .await;
        if let Err(Error::Refused { code, message }) = &outcome {
            // Deleting it lets a retry (after a reschedule, on another node) start afresh.
            warn!(name = %wanted.name, code, %message, "the node refused; deleting the LogicalVolume");
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&wanted.name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => warn!(error = %e, "deleting the refused LogicalVolume"),
            }
        }
        outcome
    }

    fn reuse(&self, lv: LogicalVolume, wanted: &Wanted) -> Result<LogicalVolume, Error> {
        if !lv.spec.is_compatible_with(&wanted.spec) {
            return Err(Error::AlreadyExists {
                name: wanted.name.clone(),
                size: lv.spec.size.0.clone(),
                source_name: lv.spec.source.clone(),
            });
        }
        if lv.meta().deletion_timestamp.is_some() {
            return Err(Error::BeingDeleted {
                name: wanted.name.clone(),
            });
        }
        Ok(lv)
    }

    /// Deletes the LogicalVolume of `volume_id` and waits until it is gone. An unknown id is
    /// success. If its Node no longer exists, nobody would ever remove the finalizer (issue
    /// 868): mark it pending deletion and remove the finalizer ourselves, as TopoLVM's node
    /// cleanup does, leaving the LV (if the node ever returns) to its orphan scan.
    pub async fn delete(&self, volume_id: &str, deadline: Option<Instant>) -> Result<(), Error> {
        let Some(record) = self.find_by_id(volume_id).await? else {
            info!(volume_id, "no LogicalVolume has this id; nothing to delete");
            return Ok(());
        };
        let api = self.api();
        if !self.node_exists(&record.node_name).await? {
            self.abandon(&api, &record).await?;
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(record.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&record.name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return Ok(()),
            Err(e) => return Err(Error::kube("deleting the LogicalVolume")(e)),
        }
        self.wait_for(
            deadline,
            "waiting for the node to remove the volume",
            |cache| {
                cache
                    .volume(&record.name)
                    .filter(|r| r.uid == record.uid)
                    .is_none()
                    .then_some(Ok(()))
            },
        )
        .await
    }

    /// Whether the API server has the Node. Not the cache: it lags both ways, and a Node
    /// deleted a moment ago but still cached would make DeleteVolume wait for an agent that is
    /// gone until the deadline.
    async fn node_exists(&self, node: &str) -> Result<bool, Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let found: Option<PartialObjectMeta<Node>> = nodes
            .get_metadata_opt(node)
            .await
            .map_err(Error::kube("reading the Node"))?;
        Ok(found.is_some())
    }

    async fn abandon(&self, api: &Api<LogicalVolume>, record: &VolumeRecord) -> Result<(), Error> {
        let Some(lv) = api
            .get_opt(&record.name)
            .await
            .map_err(Error::kube("reading the LogicalVolume"))?
        else {
            return Ok(());
        };
        let finalizers: Vec<&String> = lv
            .finalizers()
            .iter()
            .filter(|f| *f != names::LOGICAL_VOLUME_FINALIZER)
            .collect();
        warn!(name = %record.name, node = %record.node_name,
            "the Node is gone; removing the finalizer its agent would have removed");
        // resourceVersion makes this a compare-and-swap on the finalizer list.
        let patch = json!({
            "metadata": {
                "resourceVersion": lv.resource_version(),
                "annotations": { names::PENDING_DELETION_ANNOTATION: names::PENDING_DELETION_VALUE },
                "finalizers": finalizers,
            }
        });
        api.patch(&record.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(Error::kube("marking the LogicalVolume pending deletion"))?;
        Ok(())
    }

    /// Grows the LogicalVolume of `record` to `size` and waits for the node agent.
    ///
    /// A failure code left by an earlier attempt is cleared before `spec.size` is raised, and
    /// only records of the new generation (spec changes raise `metadata.generation`, status
    /// writes do not) count, so an earlier failure is never reported for this attempt.
    ///
    /// The race left by that alone: the node is still retrying the previous size (it retries a
    /// failed resize, and our clear wakes it too) and writes that failure after our spec
    /// change. Our topolvm-node closes it by writing a resize failure only onto the version
    /// it read (`resourceVersion` in the patch; the API server answers 409 otherwise). Behind
    /// TopoLVM's own node, which writes unconditionally, the race remains.
    pub async fn expand(
        &self,
        record: &VolumeRecord,
        size: u64,
        deadline: Option<Instant>,
    ) -> Result<u64, Error> {
        let api = self.api();
        if record.code != 0 {
            let clear = json!({ "status": { "code": 0, "message": null } });
            api.patch_status(&record.name, &PatchParams::default(), &Patch::Merge(clear))
                .await
                .map_err(Error::kube("clearing the LogicalVolume's earlier failure"))?;
        }
        let now = k8s_openapi::jiff::Timestamp::now();
        let patch = json!({
            "metadata": {
                "annotations": {
                    names::RESIZE_REQUESTED_AT_ANNOTATION: topolvm_core::timestamp::format_go_utc(now),
                },
            },
            "spec": { "size": format_bytes_quantity(size) },
        });
        let lv = api
            .patch(&record.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(Error::kube("raising the LogicalVolume's size"))?;
        let generation = lv.meta().generation.unwrap_or_default();
        let uid = record.uid.clone();
        self.cache.apply_volume(&lv);
        info!(name = %record.name, size, "LogicalVolume size raised");
        self.wait_for(
            deadline,
            "waiting for the node to grow the volume",
            |cache| {
                let r = cache
                    .volume(&record.name)
                    .filter(|r| r.uid == uid && r.generation >= generation)?;
                if r.code != 0 {
                    return Some(Err(Error::Refused {
                        code: r.code,
                        message: r.message.clone(),
                    }));
                }
                r.current_size.filter(|&current| current >= size).map(Ok)
            },
        )
        .await
    }
}

fn is_invalid(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 422)
}
