//! Burst safety with a cluster view: reservations of approved pods and pending placements,
//! driven through the router without an API server.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;
use topolvm_scheduler::accounting::{
    ClaimKey, ClaimState, PendingPlacements, SELECTED_NODE_ANNOTATION, claim_state,
};
use topolvm_scheduler::cluster::{ClusterState, NodeMeta};
use topolvm_scheduler::config::Config;

const GIB: u64 = 1 << 30;
const TTL: Duration = Duration::from_secs(30);

fn gib(n: u64) -> String {
    (n * GIB).to_string()
}

/// A pod as the watch would store it: bound to `node` (or not), with one claim.
fn cluster_pod(uid: &str, ssd_bytes: u64, node: Option<&str>, claim: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("pod-{uid}")),
            namespace: Some("default".into()),
            uid: Some(uid.into()),
            annotations: Some(BTreeMap::from([(
                "capacity.topolvm.io/ssd".to_owned(),
                ssd_bytes.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: node.map(str::to_owned),
            volumes: Some(vec![Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.into(),
                    read_only: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn cluster_claim(
    name: &str,
    selected_node: Option<&str>,
    volume: Option<&str>,
) -> PersistentVolumeClaim {
    let mut claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    if let Some(node) = selected_node {
        claim.metadata.annotations = Some(BTreeMap::from([(
            SELECTED_NODE_ANNOTATION.to_owned(),
            node.to_owned(),
        )]));
    }
    claim.spec = Some(k8s_openapi::api::core::v1::PersistentVolumeClaimSpec {
        volume_name: volume.map(str::to_owned),
        ..Default::default()
    });
    claim
}

fn publish(cluster: &Arc<ClusterState>, pods: &[Pod], claims: &[PersistentVolumeClaim]) {
    let index: HashMap<ClaimKey, ClaimState> = claims.iter().filter_map(claim_state).collect();
    cluster.set_pending(PendingPlacements::compute(pods, &index));
}

#[tokio::test]
async fn two_pods_cannot_both_take_the_last_space() {
    let (state, cluster, _) = cluster_state(&Config::default(), TTL);
    let nodes = |args: Args| {
        args.node("n1", &[("ssd", &gib(10))])
            .node("n2", &[("ssd", &gib(20))])
    };

    let first = post(
        &state,
        "/predicate",
        nodes(pod("a").requesting("ssd", 6 * GIB)).with_nodes(),
    )
    .await
    .json();
    assert_eq!(passed_names(&first), ["n1", "n2"]);

    // b arrives before a shows up anywhere in the cluster: a may land on n1 or n2, so both
    // carry its 6 GiB. n1 has 4 GiB left for b, n2 has 14.
    let second = post(
        &state,
        "/predicate",
        nodes(pod("b").requesting("ssd", 6 * GIB)).with_nodes(),
    )
    .await
    .json();
    assert_eq!(passed_names(&second), ["n2"]);
    assert_eq!(
        failed(&second),
        [("n1".to_owned(), "out of VG free space".to_owned())]
    );

    // Filtering a again is not blocked by its own reservation (but is by b's on n2).
    let again = post(
        &state,
        "/predicate",
        nodes(pod("a").requesting("ssd", 6 * GIB)).with_nodes(),
    )
    .await
    .json();
    assert_eq!(passed_names(&again), ["n1", "n2"]);

    let reservations = cluster.promises().reservations.len();
    assert_eq!(reservations, 2);
}

#[tokio::test]
async fn prioritize_narrows_the_reservation_and_scores_what_is_left() {
    let (state, cluster, _) = cluster_state(&Config::default(), TTL);
    let nodes = |args: Args| {
        args.node("n1", &[("ssd", &gib(16))])
            .node("n2", &[("ssd", &gib(16))])
    };
    post(
        &state,
        "/predicate",
        nodes(pod("a").requesting("ssd", 8 * GIB)).with_nodes(),
    )
    .await;
    // kube-scheduler's other filters left only n1 for a.
    let a_scores = post(
        &state,
        "/prioritize",
        pod("a")
            .requesting("ssd", 8 * GIB)
            .node("n1", &[("ssd", &gib(16))])
            .with_nodes(),
    )
    .await;
    assert_eq!(
        a_scores.text(),
        r#"[{"Host":"n1","Score":4}]"#,
        "a is not scored against itself"
    );
    let reservation = cluster
        .promises()
        .reservations
        .get("a")
        .cloned()
        .expect("kept");
    assert_eq!(reservation.candidates.len(), 1);
    assert!(reservation.candidates.contains("n1"));

    // b sees a's 8 GiB on n1 only: 16 GiB scores 4, 8 GiB scores 3.
    let b_scores = post(
        &state,
        "/prioritize",
        nodes(pod("b").requesting("ssd", GIB)).with_nodes(),
    )
    .await;
    assert_eq!(
        b_scores.text(),
        r#"[{"Host":"n1","Score":3},{"Host":"n2","Score":4}]"#
    );
}

#[tokio::test]
async fn placed_but_unprovisioned_pods_count_until_their_claims_bind() {
    let (state, cluster, _) = cluster_state(&Config::default(), TTL);
    let args = pod("new")
        .requesting("ssd", 6 * GIB)
        .node("n1", &[("ssd", &gib(10))]);

    // x is bound to n1 and its claim has no volume yet: 5 GiB of n1's 10 are promised.
    publish(
        &cluster,
        &[cluster_pod("x", 5 * GIB, Some("n1"), "data-x")],
        &[cluster_claim("data-x", Some("n1"), None)],
    );
    let json = post(&state, "/predicate", args.with_nodes()).await.json();
    assert_eq!(
        failed(&json),
        [("n1".to_owned(), "out of VG free space".to_owned())]
    );

    // Once the claim is bound, the node's annotation accounts for the volume.
    publish(
        &cluster,
        &[cluster_pod("x", 5 * GIB, Some("n1"), "data-x")],
        &[cluster_claim("data-x", Some("n1"), Some("pv-x"))],
    );
    let json = post(&state, "/predicate", args.with_nodes()).await.json();
    assert_eq!(passed_names(&json), ["n1"]);
}

#[tokio::test]
async fn a_selected_node_supersedes_the_reservation() {
    let (state, cluster, _) = cluster_state(&Config::default(), TTL);
    let nodes = |args: Args| {
        args.node("n1", &[("ssd", &gib(10))])
            .node("n2", &[("ssd", &gib(10))])
    };
    post(
        &state,
        "/predicate",
        nodes(pod("a").requesting("ssd", 6 * GIB)).with_nodes(),
    )
    .await;
    let blocked = post(
        &state,
        "/predicate",
        nodes(pod("b").requesting("ssd", 6 * GIB)).with_nodes(),
    )
    .await
    .json();
    assert!(
        passed_names(&blocked).is_empty(),
        "a may land on either node"
    );

    // The scheduler chose n2 for a: its claim says so before the pod is bound.
    publish(
        &cluster,
        &[cluster_pod("a", 6 * GIB, None, "data-a")],
        &[cluster_claim("data-a", Some("n2"), None)],
    );
    assert!(
        cluster.promises().reservations.get("a").is_none(),
        "superseded"
    );
    let json = post(
        &state,
        "/predicate",
        nodes(pod("b").requesting("ssd", 6 * GIB)).with_nodes(),
    )
    .await
    .json();
    assert_eq!(passed_names(&json), ["n1"]);
    assert_eq!(
        failed(&json),
        [("n2".to_owned(), "out of VG free space".to_owned())]
    );
}

#[tokio::test]
async fn deleted_pods_and_expired_reservations_release_their_space() {
    let (state, cluster, _) = cluster_state(&Config::default(), Duration::from_millis(200));
    let args = |uid: &str| {
        pod(uid)
            .requesting("ssd", 6 * GIB)
            .node("n1", &[("ssd", &gib(10))])
    };
    post(&state, "/predicate", args("a").with_nodes()).await;
    assert!(
        passed_names(
            &post(&state, "/predicate", args("b").with_nodes())
                .await
                .json()
        )
        .is_empty()
    );

    cluster.forget_pod("a");
    assert_eq!(
        passed_names(
            &post(&state, "/predicate", args("b").with_nodes())
                .await
                .json()
        ),
        ["n1"]
    );

    // b now holds n1; its reservation runs out after the TTL.
    assert!(
        passed_names(
            &post(&state, "/predicate", args("c").with_nodes())
                .await
                .json()
        )
        .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        passed_names(
            &post(&state, "/predicate", args("c").with_nodes())
                .await
                .json()
        ),
        ["n1"]
    );
}

#[tokio::test]
async fn failing_everywhere_holds_nothing() {
    let (state, cluster, _) = cluster_state(&Config::default(), TTL);
    post(
        &state,
        "/predicate",
        pod("a")
            .requesting("ssd", 60 * GIB)
            .node("n1", &[("ssd", &gib(10))])
            .with_nodes(),
    )
    .await;
    assert!(cluster.promises().reservations.is_empty());
    // Pods without UID or without requests hold nothing either.
    post(
        &state,
        "/predicate",
        pod("")
            .requesting("ssd", GIB)
            .node("n1", &[("ssd", &gib(10))])
            .with_nodes(),
    )
    .await;
    post(
        &state,
        "/predicate",
        pod("b").node("n1", &[("ssd", &gib(10))]).with_nodes(),
    )
    .await;
    assert!(cluster.promises().reservations.is_empty());
}

#[tokio::test]
async fn node_names_are_answered_from_the_node_cache() {
    let (state, _cluster, mut nodes) = cluster_state(&Config::default(), TTL);
    for (name, ssd) in [("n1", gib(10)), ("n2", gib(1))] {
        let mut node = NodeMeta::default();
        node.metadata.name = Some(name.into());
        node.metadata.annotations = Some(BTreeMap::from([(
            "capacity.topolvm.io/ssd".to_owned(),
            ssd,
        )]));
        nodes.0.apply_watcher_event(&Event::Apply(node));
    }
    let args = pod("a")
        .requesting("ssd", 2 * GIB)
        .node("n1", &[])
        .node("n2", &[])
        .node("n3", &[]);
    let json = post(&state, "/predicate", args.with_node_names())
        .await
        .json();
    assert_eq!(json["Nodes"], serde_json::Value::Null);
    assert_eq!(json["NodeNames"], serde_json::json!(["n1"]));
    let failed = failed(&json);
    assert_eq!(
        failed[0],
        ("n2".to_owned(), "out of VG free space".to_owned())
    );
    assert_eq!(failed[1].0, "n3");
    assert!(failed[1].1.contains("node cache"), "{}", failed[1].1);

    let scores = post(&state, "/prioritize", args.with_node_names()).await;
    // a's own reservation on n1 is not counted against it.
    assert_eq!(
        scores.text(),
        r#"[{"Host":"n1","Score":3},{"Host":"n2","Score":1},{"Host":"n3","Score":0}]"#
    );
}
