//! Byte units and the size rules of the CSI controller.
//!
//! Volumes are sized in multiples of [`VOLUME_SIZE_ALIGNMENT`] (4096 bytes, a whole number of
//! sectors on any disk), are never smaller than what their filesystem can be made on, and
//! follow CSI's `CapacityRange` semantics: `required_bytes` is a floor, `limit_bytes` a
//! ceiling, and 0 means "not set".

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

/// Every volume size is a multiple of this: it is a whole number of 512-, 1024- and
/// 4096-byte sectors, so LVM never has to round a request itself.
pub const VOLUME_SIZE_ALIGNMENT: u64 = 4096;

/// Size of a volume whose request sets neither a required size nor a limit (TopoLVM: 1 GiB).
pub const DEFAULT_VOLUME_SIZE: u64 = GIB;

/// Smallest ext4 volume we create.
pub const MIN_EXT4_SIZE: u64 = 32 * MIB;
/// Smallest xfs volume we create (mkfs.xfs refuses much smaller devices).
pub const MIN_XFS_SIZE: u64 = 300 * MIB;
/// Smallest btrfs volume we create.
pub const MIN_BTRFS_SIZE: u64 = 200 * MIB;
/// Smallest raw block volume we create.
pub const MIN_BLOCK_SIZE: u64 = 8 * MIB;

/// Why a size could not be worked out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// `required_bytes` was negative.
    #[error("required capacity must not be negative (got {0})")]
    NegativeRequired(i64),
    /// `limit_bytes` was negative.
    #[error("capacity limit must not be negative (got {0})")]
    NegativeLimit(i64),
    /// `required_bytes` was above `limit_bytes`.
    #[error("required capacity {required} exceeds the limit {limit}")]
    RequiredExceedsLimit {
        /// The required size asked for.
        required: u64,
        /// The limit asked for.
        limit: u64,
    },
    /// After rounding up to the alignment and raising to the filesystem's minimum, the size
    /// no longer fits under the limit.
    #[error(
        "capacity limit {limit} is below {size}, the smallest allowed size for this request (sizes are multiples of {VOLUME_SIZE_ALIGNMENT} bytes and at least {minimum} bytes for this volume type)"
    )]
    LimitTooSmall {
        /// The smallest size that satisfies the request.
        size: u64,
        /// The limit asked for.
        limit: u64,
        /// The minimum size for the volume type.
        minimum: u64,
    },
    /// The size does not fit in the signed 64-bit byte counts CSI uses.
    #[error("capacity is too large to represent")]
    Overflow,
    /// The filesystem type is not one we can create.
    #[error("unsupported filesystem type {0:?} (supported: ext4, xfs, btrfs)")]
    UnsupportedFilesystem(String),
}

/// A filesystem topolvm-rs can create on a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filesystem {
    /// ext4, the default when the StorageClass names none.
    Ext4,
    /// xfs.
    Xfs,
    /// btrfs.
    Btrfs,
}

impl Filesystem {
    /// All supported filesystems.
    pub const ALL: [Filesystem; 3] = [Filesystem::Ext4, Filesystem::Xfs, Filesystem::Btrfs];

    /// Interprets a CSI `fs_type`: absent or empty means ext4.
    pub fn from_fs_type(fs_type: Option<&str>) -> Result<Self, SizeError> {
        match fs_type {
            None | Some("") => Ok(Filesystem::Ext4),
            Some(name) => name.parse(),
        }
    }

    /// The name used in `fs_type`, StorageClasses and `mkfs.<name>`.
    pub fn name(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
            Filesystem::Btrfs => "btrfs",
        }
    }

    /// The smallest volume this filesystem is created on.
    pub fn min_volume_size(self) -> u64 {
        match self {
            Filesystem::Ext4 => MIN_EXT4_SIZE,
            Filesystem::Xfs => MIN_XFS_SIZE,
            Filesystem::Btrfs => MIN_BTRFS_SIZE,
        }
    }
}

impl FromStr for Filesystem {
    type Err = SizeError;

    /// Parses an exact, lower-case filesystem name; use [`Filesystem::from_fs_type`] to get
    /// the default for an empty one.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Filesystem::ALL
            .into_iter()
            .find(|fs| fs.name() == name)
            .ok_or_else(|| SizeError::UnsupportedFilesystem(name.to_owned()))
    }
}

impl fmt::Display for Filesystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
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

/// Smallest size of a volume: [`MIN_BLOCK_SIZE`] for raw block volumes (whatever `fs_type`
/// says, since no filesystem is made), otherwise the minimum of the filesystem, with absent
/// or empty `fs_type` meaning ext4.
///
/// An unknown filesystem is an error, so the controller refuses the volume at creation
/// instead of the node failing at mount time.
pub fn min_volume_size(fs_type: Option<&str>, block: bool) -> Result<u64, SizeError> {
    if block {
        return Ok(MIN_BLOCK_SIZE);
    }
    Filesystem::from_fs_type(fs_type).map(Filesystem::min_volume_size)
}

/// Decides the size of a new or expanded volume from a CSI `CapacityRange`.
///
/// `required` and `limit` are the request's `required_bytes` and `limit_bytes`, 0 meaning
/// unset. `min` is the smallest size for the volume type (see [`min_volume_size`]) and
/// `default_size` the size when nothing is asked for (TopoLVM: [`DEFAULT_VOLUME_SIZE`]).
///
/// - Neither set: `default_size`.
/// - Only a limit: `default_size`, or the limit rounded down to the alignment when the limit
///   is smaller (the largest size the caller allows).
/// - A required size: that size.
///
/// The result is then raised to `min` (and to at least one byte, so it is never 0) and rounded
/// up to [`VOLUME_SIZE_ALIGNMENT`]; if that goes past a set limit the request cannot be met.
/// The result fits in an `i64`, as CSI's `capacity_bytes` needs.
///
/// TopoLVM applies its minimum before defaulting, so with a minimum configured an empty
/// request gets the minimum there; here it gets `default_size` (the pod webhook also assumes
/// 1 GiB for such claims, so this keeps the two in step).
///
/// ```
/// use topolvm_core::size::{resolve_capacity_range, DEFAULT_VOLUME_SIZE, MIB};
/// assert_eq!(resolve_capacity_range(0, 0, 32 * MIB, DEFAULT_VOLUME_SIZE), Ok(DEFAULT_VOLUME_SIZE));
/// assert_eq!(resolve_capacity_range(5000, 0, 0, DEFAULT_VOLUME_SIZE), Ok(8192));
/// assert_eq!(resolve_capacity_range(1, 0, 32 * MIB, DEFAULT_VOLUME_SIZE), Ok(32 * MIB));
/// assert!(resolve_capacity_range(5000, 5000, 0, DEFAULT_VOLUME_SIZE).is_err());
/// ```
pub fn resolve_capacity_range(
    required: i64,
    limit: i64,
    min: u64,
    default_size: u64,
) -> Result<u64, SizeError> {
    let required = u64::try_from(required).map_err(|_| SizeError::NegativeRequired(required))?;
    let limit = u64::try_from(limit).map_err(|_| SizeError::NegativeLimit(limit))?;
    let limit = (limit != 0).then_some(limit);

    if let Some(limit) = limit
        && required > limit
    {
        return Err(SizeError::RequiredExceedsLimit { required, limit });
    }

    let wanted = match (required, limit) {
        (0, Some(limit)) if limit < default_size => {
            round_down(limit, VOLUME_SIZE_ALIGNMENT).ok_or(SizeError::Overflow)?
        }
        (0, _) => default_size,
        (required, _) => required,
    };
    // `max(1)`: a zero-byte volume is never what anyone wants, even with a zero default.
    let size = round_up(wanted.max(min).max(1), VOLUME_SIZE_ALIGNMENT)
        .filter(|&size| i64::try_from(size).is_ok())
        .ok_or(SizeError::Overflow)?;

    match limit {
        Some(limit) if size > limit => Err(SizeError::LimitTooSmall {
            size,
            limit,
            minimum: min,
        }),
        _ => Ok(size),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn units() {
        assert_eq!(KIB, 1024);
        assert_eq!(MIB, 1024 * 1024);
        assert_eq!(GIB, 1024 * 1024 * 1024);
        assert_eq!(TIB, 1024 * GIB);
        assert_eq!(DEFAULT_VOLUME_SIZE, GIB);
        assert_eq!(VOLUME_SIZE_ALIGNMENT, 4 * KIB);
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
    fn minimum_sizes() {
        assert_eq!(min_volume_size(None, false), Ok(32 * MIB));
        assert_eq!(min_volume_size(Some(""), false), Ok(32 * MIB));
        assert_eq!(min_volume_size(Some("ext4"), false), Ok(32 * MIB));
        assert_eq!(min_volume_size(Some("xfs"), false), Ok(300 * MIB));
        assert_eq!(min_volume_size(Some("btrfs"), false), Ok(200 * MIB));
        assert_eq!(min_volume_size(None, true), Ok(8 * MIB));
        assert_eq!(min_volume_size(Some("xfs"), true), Ok(8 * MIB));
        assert_eq!(min_volume_size(Some("zfs"), true), Ok(8 * MIB));
        assert_eq!(
            min_volume_size(Some("zfs"), false),
            Err(SizeError::UnsupportedFilesystem("zfs".to_owned()))
        );
        assert_eq!(
            min_volume_size(Some("XFS"), false),
            Err(SizeError::UnsupportedFilesystem("XFS".to_owned()))
        );
    }

    #[test]
    fn filesystem_names_round_trip() {
        for fs in Filesystem::ALL {
            assert_eq!(fs.name().parse::<Filesystem>(), Ok(fs));
            assert_eq!(fs.to_string(), fs.name());
        }
        assert_eq!(Filesystem::from_fs_type(None), Ok(Filesystem::Ext4));
        assert_eq!(Filesystem::from_fs_type(Some("")), Ok(Filesystem::Ext4));
        assert_eq!(
            Filesystem::from_fs_type(Some("btrfs")),
            Ok(Filesystem::Btrfs)
        );
        assert!("".parse::<Filesystem>().is_err());
    }

    const D: u64 = DEFAULT_VOLUME_SIZE;
    const MIN: u64 = 32 * MIB;

    struct Case {
        name: &'static str,
        required: i64,
        limit: i64,
        min: u64,
        default_size: u64,
        expected: Result<u64, SizeError>,
    }

    fn case(
        name: &'static str,
        required: i64,
        limit: i64,
        min: u64,
        expected: Result<u64, SizeError>,
    ) -> Case {
        Case {
            name,
            required,
            limit,
            min,
            default_size: D,
            expected,
        }
    }

    #[test]
    fn capacity_range_table() {
        let gib = GIB as i64;
        let mib = MIB as i64;
        let too_small = |size, limit, minimum| {
            Err(SizeError::LimitTooSmall {
                size,
                limit,
                minimum,
            })
        };
        let cases = vec![
            case("nothing set gives the default", 0, 0, MIN, Ok(D)),
            case("nothing set, no minimum", 0, 0, 0, Ok(D)),
            case(
                "limit above default gives the default",
                0,
                2 * gib,
                MIN,
                Ok(D),
            ),
            case(
                "limit equal to default gives the default",
                0,
                gib,
                MIN,
                Ok(D),
            ),
            case(
                "limit below default gives the limit",
                0,
                512 * mib,
                MIN,
                Ok(512 * MIB),
            ),
            case(
                "limit below default rounds down",
                0,
                512 * mib + 100,
                MIN,
                Ok(512 * MIB),
            ),
            case(
                "limit below the minimum",
                0,
                16 * mib,
                MIN,
                too_small(MIN, 16 * MIB, MIN),
            ),
            case(
                "limit below one alignment unit",
                0,
                4095,
                0,
                too_small(4096, 4095, 0),
            ),
            case("limit of one alignment unit", 0, 4096, 0, Ok(4096)),
            case("required exact", gib, 0, MIN, Ok(GIB)),
            case("required rounded up", 5000, 0, 0, Ok(8192)),
            case("required 1 byte", 1, 0, 0, Ok(4096)),
            case("required raised to minimum", mib, 0, MIN, Ok(MIN)),
            case(
                "required raised to xfs minimum",
                gib / 8,
                0,
                MIN_XFS_SIZE,
                Ok(MIN_XFS_SIZE),
            ),
            case(
                "required raised to block minimum",
                4096,
                0,
                MIN_BLOCK_SIZE,
                Ok(8 * MIB),
            ),
            case("required equals limit", gib, gib, MIN, Ok(GIB)),
            case("required under limit", gib, 2 * gib, MIN, Ok(GIB)),
            case(
                "required over limit",
                2 * gib,
                gib,
                MIN,
                Err(SizeError::RequiredExceedsLimit {
                    required: 2 * GIB,
                    limit: GIB,
                }),
            ),
            case(
                "rounding pushes past the limit",
                5000,
                5000,
                0,
                too_small(8192, 5000, 0),
            ),
            case("rounding stays under the limit", 5000, 8192, 0, Ok(8192)),
            case(
                "minimum pushes past the limit",
                mib,
                2 * mib,
                MIN,
                too_small(MIN, 2 * MIB, MIN),
            ),
            case(
                "negative required",
                -1,
                0,
                MIN,
                Err(SizeError::NegativeRequired(-1)),
            ),
            case(
                "negative limit",
                0,
                -1,
                MIN,
                Err(SizeError::NegativeLimit(-1)),
            ),
            case(
                "both negative",
                -5,
                -1,
                MIN,
                Err(SizeError::NegativeRequired(-5)),
            ),
            case(
                "i64::MIN required",
                i64::MIN,
                0,
                0,
                Err(SizeError::NegativeRequired(i64::MIN)),
            ),
            case(
                "largest aligned i64",
                i64::MAX - 4095,
                0,
                0,
                Ok(i64::MAX as u64 - 4095),
            ),
            case(
                "i64::MAX cannot be aligned",
                i64::MAX,
                0,
                0,
                Err(SizeError::Overflow),
            ),
            case(
                "just over the largest aligned i64",
                i64::MAX - 4094,
                0,
                0,
                Err(SizeError::Overflow),
            ),
            case("huge minimum", 1, 0, u64::MAX, Err(SizeError::Overflow)),
            Case {
                default_size: u64::MAX - 1,
                ..case("huge default", 0, 0, 0, Err(SizeError::Overflow))
            },
            Case {
                default_size: 1000,
                ..case("unaligned default", 0, 0, 0, Ok(4096))
            },
            Case {
                default_size: 0,
                ..case("zero default still gives a volume", 0, 0, 0, Ok(4096))
            },
            Case {
                default_size: 64 * MIB,
                ..case(
                    "small default raised to minimum",
                    0,
                    0,
                    MIN_XFS_SIZE,
                    Ok(MIN_XFS_SIZE),
                )
            },
        ];
        for c in cases {
            assert_eq!(
                resolve_capacity_range(c.required, c.limit, c.min, c.default_size),
                c.expected,
                "{}",
                c.name
            );
        }
    }

    proptest! {
        #[test]
        fn result_obeys_every_rule(
            required in 0i64..=(1 << 50),
            limit in prop_oneof![Just(0i64), 0i64..=(1 << 50)],
            min in prop_oneof![Just(0u64), Just(MIN_BLOCK_SIZE), Just(MIN_EXT4_SIZE), Just(MIN_XFS_SIZE)],
        ) {
            match resolve_capacity_range(required, limit, min, D) {
                Ok(size) => {
                    prop_assert_eq!(size % VOLUME_SIZE_ALIGNMENT, 0);
                    prop_assert!(size >= min);
                    prop_assert!(size >= required as u64);
                    if limit != 0 {
                        prop_assert!(size <= limit as u64);
                    }
                    if required == 0 && limit == 0 {
                        prop_assert_eq!(size, D.max(min));
                    }
                    if required != 0 {
                        // No larger than needed.
                        let needed = (required as u64).max(min).next_multiple_of(VOLUME_SIZE_ALIGNMENT);
                        prop_assert_eq!(size, needed);
                    }
                }
                Err(SizeError::RequiredExceedsLimit { .. }) => {
                    prop_assert!(limit != 0 && required > limit);
                }
                Err(SizeError::LimitTooSmall { size, limit: l, .. }) => {
                    prop_assert_eq!(l, limit as u64);
                    prop_assert!(size > l);
                }
                Err(other) => prop_assert!(false, "unexpected error {other}"),
            }
        }
    }
}
