//! The built-in registrar (`topolvm_node::registrar`) on a socket in a temporary directory, with
//! a client generated from the same proto playing kubelet: `GetInfo`, then
//! `NotifyRegistrationStatus`, as kubelet's plugin manager calls them
//! (kubernetes/kubernetes pkg/kubelet/pluginmanager/operationexecutor/operation_generator.go).
//! The real kubelet is the VM tier's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use topolvm_node::registrar::{self, RegistrarOptions, Retry};
use topolvm_proto::pluginregistration::registration_client::RegistrationClient;
use topolvm_proto::pluginregistration::{InfoRequest, PluginInfo, RegistrationStatus};
use topolvm_runtime::endpoints::Readiness;
use topolvm_test_kit::process::eventually;

/// The registrar's first retry delay: long beside the 100 ms polls of `eventually`, so the
/// test sees the old socket gone before the new one comes.
const RETRY: Duration = Duration::from_secs(1);
const WITHIN: Duration = Duration::from_secs(10);

const ENDPOINT: &str = "/var/lib/kubelet/plugins/topolvm.io/node/csi-topolvm.sock";

/// Whether kubelet's CSI handler takes these versions: the highest version that parses and has
/// a major version of at most 1 must be a 1.x (kubernetes/kubernetes pkg/volume/csi/csi_plugin.go
/// `validateVersions`, through `HighestSupportedVersion` and `ParseGeneric` of
/// kubernetes/kubernetes staging/src/k8s.io/apimachinery/pkg/util/version/version.go: an
/// optional `v`, then at least two dot-separated numbers without leading zeros).
fn kubelet_accepts_versions(versions: &[String]) -> bool {
    fn parse_generic(version: &str) -> Option<Vec<u64>> {
        let version = version.trim().strip_prefix('v').unwrap_or(version.trim());
        let numbers: &str = version.split(['-', '+']).next().unwrap_or_default();
        let parts: Vec<&str> = numbers.split('.').collect();
        if parts.len() < 2 {
            return None;
        }
        parts
            .iter()
            .map(|p| {
                let leading_zero = p.len() > 1 && p.starts_with('0');
                if leading_zero { None } else { p.parse().ok() }
            })
            .collect()
    }
    versions
        .iter()
        .filter_map(|v| parse_generic(v))
        .filter(|v| v[0] <= 1)
        .max()
        .is_some_and(|highest| highest[0] == 1)
}

/// kubelet's acceptance of a `GetInfo` answer before and in its CSI handler: a handler for
/// the type (the CSI handler is registered as `CSIPlugin`, kubernetes/kubernetes
/// staging/src/k8s.io/kubelet/pkg/apis/pluginregistration/v1/constants.go), a driver name,
/// versions it takes.
fn kubelet_accepts(info: &PluginInfo) -> bool {
    info.r#type == "CSIPlugin"
        && !info.name.is_empty()
        && kubelet_accepts_versions(&info.supported_versions)
}

struct Registrar {
    socket: PathBuf,
    registered: Readiness,
    shutdown: CancellationToken,
    served: JoinHandle<Result<(), registrar::Error>>,
    _dir: tempfile::TempDir,
}

impl Registrar {
    async fn start(before: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let registration_dir = dir.path().join("plugins_registry");
        std::fs::create_dir_all(&registration_dir).expect("the registration directory");
        let socket = registrar::socket_path(&registration_dir);
        before(&socket);
        let registered = Readiness::default();
        let shutdown = CancellationToken::new();
        let options = RegistrarOptions {
            registration_dir,
            endpoint: ENDPOINT.into(),
            retry: Retry {
                first: RETRY,
                max: Duration::from_secs(1),
            },
        };
        let served = tokio::spawn(registrar::serve(
            options,
            registered.clone(),
            shutdown.clone(),
        ));
        let registrar = Self {
            socket,
            registered,
            shutdown,
            served,
            _dir: dir,
        };
        registrar.socket_served().await;
        registrar
    }

    /// Waits until the socket is there and served.
    async fn socket_served(&self) {
        eventually("the registration socket served", WITHIN, || async {
            tokio::net::UnixStream::connect(&self.socket)
                .await
                .ok()
                .map(drop)
        })
        .await;
    }

    /// Waits until the socket file is gone (kubelet's plugin watcher sees it deleted).
    async fn socket_gone(&self) {
        eventually("the registration socket gone", WITHIN, || async {
            std::fs::symlink_metadata(&self.socket)
                .is_err()
                .then_some(())
        })
        .await;
    }

    /// A kubelet-like client; kubelet dials the socket path (gRPC-Go, authority `localhost`).
    async fn kubelet(&self) -> RegistrationClient<tonic::transport::Channel> {
        let channel = topolvm_runtime::unix::connect(&self.socket)
            .await
            .expect("dialing the registration socket");
        RegistrationClient::new(channel)
    }

    async fn stop(self) -> PathBuf {
        self.shutdown.cancel();
        self.served
            .await
            .expect("the registrar task")
            .expect("the registrar stops cleanly");
        self.socket.clone()
    }
}

/// kubelet's `NotifyRegistrationStatus`; the registrar acknowledges either outcome.
async fn notify(
    kubelet: &mut RegistrationClient<tonic::transport::Channel>,
    registered: bool,
    error: &str,
) {
    kubelet
        .notify_registration_status(RegistrationStatus {
            plugin_registered: registered,
            error: error.to_owned(),
        })
        .await
        .expect("NotifyRegistrationStatus is acknowledged");
}

#[tokio::test]
async fn get_info_is_what_kubelets_csi_handler_accepts() {
    let registrar = Registrar::start(|_| {}).await;
    assert!(
        registrar
            .socket
            .ends_with("plugins_registry/topolvm.io-reg.sock"),
        "node-driver-registrar's name <driver>-reg.sock: {}",
        registrar.socket.display()
    );
    assert!(
        !registrar.registered.is_ready(),
        "not ready before kubelet registered it"
    );
    let mut kubelet = registrar.kubelet().await;
    let info = kubelet
        .get_info(InfoRequest {})
        .await
        .expect("GetInfo")
        .into_inner();
    assert!(kubelet_accepts(&info), "kubelet would refuse {info:?}");
    // TopoLVM's driver name (its CSIDriver object) and the endpoint we were given.
    assert_eq!(info.name, "topolvm.io");
    assert_eq!(info.endpoint, ENDPOINT);

    notify(&mut kubelet, true, "").await;
    assert!(registrar.registered.is_ready());
    drop(kubelet);
    registrar.stop().await;
}

#[test]
fn kubelets_version_rule_refuses_what_it_refuses() {
    let versions = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert!(kubelet_accepts_versions(&versions(&["1.0.0"])));
    assert!(kubelet_accepts_versions(&versions(&[
        "0.3.0", "v1.2", "2.0.0"
    ])));
    assert!(!kubelet_accepts_versions(&versions(&[])));
    assert!(!kubelet_accepts_versions(&versions(&["0.3.0"])));
    assert!(!kubelet_accepts_versions(&versions(&["2.0.0"])));
    assert!(!kubelet_accepts_versions(&versions(&["1"])));
    assert!(!kubelet_accepts_versions(&versions(&["01.0"])));
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    let registrar = Registrar::start(|socket| {
        // A socket left by a registrar that died: bound, nobody listening.
        drop(std::os::unix::net::UnixListener::bind(socket).expect("a stale socket"));
        assert!(socket.exists());
    })
    .await;
    let mut kubelet = registrar.kubelet().await;
    kubelet
        .get_info(InfoRequest {})
        .await
        .expect("GetInfo on the new socket");
    drop(kubelet);
    registrar.stop().await;
}

#[tokio::test]
async fn a_refused_registration_is_not_ready_and_offers_a_new_socket() {
    let registrar = Registrar::start(|_| {}).await;
    let mut kubelet = registrar.kubelet().await;
    notify(&mut kubelet, true, "").await;
    assert!(registrar.registered.is_ready());

    // The text kubelet's operation generator sends when its CSI handler refuses the plugin.
    notify(
        &mut kubelet,
        false,
        "RegisterPlugin error -- plugin validation failed with err: validation failed",
    )
    .await;
    assert!(!registrar.registered.is_ready(), "refused: not ready");
    drop(kubelet);

    // The old socket goes (after RETRY), then a new one
    // comes; inode numbers cannot tell them apart, the file system reuses them.
    registrar.socket_gone().await;
    registrar.socket_served().await;
    let mut kubelet = registrar.kubelet().await;
    let info = kubelet
        .get_info(InfoRequest {})
        .await
        .expect("GetInfo on the new socket")
        .into_inner();
    assert!(kubelet_accepts(&info));
    notify(&mut kubelet, true, "").await;
    assert!(registrar.registered.is_ready(), "registered again");
    drop(kubelet);
    registrar.stop().await;
}

#[tokio::test]
async fn shutdown_removes_the_socket() {
    let registrar = Registrar::start(|_| {}).await;
    let socket = registrar.stop().await;
    assert!(
        std::fs::symlink_metadata(&socket).is_err(),
        "{} is still there",
        socket.display()
    );
}
