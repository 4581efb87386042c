//! Differential target for the scheduler's hand-written request walker
//! (`topolvm_scheduler::wire::parse_extender_args`).
//!
//! The reference decodes the same shape in one serde_json pass with plain serde visitors: keys
//! of ExtenderArgs, NodeList and the API objects match case-insensitively (Go's rule), the last
//! of a repeated field wins, a repeated `metadata` fills in what it names, `null` reads as the
//! Go zero value, and everything else is skipped with `IgnoredAny`. The walker must give the
//! same pod, the same candidates and, for each node, a slice of the body that decodes to that
//! node. On what serde_json refuses the walker must refuse with `NotUtf8` or `Malformed`.
//!
//! Two inputs are left out of the comparison, both on purpose:
//! - the body must be UTF-8 (RFC 8259 section 8.1) before the reference reads it with
//!   `from_str`; `from_slice` would let invalid bytes through inside skipped strings;
//! - nesting past serde_json's limit of 128 levels: the walker decodes each field of
//!   ExtenderArgs, NodeList and each node with a fresh deserializer, so its limit counts from
//!   there, up to three levels deeper than a whole-document decode (Go allows 10000).
#![no_main]

use std::fmt;

use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use topolvm_scheduler::wire::{CapacityAnnotations, Candidates, RequestError, parse_extender_args};

fuzz_target!(|data: &[u8]| {
    let walked = parse_extender_args(data);
    let reference = match std::str::from_utf8(data) {
        Ok(text) => serde_json::from_str::<Option<Args>>(text),
        Err(_) => {
            assert!(
                matches!(walked, Err(RequestError::NotUtf8 { .. })),
                "not UTF-8, but the walker gave {walked:?}"
            );
            return;
        }
    };
    match reference {
        Ok(args) => compare(data, &walked, args.unwrap_or_default()),
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => {}
        Err(e) => assert!(
            matches!(walked, Err(RequestError::Malformed { .. })),
            "serde_json refused ({e}) but the walker gave {walked:?}"
        ),
    }
});

fn compare(data: &[u8], walked: &Result<topolvm_scheduler::wire::ExtenderArgs<'_>, RequestError>, want: Args) {
    let want_pod = match want.pod {
        Some(pod) => pod,
        None => {
            assert_eq!(walked, &Err(RequestError::MissingPod));
            return;
        }
    };
    if want.nodes.is_none() && want.node_names.is_none() {
        assert_eq!(walked, &Err(RequestError::MissingNodes));
        return;
    }
    let args = match walked {
        Ok(args) => args,
        Err(e) => panic!("serde_json accepted the body but the walker refused it: {e}"),
    };
    assert_eq!(args.pod.name, want_pod.name);
    assert_eq!(args.pod.namespace, want_pod.namespace);
    assert_eq!(args.pod.uid, want_pod.uid);
    assert_eq!(args.pod.capacity, want_pod.capacity());
    match (&args.candidates, want.nodes, want.node_names) {
        (Candidates::Nodes(items), Some(nodes), _) => {
            assert_eq!(items.len(), nodes.len());
            for (item, node) in items.iter().zip(nodes) {
                assert_eq!(item.name, node.name);
                assert_eq!(item.capacity, node.capacity());
                // The echoed text is a slice of the body, exactly one JSON value.
                let start = (item.raw.as_ptr() as usize)
                    .checked_sub(data.as_ptr() as usize)
                    .expect("raw lies in the body");
                assert!(start + item.raw.len() <= data.len(), "raw lies in the body");
                assert_eq!(item.raw.trim(), item.raw);
                let again: Option<Object> = serde_json::from_str(item.raw).expect("raw is a node");
                let again = again.map(|o| o.0).unwrap_or_default();
                assert_eq!(again.name, node.name);
                assert_eq!(again.capacity(), node.capacity());
            }
        }
        (Candidates::NodeNames(names), None, Some(want_names)) => {
            assert_eq!(names, &want_names);
        }
        (got, nodes, names) => panic!("walker gave {got:?}, serde_json {nodes:?} / {names:?}"),
    }
}

/// Go's rule for struct fields.
fn is_key(key: &str, field: &str) -> bool {
    key.eq_ignore_ascii_case(field)
}

/// Whether the extender keeps an annotation (the rule lives in `wire`, not in this target).
fn is_capacity_key(key: &str) -> bool {
    !CapacityAnnotations::from_annotations([(key, "")]).is_empty()
}

#[derive(Debug, Default)]
struct Args {
    pod: Option<Meta>,
    nodes: Option<Vec<Meta>>,
    node_names: Option<Vec<String>>,
}

/// What is read of a Pod or Node.
#[derive(Debug, Default)]
struct Meta {
    name: String,
    namespace: String,
    uid: String,
    /// Capacity annotations in the order read, repeats included.
    annotations: Vec<(String, String)>,
}

impl Meta {
    fn capacity(&self) -> CapacityAnnotations<'_> {
        CapacityAnnotations::from_annotations(
            self.annotations
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }
}

impl<'de> Deserialize<'de> for Args {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Args;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("ExtenderArgs")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Args, A::Error> {
                let mut args = Args::default();
                while let Some(key) = map.next_key::<String>()? {
                    if is_key(&key, "Pod") {
                        args.pod = map.next_value::<Option<Object>>()?.map(|o| o.0);
                    } else if is_key(&key, "Nodes") {
                        args.nodes = map.next_value::<Option<NodeList>>()?.map(|l| l.0);
                    } else if is_key(&key, "NodeNames") {
                        args.node_names = map
                            .next_value::<Option<Vec<Option<String>>>>()?
                            .map(|names| names.into_iter().map(Option::unwrap_or_default).collect());
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(args)
            }
        }
        d.deserialize_map(V)
    }
}

struct NodeList(Vec<Meta>);

impl<'de> Deserialize<'de> for NodeList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NodeList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a NodeList")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeList, A::Error> {
                let mut items = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if is_key(&key, "items") {
                        items = map
                            .next_value::<Option<Vec<Option<Object>>>>()?
                            .unwrap_or_default()
                            .into_iter()
                            .map(|o| o.map(|o| o.0).unwrap_or_default())
                            .collect();
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(NodeList(items))
            }
        }
        d.deserialize_map(V)
    }
}

/// A Pod or Node: only `metadata` is read.
struct Object(Meta);

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Object;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an API object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
                let mut meta = Meta::default();
                while let Some(key) = map.next_key::<String>()? {
                    if is_key(&key, "metadata") {
                        if let Some(fields) = map.next_value::<Option<MetaFields>>()? {
                            fields.fill(&mut meta);
                        }
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Object(meta))
            }
        }
        d.deserialize_map(V)
    }
}

/// The fields one `metadata` object names (`Some` when present, a `null` as empty).
#[derive(Default)]
struct MetaFields {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    annotations: Option<Vec<(String, String)>>,
}

impl MetaFields {
    fn fill(self, meta: &mut Meta) {
        if let Some(v) = self.name {
            meta.name = v;
        }
        if let Some(v) = self.namespace {
            meta.namespace = v;
        }
        if let Some(v) = self.uid {
            meta.uid = v;
        }
        if let Some(v) = self.annotations {
            meta.annotations = v;
        }
    }
}

impl<'de> Deserialize<'de> for MetaFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MetaFields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("ObjectMeta")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MetaFields, A::Error> {
                let mut fields = MetaFields::default();
                while let Some(key) = map.next_key::<String>()? {
                    let text = |v: Option<String>| Some(v.unwrap_or_default());
                    if is_key(&key, "name") {
                        fields.name = text(map.next_value()?);
                    } else if is_key(&key, "namespace") {
                        fields.namespace = text(map.next_value()?);
                    } else if is_key(&key, "uid") {
                        fields.uid = text(map.next_value()?);
                    } else if is_key(&key, "annotations") {
                        fields.annotations = Some(
                            map.next_value::<Option<Annotations>>()?
                                .map(|a| a.0)
                                .unwrap_or_default(),
                        );
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(fields)
            }
        }
        d.deserialize_map(V)
    }
}

/// The capacity annotations of an annotation map, in order; other values may be anything.
struct Annotations(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Annotations {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Annotations;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("annotations")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Annotations, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if is_capacity_key(&key) {
                        let value: Option<String> = map.next_value()?;
                        out.push((key, value.unwrap_or_default()));
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Annotations(out))
            }
        }
        d.deserialize_map(V)
    }
}
