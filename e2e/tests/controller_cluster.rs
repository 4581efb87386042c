//! topolvm-controller against the test bed's real kube-apiserver 1.20 (no lvmd, no root
//! needed beyond what the test bed needs), running as its ServiceAccount with the
//! RBAC of the rendered manifests (`deploy/manifests/`):
//!
//! ```text
//! cargo build -p topolvm-controller --bin topolvm-controller
//! cargo test -p topolvm-e2e --features e2e --test controller_cluster
//! ```
//!
//! - The API server calls our pod webhook over TLS (a serving certificate for 127.0.0.1 from a
//!   test CA, given as the caBundle of the webhook configuration shipped in `deploy/manifests/`)
//!   and stores the pod with TopoLVM's annotations and resource. With the controller stopped
//!   (`failurePolicy: Fail`), a pod in a normal namespace is refused while pods in excluded
//!   namespaces are admitted.
//! - A Node deleted while its topolvm-node is gone loses its claims of our StorageClass and its
//!   LogicalVolumes, then its finalizer; with `--skip-node-finalize` only the finalizer goes.
//! - Two replicas: the leader is killed with SIGKILL, the other takes over within the lease
//!   duration and reconciles (it deletes a stray LogicalVolume after the grace period, and keeps
//!   one whose claim exists).
//! - The claim reconciler strips TopoLVM's legacy PVC finalizers and annotates the pods of a
//!   claim whose filesystem resize is pending, leaving a pod with a recent enough nudge alone.
#![cfg(feature = "e2e")]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use topolvm_core::crd::LogicalVolume;
use topolvm_e2e::cluster::{Cluster, ClusterOptions, FIELD_MANAGER, manifest_documents};
use topolvm_e2e::pki::Pki;
use topolvm_e2e::process::{ManagedProcess, eventually, free_port, workspace_binary};

const WAIT: Duration = Duration::from_secs(30);
const CLASS: &str = "topolvm-provisioner";

/// One topolvm-controller replica.
struct Controller {
    process: ManagedProcess,
    metrics: String,
    readyz: String,
}

impl Controller {
    fn start(cluster: &Cluster, name: &str, extra: &[&str]) -> Self {
        let dir = cluster.dir().join(name);
        std::fs::create_dir_all(&dir).expect("replica directory");
        let metrics = format!("127.0.0.1:{}", free_port());
        let health = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(workspace_binary("topolvm-controller", "topolvm-controller"));
        cmd.arg("--kubeconfig")
            .arg(cluster.kubeconfig("topolvm-controller"))
            .arg("--csi-socket")
            .arg(dir.join("csi.sock"))
            .arg("--metrics-bind-address")
            .arg(&metrics)
            .arg("--health-probe-bind-address")
            .arg(&health)
            .arg("--leader-election-namespace=default")
            .args(extra)
            .env("RUST_LOG", "topolvm_controller=debug,info");
        let process = ManagedProcess::spawn(name, cmd, &dir.join(format!("{name}.log")));
        Self {
            process,
            metrics: format!("http://{metrics}/metrics"),
            readyz: format!("http://{health}/readyz"),
        }
    }

    /// Whether `/readyz` answers 200.
    async fn is_ready(&self) -> bool {
        http_get_status(&self.readyz).await == Some(200)
    }

    /// The value of an unlabelled metric, `None` while /metrics does not answer.
    async fn metric(&self, name: &str) -> Option<f64> {
        let text = http_get(&self.metrics).await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

/// The status code of a plain HTTP GET on loopback.
async fn http_get_status(url: &str) -> Option<u16> {
    let response = http_get_raw(url).await?;
    response.split(' ').nth(1)?.parse().ok()
}

/// The body of a plain HTTP GET on loopback (the metrics endpoint).
async fn http_get(url: &str) -> Option<String> {
    Some(
        http_get_raw(url)
            .await?
            .split_once("\r\n\r\n")?
            .1
            .to_owned(),
    )
}

/// A plain HTTP/1.0 GET on loopback, the whole response, without another HTTP client crate.
async fn http_get_raw(url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/')?;
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    let request = format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response)
}

/// The CSIDriver object `topolvm.io`, without which the controller is not ready.
async fn csi_driver(client: &kube::Client) {
    use k8s_openapi::api::storage::v1::CSIDriver;
    apply(
        &Api::<CSIDriver>::all(client.clone()),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
               "metadata": {"name": "topolvm.io"},
               "spec": {"attachRequired": false, "podInfoOnMount": true}}),
    )
    .await;
}

async fn apply<K>(api: &Api<K>, object: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = object["metadata"]["name"]
        .as_str()
        .expect("named")
        .to_owned();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {name}: {e}"))
}

async fn storage_class(client: &kube::Client) {
    apply(
        &Api::<StorageClass>::all(client.clone()),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": CLASS}, "provisioner": "topolvm.io",
               "parameters": {"topolvm.io/device-class": "ssd"},
               "volumeBindingMode": "WaitForFirstConsumer"}),
    )
    .await;
}

async fn namespace(client: &kube::Client, name: &str, labels: Value) {
    apply(
        &Api::<Namespace>::all(client.clone()),
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "labels": labels}}),
    )
    .await;
}

async fn claim(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    storage: &str,
    selected_node: Option<&str>,
) -> PersistentVolumeClaim {
    let mut object = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": CLASS,
                 "resources": {"requests": {"storage": storage}}}});
    if let Some(node) = selected_node {
        object["metadata"]["annotations"] = json!({"volume.kubernetes.io/selected-node": node});
    }
    apply(
        &Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace),
        object,
    )
    .await
}

/// A LogicalVolume as the CSI controller makes it (with topolvm-node's label and finalizer
/// when `node_agent_saw_it`).
async fn logical_volume(
    client: &kube::Client,
    name: &str,
    node: &str,
    node_agent_saw_it: bool,
) -> LogicalVolume {
    let mut object = json!({"apiVersion": "topolvm.io/v1", "kind": "LogicalVolume",
        "metadata": {"name": name},
        "spec": {"name": name, "nodeName": node, "size": "1Gi", "deviceClass": "ssd"}});
    if node_agent_saw_it {
        object["metadata"]["labels"] = json!({"topolvm.io/node": node});
        object["metadata"]["finalizers"] = json!(["topolvm.io/logicalvolume"]);
    }
    Api::<LogicalVolume>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(object).expect("a LogicalVolume"),
        )
        .await
        .unwrap_or_else(|e| panic!("creating LogicalVolume {name}: {e}"))
}

async fn gone<K>(api: &Api<K>, name: &str) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    matches!(api.get_opt(name).await, Ok(None))
}

fn pod(name: &str, claim: &str) -> Pod {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app"}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}}))
    .expect("a pod")
}

/// The webhook configuration of the plain manifest `deploy/manifests/topolvm-rs-scheduler.yaml`
/// (rendered from the Helm chart), pointed at `url` with `ca` (PEM) as its CA bundle instead of
/// the in-cluster Service.
fn shipped_webhook(url: &str, ca: &Path) -> Value {
    let mut config = manifest_documents("topolvm-rs-scheduler.yaml")
        .into_iter()
        .find(|doc| doc["kind"] == "MutatingWebhookConfiguration")
        .expect("a MutatingWebhookConfiguration");
    config["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("annotations");
    let ca = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(ca).expect("the CA certificate"));
    config["webhooks"][0]["clientConfig"] = json!({"url": url, "caBundle": ca});
    config
}

#[tokio::test]
async fn the_api_server_calls_the_webhook_and_failure_only_blocks_normal_namespaces() {
    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    cluster.install_crds().await;
    let client = cluster.client();
    storage_class(&client).await;

    // A serving certificate for 127.0.0.1 (Pki::serving adds the IP), from a CA of our own.
    let pki = Pki::new(&cluster.dir().join("webhook-pki"));
    let serving = pki.serving("webhook", &["localhost"], &[]);
    let cert_dir = cluster.dir().join("webhook-certs");
    std::fs::create_dir_all(&cert_dir).expect("cert dir");
    std::fs::copy(&serving.cert, cert_dir.join("tls.crt")).expect("tls.crt");
    std::fs::copy(&serving.key, cert_dir.join("tls.key")).expect("tls.key");
    let port = free_port();
    let webhook_addr = format!("127.0.0.1:{port}");
    let mut controller = Controller::start(
        &cluster,
        "controller",
        &[
            "--webhook-addr",
            &webhook_addr,
            "--cert-dir",
            cert_dir.to_str().expect("utf-8"),
        ],
    );
    apply(
        &Api::<MutatingWebhookConfiguration>::all(client.clone()),
        shipped_webhook(
            &format!("https://127.0.0.1:{port}/pod/mutate"),
            pki.ca_file(),
        ),
    )
    .await;

    namespace(&client, "app", json!({})).await;
    claim(&client, "app", "data", "5Gi", None).await;
    let pods = Api::<Pod>::namespaced(client.clone(), "app");
    // The first creations may come before the controller listens: failurePolicy Fail refuses
    // them, which is the point; retry until it serves.
    let created = eventually("the webhook admits the pod", WAIT, || {
        let pods = pods.clone();
        async move {
            pods.create(&PostParams::default(), &pod("web", "data"))
                .await
                .ok()
        }
    })
    .await;
    controller.process.assert_running();
    csi_driver(&client).await;
    eventually("ready with the webhook serving", WAIT, || {
        let c = &controller;
        async move { c.is_ready().await.then_some(()) }
    })
    .await;
    assert_eq!(
        created
            .annotations()
            .get("capacity.topolvm.io/ssd")
            .map(String::as_str),
        Some("5368709120"),
        "TopoLVM's pod annotation: the claim's bytes under its device class"
    );
    let resources = created.spec.as_ref().expect("spec").containers[0]
        .resources
        .clone()
        .expect("resources");
    let one = |list: Option<BTreeMap<_, _>>| {
        list.and_then(
            |l: BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
                l.get("topolvm.io/capacity").map(|q| q.0.clone())
            },
        )
    };
    assert_eq!(one(resources.requests), Some("1".to_owned()));
    assert_eq!(one(resources.limits), Some("1".to_owned()));
    assert!(
        controller
            .metric("topolvm_controller_webhook_admissions_total{result=\"mutated\"}")
            .await
            .is_some_and(|n| n >= 1.0)
    );

    // The webhook down: failurePolicy Fail refuses pods in normal namespaces, while the
    // excluded namespaces still get theirs (so the controller's own pods can restart).
    controller.process.stop();
    namespace(
        &client,
        "opted-out",
        json!({"topolvm.io/webhook": "ignore"}),
    )
    .await;
    // Kubernetes 1.20 does not set kubernetes.io/metadata.name (1.21+ does): set it as 1.21 would.
    namespace(
        &client,
        "topolvm-system",
        json!({"kubernetes.io/metadata.name": "topolvm-system"}),
    )
    .await;
    let refused = pods
        .create(&PostParams::default(), &pod("refused", "data"))
        .await
        .expect_err("the webhook is down and failurePolicy is Fail");
    assert!(
        refused.to_string().contains("pod-hook.topolvm.io"),
        "refused by our webhook: {refused}"
    );
    for ns in ["opted-out", "topolvm-system"] {
        let admitted = Api::<Pod>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &pod("controller-pod", "data"))
            .await
            .unwrap_or_else(|e| panic!("a pod in {ns} must be admitted without the webhook: {e}"));
        assert!(
            !admitted
                .annotations()
                .contains_key("capacity.topolvm.io/ssd")
        );
    }
}

/// A Node as topolvm-node leaves it: with the finalizer `topolvm.io/node`.
async fn node_with_finalizer(cluster: &Cluster, name: &str) {
    cluster.make_node(name, &[], &[("ssd", 10 << 30)]).await;
    Api::<Node>::all(cluster.client())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["topolvm.io/node"]}})),
        )
        .await
        .expect("adding the node finalizer");
}

#[tokio::test]
async fn a_deleted_node_is_cleaned_up_without_its_agent_unless_skipped() {
    // kube-controller-manager's pvc-protection controller lets deleted claims go.
    let cluster = Cluster::start(ClusterOptions::api_only().with_controller_manager()).await;
    cluster.install_crds().await;
    let client = cluster.client();
    storage_class(&client).await;
    namespace(&client, "app", json!({})).await;
    let nodes = Api::<Node>::all(client.clone());
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "app");
    let volumes = Api::<LogicalVolume>::all(client.clone());

    node_with_finalizer(&cluster, "gone").await;
    node_with_finalizer(&cluster, "kept").await;
    claim(&client, "app", "on-gone", "1Gi", Some("gone")).await;
    claim(&client, "app", "on-kept", "1Gi", Some("kept")).await;
    logical_volume(&client, "pvc-gone-1", "gone", true).await;
    logical_volume(&client, "pvc-gone-2", "gone", false).await;
    logical_volume(&client, "pvc-kept-1", "kept", true).await;

    let mut controller = Controller::start(&cluster, "controller", &["--enable-webhooks=false"]);
    // Without the webhook there is no webhook readiness check to wait for.
    csi_driver(&client).await;
    eventually("ready without the webhook", WAIT, || {
        let c = &controller;
        async move { c.is_ready().await.then_some(()) }
    })
    .await;
    nodes
        .delete("gone", &DeleteParams::default())
        .await
        .expect("deleting the node");
    eventually("the deleted node is released", WAIT, || {
        let nodes = nodes.clone();
        async move { gone(&nodes, "gone").await.then_some(()) }
    })
    .await;
    for name in ["pvc-gone-1", "pvc-gone-2"] {
        assert!(
            gone(&volumes, name).await,
            "{name} was deleted before the node was released"
        );
    }
    eventually("the claim on the deleted node is deleted", WAIT, || {
        let claims = claims.clone();
        async move { gone(&claims, "on-gone").await.then_some(()) }
    })
    .await;
    assert!(
        !gone(&volumes, "pvc-kept-1").await,
        "another node's volume stays"
    );
    assert!(
        !gone(&claims, "on-kept").await,
        "another node's claim stays"
    );
    controller.process.assert_running();
    controller.process.stop();

    // --skip-node-finalize: the node is released, its claims and volumes stay.
    let _controller = Controller::start(
        &cluster,
        "skipping",
        &["--enable-webhooks=false", "--skip-node-finalize"],
    );
    nodes
        .delete("kept", &DeleteParams::default())
        .await
        .expect("deleting the node");
    eventually("the node is released", WAIT, || {
        let nodes = nodes.clone();
        async move { gone(&nodes, "kept").await.then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!gone(&volumes, "pvc-kept-1").await);
    assert!(!gone(&claims, "on-kept").await);
}

async fn lease_holder(client: &kube::Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), "default")
        .get_opt("topolvm")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty())
}

#[tokio::test]
async fn the_other_replica_takes_over_from_a_killed_leader_and_reconciles() {
    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    cluster.install_crds().await;
    let client = cluster.client();
    storage_class(&client).await;
    namespace(&client, "app", json!({})).await;

    let lease_duration = Duration::from_secs(6);
    let flags = [
        "--enable-webhooks=false",
        "--leader-election-lease-duration=6s",
        "--leader-election-renew-deadline=4s",
        "--leader-election-retry-period=1s",
        "--stray-volume-grace-period=3s",
        "--stray-volume-scan-interval=1s",
    ];
    let mut replicas = [
        Controller::start(&cluster, "replica-a", &flags),
        Controller::start(&cluster, "replica-b", &flags),
    ];
    let holder = eventually("a replica leads", WAIT, || lease_holder(&client)).await;
    let pid_of = |c: &Controller| c.process.pid().expect("running");
    let leader = replicas
        .iter()
        .position(|c| holder.ends_with(&format!("_{}", pid_of(c))))
        .unwrap_or_else(|| panic!("the holder {holder} is one of the replicas"));
    let follower = 1 - leader;
    eventually("the gauges say who leads", WAIT, || {
        let (l, f) = (&replicas[leader], &replicas[follower]);
        async move {
            (l.metric("topolvm_controller_leader").await == Some(1.0)
                && f.metric("topolvm_controller_leader").await == Some(0.0))
            .then_some(())
        }
    })
    .await;

    replicas[leader].process.kill();
    let killed = Instant::now();
    let new_holder = eventually("the follower takes over", WAIT, || {
        let client = client.clone();
        let old = holder.clone();
        async move { lease_holder(&client).await.filter(|h| *h != old) }
    })
    .await;
    let takeover = killed.elapsed();
    eprintln!("takeover after SIGKILL of the leader: {takeover:?}");
    assert!(new_holder.ends_with(&format!("_{}", pid_of(&replicas[follower]))));
    // client-go's rule: the follower waits out the lease duration from the last renewal it
    // observed (at most one retry period before the kill), then takes the Lease at its next
    // retry. The bound is that rule plus slack for a loaded test machine; it is not a speed goal.
    let retry_period = Duration::from_secs(1);
    assert!(
        takeover <= lease_duration + 2 * retry_period + Duration::from_secs(4),
        "took {takeover:?}, lease duration {lease_duration:?}"
    );

    // The new leader reconciles: a stray object goes after its grace, one with a claim stays.
    let claim = claim(&client, "app", "pending", "1Gi", None).await;
    let kept = format!("pvc-{}", claim.uid().expect("uid"));
    logical_volume(&client, &kept, "node-a", false).await;
    let stray = "pvc-00000000-0000-4000-8000-000000000001";
    logical_volume(&client, stray, "node-a", false).await;
    let volumes = Api::<LogicalVolume>::all(client.clone());
    eventually("the stray LogicalVolume is deleted", WAIT, || {
        let volumes = volumes.clone();
        async move { gone(&volumes, stray).await.then_some(()) }
    })
    .await;
    assert!(
        !gone(&volumes, &kept).await,
        "a volume whose claim exists stays"
    );
    let survivor = &mut replicas[follower];
    survivor.process.assert_running();
    assert_eq!(
        survivor
            .metric("topolvm_controller_stray_logicalvolumes_deleted_total")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn the_claim_reconciler_strips_legacy_finalizers_and_nudges_a_pending_resize() {
    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    cluster.install_crds().await;
    let client = cluster.client();
    storage_class(&client).await;
    namespace(&client, "app", json!({})).await;
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "app");
    let pods = Api::<Pod>::namespaced(client.clone(), "app");

    // A claim as TopoLVM's PVC webhook (before v0.40) left it.
    let legacy: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "legacy", "finalizers": ["topolvm.io/pvc", "topolvm.cybozu.com/pvc"]},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": CLASS,
                 "resources": {"requests": {"storage": "1Gi"}}}}))
    .expect("a claim");
    claims
        .create(&PostParams::default(), &legacy)
        .await
        .expect("creating the legacy claim");

    // A claim whose filesystem resize is pending, as kubelet's resize controller marks it,
    // used by a pod with an old nudge and by one without any.
    claim(&client, "app", "growing", "1Gi", None).await;
    let since = "2026-01-01T00:00:00Z";
    claims
        .patch_status(
            "growing",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bound", "conditions": [{
                "type": "FileSystemResizePending", "status": "True",
                "lastTransitionTime": since}]}})),
        )
        .await
        .expect("marking the resize pending");
    let mut old_nudge = pod("old-nudge", "growing");
    old_nudge.metadata.annotations = Some(BTreeMap::from([(
        "topolvm.io/last-resizefs-requested-at".to_owned(),
        "2025-12-31T23:59:59.5Z".to_owned(),
    )]));
    let mut recent_nudge = pod("recent-nudge", "growing");
    let recent = "2026-01-01T00:00:01.25Z";
    recent_nudge.metadata.annotations = Some(BTreeMap::from([(
        "topolvm.io/last-resizefs-requested-at".to_owned(),
        recent.to_owned(),
    )]));
    for p in [
        pod("fresh", "growing"),
        old_nudge,
        recent_nudge,
        pod("other", "legacy"),
    ] {
        pods.create(&PostParams::default(), &p)
            .await
            .expect("creating a pod");
    }

    let started = k8s_openapi::jiff::Timestamp::now();
    let mut controller = Controller::start(&cluster, "controller", &["--enable-webhooks=false"]);
    eventually("the legacy finalizers are removed", WAIT, || {
        let claims = claims.clone();
        async move {
            let c = claims.get("legacy").await.ok()?;
            (!c.finalizers().iter().any(|f| f.ends_with("/pvc"))).then_some(())
        }
    })
    .await;
    for name in ["fresh", "old-nudge"] {
        let at = eventually("the pod is nudged", WAIT, || {
            let pods = pods.clone();
            async move {
                let p = pods.get(name).await.ok()?;
                let value = p
                    .annotations()
                    .get("topolvm.io/last-resizefs-requested-at")?
                    .clone();
                // Go's time.Parse(time.RFC3339Nano, ...) reads it: RFC 3339 with a Z.
                let at: k8s_openapi::jiff::Timestamp = value.parse().ok()?;
                (value.ends_with('Z') && at >= started).then_some(at)
            }
        })
        .await;
        assert!(at >= started, "{name}: {at}");
    }
    let untouched = pods.get("recent-nudge").await.expect("pod");
    assert_eq!(
        untouched
            .annotations()
            .get("topolvm.io/last-resizefs-requested-at")
            .map(String::as_str),
        Some(recent),
        "a nudge later than the condition is enough"
    );
    let other = pods.get("other").await.expect("pod");
    assert!(
        !other
            .annotations()
            .contains_key("topolvm.io/last-resizefs-requested-at")
    );
    controller.process.assert_running();
}
