//! The `data` field: JSON text, possibly gzip-compressed by the SDK, checked
//! for what PostgreSQL's jsonb would refuse.
//!
//! Compressed data is inflated only as the SDK writes it (one gzip member,
//! Python's `gzip.compress`, under the one `_data` key) and never past what
//! Redis weighed it at before delivering it (`expanded_size` in
//! src/weighed_read.lua, mirrored by `weight::find_weighed_data`):
//! the memory budget covers what the parser holds. Anything else is a dead
//! letter with its reason (`decompression_failed`), not a bigger allocation.
//!
//! The object's values are kept as their JSON text ([`RawObject`]): input
//! and output, most of an entry's bytes, go to their columns as the SDK
//! wrote them (key order, spacing and escapes of its `json.dumps`, numbers
//! exact), never built into a tree and written out again. Keys and values
//! borrow the text parsed (the entry's field, or the inflated payload), so
//! the one copy of a value is the one into its column. Text that needs
//! more than a validating read (a NUL escape, a surrogate escape, deep
//! nesting, Python's NaN, anything invalid) takes the tree parse with its
//! repairs and errors, exactly as before.

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

use base64::Engine;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::gzip::{self, GzipError};
pub use super::raw_object::RawObject;
use super::weight;
use super::{Reason, Rejection};

/// Serialized JSON that jsonb accepts (no NUL anywhere, valid UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Json(String);

impl Json {
    pub fn from_value(value: &Value) -> Self {
        // Serializing a Value cannot fail: its keys are strings.
        Self(serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned()))
    }

    /// Text that a JSON parser accepted, kept as it is.
    pub fn from_raw(raw: &RawValue) -> Self {
        Self(raw.get().to_owned())
    }

    pub fn from_object(object: &RawObject<'_>) -> Self {
        // Serializing strings and raw values cannot fail.
        Self(serde_json::to_string(object).unwrap_or_else(|_| "{}".to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Json {
    fn default() -> Self {
        Self("{}".to_owned())
    }
}

/// The object of `text` with its keys and values borrowed from it (a key
/// with an escape is unescaped, so owned); None when `text` is not a JSON
/// object. Keys sorted, the last of a duplicated key kept (as a tree parse
/// keeps it).
pub fn borrowed_object(text: &str) -> Option<RawObject<'_>> {
    serde_json::from_str::<Borrowing>(text).ok().map(|b| b.0)
}

/// serde's own `Cow` impl always copies: these borrow.
struct Borrowing<'a>(RawObject<'a>);

impl<'de> Deserialize<'de> for Borrowing<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Borrowing<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut object = RawObject::new();
                while let Some(Key(key)) = map.next_key()? {
                    let value: &'de RawValue = map.next_value()?;
                    object.push(key, Cow::Borrowed(value));
                }
                object.settle();
                Ok(Borrowing(object))
            }
        }
        deserializer.deserialize_map(Object)
    }
}

struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> Visitor<'de> for Text {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(key)))
            }
            fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(Text)
    }
}

/// A value's JSON text (compact, object keys sorted).
pub fn raw(value: &Value) -> Box<RawValue> {
    // Serializing a Value cannot fail: its keys are strings.
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// The tree of a value the raw parse accepted.
pub fn tree(raw: &RawValue) -> Value {
    // What the raw parse accepted the tree parse accepts: raw_parse_suffices
    // sent everything else (deep nesting included) to the tree parse.
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// Parses `data` into its object, expanding `{"_compressed": true, "_data":
/// base64(gzip(json))}` first (into `inflated`, which the object then
/// borrows), and refuses anything jsonb would refuse.
pub fn expand_data<'a>(
    text: &'a str,
    max_expanded_bytes: usize,
    inflated: &'a mut String,
) -> Result<RawObject<'a>, Rejection> {
    let (mut object, mut nul) = parse_object(text, "data")?;
    if object.get("_compressed").is_some_and(|v| v.get() == "true") {
        let data = object.remove("_data");
        let Some(encoded) = data.as_deref().and_then(json_text) else {
            return Err(Rejection::new(
                Reason::Decompression,
                "data is marked _compressed but has no _data text",
            ));
        };
        let bytes = inflate(text, &encoded, max_expanded_bytes as u64)?;
        *inflated = String::from_utf8(bytes).map_err(|e| {
            Rejection::new(
                Reason::InvalidUtf8,
                format!("expanded data is not valid UTF-8: {e}"),
            )
        })?;
        let inflated: &'a String = inflated;
        (object, nul) = parse_object(inflated, "expanded data")?;
    }
    if let Some(path) = nul.take() {
        return Err(Rejection::new(
            Reason::NulCharacter,
            format!("data{path} contains a NUL character (\\u0000), which jsonb cannot store"),
        ));
    }
    Ok(object)
}

/// A JSON string's text, borrowed unless it has escapes.
fn json_text(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<&str>(raw.get())
        .map(Cow::Borrowed)
        .or_else(|_| serde_json::from_str::<String>(raw.get()).map(Cow::Owned))
        .ok()
}

/// Key under which repairs of Python's non-standard JSON are recorded; it
/// lands in the row's metadata like any key without a column.
pub const REPAIRS_KEY: &str = "_ingest_repairs";

/// The object, and the path of a NUL in it (jsonb refuses those; whether
/// that matters depends on whether this object is the data that is kept).
fn parse_object<'a>(
    text: &'a str,
    what: &str,
) -> Result<(RawObject<'a>, Option<String>), Rejection> {
    if raw_parse_suffices(text) {
        if let Some(object) = borrowed_object(text) {
            return Ok((object, None));
        }
    }
    let object = parse_tree(text, what)?;
    let nul = find_nul(&object);
    let object = object
        .into_iter()
        .map(|(k, v)| (Cow::Owned(k), Cow::Owned(raw(&v))))
        .collect();
    Ok((object, nul))
}

/// Deeper than this, the tree parse decides (serde_json's recursion limit is
/// 128; a raw parse has none).
const MAX_RAW_DEPTH: usize = 100;

/// True when a validating raw parse is all `text` needs: no `\u0000`
/// (which jsonb refuses) and no surrogate escape (lone ones are repaired)
/// in a string, and nesting well inside the tree parse's limit. Anything
/// else takes the tree parse, with its repairs and errors. Both checks may
/// answer no when yes was right (the tree parse then does the work), never
/// the other way round.
fn raw_parse_suffices(text: &str) -> bool {
    let bytes = text.as_bytes();
    no_refused_escape(bytes) && shallow(bytes)
}

/// Looks at every `\u` of the text at C speed: one after an escaped
/// backslash (`\\u0000`, text, not a NUL) is a false alarm, which only
/// costs a tree parse.
fn no_refused_escape(bytes: &[u8]) -> bool {
    unicode_escapes(bytes).all(|hex| {
        let surrogate = matches!(
            hex,
            [b'd' | b'D', b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F', ..]
        );
        hex != b"0000" && !surrogate
    })
}

/// The up to four bytes after each `\u` of the text, found at C speed
/// (memmem). One after an escaped backslash (`\\u`) is text, not an
/// escape: callers may only use these for answers that a false alarm
/// cannot make wrong.
pub(super) fn unicode_escapes(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    // Built once: a searcher's set-up costs about what a short text's search does.
    static BACKSLASH_U: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\\u"));
    BACKSLASH_U
        .find_iter(bytes)
        .map(move |at| bytes.get(at + 2..at + 6).unwrap_or_default())
}

/// Nesting below [`MAX_RAW_DEPTH`]. Text with fewer brackets than that in
/// all (strings included) cannot nest deeper: one SIMD search for them
/// (memchr, which leaps between the few there are) decides for nearly
/// every entry; the rest are scanned byte by byte.
fn shallow(bytes: &[u8]) -> bool {
    let few_openers = memchr::memchr2_iter(b'[', b'{', bytes)
        .nth(MAX_RAW_DEPTH - 1)
        .is_none();
    few_openers || depth_stays_below(bytes, MAX_RAW_DEPTH)
}

fn depth_stays_below(bytes: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        match (in_string, bytes[i]) {
            (true, b'"') => in_string = false,
            // The escaped character is skipped: `\"` does not end a string.
            (true, b'\\') => i += 1,
            (false, b'"') => in_string = true,
            (false, b'[' | b'{') => {
                depth += 1;
                if depth >= limit {
                    return false;
                }
            }
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    true
}

fn parse_tree(text: &str, what: &str) -> Result<Map<String, Value>, Rejection> {
    let parsed =
        serde_json::from_str::<Value>(text).or_else(|error| match super::lenient::repair(text) {
            Some((repaired, repairs)) => {
                serde_json::from_str::<Value>(&repaired).map(|mut value| {
                    if let Value::Object(map) = &mut value {
                        map.insert(REPAIRS_KEY.to_owned(), repairs.into());
                    }
                    value
                })
            }
            None => Err(error),
        });
    match parsed {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(Rejection::new(
            Reason::DataNotObject,
            format!("{what} is a JSON {}, expected an object", kind(&other)),
        )),
        Err(e) => Err(Rejection::new(
            Reason::InvalidData,
            format!("{what} is not valid JSON: {e}"),
        )),
    }
}

/// base64, then one gzip member, stopping at the size Redis weighed it at.
/// `data` is the whole field, `encoded` the `_data` text parsed from it.
fn inflate(data: &str, encoded: &str, limit: u64) -> Result<Vec<u8>, Rejection> {
    let refuse = |detail: String| Err(Rejection::new(Reason::Decompression, detail));
    // The text weighed must be the text inflated: a second `_data` key (a
    // JSON parser keeps the last, the weigher reads the first) or an escaped
    // one would be inflated unweighed.
    let weighed = weight::find_weighed_data(data.as_bytes())
        .filter(|weighed| data.as_bytes()[weighed.text.clone()] == *encoded.as_bytes());
    let Some(weighed) = weighed else {
        return refuse(
            "_data is not the text the memory budget weighed: the SDK writes one \"_data\" key, \
             unescaped (a duplicate or escaped key is refused)"
                .to_owned(),
        );
    };
    let Some(declared) = weighed.declared else {
        return refuse(format!(
            "_data is {}, not what the SDK writes (base64 of one gzip member)",
            describe(encoded)
        ));
    };
    if declared > limit {
        return Err(Rejection::new(
            Reason::TooLarge,
            format!(
                "compressed data expands beyond the limit of {limit} bytes (its gzip trailer declares {declared})"
            ),
        ));
    }
    let compressed = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| Rejection::new(Reason::Decompression, format!("_data is not base64: {e}")))?;
    gzip::inflate_member(&compressed, declared).map_err(|e| match e {
        GzipError::PastLimit(_) => Rejection::new(
            Reason::Decompression,
            format!(
                "_data inflates past the {declared} bytes its gzip trailer (its last four bytes) \
                 declares: a trailer that does not match the data, or more than one gzip member"
            ),
        ),
        GzipError::Trailing(after) => Rejection::new(
            Reason::Decompression,
            format!("_data holds more than one gzip member ({after} bytes after the first); the SDK writes one"),
        ),
        other => Rejection::new(Reason::Decompression, format!("_data does not inflate: {other}")),
    })
}

/// What non-gzip `_data` looks like, for the dead letter.
fn describe(encoded: &str) -> &'static str {
    let head = encoded
        .get(..4)
        .and_then(|head| base64::engine::general_purpose::STANDARD.decode(head).ok());
    match head.as_deref() {
        Some([0x78, ..]) => "zlib",
        Some([0x1f, 0x8b, ..]) => {
            "gzip that cannot be read (its length or last characters are not base64)"
        }
        Some(_) => "neither gzip nor zlib",
        None => "not base64",
    }
}

pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The path of the first key or string holding a NUL, like `.input.messages[2]`.
fn find_nul(object: &Map<String, Value>) -> Option<String> {
    fn walk(value: &Value) -> Option<String> {
        match value {
            Value::String(s) if s.contains('\0') => Some(String::new()),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, v)| walk(v).map(|p| format!("[{i}]{p}"))),
            Value::Object(map) => in_object(map),
            _ => None,
        }
    }
    fn in_object(map: &Map<String, Value>) -> Option<String> {
        map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                return Some(format!(".{}", k.escape_debug()));
            }
            walk(v).map(|p| format!(".{k}{p}"))
        })
    }
    in_object(object)
}

#[cfg(test)]
mod tests {
    use super::gzip::compress as gzip;
    use super::*;
    use std::io::Write;

    fn gzip_base64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(gzip(text.as_bytes()))
    }

    /// The object, owned (the tests keep it past the text).
    fn expand_data(text: &str, limit: usize) -> Result<RawObject<'static>, Rejection> {
        let mut inflated = String::new();
        super::expand_data(text, limit, &mut inflated).map(RawObject::into_owned)
    }

    #[test]
    fn plain_keys_and_values_borrow_the_text_and_escaped_keys_are_unescaped() {
        let text = r#"{"input": {"a": 1}, "k\"ey": "v"}"#;
        let (object, nul) = parse_object(text, "data").unwrap();
        assert_eq!(nul, None);
        assert!(matches!(object["input"], Cow::Borrowed(_)));
        assert_eq!(object["input"].get(), r#"{"a": 1}"#);
        assert!(matches!(object.keys().next(), Some(Cow::Borrowed("input"))));
        let escaped = object.keys().nth(1).unwrap();
        assert!(matches!(escaped, Cow::Owned(_)));
        assert_eq!(escaped, "k\"ey");
    }

    #[test]
    fn the_raw_parse_suffices_for_plain_text_and_shallow_nesting() {
        assert!(raw_parse_suffices(
            r#"{"a": "x\u00e9y", "b": [1, {"c": "d"}]}"#
        ));
        // Brackets inside strings, past the limit in number: depth 1.
        let brackets = format!(r#"{{"a": "{}"}}"#, "[{".repeat(MAX_RAW_DEPTH));
        assert!(raw_parse_suffices(&brackets));
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(raw_parse_suffices(&nested(MAX_RAW_DEPTH - 1)));
    }

    #[test]
    fn refused_escapes_and_deep_nesting_take_the_tree_parse() {
        assert!(!raw_parse_suffices(r#"{"a": "x\u0000"}"#));
        assert!(!raw_parse_suffices(r#"{"a": "\ud83d"}"#));
        assert!(!raw_parse_suffices(r#"{"a": "\uDFFF"}"#));
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(!raw_parse_suffices(&nested(MAX_RAW_DEPTH)));
        // An escaped quote does not end the string whose brackets follow.
        let quoted = format!(r#"{{"a": "\"{}"}}"#, "[".repeat(MAX_RAW_DEPTH));
        assert!(raw_parse_suffices(&quoted));
    }

    #[test]
    fn an_escaped_backslash_before_u_is_a_false_alarm_the_tree_parse_settles() {
        let text = r#"{"a": "C:\\u0000dir"}"#;
        assert!(!raw_parse_suffices(text));
        let (object, nul) = parse_object(text, "data").unwrap();
        assert_eq!(object["a"].get(), r#""C:\\u0000dir""#);
        assert_eq!(nul, None);
    }

    #[test]
    fn plain_object_is_returned() {
        let map = expand_data(r#"{"name":"n","input":{"a":1}}"#, 1024).unwrap();
        assert_eq!(tree(&map["name"]), "n");
        assert_eq!(tree(&map["input"])["a"], 1);
    }

    #[test]
    fn compressed_data_is_expanded() {
        let inner = r#"{"name":"big","input":{"text":"xxxxxxxx"}}"#;
        let wire = format!(r#"{{"_compressed":true,"_data":"{}"}}"#, gzip_base64(inner));
        let map = expand_data(&wire, 1024).unwrap();
        assert_eq!(tree(&map["name"]), "big");
        assert!(!map.contains_key("_compressed"));
    }

    fn wire(compressed: &[u8]) -> String {
        format!(
            r#"{{"_compressed": true, "_data": "{}"}}"#,
            base64::engine::general_purpose::STANDARD.encode(compressed)
        )
    }

    fn document(len: usize) -> String {
        format!(r#"{{"input":"{}"}}"#, "a".repeat(len))
    }

    // Crafted payloads (issue 17): data that would inflate past its weight.

    #[test]
    fn a_second_gzip_member_is_refused() {
        // Its trailer is the last four bytes: an empty second member would
        // make the whole weigh as no expansion.
        let mut two = gzip(document(200_000).as_bytes());
        two.extend(gzip(b""));
        let err = expand_data(&wire(&two), 1 << 20).unwrap_err();
        assert_eq!(err.reason, Reason::Decompression, "{}", err.detail);
        assert!(err.detail.contains("member"), "{}", err.detail);
        // The other way round too: a small member, then a big one.
        let mut two = gzip(br#"{"a":1}"#);
        two.extend(gzip(document(200_000).as_bytes()));
        let err = expand_data(&wire(&two), 1 << 20).unwrap_err();
        assert_eq!(err.reason, Reason::Decompression, "{}", err.detail);
    }

    #[test]
    fn zlib_is_refused_as_not_what_the_sdk_writes() {
        let mut encoder =
            flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(br#"{"a":1}"#).unwrap();
        let err = expand_data(&wire(&encoder.finish().unwrap()), 1024).unwrap_err();
        assert_eq!(err.reason, Reason::Decompression, "{}", err.detail);
        assert!(err.detail.contains("zlib"), "{}", err.detail);
    }

    #[test]
    fn a_duplicate_data_key_is_refused() {
        // The weigher reads the first, a JSON parser keeps the last.
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let wire = format!(
            r#"{{"_compressed": true, "_data": "{}", "_data": "{}"}}"#,
            b64(&gzip(br#"{"a":1}"#)),
            b64(&gzip(document(200_000).as_bytes()))
        );
        let err = expand_data(&wire, 1 << 20).unwrap_err();
        assert_eq!(err.reason, Reason::Decompression, "{}", err.detail);
    }

    #[test]
    fn a_trailer_declaring_less_than_the_data_stops_inflation_at_the_declared_size() {
        let lying = |len: usize| {
            let mut bytes = gzip(document(len).as_bytes());
            let n = bytes.len();
            bytes[n - 4..].copy_from_slice(&1000u32.to_le_bytes());
            wire(&bytes)
        };
        // Inflation stops at the 1,000 bytes weighed, long before the limit.
        for len in [12_000, 2 << 20] {
            let err = expand_data(&lying(len), 1 << 20).unwrap_err();
            assert_eq!(err.reason, Reason::Decompression, "{len}: {}", err.detail);
            assert!(err.detail.contains("1000 bytes"), "{}", err.detail);
        }
    }

    #[test]
    fn data_after_byte_256_is_weighed_at_what_it_inflates_to() {
        let inner = document(200_000);
        let wire = format!(
            r#"{{"_compressed": true, "note": "{}", "_data": "{}"}}"#,
            "n".repeat(300),
            base64::engine::general_purpose::STANDARD.encode(gzip(inner.as_bytes()))
        );
        assert!(wire.find("_data").unwrap() > 256);
        assert_eq!(
            weight::expanded_size(wire.as_bytes(), 1 << 20),
            inner.len() as u64
        );
        let map = expand_data(&wire, 1 << 20).unwrap();
        assert_eq!(tree(&map["input"]).as_str().map(str::len), Some(200_000));
    }

    #[test]
    fn expansion_failures_are_rejections() {
        let cases = [
            (r#"{"_compressed":true}"#.to_owned(), Reason::Decompression),
            (
                r#"{"_compressed":true,"_data":"%%%"}"#.to_owned(),
                Reason::Decompression,
            ),
            (
                r#"{"_compressed":true,"_data":"aGVsbG8="}"#.to_owned(),
                Reason::Decompression,
            ),
            (
                format!(
                    r#"{{"_compressed":true,"_data":"{}"}}"#,
                    gzip_base64("[1,2]")
                ),
                Reason::DataNotObject,
            ),
            (
                format!(
                    r#"{{"_compressed":true,"_data":"{}"}}"#,
                    gzip_base64("{not json")
                ),
                Reason::InvalidData,
            ),
        ];
        for (wire, reason) in cases {
            assert_eq!(
                expand_data(&wire, 1024).unwrap_err().reason,
                reason,
                "{wire}"
            );
        }
    }

    #[test]
    fn decompression_bomb_stops_at_the_limit() {
        let bomb = format!(r#"{{"pad":"{}"}}"#, "a".repeat(10_000_000));
        let wire = format!(r#"{{"_compressed":true,"_data":"{}"}}"#, gzip_base64(&bomb));
        assert!(wire.len() < 100_000, "the bomb should compress well");
        let err = expand_data(&wire, 1024 * 1024).unwrap_err();
        assert_eq!(err.reason, Reason::TooLarge);
    }

    #[test]
    fn python_nan_is_repaired_and_noted() {
        let map = expand_data(r#"{"output":{"score":NaN}}"#, 1024).unwrap();
        assert_eq!(tree(&map["output"])["score"], Value::Null);
        assert_eq!(
            tree(&map[REPAIRS_KEY])[0],
            super::super::lenient::NON_FINITE
        );
    }

    #[test]
    fn nul_anywhere_is_refused_with_its_path() {
        let err = expand_data(r#"{"input":{"messages":["ok","bad\u0000"]}}"#, 1024).unwrap_err();
        assert_eq!(err.reason, Reason::NulCharacter);
        assert!(
            err.detail.contains("data.input.messages[1]"),
            "{}",
            err.detail
        );
        let key = expand_data(r#"{"k\u0000":1}"#, 1024).unwrap_err();
        assert_eq!(key.reason, Reason::NulCharacter);
    }

    #[test]
    fn non_objects_and_bad_json_are_told_apart() {
        assert_eq!(
            expand_data("[1]", 10).unwrap_err().reason,
            Reason::DataNotObject
        );
        assert_eq!(
            expand_data("42", 10).unwrap_err().reason,
            Reason::DataNotObject
        );
        assert_eq!(
            expand_data("{", 10).unwrap_err().reason,
            Reason::InvalidData
        );
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let err = expand_data(&format!(r#"{{"a":{deep}}}"#), 1 << 20).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidData);
        assert!(err.detail.contains("recursion limit"), "{}", err.detail);
    }
}
