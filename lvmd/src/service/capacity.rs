//! What each device class has left: the figures of lvmd's Watch message, GetFreeBytes, and the
//! space checks of every mutation, all read from one [`ClassCapacity`].
//!
//! The pool gives its figures once ([`Pool::free`]); the Watch item carries them as TopoLVM's
//! lvmd does (`internal/lvmd/vgservice.go` @ 10cb5cf5ef02: `free_bytes` is VG free less spare
//! for a thick class and the raw VG free for a thin one, whose headroom under the overprovision
//! ratio is `thin_pool.overprovision_bytes`); and what new volumes may take is read back from
//! that item by the contract's own rule,
//! [`class_capacity_bytes`](topolvm_core::capacity_annotation::class_capacity_bytes), which
//! topolvm-node applies to write the Node's capacity annotations. So GetFreeBytes, the refusals
//! and the annotations cannot disagree.

use topolvm_core::capacity_annotation::class_capacity_bytes;
use topolvm_proto::lvmd as pb;

use super::{Error, Lvmd, Result};
use crate::config::DeviceClass;
use crate::pool::PoolFree;
use crate::state::Snapshot;

/// The capacity of one device class in one report.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassCapacity {
    pub device_class: String,
    /// Whether the class's volume group (and thin pool) exist.
    pub usable: bool,
    pub vg_size: u64,
    /// What the class's pool has left; all zero when the class is not usable.
    pub free: PoolFree,
}

impl ClassCapacity {
    /// The class's item of the Watch message.
    pub fn watch_item(&self) -> pb::WatchItem {
        pb::WatchItem {
            device_class: self.device_class.clone(),
            free_bytes: self.free.vg_available_bytes,
            size_bytes: self.vg_size,
            thin_pool: self.free.thin.as_ref().map(|t| pb::ThinPoolItem {
                data_percent: t.data_percent,
                metadata_percent: t.metadata_percent,
                overprovision_bytes: t.overprovision_free,
                size_bytes: t.pool_size,
            }),
        }
    }

    /// The bytes new volumes of the class may take: its capacity annotation, GetFreeBytes.
    pub fn new_volume_bytes(&self) -> u64 {
        class_capacity_bytes(&self.watch_item())
    }

    /// Refuses `wanted` bytes that the class does not have.
    pub(super) fn ensure_room(&self, wanted: u64) -> Result<()> {
        let free = self.new_volume_bytes();
        if wanted > free {
            return Err(Error::NoSpace {
                class: self.device_class.clone(),
                free,
                wanted,
            });
        }
        Ok(())
    }
}

/// The whole capacity picture sent to Watch subscribers.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityReport {
    /// What new volumes of the default class may take (`WatchResponse.free_bytes`).
    pub default_free: u64,
    pub classes: Vec<ClassCapacity>,
}

impl CapacityReport {
    /// The Watch message.
    pub fn watch_message(&self) -> pb::WatchResponse {
        pb::WatchResponse {
            free_bytes: self.default_free,
            items: self.classes.iter().map(ClassCapacity::watch_item).collect(),
        }
    }
}

impl Lvmd {
    /// The capacity of `dc` in `snap`.
    pub fn class_capacity(&self, dc: &DeviceClass, snap: &Snapshot) -> ClassCapacity {
        match Self::class_vg(dc, snap) {
            Ok(vg) => ClassCapacity {
                device_class: dc.name.clone(),
                usable: true,
                vg_size: vg.size,
                free: dc.pool.free(vg),
            },
            Err(_) => ClassCapacity {
                device_class: dc.name.clone(),
                usable: false,
                vg_size: 0,
                free: PoolFree {
                    vg_available_bytes: 0,
                    thin: None,
                },
            },
        }
    }

    /// The capacity of every device class in `snap`.
    pub fn capacity_report(&self, snap: &Snapshot) -> CapacityReport {
        let classes: Vec<ClassCapacity> = self
            .config
            .device_classes
            .iter()
            .map(|dc| self.class_capacity(dc, snap))
            .collect();
        let default_name = &self.config.default_device_class().name;
        let default_free = classes
            .iter()
            .find(|c| &c.device_class == default_name)
            .map_or(0, ClassCapacity::new_volume_bytes);
        CapacityReport {
            default_free,
            classes,
        }
    }

    /// The bytes new volumes of a device class may use.
    pub fn free_bytes(&self, device_class: &str) -> Result<u64> {
        let dc = self.device_class(device_class)?;
        let snap = self.cache.current();
        Self::class_vg(dc, &snap)?;
        Ok(self.class_capacity(dc, &snap).new_volume_bytes())
    }

    /// Refuses a new volume or snapshot of `wanted` bytes that `dc` has no room for, or that its
    /// pool does not take now (a thin pool above its data usage threshold).
    pub(super) fn ensure_room_for_new(
        &self,
        dc: &DeviceClass,
        snap: &Snapshot,
        wanted: u64,
    ) -> Result<()> {
        let cap = self.class_capacity(dc, snap);
        cap.ensure_room(wanted)?;
        if let Some(full) = dc.pool.overfull(&dc.volume_group, &cap.free) {
            return Err(Error::ThinPoolFull {
                pool: full.pool,
                percent: full.percent,
                threshold: full.threshold,
            });
        }
        Ok(())
    }
}
