//! What an entry's `data` weighs once expanded, read from its gzip trailer
//! without inflating it: the Rust twin of `weighed_read.lua`'s weighing.

use std::ops::Range;
use std::sync::LazyLock;

use memchr::memmem;

/// What the weigher (`expanded_size` in weighed_read.lua) reads of a `data`
/// field: the `_data` text it found and what that text declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeighedData {
    /// Where the `_data` text is in the field, between its quotes.
    pub text: Range<usize>,
    /// What gzip's trailer declares (ISIZE, modulo 2^32) when the text is
    /// weighed as gzip; `None`: weighed as no expansion (not gzip, or not
    /// readable), which the parser must then refuse to inflate.
    pub declared: Option<u64>,
}

/// Lua's `%s`: isspace in the C locale.
fn is_lua_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Where `"_data"` next occurs at or after `from`. A vectorised search:
/// every new entry's `data` is scanned once, on the consumers' thread, and
/// most hold no `_data` at all (6.8% of a seed-format drain's service CPU
/// with a byte-window search).
fn find_key_from(haystack: &[u8], from: usize) -> Option<usize> {
    static KEY_FINDER: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(KEY));
    KEY_FINDER.find(haystack.get(from..)?).map(|i| from + i)
}

const KEY: &[u8] = b"\"_data\"";

fn base64_value(c: u8) -> Option<u32> {
    Some(u32::from(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' | b'-' => 62,
        b'/' | b'_' => 63,
        _ => return None,
    }))
}

/// The size gzip's trailer declares, from the last eight base64 characters
/// of `text`, when `text` starts as gzip does (`H4sI`: 1f 8b 08).
fn gzip_declared(text: &[u8]) -> Option<u64> {
    if !text.starts_with(b"H4sI") {
        return None;
    }
    let len = text.len();
    if len < 8 || len % 4 != 0 {
        return None;
    }
    let mut bytes = Vec::with_capacity(6);
    for quad in 0..2 {
        let (mut n, mut pad) = (0u32, 0);
        for i in 0..4 {
            let c = text[len - 8 + quad * 4 + i];
            let v = if c == b'=' {
                pad += 1;
                0
            } else {
                base64_value(c)?
            };
            n = n * 64 + v;
        }
        bytes.push((n >> 16) as u8);
        if pad < 2 {
            bytes.push((n >> 8) as u8);
        }
        if pad < 1 {
            bytes.push(n as u8);
        }
    }
    let k = bytes.len();
    if k < 4 {
        return None;
    }
    let isize = u32::from_le_bytes([bytes[k - 4], bytes[k - 3], bytes[k - 2], bytes[k - 1]]);
    Some(u64::from(isize))
}

/// The `_data` text the weigher reads in `data`: after the first `"_data"`
/// followed by `:` and a string (spaces allowed around the colon), up to the
/// next quote. `None` when there is none (weighed as no expansion).
pub fn find_weighed_data(data: &[u8]) -> Option<WeighedData> {
    let skip_spaces = |mut i: usize| {
        while data.get(i).copied().is_some_and(is_lua_space) {
            i += 1;
        }
        i
    };
    let mut from = 0;
    let open = loop {
        let at = find_key_from(data, from)?;
        let colon = skip_spaces(at + KEY.len());
        if data.get(colon) == Some(&b':') {
            let quote = skip_spaces(colon + 1);
            if data.get(quote) == Some(&b'"') {
                break quote;
            }
        }
        from = at + 1;
    };
    let close = open + 1 + memchr::memchr(b'"', &data[open + 1..])?;
    let text = open + 1..close;
    let declared = gzip_declared(&data[text.clone()]);
    Some(WeighedData { text, declared })
}

/// The expansion an entry's `data` field is weighed with (the script's
/// `expanded_size`): what its gzip trailer declares, at most
/// `max_expanded`; 0 for anything the parser will not inflate.
pub fn expanded_size(data: &[u8], max_expanded: u64) -> u64 {
    find_weighed_data(data)
        .and_then(|weighed| weighed.declared)
        .map_or(0, |declared| declared.min(max_expanded))
}
