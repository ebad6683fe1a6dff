//! The bytes the Python SDK puts on the wire: `json.dumps` formatting
//! (`", "` and `": "` separators, non-ASCII escaped) and its `maybe_compress`
//! (gzip level 6 + base64 for data of 1 KB or more, kept only when smaller).

use std::io::{self, Write};

use base64::Engine;
use serde::Serialize;
use serde_json::ser::Formatter;

/// What `swisper_studio_sdk.tracing.compression.COMPRESSION_THRESHOLD` is.
pub const SDK_COMPRESSION_THRESHOLD: usize = 1024;

/// When `data` is sent as `{"_compressed": true, "_data": ...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Like the SDK: data of 1 KB or more, when compressing makes it smaller.
    Sdk,
    /// Every data field, whatever its size.
    Always,
    /// Never: plain JSON only.
    Never,
}

/// `json.dumps(value)` with Python's default separators and ensure_ascii.
pub fn dumps<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value
        .serialize(&mut ser)
        .expect("serializing a JSON value into memory cannot fail");
    // The formatter writes ASCII only.
    String::from_utf8(out).expect("ASCII is UTF-8")
}

/// The `data` field of one entry as the SDK would send it.
pub fn wire_data(json: String, compression: Compression) -> (String, bool) {
    let compress = match compression {
        Compression::Never => false,
        Compression::Always => true,
        Compression::Sdk => json.len() >= SDK_COMPRESSION_THRESHOLD,
    };
    if !compress {
        return (json, false);
    }
    let compressed = gzip(json.as_bytes());
    let encoded = base64::engine::general_purpose::STANDARD.encode(compressed);
    if compression == Compression::Sdk && encoded.len() >= json.len() {
        return (json, false);
    }
    (
        format!(r#"{{"_compressed": true, "_data": "{encoded}"}}"#),
        true,
    )
}

/// gzip (as Python's `gzip.compress(data, 6)`) with one deflate state per
/// thread: a fresh encoder allocates ~300 KB, which dominated generation.
fn gzip(data: &[u8]) -> Vec<u8> {
    thread_local! {
        static DEFLATE: std::cell::RefCell<flate2::Compress> =
            std::cell::RefCell::new(flate2::Compress::new(flate2::Compression::new(6), false));
    }
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    DEFLATE.with(|cell| {
        let mut deflate = cell.borrow_mut();
        deflate.reset();
        loop {
            let consumed = deflate.total_in() as usize;
            out.reserve(1024);
            let status = deflate
                .compress_vec(&data[consumed..], &mut out, flate2::FlushCompress::Finish)
                .expect("deflate into memory cannot fail");
            if status == flate2::Status::StreamEnd {
                break;
            }
        }
    });
    let mut crc = flate2::Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if fragment.is_ascii() {
            return writer.write_all(fragment.as_bytes());
        }
        let mut units = [0u16; 2];
        for c in fragment.chars() {
            if c.is_ascii() {
                writer.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Read;

    #[test]
    fn dumps_matches_python() {
        let value = json!({"a": [1, "zürich", {"b": null}], "c": true, "e": "😀"});
        assert_eq!(
            dumps(&value),
            r#"{"a": [1, "z\u00fcrich", {"b": null}], "c": true, "e": "\ud83d\ude00"}"#
        );
    }

    #[test]
    fn sdk_compresses_only_large_data() {
        let small = dumps(&json!({"x": "y"}));
        assert_eq!(wire_data(small.clone(), Compression::Sdk), (small, false));
        let large = dumps(&json!({"text": "lorem ipsum ".repeat(200)}));
        let (wire, compressed) = wire_data(large.clone(), Compression::Sdk);
        assert!(compressed && wire.len() < large.len());
        let envelope: serde_json::Value = serde_json::from_str(&wire).unwrap();
        assert_eq!(envelope["_compressed"], true);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(envelope["_data"].as_str().unwrap())
            .unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, large);
    }
}
