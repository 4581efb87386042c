//! The CSI Node service as tonic serves it: the one place where a CSI status is built, from the
//! domain [`Error`] below it.
//!
//! Calls about one volume run one at a time (a per-volume-ID lock, where TopoLVM has one global
//! mutex); calls about different volumes run side by side. A publish, unpublish or expansion
//! runs to its end in its own task even if kubelet gives up on the call, so a timeout never
//! leaves half a mkfs or a mount without its chmod; kubelet's retry then waits for the lock and
//! finds the finished work.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Instant;

use prometheus::Registry;
use tonic::{Code, Request, Response, Status};
use topolvm_core::names::TOPOLOGY_NODE_KEY;
use topolvm_csi_server::metrics::{RpcMetricNames, RpcMetrics};
use topolvm_csi_server::unimplemented;
use topolvm_proto::csi;
use topolvm_proto::csi::node_service_capability::{self, rpc};
use topolvm_runtime::keyed_lock::KeyedLocks;
use tracing::{instrument, warn};

use super::volumes::{Usage, Volumes};
use super::{CsiOptions, Error, validate};
use crate::lvmd_client::{LatestReport, LvmdConnection};

/// The gRPC code of each domain failure (CSI spec v1.12.0, "Error Scheme" and the RPCs' error
/// tables).
pub fn code_of(error: &Error) -> Code {
    match error {
        Error::InvalidArgument(_) | Error::OutsideKubeletDir { .. } => Code::InvalidArgument,
        // "Exceeds capabilities" (NodePublishVolume), as TopoLVM.
        Error::UnsupportedAccessMode(_) => Code::FailedPrecondition,
        // "Volume does not exist" (NodePublishVolume, NodeGetVolumeStats, NodeExpandVolume).
        Error::VolumeNotFound(_) | Error::NotAtPath { .. } => Code::NotFound,
        // lvmd will answer later: kubelet retries.
        Error::LvmdNotReady => Code::Unavailable,
        Error::Lvmd { code, .. } => match code {
            Code::Unavailable
            | Code::ResourceExhausted
            | Code::OutOfRange
            | Code::AlreadyExists
            | Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::DeadlineExceeded => *code,
            _ => Code::Internal,
        },
        // "Volume published but is incompatible" (NodePublishVolume).
        Error::TargetBusy { .. } | Error::NotEphemeral(_) => Code::AlreadyExists,
        // The device is not in the state the call needs and retrying cannot change that: an
        // operator must act. Not INTERNAL (TopoLVM's choice for another filesystem), which
        // reads as our bug.
        Error::OtherFilesystem { .. }
        | Error::UnformattedReadOnly(_)
        | Error::ReadOnlyExpand(_)
        | Error::VolumeInactive(_) => Code::FailedPrecondition,
        Error::Os(_) | Error::Condition(_) => Code::Internal,
    }
}

fn status(error: &Error) -> Status {
    Status::new(code_of(error), error.to_string())
}

/// `topolvm_node_csi_*`.
const METRIC_NAMES: RpcMetricNames = RpcMetricNames {
    requests: (
        "topolvm_node_csi_requests_total",
        "CSI Node and Identity calls by method and gRPC code.",
    ),
    duration: (
        "topolvm_node_csi_request_duration_seconds",
        "Time taken by CSI Node calls, by method.",
    ),
    buckets: &[0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0],
};

/// The CSI Node service.
#[derive(Debug, Clone)]
pub struct NodeService {
    node_name: String,
    kubelet_dir: PathBuf,
    volumes: Volumes,
    locks: KeyedLocks,
    metrics: RpcMetrics,
}

impl NodeService {
    /// A Node service for `options`, with its metrics in `registry`.
    pub fn new(
        options: &CsiOptions,
        lvmd: LvmdConnection,
        report: LatestReport,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        Ok(Self {
            node_name: options.node_name.clone(),
            kubelet_dir: options.kubelet_dir.clone(),
            volumes: Volumes { lvmd, report },
            locks: KeyedLocks::default(),
            metrics: RpcMetrics::register(registry, METRIC_NAMES)?,
        })
    }

    /// The tonic server of this service.
    pub fn server(self) -> csi::node_server::NodeServer<Self> {
        csi::node_server::NodeServer::new(self)
    }

    /// Runs `work` for `volume_id` under its lock in a task of its own, so that it finishes
    /// even when the caller goes away; counts the call.
    async fn locked<T, F, Fut>(&self, method: &str, volume_id: String, work: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(Volumes) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Error>> + Send + 'static,
    {
        let started = Instant::now();
        let locks = self.locks.clone();
        let volumes = self.volumes.clone();
        let task = tokio::spawn(async move {
            let _guard = locks.lock(&volume_id).await;
            work(volumes).await
        });
        let result = match task.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                warn!(method, error = %error, "CSI call failed");
                Err(status(&error))
            }
            Err(join) => Err(Status::internal(format!("{method} task failed: {join}"))),
        };
        self.count(method, started, &result);
        result
    }

    fn count<T>(&self, method: &str, started: Instant, result: &Result<T, Status>) {
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.metrics.observe(method, code, started.elapsed());
    }

    /// Counts a call refused before any work.
    fn refuse(&self, method: &str, started: Instant, error: &Error) -> Status {
        let status = status(error);
        self.metrics
            .observe(method, status.code(), started.elapsed());
        status
    }

    #[cfg(test)]
    fn held_locks(&self) -> usize {
        self.locks.len()
    }
}

fn capability(kind: rpc::Type) -> csi::NodeServiceCapability {
    csi::NodeServiceCapability {
        r#type: Some(node_service_capability::Type::Rpc(
            node_service_capability::Rpc {
                r#type: kind as i32,
            },
        )),
    }
}

/// The Node capabilities TopoLVM announces; no STAGE_UNSTAGE_VOLUME.
pub fn node_capabilities() -> Vec<csi::NodeServiceCapability> {
    vec![
        capability(rpc::Type::GetVolumeStats),
        capability(rpc::Type::ExpandVolume),
        capability(rpc::Type::VolumeCondition),
    ]
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn stats_response(
    usage: Usage,
    condition: crate::volume_condition::VolumeCondition,
) -> csi::NodeGetVolumeStatsResponse {
    use csi::volume_usage::Unit;
    let mut entries = Vec::new();
    match usage {
        Usage::Filesystem(fs) => {
            if fs.bytes_total > 0 {
                entries.push(csi::VolumeUsage {
                    available: clamp(fs.bytes_available),
                    total: clamp(fs.bytes_total),
                    used: clamp(fs.bytes_used),
                    unit: Unit::Bytes as i32,
                });
            }
            if fs.inodes_total > 0 {
                entries.push(csi::VolumeUsage {
                    available: clamp(fs.inodes_free),
                    total: clamp(fs.inodes_total),
                    used: clamp(fs.inodes_used),
                    unit: Unit::Inodes as i32,
                });
            }
        }
        Usage::Block { size } => entries.push(csi::VolumeUsage {
            total: clamp(size),
            unit: Unit::Bytes as i32,
            ..Default::default()
        }),
    }
    csi::NodeGetVolumeStatsResponse {
        usage: entries,
        volume_condition: Some(csi::VolumeCondition {
            abnormal: condition.abnormal,
            message: condition.message,
        }),
    }
}

#[tonic::async_trait]
impl csi::node_server::Node for NodeService {
    #[instrument(skip_all, fields(volume_id = %_request.get_ref().volume_id))]
    async fn node_stage_volume(
        &self,
        _request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        unimplemented("NodeStageVolume", "STAGE_UNSTAGE_VOLUME")
    }

    #[instrument(skip_all, fields(volume_id = %_request.get_ref().volume_id))]
    async fn node_unstage_volume(
        &self,
        _request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        unimplemented("NodeUnstageVolume", "STAGE_UNSTAGE_VOLUME")
    }

    #[instrument(skip_all, fields(volume_id = %request.get_ref().volume_id, target_path = %request.get_ref().target_path))]
    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        const METHOD: &str = "NodePublishVolume";
        let started = Instant::now();
        let checked = validate::publish(request.get_ref(), &self.kubelet_dir)
            .map_err(|e| self.refuse(METHOD, started, &e))?;
        let volume_id = checked.volume_id.clone();
        self.locked(METHOD, volume_id, move |volumes| async move {
            volumes.publish(&checked).await
        })
        .await?;
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume_id = %request.get_ref().volume_id, target_path = %request.get_ref().target_path))]
    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        const METHOD: &str = "NodeUnpublishVolume";
        let started = Instant::now();
        let checked = validate::unpublish(request.get_ref(), &self.kubelet_dir)
            .map_err(|e| self.refuse(METHOD, started, &e))?;
        let volume_id = checked.volume_id.clone();
        self.locked(METHOD, volume_id, move |volumes| async move {
            volumes.unpublish(&checked).await
        })
        .await?;
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume_id = %request.get_ref().volume_id, volume_path = %request.get_ref().volume_path))]
    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        const METHOD: &str = "NodeGetVolumeStats";
        let started = Instant::now();
        let checked =
            validate::stats(request.get_ref()).map_err(|e| self.refuse(METHOD, started, &e))?;
        let volume_id = checked.volume_id.clone();
        let (usage, condition) = self
            .locked(METHOD, volume_id, move |volumes| async move {
                volumes.stats(&checked).await
            })
            .await?;
        Ok(Response::new(stats_response(usage, condition)))
    }

    #[instrument(skip_all, fields(volume_id = %request.get_ref().volume_id, volume_path = %request.get_ref().volume_path))]
    async fn node_expand_volume(
        &self,
        request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        const METHOD: &str = "NodeExpandVolume";
        let started = Instant::now();
        let checked =
            validate::expand(request.get_ref()).map_err(|e| self.refuse(METHOD, started, &e))?;
        let volume_id = checked.volume_id.clone();
        let kubelet_dir = self.kubelet_dir.clone();
        let size = self
            .locked(METHOD, volume_id, move |volumes| async move {
                volumes.expand(&checked, &kubelet_dir).await
            })
            .await?;
        Ok(Response::new(csi::NodeExpandVolumeResponse {
            capacity_bytes: clamp(size),
        }))
    }

    #[instrument(skip_all)]
    async fn node_get_capabilities(
        &self,
        _request: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        let started = Instant::now();
        self.metrics
            .observe("NodeGetCapabilities", Code::Ok, started.elapsed());
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: node_capabilities(),
        }))
    }

    #[instrument(skip_all)]
    async fn node_get_info(
        &self,
        _request: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        let started = Instant::now();
        self.metrics
            .observe("NodeGetInfo", Code::Ok, started.elapsed());
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.node_name.clone(),
            max_volumes_per_node: 0,
            accessible_topology: Some(csi::Topology {
                segments: HashMap::from([(TOPOLOGY_NODE_KEY.to_owned(), self.node_name.clone())]),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    //! Every Node RPC with each missing or bad field, against the code the CSI spec (v1.12.0)
    //! names for it. A small fake lvmd (only GetLVList) answers the lookups.
    use std::path::Path;
    use std::pin::Pin;
    use std::sync::Arc;

    use csi::node_server::Node;
    use csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume, access_mode};
    use tokio_util::sync::CancellationToken;
    use topolvm_proto::lvmd as pb;

    use super::*;
    use crate::lvmd_client::report_channel;

    /// An lvmd with one class `ssd` holding one volume `known`, which is mounted nowhere.
    #[derive(Debug, Clone)]
    struct FakeLvmd;

    #[tonic::async_trait]
    impl pb::vg_service_server::VgService for FakeLvmd {
        async fn get_lv_list(
            &self,
            request: Request<pb::GetLvListRequest>,
        ) -> Result<Response<pb::GetLvListResponse>, Status> {
            if request.get_ref().device_class != "ssd" {
                return Err(Status::not_found("no such device class"));
            }
            Ok(Response::new(pb::GetLvListResponse {
                volumes: vec![pb::LogicalVolume {
                    name: "known".into(),
                    dev_major: 254,
                    dev_minor: 77,
                    size_bytes: 1 << 30,
                    path: "/dev/vg/known".into(),
                    attr: "-wi-a-----".into(),
                    ..Default::default()
                }],
            }))
        }

        async fn get_free_bytes(
            &self,
            _request: Request<pb::GetFreeBytesRequest>,
        ) -> Result<Response<pb::GetFreeBytesResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        type WatchStream = Pin<
            Box<
                dyn tonic::codegen::tokio_stream::Stream<Item = Result<pb::WatchResponse, Status>>
                    + Send,
            >,
        >;

        async fn watch(
            &self,
            _request: Request<pb::Empty>,
        ) -> Result<Response<Self::WatchStream>, Status> {
            Err(Status::unimplemented("fake"))
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        kubelet: PathBuf,
        node: NodeService,
        registry: Registry,
        _stop: tokio_util::sync::DropGuard,
    }

    /// A Node service whose kubelet dir is a temp dir; `with_report` feeds it a Watch report
    /// naming the class `ssd`, else it has none yet.
    async fn fixture(with_report: bool) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubelet = dir.path().join("kubelet");
        std::fs::create_dir(&kubelet).expect("kubelet dir");
        let socket = dir.path().join("lvmd.sock");
        let listener = topolvm_runtime::unix::bind(&socket).await.expect("bind");
        let stop = CancellationToken::new();
        let routes =
            tonic::service::Routes::new(pb::vg_service_server::VgServiceServer::new(FakeLvmd));
        let served = socket.clone();
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = topolvm_runtime::unix::serve(listener, &served, routes, token).await;
        });
        let (sender, report) = report_channel();
        if with_report {
            sender.send_replace(Some(Arc::new(pb::WatchResponse {
                items: vec![pb::WatchItem {
                    device_class: "ssd".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })));
        }
        std::mem::forget(sender);
        let registry = Registry::new();
        let node = NodeService::new(
            &CsiOptions {
                socket: dir.path().join("csi.sock"),
                kubelet_dir: kubelet.clone(),
                node_name: "node-1".into(),
            },
            LvmdConnection::socket(&socket),
            report,
            &registry,
        )
        .expect("service");
        Fixture {
            dir,
            kubelet,
            node,
            registry,
            _stop: stop.drop_guard(),
        }
    }

    fn mount_cap(fs_type: &str, flags: &[&str], mode: access_mode::Mode) -> csi::VolumeCapability {
        csi::VolumeCapability {
            access_mode: Some(AccessMode { mode: mode as i32 }),
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: fs_type.into(),
                mount_flags: flags.iter().map(|f| (*f).to_owned()).collect(),
                volume_mount_group: String::new(),
            })),
        }
    }

    fn writer() -> csi::VolumeCapability {
        mount_cap("ext4", &[], access_mode::Mode::SingleNodeWriter)
    }

    fn block() -> csi::VolumeCapability {
        csi::VolumeCapability {
            access_mode: Some(AccessMode {
                mode: access_mode::Mode::SingleNodeWriter as i32,
            }),
            access_type: Some(AccessType::Block(BlockVolume {})),
        }
    }

    fn publish(
        id: &str,
        target: &Path,
        cap: Option<csi::VolumeCapability>,
    ) -> csi::NodePublishVolumeRequest {
        csi::NodePublishVolumeRequest {
            volume_id: id.into(),
            target_path: target.to_string_lossy().into_owned(),
            volume_capability: cap,
            ..Default::default()
        }
    }

    async fn publish_code(f: &Fixture, request: csi::NodePublishVolumeRequest) -> Code {
        match f.node.node_publish_volume(Request::new(request)).await {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        }
    }

    /// NodePublishVolume: "Missing required field" and "Invalid or unsupported field" are
    /// INVALID_ARGUMENT (Error Scheme); an access mode the volume cannot do is
    /// FAILED_PRECONDITION ("Exceeds capabilities"); a volume not on the node is NOT_FOUND
    /// ("Volume does not exist").
    #[tokio::test]
    async fn publish_validation_table() {
        let f = fixture(true).await;
        let target = f.kubelet.join("pods/p/volumes/kubernetes.io~csi/pv/mount");
        let mut no_mode = writer();
        no_mode.access_mode = None;
        let mut no_type = writer();
        no_type.access_type = None;
        let mut group = writer();
        if let Some(AccessType::Mount(m)) = group.access_type.as_mut() {
            m.volume_mount_group = "1000".into();
        }
        let mut readonly_rw = publish(
            "known",
            &target,
            Some(mount_cap(
                "xfs",
                &["rw"],
                access_mode::Mode::SingleNodeWriter,
            )),
        );
        readonly_rw.readonly = true;
        let outside = f.dir.path().join("elsewhere/mount");
        let sneaky = PathBuf::from(format!("{}/../elsewhere/mount", f.kubelet.display()));
        let mut bad_ephemeral = publish("pvc-not-kubelets", &target, Some(writer()));
        bad_ephemeral
            .volume_context
            .insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
        let cases: Vec<(&str, csi::NodePublishVolumeRequest, Code)> = vec![
            (
                "no volume_id",
                publish("", &target, Some(writer())),
                Code::InvalidArgument,
            ),
            (
                "no target_path",
                publish("known", Path::new(""), Some(writer())),
                Code::InvalidArgument,
            ),
            (
                "no capability",
                publish("known", &target, None),
                Code::InvalidArgument,
            ),
            (
                "no access mode",
                publish("known", &target, Some(no_mode)),
                Code::InvalidArgument,
            ),
            (
                "no access type",
                publish("known", &target, Some(no_type)),
                Code::InvalidArgument,
            ),
            (
                "multi-node access",
                publish(
                    "known",
                    &target,
                    Some(mount_cap(
                        "ext4",
                        &[],
                        access_mode::Mode::MultiNodeMultiWriter,
                    )),
                ),
                Code::FailedPrecondition,
            ),
            (
                "single-node multi-writer",
                publish(
                    "known",
                    &target,
                    Some(mount_cap(
                        "ext4",
                        &[],
                        access_mode::Mode::SingleNodeMultiWriter,
                    )),
                ),
                Code::FailedPrecondition,
            ),
            (
                "unknown filesystem",
                publish(
                    "known",
                    &target,
                    Some(mount_cap("ntfs", &[], access_mode::Mode::SingleNodeWriter)),
                ),
                Code::InvalidArgument,
            ),
            (
                "empty mount flag",
                publish(
                    "known",
                    &target,
                    Some(mount_cap(
                        "ext4",
                        &[""],
                        access_mode::Mode::SingleNodeWriter,
                    )),
                ),
                Code::InvalidArgument,
            ),
            (
                "volume_mount_group without the capability",
                publish("known", &target, Some(group)),
                Code::InvalidArgument,
            ),
            ("rw with readonly", readonly_rw, Code::InvalidArgument),
            (
                "relative target",
                publish("known", Path::new("pods/x/mount"), Some(writer())),
                Code::InvalidArgument,
            ),
            (
                "target outside the kubelet dir",
                publish("known", &outside, Some(writer())),
                Code::InvalidArgument,
            ),
            (
                "target escaping with ..",
                publish("known", &sneaky, Some(writer())),
                Code::InvalidArgument,
            ),
            (
                "target is the kubelet dir",
                publish("known", &f.kubelet, Some(writer())),
                Code::InvalidArgument,
            ),
            (
                "inline volume with a made-up id",
                bad_ephemeral,
                Code::InvalidArgument,
            ),
            (
                "unknown volume",
                publish("unknown", &target, Some(writer())),
                Code::NotFound,
            ),
            (
                "unknown block volume",
                publish("unknown", &target, Some(block())),
                Code::NotFound,
            ),
        ];
        for (name, request, want) in cases {
            assert_eq!(publish_code(&f, request).await, want, "{name}");
        }
        assert!(!target.exists(), "no refused publish made its target");
        assert_eq!(f.node.held_locks(), 0);
    }

    #[tokio::test]
    async fn publish_before_lvmds_first_report_is_unavailable() {
        let f = fixture(false).await;
        let target = f.kubelet.join("pods/p/volumes/kubernetes.io~csi/pv/mount");
        assert_eq!(
            publish_code(&f, publish("known", &target, Some(writer()))).await,
            Code::Unavailable
        );
    }

    #[tokio::test]
    async fn a_symlink_out_of_the_kubelet_dir_is_refused() {
        let f = fixture(true).await;
        let elsewhere = f.dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("dir");
        std::os::unix::fs::symlink(&elsewhere, f.kubelet.join("pods")).expect("symlink");
        let target = f.kubelet.join("pods/p/volumes/kubernetes.io~csi/pv/mount");
        assert_eq!(
            publish_code(&f, publish("known", &target, Some(writer()))).await,
            Code::InvalidArgument
        );
        let unpublish = f
            .node
            .node_unpublish_volume(Request::new(csi::NodeUnpublishVolumeRequest {
                volume_id: "known".into(),
                target_path: target.to_string_lossy().into_owned(),
            }))
            .await;
        assert_eq!(
            unpublish.expect_err("refused").code(),
            Code::InvalidArgument
        );
        assert!(
            std::fs::read_dir(&elsewhere)
                .expect("read")
                .next()
                .is_none()
        );
    }

    /// NodeUnpublishVolume: missing fields are INVALID_ARGUMENT; a target that is already gone
    /// is success ("This operation MUST be idempotent").
    #[tokio::test]
    async fn unpublish_validation_and_idempotence() {
        let f = fixture(false).await;
        let target = f.kubelet.join("pods/p/volumes/kubernetes.io~csi/pv/mount");
        let call = |id: &str, path: &str| csi::NodeUnpublishVolumeRequest {
            volume_id: id.into(),
            target_path: path.into(),
        };
        let t = target.to_string_lossy().into_owned();
        for (name, request, want) in [
            ("no volume_id", call("", &t), Code::InvalidArgument),
            ("no target_path", call("known", ""), Code::InvalidArgument),
            (
                "outside the kubelet dir",
                call("known", "/etc/passwd"),
                Code::InvalidArgument,
            ),
            // No lvmd report needed for a persistent volume's unpublish.
            ("target already gone", call("known", &t), Code::Ok),
        ] {
            let got = match f.node.node_unpublish_volume(Request::new(request)).await {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            };
            assert_eq!(got, want, "{name}");
        }
        // An empty directory left by an earlier publish is removed (csi-sanity "should remove
        // target path").
        std::fs::create_dir_all(&target).expect("target");
        f.node
            .node_unpublish_volume(Request::new(call("known", &t)))
            .await
            .expect("unpublish");
        assert!(!target.exists());
    }

    /// NodeGetVolumeStats: missing fields INVALID_ARGUMENT; "Volume does not exist" (no such
    /// volume, or not at that path) NOT_FOUND.
    #[tokio::test]
    async fn stats_validation_table() {
        let f = fixture(true).await;
        let dir = f.kubelet.join("some-dir");
        std::fs::create_dir(&dir).expect("dir");
        let call = |id: &str, path: &str| csi::NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: path.into(),
            ..Default::default()
        };
        let d = dir.to_string_lossy().into_owned();
        for (name, request, want) in [
            ("no volume_id", call("", &d), Code::InvalidArgument),
            ("no volume_path", call("known", ""), Code::InvalidArgument),
            (
                "path that does not exist",
                call("known", "some/path"),
                Code::NotFound,
            ),
            ("unknown volume", call("unknown", &d), Code::NotFound),
            // `known` is not mounted at this directory.
            ("wrong path", call("known", &d), Code::NotFound),
        ] {
            let got = match f.node.node_get_volume_stats(Request::new(request)).await {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            };
            assert_eq!(got, want, "{name}");
        }
    }

    /// NodeExpandVolume: missing fields and a bad capacity range INVALID_ARGUMENT; "Volume does
    /// not exist" NOT_FOUND.
    #[tokio::test]
    async fn expand_validation_table() {
        let f = fixture(true).await;
        let dir = f.kubelet.join("pods/p/volumes/kubernetes.io~csi/pv/mount");
        std::fs::create_dir_all(&dir).expect("dir");
        let d = dir.to_string_lossy().into_owned();
        let call = |id: &str, path: &str, range: Option<(i64, i64)>| csi::NodeExpandVolumeRequest {
            volume_id: id.into(),
            volume_path: path.into(),
            capacity_range: range.map(|(required_bytes, limit_bytes)| csi::CapacityRange {
                required_bytes,
                limit_bytes,
            }),
            ..Default::default()
        };
        let mut bad_cap = call("known", &d, None);
        bad_cap.volume_capability = Some(mount_cap(
            "ext4",
            &[],
            access_mode::Mode::MultiNodeMultiWriter,
        ));
        for (name, request, want) in [
            ("no volume_id", call("", &d, None), Code::InvalidArgument),
            (
                "no volume_path",
                call("known", "", None),
                Code::InvalidArgument,
            ),
            (
                "negative required",
                call("known", &d, Some((-1, 0))),
                Code::InvalidArgument,
            ),
            (
                "negative limit",
                call("known", &d, Some((0, -1))),
                Code::InvalidArgument,
            ),
            (
                "required above limit",
                call("known", &d, Some((2 << 30, 1 << 30))),
                Code::InvalidArgument,
            ),
            ("unsupported access mode", bad_cap, Code::FailedPrecondition),
            (
                "unknown volume",
                call("unknown", &d, Some((1 << 30, 0))),
                Code::NotFound,
            ),
            ("not mounted there", call("known", &d, None), Code::NotFound),
            // csi-sanity (csi-test v5.4, "should fail when volume is not found") sends an
            // unknown id with the relative path "some/path": the lookup answers first.
            (
                "unknown volume at a relative path",
                call("unknown", "some/path", None),
                Code::NotFound,
            ),
            (
                "known volume at a relative path",
                call("known", "some/path", None),
                Code::InvalidArgument,
            ),
            (
                "known volume outside the kubelet directory",
                call("known", "/etc", None),
                Code::InvalidArgument,
            ),
        ] {
            let got = match f.node.node_expand_volume(Request::new(request)).await {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            };
            assert_eq!(got, want, "{name}");
        }
    }

    /// No STAGE_UNSTAGE_VOLUME capability, so the spec's "Call not implemented" applies.
    #[tokio::test]
    async fn stage_and_unstage_are_unimplemented() {
        let f = fixture(true).await;
        let stage = f
            .node
            .node_stage_volume(Request::new(Default::default()))
            .await
            .expect_err("stage");
        assert_eq!(stage.code(), Code::Unimplemented);
        let unstage = f
            .node
            .node_unstage_volume(Request::new(Default::default()))
            .await
            .expect_err("unstage");
        assert_eq!(unstage.code(), Code::Unimplemented);
    }

    #[tokio::test]
    async fn capabilities_and_info_as_topolvm() {
        let f = fixture(false).await;
        let caps = f
            .node
            .node_get_capabilities(Request::new(Default::default()))
            .await
            .expect("caps")
            .into_inner()
            .capabilities;
        let names: Vec<&str> = caps
            .iter()
            .map(|c| match c.r#type.as_ref().expect("type") {
                node_service_capability::Type::Rpc(r) => {
                    rpc::Type::try_from(r.r#type).expect("known").as_str_name()
                }
            })
            .collect();
        // TopoLVM's internal/driver/node.go list, spelled as in csi.proto.
        assert_eq!(
            names,
            ["GET_VOLUME_STATS", "EXPAND_VOLUME", "VOLUME_CONDITION"]
        );
        let info = f
            .node
            .node_get_info(Request::new(Default::default()))
            .await
            .expect("info")
            .into_inner();
        assert_eq!(info.node_id, "node-1");
        assert_eq!(info.max_volumes_per_node, 0);
        assert_eq!(
            info.accessible_topology.expect("topology").segments,
            HashMap::from([("topology.topolvm.io/node".to_owned(), "node-1".to_owned())])
        );
    }

    #[tokio::test]
    async fn calls_are_counted_by_method_and_code() {
        let f = fixture(true).await;
        let target = f.kubelet.join("pods/p/volumes/kubernetes.io~csi/pv/mount");
        publish_code(&f, publish("", &target, Some(writer()))).await;
        publish_code(&f, publish("unknown", &target, Some(writer()))).await;
        let text = topolvm_runtime::endpoints::render(&f.registry).expect("render");
        assert!(
            text.contains(
                r#"topolvm_node_csi_requests_total{code="InvalidArgument",method="NodePublishVolume"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"topolvm_node_csi_requests_total{code="NotFound",method="NodePublishVolume"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"topolvm_node_csi_request_duration_seconds_count{method="NodePublishVolume"} 2"#
        ));
    }

    /// Work on one volume ID runs one at a time; work on another volume does not wait for it.
    #[tokio::test]
    async fn one_lock_per_volume_id() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let f = fixture(false).await;
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let call = |id: &'static str| {
            let (running, most) = (running.clone(), most.clone());
            let node = f.node.clone();
            async move {
                node.locked("Test", id.to_owned(), move |_| async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, Error>(())
                })
                .await
            }
        };
        let (a, b, c) = tokio::join!(call("v1"), call("v1"), call("v1"));
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        assert_eq!(most.load(Ordering::SeqCst), 1, "same volume: one at a time");
        let (a, b) = tokio::join!(call("v1"), call("v2"));
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "different volumes: side by side"
        );
        assert_eq!(f.node.held_locks(), 0, "no lock left behind");
    }

    #[test]
    fn lvmd_codes_that_mean_something_to_kubelet_pass_through() {
        let lvmd = |code| Error::Lvmd {
            operation: "CreateLV",
            code,
            message: String::new(),
        };
        assert_eq!(
            code_of(&lvmd(Code::ResourceExhausted)),
            Code::ResourceExhausted
        );
        assert_eq!(code_of(&lvmd(Code::Unavailable)), Code::Unavailable);
        assert_eq!(code_of(&lvmd(Code::Unknown)), Code::Internal);
    }
}
