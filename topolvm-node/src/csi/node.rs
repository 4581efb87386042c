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
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tonic::{Code, Request, Response, Status};
use topolvm_core::names::TOPOLOGY_NODE_KEY;
use topolvm_proto::csi;
use topolvm_proto::csi::node_service_capability::{self, rpc};
use tracing::warn;

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

/// The gRPC code's name as gRPC-Go prints it (`OK`, `InvalidArgument`, ...).
fn code_label(code: Code) -> String {
    match code {
        Code::Ok => "OK".to_owned(),
        other => format!("{other:?}"),
    }
}

#[derive(Debug, Clone)]
struct Metrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl Metrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "topolvm_node_csi_requests_total",
                "CSI Node and Identity calls by method and gRPC code.",
            ),
            &["method", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "topolvm_node_csi_request_duration_seconds",
                "Time taken by CSI Node calls, by method.",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
            &["method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { requests, duration })
    }

    fn observe(&self, method: &str, started: Instant, code: Code) {
        self.requests
            .with_label_values(&[method, &code_label(code)])
            .inc();
        self.duration
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// One lock per volume ID, dropped from the map when nobody holds or waits for it.
#[derive(Debug, Default)]
struct VolumeLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

struct VolumeGuard {
    locks: Arc<VolumeLocks>,
    volume_id: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl VolumeLocks {
    async fn lock(self: &Arc<Self>, volume_id: &str) -> VolumeGuard {
        let mutex = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(volume_id.to_owned()).or_default().clone()
        };
        VolumeGuard {
            locks: self.clone(),
            volume_id: volume_id.to_owned(),
            guard: Some(mutex.lock_owned().await),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.0.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.volume_id)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.volume_id);
        }
    }
}

/// The CSI Node service.
#[derive(Debug, Clone)]
pub struct NodeService {
    node_name: String,
    kubelet_dir: PathBuf,
    volumes: Volumes,
    locks: Arc<VolumeLocks>,
    metrics: Metrics,
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
            locks: Arc::default(),
            metrics: Metrics::register(registry)?,
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
        self.metrics.observe(method, started, code);
    }

    /// Counts a call refused before any work.
    fn refuse(&self, method: &str, started: Instant, error: &Error) -> Status {
        let status = status(error);
        self.metrics.observe(method, started, status.code());
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
    async fn node_stage_volume(
        &self,
        _request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "NodeStageVolume: this plugin has no STAGE_UNSTAGE_VOLUME capability",
        ))
    }

    async fn node_unstage_volume(
        &self,
        _request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "NodeUnstageVolume: this plugin has no STAGE_UNSTAGE_VOLUME capability",
        ))
    }

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

    async fn node_expand_volume(
        &self,
        request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        const METHOD: &str = "NodeExpandVolume";
        let started = Instant::now();
        let checked = validate::expand(request.get_ref(), &self.kubelet_dir)
            .map_err(|e| self.refuse(METHOD, started, &e))?;
        let volume_id = checked.volume_id.clone();
        let size = self
            .locked(METHOD, volume_id, move |volumes| async move {
                volumes.expand(&checked).await
            })
            .await?;
        Ok(Response::new(csi::NodeExpandVolumeResponse {
            capacity_bytes: clamp(size),
        }))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        let started = Instant::now();
        self.metrics
            .observe("NodeGetCapabilities", started, Code::Ok);
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: node_capabilities(),
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        let started = Instant::now();
        self.metrics.observe("NodeGetInfo", started, Code::Ok);
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.node_name.clone(),
            max_volumes_per_node: 0,
            accessible_topology: Some(csi::Topology {
                segments: HashMap::from([(TOPOLOGY_NODE_KEY.to_owned(), self.node_name.clone())]),
            }),
        }))
    }
}
