//! `--secure-metrics-server` against the test bed's real kube-apiserver (root not needed):
//!
//! ```text
//! cargo build -p topolvm-node --bin topolvm-node && cargo test -p topolvm-e2e --features e2e --test node_secure_metrics
//! ```
//!
//! `/metrics` is HTTPS only; without a token the answer is 401; with the token of a service
//! account RBAC does not allow `get /metrics` it is 403; with one that is allowed it is 200 and
//! the metrics. The API server decides (TokenReview, SubjectAccessReview), as for
//! controller-runtime's secure metrics server that TopoLVM uses.
#![cfg(feature = "e2e")]

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use topolvm_e2e::cluster::{Cluster, ClusterOptions};
use topolvm_e2e::process::{ManagedProcess, workspace_binary};
use topolvm_e2e::stack::{AgentEndpoints, node_agent_args};

/// A token of a new service account `name` in `default`, from the TokenRequest API.
async fn service_account_token(client: kube::Client, name: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client, "default");
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts
        .create(&PostParams::default(), &account)
        .await
        .expect("service account");
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["https://kubernetes.default.svc".to_owned()],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let issued: TokenRequest = accounts
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .expect("TokenRequest");
    issued.status.expect("token status").token
}

/// The HTTP status code curl gets for `url` (`000` when no HTTP answer came).
fn status_of(url: &str, token: Option<&str>) -> String {
    let mut curl = Command::new("curl");
    curl.args([
        "--silent",
        "--insecure",
        "--max-time",
        "10",
        "--output",
        "/dev/null",
    ])
    .args(["--write-out", "%{http_code}"]);
    if let Some(token) = token {
        curl.arg("--header")
            .arg(format!("Authorization: Bearer {token}"));
    }
    let out = curl.arg(url).output().expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_token_rbac_allows() {
    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    let client = cluster.client();
    let stranger = service_account_token(client.clone(), "stranger").await;
    let scraper = service_account_token(client.clone(), "scraper").await;
    let role = ClusterRole {
        metadata: ObjectMeta {
            name: Some("metrics-reader".to_owned()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            non_resource_urls: Some(vec!["/metrics".to_owned()]),
            verbs: vec!["get".to_owned()],
            ..Default::default()
        }]),
        ..Default::default()
    };
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await
        .expect("role");
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some("metrics-reader".to_owned()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: "metrics-reader".to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: "scraper".to_owned(),
            namespace: Some("default".to_owned()),
            ..Default::default()
        }]),
    };
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");

    let dir = tempfile::tempdir().expect("tmp");
    let at = AgentEndpoints::under(dir.path());
    let metrics = at.metrics;
    let mut cmd = Command::new(workspace_binary("topolvm-node", "topolvm-node"));
    cmd.args(node_agent_args(
        &cluster,
        "node-s",
        &dir.path().join("no-lvmd.sock"),
        &at,
    ))
    .arg("--secure-metrics-server")
    .env("RUST_LOG", "topolvm_runtime=debug,info");
    let _node_agent = ManagedProcess::spawn("topolvm-node", cmd, &dir.path().join("node.log"));

    let url = format!("https://{metrics}/metrics");
    let deadline = Instant::now() + Duration::from_secs(20);
    while status_of(&url, None) == "000" {
        assert!(Instant::now() < deadline, "no HTTPS answer on {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status_of(&url, None), "401", "no token");
    assert_eq!(
        status_of(&url, Some("not-a-token")),
        "401",
        "a made-up token"
    );
    assert_eq!(
        status_of(&url, Some(&stranger)),
        "403",
        "a token RBAC does not allow"
    );
    assert_eq!(
        status_of(&url, Some(&scraper)),
        "200",
        "a token RBAC allows"
    );
    assert_eq!(
        status_of(&format!("http://{metrics}/metrics"), Some(&scraper)),
        "000",
        "plain HTTP is not served"
    );
    let body = Command::new("curl")
        .args(["--silent", "--insecure", "--max-time", "10", "--header"])
        .arg(format!("Authorization: Bearer {scraper}"))
        .arg(&url)
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&body.stdout);
    assert!(
        body.contains("# TYPE topolvm_node_logicalvolume_reconcile_duration_seconds histogram"),
        "{body}"
    );
}
