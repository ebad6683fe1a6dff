//! The consumers' Redis connection, whose replies the service reads itself
//! ([`reply`]): every entry the service stores arrives on it, and redis-rs'
//! multiplexed connection spent a fifth of the service's CPU parsing them.
//! It speaks RESP2 one command at a time (a consumer's reads follow each
//! other), over TCP, TLS or a Unix socket; AUTH with the credentials of the
//! moment and SELECT are sent as it connects. It implements redis-rs'
//! `ConnectionLike`, so commands, scripts and pipelines are built as
//! everywhere else.
//!
//! A transport error, a timed-out answer or an unreadable reply leaves the
//! stream at an unknown point: the connection refuses further commands and
//! the caller opens a new one.

pub mod group_read;
pub mod reply;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::CONNECT_TIMEOUT;
use crate::event::StreamId;
use crate::redis_stream::{
    bad_reply, xrange_command, xrange_each_pipeline, EntryFields, GroupRead, Limit, RangeReads,
    StreamError,
};

/// What a read asks the socket for at least: a large reply grows the buffer
/// by doubling past it.
const READ_SIZE: usize = 64 * 1024;

/// A buffer left larger than this by a large reply is given back once it
/// is empty: the memory budget counts entries, not this buffer.
const KEPT_CAPACITY: usize = 1024 * 1024;

/// Where the server is.
#[derive(Clone)]
pub enum Address {
    Tcp {
        host: String,
        port: u16,
    },
    Tls {
        host: String,
        port: u16,
        config: Arc<rustls::ClientConfig>,
    },
    Unix(PathBuf),
}

/// Who the connection authenticates as (redis-rs' rule: AUTH is sent when
/// there is a password; with the user when there is one).
pub struct Identity {
    pub username: Option<String>,
    pub password: Option<String>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Connection {
    io: Box<dyn Io>,
    /// Bytes received and not yet parsed.
    buf: BytesMut,
    response_timeout: Duration,
    db: i64,
    /// Set when the stream's position is unknown.
    broken: bool,
}

impl Connection {
    /// Connects, authenticates and selects `db`, all within
    /// [`CONNECT_TIMEOUT`].
    pub async fn open(
        address: &Address,
        identity: Identity,
        db: i64,
        response_timeout: Duration,
    ) -> RedisResult<Self> {
        let setup = async {
            let mut conn = Self {
                io: connect(address).await?,
                buf: BytesMut::new(),
                response_timeout,
                db,
                broken: false,
            };
            if let Some(password) = identity.password {
                let mut auth = redis::cmd("AUTH");
                if let Some(username) = identity.username {
                    auth.arg(username);
                }
                auth.arg(password).exec_async(&mut conn).await?;
            }
            if db != 0 {
                redis::cmd("SELECT").arg(db).exec_async(&mut conn).await?;
            }
            Ok(conn)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, setup)
            .await
            .map_err(|_| timed_out("connect to redis", CONNECT_TIMEOUT))?
    }

    /// Sends `packed` (one or more commands) and reads `count` replies,
    /// each read by `read` once complete.
    async fn exchange<T>(
        &mut self,
        packed: &[u8],
        count: usize,
        read: impl Fn(&Bytes) -> Result<T, reply::ProtocolError>,
    ) -> RedisResult<Vec<T>> {
        let timeout = self.begin_exchange()?;
        let replies = within(timeout, async {
            self.io.write_all(packed).await?;
            self.io.flush().await?;
            let mut replies = Vec::with_capacity(count);
            for _ in 0..count {
                let bytes = self.receive().await?;
                replies.push(read(&bytes).map_err(unreadable)?);
            }
            Ok(replies)
        })
        .await?;
        if self.buf.is_empty() && self.buf.capacity() > KEPT_CAPACITY {
            self.buf = BytesMut::new();
        }
        self.broken = false;
        Ok(replies)
    }

    /// Refuses to start when an earlier exchange left the stream at an
    /// unknown point; else marks it unknown until the exchange completes
    /// (its caller clears `broken`). Returns the response timeout.
    fn begin_exchange(&mut self) -> RedisResult<Duration> {
        if self.broken {
            return Err(RedisError::from((
                ErrorKind::Io,
                "connection left at an unknown point by an earlier failure",
            )));
        }
        self.broken = true;
        Ok(self.response_timeout)
    }

    /// XREADGROUP of up to `count` new entries, kept while they fit `limit`
    /// ([`group_read`]); `expected_bytes` is what the reply likely holds.
    pub async fn read_new_entries(
        &mut self,
        command: &Cmd,
        limit: Limit,
        expected_bytes: usize,
    ) -> RedisResult<Option<GroupRead>> {
        let timeout = self.begin_exchange()?;
        let read = within(timeout, async {
            self.io.write_all(&command.get_packed_command()).await?;
            self.io.flush().await?;
            group_read::read_group_reply(&mut self.io, &mut self.buf, limit, expected_bytes)
                .await
                .map_err(|error| match error {
                    group_read::ReadError::Io(error) => RedisError::from(error),
                    group_read::ReadError::Protocol(error) => unreadable(error),
                })
        })
        .await?;
        self.broken = false;
        read.map_err(RedisError::from)
    }

    /// Reads until one reply is complete: its bytes, copied out of the
    /// read buffer into an allocation of their own, which the entries read
    /// from it slice and keep alive while they live; the buffer is reused
    /// as it is for the next reply.
    async fn receive(&mut self) -> RedisResult<Bytes> {
        let mut scan = reply::Scan::default();
        loop {
            if let Some(end) = scan.advance(&self.buf).map_err(unreadable)? {
                let reply = Bytes::copy_from_slice(&self.buf[..end]);
                self.buf.advance(end);
                return Ok(reply);
            }
            self.buf.reserve(READ_SIZE);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "redis closed the connection",
                )
                .into());
            }
        }
    }
}

async fn connect(address: &Address) -> io::Result<Box<dyn Io>> {
    Ok(match address {
        Address::Tcp { host, port } => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
        Address::Tls { host, port, config } => {
            let name = ServerName::try_from(host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config.clone());
            Box::new(tls.connect(name, stream).await?)
        }
        Address::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
    })
}

/// `answer` within `timeout`, else a timed-out error.
async fn within<T>(
    timeout: Duration,
    answer: impl std::future::Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| timed_out("answer", timeout))?
}

fn unreadable(error: reply::ProtocolError) -> RedisError {
    RedisError::from((ErrorKind::Parse, "unreadable reply", error.to_string()))
}

fn timed_out(what: &str, after: Duration) -> RedisError {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("redis: no {what} within {after:?}"),
    )
    .into()
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let packed = cmd.get_packed_command();
            let mut replies = self.exchange(&packed, 1, |r| reply::parse(r)).await?;
            Ok(replies.pop().unwrap_or(Value::Nil))
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let packed = pipeline.get_packed_pipeline();
            let replies = self
                .exchange(&packed, offset + count, |r| reply::parse(r))
                .await?;
            Ok(replies.into_iter().skip(offset).collect())
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

/// XRANGE read straight into entries: no `Value` per field, no arrays to
/// take apart again.
impl RangeReads for Connection {
    async fn xrange(
        &mut self,
        stream: &str,
        first: &str,
        last: &str,
    ) -> Result<Vec<(StreamId, EntryFields)>, StreamError> {
        let packed = xrange_command(stream, first, last).get_packed_command();
        let mut replies = self.exchange(&packed, 1, reply::range).await?;
        // `exchange` gives as many replies as asked for, or an error.
        let entries = replies
            .pop()
            .expect("one reply")
            .map_err(RedisError::from)?;
        entries
            .into_iter()
            .map(|(id, fields)| {
                let id = std::str::from_utf8(&id)
                    .ok()
                    .and_then(|text| text.parse().ok())
                    .ok_or_else(|| bad_reply("XRANGE", &Value::BulkString(id.to_vec())))?;
                Ok((id, fields))
            })
            .collect()
    }

    async fn xrange_each(
        &mut self,
        stream: &str,
        ids: &[StreamId],
    ) -> Result<Vec<Option<EntryFields>>, StreamError> {
        let packed = xrange_each_pipeline(stream, ids).get_packed_pipeline();
        let replies = self.exchange(&packed, ids.len(), reply::range).await?;
        replies
            .into_iter()
            .map(|reply| {
                let mut entries = reply.map_err(RedisError::from)?;
                Ok(entries.pop().map(|(_, fields)| fields))
            })
            .collect()
    }

    async fn read_new(
        &mut self,
        command: &Cmd,
        limit: Limit,
        expected_bytes: usize,
    ) -> Option<Result<Option<GroupRead>, StreamError>> {
        Some(
            self.read_new_entries(command, limit, expected_bytes)
                .await
                .map_err(StreamError::from),
        )
    }
}
