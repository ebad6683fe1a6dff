//! The consumer group's books as Redis reports them: pending entries,
//! consumers, lag.

/// Ids pending in the group, under one consumer or all of them.
pub fn pending_ids(
    conn: &mut redis::Connection,
    stream: &str,
    group: &str,
    consumer: Option<&str>,
) -> Vec<String> {
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(stream).arg(group).arg("-").arg("+").arg(1_000_000);
    if let Some(consumer) = consumer {
        cmd.arg(consumer);
    }
    let reply: redis::Value = cmd.query(conn).expect("xpending");
    let redis::Value::Array(rows) = reply else {
        return Vec::new();
    };
    rows.into_iter()
        .filter_map(|row| match row {
            redis::Value::Array(mut fields) if !fields.is_empty() => match fields.swap_remove(0) {
                redis::Value::BulkString(id) => Some(String::from_utf8_lossy(&id).into_owned()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

pub fn pending_all(conn: &mut redis::Connection, stream: &str, group: &str) -> Vec<String> {
    pending_ids(conn, stream, group, None)
}

/// The group's `lag` and `pending` as XINFO GROUPS reports them (lag None
/// when Redis cannot tell).
fn group_lag_pending(
    conn: &mut redis::Connection,
    stream: &str,
    group: &str,
) -> Option<(Option<i64>, i64)> {
    let reply: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query(conn)
        .ok()?;
    let redis::Value::Array(groups) = reply else {
        return None;
    };
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    groups.iter().find_map(|g| {
        let redis::Value::Array(fields) = g else {
            return None;
        };
        let mut name = None;
        let mut lag = None;
        let mut pending = None;
        for pair in fields.chunks(2) {
            let [k, v] = pair else { continue };
            match text(k).as_deref() {
                Some("name") => name = text(v),
                Some("lag") => {
                    lag = match v {
                        redis::Value::Int(n) => Some(*n),
                        _ => None,
                    }
                }
                Some("pending") => {
                    if let redis::Value::Int(n) = v {
                        pending = Some(*n)
                    }
                }
                _ => {}
            }
        }
        (name.as_deref() == Some(group)).then_some((lag, pending?))
    })
}

/// Every entry of the stream delivered to the group and acknowledged: lag 0
/// (or, where Redis cannot tell the lag, the group's last delivered id is
/// the stream's last id) and nothing pending.
pub fn group_drained(conn: &mut redis::Connection, stream: &str, group: &str) -> bool {
    match group_lag_pending(conn, stream, group) {
        Some((Some(lag), pending)) => lag == 0 && pending == 0,
        Some((None, 0)) => {
            let last = |reply: redis::Value, key: &str| -> Option<String> {
                let redis::Value::Array(fields) = reply else {
                    return None;
                };
                fields.chunks(2).find_map(|pair| match pair {
                    [redis::Value::BulkString(k), redis::Value::BulkString(v)]
                        if k == key.as_bytes() =>
                    {
                        Some(String::from_utf8_lossy(v).into_owned())
                    }
                    _ => None,
                })
            };
            let stream_info: Option<redis::Value> = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(stream)
                .query(conn)
                .ok();
            let groups: Option<redis::Value> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query(conn)
                .ok();
            let generated = stream_info.and_then(|r| last(r, "last-generated-id"));
            let delivered = match groups {
                Some(redis::Value::Array(groups)) => groups.into_iter().find_map(|g| {
                    let name = last(g.clone(), "name")?;
                    (name == group)
                        .then(|| last(g, "last-delivered-id"))
                        .flatten()
                }),
                _ => None,
            };
            generated.is_some() && generated == delivered
        }
        _ => false,
    }
}

/// The consumers' own connection (`connect::resp`), opened as the service
/// opens it from the URL.
pub async fn consumer_connection(redis_url: &str) -> swisper_ingest::connect::resp::Connection {
    let settings = swisper_ingest::config::RedisSettings {
        url: redis_url.parse().expect("redis url"),
        username: None,
        username_file: None,
        password: None,
        password_file: None,
        ca_file: None,
        client_cert_file: None,
        client_key_file: None,
        tls_insecure: false,
    };
    settings
        .target()
        .expect("redis settings")
        .open_for_reads(std::time::Duration::from_secs(1))
        .await
        .expect("connect to redis")
}
