//! The weighed read against a real Redis: what an entry weighs (raw size and
//! the expansion of compressed data, as `Weights` says), reads that stop at
//! the reservation, and an entry heavier than the whole budget read alone.

use std::io::Write as _;

use swisper_ingest::memory_budget::{MemoryBudget, Weights};
use swisper_ingest::weighed_read::{read_within_budget, Mode, Read, Request};

use crate::harness::*;

const MAX_EXPANDED: u64 = 16 * 1024 * 1024;

fn request<'a>(env: &'a TestEnv, consumer: &'a str) -> Request<'a> {
    Request {
        stream: &env.stream,
        group: &env.group,
        consumer,
        max_count: 500,
        weights: Weights::new(MAX_EXPANDED),
        max_deliveries: 10,
        expected_entry_weight: 0,
    }
}

async fn connection(env: &TestEnv) -> redis::aio::MultiplexedConnection {
    redis::Client::open(env.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn compressed(json: &str) -> String {
    use base64::Engine;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json.as_bytes()).unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    format!(r#"{{"_compressed": true, "_data": "{encoded}"}}"#)
}

fn raw_size(fields: &[(&str, &str)]) -> u64 {
    fields.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
}

#[tokio::test]
async fn compressed_data_weighs_its_expansion_and_reads_stop_at_the_reservation() {
    let env = TestEnv::new("weighed").await;
    let mut redis = env.redis();
    env.create_group(&mut redis);
    // Expansion sizes whose base64 ends with each padding ("", "=", "==").
    let mut expected = Vec::new();
    for len in [300_000usize, 300_001, 300_002] {
        let json = format!(r#"{{"input":"{}"}}"#, "a".repeat(len));
        let data = compressed(&json);
        let fields = [("event_type", "observation_start"), ("data", data.as_str())];
        env.publish(&mut redis, &fields);
        expected.push(Weights::new(MAX_EXPANDED).weight(raw_size(&fields), json.len() as u64));
    }
    let mut conn = connection(&env).await;
    let budget = MemoryBudget::new(64 * 1024 * 1024);
    let read = read_within_budget(&mut conn, &budget, &request(&env, "c"), &Mode::New)
        .await
        .unwrap();
    let Read::Page(page, reservation) = read else {
        panic!("nothing read")
    };
    assert_eq!(page.entries.len(), 3);
    assert_eq!(page.weight, expected.iter().sum::<u64>());
    assert!(reservation.bytes() >= page.weight && reservation.bytes() < page.weight + 1024);
    drop(reservation);

    // Ten entries of 100 KB weigh 400 KB each: a 1 MiB budget takes two.
    let value = "v".repeat(100_000);
    for _ in 0..10 {
        env.publish(&mut redis, &[("data", value.as_str())]);
    }
    let small = MemoryBudget::new(1024 * 1024);
    let read = read_within_budget(&mut conn, &small, &request(&env, "c"), &Mode::New)
        .await
        .unwrap();
    let Read::Page(page, _reservation) = read else {
        panic!("nothing read")
    };
    assert_eq!(page.entries.len(), 2, "the read stops at the budget");
    assert!(page.entries.iter().all(|e| e.deliveries == 1));
}

#[tokio::test]
async fn an_entry_heavier_than_the_budget_is_read_alone_and_counted_on_re_reads() {
    let env = TestEnv::new("weighed_alone").await;
    let mut redis = env.redis();
    env.create_group(&mut redis);
    let big = "b".repeat(2 * 1024 * 1024);
    env.publish(&mut redis, &[("data", big.as_str())]);
    env.publish(&mut redis, &[("data", "small")]);
    let mut conn = connection(&env).await;
    let budget = MemoryBudget::new(1024 * 1024);
    let read = read_within_budget(&mut conn, &budget, &request(&env, "c"), &Mode::New)
        .await
        .unwrap();
    let Read::Page(page, reservation) = read else {
        panic!("nothing read")
    };
    assert_eq!(page.entries.len(), 1, "alone");
    assert!(reservation.is_whole_budget());
    drop(reservation);

    // Its own pending entry read again: Redis counts the delivery.
    for expected in [2, 3] {
        let mode = Mode::Pending(swisper_ingest::event::StreamId { ms: 0, seq: 0 });
        let read = read_within_budget(&mut conn, &budget, &request(&env, "c"), &mode)
            .await
            .unwrap();
        let Read::Page(page, _reservation) = read else {
            panic!("nothing pending")
        };
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.entries[0].deliveries, expected);
    }
    // Held (poison protection): reloaded without counting.
    let id = page_id(&mut redis, &env);
    let read = read_within_budget(
        &mut conn,
        &budget,
        &request(&env, "c"),
        &Mode::Held(vec![id]),
    )
    .await
    .unwrap();
    let Read::Page(page, _reservation) = read else {
        panic!("not held")
    };
    assert_eq!(page.entries[0].deliveries, 3);
    let pending: Vec<(String, String, i64, i64)> = redis::cmd("XPENDING")
        .arg(&env.stream)
        .arg(&env.group)
        .arg("-")
        .arg("+")
        .arg(10)
        .query(&mut redis)
        .unwrap();
    assert_eq!(pending[0].3, 3, "a reload is not a delivery");
}

fn page_id(redis: &mut redis::Connection, env: &TestEnv) -> swisper_ingest::event::StreamId {
    pending_all(redis, &env.stream, &env.group)[0]
        .parse()
        .unwrap()
}

/// The consumers' connection reads new entries with a plain XREADGROUP once
/// it knows what an entry weighs, weighing them as they arrive: those past
/// the reservation are delivered (pending, counted once) but not loaded, and
/// a held reload brings them without counting a delivery again.
#[tokio::test]
async fn a_plain_read_delivers_past_its_budget_and_the_held_reload_brings_the_rest() {
    let env = TestEnv::new("weighed_plain").await;
    let mut redis = env.redis();
    env.create_group(&mut redis);
    let small = "s".repeat(1_000);
    let big = "b".repeat(400_000);
    for data in [&small, &small, &big, &small] {
        env.publish(&mut redis, &[("data", data.as_str())]);
    }
    let mut conn = consumer_connection(&env.redis_url).await;
    let weights = Weights::new(MAX_EXPANDED);
    let small_weight = weights.weight(raw_size(&[("data", small.as_str())]), 0);
    let request = Request {
        expected_entry_weight: small_weight,
        ..request(&env, "c")
    };
    // Half the budget is in other hands: room for the small ones, not for
    // the big one (1.6 MB).
    let budget = MemoryBudget::new(2 * 1024 * 1024);
    let elsewhere = budget.acquire(1024 * 1024).await;
    let read = read_within_budget(&mut conn, &budget, &request, &Mode::New)
        .await
        .unwrap();
    let Read::Page(page, reservation) = read else {
        panic!("nothing read")
    };
    assert_eq!(page.entries.len(), 2);
    assert_eq!(page.weight, 2 * small_weight);
    let big_weight = weights.weight(raw_size(&[("data", big.as_str())]), 0);
    assert_eq!(
        page.heaviest, big_weight,
        "the next read expects the big one"
    );
    assert!(reservation.bytes() >= page.weight && reservation.bytes() < page.weight + 1024);
    assert_eq!(page.unloaded.len(), 2, "the big one and the one after it");
    drop((reservation, elsewhere));
    let all = pending_ids(&mut redis, &env.stream, &env.group, Some("c"));
    assert_eq!(all.len(), 4, "all four delivered to c");
    assert_eq!(lag(&mut redis, &env), Some(0));

    // With the whole budget free, the reload brings both.
    let held = Mode::Held(page.unloaded.clone());
    let read = read_within_budget(&mut conn, &budget, &request, &held)
        .await
        .unwrap();
    let Read::Page(page, _reservation) = read else {
        panic!("nothing reloaded")
    };
    let ids: Vec<String> = page.entries.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(ids, all[2..]);
    assert!(
        page.entries.iter().all(|e| e.deliveries == 1),
        "not counted again"
    );
    assert_eq!(page.entries[0].fields[0].1.len(), big.len());

    // Nothing new: empty, with the group's last delivered id to wait after.
    let read = read_within_budget(&mut conn, &budget, &request, &Mode::New)
        .await
        .unwrap();
    let Read::Empty { next } = read else {
        panic!("read something")
    };
    assert_eq!(next, all[3]);
}

/// The group's lag as XINFO GROUPS reports it.
fn lag(redis: &mut redis::Connection, env: &TestEnv) -> Option<u64> {
    let groups: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&env.stream)
        .query(redis)
        .unwrap();
    let redis::Value::Array(groups) = groups else {
        return None;
    };
    let redis::Value::Array(fields) = groups.into_iter().next()? else {
        return None;
    };
    let at = fields
        .iter()
        .position(|f| matches!(f, redis::Value::BulkString(b) if b == b"lag"))?;
    match fields.get(at + 1) {
        Some(redis::Value::Int(n)) => Some(*n as u64),
        _ => None,
    }
}
