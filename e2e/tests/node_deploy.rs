//! topolvm-node's objects (ServiceAccount, ClusterRoleBinding, DaemonSet) in the plain manifests
//! rendered from the Helm chart (`deploy/manifests/*.yaml`) against the test bed's real
//! kube-apiserver and the real topolvm-node binary:
//!
//! ```text
//! cargo build -p topolvm-node --bin topolvm-node
//! cargo test -p topolvm-e2e --features e2e --test node_deploy
//! ```
//!
//! Every object is a valid object of its kind (no field the API types do not know, which the
//! 1.20 API server would drop silently; the API server accepts it in a dry-run create), and every
//! flag the DaemonSet passes to topolvm-node is one the binary takes.
#![cfg(feature = "e2e")]

use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use topolvm_e2e::cluster::{Cluster, ClusterOptions, manifest_documents};
use topolvm_e2e::process::workspace_binary;

/// topolvm-node's objects in the plain manifest `file`.
fn manifest(file: &str) -> Vec<serde_json::Value> {
    manifest_documents(file)
        .into_iter()
        .filter(|doc| {
            doc["metadata"]["name"] == "topolvm-node"
                && ["ServiceAccount", "ClusterRoleBinding", "DaemonSet"]
                    .contains(&doc["kind"].as_str().unwrap_or_default())
        })
        .collect()
}

/// `value` read as `T` and written back: what the API types keep of it.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    value: &serde_json::Value,
) -> (T, serde_json::Value) {
    let typed: T = serde_json::from_value(value.clone()).expect("the object's kind");
    let back = serde_json::to_value(&typed).expect("serialize");
    (typed, back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemonsets_of_the_plain_manifests_are_valid_and_their_flags_exist() {
    // Dry-run creates: the test bed's own copy of these objects must not be there.
    let cluster = Cluster::start(ClusterOptions::api_only().without_identities()).await;
    let client = cluster.client();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some("topolvm-system".to_owned()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("namespace");

    for file in ["topolvm-rs.yaml", "topolvm-rs-scheduler.yaml"] {
        check(&client, &dry_run, file).await;
    }
}

async fn check(client: &kube::Client, dry_run: &PostParams, file: &str) {
    let mut daemonset = None;
    let documents = manifest(file);
    assert_eq!(
        documents.len(),
        3,
        "ServiceAccount, ClusterRoleBinding, DaemonSet"
    );
    for doc in &documents {
        let kind = doc["kind"].as_str().expect("kind").to_owned();
        let back = match kind.as_str() {
            "ServiceAccount" => {
                let (sa, back) = round_trip::<ServiceAccount>(doc);
                Api::<ServiceAccount>::namespaced(client.clone(), "topolvm-system")
                    .create(dry_run, &sa)
                    .await
                    .expect("the API server accepts the ServiceAccount");
                back
            }
            "ClusterRoleBinding" => {
                let (binding, back) = round_trip::<ClusterRoleBinding>(doc);
                Api::<ClusterRoleBinding>::all(client.clone())
                    .create(dry_run, &binding)
                    .await
                    .expect("the API server accepts the ClusterRoleBinding");
                back
            }
            "DaemonSet" => {
                let (ds, back) = round_trip::<DaemonSet>(doc);
                Api::<DaemonSet>::namespaced(client.clone(), "topolvm-system")
                    .create(dry_run, &ds)
                    .await
                    .expect("the API server accepts the DaemonSet");
                daemonset = Some(ds);
                back
            }
            other => panic!("unexpected kind {other}"),
        };
        assert_eq!(&back, doc, "{kind}: a field the API types do not know");
    }

    let daemonset = daemonset.expect("a DaemonSet");
    let pod = daemonset
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec");
    let node = pod
        .containers
        .iter()
        .find(|c| c.name == "topolvm-node")
        .expect("the topolvm-node container");
    let help = Command::new(workspace_binary("topolvm-node", "topolvm-node"))
        .arg("--help")
        .output()
        .expect("topolvm-node --help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let flags: Vec<&str> = node
        .command
        .iter()
        .flatten()
        .chain(node.args.iter().flatten())
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .collect();
    assert!(flags.contains(&"csi-socket"), "{flags:?}");
    for flag in flags {
        assert!(
            help.contains(&format!("--{flag} ")) || help.contains(&format!("--{flag}\n")),
            "topolvm-node does not take --{flag}:\n{help}"
        );
    }
}
