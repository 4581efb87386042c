//! Decoding `lvm fullreport` JSON into typed volume groups and logical volumes.
//!
//! One `fullreport` invocation describes every volume group with its physical volumes, logical
//! volumes and segments; it is the only read lvmd ever makes. All values arrive as strings
//! (with `--units b --nosuffix`, sizes are whole bytes).

use std::collections::BTreeMap;

use serde::Deserialize;
use thiserror::Error;

/// The report could not be understood.
#[derive(Debug, Error)]
pub enum ReportError {
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("field {field} of {object} has the value {value:?}, which is not {expected}")]
    BadField {
        object: String,
        field: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// The arguments of the one report lvmd reads: every field it uses, nothing else.
pub fn fullreport_args() -> Vec<String> {
    [
        "fullreport",
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "--configreport",
        "vg",
        "-o",
        "vg_name,vg_uuid,vg_size,vg_free,vg_extent_size,vg_seqno,vg_tags",
        "--configreport",
        "pv",
        "-o",
        "pv_name,pv_uuid,pv_major,pv_minor",
        "--configreport",
        "lv",
        "-o",
        "lv_name,lv_uuid,lv_full_name,lv_size,lv_attr,lv_tags,lv_path,lv_kernel_major,\
         lv_kernel_minor,pool_lv,origin,data_percent,metadata_percent",
        "--configreport",
        "seg",
        "-o",
        "lv_uuid,segtype,stripes,stripe_size",
        "--configreport",
        "pvseg",
        "-o",
        "pvseg_start",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// A volume group as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeGroup {
    pub name: String,
    pub uuid: String,
    pub size: u64,
    pub free: u64,
    pub extent_size: u64,
    pub seqno: u64,
    pub tags: Vec<String>,
    pub pvs: Vec<PhysicalVolume>,
    /// By name. Hidden sub-volumes (`[pool_tdata]` and the like) are left out.
    pub lvs: BTreeMap<String, LogicalVolume>,
}

/// A physical volume of a volume group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalVolume {
    /// The device path, e.g. `/dev/sdb`.
    pub name: String,
    pub uuid: String,
}

/// A logical volume as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct LogicalVolume {
    pub name: String,
    pub uuid: String,
    pub vg_name: String,
    pub size: u64,
    pub attr: String,
    pub tags: Vec<String>,
    pub path: String,
    /// `None` when the volume is not active (or activation is off).
    pub kernel_major: Option<u32>,
    pub kernel_minor: Option<u32>,
    /// The thin pool of a thin volume.
    pub pool_lv: Option<String>,
    /// The origin of a snapshot.
    pub origin: Option<String>,
    pub data_percent: Option<f64>,
    pub metadata_percent: Option<f64>,
    /// The largest stripe count over the volume's segments (1 for linear volumes).
    pub stripes: u32,
    /// Every segment is `linear` or `striped`, so the volume takes exactly its size from the
    /// volume group (false for RAID, mirrors, thin, cache and snapshot volumes).
    pub plain_allocation: bool,
    /// For a thick snapshot: the size of its copy-on-write area. LVM reports that as the
    /// snapshot's `lv_size`; [`LogicalVolume::size`] is the size readers see, the origin's.
    pub cow_size: Option<u64>,
}

impl LogicalVolume {
    fn volume_type(&self) -> char {
        self.attr.chars().next().unwrap_or('-')
    }

    /// A thin pool (attr `t`).
    pub fn is_thin_pool(&self) -> bool {
        self.volume_type() == 't'
    }

    /// A thin volume, including thin snapshots (attr `V`).
    pub fn is_thin_volume(&self) -> bool {
        self.volume_type() == 'V'
    }

    /// A thick copy-on-write snapshot (attr `s` or `S` for an invalid one).
    pub fn is_thick_snapshot(&self) -> bool {
        matches!(self.volume_type(), 's' | 'S')
    }

    /// The origin of thick snapshots (attr `o`).
    pub fn is_thick_origin(&self) -> bool {
        self.volume_type() == 'o'
    }

    /// The zeroing attribute (8th character of `lv_attr`): `z` when a thin pool zeroes newly
    /// provisioned blocks; its thin volumes show the same character.
    pub fn zeroing_attr(&self) -> char {
        self.attr.chars().nth(7).unwrap_or('-')
    }

    /// The bytes of the volume group this volume holds, where that is exactly known: a thin
    /// volume holds none (its pool does), a thick snapshot its copy-on-write area, a linear or
    /// striped volume its size. `None` for thin pools, RAID, mirrors and the like.
    pub fn allocated_bytes(&self) -> Option<u64> {
        if self.is_thin_volume() {
            Some(0)
        } else if !self.plain_allocation || self.is_thin_pool() {
            None
        } else if self.is_thick_snapshot() {
            self.cow_size
        } else {
            Some(self.size)
        }
    }
}

/// What kind of volume an `lv_attr` is predicted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    /// Linear or striped.
    Plain,
    /// A thin volume or thin snapshot; carries the pool's zeroing flag (`z` or `-`).
    Thin { zeroing: char },
    /// A thick copy-on-write snapshot.
    ThickSnapshot,
}

/// The `lv_attr` LVM reports for a volume lvmd has just created, before a report confirms it
/// (see lvs(8), "lv_attr bits"): type, permission, inherited allocation, no fixed minor, active
/// or not, not open, target type, zeroing, healthy, no activation skip.
pub fn predicted_attr(kind: VolumeKind, writable: bool, active: bool) -> String {
    let (volume_type, target, zero) = match kind {
        VolumeKind::Plain => ('-', '-', '-'),
        VolumeKind::Thin { zeroing } => ('V', 't', zeroing),
        VolumeKind::ThickSnapshot => ('s', 's', '-'),
    };
    [
        volume_type,
        if writable { 'w' } else { 'r' },
        'i',
        '-',
        if active { 'a' } else { '-' },
        '-',
        target,
        zero,
        '-',
        '-',
    ]
    .iter()
    .collect()
}

#[derive(Debug, Deserialize)]
struct Raw {
    report: Vec<RawSection>,
}

#[derive(Debug, Deserialize)]
struct RawSection {
    #[serde(default)]
    vg: Vec<RawVg>,
    #[serde(default)]
    pv: Vec<RawPv>,
    #[serde(default)]
    lv: Vec<RawLv>,
    #[serde(default)]
    seg: Vec<RawSeg>,
}

#[derive(Debug, Deserialize)]
struct RawVg {
    vg_name: String,
    vg_uuid: String,
    vg_size: String,
    vg_free: String,
    vg_extent_size: String,
    vg_seqno: String,
    #[serde(default)]
    vg_tags: String,
}

#[derive(Debug, Deserialize)]
struct RawPv {
    pv_name: String,
    pv_uuid: String,
}

#[derive(Debug, Deserialize)]
struct RawLv {
    lv_name: String,
    lv_uuid: String,
    lv_size: String,
    lv_attr: String,
    #[serde(default)]
    lv_tags: String,
    #[serde(default)]
    lv_path: String,
    #[serde(default)]
    lv_kernel_major: String,
    #[serde(default)]
    lv_kernel_minor: String,
    #[serde(default)]
    pool_lv: String,
    #[serde(default)]
    origin: String,
    #[serde(default)]
    data_percent: String,
    #[serde(default)]
    metadata_percent: String,
}

#[derive(Debug, Deserialize)]
struct RawSeg {
    lv_uuid: String,
    #[serde(default)]
    segtype: String,
    #[serde(default)]
    stripes: String,
}

fn number<T: std::str::FromStr>(
    object: &str,
    field: &'static str,
    value: &str,
) -> Result<T, ReportError> {
    value.trim().parse().map_err(|_| ReportError::BadField {
        object: object.to_owned(),
        field,
        value: value.to_owned(),
        expected: "a number",
    })
}

/// Empty and negative values (LVM prints -1 for "none") become `None`.
fn device_number(
    object: &str,
    field: &'static str,
    value: &str,
) -> Result<Option<u32>, ReportError> {
    let v = value.trim();
    if v.is_empty() || v.starts_with('-') {
        return Ok(None);
    }
    number(object, field, v).map(Some)
}

fn percent(object: &str, field: &'static str, value: &str) -> Result<Option<f64>, ReportError> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    number::<f64>(object, field, v).map(Some)
}

fn tags(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

fn non_empty(value: String) -> Option<String> {
    if value.is_empty() { None } else { Some(value) }
}

/// Gives thick snapshots the size of their origin, keeping the copy-on-write size apart.
fn present_snapshots_at_origin_size(lvs: &mut BTreeMap<String, LogicalVolume>) {
    let origin_sizes: Vec<(String, u64)> = lvs
        .values()
        .filter(|lv| lv.is_thick_snapshot())
        .filter_map(|lv| {
            let origin = lvs.get(lv.origin.as_deref()?)?;
            Some((lv.name.clone(), origin.size))
        })
        .collect();
    for (name, origin_size) in origin_sizes {
        if let Some(lv) = lvs.get_mut(&name) {
            lv.cow_size = Some(lv.size);
            lv.size = origin_size;
        }
    }
}

/// Decodes `lvm fullreport` output (from [`fullreport_args`]) into volume groups by name.
pub fn parse_fullreport(json: &str) -> Result<BTreeMap<String, VolumeGroup>, ReportError> {
    let raw: Raw = serde_json::from_str(json)?;
    let mut vgs = BTreeMap::new();
    for section in raw.report {
        // A section without a volume group lists physical volumes that belong to none.
        let Some(rvg) = section.vg.into_iter().next() else {
            continue;
        };
        let obj = format!("volume group {}", rvg.vg_name);
        let mut stripes_by_lv: BTreeMap<String, u32> = BTreeMap::new();
        let mut plain_by_lv: BTreeMap<String, bool> = BTreeMap::new();
        for seg in section.seg {
            let n: u32 = if seg.stripes.trim().is_empty() {
                1
            } else {
                number(&obj, "stripes", &seg.stripes)?
            };
            let plain = matches!(seg.segtype.as_str(), "linear" | "striped");
            *plain_by_lv.entry(seg.lv_uuid.clone()).or_insert(true) &= plain;
            let entry = stripes_by_lv.entry(seg.lv_uuid).or_insert(1);
            *entry = (*entry).max(n);
        }
        let mut lvs = BTreeMap::new();
        for rlv in section.lv {
            if rlv.lv_name.starts_with('[') {
                continue;
            }
            let lobj = format!("logical volume {}/{}", rvg.vg_name, rlv.lv_name);
            let lv = LogicalVolume {
                size: number(&lobj, "lv_size", &rlv.lv_size)?,
                kernel_major: device_number(&lobj, "lv_kernel_major", &rlv.lv_kernel_major)?,
                kernel_minor: device_number(&lobj, "lv_kernel_minor", &rlv.lv_kernel_minor)?,
                data_percent: percent(&lobj, "data_percent", &rlv.data_percent)?,
                metadata_percent: percent(&lobj, "metadata_percent", &rlv.metadata_percent)?,
                stripes: stripes_by_lv.get(&rlv.lv_uuid).copied().unwrap_or(1),
                plain_allocation: plain_by_lv.get(&rlv.lv_uuid).copied().unwrap_or(false),
                cow_size: None,
                tags: tags(&rlv.lv_tags),
                pool_lv: non_empty(rlv.pool_lv),
                origin: non_empty(rlv.origin),
                vg_name: rvg.vg_name.clone(),
                name: rlv.lv_name,
                uuid: rlv.lv_uuid,
                attr: rlv.lv_attr,
                path: rlv.lv_path,
            };
            lvs.insert(lv.name.clone(), lv);
        }
        present_snapshots_at_origin_size(&mut lvs);
        let vg = VolumeGroup {
            size: number(&obj, "vg_size", &rvg.vg_size)?,
            free: number(&obj, "vg_free", &rvg.vg_free)?,
            extent_size: number(&obj, "vg_extent_size", &rvg.vg_extent_size)?,
            seqno: number(&obj, "vg_seqno", &rvg.vg_seqno)?,
            tags: tags(&rvg.vg_tags),
            pvs: section
                .pv
                .into_iter()
                .map(|p| PhysicalVolume {
                    name: p.pv_name,
                    uuid: p.pv_uuid,
                })
                .collect(),
            lvs,
            name: rvg.vg_name,
            uuid: rvg.vg_uuid,
        };
        vgs.insert(vg.name.clone(), vg);
    }
    Ok(vgs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_report_decodes() {
        let json = r#"{"report":[
          {"vg":[{"vg_name":"vg1","vg_uuid":"u","vg_size":"1069547520","vg_free":"952107008","vg_extent_size":"4194304","vg_seqno":"3","vg_tags":"a,b"}],
           "pv":[{"pv_name":"/dev/loop0","pv_uuid":"p"}],
           "lv":[{"lv_name":"lv1","lv_uuid":"L1","lv_full_name":"vg1/lv1","lv_size":"104857600","lv_attr":"-wi-XX----","lv_tags":"topolvm.io/managed,topolvm.io/volume=lv1","lv_path":"/dev/vg1/lv1","lv_kernel_major":"-1","lv_kernel_minor":"-1","pool_lv":"","origin":"","data_percent":"","metadata_percent":""},
                 {"lv_name":"[pool_tdata]","lv_uuid":"H","lv_full_name":"vg1/pool_tdata","lv_size":"1","lv_attr":"Twi-a-t---","lv_tags":"","lv_path":"","lv_kernel_major":"253","lv_kernel_minor":"1","pool_lv":"","origin":"","data_percent":"","metadata_percent":""},
                 {"lv_name":"thin","lv_uuid":"L2","lv_full_name":"vg1/thin","lv_size":"8388608","lv_attr":"Vwi-a-tz--","lv_tags":"","lv_path":"/dev/vg1/thin","lv_kernel_major":"253","lv_kernel_minor":"4","pool_lv":"pool","origin":"","data_percent":"12.50","metadata_percent":""}],
           "pvseg":[{"pvseg_start":"0"}],
           "seg":[{"lv_uuid":"L1","segtype":"striped","stripes":"2","stripe_size":"65536"},{"lv_uuid":"L1","segtype":"linear","stripes":"1","stripe_size":"0"}]},
          {"pv":[{"pv_name":"/dev/loop1","pv_uuid":"q"}],"pvseg":[{"pvseg_start":"0"}]}
        ]}"#;
        let vgs = parse_fullreport(json).expect("parses");
        assert_eq!(vgs.len(), 1);
        let vg = &vgs["vg1"];
        assert_eq!(
            (vg.size, vg.free, vg.extent_size, vg.seqno),
            (1069547520, 952107008, 4194304, 3)
        );
        assert_eq!(vg.tags, ["a", "b"]);
        assert_eq!(vg.pvs.len(), 1);
        assert_eq!(vg.lvs.len(), 2, "hidden volumes are left out");
        let lv1 = &vg.lvs["lv1"];
        assert_eq!(lv1.tags, ["topolvm.io/managed", "topolvm.io/volume=lv1"]);
        assert_eq!((lv1.kernel_major, lv1.kernel_minor), (None, None));
        assert_eq!(lv1.stripes, 2);
        assert!(lv1.plain_allocation, "striped and linear segments");
        assert_eq!(lv1.data_percent, None);
        let thin = &vg.lvs["thin"];
        assert!(thin.is_thin_volume());
        assert!(
            !thin.plain_allocation,
            "no segment reported: not known to be plain"
        );
        assert_eq!(thin.pool_lv.as_deref(), Some("pool"));
        assert_eq!(thin.data_percent, Some(12.5));
        assert_eq!((thin.kernel_major, thin.kernel_minor), (Some(253), Some(4)));
    }

    #[test]
    fn bad_numbers_name_the_object_and_field() {
        let json = r#"{"report":[{"vg":[{"vg_name":"vg1","vg_uuid":"u","vg_size":"12x","vg_free":"0","vg_extent_size":"4194304","vg_seqno":"1","vg_tags":""}]}]}"#;
        let err = parse_fullreport(json).expect_err("bad size").to_string();
        assert!(
            err.contains("vg_size") && err.contains("volume group vg1"),
            "{err}"
        );
        assert!(parse_fullreport("not json").is_err());
        assert!(parse_fullreport("{}").is_err());
    }

    /// Real output of lvm2 2.03.16 in metadata-only mode on loop devices (see fixtures/README.md).
    #[test]
    fn captured_host_report_decodes() {
        let vgs = parse_fullreport(include_str!(
            "../../tests/fixtures/fullreport-host-thick.json"
        ))
        .expect("parses");
        assert!(!vgs.is_empty());
        let lvs: Vec<&LogicalVolume> = vgs.values().flat_map(|vg| vg.lvs.values()).collect();
        assert!(
            lvs.iter().any(|lv| lv.stripes == 2),
            "the striped volume: {lvs:#?}"
        );
        assert!(
            lvs.iter()
                .any(|lv| lv.tags.iter().any(|t| t == "topolvm.io/managed")),
            "tags survive"
        );
        // Activation is off on the host: no device numbers, no usage figures.
        assert!(
            lvs.iter()
                .all(|lv| lv.kernel_major.is_none() && lv.data_percent.is_none())
        );
        for vg in vgs.values() {
            assert!(vg.extent_size > 0 && vg.size >= vg.free, "{vg:?}");
            assert!(!vg.pvs.is_empty());
        }
    }

    /// Real output with activation inside the VM: thin pool, thin volumes, a thin snapshot and a
    /// thick copy-on-write snapshot.
    #[test]
    fn captured_vm_report_decodes_thin_and_snapshots() {
        let vgs = parse_fullreport(include_str!("../../tests/fixtures/fullreport-vm-thin.json"))
            .expect("parses");
        let vg = vgs.values().next().expect("one volume group");
        let pool = vg.lvs.values().find(|lv| lv.is_thin_pool()).expect("pool");
        assert!(pool.data_percent.is_some_and(|p| p > 0.0));
        let thin: Vec<_> = vg.lvs.values().filter(|lv| lv.is_thin_volume()).collect();
        assert!(thin.len() >= 3, "two thin volumes and a thin snapshot");
        assert!(
            thin.iter()
                .all(|lv| lv.pool_lv.as_deref() == Some(pool.name.as_str()))
        );
        assert!(
            thin.iter()
                .all(|lv| lv.kernel_major.is_some() && lv.kernel_minor.is_some())
        );
        assert!(
            thin.iter().any(|lv| lv.origin.is_some()),
            "the thin snapshot names its origin"
        );
        assert!(
            vg.lvs.keys().all(|n| !n.starts_with('[')),
            "no hidden sub-volumes"
        );

        let cow = vg
            .lvs
            .values()
            .find(|lv| lv.is_thick_snapshot())
            .expect("thick snapshot");
        let origin = &vg.lvs[cow.origin.as_deref().expect("origin")];
        assert!(origin.is_thick_origin());
        assert_eq!(
            cow.size, origin.size,
            "a snapshot reads as big as its origin"
        );
        assert!(cow.cow_size.is_some_and(|c| c < origin.size), "{cow:?}");
        assert_eq!(
            cow.allocated_bytes(),
            cow.cow_size,
            "a snapshot holds its COW area"
        );
        assert_eq!(origin.allocated_bytes(), Some(origin.size));
        assert_eq!(
            pool.allocated_bytes(),
            None,
            "a pool's hidden volumes are not counted"
        );
        assert!(thin.iter().all(|lv| lv.allocated_bytes() == Some(0)));
    }

    /// The predictions match the attributes real LVM reported for active volumes in the VM.
    #[test]
    fn predicted_attributes_match_captured_ones() {
        let vgs = parse_fullreport(include_str!("../../tests/fixtures/fullreport-vm-thin.json"))
            .expect("parses");
        let vg = vgs.values().next().expect("one volume group");
        assert_eq!(
            predicted_attr(VolumeKind::Thin { zeroing: 'z' }, true, true),
            vg.lvs["thin1"].attr
        );
        assert_eq!(
            predicted_attr(VolumeKind::ThickSnapshot, true, true),
            vg.lvs["thick1-snap"].attr
        );
        assert_eq!(predicted_attr(VolumeKind::Plain, true, true), "-wi-a-----");
        assert_eq!(
            predicted_attr(VolumeKind::Plain, false, false),
            "-ri-------"
        );
    }

    #[test]
    fn captured_empty_report_decodes() {
        let vgs = parse_fullreport(include_str!("../../tests/fixtures/fullreport-empty.json"))
            .expect("parses");
        assert!(vgs.is_empty());
    }

    #[test]
    fn no_volume_groups_is_an_empty_map() {
        let vgs = parse_fullreport(r#"{"report":[]}"#).expect("parses");
        assert!(vgs.is_empty());
    }
}
