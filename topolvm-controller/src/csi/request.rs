//! Validation of Controller requests and the decisions that need no API call: sizes, the
//! node a volume goes to, capability support. Every rule cites where it comes from (the CSI
//! spec v1.12.0 or TopoLVM's `internal/driver/controller.go` @ 061b806ae885).

use std::collections::HashMap;

use topolvm_core::capacity_annotation::controller_node_capacity;
use topolvm_core::names;
use topolvm_core::size::{self, MinimumAllocation, VolumeAccess};
use topolvm_proto::csi;
use topolvm_proto::csi::volume_capability::{AccessType, access_mode::Mode};

use super::cache::NodeRecord;
use super::error::Error;

/// The access modes a TopoLVM volume supports: one node writing. RWOP reaches us as
/// SINGLE_NODE_WRITER because we do not announce SINGLE_NODE_MULTI_WRITER.
fn supported_mode(mode: i32) -> bool {
    mode == Mode::SingleNodeWriter as i32
}

/// Checks CreateVolume's capabilities (TopoLVM: each must be block or mount; a set access mode
/// must be SINGLE_NODE_WRITER; none at all → INVALID_ARGUMENT per the CSI spec) and returns the
/// first one's access type, which decides the minimum allocation.
pub fn check_create_capabilities(
    caps: &[csi::VolumeCapability],
) -> Result<VolumeAccess<'_>, Error> {
    let first = caps.first().ok_or(Error::Missing {
        field: "volume_capabilities",
    })?;
    for cap in caps {
        match &cap.access_type {
            Some(AccessType::Block(_)) | Some(AccessType::Mount(_)) => {}
            None => {
                return Err(Error::NoAccessType);
            }
        }
        if let Some(mode) = &cap.access_mode
            && !supported_mode(mode.mode)
        {
            return Err(Error::UnsupportedAccessMode {
                mode: mode_name(mode.mode),
            });
        }
    }
    Ok(access_of(first))
}

fn access_of(cap: &csi::VolumeCapability) -> VolumeAccess<'_> {
    match &cap.access_type {
        Some(AccessType::Mount(mount)) => VolumeAccess::Mount {
            fs_type: &mount.fs_type,
        },
        _ => VolumeAccess::Block,
    }
}

fn mode_name(mode: i32) -> String {
    Mode::try_from(mode)
        .map(|m| m.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("{mode}"))
}

/// The size CreateVolume provisions: the request raised to the minimum allocation of the
/// first capability, then TopoLVM's `convertRequestCapacityBytes`.
pub fn create_size(
    range: Option<&csi::CapacityRange>,
    access: VolumeAccess<'_>,
    minimum: &MinimumAllocation,
) -> Result<u64, Error> {
    let (required, limit) = range.map_or((0, 0), |r| (r.required_bytes, r.limit_bytes));
    // TopoLVM raises the request to the minimum first, which hides a negative one; the CSI
    // spec makes it invalid either way.
    if required < 0 {
        return Err(size::SizeError::NegativeRequired(required).into());
    }
    Ok(size::create_volume_size(
        required,
        limit,
        minimum.for_access(access),
    )?)
}

/// The size ControllerExpandVolume asks for. The CSI spec makes capacity_range REQUIRED here.
pub fn expand_size(range: Option<&csi::CapacityRange>) -> Result<u64, Error> {
    let range = range.ok_or(Error::NoCapacityRange)?;
    Ok(size::resolve_capacity_range(
        range.required_bytes,
        range.limit_bytes,
    )?)
}

/// The CSI name lower-cased into a LogicalVolume name (csi-sanity's names hold upper-case hex).
pub fn object_name(name: &str, field: &'static str) -> Result<String, Error> {
    if name.is_empty() {
        return Err(Error::Missing { field });
    }
    let lower = name.to_lowercase();
    if !is_dns_subdomain(&lower) {
        return Err(Error::InvalidName {
            field,
            name: name.to_owned(),
        });
    }
    Ok(lower)
}

/// RFC 1123 subdomain, the rule for cluster-scoped object names.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The node named by a topology segment, if it carries our key.
fn segment_node(topology: &csi::Topology) -> Option<&str> {
    topology
        .segments
        .get(names::TOPOLOGY_NODE_KEY)
        .map(String::as_str)
}

/// The node a new volume without a content source goes to.
///
/// - Requirements with segments: the first segment carrying `topology.topolvm.io/node`,
///   `preferred` first, then `requisite` (TopoLVM; external-provisioner rotates `preferred` so
///   the scheduler's node comes first). No capacity check: the node agent asks lvmd, which
///   answers RESOURCE_EXHAUSTED, and the provisioner reschedules.
/// - No requirements (csi-sanity): the Node with the largest capacity annotation of the class;
///   RESOURCE_EXHAUSTED when even that is short of `size`.
pub fn choose_node(
    requirements: Option<&csi::TopologyRequirement>,
    device_class: &str,
    size: u64,
    nodes: &mut dyn Iterator<Item = (&str, &NodeRecord)>,
) -> Result<String, Error> {
    if let Some(req) = requirements
        && !(req.preferred.is_empty() && req.requisite.is_empty())
    {
        return req
            .preferred
            .iter()
            .chain(&req.requisite)
            .find_map(segment_node)
            .map(str::to_owned)
            .ok_or(Error::NoTopologyKey {
                key: names::TOPOLOGY_NODE_KEY,
            });
    }
    let mut best: Option<(i64, &str)> = None;
    for (name, node) in nodes {
        let capacity = controller_node_capacity(&node.capacity, device_class)
            .unwrap_or_else(|e| e.ignored_value());
        // Ties go to the smaller name, so the choice does not depend on hash order.
        if best.is_none_or(|(c, n)| capacity > c || (capacity == c && name < n)) {
            best = Some((capacity, name));
        }
    }
    let (capacity, name) = best.ok_or(Error::NoNode)?;
    if u64::try_from(capacity).unwrap_or(0) < size {
        return Err(Error::NoCapacity {
            class: names::device_class_for_humans(device_class).to_string(),
            wanted: size,
            most: capacity,
            node: name.to_owned(),
        });
    }
    Ok(name.to_owned())
}

/// Whether `node` is allowed by requirements that are present (a volume from a content source
/// must stay on the source's node).
pub fn node_allowed(requirements: Option<&csi::TopologyRequirement>, node: &str) -> bool {
    let Some(req) = requirements else { return true };
    if req.preferred.is_empty() && req.requisite.is_empty() {
        return true;
    }
    req.preferred
        .iter()
        .chain(&req.requisite)
        .any(|t| segment_node(t) == Some(node))
}

/// GetCapacity: the sum over all Nodes without a segment (Nodes without the annotation count
/// 0); with a segment, the one Node labelled with its `topology.topolvm.io/node` value, 0 when
/// the key, the Node or the annotation is missing (issue 1201: an error here makes the
/// provisioner publish nothing for a new node). Only an unreadable annotation is an error.
pub fn capacity(
    parameters: &HashMap<String, String>,
    topology: Option<&csi::Topology>,
    nodes: &mut dyn Iterator<Item = (&str, &NodeRecord)>,
) -> Result<i64, Error> {
    let class = parameters
        .get(names::DEVICE_CLASS_PARAMETER)
        .map_or("", String::as_str);
    let Some(topology) = topology else {
        return Ok(nodes
            .map(|(_, node)| {
                controller_node_capacity(&node.capacity, class)
                    .unwrap_or_else(|e| e.ignored_value())
                    .max(0)
            })
            .fold(0i64, i64::saturating_add));
    };
    let Some(wanted) = segment_node(topology) else {
        return Ok(0);
    };
    let mut found = None;
    for (name, node) in nodes {
        if node.topology.as_deref() == Some(wanted) {
            found = Some((name, node));
            break;
        }
    }
    let Some((name, node)) = found else {
        return Ok(0);
    };
    match controller_node_capacity(&node.capacity, class) {
        Ok(bytes) => Ok(bytes.max(0)),
        Err(topolvm_core::capacity_annotation::NodeCapacityError::Missing) => Ok(0),
        Err(source) => Err(Error::UnreadableCapacity {
            node: name.to_owned(),
            source,
        }),
    }
}

/// ValidateVolumeCapabilities: `None` when every capability is supported, else why not.
/// TopoLVM confirms anything; the CSI spec says `confirmed` is set only when the plugin
/// supports all of them.
pub fn unsupported_capability(caps: &[csi::VolumeCapability]) -> Option<String> {
    for cap in caps {
        if cap.access_type.is_none() {
            return Some("a capability is neither block nor mount".to_owned());
        }
        match &cap.access_mode {
            None => return Some("a capability has no access mode".to_owned()),
            Some(mode) if !supported_mode(mode.mode) => {
                return Some(format!(
                    "access mode {} is not supported; only SINGLE_NODE_WRITER is",
                    mode_name(mode.mode)
                ));
            }
            Some(_) => {}
        }
    }
    None
}

/// `node_expansion_required` of ControllerExpandVolume: the filesystem must grow too.
pub fn node_expansion_required(cap: Option<&csi::VolumeCapability>) -> bool {
    matches!(
        cap.and_then(|c| c.access_type.as_ref()),
        Some(AccessType::Mount(_))
    )
}
