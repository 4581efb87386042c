//! One LogicalVolume's reconciliation: a single `finalizer()` call whose Apply makes or grows
//! the LV and whose Cleanup removes it. Both are idempotent, so a crash between any two steps
//! is repaired by running them again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use serde_json::{Value, json};
use tonic::Code;
use topolvm_core::crd::LogicalVolume;
use topolvm_core::names;
use topolvm_core::quantity::format_bytes_quantity;
use topolvm_proto::lvmd as pb;
use tracing::{debug, error, info, instrument, warn};

use super::volumes::Volumes;
use super::{Error, Metrics, backoff};

/// What every reconciliation shares.
pub struct Context<V> {
    pub client: kube::Client,
    pub node_name: String,
    pub volumes: V,
    pub metrics: Metrics,
    /// Failures in a row per object UID, for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// What this process knows of the LVs of objects that already have a volume, for adopting
    /// the ones TopoLVM made before the switch: see [`adopt_topolvm_volume`].
    adoption: tokio::sync::Mutex<Adoption>,
}

impl<V> std::fmt::Debug for Context<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

impl<V: Volumes> Context<V> {
    pub fn new(client: kube::Client, node_name: String, volumes: V, metrics: Metrics) -> Self {
        Self {
            client,
            node_name,
            volumes,
            metrics,
            failures: Mutex::default(),
            adoption: tokio::sync::Mutex::default(),
        }
    }
}

fn failure_key(lv: &LogicalVolume) -> String {
    lv.uid().unwrap_or_else(|| lv.name_any())
}

/// [`reconcile`] with its duration and result recorded.
pub(super) async fn reconcile_timed<V: Volumes>(
    lv: Arc<LogicalVolume>,
    ctx: Arc<Context<V>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let key = failure_key(&lv);
    let result = reconcile(lv, ctx.clone()).await;
    ctx.metrics.record(&result, started.elapsed().as_secs_f64());
    if result.is_ok()
        && let Ok(mut failures) = ctx.failures.lock()
    {
        failures.remove(&key);
    }
    result
}

/// Counts the failure and retries the object with a backoff that grows with its failures in a
/// row.
pub(super) fn error_policy<V: Volumes>(
    lv: Arc<LogicalVolume>,
    error: &Error,
    ctx: Arc<Context<V>>,
) -> Action {
    ctx.metrics.record_error(error);
    let failures = match ctx.failures.lock() {
        Ok(mut failures) => {
            let count = failures.entry(failure_key(&lv)).or_default();
            *count = count.saturating_add(1);
            *count
        }
        Err(_) => 1,
    };
    let delay = backoff(failures.saturating_sub(1));
    warn!(logicalvolume = %lv.name_any(), error = %error, failures, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Brings one LogicalVolume's LV in line with the object.
#[instrument(skip_all, fields(logicalvolume = %lv.name_any()))]
pub async fn reconcile<V: Volumes>(
    lv: Arc<LogicalVolume>,
    ctx: Arc<Context<V>>,
) -> Result<Action, Error> {
    if lv.spec.node_name != ctx.node_name {
        // Only reachable when watching every object (a node name too long for a label value),
        // or if someone relabelled an object by hand.
        return Ok(Action::await_change());
    }
    if lv
        .annotations()
        .contains_key(names::PENDING_DELETION_ANNOTATION)
    {
        // The controller removed our finalizer for a node it thinks is dead; adding it back
        // would block the deletion it is doing.
        if lv
            .finalizers()
            .iter()
            .any(|f| f == names::LOGICAL_VOLUME_FINALIZER)
        {
            error!("pending deletion but still carries our finalizer; leaving it alone");
        } else {
            info!("pending deletion; leaving it alone");
        }
        return Ok(Action::await_change());
    }
    let api: Api<LogicalVolume> = Api::all(ctx.client.clone());
    finalizer(&api, names::LOGICAL_VOLUME_FINALIZER, lv, |event| async {
        match event {
            Event::Apply(lv) => apply(&api, &ctx, &lv).await,
            Event::Cleanup(lv) => cleanup(&ctx, &lv).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

fn kube_error(lv: &LogicalVolume) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |source| Error::Kube {
        name: lv.name_any(),
        source: source.into(),
    }
}

/// Writes `status` fields with a merge patch of the status subresource. A `null` removes the
/// field: the test bed's API server (our build of 1.20) refuses `""` in a custom resource's
/// string field, and TopoLVM's empty message is the same as none.
async fn patch_status(
    api: &Api<LogicalVolume>,
    lv: &LogicalVolume,
    status: Value,
) -> Result<(), Error> {
    api.patch_status(
        &lv.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map_err(kube_error(lv))?;
    Ok(())
}

/// Records a failure in `status.code` and `status.message`, where the controller waits for it.
async fn record_failure(
    api: &Api<LogicalVolume>,
    lv: &LogicalVolume,
    code: Code,
    message: &str,
) -> Result<(), Error> {
    let message = if message.is_empty() {
        Value::Null
    } else {
        Value::from(message)
    };
    patch_status(api, lv, json!({ "code": code as i32, "message": message })).await
}

/// Records a failure found before calling lvmd, and returns it as the reconcile error.
async fn refuse(
    api: &Api<LogicalVolume>,
    lv: &LogicalVolume,
    code: Code,
    message: String,
) -> Result<Action, Error> {
    warn!(code = ?code, %message, "refused");
    record_failure(api, lv, code, &message).await?;
    Err(Error::Refused {
        name: lv.name_any(),
        message,
    })
}

async fn apply<V: Volumes>(
    api: &Api<LogicalVolume>,
    ctx: &Context<V>,
    lv: &LogicalVolume,
) -> Result<Action, Error> {
    ensure_labels(api, ctx, lv).await?;
    let status = lv.status.clone().unwrap_or_default();
    if !status.volume_id.is_empty() {
        adopt_topolvm_volume(ctx, lv).await?;
        return expand(api, ctx, lv, &status.volume_id).await;
    }
    if !status.is_ok() {
        // The controller deletes an object whose creation failed; a retry here would race it.
        debug!(
            code = status.code,
            "creation failed before; waiting for the controller"
        );
        return Ok(Action::await_change());
    }
    create(api, ctx, lv).await
}

/// The LVs of one device class as lvmd listed them: name, size, and whether it has lvmd's tags.
type Listing = HashMap<String, (u64, bool)>;

/// The state of adoption in this process.
#[derive(Debug, Default)]
pub(super) struct Adoption {
    /// The last listing of each device class.
    listed: HashMap<String, Listing>,
    /// The UIDs of objects whose LV is ours: tagged when first seen, or adopted.
    checked: HashSet<String>,
}

/// Tags the LV of an object TopoLVM made before the switch as lvmd's, so that lvmd lets this
/// node grow and remove it: lvmd refuses both for an LV without its tags, and adopts one only
/// through a CreateLV that asks for it exactly (an untagged LV named like a Kubernetes UID, of
/// the size asked). TopoLVM names an LV by its object's UID and records its size in
/// `status.currentSize`, so only an LV named by this object's own UID is adopted, and only when
/// it is at least the recorded size (larger when TopoLVM grew it and stopped before recording
/// that).
///
/// Each object is looked at the first time it is reconciled, and again at later reconciles
/// until its LV is found ours. One listing of the class serves every object of it; a listing
/// taken for an earlier object is taken again when it does not hold this object's LV.
async fn adopt_topolvm_volume<V: Volumes>(
    ctx: &Context<V>,
    lv: &LogicalVolume,
) -> Result<(), Error> {
    let Some(status) = lv.status.as_ref() else {
        return Ok(());
    };
    let uid = lv
        .uid()
        .ok_or_else(|| Error::incomplete(lv, "metadata.uid"))?;
    if status.volume_id != uid {
        return Ok(());
    }
    let class = &lv.spec.device_class;
    let mut adoption = ctx.adoption.lock().await;
    if adoption.checked.contains(&uid) {
        return Ok(());
    }
    let mut found = adoption.listed.get(class).map(|l| l.get(&uid).copied());
    if !matches!(found, Some(Some(_))) {
        let listing = list_class(ctx, lv, class).await?;
        found = Some(listing.get(&uid).copied());
        adoption.listed.insert(class.clone(), listing);
    }
    let size = match found {
        Some(Some((size, false))) => size,
        Some(Some((_, true))) => {
            adoption.checked.insert(uid);
            return Ok(());
        }
        // No LV of that name (yet): looked for again at the object's next reconcile.
        _ => return Ok(()),
    };
    let recorded = match status.current_size_bytes() {
        Some(Ok(bytes)) => bytes,
        _ => lv.spec.size_bytes().unwrap_or(u64::MAX),
    };
    if size < recorded {
        return Err(Error::Refused {
            name: lv.name_any(),
            message: format!(
                "LV {uid} has no lvmd tags and {size} bytes, less than the {recorded} bytes \
                 recorded for it: not adopted"
            ),
        });
    }
    let request = pb::CreateLvRequest {
        name: uid.clone(),
        tags: vec![names::lv_tag_logical_volume(&lv.name_any())],
        device_class: class.clone(),
        lvcreate_option_class: lv.spec.lvcreate_option_class.clone(),
        size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
        ..Default::default()
    };
    match ctx.volumes.create_lv(request).await {
        Ok(_) => {
            info!(volume = %uid, size_bytes = size, "adopted the LV TopoLVM made");
            if let Some(entry) = adoption.listed.get_mut(class).and_then(|l| l.get_mut(&uid)) {
                entry.1 = true;
            }
            adoption.checked.insert(uid);
            Ok(())
        }
        Err(status) => Err(Error::Lvmd {
            name: lv.name_any(),
            operation: "CreateLV (adoption)",
            status,
        }),
    }
}

/// Lists the LVs of `class`; a class this node does not have holds none.
async fn list_class<V: Volumes>(
    ctx: &Context<V>,
    lv: &LogicalVolume,
    class: &str,
) -> Result<Listing, Error> {
    match ctx.volumes.list_lvs(class).await {
        Ok(volumes) => Ok(volumes
            .into_iter()
            .map(|v| {
                let size = u64::try_from(v.size_bytes).unwrap_or_default();
                let ours = !names::has_no_lvmd_tags(&v.tags);
                (v.name, (size, ours))
            })
            .collect()),
        Err(status) if status.code() == Code::NotFound => Ok(Listing::new()),
        Err(status) => Err(Error::Lvmd {
            name: lv.name_any(),
            operation: "GetLVList",
            status,
        }),
    }
}

/// Adds TopoLVM's `created-by` label and, where it was missing, our node label (objects made
/// by TopoLVM's controller have neither).
async fn ensure_labels<V: Volumes>(
    api: &Api<LogicalVolume>,
    ctx: &Context<V>,
    lv: &LogicalVolume,
) -> Result<(), Error> {
    let labels = lv.labels();
    let mut wanted = serde_json::Map::new();
    if labels.get(names::CREATED_BY_LABEL).map(String::as_str) != Some(names::CREATED_BY_VALUE) {
        wanted.insert(
            names::CREATED_BY_LABEL.into(),
            names::CREATED_BY_VALUE.into(),
        );
    }
    if let Some(node) = names::node_label_value(&ctx.node_name)
        && labels
            .get(names::LOGICAL_VOLUME_NODE_LABEL)
            .map(String::as_str)
            != Some(node)
    {
        wanted.insert(names::LOGICAL_VOLUME_NODE_LABEL.into(), node.into());
    }
    if wanted.is_empty() {
        return Ok(());
    }
    api.patch(
        &lv.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "labels": wanted } })),
    )
    .await
    .map_err(kube_error(lv))?;
    Ok(())
}

/// `spec.size` in bytes as lvmd takes it (a positive `int64`), or why it cannot be.
fn requested_size(lv: &LogicalVolume) -> Result<i64, String> {
    match lv.spec.size_bytes().map(i64::try_from) {
        Ok(Ok(size)) if size > 0 => Ok(size),
        Ok(_) => Err(format!(
            "spec.size {:?} is not a positive size lvmd can take",
            lv.spec.size.0
        )),
        Err(e) => Err(format!("spec.size: {e}")),
    }
}

async fn create<V: Volumes>(
    api: &Api<LogicalVolume>,
    ctx: &Context<V>,
    lv: &LogicalVolume,
) -> Result<Action, Error> {
    let uid = lv
        .uid()
        .ok_or_else(|| Error::incomplete(lv, "metadata.uid"))?;
    let size = match requested_size(lv) {
        Ok(size) => size,
        Err(message) => return refuse(api, lv, Code::InvalidArgument, message).await,
    };
    let tags = vec![names::lv_tag_logical_volume(&lv.name_any())];
    let (operation, result) = if lv.spec.source.is_empty() {
        let request = pb::CreateLvRequest {
            name: uid.clone(),
            tags,
            device_class: lv.spec.device_class.clone(),
            lvcreate_option_class: lv.spec.lvcreate_option_class.clone(),
            size_bytes: size,
            ..Default::default()
        };
        ("CreateLV", ctx.volumes.create_lv(request).await)
    } else {
        let request = match snapshot_request(api, ctx, lv, &uid, size, tags).await? {
            Ok(request) => request,
            Err((code, message)) => return refuse(api, lv, code, message).await,
        };
        (
            "CreateLVSnapshot",
            ctx.volumes.create_snapshot(request).await,
        )
    };
    match result {
        Ok(volume) => {
            let current = u64::try_from(volume.size_bytes).unwrap_or_default();
            info!(volume = %volume.name, size_bytes = volume.size_bytes, "LV ready");
            patch_status(
                api,
                lv,
                json!({
                    "volumeID": volume.name,
                    "currentSize": format_bytes_quantity(current),
                    "code": 0,
                    "message": null,
                }),
            )
            .await?;
            Ok(Action::await_change())
        }
        Err(status) => {
            let (code, message) = if operation == "CreateLV" && status.code() == Code::NotFound {
                // lvmd's only NOT_FOUND for CreateLV is an unknown device class. Another node
                // may have it: RESOURCE_EXHAUSTED makes the provisioner reschedule.
                (
                    Code::ResourceExhausted,
                    format!(
                        "device class {} is not on node {}: {}",
                        names::device_class_for_humans(&lv.spec.device_class),
                        ctx.node_name,
                        status.message()
                    ),
                )
            } else {
                (status.code(), status.message().to_owned())
            };
            warn!(operation, code = ?code, %message, "lvmd refused");
            record_failure(api, lv, code, &message).await?;
            Err(Error::Lvmd {
                name: lv.name_any(),
                operation,
                status,
            })
        }
    }
}

/// CreateLVSnapshot's request for a LogicalVolume made from `spec.source`, or the status code
/// and message of why it cannot be made.
async fn snapshot_request<V: Volumes>(
    api: &Api<LogicalVolume>,
    ctx: &Context<V>,
    lv: &LogicalVolume,
    uid: &str,
    size: i64,
    tags: Vec<String>,
) -> Result<Result<pb::CreateLvSnapshotRequest, (Code, String)>, Error> {
    let source_name = &lv.spec.source;
    let Some(access_type) = lv.spec.access_type else {
        return Ok(Err((
            Code::InvalidArgument,
            "spec.accessType must be ro or rw for a volume made from spec.source".to_owned(),
        )));
    };
    let Some(source) = api.get_opt(source_name).await.map_err(kube_error(lv))? else {
        return Ok(Err((
            Code::NotFound,
            format!("source LogicalVolume {source_name} does not exist"),
        )));
    };
    if source.spec.node_name != ctx.node_name {
        return Ok(Err((
            Code::InvalidArgument,
            format!(
                "source LogicalVolume {source_name} is on node {}, not {}",
                source.spec.node_name, ctx.node_name
            ),
        )));
    }
    let source_status = source.status.clone().unwrap_or_default();
    if source_status.volume_id.is_empty() {
        if !source_status.is_ok() {
            return Ok(Err((
                Code::FailedPrecondition,
                format!(
                    "source LogicalVolume {source_name} failed: {}",
                    source_status.message
                ),
            )));
        }
        return Err(Error::SourceNotReady {
            name: lv.name_any(),
            source_name: source_name.clone(),
        });
    }
    if let Some(Ok(current)) = source_status.current_size_bytes()
        && let Ok(wanted) = u64::try_from(size)
        && let Err(smaller) = topolvm_core::size::fits_source(wanted, current)
    {
        return Ok(Err((
            Code::InvalidArgument,
            format!("spec.size: {smaller} ({source_name})"),
        )));
    }
    Ok(Ok(pb::CreateLvSnapshotRequest {
        name: uid.to_owned(),
        tags,
        device_class: lv.spec.device_class.clone(),
        source_volume: source_status.volume_id,
        access_type: access_type.as_str().to_owned(),
        size_bytes: size,
        ..Default::default()
    }))
}

/// Grows the LV to `spec.size` when it is larger than `status.currentSize`, or when
/// `currentSize` is unset (a crash after CreateLV, or TopoLVM's crash-recovery path, which
/// leaves it unset).
async fn expand<V: Volumes>(
    api: &Api<LogicalVolume>,
    ctx: &Context<V>,
    lv: &LogicalVolume,
    volume_id: &str,
) -> Result<Action, Error> {
    let status = lv.status.clone().unwrap_or_default();
    let wanted = match requested_size(lv) {
        Ok(size) => size,
        Err(message) => return refuse(api, lv, Code::InvalidArgument, message).await,
    };
    if let Some(Ok(current)) = status.current_size_bytes()
        && u64::try_from(wanted).is_ok_and(|wanted| wanted <= current)
    {
        return Ok(Action::await_change());
    }
    let request = pb::ResizeLvRequest {
        name: volume_id.to_owned(),
        device_class: lv.spec.device_class.clone(),
        size_bytes: wanted,
        ..Default::default()
    };
    match ctx.volumes.resize_lv(request).await {
        Ok(size) => {
            let current = u64::try_from(size).unwrap_or_default();
            info!(volume = %volume_id, size_bytes = size, "LV resized");
            patch_status(
                api,
                lv,
                json!({ "currentSize": format_bytes_quantity(current), "code": 0, "message": null }),
            )
            .await?;
            Ok(Action::await_change())
        }
        Err(status) => {
            warn!(operation = "ResizeLV", code = ?status.code(), message = %status.message(), "lvmd refused");
            // Only onto the version this attempt read: topolvm-controller clears an earlier
            // failure before it changes spec.size, and a failure of the size asked before
            // must not land on the new request (a conflict drops it; the newer version is
            // reconciled next).
            let message = if status.message().is_empty() {
                Value::Null
            } else {
                Value::from(status.message())
            };
            api.patch_status(
                &lv.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "metadata": { "resourceVersion": lv.resource_version() },
                    "status": { "code": status.code() as i32, "message": message },
                })),
            )
            .await
            .map_err(kube_error(lv))?;
            Err(Error::Lvmd {
                name: lv.name_any(),
                operation: "ResizeLV",
                status,
            })
        }
    }
}

/// Removes the LV. It goes by the object's UID even when `status.volumeID` is empty: a crash
/// between CreateLV and the status write leaves an LV the status does not mention.
async fn cleanup<V: Volumes>(ctx: &Context<V>, lv: &LogicalVolume) -> Result<Action, Error> {
    adopt_topolvm_volume(ctx, lv).await?;
    let uid = lv
        .uid()
        .ok_or_else(|| Error::incomplete(lv, "metadata.uid"))?;
    let volume_id = lv
        .status
        .as_ref()
        .map(|s| s.volume_id.clone())
        .filter(|id| !id.is_empty())
        .unwrap_or(uid);
    let request = pb::RemoveLvRequest {
        name: volume_id.clone(),
        device_class: lv.spec.device_class.clone(),
    };
    match ctx.volumes.remove_lv(request).await {
        Ok(()) => info!(volume = %volume_id, "LV removed"),
        Err(status) if status.code() == Code::NotFound => {
            debug!(volume = %volume_id, "LV already gone");
        }
        Err(status) => {
            return Err(Error::Lvmd {
                name: lv.name_any(),
                operation: "RemoveLV",
                status,
            });
        }
    }
    // Gone: nothing left to adopt, so this process forgets it.
    let mut adoption = ctx.adoption.lock().await;
    adoption.checked.remove(&volume_id);
    if let Some(listing) = adoption.listed.get_mut(&lv.spec.device_class) {
        listing.remove(&volume_id);
    }
    Ok(Action::await_change())
}
