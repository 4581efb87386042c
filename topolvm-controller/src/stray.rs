//! Stray LogicalVolumes (TopoLVM issue 1104): objects whose volume nobody will ever use or
//! delete, because no PersistentVolume and no PersistentVolumeClaim refers to them. They come
//! from a claim deleted before its volume was bound, or a provisioner retry that lost a race;
//! external-provisioner then never calls DeleteVolume, and the LV keeps its space for good.
//!
//! Every scan reads LogicalVolumes, PersistentVolumes and PersistentVolumeClaims from the API
//! server (a cache could lag behind a PV just created and make a live volume look stray). A
//! LogicalVolume is **stray** only when all of this holds; anything we cannot prove from the
//! API server is left alone:
//! 1. it is not being deleted already;
//! 2. it has no `spec.source`: snapshots (`ro`) and volumes restored or cloned from one (`rw`)
//!    are left to the snapshotter and provisioner, whose objects we do not read;
//! 3. no other LogicalVolume names it as its `spec.source` (it backs a snapshot or a clone);
//! 4. it is named as external-provisioner names volumes, `pvc-<claim UID>` (and `spec.name` is
//!    the same name), so the claim it was made for is known;
//! 5. no PersistentVolume is named after it, and none has its `status.volumeID` as volume handle
//!    (a PV made by hand for an existing volume);
//! 6. no PersistentVolumeClaim has that UID, or names it in `spec.volumeName`;
//! 7. it was created longer ago than the grace period (`--stray-volume-grace-period`): a
//!    provisioning in progress has made the object but not yet the PV;
//! 8. it was found stray by the previous scan too, so one odd answer never deletes anything.
//!
//!
//! A LogicalVolume the node agent **refused** (`status.code` set, no `status.volumeID`) is stray
//! once it is older than the grace period and was seen so by two scans, whatever its source or
//! name (rules 1, 7 and 8 only): it never became a volume, nothing can refer to it, and our CSI
//! controller deletes such an object as soon as it sees the refusal. One is left behind only
//! when the controller stopped between the node's refusal and that deletion and the caller did
//! not ask again, e.g. a snapshot whose source volume was deleted meanwhile (the crash storm
//! found one). Should the node still succeed later, the object changes and the delete's
//! preconditions keep it.
//!
//! Stray objects are counted (`topolvm_controller_stray_logicalvolumes`) and logged first; they
//! are deleted only when the grace period is not zero. Deleting the object makes topolvm-node
//! remove the LV and then the finalizer, as for any other deletion; the delete carries the
//! object's UID and resourceVersion as preconditions, so an object changed since the scan is
//! not deleted.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Preconditions};
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use topolvm_core::crd::LogicalVolume;
use topolvm_runtime::kubernetes::Error;
use tracing::{info, warn};

use crate::metrics::{self, Metrics};

/// How the scan is timed.
#[derive(Debug, Clone, Copy)]
pub struct StrayOptions {
    /// How old a LogicalVolume must be before it can be stray; zero: count, never delete.
    pub grace_period: Duration,
    /// Time between two scans.
    pub interval: Duration,
}

/// The names of the stray LogicalVolumes among `volumes` (rules 1 to 7 of the module
/// documentation), as of `now`.
pub fn strays(
    volumes: &[LogicalVolume],
    persistent_volumes: &[PersistentVolume],
    claims: &[PersistentVolumeClaim],
    now: Timestamp,
    grace_period: Duration,
) -> Vec<String> {
    let sources: HashSet<&str> = volumes
        .iter()
        .map(|v| v.spec.source.as_str())
        .filter(|s| !s.is_empty())
        .collect();
    let pv_names: HashSet<String> = persistent_volumes.iter().map(|pv| pv.name_any()).collect();
    let handles: HashSet<&str> = persistent_volumes
        .iter()
        .filter_map(|pv| pv.spec.as_ref()?.csi.as_ref())
        .map(|csi| csi.volume_handle.as_str())
        .collect();
    let claim_uids: HashSet<&str> = claims
        .iter()
        .filter_map(|c| c.metadata.uid.as_deref())
        .collect();
    let claimed: HashSet<&str> = claims
        .iter()
        .filter_map(|c| c.spec.as_ref()?.volume_name.as_deref())
        .collect();
    let grace = i64::try_from(grace_period.as_secs()).unwrap_or(i64::MAX);
    volumes
        .iter()
        .filter(|v| {
            let name = v.name_any();
            let volume_id = v
                .status
                .as_ref()
                .map(|s| s.volume_id.as_str())
                .unwrap_or("");
            let old_enough = v
                .metadata
                .creation_timestamp
                .as_ref()
                .is_some_and(|t| now.as_second().saturating_sub(t.0.as_second()) >= grace);
            let refused = volume_id.is_empty() && v.status.as_ref().is_some_and(|s| s.code != 0);
            if refused {
                return v.metadata.deletion_timestamp.is_none() && old_enough;
            }
            let Some(claim_uid) = name.strip_prefix("pvc-").filter(|u| !u.is_empty()) else {
                return false;
            };
            v.metadata.deletion_timestamp.is_none()
                && v.spec.source.is_empty()
                && v.spec.access_type.is_none()
                && !sources.contains(name.as_str())
                && v.spec.name == name
                && !pv_names.contains(&name)
                && (volume_id.is_empty() || !handles.contains(volume_id))
                && !claim_uids.contains(claim_uid)
                && !claimed.contains(name.as_str())
                && old_enough
        })
        .map(|v| v.name_any())
        .collect()
}

/// Every object of `api`, in pages of 500, without their managedFields. One unpaged answer
/// with 10,000 LogicalVolumes (their managedFields included) more than doubled the
/// controller's resident set at every scan (e2e/benches/controller.rs), for a scan that reads a
/// few fields of each.
async fn list_all<K>(api: &Api<K>) -> Result<Vec<K>, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut params = ListParams::default().limit(500);
    let mut all = Vec::new();
    loop {
        let page = api.list(&params).await?;
        all.extend(page.items.into_iter().map(|mut object| {
            object.meta_mut().managed_fields = None;
            object
        }));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(all),
        }
    }
}

/// One scan: counts the strays, and deletes those the previous scan (`previous`) found too.
/// Returns this scan's strays.
async fn scan(
    client: &kube::Client,
    options: StrayOptions,
    previous: &BTreeSet<String>,
    metrics: &Metrics,
) -> Result<BTreeSet<String>, Error> {
    let volumes_api = Api::<LogicalVolume>::all(client.clone());
    // Volumes first: a PV or claim made after this list refers to a volume we already hold,
    // so it can only make that volume look less stray, never more.
    let volumes = list_all(&volumes_api).await?;
    let persistent_volumes = list_all(&Api::<PersistentVolume>::all(client.clone())).await?;
    let claims = list_all(&Api::<PersistentVolumeClaim>::all(client.clone())).await?;
    let found: BTreeSet<String> = strays(
        &volumes,
        &persistent_volumes,
        &claims,
        Timestamp::now(),
        options.grace_period,
    )
    .into_iter()
    .collect();
    metrics
        .strays_found
        .set(i64::try_from(found.len()).unwrap_or(i64::MAX));
    for name in &found {
        let volume = volumes.iter().find(|v| &v.name_any() == name);
        let node = volume
            .map(|v| v.spec.node_name.as_str())
            .unwrap_or_default();
        if options.grace_period.is_zero() || !previous.contains(name) {
            warn!(logical_volume = %name, %node, "stray LogicalVolume: no PersistentVolume or claim refers to it");
            continue;
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: volume.and_then(|v| v.metadata.uid.clone()),
                resource_version: volume.and_then(|v| v.metadata.resource_version.clone()),
            }),
            ..DeleteParams::default()
        };
        match volumes_api.delete(name, &params).await {
            Ok(_) => {
                metrics.stray_deleted();
                info!(logical_volume = %name, %node, "deleted a stray LogicalVolume");
            }
            // Gone, or changed since the scan (409): the next scan decides again.
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(found)
}

/// Scans every `options.interval` until `shutdown`.
pub async fn run(
    client: kube::Client,
    options: StrayOptions,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    info!(grace_period = ?options.grace_period, interval = ?options.interval, "stray LogicalVolume scan started");
    let mut previous = BTreeSet::new();
    loop {
        match scan(&client, options, &previous, &metrics).await {
            Ok(found) => {
                metrics.reconciled(metrics::STRAY, None);
                previous = found;
            }
            Err(error) => {
                warn!(%error, "stray LogicalVolume scan failed");
                metrics.reconciled(metrics::STRAY, Some(error.metric_label()));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(options.interval) => {}
        }
    }
    info!("stray LogicalVolume scan stopped");
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const UID: &str = "5b7a1f2e-0c1d-4e5f-8a9b-0c1d2e3f4a5b";
    const HOUR: Duration = Duration::from_secs(3600);

    fn now() -> Timestamp {
        "2026-11-30T12:00:00Z".parse().expect("time")
    }

    /// A LogicalVolume as our CSI controller makes it for external-provisioner's volume name.
    fn volume(name: &str, created: &str) -> Value {
        json!({"apiVersion": "topolvm.io/v1", "kind": "LogicalVolume",
               "metadata": {"name": name, "uid": "lv-uid", "creationTimestamp": created},
               "spec": {"name": name, "nodeName": "worker-1", "size": "1Gi"},
               "status": {"volumeID": format!("vid-{name}")}})
    }

    fn decide(volumes: Vec<Value>, pvs: Vec<Value>, claims: Vec<Value>) -> Vec<String> {
        fn parse<T: serde::de::DeserializeOwned>(values: Vec<Value>) -> Vec<T> {
            values
                .into_iter()
                .map(|x| serde_json::from_value(x).expect("object"))
                .collect()
        }
        strays(
            &parse::<LogicalVolume>(volumes),
            &parse::<PersistentVolume>(pvs),
            &parse::<PersistentVolumeClaim>(claims),
            now(),
            HOUR,
        )
    }

    fn old(name: &str) -> Value {
        volume(name, "2026-11-30T10:00:00Z")
    }

    #[test]
    fn a_volume_without_pv_or_claim_past_its_grace_is_stray() {
        let name = format!("pvc-{UID}");
        assert_eq!(decide(vec![old(&name)], vec![], vec![]), [name]);
    }

    #[test]
    fn a_young_volume_is_still_being_provisioned() {
        let name = format!("pvc-{UID}");
        assert!(decide(vec![volume(&name, "2026-11-30T11:30:00Z")], vec![], vec![]).is_empty());
    }

    #[test]
    fn a_pv_by_name_or_by_handle_keeps_it() {
        let name = format!("pvc-{UID}");
        let by_name = json!({"metadata": {"name": name}});
        let by_handle = json!({"metadata": {"name": "static-pv"}, "spec": {"csi": {
            "driver": "topolvm.io", "volumeHandle": format!("vid-{name}")}}});
        assert!(decide(vec![old(&name)], vec![by_name], vec![]).is_empty());
        assert!(decide(vec![old(&name)], vec![by_handle], vec![]).is_empty());
    }

    #[test]
    fn its_claim_keeps_it_even_before_binding() {
        let name = format!("pvc-{UID}");
        let pending = json!({"metadata": {"name": "data", "namespace": "app", "uid": UID}});
        let bound_to_it = json!({"metadata": {"name": "x", "namespace": "app", "uid": "other"},
                                 "spec": {"volumeName": name}});
        assert!(decide(vec![old(&name)], vec![], vec![pending]).is_empty());
        assert!(decide(vec![old(&name)], vec![], vec![bound_to_it]).is_empty());
    }

    #[test]
    fn snapshots_their_sources_and_clones_are_never_stray() {
        let origin = format!("pvc-{UID}");
        let mut snapshot = old("snapshot-0a0b");
        snapshot["spec"]["source"] = json!(origin);
        snapshot["spec"]["accessType"] = json!("ro");
        let mut clone = old("pvc-1111");
        clone["spec"]["source"] = json!(origin);
        clone["spec"]["accessType"] = json!("rw");
        assert!(decide(vec![old(&origin), snapshot, clone], vec![], vec![]).is_empty());
    }

    #[test]
    fn a_refused_object_left_behind_is_stray_whatever_its_source_or_name() {
        // A snapshot the node refused (no device-mapper), whose caller never asked again.
        let mut refused = old("snapshot-0a0b");
        refused["spec"]["source"] = json!(format!("pvc-{UID}"));
        refused["spec"]["accessType"] = json!("ro");
        refused["status"] = json!({"volumeID": "", "code": 13, "message": "no device-mapper"});
        assert_eq!(
            decide(vec![refused.clone()], vec![], vec![]),
            ["snapshot-0a0b"]
        );
        // Not while it is young (the controller is about to delete it), nor once the node
        // succeeded after all, nor while it is being deleted.
        let mut young = refused.clone();
        young["metadata"]["creationTimestamp"] = json!("2026-11-30T11:30:00Z");
        let mut made = refused.clone();
        made["status"]["volumeID"] = json!("vid-snapshot-0a0b");
        let mut deleting = refused;
        deleting["metadata"]["deletionTimestamp"] = json!("2026-11-30T11:59:00Z");
        assert!(decide(vec![young, made, deleting], vec![], vec![]).is_empty());
    }

    #[test]
    fn names_we_cannot_trace_to_a_claim_are_left_alone() {
        let mut renamed = old("pvc-2222");
        renamed["spec"]["name"] = json!("something-else");
        assert!(decide(vec![old("my-volume"), old("pvc-"), renamed], vec![], vec![]).is_empty());
    }

    // ---- one scan against a scripted API server ----

    use crate::test_api::{Step, list, pair, serve};
    use http::Method;

    const STRAY: &str = "pvc-5b7a1f2e-0c1d-4e5f-8a9b-0c1d2e3f4a5b";

    /// The three lists of a scan: one stray volume (uid `lv-uid`, resourceVersion 9).
    fn lists() -> Vec<Step> {
        let mut stray = old(STRAY);
        stray["metadata"]["resourceVersion"] = json!("9");
        vec![
            Step::new(
                Method::GET,
                "/apis/topolvm.io/v1/logicalvolumes?&limit=500",
                list("LogicalVolumeList", vec![stray]),
            ),
            Step::new(
                Method::GET,
                "/api/v1/persistentvolumes?&limit=500",
                list("PersistentVolumeList", vec![]),
            ),
            Step::new(
                Method::GET,
                "/api/v1/persistentvolumeclaims?&limit=500",
                list("PersistentVolumeClaimList", vec![]),
            ),
        ]
    }

    async fn scan_once(
        grace_period: Duration,
        previous: &[&str],
        script: Vec<Step>,
    ) -> (BTreeSet<String>, Metrics) {
        let (client, handle) = pair();
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry).expect("metrics");
        let server = tokio::spawn(serve(handle, script));
        let options = StrayOptions {
            grace_period,
            interval: Duration::from_secs(60),
        };
        let previous = previous.iter().map(|s| (*s).to_owned()).collect();
        let found = tokio::time::timeout(
            Duration::from_secs(5),
            scan(&client, options, &previous, &metrics),
        )
        .await
        .expect("no request beyond the script")
        .expect("the scan succeeds");
        drop(server.await.expect("every scripted request came"));
        (found, metrics)
    }

    #[tokio::test]
    async fn the_first_sighting_is_only_counted() {
        let (found, metrics) = scan_once(Duration::from_secs(1), &[], lists()).await;
        assert_eq!(found, BTreeSet::from([STRAY.to_owned()]));
        assert_eq!(metrics.strays_found.get(), 1);
    }

    #[tokio::test]
    async fn the_second_sighting_deletes_with_preconditions() {
        let mut script = lists();
        script.push(
            Step::new(
                Method::DELETE,
                format!("/apis/topolvm.io/v1/logicalvolumes/{STRAY}?"),
                old(STRAY),
            )
            .checking(|body| {
                assert_eq!(
                    body["preconditions"],
                    json!({"uid": "lv-uid", "resourceVersion": "9"}),
                    "{body}"
                );
            }),
        );
        let (found, metrics) = scan_once(Duration::from_secs(1), &[STRAY], script).await;
        assert_eq!(found.len(), 1);
        assert_eq!(metrics.strays_found.get(), 1);
    }

    #[tokio::test]
    async fn every_page_of_a_paged_list_counts() {
        // The API server pages its answers (limit 500 asked); the stray is on the second page,
        // and a claim for a volume of the first page is on the claims' second page.
        let claimed = "pvc-6c8b2f3e-1d2e-4f60-9bac-1d2e3f4a5b6c";
        let page = |kind: &str, items: Vec<Value>, token: &str| {
            let mut l = list(kind, items);
            l["metadata"]["continue"] = json!(token);
            l
        };
        let mut stray = old(STRAY);
        stray["metadata"]["resourceVersion"] = json!("9");
        let claim = json!({"metadata": {"name": "c", "namespace": "default",
            "uid": "6c8b2f3e-1d2e-4f60-9bac-1d2e3f4a5b6c"}, "spec": {}});
        let script = vec![
            Step::new(
                Method::GET,
                "/apis/topolvm.io/v1/logicalvolumes?&limit=500",
                page("LogicalVolumeList", vec![old(claimed)], "lv-2"),
            ),
            Step::new(
                Method::GET,
                "/apis/topolvm.io/v1/logicalvolumes?&limit=500&continue=lv-2",
                list("LogicalVolumeList", vec![stray]),
            ),
            Step::new(
                Method::GET,
                "/api/v1/persistentvolumes?&limit=500",
                list("PersistentVolumeList", vec![]),
            ),
            Step::new(
                Method::GET,
                "/api/v1/persistentvolumeclaims?&limit=500",
                page("PersistentVolumeClaimList", vec![], "pvc-2"),
            ),
            Step::new(
                Method::GET,
                "/api/v1/persistentvolumeclaims?&limit=500&continue=pvc-2",
                list("PersistentVolumeClaimList", vec![claim]),
            ),
        ];
        let (found, _) = scan_once(Duration::from_secs(1), &[], script).await;
        assert_eq!(found, BTreeSet::from([STRAY.to_owned()]));
    }

    #[tokio::test]
    async fn a_zero_grace_period_never_deletes() {
        // The volume is stray at once, and seen before; still nothing beyond the lists.
        let (found, _) = scan_once(Duration::ZERO, &[STRAY], lists()).await;
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn a_volume_being_deleted_is_left_to_its_deletion() {
        let mut deleting = old("pvc-3333");
        deleting["metadata"]["deletionTimestamp"] = json!("2026-11-30T11:00:00Z");
        assert!(decide(vec![deleting], vec![], vec![]).is_empty());
    }
}
