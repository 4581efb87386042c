//! The controller's objects in the plain manifests rendered from the Helm chart
//! (`deploy/manifests/topolvm-rs.yaml`: storage capacity tracking, no webhook;
//! `deploy/manifests/topolvm-rs-scheduler.yaml`: the pod webhook, no capacity tracking): the
//! ServiceAccount, RBAC, the Deployment with the CSI sidecars and the CSIDriver, against the test
//! bed's real kube-apiserver (RBAC authorization) and the real topolvm-controller binary:
//!
//! ```text
//! cargo build -p topolvm-controller --bin topolvm-controller
//! cargo test -p topolvm-e2e --features e2e --test controller_deploy
//! ```
//!
//! - Every object is a valid object of its kind (no field the API types do not know, which the
//!   API server would drop silently) and the API server stores it.
//! - Every flag the Deployment passes to topolvm-controller is one the binary takes, and the
//!   pieces fit: the sidecars dial the socket the controller serves, on a volume every container
//!   mounts; the probes name ports that exist; the cert volume is a Secret mounted at
//!   `--cert-dir` (with the webhook; without it `--enable-webhooks=false` and no certificate);
//!   `POD_NAMESPACE` comes from the downward API; the pods carry the labels the webhook Service
//!   selects and serve its target port; the provisioner tracks capacity exactly when the
//!   CSIDriver says `storageCapacity`.
//! - The API server's own authorizer (SubjectAccessReview) grants the Deployment's
//!   ServiceAccount every permission TopoLVM's chart grants its controller and sidecars
//!   (charts/topolvm/templates/controller/{clusterroles,roles}.yaml), and not a Secret it never
//!   needs.
#![cfg(feature = "e2e")]

use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Container, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use topolvm_e2e::cluster::{Cluster, ClusterOptions, manifest_documents};
use topolvm_e2e::process::workspace_binary;

const NAMESPACE: &str = "topolvm-system";
const SERVICE_ACCOUNT: &str = "system:serviceaccount:topolvm-system:topolvm-controller";

/// The objects of the controller and its sidecars among `documents`.
fn controller_documents(documents: &[serde_json::Value]) -> Vec<serde_json::Value> {
    documents
        .iter()
        .filter(|doc| {
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            match doc["kind"].as_str().unwrap_or_default() {
                "ServiceAccount" | "ClusterRoleBinding" | "Role" | "RoleBinding" | "Deployment" => {
                    name.starts_with("topolvm-controller")
                }
                "ClusterRole" => {
                    name == "topolvm-controller" || name == "topolvm-controller-sidecars"
                }
                "CSIDriver" => true,
                _ => false,
            }
        })
        .cloned()
        .collect()
}

/// `value` read as `T`, and checked to lose nothing when written back.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(value: &serde_json::Value) -> T {
    let typed: T =
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{}: {e}", value["kind"]));
    let back = serde_json::to_value(&typed).expect("serialize");
    assert_eq!(
        &back, value,
        "{}: a field the API types do not know",
        value["kind"]
    );
    typed
}

fn params() -> PostParams {
    PostParams::default()
}

/// The container's arguments (command after the program, then args).
fn arguments(container: &Container) -> Vec<String> {
    container
        .command
        .iter()
        .flatten()
        .skip(1)
        .chain(container.args.iter().flatten())
        .cloned()
        .collect()
}

/// The value of `--name=value` among `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("--{name}=")))
}

/// The port number of `:port` or `host:port`.
fn port_of(addr: &str) -> i32 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr} has no port"))
}

async fn allowed(
    client: &kube::Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_owned())),
        None => (resource, None),
    };
    let review = SubjectAccessReview {
        metadata: ObjectMeta::default(),
        spec: SubjectAccessReviewSpec {
            user: Some(SERVICE_ACCOUNT.to_owned()),
            groups: Some(vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{NAMESPACE}"),
                "system:authenticated".to_owned(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                subresource,
                namespace: namespace.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        status: None,
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&params(), &review)
        .await
        .expect("SubjectAccessReview")
        .status
        .is_some_and(|s| s.allowed)
}

/// What TopoLVM's chart grants its controller's ServiceAccount: (API group, resources, verbs,
/// in the release namespace only). From charts/topolvm/templates/controller/clusterroles.yaml
/// (the `controller` role and the external-provisioner, -resizer and -snapshotter runner roles)
/// and roles.yaml (leader-election, external-provisioner-cfg, -resizer-cfg, -snapshotter-cfg).
const TOPOLVM_GRANTS: &[(&str, &[&str], &[&str], bool)] = &[
    // controller (without its `delete` on pods: topolvm-rs's controller deletes no pods)
    (
        "",
        &["nodes"],
        &["get", "list", "watch", "patch", "update"],
        false,
    ),
    (
        "",
        &["persistentvolumeclaims"],
        &["get", "list", "watch", "update", "delete"],
        false,
    ),
    (
        "storage.k8s.io",
        &["storageclasses", "csidrivers"],
        &["get", "list", "watch"],
        false,
    ),
    (
        "topolvm.io",
        &["logicalvolumes", "logicalvolumes/status"],
        &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
        false,
    ),
    // external-provisioner-runner
    (
        "",
        &["persistentvolumes"],
        &["get", "list", "watch", "create", "patch", "delete"],
        false,
    ),
    (
        "",
        &["events"],
        &["list", "watch", "create", "update", "patch"],
        false,
    ),
    (
        "snapshot.storage.k8s.io",
        &["volumesnapshots", "volumesnapshotcontents"],
        &["get", "list"],
        false,
    ),
    (
        "storage.k8s.io",
        &["csinodes", "volumeattachments"],
        &["get", "list", "watch"],
        false,
    ),
    // external-resizer-runner
    ("", &["pods"], &["get", "list", "watch"], false),
    ("", &["persistentvolumeclaims/status"], &["patch"], false),
    (
        "storage.k8s.io",
        &["volumeattributesclasses"],
        &["get", "list", "watch"],
        false,
    ),
    // external-snapshotter-runner
    (
        "snapshot.storage.k8s.io",
        &["volumesnapshotclasses"],
        &["get", "list", "watch"],
        false,
    ),
    (
        "snapshot.storage.k8s.io",
        &["volumesnapshots", "volumesnapshotcontents"],
        &["get", "list", "watch", "update", "patch", "create"],
        false,
    ),
    (
        "snapshot.storage.k8s.io",
        &["volumesnapshotcontents/status"],
        &["update", "patch"],
        false,
    ),
    (
        "groupsnapshot.storage.k8s.io",
        &["volumegroupsnapshotclasses"],
        &["get", "list", "watch"],
        false,
    ),
    (
        "groupsnapshot.storage.k8s.io",
        &["volumegroupsnapshotcontents"],
        &["get", "list", "watch", "update", "patch"],
        false,
    ),
    (
        "groupsnapshot.storage.k8s.io",
        &["volumegroupsnapshotcontents/status"],
        &["update", "patch"],
        false,
    ),
    // leader-election and the sidecars' -cfg roles, in the namespace
    (
        "coordination.k8s.io",
        &["leases"],
        &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
        true,
    ),
    ("", &["events"], &["create", "patch"], true),
    (
        "storage.k8s.io",
        &["csistoragecapacities"],
        &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
        true,
    ),
    ("", &["pods"], &["get"], true),
    ("apps", &["replicasets"], &["get"], true),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capacity_tracking_manifest_is_valid_its_flags_exist_and_its_rbac_covers_the_sidecars()
{
    check("topolvm-rs.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_manifest_is_valid_its_flags_exist_and_its_rbac_covers_the_sidecars() {
    check("topolvm-rs-scheduler.yaml").await;
}

async fn check(manifest: &str) {
    let all = manifest_documents(manifest);
    let webhook = all
        .iter()
        .any(|d| d["kind"] == "MutatingWebhookConfiguration");
    // Without the identities the test bed applies from topolvm-rs-scheduler.yaml: the objects are
    // created from `manifest` here, and the grants judged below come from it alone.
    let cluster = Cluster::start(ClusterOptions::api_only().without_identities()).await;
    let client = cluster.client();
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE},
    }))
    .expect("a Namespace");
    Api::<Namespace>::all(client.clone())
        .create(&params(), &namespace)
        .await
        .expect("namespace");

    let mut deployment = None;
    let mut kinds = Vec::new();
    let mut storage_capacity = None;
    for doc in &controller_documents(&all) {
        let kind = doc["kind"].as_str().expect("kind").to_owned();
        let namespaced = |what: &str| {
            assert_eq!(
                doc["metadata"]["namespace"].as_str(),
                Some(NAMESPACE),
                "{what} in {NAMESPACE}"
            )
        };
        match kind.as_str() {
            "ServiceAccount" => {
                namespaced("ServiceAccount");
                Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
                    .create(&params(), &typed(doc))
                    .await
                    .expect("the API server accepts the ServiceAccount");
            }
            "ClusterRole" => {
                Api::<ClusterRole>::all(client.clone())
                    .create(&params(), &typed(doc))
                    .await
                    .expect("the API server accepts the ClusterRole");
            }
            "ClusterRoleBinding" => {
                Api::<ClusterRoleBinding>::all(client.clone())
                    .create(&params(), &typed(doc))
                    .await
                    .expect("the API server accepts the ClusterRoleBinding");
            }
            "Role" => {
                namespaced("Role");
                Api::<Role>::namespaced(client.clone(), NAMESPACE)
                    .create(&params(), &typed(doc))
                    .await
                    .expect("the API server accepts the Role");
            }
            "RoleBinding" => {
                namespaced("RoleBinding");
                Api::<RoleBinding>::namespaced(client.clone(), NAMESPACE)
                    .create(&params(), &typed(doc))
                    .await
                    .expect("the API server accepts the RoleBinding");
            }
            "Deployment" => {
                namespaced("Deployment");
                let typed: Deployment = typed(doc);
                Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
                    .create(&params(), &typed)
                    .await
                    .expect("the API server accepts the Deployment");
                deployment = Some(typed);
            }
            "CSIDriver" => {
                let driver: CSIDriver = typed(doc);
                let spec = &driver.spec;
                assert_eq!(
                    driver.metadata.name.as_deref(),
                    Some(topolvm_core::names::PLUGIN_NAME)
                );
                assert_eq!(spec.attach_required, Some(false));
                assert_eq!(spec.pod_info_on_mount, Some(true));
                assert_eq!(
                    spec.volume_lifecycle_modes.as_deref(),
                    Some(&["Persistent".to_owned(), "Ephemeral".to_owned()][..])
                );
                storage_capacity = spec.storage_capacity;
                Api::<CSIDriver>::all(client.clone())
                    .create(&params(), &driver)
                    .await
                    .expect("the API server accepts the CSIDriver");
            }
            other => panic!("unexpected kind {other}"),
        }
        kinds.push(kind);
    }
    for kind in [
        "ServiceAccount",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "CSIDriver",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {kinds:?}");
    }

    // The Deployment's containers.
    let deployment = deployment.expect("a Deployment");
    let spec = deployment.spec.expect("spec");
    assert_eq!(spec.replicas, Some(2));
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("topolvm-controller")
    );
    let container = |name: &str| {
        pod.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    };
    let controller = container("topolvm-controller");
    let args = arguments(controller);

    let help = Command::new(workspace_binary("topolvm-controller", "topolvm-controller"))
        .arg("--help")
        .output()
        .expect("topolvm-controller --help");
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let flags: Vec<&str> = args
        .iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .collect();
    assert!(flags.contains(&"csi-socket"), "{flags:?}");
    for name in &flags {
        assert!(
            help.contains(&format!("--{name} ")) || help.contains(&format!("--{name}\n")),
            "topolvm-controller does not take --{name}:\n{help}"
        );
    }
    assert_eq!(
        args.len(),
        flags.len(),
        "only flags, no positional arguments: {args:?}"
    );

    // The socket: every sidecar dials the controller's socket, in a volume all of them mount.
    let socket = flag(&args, "csi-socket").expect("--csi-socket");
    let socket_dir = std::path::Path::new(socket).parent().expect("a directory");
    for sidecar in [
        "csi-provisioner",
        "csi-resizer",
        "csi-snapshotter",
        "liveness-probe",
    ] {
        let c = container(sidecar);
        assert!(
            c.image
                .as_deref()
                .is_some_and(|i| i.starts_with("registry.k8s.io/sig-storage/")),
            "{sidecar}: {:?}",
            c.image
        );
        assert_eq!(
            flag(&arguments(c), "csi-address"),
            Some(socket),
            "{sidecar} dials the controller's socket"
        );
    }
    let socket_volume = controller
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| std::path::Path::new(&m.mount_path) == socket_dir)
        .expect("the socket directory is a volume")
        .name
        .clone();
    for c in &pod.containers {
        assert!(
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == socket_volume
                    && std::path::Path::new(&m.mount_path) == socket_dir),
            "{} mounts the socket directory",
            c.name
        );
    }
    let volumes = pod.volumes.clone().unwrap_or_default();
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    assert!(
        volume(&socket_volume).empty_dir.is_some(),
        "the socket directory is per pod"
    );

    // The webhook's certificate: a Secret mounted at --cert-dir; without the webhook
    // configuration, the controller serves no webhook and needs no certificate.
    if webhook {
        let cert_dir = flag(&args, "cert-dir").expect("--cert-dir");
        let certs = controller
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == cert_dir)
            .expect("a volume at --cert-dir");
        assert!(
            volume(&certs.name)
                .secret
                .as_ref()
                .is_some_and(|s| s.secret_name.is_some()),
            "the certificates come from a Secret"
        );
    } else {
        assert!(
            args.iter().any(|a| a == "--enable-webhooks=false"),
            "no webhook configuration, so no webhook: {args:?}"
        );
        assert!(
            volumes.iter().all(|v| v.secret.is_none()),
            "no certificate without a webhook"
        );
    }

    // Leader election: the Lease's namespace from the downward API.
    let pod_namespace = controller
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "POD_NAMESPACE")
        .expect("POD_NAMESPACE");
    assert_eq!(
        pod_namespace
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.namespace")
    );

    // Probes name ports that exist; the controller's are on its health port.
    let named_port = |c: &Container, name: &str| -> i32 {
        c.ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{}: no port {name}", c.name))
            .container_port
    };
    let probe_port = |c: &Container, probe: Option<&k8s_openapi::api::core::v1::Probe>| {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        match &probe
            .and_then(|p| p.http_get.as_ref())
            .expect("an HTTP probe")
            .port
        {
            IntOrString::String(name) => named_port(c, name),
            IntOrString::Int(port) => *port,
        }
    };
    let health_port = port_of(flag(&args, "health-probe-bind-address").expect("health address"));
    assert_eq!(
        probe_port(controller, controller.liveness_probe.as_ref()),
        health_port
    );
    assert_eq!(
        probe_port(controller, controller.readiness_probe.as_ref()),
        health_port
    );
    let provisioner = container("csi-provisioner");
    assert_eq!(
        probe_port(provisioner, provisioner.liveness_probe.as_ref()),
        port_of(flag(&arguments(provisioner), "http-endpoint").expect("--http-endpoint"))
    );
    let liveness = container("liveness-probe");
    assert_eq!(
        named_port(liveness, "livenessprobe"),
        port_of(flag(&arguments(liveness), "http-endpoint").expect("--http-endpoint"))
    );

    // The sidecars run as TopoLVM's chart runs them: leader election in the namespace, the
    // provisioner with topology and capacity tracking (owner: the Deployment, found from
    // NAMESPACE and POD_NAME).
    for sidecar in ["csi-provisioner", "csi-resizer", "csi-snapshotter"] {
        let a = arguments(container(sidecar));
        assert!(
            a.iter().any(|f| f == "--leader-election"),
            "{sidecar}: {a:?}"
        );
        assert_eq!(
            flag(&a, "leader-election-namespace"),
            Some(NAMESPACE),
            "{sidecar}"
        );
    }
    let provisioner_args = arguments(provisioner);
    assert_eq!(
        flag(&provisioner_args, "feature-gates"),
        Some("Topology=true")
    );
    // Capacity tracking exactly when the CSIDriver tells kube-scheduler to use it.
    let storage_capacity = storage_capacity.expect("the CSIDriver sets storageCapacity");
    if storage_capacity {
        assert!(provisioner_args.iter().any(|f| f == "--enable-capacity"));
        assert_eq!(
            flag(&provisioner_args, "capacity-ownerref-level"),
            Some("2")
        );
        for (name, path) in [
            ("NAMESPACE", "metadata.namespace"),
            ("POD_NAME", "metadata.name"),
        ] {
            assert_eq!(
                provisioner
                    .env
                    .iter()
                    .flatten()
                    .find(|e| e.name == name)
                    .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
                    .map(|f| f.field_path.as_str()),
                Some(path),
                "csi-provisioner's {name}"
            );
        }
    } else {
        assert!(
            !provisioner_args.iter().any(|f| f == "--enable-capacity"),
            "{provisioner_args:?}"
        );
    }

    if webhook {
        // The webhook Service selects these pods and reaches the webhook port.
        let service = all
            .iter()
            .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "topolvm-controller")
            .cloned()
            .expect("the webhook Service");
        let service: Service = serde_json::from_value(service).expect("a Service");
        let service_spec = service.spec.expect("spec");
        for (key, value) in service_spec.selector.unwrap_or_default() {
            assert_eq!(
                pod_labels.get(&key),
                Some(&value),
                "the Service selects {key}={value}"
            );
        }
        let webhook_port = port_of(flag(&args, "webhook-addr").expect("--webhook-addr"));
        assert_eq!(named_port(controller, "webhook"), webhook_port);
        for port in service_spec.ports.unwrap_or_default() {
            use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
            let target = match port.target_port.expect("a target port") {
                IntOrString::Int(p) => p,
                IntOrString::String(name) => named_port(controller, &name),
            };
            assert_eq!(target, webhook_port, "the Service reaches the webhook");
        }
    }

    // RBAC, as the API server's authorizer decides it for the ServiceAccount.
    let mut missing = Vec::new();
    for (group, resources, verbs, in_namespace) in TOPOLVM_GRANTS {
        let namespace = in_namespace.then_some(NAMESPACE);
        for resource in *resources {
            for verb in *verbs {
                if !allowed(&client, verb, group, resource, namespace).await {
                    missing.push(format!("{verb} {group}/{resource} in {namespace:?}"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "not granted: {missing:#?}");
    // The authorizer is not simply saying yes: Secrets were never granted.
    assert!(!allowed(&client, "list", "", "secrets", None).await);
    assert!(!allowed(&client, "get", "", "secrets", Some(NAMESPACE)).await);
    assert!(!allowed(&client, "create", "", "pods", Some("default")).await);
}
