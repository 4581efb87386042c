//! A Kubernetes control plane on loopback for one test: etcd, kube-apiserver and, when asked,
//! kube-scheduler (with an HTTP extender) and kube-controller-manager; or, when
//! `TOPOLVM_E2E_KUBECONFIG` is set, an existing cluster.
//!
//! Everything runs from a private temporary directory on ports picked free at start, so two runs
//! on one machine do not collide; dropping the [`Cluster`] stops every process and removes the
//! directory, also when the test panics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::storage::v1::CSINode;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::Deserialize;
use tempfile::TempDir;
use topolvm_core::names;

use crate::pki::{self, Pki};
use crate::process::{ManagedProcess, eventually, free_port};

/// Where `e2e/scripts/build-control-plane.sh` caches the Kubernetes binaries.
pub const DEFAULT_K8S_BIN: &str = "/var/cache/topolvm-rs/k8s/bin";
/// How long the API server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Longer wait inside the qemu VM (software emulation), where start-up takes 60 s or more.
const READY_TIMEOUT_IN_VM: Duration = Duration::from_secs(300);
/// The components that talk to the API server. Each runs as the ServiceAccount of the same name
/// in [`NAMESPACE`], with a token from the TokenRequest API and exactly the RBAC of the rendered
/// manifests ([`rendered_manifest`]), so a verb missing there fails the test that needs it.
pub const COMPONENTS: &[&str] = &["topolvm-controller", "topolvm-node", "topolvm-scheduler"];
/// The namespace of the rendered manifests (the chart's release namespace).
pub const NAMESPACE: &str = "topolvm-system";
/// The kinds of the rendered manifests that make the components' identities and permissions.
const IDENTITY_KINDS: &[&str] = &[
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];
/// How long a component's token lasts: longer than any test.
const TOKEN_SECONDS: i64 = 24 * 3600;
/// The field manager tests use for server-side apply as the admin.
pub const FIELD_MANAGER: &str = "topolvm-e2e";

/// What to run besides etcd and kube-apiserver.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Run kube-scheduler; with `Some(url)`, configured with the TopoLVM extender at that URL
    /// prefix (filter `predicate`, prioritize `prioritize`, managed resource
    /// `topolvm.io/capacity` ignored by the scheduler, `nodeCacheCapable: false`).
    pub scheduler: Option<Option<String>>,
    /// Run kube-controller-manager (without the controllers that need kubelets or a cloud).
    pub controller_manager: bool,
    /// Leave out the rendered manifests' Namespace, ServiceAccounts and RBAC, and with them the
    /// components' kubeconfigs: for a test that applies and judges those objects itself.
    pub without_identities: bool,
    /// `--feature-gates` of kube-apiserver, kube-scheduler and kube-controller-manager (for
    /// example `GenericEphemeralVolume=true`, alpha and off by default in 1.20).
    pub feature_gates: Vec<String>,
}

impl ClusterOptions {
    /// etcd and kube-apiserver only.
    pub fn api_only() -> Self {
        Self::default()
    }

    /// Adds kube-scheduler calling the extender at `url_prefix`.
    pub fn with_scheduler_extender(mut self, url_prefix: impl Into<String>) -> Self {
        self.scheduler = Some(Some(url_prefix.into()));
        self
    }

    /// Adds kube-scheduler without an extender.
    pub fn with_scheduler(mut self) -> Self {
        self.scheduler = Some(None);
        self
    }

    pub fn with_controller_manager(mut self) -> Self {
        self.controller_manager = true;
        self
    }

    pub fn without_identities(mut self) -> Self {
        self.without_identities = true;
        self
    }

    /// Turns on feature gate `gate` (`Name=true`) in every control plane component.
    pub fn with_feature_gate(mut self, gate: impl Into<String>) -> Self {
        self.feature_gates.push(gate.into());
        self
    }

    /// The `--feature-gates` flag of the components, if any gate is set.
    fn feature_gates_arg(&self) -> Option<String> {
        (!self.feature_gates.is_empty())
            .then(|| format!("--feature-gates={}", self.feature_gates.join(",")))
    }
}

/// A running (or external) cluster.
pub struct Cluster {
    /// Stopped in reverse order on drop.
    processes: Vec<ManagedProcess>,
    server: String,
    admin_kubeconfig: PathBuf,
    component_kubeconfigs: BTreeMap<String, PathBuf>,
    client: Client,
    external: bool,
    /// The CA that signs the API server's and every client's certificate (none when external).
    pki: Option<Pki>,
    dir: TempDir,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("server", &self.server)
            .field("external", &self.external)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// The directory holding kube-apiserver, kube-scheduler and kube-controller-manager.
/// Waits until the API server no longer has object `name` (a finalizer released, a deletion
/// done), failing the test with `what` after `within`.
pub async fn eventually_gone<K>(api: &Api<K>, name: &str, what: &str, within: Duration)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    eventually(what, within, || async {
        api.get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("get {name}: {e}"))
            .is_none()
            .then_some(())
    })
    .await;
}

pub fn k8s_bin_dir() -> PathBuf {
    let dir = std::env::var_os("TOPOLVM_K8S_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_K8S_BIN));
    for binary in [
        "kube-apiserver",
        "kube-scheduler",
        "kube-controller-manager",
    ] {
        assert!(
            dir.join(binary).is_file(),
            "{binary} is not in {dir:?}: run e2e/scripts/build-control-plane.sh (or set TOPOLVM_K8S_BIN)"
        );
    }
    dir
}

/// A client authenticating with the kubeconfig at `path`.
pub async fn client_from_kubeconfig(path: &Path) -> Client {
    let kubeconfig =
        Kubeconfig::read_from(path).unwrap_or_else(|e| panic!("reading {path:?}: {e}"));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("loading {path:?}: {e}"));
    Client::try_from(config).expect("building a Kubernetes client")
}

fn etcd_command(data: &Path, client_port: u16, peer_port: u16) -> Command {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut cmd = Command::new("etcd");
    cmd.arg("--name=test-bed")
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=test-bed={peer}"))
        .arg("--logger=zap")
        .arg("--log-level=warn");
    cmd
}

impl Cluster {
    /// Starts a control plane, or connects to the cluster named by `TOPOLVM_E2E_KUBECONFIG`.
    pub async fn start(options: ClusterOptions) -> Self {
        if let Some(path) = std::env::var_os("TOPOLVM_E2E_KUBECONFIG") {
            return Self::external(PathBuf::from(path)).await;
        }
        let bin = k8s_bin_dir();
        crate::process::sweep_stale_dirs("topolvm-e2e-");
        let dir = tempfile::Builder::new()
            .prefix("topolvm-e2e-")
            .tempdir()
            .expect("creating the cluster directory");
        crate::process::claim_dir(dir.path());
        let root = dir.path().to_owned();
        let pki = Pki::new(&root.join("pki"));
        let (sa_key, sa_pub) = pki.service_account_keys();
        let api_port = free_port();
        let server = format!("https://127.0.0.1:{api_port}");
        let mut processes = Vec::new();

        let (etcd_client, etcd_peer) = (free_port(), free_port());
        processes.push(ManagedProcess::spawn(
            "etcd",
            etcd_command(&root.join("etcd"), etcd_client, etcd_peer),
            &root.join("etcd.log"),
        ));

        let serving = pki.serving(
            "kube-apiserver",
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
            ],
            &[],
        );
        let mut apiserver = Command::new(bin.join("kube-apiserver"));
        apiserver
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_client}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={api_port}"))
            // 1.20 still opens an unauthenticated port 8080 by default: never here.
            .arg("--insecure-port=0")
            .arg(format!(
                "--cert-dir={}",
                root.join("apiserver-certs").display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca_file().display()))
            .arg(format!("--tls-cert-file={}", serving.cert.display()))
            .arg(format!("--tls-private-key-file={}", serving.key.display()))
            .arg(format!("--service-account-key-file={}", sa_pub.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key.display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--authorization-mode=Node,RBAC")
            // What a kubelet (`Cluster::kubelet_kubeconfig`) may write is limited as in production.
            .arg("--enable-admission-plugins=NodeRestriction")
            // No kubelet makes nodes ready, and no controller makes service accounts by default.
            .arg("--disable-admission-plugins=TaintNodesByCondition,ServiceAccount")
            // The loopback advertise address makes the endpoint reconciler complain every 10 s.
            .arg("--endpoint-reconciler-type=none")
            .arg("--allow-privileged=true")
            .arg("--profiling=false")
            .args(options.feature_gates_arg())
            .arg("--v=1");
        processes.push(ManagedProcess::spawn(
            "kube-apiserver",
            apiserver,
            &root.join("kube-apiserver.log"),
        ));

        let admin_cert = pki.client("admin", "admin", &["system:masters"]);
        let admin_kubeconfig = root.join("admin.kubeconfig");
        pki::write_kubeconfig(
            &admin_kubeconfig,
            &server,
            pki.ca_file(),
            &admin_cert,
            "admin",
        );
        let client = client_from_kubeconfig(&admin_kubeconfig).await;
        let mut cluster = Self {
            processes,
            server,
            admin_kubeconfig,
            component_kubeconfigs: BTreeMap::new(),
            client,
            external: false,
            pki: None,
            dir,
        };
        cluster.wait_ready().await;

        if !options.without_identities {
            cluster.install_identities().await;
            for component in COMPONENTS {
                let token = cluster.service_account_token(component).await;
                let path = root.join(format!("{component}.kubeconfig"));
                pki::write_token_kubeconfig(
                    &path,
                    &cluster.server,
                    pki.ca_file(),
                    &token,
                    component,
                );
                cluster
                    .component_kubeconfigs
                    .insert((*component).to_owned(), path);
            }
        }

        if let Some(extender) = &options.scheduler {
            let cert = pki.client("kube-scheduler", "system:kube-scheduler", &[]);
            let kubeconfig = root.join("kube-scheduler.kubeconfig");
            pki::write_kubeconfig(
                &kubeconfig,
                &cluster.server,
                pki.ca_file(),
                &cert,
                "kube-scheduler",
            );
            let config = root.join("kube-scheduler.yaml");
            std::fs::write(
                &config,
                scheduler_config(&kubeconfig, extender.as_deref(), free_port()),
            )
            .expect("writing the scheduler configuration");
            let mut cmd = Command::new(bin.join("kube-scheduler"));
            // With --config, 1.20 ignores --kubeconfig, --leader-elect and --port: all in the file.
            cmd.arg(format!("--config={}", config.display()))
                .arg(format!("--secure-port={}", free_port()))
                .arg("--bind-address=127.0.0.1")
                .arg(format!(
                    "--cert-dir={}",
                    root.join("scheduler-certs").display()
                ))
                .args(options.feature_gates_arg())
                .arg("--v=2");
            cluster.processes.push(ManagedProcess::spawn(
                "kube-scheduler",
                cmd,
                &root.join("kube-scheduler.log"),
            ));
        }
        if options.controller_manager {
            let cert = pki.client(
                "kube-controller-manager",
                "system:kube-controller-manager",
                &[],
            );
            let kubeconfig = root.join("kube-controller-manager.kubeconfig");
            pki::write_kubeconfig(
                &kubeconfig,
                &cluster.server,
                pki.ca_file(),
                &cert,
                "kube-controller-manager",
            );
            let mut cmd = Command::new(bin.join("kube-controller-manager"));
            cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg("--port=0")
                .arg(format!("--secure-port={}", free_port()))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--cert-dir={}", root.join("controller-manager-certs").display()))
                .arg("--leader-elect=false")
                // Under RBAC each controller needs its own service account's permissions.
                .arg("--use-service-account-credentials=true")
                .arg(format!("--service-account-private-key-file={}", sa_key.display()))
                .arg(format!("--root-ca-file={}", pki.ca_file().display()))
                // These need kubelets, a cloud or a signing CA, none of which the test bed has.
                .arg("--controllers=*,-nodelifecycle,-nodeipam,-route,-service,-csrsigning,-cloud-node-lifecycle")
                .args(options.feature_gates_arg())
                .arg("--v=1");
            cluster.processes.push(ManagedProcess::spawn(
                "kube-controller-manager",
                cmd,
                &root.join("kube-controller-manager.log"),
            ));
        }
        cluster.pki = Some(pki);
        cluster
    }

    /// Uses an existing cluster (for example kind on a machine with device-mapper).
    pub async fn external(kubeconfig: PathBuf) -> Self {
        let client = client_from_kubeconfig(&kubeconfig).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let server = format!("(external: {})", kubeconfig.display());
        let mut component_kubeconfigs = BTreeMap::new();
        for component in COMPONENTS {
            let var = format!(
                "TOPOLVM_E2E_KUBECONFIG_{}",
                component.to_uppercase().replace('-', "_")
            );
            let path = std::env::var_os(&var)
                .map(PathBuf::from)
                .unwrap_or_else(|| kubeconfig.clone());
            component_kubeconfigs.insert((*component).to_owned(), path);
        }
        let cluster = Self {
            processes: Vec::new(),
            server,
            admin_kubeconfig: kubeconfig,
            component_kubeconfigs,
            client,
            external: true,
            pki: None,
            dir,
        };
        cluster.install_identities().await;
        cluster
    }

    async fn wait_ready(&mut self) {
        let timeout = if std::env::var_os("TOPOLVM_IN_VM").is_some() {
            READY_TIMEOUT_IN_VM
        } else {
            READY_TIMEOUT
        };
        let deadline = Instant::now() + timeout;
        loop {
            for p in &mut self.processes {
                p.assert_running();
            }
            let request = http_get("/readyz");
            if let Ok(body) = self.client.request_text(request).await
                && body.trim() == "ok"
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver was not ready within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Whether this is a cluster someone else runs.
    pub fn is_external(&self) -> bool {
        self.external
    }

    /// A kubeconfig for the kubelet of Node `node`: a client certificate of user
    /// `system:node:<node>` in group `system:nodes`, the identity the Node authorizer and the
    /// NodeRestriction admission plugin know (kubernetes/kubernetes
    /// plugin/pkg/auth/authorizer/node/node_authorizer.go). Panics for an external cluster.
    pub fn kubelet_kubeconfig(&self, node: &str) -> PathBuf {
        let pki = self
            .pki
            .as_ref()
            .expect("kubelet identities exist only for a cluster the test bed runs");
        let user = format!("system:node:{node}");
        let cert = pki.client(&format!("kubelet-{node}"), &user, &["system:nodes"]);
        let path = self.dir.path().join(format!("kubelet-{node}.kubeconfig"));
        pki::write_kubeconfig(&path, &self.server, pki.ca_file(), &cert, &user);
        path
    }

    /// The CA certificate that signs every certificate of the cluster (none when external).
    pub fn ca_file(&self) -> Option<&Path> {
        self.pki.as_ref().map(Pki::ca_file)
    }

    /// The admin client.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The kubeconfig of one of [`COMPONENTS`].
    pub fn kubeconfig(&self, component: &str) -> &Path {
        self.component_kubeconfigs
            .get(component)
            .unwrap_or_else(|| {
                panic!("{component} is not one of {COMPONENTS:?}, or the cluster has no identities")
            })
    }

    /// A client with the identity and permissions of one of [`COMPONENTS`].
    pub async fn client_as(&self, component: &str) -> Client {
        client_from_kubeconfig(self.kubeconfig(component)).await
    }

    /// The cluster's scratch directory (logs, certificates, kubeconfigs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Panics with its log if a control-plane process has died.
    pub fn assert_healthy(&mut self) {
        for p in &mut self.processes {
            p.assert_running();
        }
    }

    /// The last lines of a control-plane process's log (`etcd`, `kube-apiserver`,
    /// `kube-scheduler`, `kube-controller-manager`).
    pub fn log_tail(&self, process: &str, lines: usize) -> String {
        self.processes
            .iter()
            .find(|p| p.name() == process)
            .map(|p| p.log_tail(lines))
            .unwrap_or_default()
    }

    /// Applies the Namespace, ServiceAccounts and RBAC of the rendered manifests, as an operator
    /// installing them would (server-side apply).
    async fn install_identities(&self) {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut applied = Vec::new();
        for value in manifest_documents("topolvm-rs-scheduler.yaml") {
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            if !IDENTITY_KINDS.contains(&kind.as_str()) {
                continue;
            }
            let object: DynamicObject =
                serde_json::from_value(value.clone()).expect("a Kubernetes object");
            let name = object.metadata.name.clone().expect("a named object");
            let resource = match kind.as_str() {
                "Namespace" => ApiResource::erase::<Namespace>(&()),
                "ServiceAccount" => ApiResource::erase::<ServiceAccount>(&()),
                "ClusterRole" => ApiResource::erase::<ClusterRole>(&()),
                "ClusterRoleBinding" => ApiResource::erase::<ClusterRoleBinding>(&()),
                "Role" => ApiResource::erase::<Role>(&()),
                _ => ApiResource::erase::<RoleBinding>(&()),
            };
            let api: Api<DynamicObject> = match object.metadata.namespace.as_deref() {
                Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
                None => Api::all_with(self.client.clone(), &resource),
            };
            api.patch(&name, &params, &Patch::Apply(&object))
                .await
                .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
            applied.push(format!("{kind}/{name}"));
        }
        for component in COMPONENTS {
            assert!(
                applied.contains(&format!("ServiceAccount/{component}")),
                "no ServiceAccount {component} in {:?}",
                rendered_manifest()
            );
        }
    }

    /// A token of the ServiceAccount `name` in [`NAMESPACE`] from the TokenRequest API, as the
    /// kubelet mounts into a pod.
    pub async fn service_account_token(&self, name: &str) -> String {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), NAMESPACE);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(TOKEN_SECONDS),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let issued: TokenRequest = accounts
            .create_subresource("token", name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("a token for ServiceAccount {NAMESPACE}/{name}: {e}"));
        issued
            .status
            .unwrap_or_else(|| panic!("no token for ServiceAccount {NAMESPACE}/{name}"))
            .token
    }

    /// Installs the LogicalVolume CRD generated from the Rust type and waits until it is served.
    pub async fn install_crds(&self) {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let crd = topolvm_core::crd::logical_volume_crd();
        let name = crd.metadata.name.clone().expect("named CRD");
        crds.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("installing CRD {name}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let current = crds.get(&name).await.expect("reading the CRD back");
            let established = current
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "CRD {name} was not established in time"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates a Node (no kubelet: the test plays its part) with `labels`, the capacity
    /// annotations given as (device class, bytes), and allocatable CPU, memory and pods so the
    /// scheduler considers it; plus its CSINode naming the topolvm.io driver.
    pub async fn make_node(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        capacity: &[(&str, u64)],
    ) -> Node {
        let mut all_labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        all_labels.insert("kubernetes.io/hostname".to_owned(), name.to_owned());
        all_labels.insert(names::TOPOLOGY_NODE_KEY.to_owned(), name.to_owned());
        let annotations: BTreeMap<String, String> = capacity
            .iter()
            .map(|(class, bytes)| (names::capacity_annotation_key(class), bytes.to_string()))
            .collect();
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": all_labels, "annotations": annotations},
            "spec": {},
        }))
        .expect("a Node");
        let nodes: Api<Node> = Api::all(self.client.clone());
        let created = nodes
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("creating node {name}: {e}"));
        // Status is a subresource: make the node Ready with room for pods.
        let status = serde_json::json!({"status": {
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "the test plays kubelet",
                            "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("setting the status of node {name}: {e}"));
        let csinode: CSINode = serde_json::from_value(serde_json::json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "CSINode",
            "metadata": {"name": name, "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": name,
                "uid": created.metadata.uid.clone().unwrap_or_default()}]},
            "spec": {"drivers": [{"name": names::PLUGIN_NAME, "nodeID": name,
                                  "topologyKeys": [names::TOPOLOGY_NODE_KEY]}]},
        }))
        .expect("a CSINode");
        Api::<CSINode>::all(self.client.clone())
            .create(&PostParams::default(), &csinode)
            .await
            .unwrap_or_else(|e| panic!("creating the CSINode of {name}: {e}"));
        created
    }
}

fn http_get(path: &str) -> http::Request<Vec<u8>> {
    http::Request::get(path)
        .body(Vec::new())
        .expect("a GET request")
}

/// The plain manifests rendered from the chart with every component (scheduler and webhook
/// included), whose ServiceAccounts and RBAC the components of the test bed run with.
pub fn rendered_manifest() -> PathBuf {
    manifest_path("topolvm-rs-scheduler.yaml")
}

/// `deploy/manifests/<file>`, a plain manifest rendered from the chart.
pub fn manifest_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/manifests")
        .join(file)
}

/// Every object of `deploy/manifests/<file>`, as JSON, in the file's order.
pub fn manifest_documents(file: &str) -> Vec<serde_json::Value> {
    let path = manifest_path(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path:?}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_json::Value::deserialize(doc).expect("a YAML document"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The kube-scheduler 1.20 configuration (API `kubescheduler.config.k8s.io/v1beta1`); its
/// insecure health and metrics endpoint goes to `127.0.0.1:health_port` (the default is
/// `0.0.0.0:10251`, which would collide between runs and cannot be switched off in v1beta1).
pub fn scheduler_config(kubeconfig: &Path, extender: Option<&str>, health_port: u16) -> String {
    let health = format!("127.0.0.1:{health_port}");
    let mut config = serde_json::json!({
        "apiVersion": "kubescheduler.config.k8s.io/v1beta1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig},
        "leaderElection": {"leaderElect": false},
        "healthzBindAddress": health,
        "metricsBindAddress": health,
    });
    if let Some(url) = extender {
        config["extenders"] = serde_json::json!([{
            "urlPrefix": url,
            "filterVerb": "predicate",
            "prioritizeVerb": "prioritize",
            "weight": 1,
            "nodeCacheCapable": false,
            "managedResources": [{"name": names::CAPACITY_RESOURCE, "ignoredByScheduler": true}],
        }]);
    }
    serde_yaml::to_string(&config).expect("scheduler configuration YAML")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        while let Some(mut p) = self.processes.pop() {
            p.stop();
        }
        if std::env::var_os("TOPOLVM_E2E_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("TOPOLVM_E2E_KEEP: keeping {}", dir.keep().display());
        }
    }
}
