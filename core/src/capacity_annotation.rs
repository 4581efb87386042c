//! The capacity annotations `capacity.topolvm.io/<device-class>`, written and read.
//!
//! **Writing (topolvm-node, as TopoLVM's `updateNode` in `internal/runners/metrics_exporter.go`
//! @ `4284fc956e96`, with the values lvmd's `send` in `internal/lvmd/vgservice.go` @
//! `10cb5cf5ef02` puts in the Watch message).** For every lvmd `Watch` message the node agent
//! merge-patches its Node:
//! - `capacity.topolvm.io/<class>` for every [`WatchItem`]: [`class_capacity_bytes`], which is
//!   `WatchItem.free_bytes` (VG free less spare) for a thick class and
//!   `thin_pool.overprovision_bytes` for a thin one. A class is thin when its item has a
//!   `thin_pool`. (For a thin class `WatchItem.free_bytes` is the raw VG free, which only the
//!   metrics use.)
//! - `capacity.topolvm.io/00default`: the same value as the default class's own key (TopoLVM
//!   issue 622; lvmd puts it into `WatchResponse.free_bytes`).
//! - Values are decimal byte counts.
//! - The same patch adds the Node finalizer `topolvm.io/node`; that part is the agent's (a merge
//!   patch replaces the whole finalizer list, so it needs the Node's current list).
//!
//! Unlike TopoLVM (issue 293), keys of device classes that lvmd no longer reports are removed:
//! [`node_capacity_patch`] compares the desired keys with the Node's current annotations.
//!
//! **Pods (the pod webhook, as TopoLVM's `volumesCapacity` in `internal/hook/mutate_pod.go` @
//! `397c05639c83`).** A pod's `capacity.topolvm.io/<class>` is the sum of the bytes its unbound
//! TopoLVM claims and inline volumes ask for, per class ([`webhook_device_class`],
//! [`webhook_claim_bytes`], [`webhook_inline_bytes`]).
//!
//! **Reading.** The readers parse the values with different Go functions, and a value that one
//! accepts another may refuse; [`parse_go_uint`] and [`parse_go_int`] reproduce Go's rules:
//! - topolvm-scheduler, Node values: `strconv.ParseUint` (the filter refuses a node whose value
//!   fails; the score takes the value Go returns with the error, [`go_uint_or_fallback`]);
//! - topolvm-scheduler, Pod values (written by the pod webhook): `strconv.ParseInt`, a value
//!   that fails is ignored;
//! - topolvm-controller, Node values: `strconv.ParseInt` ([`controller_node_capacity`]).

use std::collections::BTreeMap;

use topolvm_proto::lvmd::{WatchItem, WatchResponse};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::names::{
    DEFAULT_CAPACITY_ANNOTATION_KEY, DEFAULT_DEVICE_CLASS_ANNOTATION_NAME, DEVICE_CLASS_PARAMETER,
    INLINE_VOLUME_SIZE_ATTRIBUTE, capacity_annotation_device_class, capacity_annotation_key,
};
use crate::quantity::{QuantityError, quantity_bytes};
use crate::size::DEFAULT_VOLUME_SIZE;

/// The bytes a device class can still give out, as its capacity annotation states them:
/// `thin_pool.overprovision_bytes` for a thin class, `free_bytes` (VG free less spare) for a
/// thick one. lvmd reads its own Watch items through this function too (GetFreeBytes and its
/// space checks), so what it answers and what the Node is annotated with cannot differ.
pub fn class_capacity_bytes(item: &WatchItem) -> u64 {
    match &item.thin_pool {
        Some(thin) => thin.overprovision_bytes,
        None => item.free_bytes,
    }
}

/// The capacity annotations a Node should carry after a Watch message: one per device class
/// plus `capacity.topolvm.io/00default`.
///
/// `default_device_class` is the name of lvmd's default class when the caller knows it (an
/// embedded lvmd); the `00default` value is then that class's own value. Without it (an lvmd
/// reached over its socket does not say which class is the default), or when the class is not
/// in the message, it is `WatchResponse.free_bytes`, which lvmd fills in the same way.
pub fn node_capacity_annotations(
    watch: &WatchResponse,
    default_device_class: Option<&str>,
) -> BTreeMap<String, String> {
    let default_bytes = default_device_class
        .and_then(|name| watch.items.iter().find(|item| item.device_class == name))
        .map_or(watch.free_bytes, class_capacity_bytes);
    let mut annotations = BTreeMap::from([(
        DEFAULT_CAPACITY_ANNOTATION_KEY.to_owned(),
        default_bytes.to_string(),
    )]);
    for item in &watch.items {
        annotations.insert(
            capacity_annotation_key(&item.device_class),
            class_capacity_bytes(item).to_string(),
        );
    }
    annotations
}

/// The change a Node's annotations need: values to set and stale keys to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAnnotationPatch {
    /// Capacity annotations that are missing or have a different value.
    pub set: BTreeMap<String, String>,
    /// Capacity annotations of device classes lvmd no longer reports, sorted.
    pub remove: Vec<String>,
}

impl NodeAnnotationPatch {
    /// True when the Node already carries exactly the desired capacity annotations.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// The patch as a JSON merge patch (RFC 7386) of the Node: new values under
    /// `metadata.annotations`, `null` for each key to remove.
    pub fn to_merge_patch(&self) -> serde_json::Value {
        let mut annotations = serde_json::Map::new();
        for (key, value) in &self.set {
            annotations.insert(key.clone(), serde_json::Value::String(value.clone()));
        }
        for key in &self.remove {
            annotations.insert(key.clone(), serde_json::Value::Null);
        }
        serde_json::json!({ "metadata": { "annotations": annotations } })
    }
}

/// What to change on a Node whose annotations are `current` after a Watch message: the values
/// of [`node_capacity_annotations`] that differ, and the removal of every other
/// `capacity.topolvm.io/*` key (device classes taken out of lvmd's config, TopoLVM issue 293).
/// Annotations outside the capacity prefix are never touched.
pub fn node_capacity_patch(
    watch: &WatchResponse,
    default_device_class: Option<&str>,
    current: &BTreeMap<String, String>,
) -> NodeAnnotationPatch {
    let desired = node_capacity_annotations(watch, default_device_class);
    let remove = current
        .keys()
        .filter(|key| {
            capacity_annotation_device_class(key).is_some() && !desired.contains_key(*key)
        })
        .cloned()
        .collect();
    let set = desired
        .into_iter()
        .filter(|(key, value)| current.get(key) != Some(value))
        .collect();
    NodeAnnotationPatch { set, remove }
}

/// The class under which the pod webhook counts a claim of a StorageClass with these
/// parameters: the `topolvm.io/device-class` parameter, and `00default` when it is absent **or
/// empty**. An empty parameter means the default class to the CSI controller (CreateVolume
/// makes the LV in the default class), so it must to the scheduler too; TopoLVM's webhook skips
/// such volumes silently, and the pod is then placed without regard to their size.
pub fn webhook_device_class(parameters: &BTreeMap<String, String>) -> &str {
    match parameters.get(DEVICE_CLASS_PARAMETER) {
        Some(class) if !class.is_empty() => class,
        _ => DEFAULT_DEVICE_CLASS_ANNOTATION_NAME,
    }
}

/// The bytes the pod webhook counts for a CSI inline ephemeral volume of our driver: its
/// volume attribute `size` (a quantity, read as topolvm-node reads it when it makes the LV),
/// and [`DEFAULT_VOLUME_SIZE`] when there is none. A size topolvm-node would refuse (not a
/// quantity, or 0) is an error: the pod could never start.
pub fn webhook_inline_bytes(attributes: &BTreeMap<String, String>) -> Result<u64, InlineSizeError> {
    match attributes.get(INLINE_VOLUME_SIZE_ATTRIBUTE) {
        None => Ok(DEFAULT_VOLUME_SIZE),
        Some(quantity) => match crate::quantity::parse_quantity_bytes(quantity) {
            Ok(0) => Err(InlineSizeError(quantity.clone())),
            Ok(bytes) => Ok(bytes),
            Err(_) => Err(InlineSizeError(quantity.clone())),
        },
    }
}

/// The volume attribute `size` of an inline ephemeral volume is not a positive quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("volume attribute {INLINE_VOLUME_SIZE_ATTRIBUTE} {0:?} is not a positive quantity")]
pub struct InlineSizeError(pub String);

/// The bytes the pod webhook counts for a claim: its `spec.resources.requests.storage` as a
/// byte count (a fraction of a byte rounds up, like Go's `Quantity.Value()`), and
/// [`DEFAULT_VOLUME_SIZE`] (1 GiB) when there is no request or it is 0.
pub fn webhook_claim_bytes(storage_request: Option<&Quantity>) -> Result<u64, QuantityError> {
    match storage_request.map(quantity_bytes).transpose()? {
        None | Some(0) => Ok(DEFAULT_VOLUME_SIZE),
        Some(bytes) => Ok(bytes),
    }
}

/// Why Go's `strconv.ParseUint(s, 10, 64)` or `ParseInt(s, 10, 64)` refused a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GoParseError {
    /// Not a plain decimal number (Go returns 0 with it).
    #[error("invalid syntax")]
    Syntax,
    /// Out of range (Go returns the largest value of the sign with it).
    #[error("value out of range")]
    Range,
}

/// Go's `strconv.ParseUint(s, 10, 64)`: ASCII digits only, no sign, no spaces, no underscores.
///
/// Like Go, the digits are read left to right and the first overflow ends the parse with
/// [`GoParseError::Range`], even when a non-digit follows.
pub fn parse_go_uint(s: &str) -> Result<u64, GoParseError> {
    if s.is_empty() {
        return Err(GoParseError::Syntax);
    }
    let mut n: u64 = 0;
    for b in s.bytes() {
        if !b.is_ascii_digit() {
            return Err(GoParseError::Syntax);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(GoParseError::Range)?;
    }
    Ok(n)
}

/// Go's `strconv.ParseInt(s, 10, 64)`: an optional `+` or `-`, then what [`parse_go_uint`]
/// accepts, within `i64`.
pub fn parse_go_int(s: &str) -> Result<i64, GoParseError> {
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'+') => (false, &s[1..]),
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let magnitude = parse_go_uint(digits)?;
    if negative {
        0i64.checked_sub_unsigned(magnitude)
            .ok_or(GoParseError::Range)
    } else {
        i64::try_from(magnitude).map_err(|_| GoParseError::Range)
    }
}

/// The number Go's `ParseUint` returns even when it fails (callers that ignore the error get
/// it): 0 for bad syntax, `u64::MAX` when out of range.
pub fn go_uint_or_fallback(s: &str) -> u64 {
    match parse_go_uint(s) {
        Ok(n) => n,
        Err(GoParseError::Syntax) => 0,
        Err(GoParseError::Range) => u64::MAX,
    }
}

/// The number Go's `ParseInt` returns even when it fails: 0 for bad syntax, `i64::MAX` or
/// `i64::MIN` when out of range.
pub fn go_int_or_fallback(s: &str) -> i64 {
    match parse_go_int(s) {
        Ok(n) => n,
        Err(GoParseError::Syntax) => 0,
        Err(GoParseError::Range) if s.starts_with('-') => i64::MIN,
        Err(GoParseError::Range) => i64::MAX,
    }
}

/// Why [`controller_node_capacity`] found no capacity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeCapacityError {
    /// The Node has no annotation for the class (TopoLVM's `ErrDeviceClassNotFound`).
    #[error("device class not found")]
    Missing,
    /// The annotation is not a `ParseInt` number.
    #[error("capacity annotation {value:?} is not a number: {error}")]
    Unparseable {
        /// The annotation's value.
        value: String,
        /// Why Go would refuse it.
        error: GoParseError,
    },
}

impl NodeCapacityError {
    /// What TopoLVM's controller uses where it ignores the error (the sum over all Nodes for
    /// GetCapacity, the Node with the most space for CreateVolume without topology): 0 for a
    /// missing annotation, otherwise [`go_int_or_fallback`].
    pub fn ignored_value(&self) -> i64 {
        match self {
            NodeCapacityError::Missing => 0,
            NodeCapacityError::Unparseable { value, .. } => go_int_or_fallback(value),
        }
    }
}

/// A Node's capacity for `device_class` as TopoLVM's controller reads it
/// (`internal/driver/internal/k8s/node_service.go`): the annotation of the class, the default
/// class (`""`) under `00default`, parsed with `ParseInt`.
pub fn controller_node_capacity(
    annotations: &BTreeMap<String, String>,
    device_class: &str,
) -> Result<i64, NodeCapacityError> {
    let value = annotations
        .get(&capacity_annotation_key(device_class))
        .ok_or(NodeCapacityError::Missing)?;
    parse_go_int(value).map_err(|error| NodeCapacityError::Unparseable {
        value: value.clone(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use topolvm_proto::lvmd::ThinPoolItem;

    const GIB: u64 = 1 << 30;

    fn thick(class: &str, free: u64) -> WatchItem {
        WatchItem {
            device_class: class.to_owned(),
            free_bytes: free,
            size_bytes: 100 * GIB,
            thin_pool: None,
        }
    }

    fn thin(class: &str, vg_free: u64, overprovision: u64) -> WatchItem {
        WatchItem {
            device_class: class.to_owned(),
            free_bytes: vg_free,
            size_bytes: 100 * GIB,
            thin_pool: Some(ThinPoolItem {
                data_percent: 12.5,
                metadata_percent: 3.0,
                overprovision_bytes: overprovision,
                size_bytes: 50 * GIB,
            }),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn patch_sets_only_changed_values() {
        let watch = WatchResponse {
            free_bytes: 5,
            items: vec![thick("ssd", 5), thick("hdd", 7)],
        };
        let current = map(&[
            ("capacity.topolvm.io/00default", "5"),
            ("capacity.topolvm.io/ssd", "5"),
            ("capacity.topolvm.io/hdd", "6"),
            ("kubernetes.io/hostname", "n1"),
        ]);
        let patch = node_capacity_patch(&watch, Some("ssd"), &current);
        assert_eq!(patch.set, map(&[("capacity.topolvm.io/hdd", "7")]));
        assert!(patch.remove.is_empty());

        let mut updated = current.clone();
        updated.extend(patch.set);
        assert!(node_capacity_patch(&watch, Some("ssd"), &updated).is_empty());
    }

    #[test]
    fn merge_patch_sets_and_deletes() {
        let patch = NodeAnnotationPatch {
            set: map(&[("capacity.topolvm.io/ssd", "1")]),
            remove: vec!["capacity.topolvm.io/old".to_owned()],
        };
        assert_eq!(
            patch.to_merge_patch(),
            serde_json::json!({"metadata": {"annotations": {
                "capacity.topolvm.io/ssd": "1",
                "capacity.topolvm.io/old": null,
            }}})
        );
    }

    #[test]
    fn default_class_is_looked_up_by_name_when_known() {
        // An lvmd that filled free_bytes with something else still gets 00default right when
        // the caller knows the default class.
        let watch = WatchResponse {
            free_bytes: 999,
            items: vec![thin("pool", 7 * GIB, 30 * GIB)],
        };
        let with_name = node_capacity_annotations(&watch, Some("pool"));
        assert_eq!(
            with_name["capacity.topolvm.io/00default"],
            (30 * GIB).to_string()
        );
        let without_name = node_capacity_annotations(&watch, None);
        assert_eq!(without_name["capacity.topolvm.io/00default"], "999");
        let unknown_name = node_capacity_annotations(&watch, Some("gone"));
        assert_eq!(unknown_name["capacity.topolvm.io/00default"], "999");
    }

    /// An inline volume's `size` as topolvm-node reads it when it makes the LV
    /// (topolvm-node/src/csi/ephemeral.rs): a quantity, 1 GiB when absent, refused when 0 or
    /// not a quantity.
    #[test]
    fn inline_volume_sizes() {
        let with = |size: &str| map(&[("size", size)]);
        assert_eq!(webhook_inline_bytes(&BTreeMap::new()), Ok(GIB));
        assert_eq!(webhook_inline_bytes(&with("200Mi")), Ok(200 << 20));
        assert_eq!(webhook_inline_bytes(&with("1G")), Ok(1_000_000_000));
        for bad in ["0", "lots", "-1Gi", ""] {
            assert_eq!(
                webhook_inline_bytes(&with(bad)),
                Err(InlineSizeError(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    /// Go's `strconv` rules (pkg.go.dev/strconv: ParseUint takes no sign; base 10 allows no
    /// underscores or prefixes; a range error wins once the digits overflow).
    #[test]
    fn go_uint_parsing() {
        let cases: &[(&str, Result<u64, GoParseError>)] = &[
            ("0", Ok(0)),
            ("42", Ok(42)),
            ("007", Ok(7)),
            ("18446744073709551615", Ok(u64::MAX)),
            ("18446744073709551616", Err(GoParseError::Range)),
            ("99999999999999999999x", Err(GoParseError::Range)),
            ("", Err(GoParseError::Syntax)),
            ("+1", Err(GoParseError::Syntax)),
            ("-1", Err(GoParseError::Syntax)),
            (" 1", Err(GoParseError::Syntax)),
            ("1 ", Err(GoParseError::Syntax)),
            ("1_000", Err(GoParseError::Syntax)),
            ("0x10", Err(GoParseError::Syntax)),
            ("1e3", Err(GoParseError::Syntax)),
            ("10Gi", Err(GoParseError::Syntax)),
            ("\u{661}", Err(GoParseError::Syntax)),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_go_uint(input), *expected, "{input:?}");
        }
        assert_eq!(go_uint_or_fallback("junk"), 0);
        assert_eq!(go_uint_or_fallback("99999999999999999999"), u64::MAX);
        assert_eq!(go_uint_or_fallback("5"), 5);
    }

    #[test]
    fn go_int_parsing() {
        let cases: &[(&str, Result<i64, GoParseError>)] = &[
            ("5", Ok(5)),
            ("+5", Ok(5)),
            ("-5", Ok(-5)),
            ("-0", Ok(0)),
            ("9223372036854775807", Ok(i64::MAX)),
            ("9223372036854775808", Err(GoParseError::Range)),
            ("-9223372036854775808", Ok(i64::MIN)),
            ("-9223372036854775809", Err(GoParseError::Range)),
            ("", Err(GoParseError::Syntax)),
            ("+", Err(GoParseError::Syntax)),
            ("-", Err(GoParseError::Syntax)),
            ("+-1", Err(GoParseError::Syntax)),
            ("1Gi", Err(GoParseError::Syntax)),
            (" 1", Err(GoParseError::Syntax)),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_go_int(input), *expected, "{input:?}");
        }
    }

    #[test]
    fn go_int_fallbacks() {
        assert_eq!(go_int_or_fallback("junk"), 0);
        assert_eq!(go_int_or_fallback("99999999999999999999"), i64::MAX);
        assert_eq!(go_int_or_fallback("-99999999999999999999"), i64::MIN);
        assert_eq!(go_int_or_fallback("-5"), -5);
    }
}
