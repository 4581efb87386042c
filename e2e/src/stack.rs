//! The whole local stack on one machine: the control plane (etcd, kube-apiserver,
//! kube-scheduler calling topolvm-scheduler as its extender, kube-controller-manager), and per
//! node a Node object (kubelet's part: Ready, labelled with the topology key, its CSINode), a
//! volume group on a loop device (or the VM's disks), lvmd and topolvm-node; topolvm-scheduler,
//! topolvm-controller with its pod webhook registered for real over TLS, the CSIDriver and the
//! sidecars' stand-in ([`crate::sidecar_loop`]). What `scripts/demo.sh` runs and the whole-stack
//! tests start. Everything stops, and every loop device goes, when the [`Stack`] is dropped.
//!
//! On the host, pods are scheduled but never run: there is no kubelet, and the tests play its part
//! ([`crate::csi::Kubelet`]). Inside the VM tier's guest, [`StackOptions::kubelet`] gives each
//! node a real kubelet on a containerd of its own ([`crate::kubelet`]): kubelet registers the
//! Node, takes topolvm-node's built-in registration, writes the CSINode and runs the pods. Each
//! process runs with its ServiceAccount's token and the RBAC of the rendered manifests
//! ([`Cluster::kubeconfig`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use topolvm_core::names;

use crate::cluster::{Cluster, ClusterOptions};
use crate::containerd::Containerd;
use crate::kubelet::{self, Kubelet};
use crate::lvm::{Disk, LvmEnv, Lvmd, LvmdOptions, VolumeGroup, http_get};
use crate::pki::Pki;
use crate::process::{ManagedProcess, eventually, free_port, workspace_binary};

/// The device class every stack node serves (thick, the default).
pub const DEVICE_CLASS: &str = "ssd";

/// How to start a [`Stack`].
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Node names and the size of each one's volume group.
    pub nodes: Vec<(String, u64)>,
    /// Real activation (inside the VM) instead of metadata-only LVM (the host).
    pub real_activation: bool,
    /// Extra arguments of topolvm-controller.
    pub controller_args: Vec<String>,
    /// A real kubelet and containerd per node (inside the VM only, with `real_activation`),
    /// instead of Node objects the test bed writes itself.
    pub kubelet: bool,
}

impl StackOptions {
    /// `count` nodes `node-a`, `node-b`, ... with `vg_bytes` each, metadata-only LVM.
    pub fn nodes(count: usize, vg_bytes: u64) -> Self {
        Self {
            nodes: (0..count)
                .map(|i| (format!("node-{}", char::from(b'a' + i as u8)), vg_bytes))
                .collect(),
            real_activation: false,
            controller_args: Vec::new(),
            kubelet: false,
        }
    }
}

/// Where a test's topolvm-node serves: its own CSI socket and kubelet directory (never the
/// host's `/run/topolvm` or `/var/lib/kubelet`), metrics and health on free loopback ports.
#[derive(Debug, Clone)]
pub struct AgentEndpoints {
    pub csi_socket: PathBuf,
    pub kubelet_dir: PathBuf,
    pub metrics: SocketAddr,
    pub health: SocketAddr,
}

impl AgentEndpoints {
    /// Endpoints in `dir` (created, with the kubelet directory).
    pub fn under(dir: &Path) -> Self {
        let kubelet_dir = dir.join("kubelet");
        std::fs::create_dir_all(&kubelet_dir)
            .unwrap_or_else(|e| panic!("creating {kubelet_dir:?}: {e}"));
        Self {
            csi_socket: dir.join("csi.sock"),
            kubelet_dir,
            metrics: ([127, 0, 0, 1], free_port()).into(),
            health: ([127, 0, 0, 1], free_port()).into(),
        }
    }
}

/// topolvm-node's arguments for Node `node` with lvmd at `lvmd_socket`, as its ServiceAccount,
/// serving at `at`.
pub fn node_agent_args(
    cluster: &Cluster,
    node: &str,
    lvmd_socket: &Path,
    at: &AgentEndpoints,
) -> Vec<std::ffi::OsString> {
    vec![
        "--nodename".into(),
        node.into(),
        "--lvmd-socket".into(),
        lvmd_socket.into(),
        "--kubeconfig".into(),
        cluster.kubeconfig("topolvm-node").into(),
        "--csi-socket".into(),
        at.csi_socket.clone().into(),
        "--kubelet-dir".into(),
        at.kubelet_dir.clone().into(),
        "--metrics-bind-address".into(),
        at.metrics.to_string().into(),
        "--health-probe-bind-address".into(),
        at.health.to_string().into(),
    ]
}

/// topolvm-controller's arguments without its webhook and leader election (one replica, nothing
/// to wait for after a restart), as its ServiceAccount, with its CSI socket at `csi_socket`.
pub fn controller_args_without_webhook(
    cluster: &Cluster,
    csi_socket: &Path,
) -> Vec<std::ffi::OsString> {
    vec![
        "--csi-socket".into(),
        csi_socket.into(),
        "--kubeconfig".into(),
        cluster.kubeconfig("topolvm-controller").into(),
        "--leader-election=false".into(),
        "--enable-webhooks=false".into(),
        "--metrics-bind-address".into(),
        format!("127.0.0.1:{}", free_port()).into(),
        "--health-probe-bind-address".into(),
        format!("127.0.0.1:{}", free_port()).into(),
        "--webhook-addr".into(),
        format!("127.0.0.1:{}", free_port()).into(),
    ]
}

/// The workspace's topolvm-controller as [`controller_args_without_webhook`] starts it, with its
/// CSI socket and log in `dir` and `RUST_LOG=rust_log`; returns once the socket exists, with the
/// sidecars' client connected to it.
pub async fn start_controller(
    cluster: &Cluster,
    dir: &Path,
    rust_log: &str,
) -> (ManagedProcess, crate::csi::Sidecars) {
    let socket = dir.join("controller.sock");
    let mut cmd = Command::new(workspace_binary("topolvm-controller", "topolvm-controller"));
    cmd.args(controller_args_without_webhook(cluster, &socket))
        .env("RUST_LOG", rust_log);
    let controller = ManagedProcess::spawn("topolvm-controller", cmd, &dir.join("controller.log"));
    eventually(
        "the controller's socket",
        Duration::from_secs(60),
        || async { socket.exists().then_some(()) },
    )
    .await;
    let sidecars = crate::csi::Sidecars::connect(&socket)
        .await
        .expect("connecting to the controller's socket");
    (controller, sidecars)
}

/// A node's real kubelet and its container runtime. Drops kubelet first (which unmounts the
/// pods' volumes), then containerd (which kills the containers still running).
#[derive(Debug)]
pub struct NodeRuntime {
    pub kubelet: Kubelet,
    pub containerd: Containerd,
}

/// One node of the stack.
pub struct StackNode {
    /// With [`StackOptions::kubelet`]; first so that it goes before the volume group.
    pub runtime: Option<NodeRuntime>,
    pub name: String,
    pub vg: VolumeGroup,
    /// In its own process group: [`Lvmd::kill9_with_children`] kills it with its `lvm`.
    pub lvmd: Lvmd,
    pub agent: ManagedProcess,
    agent_recipe: Recipe,
    /// topolvm-node's CSI socket (kubelet's side: [`crate::csi::Kubelet`]).
    pub csi_socket: PathBuf,
    /// The kubelet directory topolvm-node accepts targets under.
    pub kubelet_dir: PathBuf,
    pub metrics: SocketAddr,
}

/// The running stack; see the module documentation.
pub struct Stack {
    // Drop order: the sidecars' task first, then the components, then the nodes, the cluster.
    sidecars: tokio::task::JoinHandle<()>,
    pub controller: ManagedProcess,
    controller_recipe: Recipe,
    pub scheduler: ManagedProcess,
    pub nodes: Vec<StackNode>,
    pub env: LvmEnv,
    pub cluster: Cluster,
    /// topolvm-controller's CSI socket.
    pub controller_socket: PathBuf,
    pub controller_metrics: SocketAddr,
    dir: PathBuf,
}

impl std::fmt::Debug for StackNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackNode")
            .field("name", &self.name)
            .field("vg", &self.vg.name())
            .field("csi_socket", &self.csi_socket)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("nodes", &self.nodes)
            .field("controller_socket", &self.controller_socket)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.sidecars.abort();
    }
}

const WAIT: Duration = Duration::from_secs(60);

/// How to start one of the stack's processes again after it was killed.
#[derive(Debug, Clone)]
struct Recipe {
    name: String,
    program: PathBuf,
    args: Vec<std::ffi::OsString>,
    rust_log: String,
    log: PathBuf,
}

impl Recipe {
    fn spawn(&self) -> ManagedProcess {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).env("RUST_LOG", &self.rust_log);
        ManagedProcess::spawn(&self.name, cmd, &self.log)
    }
}

impl Stack {
    /// Starts everything and returns once the nodes' capacity is on their Node objects, the
    /// webhook answers and the controller's CSI socket exists.
    pub async fn start(options: StackOptions) -> Self {
        let extender_port = free_port();
        let mut cluster_options = ClusterOptions::api_only()
            .with_scheduler_extender(format!("http://127.0.0.1:{extender_port}"))
            .with_controller_manager();
        if options.kubelet {
            // Pods' generic ephemeral volumes (alpha in 1.20); kubelet gets the same gate.
            cluster_options = cluster_options.with_feature_gate(kubelet::GENERIC_EPHEMERAL_VOLUME);
        }
        let cluster = Cluster::start(cluster_options).await;
        cluster.install_crds().await;
        let client = cluster.client();
        crate::sidecar_loop::install_snapshot_crds(&client).await;
        let dir = cluster.dir().join("stack");
        std::fs::create_dir_all(&dir).expect("the stack's directory");
        Api::<CSIDriver>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
                    "metadata": {"name": names::PLUGIN_NAME},
                    "spec": {"attachRequired": false, "podInfoOnMount": true,
                             "volumeLifecycleModes": ["Persistent", "Ephemeral"]},
                }))
                .expect("a CSIDriver"),
            )
            .await
            .expect("creating the CSIDriver");

        let env = if options.real_activation {
            LvmEnv::real_activation()
        } else {
            LvmEnv::metadata_only()
        };
        let mut vm_disks = if options.real_activation {
            crate::lvm::vm_disks().into_iter()
        } else {
            Vec::new().into_iter()
        };
        let mut nodes = Vec::new();
        assert!(
            !options.kubelet || options.real_activation,
            "a real kubelet runs only in the VM, with real activation"
        );
        for (name, vg_bytes) in &options.nodes {
            let node_dir = dir.join(name);
            std::fs::create_dir_all(&node_dir).expect("the node's directory");
            let runtime = if options.kubelet {
                let containerd = Containerd::start(&node_dir.join("containerd"));
                let mut kubelet = Kubelet::start(
                    &cluster,
                    name,
                    &containerd,
                    &node_dir.join("kubelet"),
                    &node_dir,
                )
                .await;
                kubelet.wait_registered(&client).await;
                Some(NodeRuntime {
                    kubelet,
                    containerd,
                })
            } else {
                cluster.make_node(name, &[], &[]).await;
                None
            };
            let disk = if options.real_activation {
                Disk::existing(vm_disks.next().expect("a VM disk per node"))
            } else {
                Disk::loop_device(*vg_bytes)
            };
            let vg = VolumeGroup::create(&env, vec![disk]);
            let lvmd = Lvmd::start(
                &env,
                LvmdOptions::workspace_thick(DEVICE_CLASS, vg.name()).own_process_group(),
            );
            let mut at = AgentEndpoints::under(&node_dir);
            if let Some(runtime) = &runtime {
                // Where a deployment serves: under kubelet's root.
                at.kubelet_dir = runtime.kubelet.root_dir().to_owned();
                at.csi_socket = runtime.kubelet.csi_socket();
            }
            let mut args = node_agent_args(&cluster, name, lvmd.socket_path(), &at);
            if let Some(runtime) = &runtime {
                // Registered with kubelet by topolvm-node itself (no node-driver-registrar).
                args.extend([
                    "--register-with-kubelet".into(),
                    "--kubelet-registration-path".into(),
                    at.csi_socket.clone().into(),
                    "--plugin-registration-dir".into(),
                    runtime.kubelet.registration_dir().into(),
                ]);
            }
            let agent_recipe = Recipe {
                name: format!("topolvm-node {name}"),
                program: workspace_binary("topolvm-node", "topolvm-node"),
                args,
                rust_log: "topolvm_node=debug,info".into(),
                log: node_dir.join("topolvm-node.log"),
            };
            let agent = agent_recipe.spawn();
            nodes.push(StackNode {
                runtime,
                name: name.clone(),
                vg,
                lvmd,
                agent,
                agent_recipe,
                csi_socket: at.csi_socket,
                kubelet_dir: at.kubelet_dir,
                metrics: at.metrics,
            });
        }

        let scheduler_config = dir.join("topolvm-scheduler.yaml");
        std::fs::write(
            &scheduler_config,
            format!("listen: \"127.0.0.1:{extender_port}\"\n"),
        )
        .expect("the extender's configuration");
        let mut cmd = Command::new(workspace_binary("topolvm-scheduler", "topolvm-scheduler"));
        cmd.arg("--config")
            .arg(&scheduler_config)
            .arg("--watch-cluster")
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig("topolvm-scheduler"))
            .env("RUST_LOG", "topolvm_scheduler=debug,info");
        let scheduler =
            ManagedProcess::spawn("topolvm-scheduler", cmd, &dir.join("topolvm-scheduler.log"));

        // The webhook's serving certificate for 127.0.0.1, from a CA of the stack's own.
        let pki = Pki::new(&dir.join("webhook-pki"));
        let serving = pki.serving("webhook", &["localhost"], &[]);
        let cert_dir = dir.join("webhook-certs");
        std::fs::create_dir_all(&cert_dir).expect("cert dir");
        std::fs::copy(&serving.cert, cert_dir.join("tls.crt")).expect("tls.crt");
        std::fs::copy(&serving.key, cert_dir.join("tls.key")).expect("tls.key");
        let webhook_port = free_port();
        let controller_socket = dir.join("controller.sock");
        let controller_metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let controller_health: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut args: Vec<std::ffi::OsString> = vec![
            "--csi-socket".into(),
            controller_socket.clone().into(),
            "--kubeconfig".into(),
            cluster.kubeconfig("topolvm-controller").into(),
            // One replica: no Lease to wait for after a restart.
            "--leader-election=false".into(),
            "--metrics-bind-address".into(),
            controller_metrics.to_string().into(),
            "--health-probe-bind-address".into(),
            controller_health.to_string().into(),
            "--webhook-addr".into(),
            format!("127.0.0.1:{webhook_port}").into(),
            "--cert-dir".into(),
            cert_dir.clone().into(),
        ];
        args.extend(options.controller_args.iter().map(Into::into));
        let controller_recipe = Recipe {
            name: "topolvm-controller".into(),
            program: workspace_binary("topolvm-controller", "topolvm-controller"),
            args,
            rust_log: "topolvm_controller=debug,info".into(),
            log: dir.join("topolvm-controller.log"),
        };
        let controller = controller_recipe.spawn();
        register_webhook(&cluster, webhook_port, pki.ca_file()).await;

        // Ready means: the CSIDriver seen, the webhook serving its certificate.
        eventually("topolvm-controller ready", WAIT, || async {
            let ready = http_get(controller_health, "/readyz").await.is_ok();
            (ready && controller_socket.exists()).then_some(())
        })
        .await;
        let nodes_api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
        for node in &nodes {
            eventually(
                &format!("{}'s capacity annotation", node.name),
                WAIT,
                || {
                    let nodes_api = nodes_api.clone();
                    let name = node.name.clone();
                    async move {
                        let n = nodes_api.get(&name).await.ok()?;
                        n.metadata
                            .annotations?
                            .contains_key(&names::capacity_annotation_key(DEVICE_CLASS))
                            .then_some(())
                    }
                },
            )
            .await;
        }
        for node in &mut nodes {
            if let Some(runtime) = &mut node.runtime {
                runtime.kubelet.wait_driver_registered(&client).await;
            }
        }
        let sidecars = tokio::spawn(crate::sidecar_loop::run(
            cluster.client(),
            controller_socket.clone(),
        ));
        Self {
            sidecars,
            controller,
            controller_recipe,
            scheduler,
            nodes,
            env,
            cluster,
            controller_socket,
            controller_metrics,
            dir,
        }
    }

    /// Where the stack's logs and files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SIGKILL of topolvm-controller, as a crash would.
    pub fn kill_controller(&mut self) {
        self.controller.kill();
    }

    /// Starts topolvm-controller again with the same arguments (killing it first if it runs).
    pub fn restart_controller(&mut self) {
        self.controller.kill();
        self.controller = self.controller_recipe.spawn();
    }

    /// SIGKILL of node `i`'s topolvm-node.
    pub fn kill_agent(&mut self, i: usize) {
        self.nodes[i].agent.kill();
    }

    /// Starts node `i`'s topolvm-node again (killing it first if it runs).
    pub fn restart_agent(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.agent.kill();
        node.agent = node.agent_recipe.spawn();
    }

    pub fn node(&self, name: &str) -> &StackNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no stack node {name}"))
    }
}

/// Registers the pod webhook as `deploy/controller/pod-webhook.yaml` does (its namespace rules,
/// failure policy and review versions), pointed at the controller's port with the stack's CA.
async fn register_webhook(cluster: &Cluster, port: u16, ca: &Path) {
    let ca = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(ca).expect("the webhook CA"));
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "topolvm-hook"},
        "webhooks": [{
            "name": "pod-hook.topolvm.io",
            "admissionReviewVersions": ["v1", "v1beta1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "matchPolicy": "Equivalent",
            "namespaceSelector": {"matchExpressions": [
                {"key": "topolvm.io/webhook", "operator": "NotIn", "values": ["ignore"]}]},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"]}],
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/pod/mutate"),
                             "caBundle": ca},
        }],
    }))
    .expect("a MutatingWebhookConfiguration");
    Api::<MutatingWebhookConfiguration>::all(cluster.client())
        .create(&PostParams::default(), &config)
        .await
        .expect("registering the pod webhook");
}

/// A StorageClass of our driver for the stack's device class, as the demo and the tests use it:
/// WaitForFirstConsumer, expandable, filesystem `fs_type`.
pub fn storage_class(name: &str, fs_type: &str) -> k8s_openapi::api::storage::v1::StorageClass {
    storage_class_of(name, DEVICE_CLASS, Some(fs_type))
}

/// A StorageClass `name` of our driver for `device_class`: WaitForFirstConsumer, expandable,
/// filesystem `fs_type` (`None`: the parameter left out, so the CSI default applies).
pub fn storage_class_of(
    name: &str,
    device_class: &str,
    fs_type: Option<&str>,
) -> k8s_openapi::api::storage::v1::StorageClass {
    let mut parameters = serde_json::Map::new();
    parameters.insert(
        names::DEVICE_CLASS_PARAMETER.to_owned(),
        device_class.into(),
    );
    if let Some(fs_type) = fs_type {
        parameters.insert("csi.storage.k8s.io/fstype".to_owned(), fs_type.into());
    }
    serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": names::PLUGIN_NAME,
        "parameters": parameters,
        "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": true,
    }))
    .expect("a StorageClass")
}

/// A ReadWriteOnce claim `name` in `default` of `class`, asking for `bytes`.
pub fn claim(
    name: &str,
    class: &str,
    bytes: u64,
) -> k8s_openapi::api::core::v1::PersistentVolumeClaim {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                 "resources": {"requests": {"storage": bytes.to_string()}}},
    }))
    .expect("a claim")
}

/// A pod `name` in `default` using claim `claim` (scheduled, never run: there is no kubelet).
pub fn pod(name: &str, claim: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"automountServiceAccountToken": false,
                 "containers": [{"name": "app", "image": "registry.invalid/app"}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]},
    }))
    .expect("a pod")
}
