//! Which volumes are lvmd's: the ownership tags every volume lvmd makes carries, the one rule
//! every operation on an existing volume passes through ([`standing`]), and the adoption of the
//! untagged volumes TopoLVM made, named by their LogicalVolume's UID.
//!
//! lvmd removes, resizes, snapshots or returns a volume only when it belongs to the named device
//! class (cut from the class's pool, and of the class recorded in its tags) and carries lvmd's
//! tags (`topolvm.io/managed` and `topolvm.io/volume=<its name>`). A volume without any of lvmd's
//! tags whose name is a Kubernetes UID is adopted by a CreateLV or CreateLVSnapshot that asks for
//! it exactly: lvmd tags it and returns it.

use topolvm_core::names;
use tracing::info;

use super::{Error, Lvmd, Result, invalid};
use crate::config::DeviceClass;
use crate::lvm::report::LogicalVolume;
use crate::lvm::{args, validate};

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
pub(super) fn copy_source(lv: &LogicalVolume) -> Option<&str> {
    lv.tags
        .iter()
        .find_map(|t| names::parse_lv_tag_copy_source(t))
}

pub(super) fn copy_pending(lv: &LogicalVolume) -> bool {
    lv.tags.iter().any(|t| t == names::LV_TAG_COPY_PENDING)
}

/// Checks the caller's tags and adds the ones that mark the volume as ours.
pub(super) fn volume_tags(
    name: &str,
    device_class: &str,
    requested: &[String],
) -> Result<Vec<String>> {
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
/// Whether `name` has the form of a Kubernetes object UID (RFC 4122, lower-case), the name
/// TopoLVM gives every volume it creates.
pub(super) fn is_kubernetes_uid(name: &str) -> bool {
    let groups: Vec<&str> = name.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, len)| {
            g.len() == len && g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// Where an existing volume stands with a device class.
#[derive(Debug)]
pub(super) enum Standing<'a> {
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
pub(super) fn standing<'a>(dc: &DeviceClass, lv: &'a LogicalVolume) -> Standing<'a> {
    if lv.is_thin_pool() {
        return Standing::Foreign(lv, "it is a thin pool, not a volume");
    }
    let in_layout = dc.pool.holds(lv);
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
    pub(super) fn owned(self, dc: &DeviceClass) -> Result<&'a LogicalVolume> {
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
impl Lvmd {
    /// Tags an untagged volume as lvmd's (TopoLVM made it), and returns it as LVM reports it.
    pub(super) async fn adopt(
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
}
