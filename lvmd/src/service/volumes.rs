//! Volumes: CreateLV (idempotent by name and size, adopting TopoLVM's volumes), GetLVList,
//! ResizeLV (grow only) and RemoveLV (idempotent; never a thin pool or the origin of thick
//! snapshots).

use tracing::info;

use super::ownership::{Standing, standing, volume_tags};
use super::{
    CreateLv, Error, Lvmd, Result, class_layout, created_volume, granule, invalid, round_up,
    size_from,
};
use crate::config::DeviceClass;
use crate::lvm::args;
use crate::lvm::report::LogicalVolume;
use crate::lvm::validate;
use crate::state::Change;

impl Lvmd {
    /// Lists the volumes of a device class.
    pub fn list_lvs(&self, device_class: &str) -> Result<Vec<LogicalVolume>> {
        let dc = self.device_class(device_class)?;
        let snap = self.cache.current();
        let vg = Self::class_vg(dc, &snap)?;
        Ok(vg
            .lvs
            .values()
            .filter(|lv| !lv.is_thin_pool() && !matches!(standing(dc, lv), Standing::OtherClass(_)))
            .cloned()
            .collect())
    }

    /// Creates a volume; an existing volume of the same name and size is returned as it is.
    pub async fn create_lv(&self, req: CreateLv) -> Result<LogicalVolume> {
        validate::logical_volume_name(&req.name).map_err(invalid)?;
        let size = size_from(req.size_bytes, req.size_gb, "size_bytes")?
            .ok_or_else(|| Error::InvalidArgument("size_bytes must be positive".to_owned()))?;
        let dc = self.device_class(&req.device_class)?;
        let tags = volume_tags(&req.name, &dc.name, &req.tags)?;
        let option_class = if req.lvcreate_option_class.is_empty() {
            None
        } else {
            Some(
                self.config
                    .lvcreate_option_class(&req.lvcreate_option_class)
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "lvcreate option class {:?} is not configured",
                            req.lvcreate_option_class
                        ))
                    })?,
            )
        };

        let _lock = self.lock_vg(&dc.volume_group).await;
        let snap = self.cache.current();
        let vg = Self::class_vg(dc, &snap)?;
        let stripes = if option_class.is_some() {
            1
        } else {
            dc.stripe.unwrap_or(1)
        };
        let granule = granule(vg, stripes);
        let needed = round_up(size, granule)?;

        if let Some(existing) = vg.lvs.get(&req.name) {
            return self
                .existing_matches(dc, existing, size, needed, &req.tags)
                .await;
        }

        self.ensure_room_for_new(dc, &snap, needed)?;

        let layout = match option_class {
            Some(oc) => args::Layout {
                options: &oc.options,
                ..Default::default()
            },
            None => class_layout(dc),
        };
        let creation = dc.pool.create(vg, &req.name, size, needed, &tags, &layout);
        // Extra lvcreate options may change the layout (RAID, mirrors): then only a report can
        // tell what the volume took.
        let exact = layout.options.is_empty();
        let result = self
            .mutate(creation.argv.clone(), || {
                exact.then(|| created_volume(vg, &req.name, needed, &tags, stripes, &creation))
            })
            .await;
        let snap = match result {
            Ok(snap) => snap,
            Err(Error::Lvm(e)) if e.is_already_exists() => {
                let existing = self.found_made(&dc.volume_group, &req.name, e)?;
                return self
                    .existing_matches(dc, &existing, size, needed, &req.tags)
                    .await;
            }
            Err(e) => return Err(e),
        };
        let lv = Self::created(&snap, &dc.volume_group, &req.name)?;
        info!(size = lv.size, "created logical volume");
        Ok(lv)
    }

    /// Decides whether an existing volume satisfies a repeated create; adopts an untagged one.
    async fn existing_matches(
        &self,
        dc: &DeviceClass,
        existing: &LogicalVolume,
        size: u64,
        needed: u64,
        requested_tags: &[String],
    ) -> Result<LogicalVolume> {
        let lv = match standing(dc, existing) {
            Standing::Owned(lv) | Standing::Untagged(lv) => lv,
            Standing::OtherClass(lv) => {
                return Err(Error::Exists {
                    name: lv.name.clone(),
                    reason: format!("it is outside device class {:?}", dc.name),
                });
            }
            Standing::Foreign(lv, why) => {
                return Err(Error::Exists {
                    name: lv.name.clone(),
                    reason: format!("it is not lvmd's: {why}"),
                });
            }
        };
        if lv.is_thick_snapshot() || lv.size < size || lv.size > needed {
            return Err(Error::Exists {
                name: lv.name.clone(),
                reason: format!("it has {} bytes; {size} bytes were requested", lv.size),
            });
        }
        match standing(dc, lv) {
            Standing::Untagged(lv) => self.adopt(dc, lv, requested_tags).await,
            _ => Ok(lv.clone()),
        }
    }

    /// Removes a volume; a volume that does not exist is already removed.
    pub async fn remove_lv(&self, name: &str, device_class: &str) -> Result<()> {
        validate::logical_volume_name(name).map_err(invalid)?;
        let dc = self.device_class(device_class)?;
        let _lock = self.lock_vg(&dc.volume_group).await;
        let snap = self.cache.current();
        let vg = Self::volume_group(dc, &snap)?;
        let Some(lv) = vg.lvs.get(name) else {
            return Ok(());
        };
        let lv = standing(dc, lv).owned(dc)?;
        // The snapshots themselves, not the origin's `o` attribute: a snapshot just removed is
        // gone from the cache before the report that clears the attribute.
        let has_thick_snapshots = vg
            .lvs
            .values()
            .any(|s| s.is_thick_snapshot() && s.origin.as_deref() == Some(name));
        if has_thick_snapshots {
            return Err(Error::HasThickSnapshots {
                name: name.to_owned(),
            });
        }
        let freed = lv.allocated_bytes().unwrap_or(0);
        let result = self
            .mutate(args::remove(&dc.volume_group, name), || {
                Some(Change::Removed {
                    vg: dc.volume_group.clone(),
                    name: name.to_owned(),
                    freed,
                })
            })
            .await;
        match result {
            Ok(_) => {
                info!("removed logical volume");
                Ok(())
            }
            Err(e) => {
                let gone = !self
                    .cache
                    .current()
                    .vgs
                    .get(&dc.volume_group)
                    .is_some_and(|vg| vg.lvs.contains_key(name));
                if gone { Ok(()) } else { Err(e) }
            }
        }
    }

    /// Grows a volume to at least `size_bytes`; never shrinks it.
    pub async fn resize_lv(
        &self,
        name: &str,
        device_class: &str,
        size_bytes: i64,
        size_gb: u64,
    ) -> Result<u64> {
        validate::logical_volume_name(name).map_err(invalid)?;
        let size = size_from(size_bytes, size_gb, "size_bytes")?
            .ok_or_else(|| Error::InvalidArgument("size_bytes must be positive".to_owned()))?;
        let dc = self.device_class(device_class)?;
        let _lock = self.lock_vg(&dc.volume_group).await;
        let snap = self.cache.current();
        let vg = Self::class_vg(dc, &snap)?;
        let lv = vg.lvs.get(name).ok_or_else(|| Error::VolumeNotFound {
            what: "logical volume",
            name: name.to_owned(),
        })?;
        let lv = standing(dc, lv).owned(dc)?;
        if lv.is_thick_snapshot() {
            return Err(Error::ThickSnapshotResize {
                name: name.to_owned(),
            });
        }
        let needed = round_up(size, granule(vg, lv.stripes))?;
        if needed <= lv.size {
            // Asking for what LVM would round up to the current size is not a shrink.
            return if size > lv.size.saturating_sub(granule(vg, lv.stripes)) {
                Ok(lv.size)
            } else {
                Err(Error::Shrink {
                    name: name.to_owned(),
                    current: lv.size,
                    requested: size,
                })
            };
        }
        let growth = needed - lv.size;
        self.class_capacity(dc, &snap).ensure_room(growth)?;
        // What the growth takes from the volume group is exact for thin and plain volumes.
        let allocated = if lv.is_thin_volume() {
            Some(0)
        } else {
            lv.allocated_bytes().map(|_| growth)
        };
        let snap = self
            .mutate(args::extend(&dc.volume_group, name, size), || {
                allocated.map(|allocated| Change::Resized {
                    vg: dc.volume_group.clone(),
                    name: name.to_owned(),
                    size: needed,
                    allocated,
                })
            })
            .await?;
        let new_size = Self::created(&snap, &dc.volume_group, name)?.size;
        info!(new_size, "resized logical volume");
        Ok(new_size)
    }
}
