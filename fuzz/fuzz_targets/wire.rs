//! Differential target for the scheduler's hand-written request walker
//! (`topolvm_scheduler::wire::parse_extender_args`).
//!
//! The reference reads the whole body in one serde_json pass into a model of what Go holds
//! after `json.Unmarshal` into kube-scheduler's `ExtenderArgs`: pointers as `Option`, Go's
//! slices and maps, and one rule per Go kind for a repeated field and for `null` (below). It
//! reads only the fields the extender uses and skips the rest with `IgnoredAny`, as the walker
//! does. On every UTF-8 body serde_json accepts, the walker must give the same pod, the same
//! candidates, and for each node a slice of the body that is one JSON value (and, for a node
//! read from one object only, that object). On every body serde_json refuses, the walker must
//! refuse it with `Malformed`, or with `NotUtf8` on bytes that are not UTF-8. The filter
//! answer that passes those nodes (`FilterResult::to_chunks`, which echoes runs of the body
//! without copying them) must then say what the copied answer (`to_json`) says.
//!
//! Nesting past serde_json's limit of 128 levels is left out of the comparison: the walker
//! reads each field of ExtenderArgs and NodeList and each node with a fresh deserializer, so
//! its limit counts from there, up to three levels deeper than a whole-body read (Go's limit
//! is 10000). It must still answer without panicking.
#![no_main]

use std::fmt;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde::de::{
    Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use topolvm_core::names::capacity_annotation_device_class;
use topolvm_scheduler::wire::{
    Candidates, CapacityAnnotations, ExtenderArgs, FilterResult, NodeItem, PassedNodes,
    RequestError, parse_extender_args,
};

fuzz_target!(|data: &[u8]| {
    // A `Bytes` body, as the extender has it: passing nodes are echoed as slices of it.
    let body = Bytes::copy_from_slice(data);
    let data: &[u8] = &body;
    let walked = parse_extender_args(data);
    let Ok(text) = std::str::from_utf8(data) else {
        assert!(
            matches!(walked, Err(RequestError::NotUtf8 { .. })),
            "not UTF-8, but the walker gave {walked:?}"
        );
        return;
    };
    match reference(text) {
        Ok(args) => {
            compare(data, &walked, &args);
            if let Ok(ExtenderArgs {
                candidates: Candidates::Nodes(items),
                ..
            }) = &walked
            {
                check_echo(&body, items);
            }
        }
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => {}
        Err(e) => assert!(
            matches!(walked, Err(RequestError::Malformed { .. })),
            "serde_json refused ({e}) but the walker gave {walked:?}"
        ),
    }
});

/// The whole body decoded the way Go decodes it.
fn reference(text: &str) -> Result<GoArgs, serde_json::Error> {
    let mut args = GoArgs::default();
    let mut de = serde_json::Deserializer::from_str(text);
    args.decode(&mut de)?;
    de.end()?;
    Ok(args)
}

fn compare(data: &[u8], walked: &Result<ExtenderArgs<'_>, RequestError>, want: &GoArgs) {
    let Some(want_pod) = &want.pod else {
        assert_eq!(walked, &Err(RequestError::MissingPod));
        return;
    };
    if want.nodes.is_none() && want.node_names.is_none() {
        assert_eq!(walked, &Err(RequestError::MissingNodes));
        return;
    }
    let args = match walked {
        Ok(args) => args,
        Err(e) => panic!("serde_json accepted the body but the walker refused it: {e}"),
    };
    let meta = &want_pod.metadata;
    assert_eq!(args.pod.name, meta.name);
    assert_eq!(args.pod.namespace, meta.namespace);
    assert_eq!(args.pod.uid, meta.uid);
    assert_eq!(sorted(&args.pod.capacity), meta.annotations.sorted());
    match (&args.candidates, &want.nodes, &want.node_names) {
        (Candidates::Nodes(items), Some(nodes), _) => {
            assert_eq!(items.len(), nodes.items.len());
            for (item, node) in items.iter().zip(&nodes.items) {
                assert_eq!(item.name, node.metadata.name);
                assert_eq!(sorted(&item.capacity), node.metadata.annotations.sorted());
                // What is echoed is a slice of the body and one JSON value.
                let start = (item.raw.as_ptr() as usize)
                    .checked_sub(data.as_ptr() as usize)
                    .expect("raw lies in the body");
                assert!(start + item.raw.len() <= data.len(), "raw lies in the body");
                assert_eq!(item.raw.trim(), item.raw);
                let mut again = GoObject::default();
                let mut de = serde_json::Deserializer::from_str(item.raw);
                again.decode(&mut de).expect("raw is a node");
                de.end().expect("raw is one value");
                if node.objects_read <= 1 {
                    assert_eq!(again.metadata.name, node.metadata.name);
                    assert_eq!(again.metadata.annotations, node.metadata.annotations);
                }
            }
        }
        (Candidates::NodeNames(names), None, Some(want_names)) => {
            assert_eq!(names, want_names);
        }
        (got, nodes, names) => panic!("walker gave {got:?}, serde_json {nodes:?} / {names:?}"),
    }
}

/// The filter answer passing every node, and every other node: the chunks that echo slices of
/// the body say the same as the answer copied into one buffer, and list the nodes as received.
fn check_echo(body: &Bytes, items: &[NodeItem<'_>]) {
    let every_other = items.iter().step_by(2);
    for passed in [items.iter().collect::<Vec<_>>(), every_other.collect()] {
        let result = FilterResult {
            passed: PassedNodes::Nodes(passed.iter().map(|item| item.raw).collect()),
            failed: None,
        };
        let chunks = result.to_chunks(body).concat();
        let copied = result.to_json();
        for answer in [&chunks, &copied] {
            let mut de = serde_json::Deserializer::from_slice(answer);
            IgnoredAny::deserialize(&mut de).expect("the answer is JSON");
            de.end().expect("the answer is one value");
        }
        // Decoded, unless a node holds a lone surrogate escape, which serde_json skips but
        // does not decode (Go decodes it as U+FFFD).
        let (Ok(chunked), Ok(copied)) = (
            serde_json::from_slice::<serde_json::Value>(&chunks),
            serde_json::from_slice::<serde_json::Value>(&copied),
        ) else {
            continue;
        };
        assert_eq!(chunked, copied);
        let echoed = chunked["Nodes"]["items"].as_array().expect("items");
        assert_eq!(echoed.len(), passed.len());
        for (echo, item) in echoed.iter().zip(&passed) {
            let raw: serde_json::Value = serde_json::from_str(item.raw).expect("raw is JSON");
            assert_eq!(echo, &raw);
        }
    }
}

fn sorted(capacity: &CapacityAnnotations<'_>) -> Vec<(String, String)> {
    let mut pairs: Vec<_> = capacity
        .iter()
        .map(|(class, value)| (class.to_owned(), value.to_owned()))
        .collect();
    pairs.sort();
    pairs
}

/// Go's match of a key to a field name: both folded by encoding/json's `foldName`, which takes
/// ASCII letters to upper case and every other rune to the smallest rune of its case-fold
/// orbit. Only two orbits have an ASCII member: the Kelvin sign's (K) and the long s's (S).
fn is_key(key: &str, field: &str) -> bool {
    fn fold(s: &str) -> impl Iterator<Item = char> + '_ {
        s.chars().map(|c| match c {
            '\u{212A}' => 'K',
            '\u{17F}' => 'S',
            c => c.to_ascii_uppercase(),
        })
    }
    fold(key).eq(fold(field))
}

// ---------------------------------------------------------------------------------------------
// A model of Go's values and of how encoding/json decodes into them (decode.go): each kind is
// decoded into what it already holds.

/// A Go value JSON is decoded into.
trait GoDecode: Default {
    fn decode<'de, D: Deserializer<'de>>(&mut self, d: D) -> Result<(), D::Error>;
}

/// Decodes into an existing value.
struct Over<'a, T>(&'a mut T);

impl<'de, T: GoDecode> DeserializeSeed<'de> for Over<'_, T> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.0.decode(d)
    }
}

/// A string: `null` leaves it as it was.
impl GoDecode for String {
    fn decode<'de, D: Deserializer<'de>>(&mut self, d: D) -> Result<(), D::Error> {
        struct V<'a>(&'a mut String);
        impl<'de> Visitor<'de> for V<'_> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or null")
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
                Ok(())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                *self.0 = String::deserialize(d)?;
                Ok(())
            }
        }
        d.deserialize_option(V(self))
    }
}

/// A pointer: `null` makes it nil, anything else is decoded into what it points to, which is
/// allocated when it is nil.
impl<T: GoDecode> GoDecode for Option<T> {
    fn decode<'de, D: Deserializer<'de>>(&mut self, d: D) -> Result<(), D::Error> {
        struct V<'a, T>(&'a mut Option<T>);
        impl<'de, T: GoDecode> Visitor<'de> for V<'_, T> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value or null")
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
                *self.0 = None;
                Ok(())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                self.0.get_or_insert_default().decode(d)
            }
        }
        d.deserialize_option(V(self))
    }
}

/// A slice: `null` makes it nil; an array is decoded element by element over the elements
/// there are, then the slice is cut to the array's length. (Go also keeps the backing array,
/// so elements cut off once can come back when a later array is longer; not modelled, as in
/// the walker.)
impl<T: GoDecode> GoDecode for Vec<T> {
    fn decode<'de, D: Deserializer<'de>>(&mut self, d: D) -> Result<(), D::Error> {
        struct Element<'a, T> {
            slice: &'a mut Vec<T>,
            index: usize,
        }
        impl<'de, T: GoDecode> DeserializeSeed<'de> for Element<'_, T> {
            type Value = ();
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                if self.index == self.slice.len() {
                    self.slice.push(T::default());
                }
                self.slice[self.index].decode(d)
            }
        }
        struct V<'a, T>(&'a mut Vec<T>);
        impl<'de, T: GoDecode> Visitor<'de> for V<'_, T> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array or null")
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
                self.0.clear();
                Ok(())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_seq(self)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                let mut index = 0;
                while seq
                    .next_element_seed(Element {
                        slice: &mut *self.0,
                        index,
                    })?
                    .is_some()
                {
                    index += 1;
                }
                self.0.truncate(index);
                Ok(())
            }
        }
        d.deserialize_option(V(self))
    }
}

/// A `map[string]string` of annotations, of which the capacity annotations are kept in the
/// order first set: `null` makes it nil, an object adds to the entries there are, and each
/// value is decoded into a fresh string (so `null` gives `""`).
#[derive(Debug, Default, PartialEq)]
struct Annotations(Option<Vec<(String, String)>>);

impl Annotations {
    /// `(device class, value)` pairs, sorted.
    fn sorted(&self) -> Vec<(String, String)> {
        let mut pairs: Vec<_> = self
            .0
            .iter()
            .flatten()
            .filter_map(|(key, value)| {
                capacity_annotation_device_class(key).map(|class| (class.to_owned(), value.clone()))
            })
            .collect();
        pairs.sort();
        pairs
    }
}

impl GoDecode for Annotations {
    fn decode<'de, D: Deserializer<'de>>(&mut self, d: D) -> Result<(), D::Error> {
        struct V<'a>(&'a mut Option<Vec<(String, String)>>);
        impl<'de> Visitor<'de> for V<'_> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object or null")
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
                *self.0 = None;
                Ok(())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_map(self)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
                let entries = self.0.get_or_insert_default();
                while let Some(key) = map.next_key::<String>()? {
                    // Only capacity annotations are read, so only their values are checked.
                    if capacity_annotation_device_class(&key).is_none() {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    let mut value = String::new();
                    map.next_value_seed(Over(&mut value))?;
                    match entries.iter_mut().find(|(k, _)| *k == key) {
                        Some(entry) => entry.1 = value,
                        None => entries.push((key, value)),
                    }
                }
                Ok(())
            }
        }
        d.deserialize_option(V(&mut self.0))
    }
}

/// A struct's fields, looked up by Go's rule.
trait GoStruct: Default {
    /// Reads the value of `key`; false when the struct has no such field.
    fn field<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error>;
    /// Called once for each object decoded into the struct.
    fn object_read(&mut self) {}
}

/// A struct: `null` leaves it as it was, an object sets the fields it names.
macro_rules! go_struct {
    ($t:ty) => {
        impl GoDecode for $t {
            fn decode<'de, D: Deserializer<'de>>(&mut self, d: D) -> Result<(), D::Error> {
                struct V<'a>(&'a mut $t);
                impl<'de> Visitor<'de> for V<'_> {
                    type Value = ();
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("an object or null")
                    }
                    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
                        Ok(())
                    }
                    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                        d.deserialize_map(self)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
                        self.0.object_read();
                        while let Some(key) = map.next_key::<String>()? {
                            if !self.0.field(&key, &mut map)? {
                                map.next_value::<IgnoredAny>()?;
                            }
                        }
                        Ok(())
                    }
                }
                d.deserialize_option(V(self))
            }
        }
    };
}

/// kube-scheduler's `ExtenderArgs`: `Pod *v1.Pod`, `Nodes *v1.NodeList`, `NodeNames *[]string`.
#[derive(Debug, Default)]
struct GoArgs {
    pod: Option<GoObject>,
    nodes: Option<GoNodeList>,
    node_names: Option<Vec<String>>,
}

impl GoStruct for GoArgs {
    fn field<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        if is_key(key, "Pod") {
            map.next_value_seed(Over(&mut self.pod))?;
        } else if is_key(key, "Nodes") {
            map.next_value_seed(Over(&mut self.nodes))?;
        } else if is_key(key, "NodeNames") {
            map.next_value_seed(Over(&mut self.node_names))?;
        } else {
            return Ok(false);
        }
        Ok(true)
    }
}
go_struct!(GoArgs);

/// `v1.NodeList`: `Items []Node`.
#[derive(Debug, Default)]
struct GoNodeList {
    items: Vec<GoObject>,
}

impl GoStruct for GoNodeList {
    fn field<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        if !is_key(key, "items") {
            return Ok(false);
        }
        map.next_value_seed(Over(&mut self.items))?;
        Ok(true)
    }
}
go_struct!(GoNodeList);

/// A `v1.Pod` or `v1.Node`, of which only `ObjectMeta` is read.
#[derive(Debug, Default)]
struct GoObject {
    metadata: GoMeta,
    /// How many JSON objects were decoded into it.
    objects_read: usize,
}

impl GoStruct for GoObject {
    fn field<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        if !is_key(key, "metadata") {
            return Ok(false);
        }
        map.next_value_seed(Over(&mut self.metadata))?;
        Ok(true)
    }
    fn object_read(&mut self) {
        self.objects_read += 1;
    }
}
go_struct!(GoObject);

/// `metav1.ObjectMeta`: the fields the extender reads.
#[derive(Debug, Default)]
struct GoMeta {
    name: String,
    namespace: String,
    uid: String,
    annotations: Annotations,
}

impl GoStruct for GoMeta {
    fn field<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        if is_key(key, "name") {
            map.next_value_seed(Over(&mut self.name))?;
        } else if is_key(key, "namespace") {
            map.next_value_seed(Over(&mut self.namespace))?;
        } else if is_key(key, "uid") {
            map.next_value_seed(Over(&mut self.uid))?;
        } else if is_key(key, "annotations") {
            map.next_value_seed(Over(&mut self.annotations))?;
        } else {
            return Ok(false);
        }
        Ok(true)
    }
}
go_struct!(GoMeta);
