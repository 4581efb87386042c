//! Snapshots and copies: CreateLVSnapshot, in named steps. A thin class makes a thin snapshot, a
//! thick class a copy-on-write snapshot; a thick snapshot, which LVM cannot snapshot, is restored
//! or cloned into a plain volume filled block for block ([`super::copy`]). Which of these a
//! source gets is its pool's to say ([`Pool::snapshot_method`](crate::pool::Pool::snapshot_method)).

use std::path::PathBuf;
use std::sync::Arc;

use topolvm_core::crd::AccessType;
use topolvm_core::names;
use topolvm_runtime::keyed_lock::KeyGuard;
use tracing::{info, warn};

use super::ownership::{
    Standing, copy_pending, copy_source, is_kubernetes_uid, standing, volume_tags,
};
use super::{
    CreateSnapshot, Error, Lvmd, NewVolume, Result, class_layout, created_volume, granule, invalid,
    round_up, size_from,
};
use crate::config::DeviceClass;
use crate::lvm::args::{self, Permission};
use crate::lvm::report::{LogicalVolume, VolumeGroup};
use crate::lvm::validate;
use crate::pool::{Creation, SnapshotMethod};
use crate::state::{Change, Snapshot};

/// A snapshot request checked against the cached state: everything the step that makes it needs.
struct Step<'a> {
    dc: &'a DeviceClass,
    vg: &'a VolumeGroup,
    req: &'a CreateSnapshot,
    source: &'a LogicalVolume,
    tags: Vec<String>,
    permission: Permission,
    /// The size asked for; `None` means the source's.
    requested: Option<u64>,
}

impl Step<'_> {
    /// What lvmd records for the snapshot `creation` makes, before any report.
    fn predicted(&self, creation: &Creation<'_>, cow_size: Option<u64>) -> Change {
        Change::Created {
            lv: NewVolume {
                vg: self.vg,
                name: &self.req.name,
                size: self.source.size,
                kind: creation.kind,
                writable: self.permission == Permission::ReadWrite,
                tags: &self.tags,
                stripes: 1,
                pool: creation.pool,
                origin: Some(&self.req.source_volume),
                cow_size,
            }
            .predict()
            .into(),
            allocated: creation.allocated,
        }
    }
}

/// What an `lvcreate` of a snapshot led to.
enum Made {
    /// The new snapshot, in the state published after it.
    Created(Arc<Snapshot>),
    /// `lvcreate` found the name taken behind lvmd's back: the answer for that volume.
    Existing(Box<LogicalVolume>),
}

/// Whether `existing` is a copy from `source` that did not finish (lvmd stopped halfway).
fn unfinished_copy_of(existing: &LogicalVolume, source: &str) -> bool {
    copy_pending(existing) && copy_source(existing) == Some(source)
}

fn permission_of(access_type: &str) -> Result<Permission> {
    match access_type.parse::<AccessType>() {
        Ok(AccessType::ReadOnly) => Ok(Permission::ReadOnly),
        Ok(AccessType::ReadWrite) => Ok(Permission::ReadWrite),
        Err(e) => Err(Error::InvalidArgument(e.to_string())),
    }
}

impl Lvmd {
    /// Creates a snapshot: a thin snapshot in thin classes, a copy-on-write snapshot in thick
    /// ones, a filled copy of a thick snapshot.
    pub async fn create_snapshot(&self, req: CreateSnapshot) -> Result<LogicalVolume> {
        validate::logical_volume_name(&req.name).map_err(invalid)?;
        validate::logical_volume_name_as("source volume name", &req.source_volume)
            .map_err(invalid)?;
        let permission = permission_of(&req.access_type)?;
        let requested = size_from(req.size_bytes, req.size_gb, "size_bytes")?;
        let dc = self.device_class(&req.device_class)?;
        let tags = volume_tags(&req.name, &dc.name, &req.tags)?;

        let name_lock = self
            .name_locks
            .lock(&format!("{}/{}", dc.volume_group, req.name))
            .await;
        let vg_lock = self.lock_vg(&dc.volume_group).await;
        let snap = self.cache.current();
        let vg = Self::class_vg(dc, &snap)?;
        if let Some(existing) = vg.lvs.get(&req.name) {
            if unfinished_copy_of(existing, &req.source_volume) {
                standing(dc, existing).owned(dc)?;
                drop(vg_lock);
                return self.copy_into(dc, &req, permission, name_lock).await;
            }
            return self.existing_snapshot(dc, existing, &req).await;
        }
        let source = Self::snapshot_source(dc, vg, &req.source_volume)?;
        let method = dc
            .pool
            .snapshot_method(&dc.volume_group, source)
            .map_err(|reason| Error::UnsuitableSource {
                name: req.source_volume.clone(),
                reason,
            })?;
        let step = Step {
            dc,
            vg,
            req: &req,
            source,
            tags,
            permission,
            requested,
        };
        let made = match method {
            SnapshotMethod::Thin => self.thin_snapshot(&step, &snap).await?,
            SnapshotMethod::CopyOnWrite => self.copy_on_write_snapshot(&step, &snap).await?,
            SnapshotMethod::Copy => {
                if let Some(existing) = self.copy_target(step, &snap).await? {
                    return Ok(existing);
                }
                drop(vg_lock);
                return self.copy_into(dc, &req, permission, name_lock).await;
            }
        };
        match made {
            Made::Created(snap) => {
                let lv = Self::created(&snap, &dc.volume_group, &req.name)?;
                info!(size = lv.size, "created snapshot");
                Ok(lv)
            }
            Made::Existing(lv) => Ok(*lv),
        }
    }

    /// The volume a snapshot is taken of: lvmd's, or one TopoLVM made, which may be snapshotted
    /// before topolvm-node adopted it.
    fn snapshot_source<'s>(
        dc: &DeviceClass,
        vg: &'s VolumeGroup,
        name: &str,
    ) -> Result<&'s LogicalVolume> {
        let source = vg.lvs.get(name).ok_or_else(|| Error::VolumeNotFound {
            what: "source volume",
            name: name.to_owned(),
        })?;
        match standing(dc, source) {
            Standing::Untagged(lv) if is_kubernetes_uid(&lv.name) => Ok(lv),
            other => other.owned(dc),
        }
    }

    /// Runs the `lvcreate` of a snapshot; a name `lvcreate` finds taken is answered as a repeated
    /// request for that volume.
    async fn create_or_find(
        &self,
        step: &Step<'_>,
        creation: Creation<'_>,
        cow_size: Option<u64>,
    ) -> Result<Made> {
        let change = step.predicted(&creation, cow_size);
        match self.mutate(creation.argv, || Some(change)).await {
            Ok(snap) => Ok(Made::Created(snap)),
            Err(Error::Lvm(e)) if e.is_already_exists() => {
                let existing = self.found_made(&step.dc.volume_group, &step.req.name, e)?;
                let lv = self.existing_snapshot(step.dc, &existing, step.req).await?;
                Ok(Made::Existing(Box::new(lv)))
            }
            Err(e) => Err(e),
        }
    }

    /// A thin snapshot: at least the source's size, from the thin pool's room; larger than the
    /// source takes a second command.
    async fn thin_snapshot(&self, step: &Step<'_>, snap: &Snapshot) -> Result<Made> {
        let desired = step.requested.unwrap_or(step.source.size);
        topolvm_core::size::fits_source(desired, step.source.size)?;
        let desired = round_up(desired, granule(step.vg, 1))?;
        self.ensure_room_for_new(step.dc, snap, desired)?;
        let creation = step.dc.pool.create_snapshot(
            step.vg,
            step.source,
            &step.req.name,
            0,
            &step.tags,
            step.permission,
        );
        match self.create_or_find(step, creation, None).await? {
            Made::Created(_) if desired > step.source.size => {
                let grown = self
                    .grow_new_snapshot(step.dc, &step.req.name, desired)
                    .await?;
                Ok(Made::Created(grown))
            }
            made => Ok(made),
        }
    }

    /// Grows a thin snapshot just made, which starts at its origin's size, to `size`; removes it
    /// when that fails, so no snapshot of the wrong size is left behind.
    async fn grow_new_snapshot(
        &self,
        dc: &DeviceClass,
        name: &str,
        size: u64,
    ) -> Result<Arc<Snapshot>> {
        let grown = || {
            Some(Change::Resized {
                vg: dc.volume_group.clone(),
                name: name.to_owned(),
                size,
                allocated: 0,
            })
        };
        match self
            .mutate(args::extend(&dc.volume_group, name, size), grown)
            .await
        {
            Ok(snap) => Ok(snap),
            Err(e) => {
                warn!(error = %e, "growing the new snapshot failed; removing it");
                let removed = || {
                    Some(Change::Removed {
                        vg: dc.volume_group.clone(),
                        name: name.to_owned(),
                        freed: 0,
                    })
                };
                if let Err(e) = self
                    .mutate(args::remove(&dc.volume_group, name), removed)
                    .await
                {
                    warn!(error = %e, "removing the half-made snapshot failed");
                }
                Err(e)
            }
        }
    }

    /// A thick copy-on-write snapshot. Its change area holds changed blocks; sized like the
    /// origin it can never overflow, which is what an unspecified size asks for.
    async fn copy_on_write_snapshot(&self, step: &Step<'_>, snap: &Snapshot) -> Result<Made> {
        let cow = round_up(
            step.requested.unwrap_or(step.source.size),
            granule(step.vg, 1),
        )?;
        self.ensure_room_for_new(step.dc, snap, cow)?;
        let creation = step.dc.pool.create_snapshot(
            step.vg,
            step.source,
            &step.req.name,
            cow,
            &step.tags,
            step.permission,
        );
        self.create_or_find(step, creation, Some(cow)).await
    }

    /// Makes the plain volume a thick snapshot is copied into, marked pending until the copy is
    /// whole. `None` when the copy is to follow (also into a pending volume `lvcreate` found made
    /// behind lvmd's back); `Some` is the answer for a name taken by anything else.
    async fn copy_target(&self, step: Step<'_>, snap: &Snapshot) -> Result<Option<LogicalVolume>> {
        let Step {
            dc,
            vg,
            req,
            source,
            mut tags,
            ..
        } = step;
        let desired = step.requested.unwrap_or(source.size);
        topolvm_core::size::fits_source(desired, source.size)?;
        let stripes = dc.stripe.unwrap_or(1);
        let needed = round_up(desired, granule(vg, stripes))?;
        self.ensure_room_for_new(dc, snap, needed)?;
        tags.push(names::lv_tag_copy_source(&req.source_volume));
        tags.push(names::LV_TAG_COPY_PENDING.to_owned());
        let layout = class_layout(dc);
        let creation = dc
            .pool
            .create(vg, &req.name, needed, needed, &tags, &layout);
        let exact = layout.options.is_empty();
        let made = self
            .mutate(creation.argv.clone(), || {
                exact.then(|| created_volume(vg, &req.name, needed, &tags, stripes, &creation))
            })
            .await;
        match made {
            Ok(_) => Ok(None),
            Err(Error::Lvm(e)) if e.is_already_exists() => {
                let existing = self.found_made(&dc.volume_group, &req.name, e)?;
                let resumable = unfinished_copy_of(&existing, &req.source_volume)
                    && matches!(standing(dc, &existing), Standing::Owned(_));
                if resumable {
                    Ok(None)
                } else {
                    self.existing_snapshot(dc, &existing, req).await.map(Some)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Fills `req.name`, made with the pending tag, from its thick-snapshot source, then drops
    /// the tag (making the volume read-only when asked) in one `lvchange`. The copy runs without
    /// the volume group's lock, so other volumes are not held up while it runs, but under the
    /// name's lock, which the copying thread keeps until the last block is synced even when the
    /// request is abandoned: two copies never write one volume.
    async fn copy_into(
        &self,
        dc: &DeviceClass,
        req: &CreateSnapshot,
        permission: args::Permission,
        name_lock: KeyGuard,
    ) -> Result<LogicalVolume> {
        let failed = |reason: String| Error::CopyFailed {
            name: req.name.clone(),
            source_volume: req.source_volume.clone(),
            reason,
        };
        let (from, to, len) = {
            let snap = self.cache.current();
            let vg = Self::class_vg(dc, &snap)?;
            let source = vg
                .lvs
                .get(&req.source_volume)
                .ok_or_else(|| Error::VolumeNotFound {
                    what: "source volume",
                    name: req.source_volume.clone(),
                })?;
            let target = vg.lvs.get(&req.name).ok_or_else(|| Error::Vanished {
                name: req.name.clone(),
            })?;
            topolvm_core::size::fits_source(target.size, source.size)
                .map_err(|e| failed(e.to_string()))?;
            (
                PathBuf::from(&source.path),
                PathBuf::from(&target.path),
                source.size,
            )
        };
        info!(bytes = len, source = %from.display(), "copying a thick snapshot block for block");
        let copier = self.copier.clone();
        let (copied, name_lock) = tokio::task::spawn_blocking(move || {
            let copied = (copier.0)(&from, &to, len);
            (copied, name_lock)
        })
        .await
        .map_err(|e| failed(format!("the copying thread failed: {e}")))?;
        copied.map_err(|e| failed(e.to_string()))?;

        let _lock = self.lock_vg(&dc.volume_group).await;
        let snap = self.cache.current();
        let vg = Self::class_vg(dc, &snap)?;
        match vg.lvs.get(&req.name) {
            None => {
                return Err(Error::Vanished {
                    name: req.name.clone(),
                });
            }
            Some(lv) if !copy_pending(lv) => return Ok(lv.clone()),
            Some(_) => {}
        }
        let argv = args::finish_copy(
            &dc.volume_group,
            &req.name,
            names::LV_TAG_COPY_PENDING,
            permission,
        );
        let snap = self.mutate(argv, || None).await?;
        drop(name_lock);
        let lv = Self::created(&snap, &dc.volume_group, &req.name)?;
        info!(size = lv.size, "filled a new volume from a thick snapshot");
        Ok(lv)
    }

    /// Decides whether an existing volume satisfies a repeated snapshot request.
    async fn existing_snapshot(
        &self,
        dc: &DeviceClass,
        existing: &LogicalVolume,
        req: &CreateSnapshot,
    ) -> Result<LogicalVolume> {
        let source = existing.origin.as_deref().or_else(|| copy_source(existing));
        if source != Some(req.source_volume.as_str()) {
            return Err(Error::Exists {
                name: req.name.clone(),
                reason: format!("it is not a snapshot of {:?}", req.source_volume),
            });
        }
        match standing(dc, existing) {
            Standing::Owned(lv) => Ok(lv.clone()),
            Standing::Untagged(lv) => self.adopt(dc, lv, &req.tags).await,
            Standing::OtherClass(_) | Standing::Foreign(..) => Err(Error::Exists {
                name: req.name.clone(),
                reason: format!("it is not lvmd's volume of device class {:?}", dc.name),
            }),
        }
    }
}
