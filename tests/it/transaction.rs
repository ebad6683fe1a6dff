//! The write path's transaction (`store::transaction::Pipelined`) on a real
//! Postgres: BEGIN goes with the first statements and COMMIT with the last,
//! and the last statements must be committed all or none.

use std::future::Future;
use std::time::Duration;

use swisper_ingest::store::transaction::Pipelined;
use swisper_ingest::store::StoreError;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(60);

async fn numbers_table(env: &TestEnv) -> Client {
    let db = connect(&env.database_url).await;
    db.batch_execute("CREATE TABLE numbers (n int PRIMARY KEY)")
        .await
        .unwrap();
    db
}

/// One statement, sent when first polled.
async fn insert(client: &Client, n: i32) -> Result<(), StoreError> {
    client
        .query_typed("INSERT INTO numbers VALUES ($1)", &[(&n, Type::INT4)])
        .await?;
    Ok(())
}

/// Seen from another session: only what was committed.
async fn committed(env: &TestEnv) -> i64 {
    let other = connect(&env.database_url).await;
    count(&other, "SELECT count(*) FROM numbers").await
}

/// Begins, inserts 1, then commits after `last`.
async fn write_then_commit_after(
    client: &Client,
    last: impl Future<Output = Result<(), StoreError>>,
) -> Result<(), StoreError> {
    let tx = Pipelined::new(client);
    let (begun, first) = futures_util::join!(tx.begin(), insert(client, 1));
    begun?;
    first?;
    tx.commit_after(last).await
}

#[tokio::test]
async fn the_last_statements_commit_with_the_rest() {
    let env = TestEnv::new("tx_commit_after").await;
    let client = numbers_table(&env).await;
    write_then_commit_after(&client, async {
        futures_util::try_join!(insert(&client, 2), insert(&client, 3))?;
        Ok(())
    })
    .await
    .expect("committed");
    assert_eq!(committed(&env).await, 3);
}

/// A statement that fails before it is sent (a value that cannot be
/// encoded) must keep COMMIT from going out: sent beside the other
/// statements, COMMIT would have committed 1 and 2 without it.
#[tokio::test]
async fn a_statement_failing_before_it_is_sent_keeps_commit_from_going_out() {
    let env = TestEnv::new("tx_unsent").await;
    let client = numbers_table(&env).await;
    let unsent = async { Err::<(), _>(StoreError::Data("cannot be encoded".into())) };
    let result = write_then_commit_after(&client, async {
        futures_util::try_join!(insert(&client, 2), unsent)?;
        Ok(())
    })
    .await;
    assert!(matches!(result, Err(StoreError::Data(_))), "{result:?}");
    assert_eq!(committed(&env).await, 0, "committed without a statement");
    // Rolled back when dropped: the connection is out of the transaction.
    insert(&client, 9).await.unwrap();
    assert_eq!(committed(&env).await, 1);
}

/// Postgres refusing one of the last statements aborts the transaction:
/// the COMMIT behind it rolls everything back, and the refusal is returned.
#[tokio::test]
async fn a_statement_postgres_refuses_rolls_everything_back() {
    let env = TestEnv::new("tx_refused").await;
    let client = numbers_table(&env).await;
    let result = write_then_commit_after(&client, async {
        futures_util::try_join!(insert(&client, 2), insert(&client, 1))?;
        Ok(())
    })
    .await;
    assert!(matches!(result, Err(StoreError::Data(_))), "{result:?}");
    assert_eq!(committed(&env).await, 0);
    insert(&client, 9).await.unwrap();
    assert_eq!(committed(&env).await, 1);
}

/// The transaction ids that wrote the rows of one page: its trace, its
/// SDK heartbeat and its dead letter.
async fn writers_of_one_page(env: &TestEnv, extra: &[(&str, &str)]) -> Vec<String> {
    let mut redis = env.redis();
    env.publish_each(&mut redis, seed_trace("t", "p"));
    env.publish(
        &mut redis,
        &[
            ("event_type", "heartbeat"),
            ("project_id", "p"),
            (
                "data",
                r#"{"project_id":"p","sdk_version":"0.14.3","timestamp":"2026-12-07T10:00:00+00:00"}"#,
            ),
        ],
    );
    env.publish(
        &mut redis,
        &[
            ("event_type", "no_such_event"),
            ("trace_id", "t"),
            ("project_id", "p"),
        ],
    );
    // One reader and one writer: the page published before the start is
    // read whole and written in one transaction.
    let mut vars = vec![
        ("OBSERVABILITY_CONSUMERS", "1"),
        ("OBSERVABILITY_WRITERS", "1"),
    ];
    vars.extend_from_slice(extra);
    let service = env.spawn("replica-a", &vars);
    let db = env.db().await;
    let stored = wait_for_async(WAIT, || async {
        count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await == 1
            && count(&db, "SELECT count(*) FROM swisper_ingest.sdk_heartbeats").await == 1
            && count(
                &db,
                "SELECT count(*) FROM public.observations WHERE end_time IS NOT NULL",
            )
            .await
                == 3
    })
    .await;
    assert!(stored, "page not stored; log: {}", service.log());
    let mut writers = Vec::new();
    for sql in [
        "SELECT xmin::text FROM public.traces",
        "SELECT DISTINCT xmin::text FROM public.observations",
        "SELECT xmin::text FROM swisper_ingest.sdk_heartbeats",
        "SELECT xmin::text FROM swisper_ingest.dead_letters",
    ] {
        for row in db.query(sql, &[]).await.unwrap() {
            writers.push(row.get(0));
        }
    }
    writers
}

/// Rows, heartbeats and dead letters of one page go in its one transaction
/// (its last round trip carries them all, with COMMIT when retention is
/// off and with the tombstone check when it is on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_with_rows_a_heartbeat_and_a_dead_letter_is_one_transaction() {
    for (name, extra) in [
        ("tx_one_page", &[][..]),
        (
            "tx_one_page_retention",
            &[("OBSERVABILITY_RETENTION_DAYS", "30")][..],
        ),
    ] {
        let env = TestEnv::new(name).await;
        let writers = writers_of_one_page(&env, extra).await;
        assert_eq!(writers.len(), 4, "{name}: {writers:?}");
        assert!(
            writers.iter().all(|w| *w == writers[0]),
            "{name}: written by several transactions: {writers:?}"
        );
    }
}
