//! Byte units and TopoLVM's volume size rules.
//!
//! TopoLVM's controller sizes a new volume in two steps (`CreateVolume` in
//! `internal/driver/controller.go` @ `061b806ae885` and `MinMaxAllocationsFromSettings` in
//! `internal/driver/allocation_settings.go` @ `a967c95da14f`):
//!
//! 1. [`raise_to_minimum`]: a `required_bytes` below the minimum allocation of the volume's
//!    access type (block, or the filesystem of a mount) is raised to that minimum
//!    ([`MinimumAllocation`], the `--minimum-allocation-*` flags).
//! 2. [`resolve_capacity_range`] (TopoLVM's `convertRequestCapacityBytes`): validation,
//!    the 1 GiB default and rounding to [`VOLUME_SIZE_ALIGNMENT`].
//!
//! [`create_volume_size`] is both steps, as CreateVolume runs them; ControllerExpandVolume runs
//! only the second. Because the minimum comes first, an ext4 volume with no request gets the
//! ext4 minimum (32 MiB), not the 1 GiB default.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// One kibibyte (2^10 bytes).
pub const KIB: u64 = 1 << 10;
/// One mebibyte (2^20 bytes).
pub const MIB: u64 = 1 << 20;
/// One gibibyte (2^30 bytes).
pub const GIB: u64 = 1 << 30;
/// One tebibyte (2^40 bytes).
pub const TIB: u64 = 1 << 40;

/// Every volume size is a multiple of this (TopoLVM's `MinimumSectorSize`): a whole number of
/// 512-, 1024- and 4096-byte sectors, so LVM never has to round a request itself.
pub const VOLUME_SIZE_ALIGNMENT: u64 = 4096;

/// Size of a volume whose request asks for nothing (TopoLVM's `DefaultSize`, 1 GiB). The pod
/// webhook also assumes it for a claim without a storage request.
pub const DEFAULT_VOLUME_SIZE: u64 = GIB;

/// Default minimum allocation of a raw block volume (`--minimum-allocation-block`).
pub const DEFAULT_MINIMUM_ALLOCATION_BLOCK: u64 = 8 * MIB;
/// Default minimum allocation of an ext4 volume (`--minimum-allocation-ext4`).
pub const DEFAULT_MINIMUM_ALLOCATION_EXT4: u64 = 32 * MIB;
/// Default minimum allocation of an xfs volume (`--minimum-allocation-xfs`); mkfs.xfs refuses
/// much smaller devices.
pub const DEFAULT_MINIMUM_ALLOCATION_XFS: u64 = 300 * MIB;
/// Default minimum allocation of a btrfs volume (`--minimum-allocation-btrfs`).
pub const DEFAULT_MINIMUM_ALLOCATION_BTRFS: u64 = 200 * MIB;

/// A volume made from a source (a restore of a snapshot, a clone of a volume) asked for fewer
/// bytes than the source has: its content would not fit. The CSI spec answers it with
/// `OUT_OF_RANGE` (v1.12.0, CreateVolume "Errors": "Unsupported `capacity_range`", for example a
/// volume smaller than its source snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("requested {requested} bytes is smaller than the {source_size} bytes of the source")]
pub struct SmallerThanSource {
    /// The size asked for the new volume.
    pub requested: u64,
    /// The source's size.
    pub source_size: u64,
}

/// Checks that a volume of `requested` bytes can hold a source of `source_size` bytes.
pub fn fits_source(requested: u64, source_size: u64) -> Result<(), SmallerThanSource> {
    if requested < source_size {
        Err(SmallerThanSource {
            requested,
            source_size,
        })
    } else {
        Ok(())
    }
}

/// Why a capacity range cannot be turned into a volume size. CreateVolume and
/// ControllerExpandVolume answer all of them with `InvalidArgument`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// `required_bytes` was negative.
    #[error("required capacity must not be negative (got {0})")]
    NegativeRequired(i64),
    /// `limit_bytes` was negative.
    #[error("capacity limit must not be negative (got {0})")]
    NegativeLimit(i64),
    /// `required_bytes` was above a set `limit_bytes`.
    #[error("requested capacity exceeds limit capacity: request={required} limit={limit}")]
    RequiredExceedsLimit {
        /// The required size asked for (after raising it to the minimum allocation).
        required: u64,
        /// The limit asked for.
        limit: u64,
    },
    /// Rounding `required_bytes` up to the alignment went past `limit_bytes`.
    #[error(
        "requested capacity exceeds limit capacity, either specify a lower request or a higher limit (sizes are multiples of {VOLUME_SIZE_ALIGNMENT} bytes): request={rounded} limit={limit}"
    )]
    RoundedExceedsLimit {
        /// The required size rounded up to the alignment.
        rounded: u64,
        /// The limit asked for.
        limit: u64,
    },
    /// Nothing was required and the limit, rounded down to the alignment, is 0.
    #[error(
        "requested capacity is 0, because it defaulted to the limit ({limit}) and was rounded down to a multiple of {VOLUME_SIZE_ALIGNMENT}; specify a limit of at least {VOLUME_SIZE_ALIGNMENT} bytes"
    )]
    LimitBelowAlignment {
        /// The limit asked for.
        limit: u64,
    },
    /// Rounding up went past the largest `i64` (TopoLVM's arithmetic would wrap around).
    #[error("capacity is too large to represent")]
    Overflow,
}

/// A filesystem topolvm-rs can make on a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filesystem {
    /// ext4, what the node makes when `fs_type` is empty.
    Ext4,
    /// xfs.
    Xfs,
    /// btrfs.
    Btrfs,
}

/// An `fs_type` names no filesystem topolvm-rs can make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported filesystem type {0:?} (supported: ext4, xfs, btrfs)")]
pub struct UnsupportedFilesystem(pub String);

impl Filesystem {
    /// All supported filesystems.
    pub const ALL: [Filesystem; 3] = [Filesystem::Ext4, Filesystem::Xfs, Filesystem::Btrfs];

    /// The filesystem the node makes for a CSI `fs_type`: empty means ext4
    /// ([`crate::names::DEFAULT_FSTYPE`]).
    ///
    /// Not used for the minimum allocation, where an empty `fs_type` means no minimum.
    pub fn from_fs_type(fs_type: &str) -> Result<Self, UnsupportedFilesystem> {
        if fs_type.is_empty() {
            return Ok(Filesystem::Ext4);
        }
        fs_type.parse()
    }

    /// The name used in `fs_type`, StorageClasses and `mkfs.<name>`.
    pub fn name(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
            Filesystem::Btrfs => "btrfs",
        }
    }
}

impl FromStr for Filesystem {
    type Err = UnsupportedFilesystem;

    /// Parses an exact, lower-case filesystem name; [`Filesystem::from_fs_type`] also gives
    /// the default for an empty one.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Filesystem::ALL
            .into_iter()
            .find(|fs| fs.name() == name)
            .ok_or_else(|| UnsupportedFilesystem(name.to_owned()))
    }
}

impl fmt::Display for Filesystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a volume is consumed, as far as the minimum allocation cares: TopoLVM takes it from the
/// first volume capability that is a block or a mount capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeAccess<'a> {
    /// A raw block device.
    Block,
    /// A mounted filesystem; `fs_type` exactly as the capability carries it (may be empty).
    Mount {
        /// The capability's `fs_type`.
        fs_type: &'a str,
    },
}

/// The smallest volume the controller creates per access type (TopoLVM's
/// `MinimumAllocationSettings`, set by `--minimum-allocation-block` and
/// `--minimum-allocation-<fs>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinimumAllocation {
    /// Minimum of raw block volumes.
    pub block: u64,
    /// Minimum of mounted volumes per `fs_type`. An `fs_type` that is not a key, including the
    /// empty one, has no minimum.
    pub filesystem: BTreeMap<String, u64>,
}

impl Default for MinimumAllocation {
    /// TopoLVM's flag defaults: block 8 MiB, ext4 32 MiB, xfs 300 MiB, btrfs 200 MiB.
    fn default() -> Self {
        Self {
            block: DEFAULT_MINIMUM_ALLOCATION_BLOCK,
            filesystem: BTreeMap::from([
                (
                    Filesystem::Ext4.name().to_owned(),
                    DEFAULT_MINIMUM_ALLOCATION_EXT4,
                ),
                (
                    Filesystem::Xfs.name().to_owned(),
                    DEFAULT_MINIMUM_ALLOCATION_XFS,
                ),
                (
                    Filesystem::Btrfs.name().to_owned(),
                    DEFAULT_MINIMUM_ALLOCATION_BTRFS,
                ),
            ]),
        }
    }
}

impl MinimumAllocation {
    /// The minimum for one access type; 0 for an `fs_type` without an entry.
    pub fn for_access(&self, access: VolumeAccess<'_>) -> u64 {
        match access {
            VolumeAccess::Block => self.block,
            VolumeAccess::Mount { fs_type } => {
                self.filesystem.get(fs_type).copied().unwrap_or_default()
            }
        }
    }
}

/// Rounds `bytes` up to a multiple of `unit`; `None` when `unit` is 0 or the result overflows.
pub fn round_up(bytes: u64, unit: u64) -> Option<u64> {
    bytes.checked_next_multiple_of(unit)
}

/// Rounds `bytes` down to a multiple of `unit`; `None` when `unit` is 0.
pub fn round_down(bytes: u64, unit: u64) -> Option<u64> {
    bytes.checked_rem(unit).map(|rest| bytes - rest)
}

/// CreateVolume's step 2: a `required_bytes` below `minimum` becomes `minimum`.
///
/// As in TopoLVM, this happens before any validation, so a negative `required_bytes` is
/// raised too (to the minimum, or to 0 when there is none) and never reaches the negative
/// check of [`resolve_capacity_range`].
pub fn raise_to_minimum(required: i64, minimum: u64) -> i64 {
    required.max(i64::try_from(minimum).unwrap_or(i64::MAX))
}

/// CreateVolume's step 4 and ControllerExpandVolume's size: TopoLVM's
/// `convertRequestCapacityBytes(required, limit)`, where 0 means "not set".
///
/// - A negative `required` or `limit` is refused.
/// - A set limit below `required` is refused.
/// - `required` 0: [`DEFAULT_VOLUME_SIZE`], unless a limit below it is set; then the limit
///   rounded down to [`VOLUME_SIZE_ALIGNMENT`] (refused when that is 0).
/// - Otherwise `required` rounded up to [`VOLUME_SIZE_ALIGNMENT`], refused when that passes a
///   set limit.
///
/// The result is never 0 and fits in an `i64`, as CSI's `capacity_bytes` needs.
///
/// ```
/// use topolvm_core::size::{resolve_capacity_range, GIB};
/// assert_eq!(resolve_capacity_range(0, 0), Ok(GIB));
/// assert_eq!(resolve_capacity_range(5000, 0), Ok(8192));
/// assert_eq!(resolve_capacity_range(0, 5000), Ok(4096));
/// assert!(resolve_capacity_range(5000, 5000).is_err());
/// ```
pub fn resolve_capacity_range(required: i64, limit: i64) -> Result<u64, SizeError> {
    let required = u64::try_from(required).map_err(|_| SizeError::NegativeRequired(required))?;
    let limit = u64::try_from(limit).map_err(|_| SizeError::NegativeLimit(limit))?;
    if limit != 0 && required > limit {
        return Err(SizeError::RequiredExceedsLimit { required, limit });
    }
    if required == 0 {
        if limit == 0 || limit >= DEFAULT_VOLUME_SIZE {
            return Ok(DEFAULT_VOLUME_SIZE);
        }
        return match round_down(limit, VOLUME_SIZE_ALIGNMENT) {
            Some(0) | None => Err(SizeError::LimitBelowAlignment { limit }),
            Some(rounded) => Ok(rounded),
        };
    }
    let rounded = round_up(required, VOLUME_SIZE_ALIGNMENT)
        .filter(|&rounded| i64::try_from(rounded).is_ok())
        .ok_or(SizeError::Overflow)?;
    if limit != 0 && rounded > limit {
        return Err(SizeError::RoundedExceedsLimit { rounded, limit });
    }
    Ok(rounded)
}

/// The size of a new volume, as CreateVolume works it out: [`raise_to_minimum`], then
/// [`resolve_capacity_range`]. `minimum` is [`MinimumAllocation::for_access`] of the request.
///
/// ```
/// use topolvm_core::size::{create_volume_size, MinimumAllocation, VolumeAccess, GIB, MIB};
/// let minimums = MinimumAllocation::default();
/// let ext4 = minimums.for_access(VolumeAccess::Mount { fs_type: "ext4" });
/// assert_eq!(create_volume_size(0, 0, ext4), Ok(32 * MIB));
/// let unknown = minimums.for_access(VolumeAccess::Mount { fs_type: "" });
/// assert_eq!(create_volume_size(0, 0, unknown), Ok(GIB));
/// ```
pub fn create_volume_size(required: i64, limit: i64, minimum: u64) -> Result<u64, SizeError> {
    resolve_capacity_range(raise_to_minimum(required, minimum), limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_volume_fits_a_source_of_its_size_or_smaller() {
        assert_eq!(fits_source(GIB, GIB), Ok(()));
        assert_eq!(fits_source(2 * GIB, GIB), Ok(()));
        assert_eq!(
            fits_source(GIB - 1, GIB),
            Err(SmallerThanSource {
                requested: GIB - 1,
                source_size: GIB
            })
        );
    }

    #[test]
    fn rounding() {
        assert_eq!(round_up(0, 4096), Some(0));
        assert_eq!(round_up(1, 4096), Some(4096));
        assert_eq!(round_up(4096, 4096), Some(4096));
        assert_eq!(round_up(4097, 4096), Some(8192));
        assert_eq!(round_up(u64::MAX, 4096), None);
        assert_eq!(round_up(u64::MAX - 4095, 4096), Some(u64::MAX - 4095));
        assert_eq!(round_up(10, 0), None);
        assert_eq!(round_up(10, 3), Some(12));
        assert_eq!(round_down(0, 4096), Some(0));
        assert_eq!(round_down(4095, 4096), Some(0));
        assert_eq!(round_down(8191, 4096), Some(4096));
        assert_eq!(round_down(u64::MAX, 4096), Some(u64::MAX - 4095));
        assert_eq!(round_down(10, 0), None);
    }

    #[test]
    fn filesystem_names_round_trip() {
        for fs in Filesystem::ALL {
            assert_eq!(fs.name().parse::<Filesystem>(), Ok(fs));
            assert_eq!(fs.to_string(), fs.name());
        }
        assert_eq!(Filesystem::from_fs_type(""), Ok(Filesystem::Ext4));
        assert_eq!(Filesystem::from_fs_type("btrfs"), Ok(Filesystem::Btrfs));
        assert_eq!(
            Filesystem::from_fs_type("XFS"),
            Err(UnsupportedFilesystem("XFS".to_owned()))
        );
        assert!("".parse::<Filesystem>().is_err());
    }

    #[test]
    fn configured_minimums_replace_the_defaults() {
        let minimums = MinimumAllocation {
            block: 0,
            filesystem: BTreeMap::from([("zfs".to_owned(), 64 * MIB)]),
        };
        assert_eq!(minimums.for_access(VolumeAccess::Block), 0);
        assert_eq!(
            minimums.for_access(VolumeAccess::Mount { fs_type: "zfs" }),
            64 * MIB
        );
        assert_eq!(
            minimums.for_access(VolumeAccess::Mount { fs_type: "ext4" }),
            0
        );
    }

    #[test]
    fn huge_minimum_saturates() {
        assert_eq!(raise_to_minimum(1, u64::MAX), i64::MAX);
        assert_eq!(create_volume_size(0, 0, u64::MAX), Err(SizeError::Overflow));
    }

    proptest! {
        #[test]
        fn result_obeys_every_rule(
            required in prop_oneof![Just(0i64), 0i64..=(1 << 50)],
            limit in prop_oneof![Just(0i64), 0i64..=(1 << 50)],
        ) {
            match resolve_capacity_range(required, limit) {
                Ok(size) => {
                    prop_assert_eq!(size % VOLUME_SIZE_ALIGNMENT, 0);
                    prop_assert!(size > 0);
                    prop_assert!(size >= required as u64);
                    if limit != 0 {
                        prop_assert!(size <= limit as u64);
                    }
                    if required != 0 {
                        // No larger than needed.
                        prop_assert_eq!(size, (required as u64).next_multiple_of(VOLUME_SIZE_ALIGNMENT));
                    }
                }
                Err(SizeError::RequiredExceedsLimit { .. }) => {
                    prop_assert!(limit != 0 && required > limit);
                }
                Err(SizeError::RoundedExceedsLimit { rounded, limit: l }) => {
                    prop_assert_eq!(l, limit as u64);
                    prop_assert!(rounded > l && required <= limit);
                }
                Err(SizeError::LimitBelowAlignment { limit: l }) => {
                    prop_assert!(required == 0 && l < VOLUME_SIZE_ALIGNMENT);
                }
                Err(other) => prop_assert!(false, "unexpected error {other}"),
            }
        }
    }
}
