//! The gRPC layer: LVService and VGService over [`Lvmd`], and the one mapping from
//! [`service::Error`] to gRPC status codes.
//!
//! Mutations run in their own task: a client that gives up (or a connection that drops) does not
//! abort an `lvcreate` half-way; the operation finishes, the cache is refreshed, and a retry of the
//! same request finds the finished volume. Shutdown waits for these tasks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Code, Request, Response, Status};
use topolvm_proto::lvmd as pb;
use tracing::{Instrument, instrument, warn};

use crate::lvm::LvmError;
use crate::lvm::report::LogicalVolume;
use crate::metrics::Metrics;
use crate::service::{self, CreateLv, CreateSnapshot, Lvmd};
use crate::state::Snapshot;

/// Maps a service error to the status code a CSI-side caller acts on.
pub fn status_of(error: service::Error) -> Status {
    use service::Error as E;
    let code = match &error {
        E::InvalidArgument(_) => Code::InvalidArgument,
        // TopoLVM answers NotFound for an unknown device class; callers rely on it.
        E::UnknownDeviceClass(_) | E::VolumeNotFound { .. } | E::NotInClass { .. } => {
            Code::NotFound
        }
        E::Unavailable { .. } => Code::Unavailable,
        E::Exists { .. } => Code::AlreadyExists,
        E::Shrink { .. } | E::SmallerThanSource(_) => Code::OutOfRange,
        E::NoSpace { .. } | E::ThinPoolFull { .. } => Code::ResourceExhausted,
        E::Lvm(e) if e.is_insufficient_space() => Code::ResourceExhausted,
        E::NotOwned { .. }
        | E::HasThickSnapshots { .. }
        | E::ThickSnapshotResize { .. }
        | E::UnsuitableSource { .. } => Code::FailedPrecondition,
        E::Vanished { .. } | E::CopyFailed { .. } => Code::Internal,
        E::Lvm(LvmError::TimedOut { .. }) => Code::DeadlineExceeded,
        E::Lvm(_) => Code::Internal,
    };
    Status::new(code, error.to_string())
}

fn to_pb_volume(lv: &LogicalVolume) -> pb::LogicalVolume {
    #[allow(deprecated)]
    pb::LogicalVolume {
        name: lv.name.clone(),
        size_gb: lv.size >> 30,
        dev_major: lv.kernel_major.unwrap_or(0),
        dev_minor: lv.kernel_minor.unwrap_or(0),
        tags: lv.tags.clone(),
        size_bytes: i64::try_from(lv.size).unwrap_or(i64::MAX),
        path: lv.path.clone(),
        attr: lv.attr.clone(),
    }
}

/// Implements both lvmd services.
#[derive(Debug, Clone)]
pub struct LvmdGrpc {
    lvmd: Arc<Lvmd>,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl LvmdGrpc {
    /// `tasks` tracks running mutations so shutdown can wait for them; `shutdown` ends Watch
    /// streams so the server can stop.
    pub fn new(
        lvmd: Arc<Lvmd>,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            lvmd,
            metrics,
            tasks,
            shutdown,
        }
    }

    async fn observed<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = call.await;
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        if let Err(status) = &result {
            warn!(method, code = ?status.code(), message = status.message(), "request failed");
        }
        self.metrics.observe_rpc(method, code, started.elapsed());
        result.map(Response::new)
    }

    /// Runs a mutation to completion even if the caller goes away, in the request's span.
    async fn detached<T, F>(&self, work: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, service::Error>> + Send + 'static,
    {
        self.tasks
            .spawn(work.in_current_span())
            .await
            .map_err(|e| Status::internal(format!("operation task failed: {e}")))?
            .map_err(status_of)
    }
}

#[tonic::async_trait]
impl pb::lv_service_server::LvService for LvmdGrpc {
    #[instrument(skip_all, fields(
        name = %request.get_ref().name,
        device_class = %request.get_ref().device_class,
        size_bytes = request.get_ref().size_bytes,
    ))]
    async fn create_lv(
        &self,
        request: Request<pb::CreateLvRequest>,
    ) -> Result<Response<pb::CreateLvResponse>, Status> {
        #[allow(deprecated)]
        let r = request.into_inner();
        #[allow(deprecated)]
        let req = CreateLv {
            name: r.name,
            device_class: r.device_class,
            lvcreate_option_class: r.lvcreate_option_class,
            size_bytes: r.size_bytes,
            size_gb: r.size_gb,
            tags: r.tags,
        };
        let lvmd = self.lvmd.clone();
        self.observed("CreateLV", async {
            let lv = self
                .detached(async move { lvmd.create_lv(req).await })
                .await?;
            Ok(pb::CreateLvResponse {
                volume: Some(to_pb_volume(&lv)),
            })
        })
        .await
    }

    #[instrument(skip_all, fields(
        name = %request.get_ref().name,
        device_class = %request.get_ref().device_class,
    ))]
    async fn remove_lv(
        &self,
        request: Request<pb::RemoveLvRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        let lvmd = self.lvmd.clone();
        self.observed("RemoveLV", async {
            self.detached(async move { lvmd.remove_lv(&r.name, &r.device_class).await })
                .await?;
            Ok(pb::Empty {})
        })
        .await
    }

    #[instrument(skip_all, fields(
        name = %request.get_ref().name,
        device_class = %request.get_ref().device_class,
        size_bytes = request.get_ref().size_bytes,
    ))]
    async fn resize_lv(
        &self,
        request: Request<pb::ResizeLvRequest>,
    ) -> Result<Response<pb::ResizeLvResponse>, Status> {
        #[allow(deprecated)]
        let r = request.into_inner();
        let lvmd = self.lvmd.clone();
        self.observed("ResizeLV", async {
            #[allow(deprecated)]
            let size_gb = r.size_gb;
            let size = self
                .detached(async move {
                    lvmd.resize_lv(&r.name, &r.device_class, r.size_bytes, size_gb)
                        .await
                })
                .await?;
            Ok(pb::ResizeLvResponse {
                size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
            })
        })
        .await
    }

    #[instrument(skip_all, fields(
        name = %request.get_ref().name,
        source = %request.get_ref().source_volume,
        device_class = %request.get_ref().device_class,
        access_type = %request.get_ref().access_type,
        size_bytes = request.get_ref().size_bytes,
    ))]
    async fn create_lv_snapshot(
        &self,
        request: Request<pb::CreateLvSnapshotRequest>,
    ) -> Result<Response<pb::CreateLvSnapshotResponse>, Status> {
        let r = request.into_inner();
        #[allow(deprecated)]
        let req = CreateSnapshot {
            name: r.name,
            device_class: r.device_class,
            source_volume: r.source_volume,
            access_type: r.access_type,
            size_bytes: r.size_bytes,
            size_gb: r.size_gb,
            tags: r.tags,
        };
        let lvmd = self.lvmd.clone();
        self.observed("CreateLVSnapshot", async {
            let lv = self
                .detached(async move { lvmd.create_snapshot(req).await })
                .await?;
            Ok(pb::CreateLvSnapshotResponse {
                snapshot: Some(to_pb_volume(&lv)),
            })
        })
        .await
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// A stream of Watch messages: the current one at once, then one per change of capacity.
fn watch_stream(
    lvmd: Arc<Lvmd>,
    rx: watch::Receiver<Arc<Snapshot>>,
    shutdown: CancellationToken,
) -> WatchStream {
    let state = (rx, None::<pb::WatchResponse>);
    Box::pin(futures::stream::unfold(state, move |(mut rx, last)| {
        let lvmd = lvmd.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut first = last.is_none();
            loop {
                if !first {
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        changed = rx.changed() => if changed.is_err() { return None },
                    }
                }
                first = false;
                let snap = rx.borrow_and_update().clone();
                let message = lvmd.capacity_report(&snap).watch_message();
                if last.as_ref() != Some(&message) {
                    return Some((Ok(message.clone()), (rx, Some(message))));
                }
            }
        }
    }))
}

#[tonic::async_trait]
impl pb::vg_service_server::VgService for LvmdGrpc {
    #[instrument(skip_all, fields(device_class = %request.get_ref().device_class))]
    async fn get_lv_list(
        &self,
        request: Request<pb::GetLvListRequest>,
    ) -> Result<Response<pb::GetLvListResponse>, Status> {
        let r = request.into_inner();
        self.observed("GetLVList", async {
            let lvs = self.lvmd.list_lvs(&r.device_class).map_err(status_of)?;
            Ok(pb::GetLvListResponse {
                volumes: lvs.iter().map(to_pb_volume).collect(),
            })
        })
        .await
    }

    #[instrument(skip_all, fields(device_class = %request.get_ref().device_class))]
    async fn get_free_bytes(
        &self,
        request: Request<pb::GetFreeBytesRequest>,
    ) -> Result<Response<pb::GetFreeBytesResponse>, Status> {
        let r = request.into_inner();
        self.observed("GetFreeBytes", async {
            let free_bytes = self.lvmd.free_bytes(&r.device_class).map_err(status_of)?;
            Ok(pb::GetFreeBytesResponse { free_bytes })
        })
        .await
    }

    type WatchStream = WatchStream;

    #[instrument(skip_all)]
    async fn watch(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let rx = self.lvmd.cache().subscribe();
        self.observed("Watch", async {
            Ok(watch_stream(self.lvmd.clone(), rx, self.shutdown.clone()))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes topolvm-node acts on, as TopoLVM's lvmd answers them (`internal/lvmd/lvservice.go`
    /// @ 035a95792be4: ResourceExhausted "not enough space left on VG" from CreateLV,
    /// CreateLVSnapshot and ResizeLV; NotFound for an unknown device class): ResourceExhausted is
    /// what makes external-provisioner reschedule a pod.
    #[test]
    fn topolvm_codes_for_space_and_unknown_classes() {
        let no_space = service::Error::NoSpace {
            class: "ssd".into(),
            free: 1,
            wanted: 2,
        };
        assert_eq!(status_of(no_space).code(), Code::ResourceExhausted);
        let lvm_no_space = service::Error::Lvm(LvmError::Failed {
            subcommand: "lvcreate".into(),
            exit_code: Some(5),
            stderr: include_str!("../tests/fixtures/lvcreate-nospace.stderr").into(),
        });
        assert_eq!(status_of(lvm_no_space).code(), Code::ResourceExhausted);
        let unknown = service::Error::UnknownDeviceClass("nvme".into());
        assert_eq!(status_of(unknown).code(), Code::NotFound);
        let other_failure = service::Error::Lvm(LvmError::Failed {
            subcommand: "lvcreate".into(),
            exit_code: Some(5),
            stderr: "  Internal error".into(),
        });
        assert_eq!(status_of(other_failure).code(), Code::Internal);
    }

    /// Our Watch message, read by topolvm-node through core, gives TopoLVM's annotations (as
    /// TopoLVM's `updateNode` in `internal/runners/metrics_exporter.go` @ 4284fc956e96 reads
    /// lvmd's `send`, `internal/lvmd/vgservice.go` @ 10cb5cf5ef02): a thin class is annotated with
    /// its overprovision headroom, not the raw VG free its item carries for the metrics, and with
    /// a thin default class `00default` has the same value as the class's own key (TopoLVM issue
    /// 622).
    #[test]
    fn watch_message_gives_topolvms_node_annotations() {
        use topolvm_core::capacity_annotation::node_capacity_annotations;

        use crate::pool::{PoolFree, ThinPoolUsage};
        use crate::service::CapacityReport;
        let report = CapacityReport {
            default_free: 30,
            classes: vec![
                service::ClassCapacity {
                    device_class: "thin".into(),
                    usable: true,
                    vg_size: 100,
                    free: PoolFree {
                        vg_available_bytes: 7,
                        thin: Some(ThinPoolUsage {
                            pool_size: 50,
                            data_percent: 1.0,
                            metadata_percent: 1.0,
                            overprovision_free: 30,
                        }),
                    },
                },
                service::ClassCapacity {
                    device_class: "thick".into(),
                    usable: true,
                    vg_size: 100,
                    free: PoolFree {
                        vg_available_bytes: 40,
                        thin: None,
                    },
                },
            ],
        };
        let message = report.watch_message();
        assert_eq!(message.items[0].free_bytes, 7, "metrics: raw VG free");
        let annotations = node_capacity_annotations(&message, None);
        let value = |key: &str| annotations.get(key).map(String::as_str);
        assert_eq!(value("capacity.topolvm.io/thin"), Some("30"));
        assert_eq!(value("capacity.topolvm.io/thick"), Some("40"));
        assert_eq!(value("capacity.topolvm.io/00default"), Some("30"));
    }
}
