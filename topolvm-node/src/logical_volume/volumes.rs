//! The lvmd calls the reconciler and the orphan scan make, behind a trait so the logic above
//! them can be unit-tested with a fake; production goes through [`LvmdConnection`], the same
//! gRPC client whichever way lvmd runs.

use std::future::Future;

use topolvm_proto::lvmd as pb;

use crate::lvmd_client::LvmdConnection;

/// The LV operations of lvmd's `LVService` that topolvm-node's reconciler needs. Errors are
/// lvmd's gRPC statuses, whose codes the reconciler records in `status.code`.
pub trait Volumes: Send + Sync + 'static {
    fn create_lv(
        &self,
        request: pb::CreateLvRequest,
    ) -> impl Future<Output = Result<pb::LogicalVolume, tonic::Status>> + Send;

    fn create_snapshot(
        &self,
        request: pb::CreateLvSnapshotRequest,
    ) -> impl Future<Output = Result<pb::LogicalVolume, tonic::Status>> + Send;

    /// The new size in bytes.
    fn resize_lv(
        &self,
        request: pb::ResizeLvRequest,
    ) -> impl Future<Output = Result<i64, tonic::Status>> + Send;

    fn remove_lv(
        &self,
        request: pb::RemoveLvRequest,
    ) -> impl Future<Output = Result<(), tonic::Status>> + Send;

    fn list_lvs(
        &self,
        device_class: &str,
    ) -> impl Future<Output = Result<Vec<pb::LogicalVolume>, tonic::Status>> + Send;
}

/// A response without the volume it must carry: lvmd broke its contract.
fn missing_volume() -> tonic::Status {
    tonic::Status::internal("lvmd answered without a volume")
}

impl Volumes for LvmdConnection {
    async fn create_lv(
        &self,
        request: pb::CreateLvRequest,
    ) -> Result<pb::LogicalVolume, tonic::Status> {
        let response = self.lv().create_lv(request).await?.into_inner();
        response.volume.ok_or_else(missing_volume)
    }

    async fn create_snapshot(
        &self,
        request: pb::CreateLvSnapshotRequest,
    ) -> Result<pb::LogicalVolume, tonic::Status> {
        let response = self.lv().create_lv_snapshot(request).await?.into_inner();
        response.snapshot.ok_or_else(missing_volume)
    }

    async fn resize_lv(&self, request: pb::ResizeLvRequest) -> Result<i64, tonic::Status> {
        Ok(self.lv().resize_lv(request).await?.into_inner().size_bytes)
    }

    async fn remove_lv(&self, request: pb::RemoveLvRequest) -> Result<(), tonic::Status> {
        self.lv().remove_lv(request).await?;
        Ok(())
    }

    async fn list_lvs(&self, device_class: &str) -> Result<Vec<pb::LogicalVolume>, tonic::Status> {
        let request = pb::GetLvListRequest {
            device_class: device_class.to_owned(),
        };
        Ok(self.vg().get_lv_list(request).await?.into_inner().volumes)
    }
}
