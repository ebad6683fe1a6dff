//! Issue 17's defects that live in the write path, each as the scenario a
//! deployment would meet (black-box where a real process is the point):
//! - a producer's clock must not delete a live trace (retention time comes
//!   from Redis entry ids);
//! - forgetting a trace never leaves part of it, whichever transaction
//!   takes the trace first (two real transactions held at a barrier);
//! - one entry whose write alone always times out does not stop a writer.

use std::time::Duration;

use swisper_ingest::config::CreateProjects;
use swisper_ingest::event::{
    EventBody, ObservationEnd, ObservationStart, Parsed, StreamEntry, StreamId, TraceEvent,
    TraceStart,
};
use swisper_ingest::retention::Horizons;
use swisper_ingest::store::{retention, Pool};
use swisper_ingest::write_path::{commit, BatchItem, Destination, Studio};

use crate::harness::{
    self, count, seed_trace, wait_for_async, wait_for_ended_observations, TestEnv,
};

const DAY_SECS: i64 = 24 * 3600;

/// Defect 2: with a 30-day horizon, one event of a live trace whose
/// `timestamp` claims to be 31 days old (a skewed client clock) made the
/// writer forget the whole trace, stored seconds earlier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producers_clock_does_not_delete_a_live_trace() {
    let env = TestEnv::new("producer_clock").await;
    let mut redis = env.redis();
    let service = env.spawn("replica-a", &[("OBSERVABILITY_RETENTION_DAYS", "30")]);
    service.wait_ready(Duration::from_secs(60));
    env.publish_each(&mut redis, seed_trace("live", "p"));
    let db = env.db().await;
    assert!(
        wait_for_ended_observations(&db, 3, Duration::from_secs(60)).await,
        "the live trace is stored"
    );
    // A late observation of the same trace from a host whose clock is 31
    // days behind: its entry id (the Redis server's clock) is now.
    let skewed = {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        format!("{:.6}", now - (31 * DAY_SECS) as f64)
    };
    env.publish(
        &mut redis,
        &[
            ("event_type", "observation_start"),
            ("trace_id", "live"),
            ("project_id", "p"),
            ("observation_id", "live-skewed"),
            ("timestamp", &skewed),
            (
                "data",
                r#"{"name":"skewed","start_time":"2026-11-01T00:00:00"}"#,
            ),
        ],
    );
    assert!(
        wait_for_async(Duration::from_secs(60), || async {
            harness::pending_all(&mut env.redis(), &env.stream, &env.group).is_empty()
                && count(&db, "SELECT count(*) FROM observations WHERE id = 'live-skewed'").await
                    + count(
                        &db,
                        "SELECT count(*) FROM swisper_ingest.retention_tombstones WHERE trace_id = 'live'",
                    )
                    .await
                    >= 1
        })
        .await,
        "the skewed entry is handled"
    );
    let traces = count(&db, "SELECT count(*) FROM traces WHERE id = 'live'").await;
    let observations = count(
        &db,
        "SELECT count(*) FROM observations WHERE trace_id = 'live'",
    )
    .await;
    let tombstones = count(
        &db,
        "SELECT count(*) FROM swisper_ingest.retention_tombstones WHERE trace_id = 'live'",
    )
    .await;
    assert_eq!(
        (traces, observations, tombstones),
        (1, 4, 0),
        "the live trace keeps its 3 observations plus the skewed one, and no tombstone"
    );
}

/// Defect 4: an entry whose write alone always ran past statement_timeout
/// was handed back after splitting, and the whole batch was retried
/// forever: 0 dead letters, nothing acked, that writer and every consumer
/// feeding it stopped. Here a trigger makes one observation's insert slow
/// (a stand-in for a huge row on a slow disk) and statement_timeout is
/// 300 ms: its neighbours are stored, it becomes a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_entry_that_always_times_out_does_not_stop_the_writer() {
    let env = TestEnv::new("slow_entry").await;
    env.migrate();
    let db = env.db().await;
    let database = env.database_url.rsplit('/').next().unwrap().to_owned();
    db.batch_execute(&format!(
        "CREATE FUNCTION public.slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.name = 'slow' THEN PERFORM pg_sleep(2); END IF; RETURN NEW; END $$;
         CREATE TRIGGER slow_insert BEFORE INSERT ON public.observations
             FOR EACH ROW EXECUTE FUNCTION public.slow_insert();
         ALTER DATABASE {database} SET statement_timeout = '300ms';"
    ))
    .await
    .unwrap();
    let mut redis = env.redis();
    let traces = 60;
    for n in 0..traces {
        env.publish_each(&mut redis, seed_trace(&format!("t{n:03}"), "p"));
        if n == traces / 2 {
            env.publish(
                &mut redis,
                &[
                    ("event_type", "observation_start"),
                    ("trace_id", "t-slow"),
                    ("project_id", "p"),
                    ("observation_id", "o-slow"),
                    ("timestamp", &harness::now_ts()),
                    ("data", r#"{"name":"slow"}"#),
                ],
            );
        }
    }
    let service = env.spawn("replica-a", &[("OBSERVABILITY_BATCH_SIZE", "500")]);
    service.wait_ready(Duration::from_secs(60));
    let stored = wait_for_async(Duration::from_secs(120), || async {
        harness::pending_all(&mut env.redis(), &env.stream, &env.group).is_empty()
            && count(
                &db,
                "SELECT count(*) FROM observations WHERE end_time IS NOT NULL",
            )
            .await
                == traces * 3
    })
    .await;
    let letters = db
        .query(
            "SELECT stream_entry_id, reason_code FROM swisper_ingest.dead_letters",
            &[],
        )
        .await
        .unwrap();
    let reasons: Vec<String> = letters.iter().map(|r| r.get(1)).collect();
    let pending = harness::pending_all(&mut env.redis(), &env.stream, &env.group).len();
    let ended = count(
        &db,
        "SELECT count(*) FROM observations WHERE end_time IS NOT NULL",
    )
    .await;
    drop(service);
    assert!(
        stored,
        "every neighbour stored and nothing left pending: {ended} of {} ended observations, {pending} pending, dead letters {reasons:?}",
        traces * 3
    );
    assert_eq!(
        reasons,
        ["statement_timeout"],
        "only the slow entry is a dead letter"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM observations WHERE id = 'o-slow'").await,
        0
    );
}

/// A pool and destination on the test's database, for driving the write
/// path directly.
struct Direct {
    pool: Pool,
    horizons: Horizons,
    studio: Studio,
    stream: String,
}

impl Direct {
    /// A migrated database and a writer whose horizon is `horizon_secs`.
    async fn new(env: &TestEnv, horizon_secs: u64) -> Self {
        let (pool, studio) = harness::migrated_pool(&env.database_url).await;
        Self {
            pool,
            horizons: horizon(horizon_secs),
            studio,
            stream: env.stream.clone(),
        }
    }

    /// Commits one item in a writer of its own (a task), with the horizon
    /// of 60 scaled seconds; returns the item as the write path left it.
    fn spawn_commit(
        &self,
        item: BatchItem,
    ) -> tokio::task::JoinHandle<Result<Vec<BatchItem>, swisper_ingest::store::StoreError>> {
        let pool = self.pool.clone();
        let stream = self.stream.clone();
        tokio::spawn(async move {
            let horizons = horizon(60);
            let studio = Studio::new(CreateProjects::Auto, Duration::from_secs(30));
            let to = Destination {
                pool: &pool,
                stream: &stream,
                horizons: &horizons,
                studio: &studio,
            };
            let mut items = vec![item];
            commit(to, &mut items).await.map(|_| items)
        })
    }

    fn to(&self) -> Destination<'_> {
        Destination {
            pool: &self.pool,
            stream: &self.stream,
            horizons: &self.horizons,
            studio: &self.studio,
        }
    }
}

/// An event of trace `x` received by Redis `age_secs` ago.
fn item(seq: u64, age_secs: i64, body: EventBody) -> BatchItem {
    let received = chrono::Utc::now() - chrono::Duration::seconds(age_secs);
    let id = StreamId {
        ms: received.timestamp_millis() as u64,
        seq,
    };
    BatchItem {
        entry: StreamEntry {
            id,
            fields: Vec::new(),
            deliveries: 1,
        },
        parsed: Ok(Parsed::Trace(TraceEvent {
            entry_id: id,
            trace_id: "x".into(),
            project_id: "p".into(),
            published_at: received,
            body,
        })),
    }
}

fn start(id: &str) -> EventBody {
    EventBody::ObservationStart {
        observation_id: id.into(),
        fields: ObservationStart {
            name: Some(id.into()),
            start_time: chrono::Utc::now(),
            ..ObservationStart::default()
        },
    }
}

fn end(id: &str) -> EventBody {
    EventBody::ObservationEnd {
        observation_id: id.into(),
        fields: ObservationEnd {
            level: "DEFAULT".into(),
            end_time: chrono::Utc::now(),
            ..ObservationEnd::default()
        },
    }
}

/// What is left of trace `x` anywhere: studio rows and merge state.
async fn remains(db: &tokio_postgres::Client) -> [i64; 4] {
    [
        count(db, "SELECT count(*) FROM traces WHERE id = 'x'").await,
        count(db, "SELECT count(*) FROM observations WHERE trace_id = 'x'").await,
        count(
            db,
            "SELECT count(*) FROM swisper_ingest.trace_state WHERE id = 'x'",
        )
        .await,
        count(
            db,
            "SELECT count(*) FROM swisper_ingest.observation_state WHERE trace_id = 'x'",
        )
        .await,
    ]
}

/// Defect 3: a writer forgetting trace x (a late event of it) deleted x's
/// observations before locking x's row; another writer holding that row
/// committed a new observation meanwhile, which then stayed: half a trace
/// that retention never visits again. Here writer W2's transaction is held
/// open at a barrier (a session that locked x's row as a writer does and
/// wrote an observation of x), while W1 forgets x; then W2 commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_trace_while_a_writer_holds_it_leaves_nothing() {
    let env = TestEnv::new("half_trace").await;
    // Horizon 60 s (scaled): entries received 120 s ago are late.
    let direct = Direct::new(&env, 60).await;
    let mut batch = vec![
        item(0, 120, EventBody::TraceStart(TraceStart::default())),
        item(1, 120, start("o1")),
        item(2, 120, end("o1")),
    ];
    // Stored before the horizon applied to it: written with retention off.
    {
        let off = Horizons::fixed(None);
        let to = Destination {
            horizons: &off,
            ..direct.to()
        };
        commit(to, &mut batch).await.unwrap();
    }
    let db = env.db().await;
    assert_eq!(remains(&db).await, [1, 1, 1, 1]);

    // W2, held at the barrier: locked x as writers do and wrote o2.
    let mut w2 = env.db().await;
    let w2 = w2.transaction().await.unwrap();
    w2.execute(
        "SELECT id FROM public.traces WHERE id = 'x' FOR NO KEY UPDATE",
        &[],
    )
    .await
    .unwrap();
    w2.batch_execute(
        "INSERT INTO public.observations (id, trace_id, type, start_time, level)
             VALUES ('o2', 'x', 'SPAN', now(), 'DEFAULT');
         INSERT INTO swisper_ingest.observation_state (id, trace_id, project_id, seen_version)
             VALUES ('o2', 'x', 'p', '\\x00');",
    )
    .await
    .unwrap();

    // W1: a late event of x makes it forget x; it must wait for W2.
    let w1 = direct.spawn_commit(item(3, 120, end("o1")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!w1.is_finished(), "W1 waits for the trace W2 holds");
    w2.commit().await.unwrap();
    let late = w1.await.unwrap().unwrap();
    assert!(matches!(late[0].parsed, Ok(Parsed::Expired(_))));
    assert_eq!(
        remains(&db).await,
        [0, 0, 0, 0],
        "trace, observations (o2 included) and their state all gone"
    );
}

/// The other order: W1 forgets x first and is held at the barrier; W2 then
/// writes an observation of x and must not resurrect half of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_after_a_forget_does_not_resurrect_half_a_trace() {
    let env = TestEnv::new("half_trace_2").await;
    let direct = Direct::new(&env, 60).await;
    let off = Horizons::fixed(None);
    let mut batch = vec![
        item(0, 120, EventBody::TraceStart(TraceStart::default())),
        item(1, 120, start("o1")),
    ];
    commit(
        Destination {
            horizons: &off,
            ..direct.to()
        },
        &mut batch,
    )
    .await
    .unwrap();

    // W1 (the retention worker), held at the barrier after its work.
    let mut w1 = env.db().await;
    let forgotten = {
        // Runs forget_traces' statements in a transaction left open: the
        // worker's own function commits at once, so the same statements
        // are replayed here through a held transaction.
        let tx = w1.transaction().await.unwrap();
        tx.batch_execute(
            "SELECT id FROM public.traces WHERE id = 'x' FOR UPDATE;
             DELETE FROM public.observations WHERE trace_id = 'x';
             DELETE FROM public.traces WHERE id = 'x';
             DELETE FROM swisper_ingest.observation_state WHERE trace_id = 'x';
             DELETE FROM swisper_ingest.trace_state WHERE id = 'x';
             INSERT INTO swisper_ingest.retention_tombstones (trace_id, project_id) VALUES ('x', 'p');",
        )
        .await
        .unwrap();
        tx
    };
    // W2: a fresh event of x (inside the horizon) arrives meanwhile.
    let w2 = direct.spawn_commit(item(9, 0, end("o1")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!w2.is_finished(), "W2 waits for the trace W1 holds");
    forgotten.commit().await.unwrap();
    let fresh = w2.await.unwrap().unwrap();
    assert!(
        matches!(fresh[0].parsed, Ok(Parsed::Expired(_))),
        "the tombstone turns the fresh event away"
    );
    let db = env.db().await;
    assert_eq!(remains(&db).await, [0, 0, 0, 0]);

    // And the retention worker's own function against a live writer: it
    // skips a trace a writer holds (SKIP LOCKED) and takes it next time.
    let mut batch = vec![
        item(20, 120, EventBody::TraceStart(TraceStart::default())),
        item(21, 120, start("o3")),
    ];
    // A new trace id: tombstones only stop x.
    for b in &mut batch {
        if let Ok(Parsed::Trace(event)) = &mut b.parsed {
            event.trace_id = "y".into();
        }
    }
    commit(
        Destination {
            horizons: &off,
            ..direct.to()
        },
        &mut batch,
    )
    .await
    .unwrap();
    let mut holder = env.db().await;
    let holder = holder.transaction().await.unwrap();
    holder
        .execute(
            "SELECT id FROM public.traces WHERE id = 'y' FOR NO KEY UPDATE",
            &[],
        )
        .await
        .unwrap();
    let mut worker = env.db().await;
    let cut = chrono::Utc::now() - chrono::Duration::seconds(60);
    let skipped = retention::forget_traces(&mut worker, "p", cut, 10)
        .await
        .unwrap();
    assert_eq!(skipped.traces, 0, "a trace a writer holds is skipped");
    holder.commit().await.unwrap();
    let taken = retention::forget_traces(&mut worker, "p", cut, 10)
        .await
        .unwrap();
    assert_eq!((taken.traces, taken.observations), (1, 1));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM swisper_ingest.observation_state WHERE trace_id = 'y'"
        )
        .await,
        0
    );
}

/// A retention horizon of `secs`, already loaded (no per-project ones).
fn horizon(secs: u64) -> Horizons {
    Horizons::fixed(Some(Duration::from_secs(secs)))
}
