//! The `LogicalVolume` custom resource (`logicalvolumes.topolvm.io/v1`), as TopoLVM defines it.
//!
//! The controller creates one per volume, named after the PV it provisions; the node agent on
//! `spec.nodeName` creates, resizes and removes the LV and reports back in `status`. The JSON
//! shape must match TopoLVM's so both can read each other's objects: optional fields are left
//! out when empty (Go's `omitempty`) and the status key is `volumeID`, not `volumeId`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use kube::core::crd::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::quantity::{QuantityError, quantity_bytes};

/// `spec.accessType` of a LogicalVolume made from another (`spec.source`), and the
/// `access_type` of lvmd's CreateLVSnapshot: how the new volume will be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccessType {
    /// `ro`: a snapshot (CreateSnapshot).
    #[serde(rename = "ro")]
    ReadOnly,
    /// `rw`: a volume restored from a snapshot or cloned from a volume.
    #[serde(rename = "rw")]
    ReadWrite,
}

/// A string that is neither `ro` nor `rw`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("access type must be \"ro\" or \"rw\", got {0:?}")]
pub struct InvalidAccessType(pub String);

impl AccessType {
    /// The wire spelling: `ro` or `rw`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessType::ReadOnly => "ro",
            AccessType::ReadWrite => "rw",
        }
    }
}

impl std::str::FromStr for AccessType {
    type Err = InvalidAccessType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ro" => Ok(AccessType::ReadOnly),
            "rw" => Ok(AccessType::ReadWrite),
            other => Err(InvalidAccessType(other.to_owned())),
        }
    }
}

impl std::fmt::Display for AccessType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Desired state of a logical volume.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "topolvm.io",
    version = "v1",
    kind = "LogicalVolume",
    plural = "logicalvolumes",
    singular = "logicalvolume",
    status = "LogicalVolumeStatus",
    derive = "PartialEq",
    // No printer columns: TopoLVM's CRD has none, so `kubectl get logicalvolumes` looks the
    // same with either.
    doc = "LogicalVolume is a logical volume that TopoLVM keeps on one node's volume group"
)]
#[serde(rename_all = "camelCase")]
pub struct LogicalVolumeSpec {
    /// Name of the volume; the controller uses the PV name it was asked to provision.
    pub name: String,

    /// Node whose volume group holds the LV.
    pub node_name: String,

    /// Requested size. Raising it asks the node agent to extend the LV.
    #[schemars(schema_with = "quantity_schema")]
    pub size: Quantity,

    /// Device class of lvmd's config; empty means the default class.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device_class: String,

    /// lvcreate option class of lvmd's config; empty means none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lvcreate_option_class: String,

    /// For a snapshot or clone: the `spec.name` of the LogicalVolume it is made from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,

    /// For a snapshot or clone: `ro` for a snapshot, `rw` for a restore or clone.
    // TopoLVM's schema takes any string here (its node refuses other values when it acts on the
    // object); ours lists the two values, so the API server refuses others up front.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "access_type_schema")]
    pub access_type: Option<AccessType>,
}

/// `type: string` with the two values, and no `nullable` (Go writes no `null` here; an absent
/// field is `None`).
fn access_type_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": [AccessType::ReadOnly.as_str(), AccessType::ReadWrite.as_str()],
    })
}

/// Observed state of a logical volume, written by the node agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogicalVolumeStatus {
    /// Name of the LV in the volume group, which is also the CSI volume id. TopoLVM uses the
    /// object's UID. Empty until the LV exists.
    #[serde(rename = "volumeID", default, skip_serializing_if = "String::is_empty")]
    pub volume_id: String,

    /// gRPC status code number of the last operation (0 = OK), as TopoLVM records it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub code: i32,

    /// Error message that goes with a non-zero `code`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,

    /// Actual size of the LV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "quantity_schema")]
    pub current_size: Option<Quantity>,
}

fn is_zero(code: &i32) -> bool {
    *code == 0
}

/// OpenAPI schema of a quantity as Kubernetes' own CRDs spell it: an integer or a string in
/// quantity syntax. k8s-openapi's schema carries only `x-kubernetes-int-or-string`, which the
/// apiserver accepts too, but this form also validates the syntax server-side.
///
/// kube's structural-schema pass empties the `anyOf` branches again (it strips `type` from
/// every `anyOf` member); [`logical_volume_crd`] puts them back.
fn quantity_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY_PATTERN,
        "x-kubernetes-int-or-string": true,
    })
}

/// Regular expression of Kubernetes' quantity syntax, as in the OpenAPI of built-in types.
const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

impl LogicalVolumeSpec {
    /// `spec.size` in bytes.
    pub fn size_bytes(&self) -> Result<u64, QuantityError> {
        quantity_bytes(&self.size)
    }

    /// Whether an existing LogicalVolume satisfies a request described by `other`: same
    /// volume name, same source and the same size (compared as numbers, so `1Gi` equals
    /// `1073741824`). CreateVolume is idempotent only for compatible requests.
    ///
    /// Two snapshots (read-only, of a source) need no equal size: a snapshot has the size its
    /// source had when it was cut, and CreateSnapshot retried after the source grew must still
    /// answer that snapshot, as the CSI spec's CreateSnapshot errors allow ALREADY_EXISTS only
    /// for another source. TopoLVM compares the size of snapshots too
    /// (api/v1/logicalvolume_types.go, `IsCompatibleWith`, at c0f03a8ff192): there such a
    /// retry never succeeds, and the object the first attempt made is never deleted.
    pub fn is_compatible_with(&self, other: &LogicalVolumeSpec) -> bool {
        let snapshots = [self, other]
            .iter()
            .all(|spec| spec.access_type == Some(AccessType::ReadOnly) && !spec.source.is_empty());
        let same_size = match (self.size_bytes(), other.size_bytes()) {
            (Ok(a), Ok(b)) => a == b,
            _ => self.size == other.size,
        };
        self.name == other.name && self.source == other.source && (snapshots || same_size)
    }
}

impl LogicalVolumeStatus {
    /// `status.currentSize` in bytes, `None` while it is unset.
    pub fn current_size_bytes(&self) -> Option<Result<u64, QuantityError>> {
        self.current_size.as_ref().map(quantity_bytes)
    }

    /// True when the last operation did not fail (`code` is 0, gRPC's OK).
    pub fn is_ok(&self) -> bool {
        self.code == 0
    }
}

/// Why the CRD manifest could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// Serializing the CRD to YAML failed.
    #[error("failed to render the LogicalVolume CRD as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// The `CustomResourceDefinition` of LogicalVolume to install.
///
/// Use this rather than kube's `LogicalVolume::crd()`, which leaves out `listKind` and turns
/// the quantities' `anyOf: [{type: integer}, {type: string}]` into `anyOf: [{}, {}]`. Both are
/// accepted by the apiserver, but this one matches TopoLVM's manifest.
pub fn logical_volume_crd() -> CustomResourceDefinition {
    let mut crd = LogicalVolume::crd();
    crd.spec.names.list_kind = Some(format!("{}List", crd.spec.names.kind));
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|validation| validation.open_api_v3_schema.as_mut())
        {
            restore_int_or_string_branches(schema);
        }
    }
    crd
}

/// Gives every `x-kubernetes-int-or-string` node the typed `anyOf` branches, the one form of
/// `anyOf` with types that structural schemas allow.
fn restore_int_or_string_branches(schema: &mut JSONSchemaProps) {
    if schema.x_kubernetes_int_or_string == Some(true) && schema.any_of.is_some() {
        let typed = |type_: &str| JSONSchemaProps {
            type_: Some(type_.to_owned()),
            ..JSONSchemaProps::default()
        };
        schema.any_of = Some(vec![typed("integer"), typed("string")]);
    }
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        restore_int_or_string_branches(child);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(item)) => restore_int_or_string_branches(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => {
            items.iter_mut().for_each(restore_int_or_string_branches);
        }
        None => {}
    }
}

/// [`logical_volume_crd`] as a YAML document, ready for `kubectl apply -f -`.
pub fn crd_yaml() -> Result<String, CrdError> {
    Ok(serde_yaml::to_string(&logical_volume_crd())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;
    use serde_json::{Value, json};

    fn crd_json() -> Value {
        serde_json::to_value(logical_volume_crd()).expect("CRD serializes")
    }

    fn version_schema(crd: &Value) -> &Value {
        &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    }

    /// Values from TopoLVM's `config/crd/bases/topolvm.io_logicalvolumes.yaml` @ `44c31e33c242`
    /// (topolvm/topolvm).
    #[test]
    fn crd_identity_matches_topolvm() {
        let crd = crd_json();
        assert_eq!(crd["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(crd["kind"], "CustomResourceDefinition");
        assert_eq!(crd["metadata"]["name"], "logicalvolumes.topolvm.io");
        assert_eq!(crd["spec"]["group"], "topolvm.io");
        assert_eq!(crd["spec"]["scope"], "Cluster");
        assert_eq!(crd["spec"]["names"]["kind"], "LogicalVolume");
        assert_eq!(crd["spec"]["names"]["listKind"], "LogicalVolumeList");
        assert_eq!(crd["spec"]["names"]["plural"], "logicalvolumes");
        assert_eq!(crd["spec"]["names"]["singular"], "logicalvolume");
        let versions = crd["spec"]["versions"].as_array().expect("versions");
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0]["name"], "v1");
        assert_eq!(versions[0]["served"], true);
        assert_eq!(versions[0]["storage"], true);
        assert_eq!(versions[0]["subresources"]["status"], json!({}));
    }

    #[test]
    fn resource_metadata_matches_topolvm() {
        assert_eq!(LogicalVolume::group(&()), "topolvm.io");
        assert_eq!(LogicalVolume::version(&()), "v1");
        assert_eq!(LogicalVolume::kind(&()), "LogicalVolume");
        assert_eq!(LogicalVolume::plural(&()), "logicalvolumes");
        assert_eq!(LogicalVolume::api_version(&()), "topolvm.io/v1");
    }

    /// TopoLVM's CRD (`config/crd/bases/topolvm.io_logicalvolumes.yaml` at 44c31e33, and the
    /// chart's copy) declares no `additionalPrinterColumns`.
    #[test]
    fn no_printer_columns_like_topolvm() {
        let crd = crd_json();
        assert!(
            crd["spec"]["versions"][0]
                .get("additionalPrinterColumns")
                .is_none(),
            "{}",
            crd["spec"]["versions"][0]
        );
    }

    #[test]
    fn access_type_is_ro_or_rw() {
        let crd = crd_json();
        let access_type = &version_schema(&crd)["properties"]["spec"]["properties"]["accessType"];
        assert_eq!(access_type["type"], "string");
        assert_eq!(access_type["enum"], json!(["ro", "rw"]));
        assert!(access_type.get("nullable").is_none());
        // TopoLVM's CRD (@ 44c31e33c242) describes `accessType` as "ro" for a snapshot and "rw"
        // for a restore or clone, and `createLV` in
        // `internal/controller/logicalvolume_controller.go` @ 110864718b8f accepts only those
        // two. (The `enum` checked above is our own, stricter schema: TopoLVM's CRD declares
        // `accessType` as a plain string with no enum.)
        assert_eq!(
            serde_json::to_value(AccessType::ReadOnly).expect("json"),
            json!("ro")
        );
        assert_eq!(
            serde_json::to_value(AccessType::ReadWrite).expect("json"),
            json!("rw")
        );
        for access in [AccessType::ReadOnly, AccessType::ReadWrite] {
            assert_eq!(access.as_str().parse::<AccessType>(), Ok(access));
            assert_eq!(access.to_string(), access.as_str());
        }
        assert_eq!(
            "RO".parse::<AccessType>(),
            Err(InvalidAccessType("RO".to_owned()))
        );
        assert!(serde_json::from_value::<AccessType>(json!("")).is_err());
    }

    /// Field names, types and the required list of TopoLVM's CRD
    /// (`config/crd/bases/topolvm.io_logicalvolumes.yaml` @ `44c31e33c242`).
    #[test]
    fn schema_fields_and_required_lists_match_topolvm() {
        let crd = crd_json();
        let schema = version_schema(&crd);
        let spec = &schema["properties"]["spec"];
        assert_eq!(spec["type"], "object");
        assert_eq!(spec["required"], json!(["name", "nodeName", "size"]));
        for field in [
            "name",
            "nodeName",
            "deviceClass",
            "lvcreateOptionClass",
            "source",
            "accessType",
        ] {
            assert_eq!(spec["properties"][field]["type"], "string", "spec.{field}");
        }
        let status = &schema["properties"]["status"];
        assert_eq!(status["type"], "object");
        assert!(
            status.get("required").is_none_or(|r| r == &json!([])),
            "no status field is required: {status}"
        );
        assert_eq!(status["properties"]["volumeID"]["type"], "string");
        assert!(status["properties"].get("volumeId").is_none());
        assert_eq!(status["properties"]["message"]["type"], "string");
        assert_eq!(status["properties"]["code"]["type"], "integer");
        assert_eq!(status["properties"]["code"]["format"], "int32");
    }

    /// As TopoLVM's CRD (`config/crd/bases/topolvm.io_logicalvolumes.yaml` @ 19d55d7acd9e,
    /// topolvm/topolvm) declares `spec.size` and `status.currentSize`: int-or-string with
    /// controller-gen's pattern for `resource.Quantity`, written out here as TopoLVM has it.
    #[test]
    fn quantities_are_int_or_string() {
        const TOPOLVMS_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";
        let crd = crd_json();
        let schema = version_schema(&crd);
        for quantity in [
            &schema["properties"]["spec"]["properties"]["size"],
            &schema["properties"]["status"]["properties"]["currentSize"],
        ] {
            assert_eq!(quantity["x-kubernetes-int-or-string"], true, "{quantity}");
            assert_eq!(
                quantity["anyOf"],
                json!([{"type": "integer"}, {"type": "string"}]),
                "{quantity}"
            );
            assert!(quantity.get("type").is_none(), "int-or-string has no type");
            assert_eq!(quantity["pattern"], TOPOLVMS_PATTERN);
        }
    }

    /// Checks the parts of Kubernetes' structural schema rules that a derive could break:
    /// every node has a type (except int-or-string and the embedded metadata), no `$ref`,
    /// `nullable` without a type, or `additionalProperties` beside `properties`.
    fn assert_structural(path: &str, node: &Value) {
        let object = node.as_object().expect("schema nodes are objects");
        assert!(!object.contains_key("$ref"), "{path}: $ref");
        assert!(!object.contains_key("definitions"), "{path}: definitions");
        assert!(!object.contains_key("$defs"), "{path}: $defs");
        let int_or_string = object.get("x-kubernetes-int-or-string") == Some(&json!(true));
        if int_or_string {
            assert!(
                !object.contains_key("type"),
                "{path}: int-or-string with type"
            );
            if let Some(any_of) = object.get("anyOf") {
                assert_eq!(
                    any_of,
                    &json!([{"type": "integer"}, {"type": "string"}]),
                    "{path}"
                );
            }
        } else {
            assert!(object.contains_key("type"), "{path}: missing type");
            assert!(!object.contains_key("anyOf"), "{path}: anyOf");
            assert!(!object.contains_key("oneOf"), "{path}: oneOf");
        }
        if let Some(Value::Object(properties)) = object.get("properties") {
            assert!(
                !object.contains_key("additionalProperties"),
                "{path}: properties with additionalProperties"
            );
            for (name, child) in properties {
                assert_structural(&format!("{path}.{name}"), child);
            }
        }
        if let Some(items) = object.get("items") {
            assert_structural(&format!("{path}[]"), items);
        }
    }

    #[test]
    fn schema_is_structural() {
        let crd = crd_json();
        let schema = version_schema(&crd);
        assert_eq!(schema["type"], "object");
        assert_structural("", schema);
    }

    /// A LogicalVolume as TopoLVM's controller and node write it (Go's encoding/json with
    /// `omitempty`), including a status with an error code.
    fn topolvm_object() -> Value {
        json!({
            "apiVersion": "topolvm.io/v1",
            "kind": "LogicalVolume",
            "metadata": {
                "name": "pvc-3f0c9f7e-5d0b-4a7e-9f3e-0c8e2b7c1a11",
                "uid": "a1b2c3d4-e5f6-4789-abcd-ef0123456789",
                "resourceVersion": "12345",
                "creationTimestamp": "2024-05-01T10:00:00Z",
                "finalizers": ["topolvm.io/logicalvolume"],
                "annotations": {"topolvm.io/resize-requested-at": "2024-05-01 10:05:00.123 +0000 UTC"}
            },
            "spec": {
                "name": "pvc-3f0c9f7e-5d0b-4a7e-9f3e-0c8e2b7c1a11",
                "nodeName": "worker-1",
                "size": "2Gi",
                "deviceClass": "ssd",
                "lvcreateOptionClass": "raid1",
                "source": "pvc-0000",
                "accessType": "rw"
            },
            "status": {
                "volumeID": "a1b2c3d4-e5f6-4789-abcd-ef0123456789",
                "code": 8,
                "message": "no enough space left on VG: free=1, requested=2147483648",
                "currentSize": "1Gi"
            }
        })
    }

    #[test]
    fn topolvm_object_round_trips_with_the_same_keys() {
        let original = topolvm_object();
        let lv: LogicalVolume = serde_json::from_value(original.clone()).expect("deserializes");
        assert_eq!(lv.spec.node_name, "worker-1");
        assert_eq!(lv.spec.size_bytes(), Ok(2 << 30));
        assert_eq!(lv.spec.lvcreate_option_class, "raid1");
        assert_eq!(lv.spec.access_type, Some(AccessType::ReadWrite));
        let status = lv.status.as_ref().expect("status");
        assert_eq!(status.volume_id, "a1b2c3d4-e5f6-4789-abcd-ef0123456789");
        assert_eq!(status.code, 8);
        assert!(!status.is_ok());
        assert_eq!(status.current_size_bytes(), Some(Ok(1 << 30)));

        let reserialized = serde_json::to_value(&lv).expect("serializes");
        assert_eq!(reserialized, original);
    }

    #[test]
    fn minimal_object_round_trips_without_adding_keys() {
        // Go writes an empty status struct as `{}` and leaves out empty optional fields.
        let original = json!({
            "apiVersion": "topolvm.io/v1",
            "kind": "LogicalVolume",
            "metadata": {"name": "pvc-1"},
            "spec": {"name": "pvc-1", "nodeName": "worker-2", "size": "1073741824"},
            "status": {}
        });
        let lv: LogicalVolume = serde_json::from_value(original.clone()).expect("deserializes");
        assert_eq!(lv.spec.device_class, "");
        assert_eq!(lv.spec.size_bytes(), Ok(1 << 30));
        let status = lv.status.as_ref().expect("empty status is present");
        assert!(status.is_ok());
        assert_eq!(status.current_size_bytes(), None);
        assert_eq!(serde_json::to_value(&lv).expect("serializes"), original);
    }

    #[test]
    fn integer_sizes_are_accepted() {
        // The schema allows integers; the Quantity type keeps them as strings.
        let lv: LogicalVolume = serde_json::from_value(json!({
            "apiVersion": "topolvm.io/v1",
            "kind": "LogicalVolume",
            "metadata": {"name": "x"},
            "spec": {"name": "x", "nodeName": "n", "size": 1073741824}
        }))
        .expect("deserializes");
        assert_eq!(lv.spec.size_bytes(), Ok(1 << 30));
        assert!(lv.status.is_none());
    }

    #[test]
    fn new_object_serializes_like_topolvm_controller() {
        let lv = LogicalVolume::new(
            "pvc-1",
            LogicalVolumeSpec {
                name: "pvc-1".to_owned(),
                node_name: "worker-1".to_owned(),
                size: crate::quantity::format_bytes_quantity(1 << 30),
                ..LogicalVolumeSpec::default()
            },
        );
        let value = serde_json::to_value(&lv).expect("serializes");
        assert_eq!(
            value["spec"],
            json!({"name": "pvc-1", "nodeName": "worker-1", "size": "1Gi"})
        );
        assert!(value.get("status").is_none());
    }

    #[test]
    fn compatibility_compares_sizes_numerically() {
        let spec = |size: &str, source: &str| LogicalVolumeSpec {
            name: "pvc-1".to_owned(),
            node_name: "worker-1".to_owned(),
            size: Quantity(size.to_owned()),
            source: source.to_owned(),
            ..LogicalVolumeSpec::default()
        };
        assert!(spec("1Gi", "").is_compatible_with(&spec("1073741824", "")));
        assert!(!spec("1Gi", "").is_compatible_with(&spec("2Gi", "")));
        assert!(!spec("1Gi", "a").is_compatible_with(&spec("1Gi", "b")));
        assert!(spec("junk", "").is_compatible_with(&spec("junk", "")));
        assert!(!spec("junk", "").is_compatible_with(&spec("1Gi", "")));
        let mut other = spec("1Gi", "");
        other.name = "pvc-2".to_owned();
        assert!(!spec("1Gi", "").is_compatible_with(&other));
    }

    #[test]
    fn a_snapshot_is_compatible_whatever_its_source_grew_to() {
        let spec = |size: &str, source: &str, access_type| LogicalVolumeSpec {
            name: "snapshot-1".to_owned(),
            node_name: "worker-1".to_owned(),
            size: Quantity(size.to_owned()),
            source: source.to_owned(),
            access_type,
            ..LogicalVolumeSpec::default()
        };
        let ro = Some(AccessType::ReadOnly);
        let rw = Some(AccessType::ReadWrite);
        assert!(spec("32Mi", "pvc-a", ro).is_compatible_with(&spec("40Mi", "pvc-a", ro)));
        assert!(!spec("32Mi", "pvc-a", ro).is_compatible_with(&spec("32Mi", "pvc-b", ro)));
        // A restore or clone (read-write) keeps the size it was asked for.
        assert!(!spec("32Mi", "pvc-a", rw).is_compatible_with(&spec("40Mi", "pvc-a", rw)));
        assert!(!spec("32Mi", "pvc-a", ro).is_compatible_with(&spec("40Mi", "pvc-a", rw)));
        assert!(!spec("32Mi", "", ro).is_compatible_with(&spec("40Mi", "", ro)));
    }

    #[test]
    fn fix_up_only_touches_list_kind_and_int_or_string_branches() {
        let mut raw = serde_json::to_value(LogicalVolume::crd()).expect("CRD serializes");
        let fixed = crd_json();
        assert_ne!(raw, fixed);
        raw["spec"]["names"]["listKind"] = json!("LogicalVolumeList");
        let branches = json!([{"type": "integer"}, {"type": "string"}]);
        let raw_schema = &mut raw["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        raw_schema["properties"]["spec"]["properties"]["size"]["anyOf"] = branches.clone();
        raw_schema["properties"]["status"]["properties"]["currentSize"]["anyOf"] = branches;
        assert_eq!(raw, fixed);
    }

    #[test]
    fn fix_up_reaches_into_arrays_and_leaves_other_any_of_alone() {
        let quantity = || JSONSchemaProps {
            any_of: Some(vec![JSONSchemaProps::default(), JSONSchemaProps::default()]),
            x_kubernetes_int_or_string: Some(true),
            ..JSONSchemaProps::default()
        };
        let untouched = JSONSchemaProps {
            any_of: Some(vec![JSONSchemaProps::default()]),
            ..JSONSchemaProps::default()
        };
        let mut schema = JSONSchemaProps {
            type_: Some("object".to_owned()),
            properties: Some(
                [
                    (
                        "list".to_owned(),
                        JSONSchemaProps {
                            type_: Some("array".to_owned()),
                            items: Some(JSONSchemaPropsOrArray::Schema(Box::new(quantity()))),
                            ..JSONSchemaProps::default()
                        },
                    ),
                    ("other".to_owned(), untouched.clone()),
                    (
                        "bare".to_owned(),
                        JSONSchemaProps {
                            x_kubernetes_int_or_string: Some(true),
                            ..JSONSchemaProps::default()
                        },
                    ),
                ]
                .into(),
            ),
            ..JSONSchemaProps::default()
        };
        restore_int_or_string_branches(&mut schema);
        let value = serde_json::to_value(&schema).expect("serializes");
        assert_eq!(
            value["properties"]["list"]["items"]["anyOf"],
            json!([{"type": "integer"}, {"type": "string"}])
        );
        assert_eq!(
            value["properties"]["other"],
            serde_json::to_value(&untouched).expect("serializes")
        );
        assert!(value["properties"]["bare"].get("anyOf").is_none());
    }

    #[test]
    fn yaml_manifest_renders() {
        let yaml = crd_yaml().expect("renders");
        assert!(yaml.contains("name: logicalvolumes.topolvm.io"));
        assert!(yaml.contains("scope: Cluster"));
        assert!(yaml.contains("x-kubernetes-int-or-string: true"));
        let parsed: Value = serde_yaml::from_str(&yaml).expect("valid YAML");
        assert_eq!(parsed, crd_json());
    }
}
