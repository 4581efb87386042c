//! Capacity promised on nodes that their annotations do not show yet (TopoLVM issue 117).
//!
//! A node's capacity annotation is published by topolvm-node after a logical volume exists, so
//! between the moment the extender approves a node for a pod and the moment the pod's volumes
//! are created there, the annotation still shows the old free space. A burst of pods sees the
//! same free space and over-commits the node. Two sources close that gap:
//!
//! - [`PendingPlacements`]: pods the cluster shows as placed on a node whose claims have no
//!   volume yet, computed from pod and claim snapshots (pure functions, no API server needed);
//! - [`ReservationTable`]: pods the extender itself approved moments ago, before the cluster
//!   shows where they went.
//!
//! The exact rules are in the crate README ("Burst safety"); the functions here implement them.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};

use crate::decision::{ClassBytes, PodRequests, Promised};
use crate::wire::CapacityAnnotations;

/// Annotation the scheduler's volume binding (and the PV controller, for pods created with a
/// node name) puts on a `WaitForFirstConsumer` claim to ask for a volume on that node.
pub use topolvm_core::names::SELECTED_NODE_ANNOTATION;

/// Identifies a claim: namespace and name.
pub type ClaimKey = (String, String);

/// What matters of a PersistentVolumeClaim.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClaimState {
    /// The claim has a volume (`spec.volumeName` set or phase `Bound`).
    pub bound: bool,
    /// The node the claim's volume is being provisioned on.
    pub selected_node: Option<String>,
}

/// Reads a claim; `None` without a name or namespace.
pub fn claim_state(pvc: &PersistentVolumeClaim) -> Option<(ClaimKey, ClaimState)> {
    let namespace = pvc.metadata.namespace.clone()?;
    let name = pvc.metadata.name.clone()?;
    let has_volume = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|v| !v.is_empty());
    let phase_bound = pvc
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Bound");
    let selected_node = pvc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SELECTED_NODE_ANNOTATION))
        .filter(|n| !n.is_empty())
        .cloned();
    Some((
        (namespace, name),
        ClaimState {
            bound: has_volume || phase_bound,
            selected_node,
        },
    ))
}

/// Names of the claims a pod uses: its `persistentVolumeClaim` volumes and the claims of its
/// generic ephemeral volumes (named `<pod>-<volume>` by Kubernetes).
pub fn pod_claim_names(pod: &Pod) -> Vec<String> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|spec| spec.volumes.iter().flatten())
        .filter_map(|volume| {
            if let Some(pvc) = &volume.persistent_volume_claim {
                Some(pvc.claim_name.clone())
            } else if volume.ephemeral.is_some() {
                Some(format!("{pod_name}-{}", volume.name))
            } else {
                None
            }
        })
        .collect()
}

/// The positive capacity requests of a pod (its `capacity.topolvm.io/*` annotations).
pub fn pod_requested_bytes(pod: &Pod) -> ClassBytes {
    let capacity = CapacityAnnotations::from_annotations(
        pod.metadata
            .annotations
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    PodRequests::from_annotations(&capacity).positive_bytes()
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// A pod counted as placed but not provisioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPod {
    pub node: String,
    pub requests: ClassBytes,
}

/// Capacity of pods the cluster shows as placed on a node but whose volumes do not exist yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingPlacements {
    by_node: HashMap<String, ClassBytes>,
    by_pod: HashMap<String, PendingPod>,
    /// UIDs of pods whose node is known (bound, or chosen for their claims), provisioned or
    /// not: their reservations are no longer needed.
    placed: HashSet<String>,
}

impl PendingPlacements {
    /// Applies the rules to snapshots of pods and claims.
    pub fn compute<'a>(
        pods: impl IntoIterator<Item = &'a Pod>,
        claims: &HashMap<ClaimKey, ClaimState>,
    ) -> Self {
        let mut out = Self::default();
        for pod in pods {
            let Some(uid) = pod.metadata.uid.as_deref().filter(|u| !u.is_empty()) else {
                continue;
            };
            if is_terminal(pod) {
                continue;
            }
            let requests = pod_requested_bytes(pod);
            if requests.is_empty() {
                continue;
            }
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let pod_claims: Vec<&ClaimState> = pod_claim_names(pod)
                .into_iter()
                .filter_map(|name| claims.get(&(namespace.clone(), name)))
                .collect();
            let bound_node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .filter(|n| !n.is_empty());
            let node =
                bound_node.or_else(|| pod_claims.iter().find_map(|c| c.selected_node.as_deref()));
            let Some(node) = node else {
                continue;
            };
            out.placed.insert(uid.to_owned());
            if !pod_claims.iter().any(|c| !c.bound) {
                continue;
            }
            let on_node = out.by_node.entry(node.to_owned()).or_default();
            for (class, bytes) in &requests {
                let total = on_node.entry(class.clone()).or_default();
                *total = total.saturating_add(*bytes);
            }
            out.by_pod.insert(
                uid.to_owned(),
                PendingPod {
                    node: node.to_owned(),
                    requests,
                },
            );
        }
        out
    }

    /// Bytes of `class` pending on `node`, leaving out the pod `except_uid` (a pod never
    /// competes with itself).
    pub fn on_node(&self, node: &str, class: &str, except_uid: &str) -> u64 {
        let total = self
            .by_node
            .get(node)
            .and_then(|classes| classes.get(class))
            .copied()
            .unwrap_or(0);
        let own = self
            .by_pod
            .get(except_uid)
            .filter(|p| p.node == node)
            .and_then(|p| p.requests.get(class))
            .copied()
            .unwrap_or(0);
        total.saturating_sub(own)
    }

    /// True when the pod's node is known from the cluster.
    pub fn is_placed(&self, uid: &str) -> bool {
        self.placed.contains(uid)
    }

    /// The pod's pending placement, if it has one.
    pub fn pod(&self, uid: &str) -> Option<&PendingPod> {
        self.by_pod.get(uid)
    }

    /// Number of pods counted as placed but not provisioned.
    pub fn pending_pods(&self) -> usize {
        self.by_pod.len()
    }
}

/// Capacity the extender promised to a pod it approved, on every node it approved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// `namespace/name`, for logs.
    pub pod: String,
    pub requests: ClassBytes,
    /// The nodes the pod may still land on.
    pub candidates: HashSet<String>,
    pub expires_at: Instant,
}

/// Short-lived reservations of pods the extender approved, keyed by pod UID.
#[derive(Debug, Clone)]
pub struct ReservationTable {
    ttl: Duration,
    by_uid: HashMap<String, Reservation>,
}

impl ReservationTable {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            by_uid: HashMap::new(),
        }
    }

    /// Records (or replaces) the reservation of a pod that passed the filter on `candidates`.
    /// Nothing is kept for a pod without UID, requests or candidates.
    pub fn reserve<'n>(
        &mut self,
        uid: &str,
        pod: &str,
        requests: ClassBytes,
        candidates: impl IntoIterator<Item = &'n str>,
        now: Instant,
    ) {
        let candidates: HashSet<String> = candidates.into_iter().map(str::to_owned).collect();
        if uid.is_empty() || requests.is_empty() || candidates.is_empty() {
            self.by_uid.remove(uid);
            return;
        }
        self.by_uid.insert(
            uid.to_owned(),
            Reservation {
                pod: pod.to_owned(),
                requests,
                candidates,
                expires_at: now + self.ttl,
            },
        );
    }

    /// Prioritize sees only the nodes that passed every filter: the pod's reservation shrinks
    /// to them. A pod prioritized without a filter call gets a reservation on them.
    pub fn narrow<'n>(
        &mut self,
        uid: &str,
        pod: &str,
        requests: ClassBytes,
        candidates: impl IntoIterator<Item = &'n str>,
        now: Instant,
    ) {
        let candidates: HashSet<&str> = candidates.into_iter().collect();
        match self.by_uid.get_mut(uid) {
            Some(existing) if existing.expires_at > now => {
                existing
                    .candidates
                    .retain(|node| candidates.contains(node.as_str()));
                if existing.candidates.is_empty() {
                    self.by_uid.remove(uid);
                }
            }
            _ => self.reserve(uid, pod, requests, candidates, now),
        }
    }

    /// Drops a pod's reservation; true if there was one.
    pub fn remove(&mut self, uid: &str) -> bool {
        self.by_uid.remove(uid).is_some()
    }

    /// Drops expired reservations; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.by_uid.len();
        self.by_uid.retain(|_, r| r.expires_at > now);
        before - self.by_uid.len()
    }

    /// Drops the reservations of pods `superseded` says the cluster now accounts for; returns
    /// how many.
    pub fn drop_superseded(&mut self, superseded: impl Fn(&str) -> bool) -> usize {
        let before = self.by_uid.len();
        self.by_uid.retain(|uid, _| !superseded(uid));
        before - self.by_uid.len()
    }

    /// Bytes of `class` reserved on `node` by live reservations of pods other than
    /// `except_uid`.
    pub fn on_node(&self, node: &str, class: &str, except_uid: &str, now: Instant) -> u64 {
        self.by_uid
            .iter()
            .filter(|(uid, r)| {
                uid.as_str() != except_uid && r.expires_at > now && r.candidates.contains(node)
            })
            .filter_map(|(_, r)| r.requests.get(class))
            .fold(0u64, |sum, bytes| sum.saturating_add(*bytes))
    }

    pub fn get(&self, uid: &str) -> Option<&Reservation> {
        self.by_uid.get(uid)
    }

    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }
}

/// Everything promised on a node, as seen by the pod being scheduled.
#[derive(Debug, Clone, Copy)]
pub struct PromisedCapacity<'a> {
    pub pending: &'a PendingPlacements,
    pub reservations: &'a ReservationTable,
    pub pod_uid: &'a str,
    pub now: Instant,
}

impl Promised for PromisedCapacity<'_> {
    fn promised(&self, node: &str, device_class: &str) -> u64 {
        self.pending
            .on_node(node, device_class, self.pod_uid)
            .saturating_add(
                self.reservations
                    .on_node(node, device_class, self.pod_uid, self.now),
            )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{
        EphemeralVolumeSource, PersistentVolumeClaimSpec, PersistentVolumeClaimStatus,
        PersistentVolumeClaimVolumeSource, PodSpec, PodStatus, Volume,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    const GIB: u64 = 1 << 30;

    /// A pod fixture that reads like a sentence: `pod("a").requesting("ssd", 5).on("n1")`.
    struct PodFixture(Pod);

    fn pod(name: &str) -> PodFixture {
        PodFixture(Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("ns".to_owned()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Pending".to_owned()),
                ..Default::default()
            }),
        })
    }

    impl PodFixture {
        fn requesting(mut self, class: &str, bytes: u64) -> Self {
            self.0
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(format!("capacity.topolvm.io/{class}"), bytes.to_string());
            self
        }
        fn annotated(mut self, key: &str, value: &str) -> Self {
            self.0
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(key.to_owned(), value.to_owned());
            self
        }
        fn with_claim(mut self, claim: &str) -> Self {
            self.volumes().push(Volume {
                name: format!("vol-{claim}"),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.to_owned(),
                    read_only: None,
                }),
                ..Default::default()
            });
            self
        }
        fn with_ephemeral(mut self, volume: &str) -> Self {
            self.volumes().push(Volume {
                name: volume.to_owned(),
                ephemeral: Some(EphemeralVolumeSource::default()),
                ..Default::default()
            });
            self
        }
        fn on(mut self, node: &str) -> Self {
            self.spec().node_name = Some(node.to_owned());
            self
        }
        fn in_phase(mut self, phase: &str) -> Self {
            self.0.status = Some(PodStatus {
                phase: Some(phase.to_owned()),
                ..Default::default()
            });
            self
        }
        fn spec(&mut self) -> &mut PodSpec {
            self.0.spec.get_or_insert_with(Default::default)
        }
        fn volumes(&mut self) -> &mut Vec<Volume> {
            self.spec().volumes.get_or_insert_with(Vec::new)
        }
    }

    struct ClaimFixture(PersistentVolumeClaim);

    fn claim(name: &str) -> ClaimFixture {
        ClaimFixture(PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("ns".to_owned()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec::default()),
            status: Some(PersistentVolumeClaimStatus {
                phase: Some("Pending".to_owned()),
                ..Default::default()
            }),
        })
    }

    impl ClaimFixture {
        fn selected_for(mut self, node: &str) -> Self {
            self.0
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(SELECTED_NODE_ANNOTATION.to_owned(), node.to_owned());
            self
        }
        fn bound_to(mut self, volume: &str) -> Self {
            self.0.spec.get_or_insert_with(Default::default).volume_name = Some(volume.to_owned());
            self.0.status = Some(PersistentVolumeClaimStatus {
                phase: Some("Bound".to_owned()),
                ..Default::default()
            });
            self
        }
    }

    fn index(claims: Vec<ClaimFixture>) -> HashMap<ClaimKey, ClaimState> {
        claims.iter().filter_map(|c| claim_state(&c.0)).collect()
    }

    fn compute(pods: Vec<PodFixture>, claims: Vec<ClaimFixture>) -> PendingPlacements {
        let pods: Vec<Pod> = pods.into_iter().map(|p| p.0).collect();
        PendingPlacements::compute(&pods, &index(claims))
    }

    #[test]
    fn claim_states() {
        let (key, state) = claim_state(&claim("c").0).expect("claim");
        assert_eq!(key, ("ns".to_owned(), "c".to_owned()));
        assert_eq!(state, ClaimState::default());
        let (_, state) = claim_state(&claim("c").selected_for("n1").bound_to("pv").0).expect("c");
        assert_eq!(
            state,
            ClaimState {
                bound: true,
                selected_node: Some("n1".to_owned())
            }
        );
        let mut volume_only = claim("c");
        volume_only
            .0
            .spec
            .get_or_insert_with(Default::default)
            .volume_name = Some("pv".into());
        assert!(claim_state(&volume_only.0).expect("c").1.bound);
        assert!(claim_state(&PersistentVolumeClaim::default()).is_none());
    }

    #[test]
    fn claim_names_of_a_pod() {
        let p = pod("web").with_claim("data").with_ephemeral("scratch").0;
        assert_eq!(pod_claim_names(&p), ["data", "web-scratch"]);
    }

    #[test]
    fn bound_pod_with_an_unbound_claim_is_pending() {
        let pending = compute(
            vec![pod("a").requesting("ssd", 5 * GIB).with_claim("c").on("n1")],
            vec![claim("c")],
        );
        assert_eq!(pending.on_node("n1", "ssd", ""), 5 * GIB);
        assert_eq!(pending.on_node("n2", "ssd", ""), 0);
        assert_eq!(pending.on_node("n1", "hdd", ""), 0);
        assert!(pending.is_placed("uid-a"));
        assert_eq!(pending.pending_pods(), 1);
    }

    #[test]
    fn claim_with_a_selected_node_places_an_unbound_pod() {
        // kube-scheduler's volume binding writes the selected node before it binds the pod.
        let pending = compute(
            vec![pod("a").requesting("ssd", 5).with_claim("c")],
            vec![claim("c").selected_for("n2")],
        );
        assert_eq!(pending.on_node("n2", "ssd", ""), 5);
        assert!(pending.is_placed("uid-a"));
    }

    #[test]
    fn provisioned_pods_are_left_to_the_annotation() {
        let pending = compute(
            vec![pod("a").requesting("ssd", 5).with_claim("c").on("n1")],
            vec![claim("c").selected_for("n1").bound_to("pv-1")],
        );
        assert_eq!(pending.on_node("n1", "ssd", ""), 0);
        assert!(
            pending.is_placed("uid-a"),
            "placed, so its reservation goes"
        );
        assert_eq!(pending.pending_pods(), 0);
    }

    #[test]
    fn one_unbound_claim_keeps_the_whole_request_pending() {
        let pending = compute(
            vec![
                pod("a")
                    .requesting("ssd", 5)
                    .with_claim("c1")
                    .with_claim("c2")
                    .on("n1"),
            ],
            vec![claim("c1").bound_to("pv"), claim("c2")],
        );
        assert_eq!(pending.on_node("n1", "ssd", ""), 5);
    }

    #[test]
    fn pods_that_do_not_count() {
        let pending = compute(
            vec![
                // Not placed anywhere yet: the reservation table covers it.
                pod("unplaced").requesting("ssd", 1).with_claim("c"),
                // No capacity annotations: not a TopoLVM pod (or nothing left to provision).
                pod("plain").with_claim("c").on("n1"),
                // Only unusable requests.
                pod("zero").requesting("ssd", 0).with_claim("c").on("n1"),
                pod("junk")
                    .annotated("capacity.topolvm.io/ssd", "lots")
                    .with_claim("c")
                    .on("n1"),
                // Finished pods never start.
                pod("done")
                    .requesting("ssd", 1)
                    .with_claim("c")
                    .on("n1")
                    .in_phase("Succeeded"),
                pod("failed")
                    .requesting("ssd", 1)
                    .with_claim("c")
                    .on("n1")
                    .in_phase("Failed"),
                // Its claim is not known (not created yet, or deleted): no evidence.
                pod("orphan")
                    .requesting("ssd", 1)
                    .with_claim("missing")
                    .on("n1"),
                // No claims at all.
                pod("noclaims").requesting("ssd", 1).on("n1"),
            ],
            vec![claim("c")],
        );
        assert_eq!(pending.on_node("n1", "ssd", ""), 0);
        assert_eq!(pending.pending_pods(), 0);
        assert!(!pending.is_placed("uid-unplaced"));
    }

    #[test]
    fn claims_are_looked_up_in_the_pods_namespace() {
        let mut other = claim("c");
        other.0.metadata.namespace = Some("elsewhere".to_owned());
        let pending = compute(
            vec![pod("a").requesting("ssd", 1).with_claim("c").on("n1")],
            vec![other],
        );
        assert_eq!(pending.on_node("n1", "ssd", ""), 0);
    }

    #[test]
    fn ephemeral_volume_claims_count() {
        let pending = compute(
            vec![
                pod("a")
                    .requesting("ssd", 3)
                    .with_ephemeral("scratch")
                    .on("n1"),
            ],
            vec![claim("a-scratch")],
        );
        assert_eq!(pending.on_node("n1", "ssd", ""), 3);
    }

    #[test]
    fn pending_sums_per_node_and_class_and_excludes_the_asking_pod() {
        let pending = compute(
            vec![
                pod("a")
                    .requesting("ssd", 5)
                    .requesting("hdd", 7)
                    .with_claim("ca")
                    .on("n1"),
                pod("b").requesting("ssd", 11).with_claim("cb").on("n1"),
                pod("c").requesting("ssd", 13).with_claim("cc").on("n2"),
            ],
            vec![claim("ca"), claim("cb"), claim("cc")],
        );
        assert_eq!(pending.on_node("n1", "ssd", ""), 16);
        assert_eq!(pending.on_node("n1", "hdd", ""), 7);
        assert_eq!(pending.on_node("n2", "ssd", ""), 13);
        assert_eq!(pending.on_node("n1", "ssd", "uid-a"), 11);
        assert_eq!(pending.on_node("n2", "ssd", "uid-a"), 13);
        assert_eq!(
            pending.pod("uid-c"),
            Some(&PendingPod {
                node: "n2".to_owned(),
                requests: [("ssd".to_owned(), 13)].into()
            })
        );
    }

    #[test]
    fn reservations_count_on_every_candidate_until_they_expire() {
        let t0 = Instant::now();
        let mut table = ReservationTable::new(Duration::from_secs(30));
        table.reserve(
            "u1",
            "ns/p1",
            [("ssd".to_owned(), 5)].into(),
            ["n1", "n2"],
            t0,
        );
        assert_eq!(table.on_node("n1", "ssd", "u2", t0), 5);
        assert_eq!(table.on_node("n2", "ssd", "u2", t0), 5);
        assert_eq!(table.on_node("n3", "ssd", "u2", t0), 0);
        assert_eq!(table.on_node("n1", "hdd", "u2", t0), 0);
        assert_eq!(
            table.on_node("n1", "ssd", "u1", t0),
            0,
            "not against itself"
        );
        let later = t0 + Duration::from_secs(31);
        assert_eq!(table.on_node("n1", "ssd", "u2", later), 0, "expired");
        assert_eq!(table.expire(later), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn a_new_filter_call_replaces_the_reservation() {
        let t0 = Instant::now();
        let mut table = ReservationTable::new(Duration::from_secs(30));
        table.reserve("u1", "p", [("ssd".to_owned(), 5)].into(), ["n1"], t0);
        table.reserve("u1", "p", [("ssd".to_owned(), 7)].into(), ["n2"], t0);
        assert_eq!(table.on_node("n1", "ssd", "", t0), 0);
        assert_eq!(table.on_node("n2", "ssd", "", t0), 7);
        table.reserve("u1", "p", [("ssd".to_owned(), 7)].into(), [], t0);
        assert!(table.is_empty(), "no candidates left: nothing to hold");
        table.reserve("", "p", [("ssd".to_owned(), 7)].into(), ["n1"], t0);
        table.reserve("u2", "p", ClassBytes::new(), ["n1"], t0);
        assert!(table.is_empty(), "no UID or no requests: nothing to hold");
    }

    #[test]
    fn prioritize_narrows_the_candidates() {
        let t0 = Instant::now();
        let mut table = ReservationTable::new(Duration::from_secs(30));
        let req: ClassBytes = [("ssd".to_owned(), 5)].into();
        table.reserve("u1", "p", req.clone(), ["n1", "n2", "n3"], t0);
        table.narrow("u1", "p", req.clone(), ["n2", "n3", "n9"], t0);
        let r = table.get("u1").expect("kept");
        let mut nodes: Vec<&str> = r.candidates.iter().map(String::as_str).collect();
        nodes.sort_unstable();
        assert_eq!(nodes, ["n2", "n3"]);
        table.narrow("u1", "p", req.clone(), ["n9"], t0);
        assert!(table.get("u1").is_none(), "nothing in common");
        table.narrow("u2", "p", req, ["n4"], t0);
        assert_eq!(
            table.on_node("n4", "ssd", "", t0),
            5,
            "prioritize without filter"
        );
    }

    #[test]
    fn superseded_reservations_are_dropped() {
        let t0 = Instant::now();
        let mut table = ReservationTable::new(Duration::from_secs(30));
        let req: ClassBytes = [("ssd".to_owned(), 5)].into();
        table.reserve("u1", "p1", req.clone(), ["n1"], t0);
        table.reserve("u2", "p2", req, ["n1"], t0);
        let pending = compute(
            vec![pod("x").requesting("ssd", 1).with_claim("c").on("n1")],
            vec![claim("c")],
        );
        assert_eq!(
            table.drop_superseded(|uid| uid == "u1" || pending.is_placed(uid)),
            1
        );
        assert!(table.get("u2").is_some());
        assert!(table.remove("u2"));
        assert!(!table.remove("u2"));
    }

    #[test]
    fn promised_capacity_adds_pending_and_reserved() {
        let t0 = Instant::now();
        let pending = compute(
            vec![pod("a").requesting("ssd", 100).with_claim("c").on("n1")],
            vec![claim("c")],
        );
        let mut table = ReservationTable::new(Duration::from_secs(30));
        table.reserve(
            "uid-b",
            "ns/b",
            [("ssd".to_owned(), 10)].into(),
            ["n1", "n2"],
            t0,
        );
        let seen_by_c = PromisedCapacity {
            pending: &pending,
            reservations: &table,
            pod_uid: "uid-c",
            now: t0,
        };
        assert_eq!(seen_by_c.promised("n1", "ssd"), 110);
        assert_eq!(seen_by_c.promised("n2", "ssd"), 10);
        let seen_by_a = PromisedCapacity {
            pod_uid: "uid-a",
            ..seen_by_c
        };
        assert_eq!(seen_by_a.promised("n1", "ssd"), 10);
        let seen_by_b = PromisedCapacity {
            pod_uid: "uid-b",
            ..seen_by_c
        };
        assert_eq!(seen_by_b.promised("n1", "ssd"), 100);
    }
}
