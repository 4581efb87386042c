//! A real kubelet for one Node of the test bed, on a [`Containerd`] of its own: pods that really
//! run, mount their volumes through topolvm-node's CSI socket and write to them.
//!
//! Only inside the VM tier's guest (`scripts/vm/run.sh`): kubelet rewrites host-wide sysctls
//! (`kernel.panic`, `vm.overcommit_memory`) and cgroups, which in the guest touch only the
//! guest. The binary comes from `e2e/scripts/build-control-plane.sh` (Kubernetes 1.20.2, the same
//! source as the control plane). How it is set up, and why:
//!
//! - **Identity**: a client certificate of `system:node:<node>` in `system:nodes`
//!   ([`Cluster::kubelet_kubeconfig`]), so the Node authorizer and NodeRestriction judge it as in
//!   production. kubelet registers the Node itself and, once topolvm-node registered through
//!   `<root>/plugins_registry`, writes the CSINode and the topology label from NodeGetInfo.
//! - **Configuration** (a KubeletConfiguration file, kubelet.config.k8s.io/v1beta1): serving on
//!   loopback only; the read-only port open for `/metrics` (`kubelet_volume_stats_*`, as
//!   kubelet's `pkg/kubelet/metrics/collectors/volume_stats.go` names them); cgroupfs driver;
//!   no swap check, no iptables chains; eviction thresholds of 1% (the guest's disk is a small
//!   tmpfs); volume stats gathered every 10 s instead of every minute.
//! - **Pods** use `hostNetwork: true` (the guest has only loopback: no CNI network exists, and
//!   none may reach outside the guest) and images imported into containerd with
//!   `imagePullPolicy: Never` ([`app_pod`]).
//! - **Clean-up**: dropping the [`Kubelet`] stops it, unmounts everything under its root
//!   directory (pods' volumes, and the bind mount kubelet makes of the root onto itself) and
//!   detaches the loop devices it holds raw block volumes open with.
//!
//! The kubelet stand-in ([`crate::csi::Kubelet`]) stays where no device-mapper exists.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::storage::v1::CSINode;
use kube::{Api, Client};
use serde_json::json;
use topolvm_core::names;

use crate::cluster::{Cluster, k8s_bin_dir};
use crate::containerd::Containerd;
use crate::metrics::http_get;
use crate::mounts::unmount_all_under;
use crate::process::{ManagedProcess, eventually, free_port};

/// How long kubelet may take to register its Node under the VM's software emulation (about
/// 60 s measured from VM start; kubelet itself serves in about 20 s).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(180);

/// The feature gate of generic ephemeral volumes (alpha, off by default in 1.20; kubernetes/
/// kubernetes pkg/features/kube_features.go), on in kubelet and in the stack's control plane.
pub const GENERIC_EPHEMERAL_VOLUME: &str = "GenericEphemeralVolume=true";

/// A running kubelet; see the module documentation.
pub struct Kubelet {
    process: ManagedProcess,
    node: String,
    root: PathBuf,
    read_only: SocketAddr,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet")
            .field("node", &self.node)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Kubelet {
    /// Starts kubelet for Node `node` with its root directory `root` (created) and logs in
    /// `log_dir`, on `runtime`; returns once it serves `/healthz` (the Node may not be
    /// registered yet: [`Kubelet::wait_registered`]).
    pub async fn start(
        cluster: &Cluster,
        node: &str,
        runtime: &Containerd,
        root: &Path,
        log_dir: &Path,
    ) -> Self {
        assert!(
            std::env::var_os("TOPOLVM_IN_VM").is_some(),
            "kubelet runs only inside the VM tier's guest: on a host it rewrites host-wide sysctls"
        );
        std::fs::create_dir_all(root).unwrap_or_else(|e| panic!("creating {root:?}: {e}"));
        let read_only: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let healthz: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let config = log_dir.join(format!("kubelet-{node}.yaml"));
        std::fs::write(
            &config,
            serde_yaml::to_string(&configuration(cluster, read_only, healthz))
                .expect("the kubelet configuration as YAML"),
        )
        .expect("writing the kubelet configuration");
        let mut cmd = Command::new(kubelet_binary());
        cmd.arg(format!("--config={}", config.display()))
            .arg(format!(
                "--kubeconfig={}",
                cluster.kubelet_kubeconfig(node).display()
            ))
            .arg(format!("--root-dir={}", root.display()))
            .arg(format!("--cert-dir={}", root.join("pki").display()))
            .arg(format!("--hostname-override={node}"))
            .arg("--container-runtime=remote")
            .arg(format!(
                "--container-runtime-endpoint={}",
                runtime.endpoint()
            ))
            .arg(format!(
                "--pod-infra-container-image={}",
                runtime.pause_image()
            ))
            .arg("--v=2");
        let process = ManagedProcess::spawn(
            &format!("kubelet {node}"),
            cmd,
            &log_dir.join(format!("kubelet-{node}.log")),
        );
        let mut kubelet = Self {
            process,
            node: node.to_owned(),
            root: root.to_owned(),
            read_only,
        };
        let deadline = std::time::Instant::now() + REGISTER_TIMEOUT;
        loop {
            kubelet.process.assert_running();
            if http_get(healthz, "/healthz")
                .await
                .is_ok_and(|b| b.trim() == "ok")
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kubelet did not serve /healthz within {REGISTER_TIMEOUT:?}; log tail:\n{}",
                kubelet.process.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        kubelet
    }

    /// Waits until kubelet registered its Node (its status names kubelet's version). The Node
    /// stays `Ready=False` for want of a CNI network (`NetworkPluginNotReady`), which stops
    /// nothing here: pods use the host's network, and neither the admission plugin nor the
    /// controller that would taint a not-ready Node runs in the test bed.
    pub async fn wait_registered(&mut self, client: &Client) -> Node {
        self.process.assert_running();
        let nodes: Api<Node> = Api::all(client.clone());
        let name = self.node.clone();
        eventually(
            &format!("kubelet's Node {name} registered"),
            REGISTER_TIMEOUT,
            || {
                let (nodes, name) = (nodes.clone(), name.clone());
                async move {
                    let node = nodes.get(&name).await.ok()?;
                    let version = &node.status.as_ref()?.node_info.as_ref()?.kubelet_version;
                    version.starts_with("v1.20.").then_some(node)
                }
            },
        )
        .await
    }

    /// Waits until kubelet took topolvm-node's registration: the CSINode names our driver with
    /// the topology key, and the Node carries the topology label (both written by kubelet).
    pub async fn wait_driver_registered(&mut self, client: &Client) {
        self.process.assert_running();
        let csinodes: Api<CSINode> = Api::all(client.clone());
        let nodes: Api<Node> = Api::all(client.clone());
        let name = self.node.clone();
        eventually(
            &format!("kubelet registered {} on {name}", names::PLUGIN_NAME),
            REGISTER_TIMEOUT,
            || {
                let (csinodes, nodes, name) = (csinodes.clone(), nodes.clone(), name.clone());
                async move {
                    let csinode = csinodes.get(&name).await.ok()?;
                    let driver = csinode
                        .spec
                        .drivers
                        .iter()
                        .find(|d| d.name == names::PLUGIN_NAME)?;
                    let keys = driver.topology_keys.as_ref()?;
                    keys.iter()
                        .any(|k| k == names::TOPOLOGY_NODE_KEY)
                        .then_some(())?;
                    let node = nodes.get(&name).await.ok()?;
                    let label = node
                        .metadata
                        .labels?
                        .get(names::TOPOLOGY_NODE_KEY)
                        .cloned()?;
                    (label == name).then_some(())
                }
            },
        )
        .await;
    }

    /// kubelet's root directory (`--root-dir`): topolvm-node's `--kubelet-dir`.
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// Where kubelet looks for plugin registration sockets.
    pub fn registration_dir(&self) -> PathBuf {
        self.root.join("plugins_registry")
    }

    /// The CSI socket of our driver where a deployment puts it under kubelet's root
    /// (`<root>/plugins/topolvm.io/node/csi-topolvm.sock`, as TopoLVM's chart does).
    pub fn csi_socket(&self) -> PathBuf {
        self.root
            .join("plugins")
            .join(names::PLUGIN_NAME)
            .join("node")
            .join("csi-topolvm.sock")
    }

    /// kubelet's `/metrics` (read-only port). Large and slow to render under the VM's emulation:
    /// callers poll it and take an error as "not yet".
    pub async fn metrics(&self) -> std::io::Result<String> {
        http_get(self.read_only, "/metrics").await
    }

    /// kubelet's whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }

    /// The log's last `lines` lines.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.process.stop();
        // Before the unmounts: a loop device's backing file no longer has its path once the
        // mount it is on is detached.
        detach_loop_devices_under(&self.root);
        unmount_all_under(&self.root);
    }
}

/// Detaches the loop devices whose backing file is under `root`. kubelet holds each raw block
/// volume a pod maps open through a loop device on its device file under the root directory
/// (kubernetes/kubernetes pkg/volume/util/volumepathhandler, `AttachFileDevice`), and detaches
/// it when the pod goes; a kubelet stopped with such pods leaves them, and the LV stays in use.
fn detach_loop_devices_under(root: &Path) {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let backing =
            std::fs::read_to_string(entry.path().join("loop/backing_file")).unwrap_or_default();
        if Path::new(backing.trim_end()).starts_with(root) {
            let _ = Command::new("losetup")
                .arg("-d")
                .arg(format!("/dev/{name}"))
                .output();
        }
    }
}

/// The kubelet binary built with the control plane.
fn kubelet_binary() -> PathBuf {
    let path = k8s_bin_dir().join("kubelet");
    assert!(
        path.exists(),
        "no kubelet at {path:?}: run e2e/scripts/build-control-plane.sh"
    );
    path
}

/// The KubeletConfiguration; see the module documentation for each choice.
fn configuration(
    cluster: &Cluster,
    read_only: SocketAddr,
    healthz: SocketAddr,
) -> serde_json::Value {
    let ca = cluster
        .ca_file()
        .expect("kubelet runs against a cluster the test bed runs");
    let (gate, on) = GENERIC_EPHEMERAL_VOLUME
        .split_once('=')
        .expect("Name=value");
    json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": free_port(),
        "readOnlyPort": read_only.port(),
        "healthzBindAddress": healthz.ip().to_string(),
        "healthzPort": healthz.port(),
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": false},
            "x509": {"clientCAFile": ca},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "failSwapOn": false,
        "makeIPTablesUtilChains": false,
        "resolvConf": "",
        "syncFrequency": "10s",
        "nodeStatusUpdateFrequency": "10s",
        "volumeStatsAggPeriod": "10s",
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": false,
        "featureGates": {gate: on == "true"},
    })
}

/// A pod's main process that waits for SIGTERM and exits at once, so deletion is quick.
pub const IDLE: &str = "trap 'exit 0' TERM; while :; do sleep 1; done";

/// A pod `name` in `default` running `script` with `sh -c` in the app image, on the host's
/// network, never pulling; `volumes` and the container's `volumeMounts`/`volumeDevices` as given.
pub fn app_pod(
    name: &str,
    script: &str,
    volumes: serde_json::Value,
    mounts: serde_json::Value,
) -> Pod {
    let mut container = json!({
        "name": "app",
        "image": crate::containerd::APP_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", script],
    });
    for (key, value) in mounts.as_object().into_iter().flatten() {
        container[key] = value.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "hostNetwork": true,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            "volumes": volumes,
        },
    }))
    .expect("a pod")
}

/// A pod `name` that idles with claim `claim` mounted at `/data`.
pub fn claim_pod(name: &str, claim: &str) -> Pod {
    app_pod(
        name,
        IDLE,
        json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]),
        json!({"volumeMounts": [{"name": "data", "mountPath": "/data"}]}),
    )
}

/// Runs `script` with `sh -c` inside container `container` of the running pod `pod` (in
/// `default`) through containerd, and returns its stdout; panics with stderr if it fails.
pub async fn exec(
    client: &Client,
    runtime: &Containerd,
    pod: &str,
    container: &str,
    script: &str,
) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p = pods
        .get(pod)
        .await
        .unwrap_or_else(|e| panic!("reading pod {pod}: {e}"));
    let id = p
        .status
        .and_then(|s| s.container_statuses)
        .into_iter()
        .flatten()
        .find(|c| c.name == container)
        .and_then(|c| c.container_id)
        .unwrap_or_else(|| panic!("pod {pod} has no running container {container}"));
    let id = id.strip_prefix("containerd://").unwrap_or(&id).to_owned();
    let exec_id = format!("e2e-{}", free_port());
    let out = runtime.ctr([
        "tasks",
        "exec",
        "--exec-id",
        &exec_id,
        &id,
        "/bin/sh",
        "-c",
        script,
    ]);
    assert!(
        out.status.success(),
        "`{script}` in {pod}/{container} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
