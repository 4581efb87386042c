//! What lvmd does, independent of gRPC: device classes, capacity, and the idempotent mutations.
//!
//! Every mutation validates its input, takes the lock of its volume group, decides from the
//! cached state whether it can succeed (answering without any `lvm` call when the cache already
//! shows the result), and runs exactly one `lvm` command. Where lvmd knows that command's outcome
//! exactly it records the change in the cache and answers at once, leaving the report that
//! confirms it to run in the background; otherwise it waits for that report. Reads only look at
//! the cache.
//!
//! Ownership: lvmd removes, resizes, snapshots or returns a volume only when it belongs to the
//! named device class (thick or thin pool alike, and the class recorded in its tags) and carries
//! lvmd's tags (`topolvm.io/managed` and `topolvm.io/volume=<its name>`). A volume without any of
//! lvmd's tags whose name is a Kubernetes UID (how TopoLVM names the volumes it makes) is adopted
//! by a CreateLV or CreateLVSnapshot that asks for it exactly: lvmd tags it and returns it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::Mutex;
use topolvm_core::crd::AccessType;
use topolvm_core::{capacity, names};
use topolvm_runtime::keyed_lock::{KeyGuard, KeyedLocks};
use tracing::{info, instrument, warn};

use crate::config::{Config, DeviceClass, Target};
use crate::lvm::metadata::device_numbers;
use crate::lvm::report::{LogicalVolume, VolumeGroup, VolumeKind, predicted_attr};
use crate::lvm::{LvmError, LvmRunner, args, validate};
use crate::state::{Change, RefreshReason, Snapshot, StateCache};

mod copy;

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

/// Thin pool figures of a thin device class.
#[derive(Debug, Clone, PartialEq)]
pub struct ThinPoolUsage {
    pub pool_size: u64,
    pub data_percent: f64,
    pub metadata_percent: f64,
    /// What may still be promised under the overprovision ratio.
    pub overprovision_free: u64,
}

/// The capacity of one device class, as Watch reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassCapacity {
    pub device_class: String,
    /// Whether the class's volume group (and thin pool) exist.
    pub usable: bool,
    /// What new volumes of this class may use: VG free less spare (thick) or the
    /// overprovision headroom (thin). The capacity annotation and GetFreeBytes.
    pub new_volume_bytes: u64,
    /// The volume group's available bytes as TopoLVM reports them (WatchItem.free_bytes and
    /// TopoLVM's `topolvm_volumegroup_available_bytes`): VG free less spare for thick classes, the raw VG
    /// free for thin ones.
    pub vg_available_bytes: u64,
    pub vg_size: u64,
    pub thin: Option<ThinPoolUsage>,
}

/// The whole capacity picture sent to Watch subscribers.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityReport {
    pub default_free: u64,
    pub classes: Vec<ClassCapacity>,
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

/// The tags that mark a volume of `device_class` named `name` as lvmd's.
fn ownership_tags(name: &str, device_class: &str) -> Vec<String> {
    vec![
        names::LV_TAG_MANAGED.to_owned(),
        names::lv_tag_volume_id(name),
        names::lv_tag_device_class(device_class),
    ]
}

fn is_ownership_tag(tag: &str) -> bool {
    tag == names::LV_TAG_MANAGED
        || tag == names::LV_TAG_COPY_PENDING
        || names::parse_lv_tag_volume_id(tag).is_some()
        || names::parse_lv_tag_device_class(tag).is_some()
        || names::parse_lv_tag_copy_source(tag).is_some()
}

/// The volume `lv` was copied from, if lvmd made it by copying.
fn copy_source(lv: &LogicalVolume) -> Option<&str> {
    lv.tags
        .iter()
        .find_map(|t| names::parse_lv_tag_copy_source(t))
}

fn copy_pending(lv: &LogicalVolume) -> bool {
    lv.tags.iter().any(|t| t == names::LV_TAG_COPY_PENDING)
}

/// Checks the caller's tags and adds the ones that mark the volume as ours.
fn volume_tags(name: &str, device_class: &str, requested: &[String]) -> Result<Vec<String>> {
    let mut tags = ownership_tags(name, device_class);
    for tag in requested {
        validate::tag(tag).map_err(invalid)?;
        if is_ownership_tag(tag) {
            return Err(Error::InvalidArgument(format!(
                "tag {tag:?} is reserved for lvmd's own bookkeeping"
            )));
        }
        if !tags.contains(tag) {
            tags.push(tag.clone());
        }
    }
    Ok(tags)
}

/// The granule LVM rounds a volume's size to.
fn granule(vg: &VolumeGroup, stripes: u32) -> u64 {
    vg.extent_size.saturating_mul(u64::from(stripes.max(1)))
}

/// Whether `name` has the form of a Kubernetes object UID (RFC 4122, lower-case), the name
/// TopoLVM gives every volume it creates.
fn is_kubernetes_uid(name: &str) -> bool {
    let groups: Vec<&str> = name.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, len)| {
            g.len() == len && g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// Where an existing volume stands with a device class.
#[derive(Debug)]
enum Standing<'a> {
    /// In the class and carrying lvmd's tags.
    Owned(&'a LogicalVolume),
    /// In the class, without any of lvmd's tags.
    Untagged(&'a LogicalVolume),
    /// In the volume group, but a thin pool, or tagged as some other volume.
    Foreign(&'a LogicalVolume, &'static str),
    /// In the volume group but not in this class (another thin pool, thick against thin, or
    /// tagged with another class).
    OtherClass(&'a LogicalVolume),
}

/// The one ownership rule every operation on an existing volume passes through.
fn standing<'a>(dc: &DeviceClass, lv: &'a LogicalVolume) -> Standing<'a> {
    if lv.is_thin_pool() {
        return Standing::Foreign(lv, "it is a thin pool, not a volume");
    }
    let in_layout = match &dc.target {
        Target::Thick => !lv.is_thin_volume(),
        Target::Thin(pool) => lv.pool_lv.as_deref() == Some(pool.name.as_str()),
    };
    let tagged_class = lv
        .tags
        .iter()
        .find_map(|t| names::parse_lv_tag_device_class(t));
    if !in_layout || tagged_class.is_some_and(|c| c != dc.name) {
        return Standing::OtherClass(lv);
    }
    let managed = lv.tags.iter().any(|t| t == names::LV_TAG_MANAGED);
    let volume_tags: Vec<&str> = lv
        .tags
        .iter()
        .filter_map(|t| names::parse_lv_tag_volume_id(t))
        .collect();
    if names::has_no_lvmd_tags(&lv.tags) {
        return Standing::Untagged(lv);
    }
    if managed && volume_tags == [lv.name.as_str()] {
        Standing::Owned(lv)
    } else {
        Standing::Foreign(lv, "its tags do not mark it as this lvmd volume")
    }
}

impl<'a> Standing<'a> {
    /// The volume, when lvmd may remove, resize or snapshot it.
    fn owned(self, dc: &DeviceClass) -> Result<&'a LogicalVolume> {
        match self {
            Self::Owned(lv) => Ok(lv),
            Self::Untagged(lv) => Err(Error::NotOwned {
                name: lv.name.clone(),
                reason: format!(
                    "it does not carry the tag {:?} (a volume TopoLVM made is adopted by a CreateLV \
                     of the same name and size)",
                    names::LV_TAG_MANAGED
                ),
            }),
            Self::Foreign(lv, why) => Err(Error::NotOwned {
                name: lv.name.clone(),
                reason: why.to_owned(),
            }),
            Self::OtherClass(lv) => Err(Error::NotInClass {
                name: lv.name.clone(),
                class: dc.name.clone(),
            }),
        }
    }
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

/// The zeroing flag of a thin pool, which its thin volumes show as their 8th attribute.
fn pool_zeroing(vg: &VolumeGroup, pool: &str) -> char {
    vg.lvs.get(pool).map_or('-', LogicalVolume::zeroing_attr)
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

    /// The volume group of `dc` in `snap`, or why the class cannot be used.
    fn class_vg<'s>(&self, dc: &DeviceClass, snap: &'s Snapshot) -> Result<&'s VolumeGroup> {
        let vg = snap
            .vgs
            .get(&dc.volume_group)
            .ok_or_else(|| Error::Unavailable {
                class: dc.name.clone(),
                reason: format!("volume group {:?} not found", dc.volume_group),
            })?;
        if let Target::Thin(pool) = &dc.target {
            match vg.lvs.get(&pool.name) {
                Some(lv) if lv.is_thin_pool() => {}
                _ => {
                    return Err(Error::Unavailable {
                        class: dc.name.clone(),
                        reason: format!("thin pool {}/{} not found", dc.volume_group, pool.name),
                    });
                }
            }
        }
        Ok(vg)
    }

    /// The capacity of `dc` in `snap`.
    pub fn class_capacity(&self, dc: &DeviceClass, snap: &Snapshot) -> ClassCapacity {
        let Ok(vg) = self.class_vg(dc, snap) else {
            return ClassCapacity {
                device_class: dc.name.clone(),
                usable: false,
                new_volume_bytes: 0,
                vg_available_bytes: 0,
                vg_size: 0,
                thin: None,
            };
        };
        match &dc.target {
            Target::Thick => {
                let free = capacity::thick_free_bytes(vg.free, dc.spare_bytes);
                ClassCapacity {
                    device_class: dc.name.clone(),
                    usable: true,
                    new_volume_bytes: free,
                    vg_available_bytes: free,
                    vg_size: vg.size,
                    thin: None,
                }
            }
            Target::Thin(pool_cfg) => {
                let pool = &vg.lvs[&pool_cfg.name];
                let virtual_sum: u64 = vg
                    .lvs
                    .values()
                    .filter(|lv| lv.pool_lv.as_deref() == Some(pool_cfg.name.as_str()))
                    .map(|lv| lv.size)
                    .sum();
                let overprovision_free =
                    capacity::thin_free_bytes(pool.size, pool_cfg.overprovision_ratio, virtual_sum);
                ClassCapacity {
                    device_class: dc.name.clone(),
                    usable: true,
                    new_volume_bytes: overprovision_free,
                    vg_available_bytes: vg.free,
                    vg_size: vg.size,
                    thin: Some(ThinPoolUsage {
                        pool_size: pool.size,
                        data_percent: pool.data_percent.unwrap_or(0.0),
                        metadata_percent: pool.metadata_percent.unwrap_or(0.0),
                        overprovision_free,
                    }),
                }
            }
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
            .map_or(0, |c| c.new_volume_bytes);
        CapacityReport {
            default_free,
            classes,
        }
    }

    /// Refuses a new thin volume when the pool's real data usage is above the threshold.
    fn check_thin_pool_usage(&self, dc: &DeviceClass, cap: &ClassCapacity) -> Result<()> {
        if let (Target::Thin(pool), Some(usage)) = (&dc.target, &cap.thin)
            && usage.data_percent > pool.data_percent_threshold
        {
            return Err(Error::ThinPoolFull {
                pool: format!("{}/{}", dc.volume_group, pool.name),
                percent: usage.data_percent,
                threshold: pool.data_percent_threshold,
            });
        }
        Ok(())
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

    /// Tags an untagged volume as lvmd's (TopoLVM made it), and returns it as LVM reports it.
    async fn adopt(
        &self,
        dc: &DeviceClass,
        lv: &LogicalVolume,
        requested_tags: &[String],
    ) -> Result<LogicalVolume> {
        if !is_kubernetes_uid(&lv.name) {
            return Err(Error::Exists {
                name: lv.name.clone(),
                reason:
                    "it has no lvmd tags, and lvmd adopts only volumes named by a Kubernetes UID, \
                         as TopoLVM names them"
                        .to_owned(),
            });
        }
        let tags = volume_tags(&lv.name, &dc.name, requested_tags)?;
        let snap = self
            .mutate(args::add_tags(&dc.volume_group, &lv.name, &tags), || None)
            .await?;
        let adopted = Self::created(&snap, &dc.volume_group, &lv.name)?;
        info!(name = %lv.name, device_class = %dc.name, "adopted a volume made without lvmd's tags");
        Ok(adopted)
    }

    /// Lists the volumes of a device class.
    pub fn list_lvs(&self, device_class: &str) -> Result<Vec<LogicalVolume>> {
        let dc = self.device_class(device_class)?;
        let snap = self.cache.current();
        let vg = self.class_vg(dc, &snap)?;
        Ok(vg
            .lvs
            .values()
            .filter(|lv| !lv.is_thin_pool() && !matches!(standing(dc, lv), Standing::OtherClass(_)))
            .cloned()
            .collect())
    }

    /// The bytes new volumes of a device class may use.
    pub fn free_bytes(&self, device_class: &str) -> Result<u64> {
        let dc = self.device_class(device_class)?;
        let snap = self.cache.current();
        self.class_vg(dc, &snap)?;
        Ok(self.class_capacity(dc, &snap).new_volume_bytes)
    }

    /// Creates a volume; an existing volume of the same name and size is returned as it is.
    #[instrument(skip_all, fields(name = %req.name, device_class = %req.device_class, size_bytes = req.size_bytes))]
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
        let vg = self.class_vg(dc, &snap)?;
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

        let cap = self.class_capacity(dc, &snap);
        if needed > cap.new_volume_bytes {
            return Err(Error::NoSpace {
                class: dc.name.clone(),
                free: cap.new_volume_bytes,
                wanted: needed,
            });
        }
        self.check_thin_pool_usage(dc, &cap)?;

        let options = option_class.map_or(&dc.lvcreate_options, |oc| &oc.options);
        let (argv, kind, pool, allocated) = match &dc.target {
            Target::Thick => {
                let layout = match option_class {
                    Some(oc) => args::Layout {
                        options: &oc.options,
                        ..Default::default()
                    },
                    None => args::Layout {
                        stripes: dc.stripe,
                        stripe_size: dc.stripe_size.as_deref(),
                        options: &dc.lvcreate_options,
                    },
                };
                let argv = args::create_thick(&dc.volume_group, &req.name, size, &tags, &layout);
                (argv, VolumeKind::Plain, None, needed)
            }
            Target::Thin(pool) => {
                let argv = args::create_thin(
                    &dc.volume_group,
                    &pool.name,
                    &req.name,
                    size,
                    &tags,
                    options,
                );
                let kind = VolumeKind::Thin {
                    zeroing: pool_zeroing(vg, &pool.name),
                };
                (argv, kind, Some(pool.name.as_str()), 0)
            }
        };
        // Extra lvcreate options may change the layout (RAID, mirrors): then only a report can
        // tell what the volume took.
        let exact = options.is_empty();
        let result = self
            .mutate(argv, || {
                exact.then(|| Change::Created {
                    lv: NewVolume {
                        vg,
                        name: &req.name,
                        size: needed,
                        kind,
                        writable: true,
                        tags: &tags,
                        stripes,
                        pool,
                        origin: None,
                        cow_size: None,
                    }
                    .predict()
                    .into(),
                    allocated,
                })
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
    #[instrument(skip(self))]
    pub async fn remove_lv(&self, name: &str, device_class: &str) -> Result<()> {
        validate::logical_volume_name(name).map_err(invalid)?;
        let dc = self.device_class(device_class)?;
        let _lock = self.lock_vg(&dc.volume_group).await;
        let snap = self.cache.current();
        let vg = snap
            .vgs
            .get(&dc.volume_group)
            .ok_or_else(|| Error::Unavailable {
                class: dc.name.clone(),
                reason: format!("volume group {:?} not found", dc.volume_group),
            })?;
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
    #[instrument(skip(self))]
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
        let vg = self.class_vg(dc, &snap)?;
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
        let cap = self.class_capacity(dc, &snap);
        let growth = needed - lv.size;
        if growth > cap.new_volume_bytes {
            return Err(Error::NoSpace {
                class: dc.name.clone(),
                free: cap.new_volume_bytes,
                wanted: growth,
            });
        }
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

    /// Creates a snapshot: a thin snapshot in thin classes, a copy-on-write snapshot in thick ones.
    #[instrument(skip_all, fields(name = %req.name, source = %req.source_volume, device_class = %req.device_class))]
    pub async fn create_snapshot(&self, req: CreateSnapshot) -> Result<LogicalVolume> {
        validate::logical_volume_name(&req.name).map_err(invalid)?;
        validate::logical_volume_name_as("source volume name", &req.source_volume)
            .map_err(invalid)?;
        let permission = match req.access_type.parse::<AccessType>() {
            Ok(AccessType::ReadOnly) => args::Permission::ReadOnly,
            Ok(AccessType::ReadWrite) => args::Permission::ReadWrite,
            Err(e) => return Err(Error::InvalidArgument(e.to_string())),
        };
        let writable = permission == args::Permission::ReadWrite;
        let requested = size_from(req.size_bytes, req.size_gb, "size_bytes")?;
        let dc = self.device_class(&req.device_class)?;
        let tags = volume_tags(&req.name, &dc.name, &req.tags)?;

        let name_lock = self
            .name_locks
            .lock(&format!("{}/{}", dc.volume_group, req.name))
            .await;
        let vg_lock = self.lock_vg(&dc.volume_group).await;
        let snap = self.cache.current();
        let vg = self.class_vg(dc, &snap)?;
        if let Some(existing) = vg.lvs.get(&req.name) {
            if copy_pending(existing) && copy_source(existing) == Some(req.source_volume.as_str()) {
                // A copy that did not finish (lvmd stopped halfway): do it again.
                standing(dc, existing).owned(dc)?;
                drop(vg_lock);
                return self.copy_into(dc, &req, permission, name_lock).await;
            }
            return self.existing_snapshot(dc, existing, &req).await;
        }
        let source = vg
            .lvs
            .get(&req.source_volume)
            .ok_or_else(|| Error::VolumeNotFound {
                what: "source volume",
                name: req.source_volume.clone(),
            })?;
        let source = match standing(dc, source) {
            // A volume TopoLVM made may be snapshotted before topolvm-node adopted it.
            Standing::Untagged(lv) if is_kubernetes_uid(&lv.name) => lv,
            other => other.owned(dc)?,
        };
        let cap = self.class_capacity(dc, &snap);

        let created = match &dc.target {
            Target::Thin(pool) => {
                if source.pool_lv.as_deref() != Some(pool.name.as_str()) {
                    return Err(Error::UnsuitableSource {
                        name: req.source_volume.clone(),
                        reason: format!(
                            "not a thin volume of pool {}/{}",
                            dc.volume_group, pool.name
                        ),
                    });
                }
                let desired = requested.unwrap_or(source.size);
                topolvm_core::size::fits_source(desired, source.size)?;
                let desired = round_up(desired, granule(vg, 1))?;
                if desired > cap.new_volume_bytes {
                    return Err(Error::NoSpace {
                        class: dc.name.clone(),
                        free: cap.new_volume_bytes,
                        wanted: desired,
                    });
                }
                self.check_thin_pool_usage(dc, &cap)?;
                let argv = args::create_thin_snapshot(
                    &dc.volume_group,
                    &req.source_volume,
                    &req.name,
                    &tags,
                    permission,
                );
                let new = || {
                    Some(Change::Created {
                        lv: NewVolume {
                            vg,
                            name: &req.name,
                            size: source.size,
                            kind: VolumeKind::Thin {
                                zeroing: pool_zeroing(vg, &pool.name),
                            },
                            writable,
                            tags: &tags,
                            stripes: 1,
                            pool: Some(&pool.name),
                            origin: Some(&req.source_volume),
                            cow_size: None,
                        }
                        .predict()
                        .into(),
                        allocated: 0,
                    })
                };
                let mut snap = match self.mutate(argv, new).await {
                    Ok(snap) => snap,
                    Err(Error::Lvm(e)) if e.is_already_exists() => {
                        let existing = self.found_made(&dc.volume_group, &req.name, e)?;
                        return self.existing_snapshot(dc, &existing, &req).await;
                    }
                    Err(e) => return Err(e),
                };
                if desired > source.size {
                    // A thin snapshot starts at its origin's size; growing it is a second step.
                    let grown = || {
                        Some(Change::Resized {
                            vg: dc.volume_group.clone(),
                            name: req.name.clone(),
                            size: desired,
                            allocated: 0,
                        })
                    };
                    match self
                        .mutate(args::extend(&dc.volume_group, &req.name, desired), grown)
                        .await
                    {
                        Ok(s) => snap = s,
                        Err(e) => {
                            warn!(error = %e, "growing the new snapshot failed; removing it");
                            let removed = || {
                                Some(Change::Removed {
                                    vg: dc.volume_group.clone(),
                                    name: req.name.clone(),
                                    freed: 0,
                                })
                            };
                            if let Err(e) = self
                                .mutate(args::remove(&dc.volume_group, &req.name), removed)
                                .await
                            {
                                warn!(error = %e, "removing the half-made snapshot failed");
                            }
                            return Err(e);
                        }
                    }
                }
                snap
            }
            Target::Thick if source.is_thick_snapshot() => {
                // LVM cannot snapshot a snapshot: make a plain volume and copy the blocks.
                let desired = requested.unwrap_or(source.size);
                topolvm_core::size::fits_source(desired, source.size)?;
                let stripes = dc.stripe.unwrap_or(1);
                let needed = round_up(desired, granule(vg, stripes))?;
                if needed > cap.new_volume_bytes {
                    return Err(Error::NoSpace {
                        class: dc.name.clone(),
                        free: cap.new_volume_bytes,
                        wanted: needed,
                    });
                }
                let mut tags = tags;
                tags.push(names::lv_tag_copy_source(&req.source_volume));
                tags.push(names::LV_TAG_COPY_PENDING.to_owned());
                let layout = args::Layout {
                    stripes: dc.stripe,
                    stripe_size: dc.stripe_size.as_deref(),
                    options: &dc.lvcreate_options,
                };
                let argv = args::create_thick(&dc.volume_group, &req.name, needed, &tags, &layout);
                let exact = dc.lvcreate_options.is_empty();
                let made = self
                    .mutate(argv, || {
                        exact.then(|| Change::Created {
                            lv: NewVolume {
                                vg,
                                name: &req.name,
                                size: needed,
                                kind: VolumeKind::Plain,
                                writable: true,
                                tags: &tags,
                                stripes,
                                pool: None,
                                origin: None,
                                cow_size: None,
                            }
                            .predict()
                            .into(),
                            allocated: needed,
                        })
                    })
                    .await;
                match made {
                    Ok(_) => {}
                    Err(Error::Lvm(e)) if e.is_already_exists() => {
                        let existing = self.found_made(&dc.volume_group, &req.name, e)?;
                        let resumable = copy_pending(&existing)
                            && copy_source(&existing) == Some(req.source_volume.as_str())
                            && matches!(standing(dc, &existing), Standing::Owned(_));
                        if !resumable {
                            return self.existing_snapshot(dc, &existing, &req).await;
                        }
                    }
                    Err(e) => return Err(e),
                }
                drop(vg_lock);
                return self.copy_into(dc, &req, permission, name_lock).await;
            }
            Target::Thick => {
                if source.is_thin_volume() || source.is_thin_pool() {
                    return Err(Error::UnsuitableSource {
                        name: req.source_volume.clone(),
                        reason: "a thin volume cannot have a thick snapshot".to_owned(),
                    });
                }
                // The copy-on-write area holds changed blocks; sized like the origin it can never
                // overflow, which is what an unspecified size asks for.
                let cow = round_up(requested.unwrap_or(source.size), granule(vg, 1))?;
                if cow > cap.new_volume_bytes {
                    return Err(Error::NoSpace {
                        class: dc.name.clone(),
                        free: cap.new_volume_bytes,
                        wanted: cow,
                    });
                }
                let argv = args::create_thick_snapshot(
                    &dc.volume_group,
                    &req.source_volume,
                    &req.name,
                    cow,
                    &tags,
                    permission,
                );
                let new = || {
                    Some(Change::Created {
                        lv: NewVolume {
                            vg,
                            name: &req.name,
                            size: source.size,
                            kind: VolumeKind::ThickSnapshot,
                            writable,
                            tags: &tags,
                            stripes: 1,
                            pool: None,
                            origin: Some(&req.source_volume),
                            cow_size: Some(cow),
                        }
                        .predict()
                        .into(),
                        allocated: cow,
                    })
                };
                match self.mutate(argv, new).await {
                    Ok(snap) => snap,
                    Err(Error::Lvm(e)) if e.is_already_exists() => {
                        let existing = self.found_made(&dc.volume_group, &req.name, e)?;
                        return self.existing_snapshot(dc, &existing, &req).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let lv = Self::created(&created, &dc.volume_group, &req.name)?;
        info!(size = lv.size, "created snapshot");
        Ok(lv)
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
            let vg = self.class_vg(dc, &snap)?;
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
        let vg = self.class_vg(dc, &snap)?;
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

#[cfg(test)]
mod tests;
