//! kube-scheduler's extender wire format, read and written the way kube-scheduler's Go code
//! reads and writes it.
//!
//! Facts this module relies on (from `k8s.io/kube-scheduler/extender/v1/types.go` and the
//! older `k8s.io/kubernetes/pkg/scheduler/api/types.go`; the crate README lists the commits):
//! - kube-scheduler sends `ExtenderArgs`, whose fields carry no JSON tags, so Go's encoder writes
//!   them under their Go names: `{"Pod":{…},"Nodes":{…}|null,"NodeNames":[…]|null}`. The pod and
//!   nodes inside are ordinary API objects with lower-case tagged fields.
//! - Go's decoder matches object keys to struct fields case-insensitively, so TopoLVM's tagged
//!   copies (`pod`, `nodes`, `nodenames`) and kube-scheduler's untagged names interoperate in both
//!   directions. We match the keys we read the same way, and read a repeated field and `null`
//!   as Go does (`encoding/json` decode.go and fold.go; "Decoding" below says how).
//! - `ExtenderFilterResult` is untagged too: `Nodes`, `NodeNames`, `FailedNodes`,
//!   `FailedAndUnresolvableNodes` (1.20 on), `Error`. A nil pointer, map or slice encodes as
//!   `null`. `HostPriority` is `{"Host":…, "Score":…}`; the score is `int` before 1.17 and `int64`
//!   since, which is the same JSON number.
//! - kube-scheduler versions up to 1.20 use the node objects of the filter answer themselves
//!   (later ones look the names up), so the answer echoes each passing node exactly as received.
//!
//! Parsing borrows from the request body: only names, the pod's UID and the capacity
//! annotations are decoded, every node is kept as its raw JSON text for the echo, and the rest
//! (status, managedFields, images...) is skipped without building values.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use topolvm_core::names::capacity_annotation_device_class;

/// Why a request body is not an `ExtenderArgs` we can answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("request body is not valid UTF-8 (byte {offset})")]
    NotUtf8 { offset: usize },
    #[error(
        "request body is not a valid ExtenderArgs JSON object: {message} at line {line} column {column}"
    )]
    Malformed {
        message: String,
        line: usize,
        column: usize,
    },
    #[error("ExtenderArgs has no Pod (the pod being scheduled)")]
    MissingPod,
    #[error("ExtenderArgs has neither Nodes nor NodeNames (the candidate nodes)")]
    MissingNodes,
}

/// The capacity annotations (`capacity.topolvm.io/<device-class>`) of a Pod or Node, keyed by
/// device class as it appears in the key (the default class as `00default`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapacityAnnotations<'a> {
    entries: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> CapacityAnnotations<'a> {
    /// Picks the capacity annotations out of any annotation map.
    pub fn from_annotations<I, K, V>(annotations: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<Cow<'a, str>>,
        V: Into<Cow<'a, str>>,
    {
        let mut out = Self::default();
        for (key, value) in annotations {
            if let Some(class) = strip_capacity_prefix(key.into()) {
                out.insert(class, value.into());
            }
        }
        out
    }

    /// The annotation value for a device class.
    pub fn get(&self, device_class: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(class, _)| class == device_class)
            .map(|(_, value)| value.as_ref())
    }

    /// `(device class, value)` pairs in the order they were read.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(class, value)| (class.as_ref(), value.as_ref()))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sets a class's value; a repeated key replaces the earlier value, as in a Go map.
    pub fn insert(&mut self, device_class: Cow<'a, str>, value: Cow<'a, str>) {
        match self.entries.iter_mut().find(|(c, _)| *c == device_class) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((device_class, value)),
        }
    }
}

/// The device class of a capacity annotation key, by core's one parser (TopoLVM's rule),
/// still borrowed from the body when the key was.
fn strip_capacity_prefix(key: Cow<'_, str>) -> Option<Cow<'_, str>> {
    match key {
        Cow::Borrowed(k) => capacity_annotation_device_class(k).map(Cow::Borrowed),
        Cow::Owned(k) => {
            capacity_annotation_device_class(&k).map(|class| Cow::Owned(class.to_owned()))
        }
    }
}

/// What the extender reads of the pod being scheduled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo<'a> {
    pub name: Cow<'a, str>,
    pub namespace: Cow<'a, str>,
    pub uid: Cow<'a, str>,
    pub capacity: CapacityAnnotations<'a>,
}

/// One candidate node of `Nodes.items`: its JSON text exactly as received (echoed back when
/// it passes) and what the extender reads of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeItem<'a> {
    pub raw: &'a str,
    pub name: Cow<'a, str>,
    pub capacity: CapacityAnnotations<'a>,
}

/// The candidates as kube-scheduler sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Candidates<'a> {
    /// Full node objects (`nodeCacheCapable: false`, TopoLVM's setting).
    Nodes(Vec<NodeItem<'a>>),
    /// Names only (`nodeCacheCapable: true`): the extender knows the nodes from its own cache.
    NodeNames(Vec<Cow<'a, str>>),
}

/// A parsed `ExtenderArgs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtenderArgs<'a> {
    pub pod: PodInfo<'a>,
    pub candidates: Candidates<'a>,
}

/// Parses a request body of `POST /predicate` or `POST /prioritize`.
///
/// `Nodes` wins when both `Nodes` and `NodeNames` are present (kube-scheduler never sends
/// both). Every byte is read once: the top levels (`ExtenderArgs`, `NodeList`, `items`) are
/// walked here so that each node's extent in the body is known while serde_json reads the node
/// itself, without a second pass to cut out its text.
pub fn parse_extender_args(body: &[u8]) -> Result<ExtenderArgs<'_>, RequestError> {
    let text = std::str::from_utf8(body).map_err(|e| RequestError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let mut cursor = Cursor { text, pos: 0 };
    let args = cursor.extender_args()?;
    if let Some(c) = cursor.peek() {
        return Err(cursor.error(format!("trailing characters starting with {c:?}")));
    }
    let pod = args.pod.ok_or(RequestError::MissingPod)?.into_pod();
    let candidates = match (args.nodes, args.node_names) {
        (Some(nodes), _) => Candidates::Nodes(nodes.into_iter().map(NodeItem::from).collect()),
        (None, Some(names)) => Candidates::NodeNames(names),
        (None, None) => return Err(RequestError::MissingNodes),
    };
    Ok(ExtenderArgs { pod, candidates })
}

// ---------------------------------------------------------------------------------------------
// Decoding
//
// Go's decoder reads a repeated field into the value the earlier occurrences left: a struct
// (through its pointer) or a map keeps what the new object does not name, a list's elements
// are decoded over the earlier list's elements at the same index, and `null` leaves a string,
// a struct or a list element as it was while it drops a pointer, a map or a list. Each JSON
// object is read into an update, which is then laid over what is already there.
//
// Where this stops being Go: Go reuses a list's backing array, so a list that is cut short by
// one occurrence and grows again in a later one can bring back elements of the first; we start
// such elements from zero. kube-scheduler never repeats a field.

#[derive(Default)]
struct RawArgs<'a> {
    pod: Option<ObjectMeta<'a>>,
    nodes: Option<Vec<RawNode<'a>>>,
    node_names: Option<Vec<Cow<'a, str>>>,
}

/// One element of `Nodes.items` while the body is read.
struct RawNode<'a> {
    /// The text the node was last read from.
    raw: &'a str,
    meta: ObjectMeta<'a>,
}

impl<'a> From<RawNode<'a>> for NodeItem<'a> {
    fn from(node: RawNode<'a>) -> Self {
        NodeItem {
            raw: node.raw,
            name: node.meta.name,
            capacity: node.meta.capacity,
        }
    }
}

/// Walks the outer levels of the body by hand; serde_json reads every value inside them.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// The next non-whitespace byte, not consumed.
    fn peek(&mut self) -> Option<char> {
        let rest = &self.text.as_bytes()[self.pos..];
        let skipped = rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            .unwrap_or(rest.len());
        self.pos += skipped;
        rest.get(skipped).map(|&b| char::from(b))
    }

    /// Consumes `expected` (after whitespace) or fails saying what was wanted.
    fn eat(&mut self, expected: char, wanted: &str) -> Result<(), RequestError> {
        match self.peek() {
            Some(c) if c == expected => {
                self.pos += 1;
                Ok(())
            }
            Some(c) => Err(self.error(format!("expected {wanted}, found {c:?}"))),
            None => Err(self.error(format!("EOF while expecting {wanted}"))),
        }
    }

    /// Reads one JSON value at the cursor with serde_json and moves past it.
    fn value<T: Deserialize<'a>>(&mut self) -> Result<T, RequestError> {
        self.peek();
        let start = self.pos;
        let mut values = serde_json::Deserializer::from_str(&self.text[start..]).into_iter::<T>();
        match values.next() {
            Some(Ok(value)) => {
                self.pos = start + values.byte_offset();
                Ok(value)
            }
            Some(Err(e)) => Err(self.serde_error(start, &e)),
            None => Err(self.error("EOF while parsing a value".to_owned())),
        }
    }

    /// Walks an object: `on_field` reads the value of each key.
    fn object(
        &mut self,
        what: &str,
        mut on_field: impl FnMut(&mut Self, &str) -> Result<(), RequestError>,
    ) -> Result<(), RequestError> {
        self.eat('{', what)?;
        if self.peek() == Some('}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            match self.peek() {
                Some('"') => {}
                Some(c) => return Err(self.error(format!("expected a key in {what}, found {c:?}"))),
                None => return Err(self.error(format!("EOF while parsing {what}"))),
            }
            let key: Text<'a> = self.value()?;
            self.eat(':', "':' after a key")?;
            on_field(self, &key.0)?;
            match self.peek() {
                Some(',') => self.pos += 1,
                Some('}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error(format!("expected ',' or '}}' in {what}"))),
            }
        }
    }

    /// True (and consumed) when the next value is `null`.
    fn null(&mut self) -> Result<bool, RequestError> {
        if self.peek() == Some('n') {
            self.value::<()>()?;
            return Ok(true);
        }
        Ok(false)
    }

    fn extender_args(&mut self) -> Result<RawArgs<'a>, RequestError> {
        let mut args = RawArgs::default();
        if self.null()? {
            return Ok(args);
        }
        self.object("an ExtenderArgs object", |this, key| {
            if is_key(key, "Pod") {
                match this.value::<Option<ObjectUpdate<'a>>>()? {
                    Some(update) => args.pod.get_or_insert_default().apply(update.0),
                    None => args.pod = None,
                }
            } else if is_key(key, "Nodes") {
                this.node_list(&mut args.nodes)?;
            } else if is_key(key, "NodeNames") {
                args.node_names = this.value::<Option<Vec<Option<Text<'a>>>>>()?.map(|names| {
                    let mut earlier = args.node_names.take().unwrap_or_default().into_iter();
                    names
                        .into_iter()
                        .map(|name| {
                            let before = earlier.next();
                            name.map(|t| t.0).or(before).unwrap_or_default()
                        })
                        .collect()
                });
            } else {
                this.value::<IgnoredAny>()?;
            }
            Ok(())
        })?;
        Ok(args)
    }

    fn node_list(&mut self, nodes: &mut Option<Vec<RawNode<'a>>>) -> Result<(), RequestError> {
        if self.null()? {
            *nodes = None;
            return Ok(());
        }
        let items = nodes.get_or_insert_default();
        self.object("a NodeList object", |this, key| {
            if is_key(key, "items") {
                this.node_items(items)?;
            } else {
                this.value::<IgnoredAny>()?;
            }
            Ok(())
        })
    }

    /// Reads `Nodes.items` over the nodes an earlier `items` left in `items`.
    fn node_items(&mut self, items: &mut Vec<RawNode<'a>>) -> Result<(), RequestError> {
        if self.null()? {
            items.clear();
            return Ok(());
        }
        self.eat('[', "a list of Node objects")?;
        let mut count = 0;
        if self.peek() == Some(']') {
            self.pos += 1;
            items.clear();
            return Ok(());
        }
        loop {
            self.peek();
            let start = self.pos;
            let update: Option<ObjectUpdate<'a>> = self.value().map_err(|e| match e {
                RequestError::Malformed {
                    message,
                    line,
                    column,
                } => RequestError::Malformed {
                    message: format!("Nodes.items[{count}]: {message}"),
                    line,
                    column,
                },
                other => other,
            })?;
            let raw = &self.text[start..self.pos];
            match (items.get_mut(count), update) {
                // `null` leaves an element as it was.
                (Some(_), None) => {}
                (Some(node), Some(update)) => {
                    node.raw = raw;
                    node.meta.apply(update.0);
                }
                (None, update) => {
                    let mut meta = ObjectMeta::default();
                    if let Some(update) = update {
                        meta.apply(update.0);
                    }
                    items.push(RawNode { raw, meta });
                }
            }
            count += 1;
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(']') => {
                    self.pos += 1;
                    items.truncate(count);
                    return Ok(());
                }
                _ => return Err(self.error("expected ',' or ']' in Nodes.items".to_owned())),
            }
        }
    }

    /// An error at the cursor.
    fn error(&self, message: String) -> RequestError {
        let (line, column) = line_column(self.text, self.pos);
        RequestError::Malformed {
            message,
            line,
            column,
        }
    }

    /// A serde_json error from a value that started at `start`, placed in the whole body.
    fn serde_error(&self, start: usize, e: &serde_json::Error) -> RequestError {
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
        let (base_line, base_column) = line_column(self.text, start);
        let (line, column) = match e.line() {
            0 => (base_line, base_column),
            1 => (base_line, base_column + e.column().saturating_sub(1)),
            n => (base_line + n - 1, e.column()),
        };
        RequestError::Malformed {
            message,
            line,
            column,
        }
    }
}

/// 1-based line and column of a byte offset (computed on the error path only).
fn line_column(text: &str, pos: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..pos.min(text.len())];
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let column = 1 + before.iter().rev().take_while(|&&b| b != b'\n').count();
    (line, column)
}

/// Go's rule for matching an object key to a struct field (`foldName` in encoding/json's
/// fold.go): letters match in either case, and so do the two non-ASCII runes that fold into
/// ASCII letters, the Kelvin sign (U+212A) for `k` and the long s (U+017F) for `s`. Every
/// field name here is ASCII.
fn is_key(key: &str, field: &str) -> bool {
    if key.len() == field.len() {
        // Both runes take more than one byte, so a key of the field's length has neither.
        return key.eq_ignore_ascii_case(field);
    }
    let mut letters = field.bytes();
    key.chars().all(|c| {
        letters.next().is_some_and(|letter| match c {
            '\u{212A}' => letter.eq_ignore_ascii_case(&b'k'),
            '\u{17F}' => letter.eq_ignore_ascii_case(&b's'),
            c => c.is_ascii() && letter.eq_ignore_ascii_case(&(c as u8)),
        })
    }) && letters.next().is_none()
}

/// A JSON string, borrowed from the body unless it had escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// What is read of an API object (Pod or Node): its metadata's name, namespace, UID and
/// capacity annotations. Everything else is skipped.
#[derive(Default)]
struct ObjectMeta<'a> {
    name: Cow<'a, str>,
    namespace: Cow<'a, str>,
    uid: Cow<'a, str>,
    capacity: CapacityAnnotations<'a>,
}

impl<'a> ObjectMeta<'a> {
    fn into_pod(self) -> PodInfo<'a> {
        PodInfo {
            name: self.name,
            namespace: self.namespace,
            uid: self.uid,
            capacity: self.capacity,
        }
    }

    /// Lays what one JSON object said over what earlier ones left.
    fn apply(&mut self, update: MetaUpdate<'a>) {
        for (field, value) in [
            (&mut self.name, update.name),
            (&mut self.namespace, update.namespace),
            (&mut self.uid, update.uid),
        ] {
            if let Some(value) = value {
                *field = value;
            }
        }
        match update.annotations {
            None => {}
            Some(AnnotationsUpdate {
                dropped: true,
                entries,
            }) => self.capacity = entries,
            Some(AnnotationsUpdate { entries, .. }) => {
                for (class, value) in entries.entries {
                    self.capacity.insert(class, value);
                }
            }
        }
    }
}

/// The metadata fields one JSON object (a Pod, a Node) names, `None` for those it does not
/// name or sets to `null`.
#[derive(Default)]
struct MetaUpdate<'a> {
    name: Option<Cow<'a, str>>,
    namespace: Option<Cow<'a, str>>,
    uid: Option<Cow<'a, str>>,
    annotations: Option<AnnotationsUpdate<'a>>,
}

/// What the `annotations` of one object said.
#[derive(Default)]
struct AnnotationsUpdate<'a> {
    /// A `null` came: the map there was is gone, only `entries` remain.
    dropped: bool,
    entries: CapacityAnnotations<'a>,
}

/// A Pod or Node object as an update of what is read of it: every `metadata` it holds.
struct ObjectUpdate<'a>(MetaUpdate<'a>);

impl<'de> Deserialize<'de> for ObjectUpdate<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = ObjectUpdate<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an API object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut update = MetaUpdate::default();
                while let Some(key) = map.next_key::<Text<'de>>()? {
                    if is_key(&key.0, "metadata") {
                        map.next_value_seed(MetaSeed(&mut update))?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(ObjectUpdate(update))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Reads an `ObjectMeta` into the update of its object (`null` changes nothing: the metadata
/// is a struct in Go, not a pointer).
struct MetaSeed<'s, 'a>(&'s mut MetaUpdate<'a>);

impl<'de, 's> DeserializeSeed<'de> for MetaSeed<'s, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de, 's> Visitor<'de> for MetaSeed<'s, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object's metadata")
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let update = self.0;
        while let Some(key) = map.next_key::<Text<'de>>()? {
            let key = key.0;
            let field = if is_key(&key, "name") {
                &mut update.name
            } else if is_key(&key, "namespace") {
                &mut update.namespace
            } else if is_key(&key, "uid") {
                &mut update.uid
            } else if is_key(&key, "annotations") {
                match map.next_value::<Option<AnnotationMap<'de>>>()? {
                    Some(AnnotationMap(entries)) => {
                        let annotations = update.annotations.get_or_insert_default();
                        for (class, value) in entries.entries {
                            annotations.entries.insert(class, value);
                        }
                    }
                    None => {
                        update.annotations = Some(AnnotationsUpdate {
                            dropped: true,
                            entries: CapacityAnnotations::default(),
                        })
                    }
                }
                continue;
            } else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            // A string stays as it was when the JSON says `null`.
            if let Some(text) = map.next_value::<Option<Text<'de>>>()? {
                *field = Some(text.0);
            }
        }
        Ok(())
    }
}

/// An annotation map of which only the capacity annotations are kept.
struct AnnotationMap<'a>(CapacityAnnotations<'a>);

impl<'de> Deserialize<'de> for AnnotationMap<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AnnotationVisitor;
        impl<'de> Visitor<'de> for AnnotationVisitor {
            type Value = AnnotationMap<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of annotations")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = CapacityAnnotations::default();
                while let Some(key) = map.next_key::<Text<'de>>()? {
                    match strip_capacity_prefix(key.0) {
                        // A map element is decoded afresh: `null` gives the empty string.
                        Some(class) => out.insert(
                            class,
                            map.next_value::<Option<Text<'de>>>()?
                                .map(|t| t.0)
                                .unwrap_or_default(),
                        ),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(AnnotationMap(out))
            }
        }
        deserializer.deserialize_map(AnnotationVisitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// The nodes that passed the filter, in the form they came in.
#[derive(Debug, Clone)]
pub enum PassedNodes<'a> {
    /// The JSON text of each passing node, as received.
    Nodes(Vec<&'a str>),
    NodeNames(Vec<&'a str>),
}

/// `ExtenderFilterResult` exactly as kube-scheduler's Go type encodes: untagged field names,
/// `null` for what is absent, `FailedAndUnresolvableNodes` always `null` (TopoLVM reports every
/// rejection as resolvable) and `Error` empty.
#[derive(Debug, Clone)]
pub struct FilterResult<'a> {
    pub passed: PassedNodes<'a>,
    /// `None` encodes as `null` (TopoLVM's answer when the pod requests nothing).
    pub failed: Option<Vec<(&'a str, String)>>,
}

impl FilterResult<'_> {
    /// The JSON answer as chunks. Passing nodes that lie in `source` (the request body they
    /// were parsed from) are not copied: each run of consecutive nodes becomes one slice of it.
    /// Anything else is copied.
    pub fn to_chunks(&self, source: &Bytes) -> Vec<Bytes> {
        let mut chunks = Vec::new();
        let mut text = Vec::with_capacity(256);
        text.extend_from_slice(b"{\"Nodes\":");
        match &self.passed {
            PassedNodes::Nodes(items) => {
                text.extend_from_slice(b"{\"metadata\":{},\"items\":[");
                let mut run: Option<(usize, usize)> = None;
                let mut first = true;
                for item in items {
                    match (run, span_in(source, item)) {
                        // The next node follows the run with only a comma between: extend it.
                        // (Nodes read over a repeated list can lie before the run.)
                        (Some((start, end)), Some((s, e)))
                            if source.get(end..s).is_some_and(is_separator) =>
                        {
                            run = Some((start, e));
                        }
                        (_, span) => {
                            flush_run(&mut chunks, &mut text, source, run.take());
                            if !first {
                                text.push(b',');
                            }
                            match span {
                                Some(span) => run = Some(span),
                                None => text.extend_from_slice(item.as_bytes()),
                            }
                        }
                    }
                    first = false;
                }
                flush_run(&mut chunks, &mut text, source, run);
                text.extend_from_slice(b"]},\"NodeNames\":null");
            }
            PassedNodes::NodeNames(names) => {
                text.extend_from_slice(b"null,\"NodeNames\":[");
                for (i, name) in names.iter().enumerate() {
                    if i > 0 {
                        text.push(b',');
                    }
                    push_json_string(&mut text, name);
                }
                text.push(b']');
            }
        }
        text.extend_from_slice(b",\"FailedNodes\":");
        match &self.failed {
            None => text.extend_from_slice(b"null"),
            Some(failed) => {
                text.push(b'{');
                for (i, (node, reason)) in failed.iter().enumerate() {
                    if i > 0 {
                        text.push(b',');
                    }
                    push_json_string(&mut text, node);
                    text.push(b':');
                    push_json_string(&mut text, reason);
                }
                text.push(b'}');
            }
        }
        text.extend_from_slice(b",\"FailedAndUnresolvableNodes\":null,\"Error\":\"\"}");
        chunks.push(Bytes::from(text));
        chunks
    }

    /// The JSON answer in one buffer.
    pub fn to_json(&self) -> Vec<u8> {
        self.to_chunks(&Bytes::new()).concat()
    }
}

/// Where `part` lies in `source`, if it is a slice of it.
fn span_in(source: &Bytes, part: &str) -> Option<(usize, usize)> {
    let start = (part.as_ptr() as usize).checked_sub(source.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= source.len()).then_some((start, end))
}

/// True for what may stand between two array elements: one comma and whitespace.
fn is_separator(between: &[u8]) -> bool {
    // `all` first: it stops at the first byte of a node that lies between.
    between
        .iter()
        .all(|b| matches!(b, b',' | b' ' | b'\t' | b'\n' | b'\r'))
        && between.iter().filter(|&&b| b == b',').count() == 1
}

/// Ends a run of echoed nodes: the text so far, then the run as a slice of the source.
fn flush_run(
    chunks: &mut Vec<Bytes>,
    text: &mut Vec<u8>,
    source: &Bytes,
    run: Option<(usize, usize)>,
) {
    if let Some((start, end)) = run {
        chunks.push(Bytes::from(std::mem::take(text)));
        chunks.push(source.slice(start..end));
    }
}

/// Appends `s` as a JSON string.
fn push_json_string(out: &mut Vec<u8>, s: &str) {
    // Serializing a str into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

/// One entry of `HostPriorityList`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostPriority<'a> {
    #[serde(rename = "Host")]
    pub host: &'a str,
    #[serde(rename = "Score")]
    pub score: i64,
}

impl HostPriority<'_> {
    /// The JSON answer for a list of priorities.
    pub fn list_to_json(list: &[HostPriority<'_>]) -> Vec<u8> {
        let mut out = Vec::with_capacity(list.iter().map(|p| p.host.len() + 24).sum::<usize>() + 2);
        // A list of plain structs serializes into a Vec without errors.
        if serde_json::to_writer(&mut out, list).is_err() {
            out.clear();
            out.extend_from_slice(b"[]");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ExtenderArgs<'_>, RequestError> {
        parse_extender_args(body.as_bytes())
    }

    #[test]
    fn reads_kube_schedulers_field_names() {
        let args = parse(
            r#"{"Pod":{"metadata":{"name":"p","namespace":"ns","uid":"u-1","annotations":{"capacity.topolvm.io/ssd":"5","other":"x"}},"spec":{"containers":[]}},
                "Nodes":{"metadata":{},"items":[{"metadata":{"name":"n1","annotations":{"capacity.topolvm.io/ssd":"10"}},"status":{}}]},
                "NodeNames":null}"#,
        )
        .expect("valid");
        assert_eq!(args.pod.name, "p");
        assert_eq!(args.pod.namespace, "ns");
        assert_eq!(args.pod.uid, "u-1");
        assert_eq!(args.pod.capacity.get("ssd"), Some("5"));
        assert_eq!(args.pod.capacity.iter().count(), 1);
        let Candidates::Nodes(nodes) = args.candidates else {
            panic!("expected nodes")
        };
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].name, "n1");
        assert_eq!(nodes[0].capacity.get("ssd"), Some("10"));
        assert_eq!(
            nodes[0].raw,
            r#"{"metadata":{"name":"n1","annotations":{"capacity.topolvm.io/ssd":"10"}},"status":{}}"#
        );
    }

    #[test]
    fn keys_match_case_insensitively_like_go() {
        let args = parse(
            r#"{"pod":{"METADATA":{"Name":"p","UID":"u","Annotations":{"capacity.topolvm.io/ssd":"1"}}},"nodes":{"Items":[{"Metadata":{"NAME":"n"}}]}}"#,
        )
        .expect("valid");
        assert_eq!(args.pod.name, "p");
        assert_eq!(args.pod.uid, "u");
        assert_eq!(args.pod.capacity.get("ssd"), Some("1"));
        let Candidates::Nodes(nodes) = args.candidates else {
            panic!("expected nodes")
        };
        assert_eq!(nodes[0].name, "n");
    }

    #[test]
    fn annotation_keys_are_exact() {
        // Map keys are data, not field names: Go compares them exactly.
        let args = parse(
            r#"{"Pod":{"metadata":{"annotations":{"CAPACITY.topolvm.io/ssd":"1"}}},"NodeNames":[]}"#,
        )
        .expect("valid");
        assert!(args.pod.capacity.is_empty());
    }

    #[test]
    fn nothing_after_the_prefix_is_a_class_too() {
        // TopoLVM takes whatever follows the prefix, an empty rest included, and looks the same
        // key up on the nodes (topolvm/topolvm internal/scheduler/predicate.go @ 86e72f5317ce).
        let args = parse(
            r#"{"Pod":{"metadata":{"annotations":{"capacity.topolvm.io/":"1"}}},"Nodes":{"items":[{"metadata":{"name":"n","annotations":{"capacity.topolvm.io\/":"2"}}}]}}"#,
        )
        .expect("valid");
        assert_eq!(args.pod.capacity.get(""), Some("1"));
        let Candidates::Nodes(nodes) = args.candidates else {
            panic!("expected nodes")
        };
        assert_eq!(nodes[0].capacity.get(""), Some("2"));
    }

    #[test]
    fn node_names_mode() {
        let args = parse(r#"{"Pod":{},"Nodes":null,"NodeNames":["a","b",null]}"#).expect("valid");
        let Candidates::NodeNames(names) = args.candidates else {
            panic!("expected names")
        };
        assert_eq!(names, ["a", "b", ""]);
    }

    #[test]
    fn nulls_read_as_go_zero_values() {
        let args = parse(
            r#"{"Pod":{"metadata":{"name":null,"annotations":null}},"Nodes":{"items":[null,{"metadata":null},{"metadata":{"annotations":{"capacity.topolvm.io/a":null}}}]}}"#,
        )
        .expect("valid");
        assert_eq!(args.pod.name, "");
        let Candidates::Nodes(nodes) = args.candidates else {
            panic!("expected nodes")
        };
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].raw, "null");
        assert_eq!(nodes[2].capacity.get("a"), Some(""));
        let args = parse(r#"{"Pod":{},"Nodes":{"items":null}}"#).expect("valid");
        assert!(matches!(args.candidates, Candidates::Nodes(n) if n.is_empty()));
        let args = parse(r#"{"Pod":{},"Nodes":{}}"#).expect("valid");
        assert!(matches!(args.candidates, Candidates::Nodes(n) if n.is_empty()));
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let args = parse(
            r#"{"Pod":{"metadata":{"name":"p\u00e9","annotations":{"capacity.topolvm.io\/ssd":"\u0031"}}},"NodeNames":[]}"#,
        )
        .expect("valid");
        assert_eq!(args.pod.name, "pé");
        assert_eq!(args.pod.capacity.get("ssd"), Some("1"));
    }

    #[test]
    fn a_repeated_annotation_keeps_the_last_value() {
        let args = parse(
            r#"{"Pod":{"metadata":{"annotations":{"capacity.topolvm.io/a":"1","capacity.topolvm.io/a":"2"}}},"NodeNames":[]}"#,
        )
        .expect("valid");
        assert_eq!(args.pod.capacity.get("a"), Some("2"));
    }

    // Go decodes a repeated field into the value it already holds (encoding/json decode.go:
    // `indirect` follows a non-nil pointer, `object` reuses a non-nil map, `array` decodes
    // over the slice's elements, and `literalStore` ignores `null` for a string or a struct).

    #[test]
    fn a_repeated_pod_is_read_over_the_first() {
        let args = parse(
            r#"{"Pod":{"metadata":{"name":"first","uid":"u","annotations":{"capacity.topolvm.io/a":"1"}}},"Pod":{"metadata":{"name":"second","annotations":{"capacity.topolvm.io/b":"2"}}},"NodeNames":[]}"#,
        )
        .expect("valid");
        assert_eq!(args.pod.name, "second");
        assert_eq!(args.pod.uid, "u");
        assert_eq!(args.pod.capacity.get("a"), Some("1"));
        assert_eq!(args.pod.capacity.get("b"), Some("2"));
        // `null` drops the pod (a pointer in ExtenderArgs); a later one starts afresh.
        let args = parse(
            r#"{"Pod":{"metadata":{"uid":"u"}},"Pod":null,"Pod":{"metadata":{"name":"p"}},"NodeNames":[]}"#,
        )
        .expect("valid");
        assert_eq!((args.pod.name.as_ref(), args.pod.uid.as_ref()), ("p", ""));
    }

    #[test]
    fn null_leaves_a_string_as_it_was_and_drops_a_map() {
        let args = parse(
            r#"{"Pod":{"metadata":{"name":"p","name":null,"annotations":{"capacity.topolvm.io/a":"1"},"annotations":null,"annotations":{"capacity.topolvm.io/b":"2"}}},"NodeNames":[]}"#,
        )
        .expect("valid");
        assert_eq!(args.pod.name, "p");
        assert_eq!(args.pod.capacity.get("a"), None);
        assert_eq!(args.pod.capacity.get("b"), Some("2"));
    }

    #[test]
    fn repeated_node_lists_are_read_element_by_element() {
        let body = r#"{"Pod":{},"Nodes":{"items":[{"metadata":{"name":"n1","annotations":{"capacity.topolvm.io/a":"1"}}},{"metadata":{"name":"n2"}},{"metadata":{"name":"n3"}}]},"Nodes":{"metadata":{}},"Nodes":{"items":[{"metadata":{"annotations":{"capacity.topolvm.io/b":"2"}}},null]}}"#;
        let args = parse(body).expect("valid");
        let Candidates::Nodes(nodes) = args.candidates else {
            panic!("expected nodes")
        };
        // The third node is cut off; the second, `null` the second time, is as it was.
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].name, "n1");
        assert_eq!(nodes[0].capacity.get("a"), Some("1"));
        assert_eq!(nodes[0].capacity.get("b"), Some("2"));
        assert_eq!(
            nodes[0].raw,
            r#"{"metadata":{"annotations":{"capacity.topolvm.io/b":"2"}}}"#
        );
        assert_eq!(nodes[1].name, "n2");
        assert_eq!(nodes[1].raw, r#"{"metadata":{"name":"n2"}}"#);

        let args = parse(r#"{"Pod":{},"NodeNames":["a","b"],"NodeNames":[null,"c",null]}"#)
            .expect("valid");
        let Candidates::NodeNames(names) = args.candidates else {
            panic!("expected names")
        };
        assert_eq!(names, ["a", "c", ""]);
    }

    #[test]
    fn keys_fold_like_go() {
        // The Kelvin sign folds to k and the long s to s; dotted and dotless i fold only to
        // themselves (Go's caseOrbit), so they match nothing here.
        let args = parse(
            "{\"Pod\":{\"metadata\":{\"name\":\"p\"}},\"Node\u{17F}\":{\"ITEM\u{17F}\":[{\"metadata\":{\"name\":\"n\"}}]}}",
        )
        .expect("valid");
        let Candidates::Nodes(nodes) = args.candidates else {
            panic!("expected nodes")
        };
        assert_eq!(nodes[0].name, "n");
        for (key, field, matches) in [
            ("\u{212A}", "k", true),
            ("\u{212A}", "K", true),
            ("\u{17F}", "S", true),
            ("NAME\u{17F}PACE", "namespace", true),
            ("\u{130}tems", "items", false),
            ("\u{131}tems", "items", false),
            ("item", "items", false),
            ("itemss", "items", false),
            ("\u{17F}", "k", false),
        ] {
            assert_eq!(is_key(key, field), matches, "{key:?} {field:?}");
        }
    }

    #[test]
    fn node_fields_after_a_skipped_status_are_found() {
        // Hand-written JSON may put metadata last; the early stop must not lose it.
        let args = parse(
            r#"{"Pod":{},"Nodes":{"items":[{"status":{"images":[{"names":["x"]}]},"spec":{},"metadata":{"managedFields":[{}],"annotations":{"capacity.topolvm.io/x":"7"},"name":"late"}}]}}"#,
        )
        .expect("valid");
        let Candidates::Nodes(nodes) = args.candidates else {
            panic!("expected nodes")
        };
        assert_eq!(nodes[0].name, "late");
        assert_eq!(nodes[0].capacity.get("x"), Some("7"));
    }

    #[test]
    fn missing_parts_are_named() {
        assert!(matches!(
            parse(r#"{"Nodes":{"items":[]}}"#),
            Err(RequestError::MissingPod)
        ));
        assert!(matches!(
            parse(r#"{"Pod":null,"Nodes":{"items":[]}}"#),
            Err(RequestError::MissingPod)
        ));
        assert!(matches!(parse("null"), Err(RequestError::MissingPod)));
        assert!(matches!(
            parse(r#"{"Pod":{}}"#),
            Err(RequestError::MissingNodes)
        ));
        assert!(matches!(
            parse(r#"{"Pod":{},"Nodes":null,"NodeNames":null}"#),
            Err(RequestError::MissingNodes)
        ));
    }

    #[test]
    fn malformed_input_is_an_error_with_a_position() {
        for body in [
            "",
            "{",
            "[]",
            "42",
            r#"{"Pod":5,"NodeNames":[]}"#,
            r#"{"Pod":{"metadata":{"annotations":{"capacity.topolvm.io/a":5}}},"NodeNames":[]}"#,
            r#"{"Pod":{"metadata":{"name":7}},"NodeNames":[]}"#,
            r#"{"Pod":{},"Nodes":{"items":[5]}}"#,
            r#"{"Pod":{},"Nodes":{"items":[{"metadata":{"name":1}}]}}"#,
            r#"{"Pod":{},"Nodes":{"items":[{"metadata":{"name":"a"}}"#,
            r#"{"Pod":{},"Nodes":{"items":[{"metadata":{"name":"a"},"status":{]}]}}"#,
            r#"{"Pod":{},"NodeNames":[1]}"#,
            r#"{"Pod":{},"NodeNames":[]} trailing"#,
        ] {
            match parse(body) {
                Err(RequestError::Malformed { line, column, .. }) => {
                    assert!(line > 0 && column > 0, "{body:?}");
                }
                other => panic!("{body:?}: expected malformed, got {other:?}"),
            }
        }
    }

    #[test]
    fn filter_result_encodes_like_go() {
        let result = FilterResult {
            passed: PassedNodes::Nodes(vec![r#"{"metadata":{"name":"n1"}}"#]),
            failed: Some(vec![("n2", "out of VG free space".to_owned())]),
        };
        assert_eq!(
            String::from_utf8(result.to_json()).expect("utf8"),
            r#"{"Nodes":{"metadata":{},"items":[{"metadata":{"name":"n1"}}]},"NodeNames":null,"FailedNodes":{"n2":"out of VG free space"},"FailedAndUnresolvableNodes":null,"Error":""}"#
        );
        let result = FilterResult {
            passed: PassedNodes::NodeNames(vec!["a"]),
            failed: None,
        };
        assert_eq!(
            String::from_utf8(result.to_json()).expect("utf8"),
            r#"{"Nodes":null,"NodeNames":["a"],"FailedNodes":null,"FailedAndUnresolvableNodes":null,"Error":""}"#
        );
    }

    #[test]
    fn passing_nodes_are_slices_of_the_request() {
        let body = Bytes::from(
            r#"{"Pod":{"metadata":{"annotations":{"capacity.topolvm.io/a":"5"}}},"Nodes":{"metadata":{},"items":[{"metadata":{"name":"n1"}}, {"metadata":{"name":"n2"}},{"metadata":{"name":"n3"}},{"metadata":{"name":"n4"}}]}}"#,
        );
        let args = parse_extender_args(&body).expect("valid");
        let Candidates::Nodes(nodes) = &args.candidates else {
            panic!("expected nodes")
        };
        let result = FilterResult {
            passed: PassedNodes::Nodes(vec![nodes[0].raw, nodes[1].raw, nodes[3].raw]),
            failed: Some(vec![("n3", "out of VG free space".to_owned())]),
        };
        let chunks = result.to_chunks(&body);
        let expected = r#"{"Nodes":{"metadata":{},"items":[{"metadata":{"name":"n1"}}, {"metadata":{"name":"n2"}},{"metadata":{"name":"n4"}}]},"NodeNames":null,"FailedNodes":{"n3":"out of VG free space"},"FailedAndUnresolvableNodes":null,"Error":""}"#;
        assert_eq!(String::from_utf8(chunks.concat()).expect("utf8"), expected);
        // Copied, the nodes are joined by a bare comma.
        assert_eq!(
            String::from_utf8(result.to_json()).expect("utf8"),
            expected.replace("}}, {", "}},{")
        );
        // n1 and n2 are one slice, n4 another; both point into the request.
        let echoed: Vec<&Bytes> = chunks
            .iter()
            .filter(|c| span_in(&body, std::str::from_utf8(c).expect("utf8")).is_some())
            .collect();
        assert_eq!(echoed.len(), 2);
        assert_eq!(
            echoed[0].as_ref(),
            br#"{"metadata":{"name":"n1"}}, {"metadata":{"name":"n2"}}"#
        );
        assert_eq!(echoed[1].as_ref(), br#"{"metadata":{"name":"n4"}}"#);
    }

    #[test]
    fn passing_nodes_out_of_body_order_are_echoed_in_their_order() {
        // Found by the fuzz target `wire`: the second list is read over the first, so the
        // first node's text now lies after the second's, and the run of echoed text ended
        // before the next node began (a slice from its end back to the next node's start).
        let body = Bytes::from(
            r#"{"Pod":{"metadata":{"annotations":{"capacity.topolvm.io/ssd":"1"}}},"Nodes":{"items":[{"metadata":{"name":"a"}},{"metadata":{"name":"b"}}]},"Nodes":{"items":[{"metadata":{"name":"c"}},null]}}"#,
        );
        let args = parse_extender_args(&body).expect("valid");
        let Candidates::Nodes(nodes) = &args.candidates else {
            panic!("expected nodes")
        };
        let result = FilterResult {
            passed: PassedNodes::Nodes(nodes.iter().map(|n| n.raw).collect()),
            failed: None,
        };
        let expected = r#"{"Nodes":{"metadata":{},"items":[{"metadata":{"name":"c"}},{"metadata":{"name":"b"}}]},"NodeNames":null,"FailedNodes":null,"FailedAndUnresolvableNodes":null,"Error":""}"#;
        assert_eq!(
            String::from_utf8(result.to_chunks(&body).concat()).expect("utf8"),
            expected
        );
    }

    #[test]
    fn separators() {
        assert!(is_separator(b","));
        assert!(is_separator(b" ,\n "));
        assert!(!is_separator(b""));
        assert!(!is_separator(b",,"));
        assert!(!is_separator(b",{}"));
    }

    #[test]
    fn host_priority_encodes_like_go() {
        let list = [
            HostPriority {
                host: "n1",
                score: 3,
            },
            HostPriority {
                host: "n\"2",
                score: 0,
            },
        ];
        assert_eq!(
            String::from_utf8(HostPriority::list_to_json(&list)).expect("utf8"),
            r#"[{"Host":"n1","Score":3},{"Host":"n\"2","Score":0}]"#
        );
    }
}
