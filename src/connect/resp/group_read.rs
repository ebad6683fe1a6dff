//! An XREADGROUP reply read as it streams in, within a weight limit. A
//! plain XREADGROUP costs Redis a fraction of the weighing script, but its
//! COUNT bounds entries, not bytes: so each entry is weighed here as it
//! arrives (its size is in the bulk headers before its bytes), and the
//! entries that fit are kept, a prefix of the reply. From the first entry
//! that does not fit on, entries are *delivered but not loaded*: their bytes
//! are dropped as they arrive, never held, and their ids are returned for a
//! weighed reload (src/weighed_read.rs). So the bytes held never exceed
//! what the limit allows, plus one read's worth ([`READ_SIZE`]).

use std::ops::Range;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use redis::{ServerError, Value};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::reply::{line_at, number, server_error, ProtocolError};
use super::READ_SIZE;
use crate::event::weight::expanded_size;
use crate::event::StreamId;
use crate::redis_stream::{GroupRead, Limit};

/// What reading a reply can fail with besides the server's error reply.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Reads one XREADGROUP reply (for one stream) from `io`, with `buf` holding
/// what was received and not yet parsed. `Ok(None)`: nothing new (a nil
/// reply). `expected_bytes` (at most what the limit allows) is reserved up
/// front, so that a reply of about that size is not copied as it grows.
pub async fn read_group_reply(
    io: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    limit: Limit,
    expected_bytes: usize,
) -> Result<Result<Option<GroupRead>, ServerError>, ReadError> {
    let mut reader = Reader {
        io,
        buf,
        at: 0,
        keeping: true,
    };
    let allowed = usize::try_from(limit.weight / limit.weights.raw_factor.max(1)).unwrap_or(0);
    reader.buf.reserve(expected_bytes.min(allowed) + READ_SIZE);
    let first = reader.first_line().await?;
    if let First::Error(_) | First::Array(None) = first {
        // The whole reply is one line: the next reply starts after it.
        reader.buf.advance(reader.at);
    }
    match first {
        First::Error(error) => return Ok(Err(error)),
        First::Array(None) => return Ok(Ok(None)),
        First::Array(Some(1)) => {}
        First::Array(Some(_)) => {
            return Err(ProtocolError::Shape("XREADGROUP: not one stream").into())
        }
    }
    if reader.array().await? != Some(2) {
        return Err(ProtocolError::Shape("XREADGROUP: not [stream, entries]").into());
    }
    let stream = reader.bulk_len().await?;
    reader.need(stream).await?;
    reader.at += stream;
    reader.terminator().await?;
    let count = reader.array().await?.unwrap_or(0);

    let mut entries = Entries::default();
    for _ in 0..count {
        entries.read_one(&mut reader, &limit).await?;
    }
    Ok(Ok(Some(entries.finish(&mut reader))))
}

/// The entries of a reply as they are read.
#[derive(Default)]
struct Entries {
    read: GroupRead,
    /// Where each kept entry's fields are in the reply, sliced once it is
    /// frozen.
    kept: Vec<Vec<FieldRanges>>,
    /// The kept prefix of the reply, once an entry did not fit.
    frozen: Option<Bytes>,
}

impl Entries {
    /// Reads the next entry: kept while keeping and it fits, else its bytes
    /// dropped as they arrive and its id noted as unloaded.
    async fn read_one<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut Reader<'_, R>,
        limit: &Limit,
    ) -> Result<(), ReadError> {
        let entry_start = reader.at;
        if reader.array().await? != Some(2) {
            return Err(ProtocolError::Shape("an entry is not [id, fields]").into());
        }
        let id_len = reader.bulk_len().await?;
        reader.need(id_len + 2).await?;
        let id = parse_id(&reader.buf[reader.at..reader.at + id_len])?;
        reader.at += id_len + 2;
        reader.consumed();
        let values = match reader.array().await? {
            None => 0,
            Some(n) if n % 2 == 1 => {
                return Err(ProtocolError::Shape("odd number of field values").into())
            }
            Some(n) => n,
        };
        let mut raw = 0u64;
        let mut fields = Vec::new();
        for _ in 0..values {
            let len = reader.bulk_len().await?;
            raw += len as u64;
            if reader.keeping && !limit.admits(&self.read, limit.weights.weight(raw, 0)) {
                // Not even its raw bytes fit: drop what was received of it.
                self.frozen = Some(reader.stop_keeping(entry_start));
            }
            if reader.keeping {
                reader.need(len + 2).await?;
                fields.push(reader.at..reader.at + len);
                reader.at += len;
                reader.terminator().await?;
            } else {
                reader.skip(len).await?;
            }
        }
        if !reader.keeping {
            // Its expansion unread: what its raw bytes alone weigh.
            self.unloaded(id, limit.weights.weight(raw, 0));
            return Ok(());
        }
        let weight = limit
            .weights
            .weight(raw, expansion(&reader.buf[..], &fields, limit));
        if !limit.admits(&self.read, weight) {
            self.frozen = Some(reader.stop_keeping(entry_start));
            self.unloaded(id, weight);
            return Ok(());
        }
        self.read.weight += weight;
        self.read.entries.push((id, Vec::new(), weight));
        let pairs = fields.chunks_exact(2);
        self.kept.push(
            pairs
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect(),
        );
        Ok(())
    }

    fn unloaded(&mut self, id: StreamId, weight: u64) {
        if self.read.unloaded.is_empty() {
            self.read.first_unloaded_weight = weight;
        }
        self.read.unloaded.push(id);
    }

    /// The entries read, their fields slices of the kept prefix.
    fn finish<R>(self, reader: &mut Reader<'_, R>) -> GroupRead {
        let Entries {
            mut read,
            kept,
            frozen,
        } = self;
        let frozen = frozen.unwrap_or_else(|| freeze_reply(reader.buf, reader.at));
        for (ranges, (_, fields, _)) in kept.into_iter().zip(read.entries.iter_mut()) {
            *fields = ranges
                .into_iter()
                .map(|(name, value)| (frozen.slice(name), frozen.slice(value)))
                .collect();
        }
        read
    }
}

/// What the entry's compressed `data` expands to, weighed as the script
/// weighs it (the last field named `data`).
fn expansion(buffered: &[u8], fields: &[Range<usize>], limit: &Limit) -> u64 {
    fields
        .chunks(2)
        .rev()
        .find(|pair| &buffered[pair[0].clone()] == b"data")
        .map_or(0, |pair| {
            expanded_size(&buffered[pair[1].clone()], limit.weights.max_expanded_bytes)
        })
}

/// The reply's bytes so far. While keeping, `buf` holds the reply from its
/// first byte and `at` is where parsing stands; once it stops keeping, each
/// element is dropped from `buf` as soon as it is parsed.
struct Reader<'a, R> {
    io: &'a mut R,
    buf: &'a mut BytesMut,
    at: usize,
    keeping: bool,
}

impl<R: AsyncRead + Unpin> Reader<'_, R> {
    /// Receives at most [`READ_SIZE`] more bytes.
    async fn fill(&mut self) -> Result<(), ReadError> {
        self.buf.reserve(READ_SIZE);
        let limited = &mut (&mut *self.buf).limit(READ_SIZE);
        if self.io.read_buf(limited).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "redis closed the connection",
            )
            .into());
        }
        Ok(())
    }

    /// Waits until `n` bytes from `at` are received.
    async fn need(&mut self, n: usize) -> Result<(), ReadError> {
        while self.buf.len() < self.at + n {
            self.fill().await?;
        }
        Ok(())
    }

    /// The reply's first line: an array's length, or the server's error.
    async fn first_line(&mut self) -> Result<First, ReadError> {
        loop {
            if let Some((kind, line, after)) = line_at(self.buf, self.at) {
                let first = match kind {
                    b'*' => First::Array(usize::try_from(number(line)?).ok()),
                    b'-' => match server_error(&self.buf[self.at..after])? {
                        Value::ServerError(error) => First::Error(error),
                        _ => return Err(ProtocolError::Shape("an unreadable error").into()),
                    },
                    _ => return Err(ProtocolError::Shape("XREADGROUP: not an array").into()),
                };
                self.at = after;
                return Ok(first);
            }
            self.fill().await?;
        }
    }

    /// The next line, of type `kind`: its number.
    async fn header(&mut self, kind: u8, what: &'static str) -> Result<i64, ReadError> {
        loop {
            if let Some((found, line, after)) = line_at(self.buf, self.at) {
                if found != kind {
                    return Err(ProtocolError::Shape(what).into());
                }
                let value = number(line)?;
                self.at = after;
                self.consumed();
                return Ok(value);
            }
            self.fill().await?;
        }
    }

    /// An array's length (`None` for a nil array).
    async fn array(&mut self) -> Result<Option<usize>, ReadError> {
        let len = self.header(b'*', "array expected").await?;
        Ok(usize::try_from(len).ok())
    }

    /// A bulk string's length; its bytes are next.
    async fn bulk_len(&mut self) -> Result<usize, ReadError> {
        let len = self.header(b'$', "bulk string expected").await?;
        usize::try_from(len)
            .map_err(|_| ProtocolError::Shape("nil where a string was expected").into())
    }

    /// Moves past the CRLF ending a bulk string.
    async fn terminator(&mut self) -> Result<(), ReadError> {
        self.need(2).await?;
        if &self.buf[self.at..self.at + 2] != b"\r\n" {
            return Err(ProtocolError::Terminator.into());
        }
        self.at += 2;
        self.consumed();
        Ok(())
    }

    /// Drops a bulk string's `len` bytes as they arrive, then its CRLF.
    async fn skip(&mut self, len: usize) -> Result<(), ReadError> {
        let mut left = len;
        while left > 0 {
            if self.buf.is_empty() {
                self.fill().await?;
            }
            let taken = left.min(self.buf.len());
            self.buf.advance(taken);
            left -= taken;
        }
        self.terminator().await
    }

    /// From here on, nothing is kept: the bytes before `entry_start` (the
    /// kept entries) are handed back, the rest of the current entry dropped.
    fn stop_keeping(&mut self, entry_start: usize) -> Bytes {
        self.keeping = false;
        let kept = freeze_reply(self.buf, entry_start);
        self.at -= entry_start;
        self.consumed();
        kept
    }

    /// Once not keeping, parsed bytes are dropped at once.
    fn consumed(&mut self) {
        if !self.keeping {
            self.buf.advance(self.at);
            self.at = 0;
        }
    }
}

/// The first `len` bytes of `buf` (the kept entries), taken out of it. The
/// entries live until their transaction commits, or longer while their
/// observation start is held, and every one of them keeps the allocation
/// it is a slice of. A read is presized for a full page (up to 4 MiB); when
/// the reply filled a fraction of that (a few entries in steady state) it
/// is copied out, or each held start would keep a mostly empty 4 MiB
/// allocation resident (238 MB VmHWM at 5,000 events/s with starts held
/// 500 ms). A reply that fills its allocation is frozen where it is.
fn freeze_reply(buf: &mut BytesMut, len: usize) -> Bytes {
    if len < buf.capacity() / 4 {
        let reply = Bytes::copy_from_slice(&buf[..len]);
        buf.advance(len);
        return reply;
    }
    let reply = buf.split_to(len).freeze();
    // What follows (at most one read) moves out of the allocation the kept
    // entries share: later reads would otherwise fill, and so keep resident,
    // the rest of it for as long as the entries live.
    *buf = BytesMut::from(&buf[..]);
    reply
}

/// Where a kept field's name and value are in the reply.
type FieldRanges = (Range<usize>, Range<usize>);

enum First {
    Array(Option<usize>),
    Error(ServerError),
}

fn parse_id(text: &[u8]) -> Result<StreamId, ProtocolError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(ProtocolError::Shape("an entry id that is not one"))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;
    use crate::memory_budget::Weights;

    /// Gives its bytes `step` at a time, as a socket might.
    struct Chunked {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self
                .step
                .min(self.data.len() - self.at)
                .min(out.remaining());
            let at = self.at;
            out.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    type Entry<'a> = (&'a str, Vec<(&'a str, Vec<u8>)>);

    fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
        write!(out, "${}\r\n", bytes.len()).unwrap();
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }

    fn reply(entries: &[Entry]) -> Vec<u8> {
        let mut out = format!("*1\r\n*2\r\n$6\r\nevents\r\n*{}\r\n", entries.len()).into_bytes();
        for (id, fields) in entries {
            write!(out, "*2\r\n").unwrap();
            bulk(&mut out, id.as_bytes());
            write!(out, "*{}\r\n", fields.len() * 2).unwrap();
            for (name, value) in fields {
                bulk(&mut out, name.as_bytes());
                bulk(&mut out, value);
            }
        }
        out
    }

    fn entry(id: &str, data_len: usize) -> Entry<'_> {
        (
            id,
            vec![
                ("event_type", b"trace_start".to_vec()),
                ("data", vec![b'x'; data_len]),
            ],
        )
    }

    /// The weight of `entry(_, data_len)`.
    fn weight_of(data_len: usize) -> u64 {
        weights().weight(
            ("event_type".len() + "trace_start".len() + 4 + data_len) as u64,
            0,
        )
    }

    fn weights() -> Weights {
        Weights::new(1 << 20)
    }

    fn limit(weight: u64) -> Limit {
        Limit {
            weight,
            take_first: false,
            weights: weights(),
        }
    }

    async fn read_all(
        bytes: Vec<u8>,
        step: usize,
        limit: Limit,
    ) -> (Result<Option<GroupRead>, ServerError>, BytesMut) {
        let mut io = Chunked {
            data: bytes,
            at: 0,
            step,
        };
        let mut buf = BytesMut::new();
        let read = read_group_reply(&mut io, &mut buf, limit, 0).await.unwrap();
        assert_eq!(io.at, io.data.len(), "the whole reply was read");
        (read, buf)
    }

    fn ids(read: &GroupRead) -> Vec<String> {
        read.entries.iter().map(|(id, ..)| id.to_string()).collect()
    }

    fn unloaded(read: &GroupRead) -> Vec<String> {
        read.unloaded.iter().map(ToString::to_string).collect()
    }

    #[tokio::test]
    async fn entries_that_fit_are_kept_whole_however_the_reply_arrives() {
        let entries = [entry("1-1", 10), entry("1-2", 0), entry("2-0", 300)];
        let bytes = reply(&entries);
        for step in [1, 2, 3, 7, 64, bytes.len()] {
            let (read, buf) = read_all(bytes.clone(), step, limit(1 << 20)).await;
            let read = read.unwrap().unwrap();
            assert_eq!(ids(&read), ["1-1", "1-2", "2-0"], "step {step}");
            assert!(read.unloaded.is_empty());
            assert!(buf.is_empty());
            for ((_, fields, weight), (_, expected)) in read.entries.iter().zip(&entries) {
                let got: Vec<(&[u8], &[u8])> =
                    fields.iter().map(|(n, v)| (&n[..], &v[..])).collect();
                let want: Vec<(&[u8], &[u8])> = expected
                    .iter()
                    .map(|(n, v)| (n.as_bytes(), &v[..]))
                    .collect();
                assert_eq!(got, want, "step {step}");
                assert_eq!(*weight, weight_of(fields[1].1.len()));
            }
            assert_eq!(read.weight, weight_of(10) + weight_of(0) + weight_of(300));
        }
    }

    #[tokio::test]
    async fn entries_past_the_limit_are_delivered_but_not_loaded() {
        let entries = [
            entry("1-1", 100),
            entry("1-2", 100),
            entry("1-3", 100),
            entry("1-4", 1),
        ];
        for step in [1, 5, 4096] {
            // Room for two, and a little: the third does not fit, nor do
            // the ones after it, even the small fourth (a prefix is kept).
            let (read, buf) = read_all(reply(&entries), step, limit(2 * weight_of(100) + 50)).await;
            let read = read.unwrap().unwrap();
            assert_eq!(ids(&read), ["1-1", "1-2"], "step {step}");
            assert_eq!(unloaded(&read), ["1-3", "1-4"]);
            assert_eq!(read.first_unloaded_weight, weight_of(100));
            assert_eq!(read.weight, 2 * weight_of(100));
            assert_eq!(&read.entries[1].1[1].1[..], &[b'x'; 100][..]);
            assert!(buf.is_empty());
        }
    }

    #[tokio::test]
    async fn a_first_entry_too_heavy_is_kept_only_with_the_whole_budget() {
        let entries = [entry("1-1", 1000), entry("1-2", 1)];
        let (read, _) = read_all(reply(&entries), 16, limit(100)).await;
        let read = read.unwrap().unwrap();
        assert!(read.entries.is_empty());
        assert_eq!(unloaded(&read), ["1-1", "1-2"]);

        let whole = Limit {
            take_first: true,
            ..limit(100)
        };
        let (read, _) = read_all(reply(&entries), 16, whole).await;
        let read = read.unwrap().unwrap();
        assert_eq!(ids(&read), ["1-1"]);
        assert_eq!(unloaded(&read), ["1-2"]);
    }

    #[tokio::test]
    async fn compressed_data_weighs_its_expansion() {
        let json = format!(r#"{{"input":"{}"}}"#, "a".repeat(50_000));
        let gzip = crate::event::gzip::compress(json.as_bytes());
        let data = format!(
            r#"{{"_compressed": true, "_data": "{}"}}"#,
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, gzip)
        );
        let fields = vec![("data", data.clone().into_bytes())];
        let raw = (4 + data.len()) as u64;
        let weight = weights().weight(raw, json.len() as u64);
        let entries = [("1-1", fields.clone()), ("1-2", fields)];
        // Both fit by their raw size; by their expansion only one does.
        let (read, _) = read_all(reply(&entries), 4096, limit(weight + weight / 2)).await;
        let read = read.unwrap().unwrap();
        assert_eq!(ids(&read), ["1-1"]);
        assert_eq!(read.weight, weight);
        assert_eq!(unloaded(&read), ["1-2"]);
        assert_eq!(read.first_unloaded_weight, weight, "its expansion too");
    }

    #[tokio::test]
    async fn an_entry_not_loaded_is_never_held_whole() {
        let entries = [entry("1-1", 10), entry("1-2", 8 << 20), entry("1-3", 10)];
        let (read, buf) = read_all(reply(&entries), 1 << 20, limit(weight_of(10) * 2)).await;
        let read = read.unwrap().unwrap();
        assert_eq!(ids(&read), ["1-1"]);
        assert_eq!(unloaded(&read), ["1-2", "1-3"]);
        assert_eq!(
            read.first_unloaded_weight,
            weight_of(8 << 20),
            "skipped whole"
        );
        // Skipped bytes went through a buffer of one read's size.
        assert!(buf.capacity() <= 4 * READ_SIZE, "{}", buf.capacity());
    }

    /// A read presized for a full page that brought a few entries: their
    /// fields keep an allocation of the reply's size, not of the page's.
    #[tokio::test]
    async fn a_small_reply_in_a_presized_buffer_is_not_kept_in_it() {
        let entries = [entry("1-1", 1000), entry("1-2", 1000)];
        let bytes = reply(&entries);
        for presized in [0, 4 << 20] {
            let mut io = Chunked {
                data: bytes.clone(),
                at: 0,
                step: bytes.len(),
            };
            let mut buf = BytesMut::new();
            let read = read_group_reply(&mut io, &mut buf, limit(1 << 30), presized)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let (_, mut fields, _) = read.entries.into_iter().next().unwrap();
            let (_, value) = fields.pop().unwrap();
            drop(fields);
            drop(buf);
            // The last reference to its allocation: how big that is shows.
            let alone = value.try_into_mut().expect("no other reference");
            assert!(
                alone.capacity() < 64 * 1024,
                "presized {presized}: a field keeps {} bytes",
                alone.capacity()
            );
        }
    }

    #[tokio::test]
    async fn nothing_new_and_errors_leave_the_next_reply_whole() {
        let next = reply(&[entry("1-1", 3)]);
        let error = b"-NOGROUP No such key 'events' or consumer group 'g'\r\n";
        for (first, step) in [(&b"*-1\r\n"[..], 2), (&error[..], 3), (&next[..], 4)] {
            let mut io = Chunked {
                data: [first, &next[..]].concat(),
                at: 0,
                step,
            };
            let mut buf = BytesMut::new();
            let limit = limit(1 << 20);
            let read = read_group_reply(&mut io, &mut buf, limit, 0).await.unwrap();
            match first {
                b"*-1\r\n" => assert!(read.unwrap().is_none()),
                _ if first[0] == b'-' => assert_eq!(read.unwrap_err().code(), "NOGROUP"),
                _ => assert_eq!(ids(&read.unwrap().unwrap()), ["1-1"]),
            }
            let read = read_group_reply(&mut io, &mut buf, limit, 0).await.unwrap();
            assert_eq!(ids(&read.unwrap().unwrap()), ["1-1"], "after {first:?}");
            assert!(buf.is_empty() && io.at == io.data.len());
        }
        let mut io = Chunked {
            data: b"*1\r\n*2\r\n$6\r\nevents\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\na".to_vec(),
            at: 0,
            step: 5,
        };
        let cut = read_group_reply(&mut io, &mut BytesMut::new(), limit(1 << 20), 0).await;
        assert!(matches!(cut, Err(ReadError::Io(_))), "{cut:?}");
        let mut io = Chunked {
            data: b"*1\r\n*2\r\n$6\r\nevents\r\n*1\r\n*2\r\n$1\r\nx\r\n*0\r\n".to_vec(),
            at: 0,
            step: 5,
        };
        let bad_id = read_group_reply(&mut io, &mut BytesMut::new(), limit(1 << 20), 0).await;
        assert!(matches!(bad_id, Err(ReadError::Protocol(_))), "{bad_id:?}");
    }
}
