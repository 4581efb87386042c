//! What lvmd does, independent of gRPC: device classes, capacity, and the idempotent mutations.
//!
//! Every mutation validates its input, takes the lock of its volume group, decides from the
//! cached state whether it can succeed (answering without any `lvm` call when the cache already
//! shows the result), and runs exactly one `lvm` command. Where lvmd knows that command's outcome
//! exactly it records the change in the cache and answers at once, leaving the report that
//! confirms it to run in the background; otherwise it waits for that report. Reads only look at
//! the cache. What differs between thick and thin classes is the class's
//! [`Pool`](crate::pool::Pool)'s to say.
//!
//! The files: this one holds the requests, the errors and the steps every mutation shares;
//! [`volumes`] creates, lists, resizes and removes volumes; [`snapshots`] makes snapshots and
//! the copies of thick snapshots (the block copy itself is [`copy`]'s); [`capacity`] says what
//! each class has left, for Watch, GetFreeBytes and the space checks; [`ownership`] holds the
//! rules of which volumes are lvmd's and the adoption of TopoLVM's.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::Mutex;
use topolvm_runtime::keyed_lock::KeyedLocks;
use tracing::warn;

use crate::config::{Config, DeviceClass};
use crate::lvm::metadata::device_numbers;
use crate::lvm::report::{LogicalVolume, VolumeGroup, VolumeKind, predicted_attr};
use crate::lvm::{LvmError, LvmRunner, args, validate};
use crate::pool::Creation;
use crate::state::{Change, RefreshReason, Snapshot, StateCache};

mod capacity;
mod copy;
mod ownership;
mod snapshots;
mod volumes;

pub use capacity::{CapacityReport, ClassCapacity};

/// Why a request failed. The gRPC layer maps each kind to one status code.
#[derive(Debug, Error)]
pub enum Error {
    /// The request itself is malformed (names, sizes, tags, access type, option class).
    #[error("{0}")]
    InvalidArgument(String),
    #[error("device class {0:?} is not configured")]
    UnknownDeviceClass(String),
    #[error("device class {class:?} is unavailable: {reason}")]
    Unavailable { class: String, reason: String },
    #[error("{what} {name:?} not found")]
    VolumeNotFound { what: &'static str, name: String },
    #[error("logical volume {name:?} is not in device class {class:?}")]
    NotInClass { name: String, class: String },
    #[error("logical volume {name:?} is not lvmd's to change: {reason}")]
    NotOwned { name: String, reason: String },
    #[error(
        "{name:?} has thick snapshots; remove them first (removing the origin would destroy them)"
    )]
    HasThickSnapshots { name: String },
    #[error("{name:?} is a thick snapshot; it always reads as big as its origin")]
    ThickSnapshotResize { name: String },
    #[error("source volume {name:?} cannot be snapshotted here: {reason}")]
    UnsuitableSource { name: String, reason: String },
    #[error("logical volume {name:?} already exists: {reason}")]
    Exists { name: String, reason: String },
    #[error(
        "logical volume {name:?} has {current} bytes; shrinking to {requested} is not supported"
    )]
    Shrink {
        name: String,
        current: u64,
        requested: u64,
    },
    #[error(transparent)]
    SmallerThanSource(#[from] topolvm_core::size::SmallerThanSource),
    #[error("not enough space in device class {class:?}: {free} bytes free, {wanted} requested")]
    NoSpace {
        class: String,
        free: u64,
        wanted: u64,
    },
    #[error("thin pool {pool} is {percent:.2}% full, above the threshold of {threshold}%")]
    ThinPoolFull {
        pool: String,
        percent: f64,
        threshold: f64,
    },
    #[error("{name} was made but is not in the LVM report")]
    Vanished { name: String },
    /// Filling a volume from a thick snapshot failed; the volume keeps its pending tag and the
    /// next request redoes the copy.
    #[error("copying {source_volume:?} into {name:?}: {reason}")]
    CopyFailed {
        name: String,
        source_volume: String,
        reason: String,
    },
    /// `lvm` itself failed; it may have said there is not enough space
    /// ([`LvmError::is_insufficient_space`]).
    #[error(transparent)]
    Lvm(#[from] LvmError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A CreateLV request.
#[derive(Debug, Clone, Default)]
pub struct CreateLv {
    pub name: String,
    pub device_class: String,
    pub lvcreate_option_class: String,
    pub size_bytes: i64,
    /// TopoLVM's deprecated size field, used only when `size_bytes` is 0.
    pub size_gb: u64,
    pub tags: Vec<String>,
}

/// A CreateLVSnapshot request.
#[derive(Debug, Clone, Default)]
pub struct CreateSnapshot {
    pub name: String,
    pub device_class: String,
    pub source_volume: String,
    pub access_type: String,
    pub size_bytes: i64,
    pub size_gb: u64,
    pub tags: Vec<String>,
}
/// The lvmd service.
#[derive(Debug)]
pub struct Lvmd {
    config: Arc<Config>,
    cache: Arc<StateCache>,
    runner: Arc<dyn LvmRunner>,
    vg_locks: HashMap<String, Arc<Mutex<()>>>,
    /// Held by a snapshot request for its name, across a device copy too.
    name_locks: KeyedLocks,
    copier: copy::Copier,
}

fn size_from(size_bytes: i64, size_gb: u64, what: &str) -> Result<Option<u64>> {
    if size_bytes < 0 {
        return Err(Error::InvalidArgument(format!(
            "{what} must not be negative, got {size_bytes}"
        )));
    }
    if size_bytes > 0 {
        return Ok(Some(size_bytes as u64));
    }
    if size_gb > 0 {
        return size_gb
            .checked_mul(1 << 30)
            .filter(|b| i64::try_from(*b).is_ok())
            .map(Some)
            .ok_or_else(|| Error::InvalidArgument(format!("size_gb {size_gb} is too large")));
    }
    Ok(None)
}

fn round_up(size: u64, granule: u64) -> Result<u64> {
    topolvm_core::size::round_up(size, granule.max(1))
        .filter(|b| i64::try_from(*b).is_ok())
        .ok_or_else(|| Error::InvalidArgument(format!("size {size} is too large")))
}

fn invalid(e: validate::InvalidName) -> Error {
    Error::InvalidArgument(e.to_string())
}
/// How a volume of `dc` is laid out when no lvcreate option class is asked for.
fn class_layout(dc: &DeviceClass) -> args::Layout<'_> {
    args::Layout {
        stripes: dc.stripe,
        stripe_size: dc.stripe_size.as_deref(),
        options: &dc.lvcreate_options,
    }
}

/// The granule LVM rounds a volume's size to.
fn granule(vg: &VolumeGroup, stripes: u32) -> u64 {
    vg.extent_size.saturating_mul(u64::from(stripes.max(1)))
}
/// A volume an `lvcreate` has just made, as lvmd knows it before any report.
struct NewVolume<'a> {
    vg: &'a VolumeGroup,
    name: &'a str,
    size: u64,
    kind: VolumeKind,
    writable: bool,
    tags: &'a [String],
    stripes: u32,
    pool: Option<&'a str>,
    origin: Option<&'a str>,
    cow_size: Option<u64>,
}

/// What lvmd records for a new writable volume (not a snapshot) that `creation` made: `size`
/// bytes in `stripes` stripes.
fn created_volume(
    vg: &VolumeGroup,
    name: &str,
    size: u64,
    tags: &[String],
    stripes: u32,
    creation: &Creation<'_>,
) -> Change {
    Change::Created {
        lv: NewVolume {
            vg,
            name,
            size,
            kind: creation.kind,
            writable: true,
            tags,
            stripes,
            pool: creation.pool,
            origin: None,
            cow_size: None,
        }
        .predict()
        .into(),
        allocated: creation.allocated,
    }
}

impl NewVolume<'_> {
    /// The volume as LVM will report it, with the device numbers of its device node where it has
    /// one; the UUID stays empty until the confirming report.
    fn predict(self) -> LogicalVolume {
        let path = format!("/dev/{}/{}", self.vg.name, self.name);
        let numbers = device_numbers(Path::new(&path));
        LogicalVolume {
            name: self.name.to_owned(),
            uuid: String::new(),
            vg_name: self.vg.name.clone(),
            size: self.size,
            attr: predicted_attr(self.kind, self.writable, numbers.is_some()),
            tags: self.tags.to_vec(),
            path,
            kernel_major: numbers.map(|n| n.0),
            kernel_minor: numbers.map(|n| n.1),
            pool_lv: self.pool.map(str::to_owned),
            origin: self.origin.map(str::to_owned),
            data_percent: None,
            metadata_percent: None,
            stripes: self.stripes,
            plain_allocation: !matches!(self.kind, VolumeKind::Thin { .. }),
            cow_size: self.cow_size,
        }
    }
}

/// Whether `change` creates a volume that was found without a device node in a volume group
/// whose other volumes have theirs: activation is on (inside a VM or on a real node, not the
/// metadata-only host), so the node is only late.
fn awaits_device_node(change: &Change, current: &Snapshot) -> bool {
    let Change::Created { lv, .. } = change else {
        return false;
    };
    lv.kernel_major.is_none()
        && current.vgs.get(&lv.vg_name).is_some_and(|vg| {
            vg.lvs
                .values()
                .any(|other| other.name != lv.name && other.kernel_major.is_some())
        })
}

impl Lvmd {
    pub fn new(config: Arc<Config>, cache: Arc<StateCache>, runner: Arc<dyn LvmRunner>) -> Self {
        let vg_locks = config
            .device_classes
            .iter()
            .map(|dc| (dc.volume_group.clone(), Arc::new(Mutex::new(()))))
            .collect();
        Self {
            config,
            cache,
            runner,
            vg_locks,
            name_locks: KeyedLocks::default(),
            copier: copy::Copier::default(),
        }
    }

    /// Replaces the device copy (unit tests, whose volumes have no devices).
    #[cfg(test)]
    fn with_copier(mut self, copier: copy::Copier) -> Self {
        self.copier = copier;
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn cache(&self) -> &Arc<StateCache> {
        &self.cache
    }

    fn device_class(&self, name: &str) -> Result<&DeviceClass> {
        self.config
            .device_class(name)
            .ok_or_else(|| Error::UnknownDeviceClass(name.to_owned()))
    }

    async fn lock_vg(&self, vg: &str) -> tokio::sync::OwnedMutexGuard<()> {
        // Every configured VG has a lock; the fallback is never used but keeps this total.
        let lock = self
            .vg_locks
            .get(vg)
            .cloned()
            .unwrap_or_else(|| Arc::new(Mutex::new(())));
        lock.lock_owned().await
    }

    /// The volume group of `dc` in `snap`, whether or not its pool is there.
    fn volume_group<'s>(dc: &DeviceClass, snap: &'s Snapshot) -> Result<&'s VolumeGroup> {
        snap.vgs
            .get(&dc.volume_group)
            .ok_or_else(|| Error::Unavailable {
                class: dc.name.clone(),
                reason: format!("volume group {:?} not found", dc.volume_group),
            })
    }

    /// The volume group of `dc` in `snap`, or why the class cannot be used.
    fn class_vg<'s>(dc: &DeviceClass, snap: &'s Snapshot) -> Result<&'s VolumeGroup> {
        let vg = Self::volume_group(dc, snap)?;
        match dc.pool.missing_from(vg) {
            None => Ok(vg),
            Some(reason) => Err(Error::Unavailable {
                class: dc.name.clone(),
                reason,
            }),
        }
    }

    /// Runs one mutating `lvm` command. On success, `predict` says what it changed when lvmd knows
    /// that exactly: the change is recorded and the confirming report runs in the background;
    /// otherwise the report is awaited. A failed command (which may have changed something before
    /// failing) is followed by a report before the error is returned.
    async fn mutate(
        &self,
        args: Vec<String>,
        predict: impl FnOnce() -> Option<Change>,
    ) -> Result<Arc<Snapshot>> {
        let busy = self.cache.busy();
        let outcome = {
            let _running = self.cache.command_running();
            self.runner.run(args).await
        };
        match outcome {
            Ok(_) => match predict() {
                // The kernel has the new volume but its device node is not there yet (udev
                // makes it shortly after lvcreate returns): the report, which reads
                // device-mapper itself, has its numbers, and a publish needs them now.
                Some(change) if awaits_device_node(&change, &self.cache.current()) => {
                    Ok(self.cache.refresh(RefreshReason::Mutation).await?)
                }
                Some(change) => {
                    let snap = self.cache.record(change);
                    self.cache.confirm_in_background(busy);
                    Ok(snap)
                }
                None => Ok(self.cache.refresh(RefreshReason::Mutation).await?),
            },
            Err(e) => {
                self.cache.refresh_or_warn(RefreshReason::Mutation).await;
                Err(e.into())
            }
        }
    }

    /// The volume a mutation just made, from the snapshot published after it.
    fn created(snap: &Snapshot, vg: &str, name: &str) -> Result<LogicalVolume> {
        snap.vgs
            .get(vg)
            .and_then(|vg| vg.lvs.get(name))
            .cloned()
            .ok_or_else(|| Error::Vanished {
                name: name.to_owned(),
            })
    }

    /// The volume an `lvcreate` found already made although the cache did not show it — typically
    /// by the command of an lvmd killed while its child ran on — from the report that followed
    /// the failed command.
    fn found_made(&self, vg: &str, name: &str, error: LvmError) -> Result<LogicalVolume> {
        warn!(
            name,
            "lvcreate found the volume already made behind lvmd's back"
        );
        self.cache
            .current()
            .vgs
            .get(vg)
            .and_then(|vg| vg.lvs.get(name))
            .cloned()
            .ok_or(Error::Lvm(error))
    }
}

#[cfg(test)]
mod tests;
