//! Finding a volume on this node, by asking lvmd only.
//!
//! TopoLVM finds the LogicalVolume object whose `status.volumeID` is the volume ID through the
//! API server, then asks lvmd for the LV of the object's device class. We skip the API server
//! on purpose: for each device class of lvmd's latest Watch report we list the class's LVs and
//! take the one named `volume_id` (the LV name is the volume ID in TopoLVM and here). That works
//! for inline ephemeral volumes, which have no LogicalVolume, and while the API server is down;
//! a volume missing from every class is `NOT_FOUND`, never `UNKNOWN` (TopoLVM issue #1064).

use topolvm_core::names::parse_lv_tag_device_class;
use topolvm_proto::lvmd as pb;
use tracing::debug;

use super::Error;
use crate::lvmd_client::{LatestReport, LvmdConnection, device_classes};

/// A volume found in lvmd.
#[derive(Debug, Clone)]
pub struct Located {
    /// The device class to name in RemoveLV/ResizeLV: the class of lvmd's
    /// `topolvm.io/device-class` tag, else the first class listing it.
    pub device_class: String,
    pub volume: pb::LogicalVolume,
}

impl Located {
    pub fn path(&self) -> &std::path::Path {
        std::path::Path::new(&self.volume.path)
    }

    pub fn size(&self) -> u64 {
        u64::try_from(self.volume.size_bytes).unwrap_or(0)
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.volume.tags.iter().any(|t| t == tag)
    }
}

/// Finds the LV named `volume_id` in the device classes lvmd last reported.
pub async fn locate(
    lvmd: &LvmdConnection,
    report: &LatestReport,
    volume_id: &str,
) -> Result<Located, Error> {
    let latest = report.borrow().clone();
    let Some(latest) = latest else {
        return Err(Error::LvmdNotReady);
    };
    for class in device_classes(&latest) {
        let answer = lvmd
            .vg()
            .get_lv_list(pb::GetLvListRequest {
                device_class: class.clone(),
            })
            .await;
        let volumes = match answer {
            Ok(list) => list.into_inner().volumes,
            // A class removed from lvmd's config since the report.
            Err(status) if status.code() == tonic::Code::NotFound => {
                debug!(class, "device class gone from lvmd");
                continue;
            }
            Err(status) => {
                return Err(Error::Lvmd {
                    operation: "GetLVList",
                    code: status.code(),
                    message: status.message().to_owned(),
                });
            }
        };
        if let Some(volume) = volumes.into_iter().find(|v| v.name == volume_id) {
            let device_class = volume
                .tags
                .iter()
                .find_map(|t| parse_lv_tag_device_class(t))
                .map_or(class, ToOwned::to_owned);
            return Ok(Located {
                device_class,
                volume,
            });
        }
    }
    Err(Error::VolumeNotFound(volume_id.to_owned()))
}
