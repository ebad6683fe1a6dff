//! RESP2 replies, in two passes over the bytes received so far: [`Scan`]
//! finds where a reply ends, resuming where it stopped as more bytes arrive
//! (a 3.5 MB XRANGE reply comes in dozens of reads and is walked once), and
//! [`parse`] then builds the complete reply's `redis::Value` in one pass.
//! redis-rs' own parser (combine, with partial state) re-enters the nested
//! arrays at every read and was a fifth of the service's CPU in a drain.
//!
//! Error replies are handed to redis-rs' parser, so that their kinds
//! (NOSCRIPT, NOGROUP, WRONGPASS...) are exactly the ones redis-rs gives.

use bytes::Bytes;
use redis::{ServerError, Value};

/// Arrays nested deeper than this are refused: the service's replies nest
/// three levels (a script's reply of id pairs; XRANGE's entries).
const MAX_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("unexpected reply type byte {0:#04x}")]
    Type(u8),
    #[error("bad length or integer in a reply line: {0:?}")]
    Number(String),
    #[error("reply nested deeper than {MAX_DEPTH} arrays")]
    TooDeep,
    #[error("bulk string not followed by CRLF")]
    Terminator,
    #[error("unreadable error reply {0:?}")]
    ErrorLine(String),
    #[error("XRANGE reply of an unexpected shape: {0}")]
    Shape(&'static str),
}

/// Where the scan of a partly received reply stands.
#[derive(Debug, Default)]
pub struct Scan {
    /// The offset of the next element's first byte.
    at: usize,
    /// Elements still expected at each open level (the reply itself is the
    /// first); empty before the first call.
    open: Vec<i64>,
}

impl Scan {
    /// Advances over `bytes` (the reply's bytes so far, from its first):
    /// the reply's length once it is complete, `None` while more must come.
    pub fn advance(&mut self, bytes: &[u8]) -> Result<Option<usize>, ProtocolError> {
        if self.open.is_empty() && self.at == 0 {
            self.open.push(1);
        }
        loop {
            while self.open.last() == Some(&0) {
                self.open.pop();
            }
            if self.open.is_empty() {
                return Ok(Some(self.at));
            }
            let Some((kind, line, after)) = line_at(bytes, self.at) else {
                return Ok(None);
            };
            let children = match kind {
                b'+' | b'-' | b':' => 0,
                b'$' => {
                    let len = number(line)?;
                    if len >= 0 {
                        let end = after + len as usize + 2;
                        if bytes.len() < end {
                            return Ok(None);
                        }
                        self.at = end;
                    } else {
                        self.at = after;
                    }
                    self.count_one();
                    continue;
                }
                b'*' => number(line)?.max(0),
                other => return Err(ProtocolError::Type(other)),
            };
            self.at = after;
            self.count_one();
            if children > 0 {
                if self.open.len() >= MAX_DEPTH {
                    return Err(ProtocolError::TooDeep);
                }
                self.open.push(children);
            }
        }
    }

    fn count_one(&mut self) {
        if let Some(left) = self.open.last_mut() {
            *left -= 1;
        }
    }
}

/// The element at `at`: its type byte, the rest of its line and the offset
/// after the line's CRLF; `None` when the line is not complete yet. (A
/// line holds no CR or LF of its own: lengths, integers, status and error
/// text.)
pub(super) fn line_at(bytes: &[u8], at: usize) -> Option<(u8, &[u8], usize)> {
    let kind = *bytes.get(at)?;
    let rest = &bytes[at + 1..];
    let lf = memchr::memchr(b'\n', rest)?;
    let line = rest[..lf].strip_suffix(b"\r").unwrap_or(&rest[..lf]);
    Some((kind, line, at + 1 + lf + 1))
}

/// A length or an integer: ASCII digits, perhaps after a minus sign.
pub(super) fn number(line: &[u8]) -> Result<i64, ProtocolError> {
    let bad = || ProtocolError::Number(String::from_utf8_lossy(line).into_owned());
    let (negative, digits) = match line.split_first() {
        Some((b'-', digits)) => (true, digits),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 19 {
        return Err(bad());
    }
    // 19 digits fit an i128 whatever they are; i64's range is checked once.
    let mut value: i128 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return Err(bad());
        }
        value = value * 10 + i128::from(digit - b'0');
    }
    i64::try_from(if negative { -value } else { value }).map_err(|_| bad())
}

/// Parses one complete reply (as [`Scan`] delimited it). A server error is
/// `Value::ServerError`, as redis-rs gives it.
pub fn parse(bytes: &[u8]) -> Result<Value, ProtocolError> {
    let mut at = 0;
    element(bytes, &mut at, 0)
}

fn element(bytes: &[u8], at: &mut usize, depth: usize) -> Result<Value, ProtocolError> {
    let (kind, line, after) = line_at(bytes, *at).ok_or(ProtocolError::Terminator)?;
    let start = *at;
    *at = after;
    Ok(match kind {
        b'+' if line == b"OK" => Value::Okay,
        b'+' => Value::SimpleString(String::from_utf8_lossy(line).into_owned()),
        b':' => Value::Int(number(line)?),
        b'-' => server_error(&bytes[start..after])?,
        b'$' => match number(line)? {
            len if len < 0 => Value::Nil,
            len => {
                let end = after + len as usize;
                if bytes.get(end..end + 2) != Some(b"\r\n") {
                    return Err(ProtocolError::Terminator);
                }
                *at = end + 2;
                Value::BulkString(bytes[after..end].to_vec())
            }
        },
        b'*' => match number(line)? {
            len if len < 0 => Value::Nil,
            _ if depth >= MAX_DEPTH => return Err(ProtocolError::TooDeep),
            len => {
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(element(bytes, at, depth + 1)?);
                }
                Value::Array(items)
            }
        },
        other => return Err(ProtocolError::Type(other)),
    })
}

/// One entry of an XRANGE reply: its id's text and its field pairs, each a
/// slice of the reply.
pub type RangeEntry = (Bytes, Vec<(Bytes, Bytes)>);

/// A complete XRANGE reply read straight into entries, with no `Value`
/// tree in between and no copy: every id, name and value is a slice of
/// `reply`, which lives as long as the last of them; a server error as
/// redis-rs gives it.
pub fn range(reply: &Bytes) -> Result<Result<Vec<RangeEntry>, ServerError>, ProtocolError> {
    let bytes = &reply[..];
    let (kind, line, after) = line_at(bytes, 0).ok_or(ProtocolError::Terminator)?;
    match kind {
        b'-' => {
            return match server_error(&bytes[..after])? {
                Value::ServerError(error) => Ok(Err(error)),
                _ => Err(ProtocolError::ErrorLine(
                    String::from_utf8_lossy(line).into_owned(),
                )),
            }
        }
        b'*' => {}
        _ => return Err(ProtocolError::Shape("not an array")),
    }
    let count = usize::try_from(number(line)?).unwrap_or(0);
    let mut at = after;
    let slice = |at: &mut usize| bulk(bytes, at).map(|range| reply.slice(range));
    // Each entry takes more than 4 bytes: a count cannot reserve more.
    let mut entries = Vec::with_capacity(count.min(bytes.len() / 4));
    for _ in 0..count {
        if array_len(bytes, &mut at)? != Some(2) {
            return Err(ProtocolError::Shape("an entry is not [id, fields]"));
        }
        let id = slice(&mut at)?;
        let fields = match array_len(bytes, &mut at)? {
            None => Vec::new(),
            Some(n) if n % 2 == 1 => {
                return Err(ProtocolError::Shape("odd number of field values"))
            }
            Some(n) => {
                let mut fields = Vec::with_capacity((n / 2).min(bytes.len() / 8));
                for _ in 0..n / 2 {
                    let name = slice(&mut at)?;
                    fields.push((name, slice(&mut at)?));
                }
                fields
            }
        };
        entries.push((id, fields));
    }
    Ok(Ok(entries))
}

/// An array's length at `at` (`None` for a nil array), moving past its line.
fn array_len(bytes: &[u8], at: &mut usize) -> Result<Option<usize>, ProtocolError> {
    match line_at(bytes, *at) {
        Some((b'*', line, after)) => {
            *at = after;
            Ok(usize::try_from(number(line)?).ok())
        }
        _ => Err(ProtocolError::Shape("array expected")),
    }
}

/// Where a bulk string's bytes at `at` are, moving past them.
fn bulk(bytes: &[u8], at: &mut usize) -> Result<std::ops::Range<usize>, ProtocolError> {
    let Some((b'$', line, after)) = line_at(bytes, *at) else {
        return Err(ProtocolError::Shape("bulk string expected"));
    };
    let len = usize::try_from(number(line)?)
        .map_err(|_| ProtocolError::Shape("nil where a string was expected"))?;
    let end = after + len;
    if bytes.get(end..end + 2) != Some(b"\r\n") {
        return Err(ProtocolError::Terminator);
    }
    *at = end + 2;
    Ok(after..end)
}

/// An error line (with its CRLF) as redis-rs' parser reads it: the same
/// error kinds and codes, which callers match on.
pub(super) fn server_error(line: &[u8]) -> Result<Value, ProtocolError> {
    redis::parse_redis_value(line)
        .map_err(|_| ProtocolError::ErrorLine(String::from_utf8_lossy(line).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reply fed to the scan in pieces of `step` bytes: where it ends.
    fn scan_in_steps(bytes: &[u8], step: usize) -> Result<Option<usize>, ProtocolError> {
        let mut scan = Scan::default();
        let mut seen = 0;
        loop {
            seen = (seen + step).min(bytes.len());
            let found = scan.advance(&bytes[..seen])?;
            if found.is_some() || seen == bytes.len() {
                return Ok(found);
            }
        }
    }

    #[test]
    fn a_reply_split_anywhere_ends_where_it_ends() {
        let reply = b"*2\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\na\r\n$0\r\n\r\n$-1\r\n";
        for step in 1..=reply.len() {
            assert_eq!(
                scan_in_steps(reply, step),
                Ok(Some(reply.len())),
                "step {step}"
            );
        }
        let mut followed = reply.to_vec();
        followed.extend_from_slice(b"+OK\r\n");
        assert_eq!(scan_in_steps(&followed, 3), Ok(Some(reply.len())));
    }

    #[test]
    fn an_incomplete_reply_waits() {
        for cut in [1, 4, 10, 20] {
            let reply = b"*1\r\n$10\r\n0123456789\r\n";
            assert_eq!(scan_in_steps(&reply[..cut], 1), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn unknown_types_and_bad_lengths_are_protocol_errors() {
        assert_eq!(
            Scan::default().advance(b"%1\r\n"),
            Err(ProtocolError::Type(b'%'))
        );
        assert!(matches!(
            Scan::default().advance(b"$x\r\n"),
            Err(ProtocolError::Number(_))
        ));
        assert_eq!(parse(b"$2\r\nabc\r\n"), Err(ProtocolError::Terminator));
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1) + ":1\r\n";
        assert_eq!(
            Scan::default().advance(deep.as_bytes()),
            Err(ProtocolError::TooDeep)
        );
    }

    #[test]
    fn integers_span_i64() {
        for n in [i64::MIN, -1, 0, 7, i64::MAX] {
            assert_eq!(parse(format!(":{n}\r\n").as_bytes()), Ok(Value::Int(n)));
        }
        assert!(parse(b":9223372036854775808\r\n").is_err());
        assert!(parse(b":-\r\n").is_err());
        assert!(parse(b":1x\r\n").is_err());
    }

    #[test]
    fn errors_keep_redis_rs_kinds() {
        let Value::ServerError(error) = parse(b"-NOSCRIPT No matching script\r\n").unwrap() else {
            panic!("not an error");
        };
        assert_eq!(error.kind(), Some(redis::ServerErrorKind::NoScript));
        let Value::ServerError(error) = parse(b"-NOGROUP no such key\r\n").unwrap() else {
            panic!("not an error");
        };
        assert_eq!(error.code(), "NOGROUP");
    }

    /// RESP2 values as the server writes them.
    fn resp2() -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
            "[a-zA-Z0-9 ]{0,12}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
            "(ERR|NOGROUP|BUSYGROUP|NOSCRIPT|WRONGPASS) [a-z ]{0,12}"
                .prop_map(|s| format!("-{s}\r\n").into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| {
                let mut out = format!("${}\r\n", b.len()).into_bytes();
                out.extend_from_slice(&b);
                out.extend_from_slice(b"\r\n");
                out
            }),
            Just(b"$-1\r\n".to_vec()),
            Just(b"*-1\r\n".to_vec()),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            proptest::collection::vec(inner, 0..8).prop_map(|items| {
                let mut out = format!("*{}\r\n", items.len()).into_bytes();
                for item in items {
                    out.extend_from_slice(&item);
                }
                out
            })
        })
    }

    /// XRANGE replies as Redis writes them.
    fn xrange_reply() -> impl Strategy<Value = Vec<u8>> {
        let bulk = || proptest::collection::vec(any::<u8>(), 0..24);
        let entry = (bulk(), proptest::collection::vec((bulk(), bulk()), 0..5));
        proptest::collection::vec(entry, 0..6).prop_map(|entries| {
            let mut out = format!("*{}\r\n", entries.len()).into_bytes();
            let put = |out: &mut Vec<u8>, b: &[u8]| {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            };
            for (id, fields) in entries {
                out.extend_from_slice(b"*2\r\n");
                put(&mut out, &id);
                out.extend_from_slice(format!("*{}\r\n", fields.len() * 2).as_bytes());
                for (name, value) in fields {
                    put(&mut out, &name);
                    put(&mut out, &value);
                }
            }
            out
        })
    }

    /// The entries of a `Value` XRANGE reply, as [`range`] gives them.
    fn entries_of(value: Value) -> Vec<RangeEntry> {
        let bytes = |v: Value| match v {
            Value::BulkString(b) => Bytes::from(b),
            other => panic!("not a bulk string: {other:?}"),
        };
        let Value::Array(items) = value else {
            panic!("not an array")
        };
        items
            .into_iter()
            .map(|item| {
                let Value::Array(mut parts) = item else {
                    panic!("not an entry")
                };
                let Value::Array(flat) = parts.pop().unwrap() else {
                    panic!("no fields")
                };
                let mut flat = flat.into_iter();
                let mut fields = Vec::new();
                while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                    fields.push((bytes(name), bytes(value)));
                }
                (bytes(parts.pop().unwrap()), fields)
            })
            .collect()
    }

    #[test]
    fn range_refuses_other_shapes_and_passes_errors_on() {
        let range = |reply: &'static [u8]| range(&Bytes::from_static(reply));
        assert_eq!(range(b"*0\r\n"), Ok(Ok(Vec::new())));
        assert!(matches!(
            range(b"-WRONGTYPE Operation against a key\r\n"),
            Ok(Err(_))
        ));
        for bad in [
            &b":1\r\n"[..],
            b"*1\r\n$1\r\na\r\n",
            b"*1\r\n*2\r\n$1\r\na\r\n*1\r\n$1\r\nb\r\n",
            b"*1\r\n*2\r\n$-1\r\n*0\r\n",
        ] {
            assert!(range(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            range(b"*1\r\n*2\r\n$3\r\n1-1\r\n*-1\r\n"),
            Ok(Ok(vec![(Bytes::from_static(b"1-1"), Vec::new())]))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// An XRANGE reply read straight into entries holds what its
        /// `Value` holds.
        #[test]
        fn range_reads_what_parse_reads(reply in xrange_reply()) {
            prop_assert_eq!(scan_in_steps(&reply, 7), Ok(Some(reply.len())));
            let direct = range(&Bytes::from(reply.clone())).unwrap().unwrap();
            prop_assert_eq!(direct, entries_of(parse(&reply).unwrap()));
        }

        /// Whatever the reads' sizes, the scan finds the reply's end, and the
        /// parse gives what redis-rs' parser gives.
        #[test]
        fn parses_as_redis_rs_does(reply in resp2(), step in 1usize..64) {
            prop_assert_eq!(scan_in_steps(&reply, step), Ok(Some(reply.len())));
            let ours = parse(&reply).unwrap();
            let theirs = redis::parse_redis_value(&reply).unwrap();
            prop_assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
        }
    }
}
