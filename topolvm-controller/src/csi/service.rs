//! The tonic implementation of the CSI Controller service: it reads requests, calls
//! [`Volumes`] and the pure rules of `request.rs`, and is the only place gRPC statuses are
//! built (from [`Error`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};
use topolvm_core::crd::{AccessType, LogicalVolumeSpec};
use topolvm_core::names;
use topolvm_core::quantity::format_bytes_quantity;
use topolvm_core::size::MinimumAllocation;
use topolvm_csi_server::metrics::{RpcMetricNames, RpcMetrics};
use topolvm_csi_server::unimplemented;
use topolvm_proto::csi;
use topolvm_proto::csi::controller_service_capability::{self, rpc};
use topolvm_proto::csi::volume_content_source;
use tracing::{info, instrument, warn};

use super::error::Error;
use super::request;
use super::volumes::{Volumes, Wanted};

/// The gRPC code of an error (the CSI spec v1.12.0 "Error Scheme" and the RPCs' "Errors"
/// tables, and TopoLVM's `internal/driver/controller.go` @ 061b806ae885).
pub fn code_of(error: &Error) -> Code {
    match error {
        Error::Missing { .. }
        | Error::NoCapacityRange
        | Error::InvalidName { .. }
        | Error::NoAccessType
        | Error::UnsupportedAccessMode { .. }
        | Error::NoTopologyKey { .. }
        | Error::UntypedContentSource
        | Error::Size(_)
        | Error::ClassDiffersFromSource { .. }
        | Error::SourceNodeExcluded { .. }
        | Error::InvalidObject { .. } => Code::InvalidArgument,
        // csi-sanity: a content source that does not exist, or has an empty id, is NOT_FOUND.
        Error::EmptySourceId | Error::NotFound { .. } => Code::NotFound,
        Error::AlreadyExists { .. } => Code::AlreadyExists,
        Error::NoCapacity { .. } => Code::ResourceExhausted,
        // The CSI spec: a capacity the plugin cannot provide from this source.
        Error::SmallerThanSource(_) => Code::OutOfRange,
        // The node's code as it recorded it: RESOURCE_EXHAUSTED must reach the provisioner
        // unchanged, it is what makes it reschedule.
        Error::Refused { code, .. } => Code::from_i32(*code),
        Error::Deadline { .. } | Error::Stopped { .. } => Code::DeadlineExceeded,
        // Retryable: the sidecars retry these in the background with the same arguments.
        Error::BeingDeleted { .. } | Error::NotSynced => Code::Unavailable,
        Error::NoNode | Error::UnreadableSize { .. } | Error::UnreadableCapacity { .. } => {
            Code::Internal
        }
        Error::Kube { source, .. } => match source {
            kube::Error::Api(s) if s.code == 422 => Code::InvalidArgument,
            kube::Error::Api(s) if s.code == 409 => Code::Aborted,
            kube::Error::Api(_) => Code::Internal,
            _ => Code::Unavailable,
        },
    }
}

/// The gRPC status of an error: its code and its message.
pub fn status_of(error: &Error) -> Status {
    Status::new(code_of(error), error.to_string())
}

/// The names of the `topolvm_controller_csi_*` metrics.
pub const METRIC_NAMES: RpcMetricNames = RpcMetricNames {
    requests: (
        "topolvm_controller_csi_requests_total",
        "CSI Controller requests by method and gRPC code.",
    ),
    duration: (
        "topolvm_controller_csi_request_duration_seconds",
        "How long CSI Controller requests took, by method.",
    ),
    buckets: &[
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ],
};

/// The Controller service.
#[derive(Debug, Clone)]
pub struct ControllerService {
    volumes: Volumes,
    minimum: Arc<MinimumAllocation>,
    metrics: RpcMetrics,
}

/// When to give up on a request with a `grpc-timeout` header: a little before the caller
/// does (a tenth of the timeout, at most 100 ms), so that it gets our DEADLINE_EXCEEDED and
/// its message rather than its own cancellation.
pub fn deadline_of<T>(request: &Request<T>) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_grpc_timeout(value)?;
    let margin = (timeout / 10).min(Duration::from_millis(100));
    Some(Instant::now() + timeout - margin)
}

/// gRPC's `TimeoutValue TimeoutUnit`: up to 8 digits and one of H M S m u n.
pub(super) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn topology(node: &str) -> csi::Topology {
    csi::Topology {
        segments: HashMap::from([(names::TOPOLOGY_NODE_KEY.to_owned(), node.to_owned())]),
    }
}

/// A StorageClass parameter, empty when unset (the default device class).
fn parameter<'a>(parameters: &'a HashMap<String, String>, key: &str) -> &'a str {
    parameters.get(key).map_or("", String::as_str)
}

fn bytes_i64(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

impl ControllerService {
    pub fn new(volumes: Volumes, minimum: MinimumAllocation, metrics: RpcMetrics) -> Self {
        Self {
            volumes,
            minimum: Arc::new(minimum),
            metrics,
        }
    }

    pub fn server(self) -> csi::controller_server::ControllerServer<Self> {
        csi::controller_server::ControllerServer::new(self)
    }

    /// Counts, times and logs one call.
    async fn observed<T>(
        &self,
        method: &'static str,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<Response<T>, Status> {
        let start = std::time::Instant::now();
        let result = work.await.map_err(|e| status_of(&e));
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(status) => {
                warn!(method, code = ?status.code(), message = status.message(), "CSI request failed");
                status.code()
            }
        };
        self.metrics.observe(method, code, start.elapsed());
        result.map(Response::new)
    }

    async fn create_volume(
        &self,
        req: csi::CreateVolumeRequest,
        deadline: Option<Instant>,
    ) -> Result<csi::CreateVolumeResponse, Error> {
        let access = request::check_create_capabilities(&req.volume_capabilities)?;
        let size = request::create_size(req.capacity_range.as_ref(), access, &self.minimum)?;
        let name = request::object_name(&req.name, "name")?;
        let device_class = parameter(&req.parameters, names::DEVICE_CLASS_PARAMETER).to_owned();
        let lvcreate_option_class =
            parameter(&req.parameters, names::LVCREATE_OPTION_CLASS_PARAMETER).to_owned();
        self.volumes.synced(deadline).await?;
        let requirements = req.accessibility_requirements.as_ref();
        let (node, source, access_type) = match &req.volume_content_source {
            None => {
                let node = self.volumes.cache().nodes(|nodes| {
                    request::choose_node(requirements, &device_class, size, nodes)
                })?;
                (node, String::new(), None)
            }
            Some(content) => {
                let id = match &content.r#type {
                    Some(volume_content_source::Type::Snapshot(s)) => &s.snapshot_id,
                    Some(volume_content_source::Type::Volume(v)) => &v.volume_id,
                    None => return Err(Error::UntypedContentSource),
                };
                if id.is_empty() {
                    return Err(Error::EmptySourceId);
                }
                let source = self
                    .volumes
                    .find_by_id(id)
                    .await?
                    .ok_or_else(|| Error::NotFound {
                        what: "content source",
                        id: id.clone(),
                    })?;
                let source_size =
                    source
                        .current_or_spec_size()
                        .ok_or_else(|| Error::UnreadableSize {
                            what: "content source",
                            id: id.clone(),
                        })?;
                topolvm_core::size::fits_source(size, source_size)?;
                if device_class != source.device_class {
                    return Err(Error::ClassDiffersFromSource {
                        class: names::device_class_for_humans(&device_class).to_owned(),
                        source_class: names::device_class_for_humans(&source.device_class)
                            .to_owned(),
                    });
                }
                if !request::node_allowed(requirements, &source.node_name) {
                    return Err(Error::SourceNodeExcluded {
                        node: source.node_name.clone(),
                    });
                }
                (
                    source.node_name.clone(),
                    source.name.clone(),
                    Some(AccessType::ReadWrite),
                )
            }
        };
        tracing::Span::current().record("node", node.as_str());
        let wanted = Wanted {
            name: name.clone(),
            spec: LogicalVolumeSpec {
                name: name.clone(),
                node_name: node.clone(),
                size: format_bytes_quantity(size),
                device_class,
                lvcreate_option_class,
                source,
                access_type,
            },
        };
        let _lock = self.volumes.names.lock(&name).await;
        let record = self.volumes.provision(&wanted, deadline).await?;
        info!(name, volume_id = %record.volume_id, node, "volume ready");
        Ok(csi::CreateVolumeResponse {
            volume: Some(csi::Volume {
                capacity_bytes: bytes_i64(record.current_or_spec_size().unwrap_or(size)),
                volume_id: record.volume_id.clone(),
                volume_context: HashMap::new(),
                content_source: req.volume_content_source,
                accessible_topology: vec![topology(&node)],
            }),
        })
    }

    async fn delete(&self, volume_id: &str, deadline: Option<Instant>) -> Result<(), Error> {
        if volume_id.is_empty() {
            return Err(Error::Missing { field: "the id" });
        }
        let _lock = self.volumes.ids.lock(volume_id).await;
        self.volumes.synced(deadline).await?;
        self.volumes.delete(volume_id, deadline).await
    }

    async fn expand(
        &self,
        req: csi::ControllerExpandVolumeRequest,
        deadline: Option<Instant>,
    ) -> Result<csi::ControllerExpandVolumeResponse, Error> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing { field: "volume_id" });
        }
        let size = request::expand_size(req.capacity_range.as_ref())?;
        let node_expansion_required =
            request::node_expansion_required(req.volume_capability.as_ref());
        let _lock = self.volumes.ids.lock(&req.volume_id).await;
        self.volumes.synced(deadline).await?;
        let record = self
            .volumes
            .find_by_id(&req.volume_id)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: "volume",
                id: req.volume_id.clone(),
            })?;
        let current = record
            .current_or_spec_size()
            .ok_or_else(|| Error::UnreadableSize {
                what: "volume",
                id: req.volume_id.clone(),
            })?;
        let capacity = if size <= current {
            current
        } else {
            self.volumes.expand(&record, size, deadline).await?
        };
        Ok(csi::ControllerExpandVolumeResponse {
            capacity_bytes: bytes_i64(capacity),
            node_expansion_required,
        })
    }

    async fn create_snapshot(
        &self,
        req: csi::CreateSnapshotRequest,
        deadline: Option<Instant>,
    ) -> Result<csi::CreateSnapshotResponse, Error> {
        let name = request::object_name(&req.name, "name")?;
        if req.source_volume_id.is_empty() {
            return Err(Error::Missing {
                field: "source_volume_id",
            });
        }
        self.volumes.synced(deadline).await?;
        let source = self
            .volumes
            .find_by_id(&req.source_volume_id)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: "source volume",
                id: req.source_volume_id.clone(),
            })?;
        let size = source
            .current_or_spec_size()
            .ok_or_else(|| Error::UnreadableSize {
                what: "source volume",
                id: req.source_volume_id.clone(),
            })?;
        let wanted = Wanted {
            name: name.clone(),
            spec: LogicalVolumeSpec {
                name: name.clone(),
                node_name: source.node_name.clone(),
                size: format_bytes_quantity(size),
                device_class: source.device_class.clone(),
                lvcreate_option_class: String::new(),
                source: source.name.clone(),
                access_type: Some(AccessType::ReadOnly),
            },
        };
        let _lock = self.volumes.names.lock(&name).await;
        let record = self.volumes.provision(&wanted, deadline).await?;
        let creation_time = record.created.map(|t| prost_types::Timestamp {
            seconds: t.as_second(),
            nanos: 0,
        });
        Ok(csi::CreateSnapshotResponse {
            snapshot: Some(csi::Snapshot {
                size_bytes: bytes_i64(record.current_or_spec_size().unwrap_or(size)),
                snapshot_id: record.volume_id.clone(),
                source_volume_id: req.source_volume_id,
                creation_time,
                ready_to_use: true,
                group_snapshot_id: String::new(),
            }),
        })
    }

    async fn validate(
        &self,
        req: csi::ValidateVolumeCapabilitiesRequest,
        deadline: Option<Instant>,
    ) -> Result<csi::ValidateVolumeCapabilitiesResponse, Error> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing { field: "volume_id" });
        }
        if req.volume_capabilities.is_empty() {
            return Err(Error::Missing {
                field: "volume_capabilities",
            });
        }
        let _lock = self.volumes.ids.lock(&req.volume_id).await;
        self.volumes.synced(deadline).await?;
        if self.volumes.find_by_id(&req.volume_id).await?.is_none() {
            return Err(Error::NotFound {
                what: "volume",
                id: req.volume_id.clone(),
            });
        }
        Ok(
            match request::unsupported_capability(&req.volume_capabilities) {
                Some(message) => csi::ValidateVolumeCapabilitiesResponse {
                    confirmed: None,
                    message,
                },
                None => csi::ValidateVolumeCapabilitiesResponse {
                    confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                        volume_context: req.volume_context,
                        volume_capabilities: req.volume_capabilities,
                        parameters: req.parameters,
                        mutable_parameters: req.mutable_parameters,
                    }),
                    message: String::new(),
                },
            },
        )
    }

    async fn get_capacity(
        &self,
        req: csi::GetCapacityRequest,
        deadline: Option<Instant>,
    ) -> Result<csi::GetCapacityResponse, Error> {
        self.volumes.synced(deadline).await?;
        let available = self.volumes.cache().nodes(|nodes| {
            request::capacity(&req.parameters, req.accessible_topology.as_ref(), nodes)
        })?;
        Ok(csi::GetCapacityResponse {
            available_capacity: available,
            maximum_volume_size: None,
            minimum_volume_size: None,
        })
    }
}

/// TopoLVM's controller capabilities, in its order.
pub fn controller_capabilities() -> Vec<csi::ControllerServiceCapability> {
    [
        rpc::Type::CreateDeleteVolume,
        rpc::Type::CloneVolume,
        rpc::Type::GetCapacity,
        rpc::Type::ExpandVolume,
        rpc::Type::CreateDeleteSnapshot,
    ]
    .into_iter()
    .map(|t| csi::ControllerServiceCapability {
        r#type: Some(controller_service_capability::Type::Rpc(
            controller_service_capability::Rpc { r#type: t as i32 },
        )),
    })
    .collect()
}

#[tonic::async_trait]
impl csi::controller_server::Controller for ControllerService {
    #[instrument(skip_all, fields(name = %request.get_ref().name, class = %parameter(&request.get_ref().parameters, names::DEVICE_CLASS_PARAMETER), node = tracing::field::Empty))]
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let deadline = deadline_of(&request);
        self.observed(
            "CreateVolume",
            self.create_volume(request.into_inner(), deadline),
        )
        .await
    }

    #[instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        self.observed("DeleteVolume", async {
            self.delete(&req.volume_id, deadline).await?;
            Ok(csi::DeleteVolumeResponse {})
        })
        .await
    }

    #[instrument(skip_all)]
    async fn controller_publish_volume(
        &self,
        _: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        unimplemented("ControllerPublishVolume", "PUBLISH_UNPUBLISH_VOLUME")
    }

    #[instrument(skip_all)]
    async fn controller_unpublish_volume(
        &self,
        _: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        unimplemented("ControllerUnpublishVolume", "PUBLISH_UNPUBLISH_VOLUME")
    }

    #[instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let deadline = deadline_of(&request);
        self.observed(
            "ValidateVolumeCapabilities",
            self.validate(request.into_inner(), deadline),
        )
        .await
    }

    #[instrument(skip_all)]
    async fn list_volumes(
        &self,
        _: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        unimplemented("ListVolumes", "LIST_VOLUMES")
    }

    #[instrument(skip_all, fields(class = %parameter(&request.get_ref().parameters, names::DEVICE_CLASS_PARAMETER), node = ?request.get_ref().accessible_topology.as_ref().and_then(|t| t.segments.get(names::TOPOLOGY_NODE_KEY))))]
    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let deadline = deadline_of(&request);
        self.observed(
            "GetCapacity",
            self.get_capacity(request.into_inner(), deadline),
        )
        .await
    }

    #[instrument(skip_all)]
    async fn controller_get_capabilities(
        &self,
        _: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        self.observed("ControllerGetCapabilities", async {
            Ok(csi::ControllerGetCapabilitiesResponse {
                capabilities: controller_capabilities(),
            })
        })
        .await
    }

    #[instrument(skip_all, fields(name = %request.get_ref().name, source_volume_id = %request.get_ref().source_volume_id))]
    async fn create_snapshot(
        &self,
        request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let deadline = deadline_of(&request);
        self.observed(
            "CreateSnapshot",
            self.create_snapshot(request.into_inner(), deadline),
        )
        .await
    }

    #[instrument(skip_all, fields(snapshot_id = %request.get_ref().snapshot_id))]
    async fn delete_snapshot(
        &self,
        request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        self.observed("DeleteSnapshot", async {
            self.delete(&req.snapshot_id, deadline).await?;
            Ok(csi::DeleteSnapshotResponse {})
        })
        .await
    }

    #[instrument(skip_all)]
    async fn list_snapshots(
        &self,
        _: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        unimplemented("ListSnapshots", "LIST_SNAPSHOTS")
    }

    #[instrument(skip_all)]
    async fn get_snapshot(
        &self,
        _: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        unimplemented("GetSnapshot", "GET_SNAPSHOT")
    }

    #[instrument(skip_all, fields(volume_id = %request.get_ref().volume_id, required_bytes = request.get_ref().capacity_range.as_ref().map(|r| r.required_bytes)))]
    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let deadline = deadline_of(&request);
        self.observed(
            "ControllerExpandVolume",
            self.expand(request.into_inner(), deadline),
        )
        .await
    }

    #[instrument(skip_all)]
    async fn controller_get_volume(
        &self,
        _: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        unimplemented("ControllerGetVolume", "GET_VOLUME")
    }

    #[instrument(skip_all)]
    async fn controller_modify_volume(
        &self,
        _: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        unimplemented("ControllerModifyVolume", "MODIFY_VOLUME")
    }
}
