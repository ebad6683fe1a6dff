//! Repairs for what Python's `json.dumps` writes and strict JSON refuses:
//! `NaN`, `Infinity` and `-Infinity` (become `null`, as in JavaScript's
//! JSON.stringify) and lone UTF-16 surrogate escapes (become U+FFFD). Only
//! called after a strict parse failed, so well-formed data pays nothing.

/// What a repair changed, recorded in the row's metadata.
pub const NON_FINITE: &str = "non-finite numbers replaced by null";
pub const LONE_SURROGATE: &str = "lone surrogate escapes replaced by U+FFFD";

/// The repaired text and what was repaired, or None when nothing needed it.
pub fn repair(text: &str) -> Option<(String, Vec<&'static str>)> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut repairs = Vec::new();
    let mut note = |repair: &'static str| {
        if !repairs.contains(&repair) {
            repairs.push(repair);
        }
    };
    let mut in_string = false;
    let mut copied = 0; // bytes of `text` already in `out`
    let mut i = 0;
    while i < bytes.len() {
        // Bytes, not &str: `i` may sit inside a multi-byte character; we
        // only ever cut `text` at ASCII tokens, which are char boundaries.
        let rest = &bytes[i..];
        if in_string {
            match bytes[i] {
                b'"' => {
                    in_string = false;
                    i += 1;
                }
                b'\\' if rest.starts_with(b"\\u") => {
                    let unit = hex_unit(rest, 2);
                    let paired =
                        |unit: Option<u16>| unit.is_some_and(|u| (0xDC00..=0xDFFF).contains(&u));
                    match unit {
                        Some(0xD800..=0xDBFF)
                            if rest[6..].starts_with(b"\\u") && paired(hex_unit(rest, 8)) =>
                        {
                            i += 12
                        }
                        Some(0xD800..=0xDFFF) => {
                            out.push_str(&text[copied..i]);
                            out.push_str("\\ufffd");
                            note(LONE_SURROGATE);
                            i += 6;
                            copied = i;
                        }
                        _ => i += 2,
                    }
                }
                b'\\' => i += 2,
                _ => i += 1,
            }
            continue;
        }
        let token = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t.as_bytes()));
        match (bytes[i], token) {
            (b'"', _) => {
                in_string = true;
                i += 1;
            }
            (_, Some(token)) => {
                out.push_str(&text[copied..i]);
                out.push_str("null");
                note(NON_FINITE);
                i += token.len();
                copied = i;
            }
            _ => i += 1,
        }
    }
    if repairs.is_empty() {
        return None;
    }
    out.push_str(&text[copied.min(text.len())..]);
    Some((out, repairs))
}

/// The UTF-16 code unit of the four hex digits `offset` bytes into `bytes`.
fn hex_unit(bytes: &[u8], offset: usize) -> Option<u16> {
    let hex = std::str::from_utf8(bytes.get(offset..offset + 4)?).ok()?;
    u16::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_numbers_become_null_outside_strings_only() {
        let (fixed, repairs) =
            repair(r#"{"a":NaN,"b":[Infinity,-Infinity],"c":"NaN Infinity"}"#).unwrap();
        assert_eq!(fixed, r#"{"a":null,"b":[null,null],"c":"NaN Infinity"}"#);
        assert_eq!(repairs, [NON_FINITE]);
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let (fixed, repairs) =
            repair(r#"{"a":"x\ud800y","b":"\udc00","ok":"\ud83d\ude00"}"#).unwrap();
        assert_eq!(
            fixed,
            r#"{"a":"x\ufffdy","b":"\ufffd","ok":"\ud83d\ude00"}"#
        );
        assert_eq!(repairs, [LONE_SURROGATE]);
        let value: serde_json::Value = serde_json::from_str(&fixed).unwrap();
        assert_eq!(value["ok"], "\u{1F600}");
    }

    #[test]
    fn escaped_quotes_and_backslashes_keep_string_state() {
        let text = r#"{"a":"say \"NaN\" \\","b":NaN}"#;
        let (fixed, _) = repair(text).unwrap();
        assert_eq!(fixed, r#"{"a":"say \"NaN\" \\","b":null}"#);
    }

    #[test]
    fn multi_byte_text_around_escapes_is_safe() {
        assert!(repair("\"\\\u{11d95}\" NaN").is_some());
        assert!(repair("\u{11d95}\\u\u{e9}").is_none());
    }

    #[test]
    fn valid_json_needs_no_repair() {
        assert!(repair(r#"{"a":1.5,"b":"Infinity"}"#).is_none());
    }
}
