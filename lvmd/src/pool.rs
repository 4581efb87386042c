//! The storage pool of a device class: the volume group itself (thick) or a thin pool in it.
//!
//! Everything lvmd does differently for thick and thin classes is decided here, once: whether the
//! pool is there in a report, which volumes are cut from it, what it has left, what it allows
//! (the thin pool's usage threshold, which volumes a snapshot may be taken of), and which `lvm`
//! argument list makes a volume or a snapshot in it. How those lists are spelled is the LVM
//! command layer's ([`crate::lvm::args`]); the service runs them.

use topolvm_core::capacity;

use crate::lvm::args::{self, Layout, Permission};
use crate::lvm::report::{LogicalVolume, VolumeGroup, VolumeKind};

/// What a device class allocates its volumes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Pool {
    /// Plain (linear or striped) volumes take the volume group's extents; `spare_bytes` of the
    /// volume group are never given out (TopoLVM's `spare-gb`).
    Thick { spare_bytes: u64 },
    /// Thin volumes of a thin pool in the volume group.
    Thin(ThinPool),
}

/// The thin pool of a thin device class.
#[derive(Debug, Clone, PartialEq)]
pub struct ThinPool {
    pub name: String,
    pub overprovision_ratio: f64,
    /// New thin volumes are refused while the pool's real data usage is above this percentage.
    pub data_percent_threshold: f64,
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

/// What a pool has left in one report.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolFree {
    /// The volume group's available bytes as TopoLVM reports them (`WatchItem.free_bytes`,
    /// `topolvm_volumegroup_available_bytes`): VG free less spare for a thick pool, the raw VG
    /// free for a thin one.
    pub vg_available_bytes: u64,
    /// The thin pool's figures; `None` for a thick pool.
    pub thin: Option<ThinPoolUsage>,
}

/// A thin pool whose real data usage is above its class's threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Overfull {
    /// The pool, as `vg/pool`.
    pub pool: String,
    pub percent: f64,
    pub threshold: f64,
}

/// What a snapshot of a given source is in a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMethod {
    /// A thin snapshot in the thin pool.
    Thin,
    /// A thick copy-on-write snapshot.
    CopyOnWrite,
    /// LVM cannot snapshot a thick snapshot: a plain volume filled with the source's blocks.
    Copy,
}

/// The `lvcreate` of a new volume, and what lvmd knows of its result.
#[derive(Debug, Clone, PartialEq)]
pub struct Creation<'a> {
    pub argv: Vec<String>,
    pub kind: VolumeKind,
    /// The thin pool the volume is in.
    pub pool: Option<&'a str>,
    /// The bytes it takes from the volume group.
    pub allocated: u64,
}

/// The zeroing flag of a thin pool, which its thin volumes show as their 8th attribute.
fn pool_zeroing(vg: &VolumeGroup, pool: &str) -> char {
    vg.lvs.get(pool).map_or('-', LogicalVolume::zeroing_attr)
}

impl Pool {
    /// Why the pool cannot be used in `vg`, if it cannot.
    pub fn missing_from(&self, vg: &VolumeGroup) -> Option<String> {
        match self {
            Self::Thick { .. } => None,
            Self::Thin(pool) => match vg.lvs.get(&pool.name) {
                Some(lv) if lv.is_thin_pool() => None,
                _ => Some(format!("thin pool {}/{} not found", vg.name, pool.name)),
            },
        }
    }

    /// Whether `lv` (not a thin pool) is cut from this pool: for a thick pool any volume that is
    /// not thin, for a thin pool its own thin volumes.
    pub fn holds(&self, lv: &LogicalVolume) -> bool {
        match self {
            Self::Thick { .. } => !lv.is_thin_volume(),
            Self::Thin(pool) => lv.pool_lv.as_deref() == Some(pool.name.as_str()),
        }
    }

    /// What the pool has left in `vg`, which [`Pool::missing_from`] found usable.
    pub fn free(&self, vg: &VolumeGroup) -> PoolFree {
        match self {
            Self::Thick { spare_bytes } => PoolFree {
                vg_available_bytes: capacity::thick_free_bytes(vg.free, *spare_bytes),
                thin: None,
            },
            Self::Thin(pool) => {
                let (size, data_percent, metadata_percent) =
                    vg.lvs.get(&pool.name).map_or((0, None, None), |lv| {
                        (lv.size, lv.data_percent, lv.metadata_percent)
                    });
                let promised: u64 = vg
                    .lvs
                    .values()
                    .filter(|lv| self.holds(lv))
                    .map(|lv| lv.size)
                    .sum();
                PoolFree {
                    vg_available_bytes: vg.free,
                    thin: Some(ThinPoolUsage {
                        pool_size: size,
                        data_percent: data_percent.unwrap_or(0.0),
                        metadata_percent: metadata_percent.unwrap_or(0.0),
                        overprovision_free: capacity::thin_free_bytes(
                            size,
                            pool.overprovision_ratio,
                            promised,
                        ),
                    }),
                }
            }
        }
    }

    /// Whether the pool, in volume group `vg`, refuses new volumes and snapshots although they
    /// would fit: a thin pool whose real data usage is above the threshold.
    pub fn overfull(&self, vg: &str, free: &PoolFree) -> Option<Overfull> {
        match (self, &free.thin) {
            (Self::Thin(pool), Some(usage)) if usage.data_percent > pool.data_percent_threshold => {
                Some(Overfull {
                    pool: format!("{vg}/{}", pool.name),
                    percent: usage.data_percent,
                    threshold: pool.data_percent_threshold,
                })
            }
            _ => None,
        }
    }

    /// The `lvcreate` of volume `name` of `size` bytes (`rounded` once LVM has rounded it) in
    /// `vg`, laid out as `layout` says (a thin volume takes only its options).
    pub fn create<'a>(
        &'a self,
        vg: &VolumeGroup,
        name: &str,
        size: u64,
        rounded: u64,
        tags: &[String],
        layout: &Layout<'_>,
    ) -> Creation<'a> {
        match self {
            Self::Thick { .. } => Creation {
                argv: args::create_thick(&vg.name, name, size, tags, layout),
                kind: VolumeKind::Plain,
                pool: None,
                allocated: rounded,
            },
            Self::Thin(pool) => Creation {
                argv: args::create_thin(&vg.name, &pool.name, name, size, tags, layout.options),
                kind: VolumeKind::Thin {
                    zeroing: pool_zeroing(vg, &pool.name),
                },
                pool: Some(&pool.name),
                allocated: 0,
            },
        }
    }

    /// How a snapshot of `source` is made in this pool, or why it cannot be.
    pub fn snapshot_method(
        &self,
        vg: &str,
        source: &LogicalVolume,
    ) -> Result<SnapshotMethod, String> {
        match self {
            Self::Thin(_) if self.holds(source) => Ok(SnapshotMethod::Thin),
            Self::Thin(pool) => Err(format!("not a thin volume of pool {vg}/{}", pool.name)),
            Self::Thick { .. } if source.is_thick_snapshot() => Ok(SnapshotMethod::Copy),
            Self::Thick { .. } if source.is_thin_volume() || source.is_thin_pool() => {
                Err("a thin volume cannot have a thick snapshot".to_owned())
            }
            Self::Thick { .. } => Ok(SnapshotMethod::CopyOnWrite),
        }
    }

    /// The `lvcreate` of snapshot `name` of `source` in `vg`; `cow_size` is the change area of a
    /// copy-on-write snapshot (a thin snapshot shares its pool's space and starts at its
    /// origin's size).
    pub fn create_snapshot<'a>(
        &'a self,
        vg: &VolumeGroup,
        source: &LogicalVolume,
        name: &str,
        cow_size: u64,
        tags: &[String],
        permission: Permission,
    ) -> Creation<'a> {
        match self {
            Self::Thin(pool) => Creation {
                argv: args::create_thin_snapshot(&vg.name, &source.name, name, tags, permission),
                kind: VolumeKind::Thin {
                    zeroing: pool_zeroing(vg, &pool.name),
                },
                pool: Some(&pool.name),
                allocated: 0,
            },
            Self::Thick { .. } => Creation {
                argv: args::create_thick_snapshot(
                    &vg.name,
                    &source.name,
                    name,
                    cow_size,
                    tags,
                    permission,
                ),
                kind: VolumeKind::ThickSnapshot,
                pool: None,
                allocated: cow_size,
            },
        }
    }
}
