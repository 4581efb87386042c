//! End to end against a real kube-apiserver: the shared crate's `LogicalVolume` type, the
//! component RBAC roles, and kube-scheduler calling an HTTP extender; and the node's container
//! runtime, the real containerd with the test bed's images. Needs the `e2e` feature, the cached
//! control plane (`e2e/scripts/build-control-plane.sh`) and runtime
//! (`e2e/scripts/build-node-runtime.sh`).
#![cfg(feature = "e2e")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::watcher;
use topolvm_core::crd::{AccessType, LogicalVolume, LogicalVolumeSpec, LogicalVolumeStatus};
use topolvm_core::names;
use topolvm_e2e::{Cluster, ClusterOptions};

fn logical_volume(name: &str, node: &str, size: &str) -> LogicalVolume {
    let mut lv = LogicalVolume::new(
        name,
        LogicalVolumeSpec {
            name: format!("pvc-{name}"),
            node_name: node.to_owned(),
            size: Quantity(size.to_owned()),
            device_class: "ssd".to_owned(),
            ..Default::default()
        },
    );
    lv.metadata.labels = Some(BTreeMap::from([(
        names::LOGICAL_VOLUME_NODE_LABEL.to_owned(),
        node.to_owned(),
    )]));
    lv
}

/// Creates a LogicalVolume from raw JSON, so objects the Rust type cannot express reach the
/// API server's validation.
async fn create_raw(
    cluster: &Cluster,
    object: &serde_json::Value,
) -> Result<serde_json::Value, kube::Error> {
    cluster
        .client()
        .request::<serde_json::Value>(
            http::Request::post("/apis/topolvm.io/v1/logicalvolumes")
                .header("content-type", "application/json")
                .body(serde_json::to_vec(object).expect("json"))
                .expect("request"),
        )
        .await
}

/// The CRD generated from the Rust type is accepted by the API server, and objects round-trip
/// through it: spec through the main resource, status only through the status subresource.
#[tokio::test]
async fn logical_volume_crd_round_trips_with_status_subresource() {
    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    cluster.install_crds().await;
    let lvs: Api<LogicalVolume> = Api::all(cluster.client());

    let created = lvs
        .create(
            &PostParams::default(),
            &logical_volume("lv1", "node-a", "1Gi"),
        )
        .await
        .expect("create");
    assert_eq!(created.spec.size, Quantity("1Gi".into()));
    assert!(created.status.is_none());

    // A status sent with the main resource is dropped: status is a subresource.
    let mut with_status = created.clone();
    with_status.status = Some(LogicalVolumeStatus {
        volume_id: "ignored".into(),
        ..Default::default()
    });
    let replaced = lvs
        .replace("lv1", &PostParams::default(), &with_status)
        .await
        .expect("replace");
    assert!(
        replaced.status.is_none_or(|s| s.volume_id.is_empty()),
        "status must not change via the main resource"
    );

    let status =
        serde_json::json!({"status": {"volumeID": "vol-1", "code": 0, "currentSize": "1Gi"}});
    lvs.patch_status("lv1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch status");
    let read = lvs.get("lv1").await.expect("get");
    let st = read.status.expect("status");
    assert_eq!(st.volume_id, "vol-1");
    assert_eq!(st.current_size, Some(Quantity("1Gi".into())));
    assert_eq!(read.spec.node_name, "node-a");

    // The raw JSON keys are TopoLVM's.
    let raw: serde_json::Value =
        serde_json::to_value(lvs.get("lv1").await.expect("get")).expect("json");
    assert_eq!(raw["spec"]["nodeName"], "node-a");
    assert_eq!(raw["spec"]["deviceClass"], "ssd");
    assert_eq!(raw["status"]["volumeID"], "vol-1");

    // Bad objects are refused by the schema.
    let bad = serde_json::json!({"apiVersion": "topolvm.io/v1", "kind": "LogicalVolume",
        "metadata": {"name": "bad"}, "spec": {"name": "x", "nodeName": "n", "size": "lots"}});
    let err = create_raw(&cluster, &bad)
        .await
        .expect_err("a size that is not a quantity");
    assert!(err.to_string().contains("size"), "{err}");

    // accessType is `ro` or `rw` (TopoLVM's values), nothing else.
    let mut clone = logical_volume("lv2", "node-a", "1Gi");
    clone.spec.source = "pvc-lv1".to_owned();
    clone.spec.access_type = Some(AccessType::ReadWrite);
    let created = lvs
        .create(&PostParams::default(), &clone)
        .await
        .expect("create a clone");
    assert_eq!(created.spec.access_type, Some(AccessType::ReadWrite));
    let raw: serde_json::Value =
        serde_json::to_value(lvs.get("lv2").await.expect("get")).expect("json");
    assert_eq!(raw["spec"]["accessType"], "rw");
    let bad = serde_json::json!({"apiVersion": "topolvm.io/v1", "kind": "LogicalVolume",
        "metadata": {"name": "bad"},
        "spec": {"name": "x", "nodeName": "n", "size": "1Gi", "accessType": "wr"}});
    let err = create_raw(&cluster, &bad)
        .await
        .expect_err("an access type that is neither ro nor rw");
    assert!(err.to_string().contains("accessType"), "{err}");
}

/// Paths of the `null`s in `value` (`spec.deviceClass`, `items.0`): none may come back where a
/// client sent a value.
fn null_paths(value: &serde_json::Value, at: &str) -> Vec<String> {
    let child = |key: &str| {
        if at.is_empty() {
            key.to_owned()
        } else {
            format!("{at}.{key}")
        }
    };
    match value {
        serde_json::Value::Null => vec![at.to_owned()],
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .flat_map(|(i, v)| null_paths(v, &child(&i.to_string())))
            .collect(),
        serde_json::Value::Object(fields) => fields
            .iter()
            .flat_map(|(k, v)| null_paths(v, &child(k)))
            .collect(),
        _ => Vec::new(),
    }
}

/// An empty string is a value, not a null: a LogicalVolume whose optional free-form strings are ""
/// (as a client without `omitempty` sends them) is stored and read back with "", in spec through
/// a plain POST and in status through the subresource, as a real API server does. Our Rust type
/// leaves empty strings out, so the objects are sent as raw JSON.
#[tokio::test]
async fn empty_strings_round_trip_without_nulls() {
    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    cluster.install_crds().await;
    let resource = ApiResource::erase::<LogicalVolume>(&());
    let lvs: Api<DynamicObject> = Api::all_with(cluster.client(), &resource);

    // accessType is an enum (`ro`/`rw`, as TopoLVM's controller writes it), so its empty string
    // is refused by the schema, as a real API server refuses any value outside an enum.
    let with_access = serde_json::json!({"name": "pvc-empty", "nodeName": "node-a", "size": "1Gi",
        "accessType": ""});
    let err = lvs
        .create(
            &PostParams::default(),
            &DynamicObject::new("lv-empty-access", &resource)
                .data(serde_json::json!({"spec": with_access})),
        )
        .await
        .expect_err("an accessType outside the enum");
    assert!(err.to_string().contains("Unsupported value: \"\""), "{err}");

    let spec = serde_json::json!({"name": "pvc-empty", "nodeName": "node-a", "size": "1Gi",
        "deviceClass": "", "lvcreateOptionClass": "", "source": ""});
    let created = lvs
        .create(
            &PostParams::default(),
            &DynamicObject::new("lv-empty", &resource).data(serde_json::json!({"spec": spec})),
        )
        .await
        .unwrap_or_else(|e| panic!("a LogicalVolume with empty strings is refused: {e}"));
    assert_eq!(created.data["spec"], spec);

    let status = serde_json::json!({"volumeID": "", "code": 0, "message": ""});
    lvs.patch_status(
        "lv-empty",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": status})),
    )
    .await
    .unwrap_or_else(|e| panic!("a status with empty strings is refused: {e}"));

    let read = lvs.get("lv-empty").await.expect("get");
    assert_eq!(read.data["spec"], spec);
    assert_eq!(read.data["status"], status);
    assert_eq!(null_paths(&read.data, ""), Vec::<String>::new());
    let typed: LogicalVolume =
        serde_json::from_value(serde_json::to_value(&read).expect("json")).expect("typed");
    assert_eq!(typed.spec.device_class, "");
    assert_eq!(typed.status.map(|s| s.message), Some(String::new()));
}

/// Server-side apply of status, as topolvm-node will do it: the field manager owns the fields it
/// set, and a second apply by the same manager updates them.
#[tokio::test]
async fn server_side_apply_of_status() {
    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    cluster.install_crds().await;
    let admin: Api<LogicalVolume> = Api::all(cluster.client());
    admin
        .create(
            &PostParams::default(),
            &logical_volume("lv-ssa", "node-a", "2Gi"),
        )
        .await
        .expect("create");

    let node_client = cluster.client_as("topolvm-node").await;
    let as_node: Api<LogicalVolume> = Api::all(node_client);
    let params = PatchParams::apply("topolvm-node");
    for (volume_id, size) in [("vol-a", "2Gi"), ("vol-a", "3Gi")] {
        let patch = serde_json::json!({
            "apiVersion": "topolvm.io/v1", "kind": "LogicalVolume",
            "status": {"volumeID": volume_id, "code": 0, "currentSize": size},
        });
        as_node
            .patch_status("lv-ssa", &params, &Patch::Apply(&patch))
            .await
            .expect("apply status as topolvm-node");
    }
    let read = admin.get("lv-ssa").await.expect("get");
    assert_eq!(
        read.status.as_ref().map(|s| s.current_size.clone()),
        Some(Some(Quantity("3Gi".into())))
    );
    let managers: Vec<String> = read
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.iter().any(|m| m == "topolvm-node"), "{managers:?}");
}

/// A watch with the node label selector sees only that node's LogicalVolumes: how a node agent
/// watches its own objects on Kubernetes versions without field selectors for custom resources.
#[tokio::test]
async fn label_selected_watch_sees_only_one_node() {
    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    cluster.install_crds().await;
    let lvs: Api<LogicalVolume> = Api::all(cluster.client_as("topolvm-node").await);
    let selector = format!("{}=node-a", names::LOGICAL_VOLUME_NODE_LABEL);
    let mut events =
        watcher::watcher(lvs.clone(), watcher::Config::default().labels(&selector)).boxed();

    let admin: Api<LogicalVolume> = Api::all(cluster.client());
    for (name, node) in [
        ("a1", "node-a"),
        ("b1", "node-b"),
        ("a2", "node-a"),
        ("b2", "node-b"),
    ] {
        admin
            .create(&PostParams::default(), &logical_volume(name, node, "1Gi"))
            .await
            .expect("create");
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 2 {
        let event = tokio::time::timeout_at(deadline.into(), events.try_next())
            .await
            .expect("events in time")
            .expect("watch")
            .expect("stream open");
        match event {
            watcher::Event::Apply(lv) | watcher::Event::InitApply(lv) => {
                seen.push(lv.spec.node_name.clone() + "/" + &lv.metadata.name.unwrap_or_default())
            }
            _ => {}
        }
    }
    seen.sort();
    assert_eq!(seen, ["node-a/a1", "node-a/a2"]);
    let listed = lvs
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 2);
}

/// Each component authenticates as its ServiceAccount of the rendered manifests, with a token the
/// API server itself reviews; and their RBAC is enforced: topolvm-node may read and update
/// LogicalVolumes and their status but not create or delete them, nor delete nodes;
/// topolvm-scheduler may only read.
#[tokio::test]
async fn components_run_as_the_service_accounts_and_rbac_of_the_rendered_manifests() {
    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    for component in topolvm_e2e::cluster::COMPONENTS {
        let path = cluster.kubeconfig(component);
        let kubeconfig: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).expect("the kubeconfig"))
                .expect("kubeconfig YAML");
        let token = kubeconfig["users"][0]["user"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("{component} authenticates with a token"));
        let review: TokenReview = serde_json::from_value(serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token},
        }))
        .expect("a TokenReview");
        let status = Api::<TokenReview>::all(cluster.client())
            .create(&PostParams::default(), &review)
            .await
            .expect("TokenReview")
            .status
            .expect("a review status");
        assert_eq!(status.authenticated, Some(true), "{component}");
        assert_eq!(
            status.user.and_then(|u| u.username).as_deref(),
            Some(format!("system:serviceaccount:topolvm-system:{component}").as_str())
        );
    }
    cluster.install_crds().await;
    cluster.make_node("node-a", &[], &[("ssd", 10 << 30)]).await;
    let admin: Api<LogicalVolume> = Api::all(cluster.client());
    admin
        .create(
            &PostParams::default(),
            &logical_volume("lv-rbac", "node-a", "1Gi"),
        )
        .await
        .expect("create");

    let forbidden = |r: Result<_, kube::Error>| match r {
        Err(kube::Error::Api(e)) => e.code == 403,
        _ => false,
    };
    let node = cluster.client_as("topolvm-node").await;
    let node_lvs: Api<LogicalVolume> = Api::all(node.clone());
    node_lvs.get("lv-rbac").await.expect("node may read");
    node_lvs
        .patch_status(
            "lv-rbac",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"volumeID": "v"}})),
        )
        .await
        .expect("node may update status");
    assert!(forbidden(
        node_lvs
            .create(
                &PostParams::default(),
                &logical_volume("x", "node-a", "1Gi")
            )
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        node_lvs
            .delete("lv-rbac", &DeleteParams::default())
            .await
            .map(|_| ())
    ));
    let node_nodes: Api<Node> = Api::all(node);
    node_nodes
        .patch(
            "node-a",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"capacity.topolvm.io/ssd": "1"}}}),
            ),
        )
        .await
        .expect("node may annotate nodes");
    assert!(forbidden(
        node_nodes
            .delete("node-a", &DeleteParams::default())
            .await
            .map(|_| ())
    ));

    let scheduler = cluster.client_as("topolvm-scheduler").await;
    let sched_pods: Api<Pod> = Api::all(scheduler.clone());
    sched_pods
        .list(&ListParams::default())
        .await
        .expect("scheduler may list pods");
    let sched_lvs: Api<LogicalVolume> = Api::all(scheduler);
    assert!(forbidden(
        sched_lvs.list(&ListParams::default()).await.map(|_| ())
    ));

    let controller: Api<LogicalVolume> = Api::all(cluster.client_as("topolvm-controller").await);
    controller
        .delete("lv-rbac", &DeleteParams::default())
        .await
        .expect("controller may delete");
}

/// What the stub extender saw and decides.
#[derive(Default)]
struct StubExtender {
    calls: Mutex<Vec<String>>,
}

async fn stub_predicate(
    State(stub): State<Arc<StubExtender>>,
    Json(args): Json<serde_json::Value>,
) -> Json<serde_json::Value> {
    stub.calls.lock().expect("lock").push("predicate".into());
    // Keep only nodes labelled fits=yes, as a capacity filter would.
    let items = args["Nodes"]["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let (fit, unfit): (Vec<_>, Vec<_>) = items
        .into_iter()
        .partition(|n| n["metadata"]["labels"]["fits"] == "yes");
    let failed: serde_json::Map<String, serde_json::Value> = unfit
        .iter()
        .map(|n| {
            (
                n["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                "out of VG free space".into(),
            )
        })
        .collect();
    Json(
        serde_json::json!({"Nodes": {"metadata": {}, "items": fit}, "NodeNames": null, "FailedNodes": failed, "Error": ""}),
    )
}

async fn stub_prioritize(
    State(stub): State<Arc<StubExtender>>,
    Json(args): Json<serde_json::Value>,
) -> Json<serde_json::Value> {
    stub.calls.lock().expect("lock").push("prioritize".into());
    let scores: Vec<serde_json::Value> = args["Nodes"]["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|n| serde_json::json!({"Host": n["metadata"]["name"], "Score": 1}))
        .collect();
    Json(serde_json::Value::Array(scores))
}

/// The real kube-scheduler calls the configured extender for a pod that requests
/// `topolvm.io/capacity`, and binds it to a node the extender let through.
#[tokio::test]
async fn kube_scheduler_calls_the_extender() {
    let stub = Arc::new(StubExtender::default());
    let app = axum::Router::new()
        .route("/predicate", post(stub_predicate))
        .route("/prioritize", post(stub_prioritize))
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let cluster = Cluster::start(ClusterOptions::api_only().with_scheduler_extender(url)).await;
    if cluster.is_external() {
        eprintln!(
            "external cluster: the scheduler's extender configuration is the cluster's own; skipping"
        );
        return;
    }
    cluster.make_node("small", &[("fits", "no")], &[]).await;
    cluster.make_node("big", &[("fits", "yes")], &[]).await;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p1", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "none",
            "resources": {"requests": {names::CAPACITY_RESOURCE: "1"}, "limits": {names::CAPACITY_RESOURCE: "1"}}}]},
    }))
    .expect("pod");
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "default");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");

    let deadline = Instant::now() + Duration::from_secs(60);
    let node = loop {
        let p = pods.get("p1").await.expect("get pod");
        if let Some(node) = p.spec.and_then(|s| s.node_name) {
            break node;
        }
        assert!(
            Instant::now() < deadline,
            "the pod was not scheduled; scheduler log:\n{}",
            cluster.log_tail("kube-scheduler", 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(node, "big");
    assert!(
        stub.calls
            .lock()
            .expect("lock")
            .iter()
            .any(|c| c == "predicate")
    );
    server.abort();
}

/// What the app container writes: the known content, its sha256 as `sha256sum` prints it, then
/// `stat` and `df` of the file and the container's root.
const APP_SCRIPT: &str = "printf 'topolvm-rs\\n' > /tmp/data && sha256sum /tmp/data && \
     stat -c 'size=%s mode=%a' /tmp/data && df -k / && id -u && ls /bin/blockdev /bin/dd";
/// sha256 of "topolvm-rs\n" (by the host's coreutils `sha256sum`).
const APP_DATA_SHA256: &str = "27207f28d3588d723061bd2f8192b262a7f4201815299849069ed24c4d7a24f3";

/// Debian's containerd and runc from the runtime cache, with a private root and socket, import
/// the hand-made OCI archives under their names; the app image runs busybox's tools; the pause
/// image stops on SIGTERM; and dropping the launcher leaves no shim, container, mount or
/// directory behind, even with a container still running.
#[test]
fn containerd_imports_the_images_and_runs_them() {
    use topolvm_e2e::containerd::{self, Containerd};

    let started = Instant::now();
    let runtime = Containerd::start_temp();
    eprintln!(
        "containerd ready, images imported in {:?} ({} snapshotter)",
        started.elapsed(),
        runtime.snapshotter().name()
    );
    let socket = runtime.socket().to_owned();
    let dir = socket.parent().expect("the socket's directory").to_owned();
    assert!(runtime.endpoint().starts_with("unix:///"));

    // The CRI plugin (kubelet's side) and the chosen snapshotter loaded.
    let plugins = runtime.ctr_ok(["plugins", "ls"]);
    for (kind, id) in [
        ("io.containerd.grpc.v1", "cri"),
        ("io.containerd.snapshotter.v1", runtime.snapshotter().name()),
    ] {
        assert!(
            plugins.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&kind) && f.get(1) == Some(&id) && f.last() == Some(&"ok")
            }),
            "plugin {kind} {id} is not ok:\n{plugins}"
        );
    }
    let images = runtime.ctr_ok(["images", "ls", "-q"]);
    let names: Vec<&str> = images
        .lines()
        .filter(|l| !l.starts_with("sha256:"))
        .collect();
    assert_eq!(names, [containerd::APP_IMAGE, containerd::PAUSE_IMAGE]);

    let run = Instant::now();
    let text = runtime.ctr_ok([
        "run",
        "--rm",
        "--net-host",
        runtime.app_image(),
        "test-bed-app",
        "sh",
        "-c",
        APP_SCRIPT,
    ]);
    eprintln!("ctr run --rm took {:?}:\n{text}", run.elapsed());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("{APP_DATA_SHA256}  /tmp/data"));
    assert_eq!(lines[1], "size=11 mode=644");
    assert!(lines[2].starts_with("Filesystem"), "df header: {text}");
    assert!(lines[3].ends_with(" /"), "df of the root: {text}");
    assert_eq!(lines[4], "0");
    assert_eq!(&lines[5..], ["/bin/blockdev", "/bin/dd"]);

    // The pause image's PID 1 exits 0 on SIGTERM (a bare sleep as PID 1 would ignore it).
    let mut pause = runtime
        .ctr_command()
        .args([
            "run",
            "--rm",
            "--net-host",
            runtime.pause_image(),
            "test-bed-pause",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ctr run of the pause image");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !runtime
        .ctr_ok(["tasks", "ls"])
        .lines()
        .any(|l| l.starts_with("test-bed-pause ") && l.contains("RUNNING"))
    {
        assert!(Instant::now() < deadline, "the pause container never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    runtime.ctr_ok(["tasks", "kill", "--signal", "SIGTERM", "test-bed-pause"]);
    let status = loop {
        if let Some(status) = pause.try_wait().expect("waiting for ctr run") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the pause container ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "pause exited with {status}");

    // A container still running when the launcher goes: its shim and process are killed, its
    // rootfs unmounted, the directory removed.
    let task = start_sleeper(&runtime, "test-bed-left");
    let shims = containerd::shims_of(&socket);
    assert_eq!(shims.len(), 1, "one shim for the detached container");
    assert!(
        !topolvm_e2e::mounts::mount_points_under(&dir).is_empty()
            || runtime.snapshotter().name() == "native",
        "the running container's rootfs is an overlay mount under {dir:?}"
    );
    drop(runtime);
    assert_nothing_left(&socket, task, "test-bed-left");
}

/// Starts container `id` of the app image running `sleep 600`, detached, and returns its
/// host pid (from `ctr tasks ls`).
fn start_sleeper(runtime: &topolvm_e2e::containerd::Containerd, id: &str) -> i32 {
    runtime.ctr_ok([
        "run",
        "--detach",
        "--net-host",
        runtime.app_image(),
        id,
        "sleep",
        "600",
    ]);
    let tasks = runtime.ctr_ok(["tasks", "ls"]);
    tasks
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id)).then(|| f.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no task {id} in:\n{tasks}"))
}

/// No shim serves `socket`, the container process `task` is gone (or a zombie), no mount or
/// file is left in the socket's directory, and no runc state or cgroup of container `id`.
fn assert_nothing_left(socket: &std::path::Path, task: i32, id: &str) {
    use topolvm_e2e::containerd;
    let dir = socket.parent().expect("the socket's directory");
    assert_eq!(
        containerd::shims_of(socket),
        Vec::<i32>::new(),
        "shims left"
    );
    let state = std::fs::read_to_string(format!("/proc/{task}/stat")).unwrap_or_default();
    let state = state
        .rsplit_once(')')
        .map(|(_, r)| r.trim_start().chars().next());
    assert!(
        matches!(state, None | Some(Some('Z'))),
        "container process {task} is alive"
    );
    assert_eq!(
        topolvm_e2e::mounts::mount_points_under(dir),
        Vec::<std::path::PathBuf>::new()
    );
    assert!(!dir.exists(), "{dir:?} is left");
    let runc_state = std::path::Path::new("/run/containerd/runc/k8s.io").join(id);
    assert!(!runc_state.exists(), "runc state {runc_state:?} is left");
    // cgroup v2 at /sys/fs/cgroup (the VM) or v1 hierarchies and v2 beside them (the host).
    let roots = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten();
    for root in roots
        .map(|e| e.path())
        .chain([std::path::PathBuf::from("/sys/fs/cgroup")])
    {
        let cgroup = root.join("k8s.io").join(id);
        assert!(!cgroup.exists(), "cgroup {cgroup:?} is left");
    }
}

/// A test run killed before it could drop its containerd leaves containerd, a shim with a
/// running container, an overlay mount and a cgroup; the next run's sweep removes them all.
#[test]
fn a_killed_runs_containerd_is_swept() {
    use topolvm_e2e::containerd::{self, Containerd};

    let runtime = Containerd::start_temp();
    let socket = runtime.socket().to_owned();
    let dir = socket.parent().expect("the socket's directory").to_owned();
    let task = start_sleeper(&runtime, "test-bed-swept");
    // The owner is gone (pid 2^22 + 1 is above any pid_max) and no destructor runs.
    std::fs::write(dir.join("owner.pid"), "4194305").expect("write owner.pid");
    std::mem::forget(runtime);
    containerd::sweep_stale();
    assert_nothing_left(&socket, task, "test-bed-swept");
}
