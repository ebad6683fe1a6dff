//! Postgres errors produced for real, each sorted by what to do
//! (docs/reliability.md, "Postgres answers but cannot write"): a read-only
//! database, statements timing out behind a lock, connections refused as too
//! many, a full disk, a pgbouncer in transaction mode that loses its server
//! tables; and the input bounds: one project's events never touching another
//! project's rows (ids are the studio's keys: the first project keeps the
//! row, the other's events are dead letters), over-long indexed text
//! truncated, heartbeat series capped.
//!
//! Every fault is confined to a role of the test's own (role settings,
//! connection limits, its backends terminated), or, for a full disk, to
//! servers the test starts itself, so the shared servers stay as they were
//! and these tests run beside the others.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

const LONG: Duration = Duration::from_secs(60);

/// The test's database, owned by a non-superuser role that the service uses:
/// role limits apply only to non-superusers.
struct Tenant {
    env: TestEnv,
    role: String,
    admin: tokio_postgres::Client,
}

impl Tenant {
    async fn new(name: &str) -> Self {
        let env = TestEnv::new(name).await;
        let admin = connect(&std::env::var("DATABASE_URL").unwrap()).await;
        let database = env.database_url.rsplit_once('/').unwrap().1.to_owned();
        let role = format!("role_{database}");
        admin
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN; ALTER DATABASE {database} OWNER TO {role};"
            ))
            .await
            .expect("create the role");
        Self { env, role, admin }
    }

    /// DATABASE_URL of the role (the test servers trust loopback).
    fn url(&self) -> String {
        self.env
            .database_url
            .replacen("postgres@", &format!("{}@", self.role), 1)
    }

    async fn sql(&self, sql: &str) {
        let sql = sql.replace("ROLE_", &self.role);
        self.admin.batch_execute(&sql).await.expect(&sql);
    }

    /// Ends the role's sessions, as a failover or a restart would: the
    /// service's pool connects again and gets the role's new settings.
    async fn terminate_sessions(&self) {
        self.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'ROLE_'")
            .await;
    }

    fn spawn(&self, replica: &str, extra: &[(&str, &str)]) -> Service {
        let url = self.url();
        let mut settings = vec![("DATABASE_URL", url.as_str())];
        settings.extend_from_slice(extra);
        self.env.spawn(replica, &settings)
    }
}

fn acked(service: &Service) -> f64 {
    service.metric("swisper_ingest_acked_total").unwrap_or(0.0)
}

fn errors(service: &Service, kind: &str) -> f64 {
    service
        .metric(&format!(
            "swisper_ingest_postgres_errors_total{{kind=\"{kind}\"}}"
        ))
        .unwrap_or(0.0)
}

fn unready(service: &Service) -> bool {
    matches!(service.get("/readyz"), Some((503, _)))
}

/// The shape every "cannot write" scenario must have: while the fault lasts,
/// readiness false, the documented kind counted, nothing acked; after it,
/// everything stored, nothing dead-lettered, ready again.
async fn cannot_write_then_recover(
    env: &TestEnv,
    service: &Service,
    kind: &str,
    fault_ends: impl std::future::Future<Output = ()>,
) {
    let mut redis = env.redis();
    env.publish_traces(&mut redis, 10..20);
    let seen = wait_for(LONG, || errors(service, kind) >= 2.0 && unready(service));
    assert!(
        seen,
        "no {kind} errors or still ready; log: {}",
        service.log()
    );
    // From the first failures on (a batch that still fitted, say on a page
    // with room left, may have committed before), the writer keeps retrying
    // the same batch and acks nothing.
    let acked_while_failing = acked(service);
    let failed = errors(service, kind);
    assert!(
        wait_for(LONG, || errors(service, kind) >= failed + 2.0),
        "the writer stopped retrying; log: {}",
        service.log()
    );
    assert_eq!(
        acked(service),
        acked_while_failing,
        "entries were acked while postgres could not write"
    );
    let db = env.db().await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await,
        0
    );
    fault_ends.await;
    all_stored_without_dead_letters(env, service, 20, kind).await;
    service.wait_ready(LONG);
    report_figure(&format!(
        "postgres {kind}: {} failed attempts counted, 0 acked while failing, 0 dead letters, all 20 traces stored after",
        errors(service, kind)
    ));
}

/// Once a fault has ended: every one of the `traces` seed traces stored
/// (3 ended observations each), and none of their entries a dead letter.
async fn all_stored_without_dead_letters(
    env: &TestEnv,
    service: &Service,
    traces: usize,
    fault: &str,
) {
    let db = env.db().await;
    assert!(
        wait_for_ended_observations(&db, traces * 3, LONG).await,
        "not everything stored after the {fault} fault; log: {}",
        service.log()
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await,
        0,
        "the {fault} fault caused dead letters"
    );
}

/// Another session holding the studio's observations table until it rolls
/// back: every write of an observation waits.
async fn lock_observations(env: &TestEnv) -> tokio_postgres::Client {
    let locker = env.db().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE public.observations IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    locker
}

/// Stores ten traces and waits until they are acked.
async fn warm_up(tenant: &Tenant, service: &Service) {
    service.wait_ready(LONG);
    let mut redis = tenant.env.redis();
    tenant.env.publish_traces(&mut redis, 0..10);
    assert!(wait_for(LONG, || acked(service) >= 70.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_database_retries_unready_and_loses_nothing() {
    let tenant = Tenant::new("pg_read_only").await;
    let service = tenant.spawn("ro", &[]);
    warm_up(&tenant, &service).await;
    // A failover to a replica, as the service sees it: every session ends
    // and the new ones are read-only.
    tenant
        .sql("ALTER ROLE ROLE_ SET default_transaction_read_only = on")
        .await;
    tenant.terminate_sessions().await;
    cannot_write_then_recover(&tenant.env, &service, "read_only", async {
        let body = service.get("/readyz").map(|(_, b)| b).unwrap_or_default();
        assert!(body.contains("\"postgres\":false"), "{body}");
        tenant
            .sql("ALTER ROLE ROLE_ RESET default_transaction_read_only")
            .await;
        tenant.terminate_sessions().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_connections_retries_unready_and_loses_nothing() {
    let tenant = Tenant::new("pg_conn_limit").await;
    let service = tenant.spawn("conns", &[]);
    warm_up(&tenant, &service).await;
    // 53300 as max_connections gives it, confined to the role.
    tenant.sql("ALTER ROLE ROLE_ CONNECTION LIMIT 0").await;
    tenant.terminate_sessions().await;
    cannot_write_then_recover(&tenant.env, &service, "too_many_connections", async {
        tenant.sql("ALTER ROLE ROLE_ CONNECTION LIMIT -1").await;
    })
    .await;
}

/// Servers of this test's own (`scripts/services.sh up`), for a fault that
/// could take the shared Postgres down with it: a tablespace on a tmpfs that
/// fills up. Purged when dropped, then the tmpfs is unmounted (in that order:
/// a Postgres that lost a tablespace directory PANICs at its next checkpoint
/// and cannot even replay its WAL).
struct PrivateServers {
    dir: PathBuf,
    env: Vec<(String, String)>,
    tiny_disk: Option<PathBuf>,
}

impl PrivateServers {
    fn up(name: &str) -> Self {
        let suffix: u32 = rand::random();
        let dir = PathBuf::from(format!("/tmp/{name}-{suffix:08x}"));
        let status = Command::new("scripts/services.sh")
            .arg("up")
            .arg(&dir)
            .status()
            .expect("run services.sh");
        assert!(status.success(), "services.sh up {}", dir.display());
        let text = std::fs::read_to_string(dir.join("env")).unwrap();
        let env = text
            .split_whitespace()
            .filter_map(|word| word.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self {
            dir,
            env,
            tiny_disk: None,
        }
    }

    fn var(&self, name: &str) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} in {}/env", self.dir.display()))
    }

    /// A 2 MiB tmpfs owned by postgres; None where mounting is not allowed.
    fn mount_tiny_disk(&mut self) -> Option<PathBuf> {
        let disk = self.dir.join("tiny");
        std::fs::create_dir_all(&disk).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs"])
            .arg(&disk)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !mounted {
            return None;
        }
        self.tiny_disk = Some(disk.clone());
        let owned = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&disk)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(owned, "chown the tiny disk to postgres");
        Some(disk)
    }
}

impl Drop for PrivateServers {
    fn drop(&mut self) {
        let _ = Command::new("scripts/services.sh")
            .arg("down")
            .arg(&self.dir)
            .status();
        if let Some(disk) = &self.tiny_disk {
            let _ = Command::new("umount").arg(disk).status();
        }
        let _ = Command::new("scripts/services.sh")
            .arg("purge")
            .arg(&self.dir)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_retries_unready_and_loses_nothing() {
    let mut servers = PrivateServers::up("pgerr-disk");
    let Some(disk) = servers.mount_tiny_disk() else {
        // Mounting needs CAP_SYS_ADMIN; say so loudly rather than pass quietly.
        eprintln!("SKIPPED disk_full: cannot mount a tmpfs here");
        report_figure("postgres disk_full: SKIPPED (no tmpfs mount allowed)");
        return;
    };
    let admin_url = servers.var("DATABASE_URL");
    let admin = connect(&admin_url).await;
    admin
        .batch_execute("CREATE DATABASE disk_full")
        .await
        .unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    let env = TestEnv {
        name: "pg_disk_full".into(),
        redis_url: servers.var("OBSERVABILITY_REDIS_URL"),
        database_url: format!("{base}/disk_full"),
        stream: "test:disk_full".into(),
        group: "group-disk-full".into(),
    };
    let service = env.spawn("disk", &[]);
    service.wait_ready(LONG);
    let mut redis = env.redis();
    env.publish_traces(&mut redis, 0..10);
    assert!(wait_for(LONG, || acked(&service) >= 70.0));

    let db = env.db().await;
    db.batch_execute(&format!(
        "CREATE TABLESPACE tiny LOCATION '{}'",
        disk.display()
    ))
    .await
    .unwrap();
    // New rows need new pages (fillfactor 10), and a filler takes every page
    // the disk has left.
    db.batch_execute(
        "ALTER TABLE public.observations SET TABLESPACE tiny;
         ALTER TABLE public.observations SET (fillfactor = 10);
         CREATE TABLE filler (x text) TABLESPACE tiny;
         ALTER TABLE filler ALTER x SET STORAGE PLAIN;",
    )
    .await
    .unwrap();
    let filled = db
        .batch_execute(
            "INSERT INTO filler SELECT repeat(md5(i::text), 100) FROM generate_series(1, 100000) i",
        )
        .await
        .expect_err("the disk fills up");
    assert_eq!(filled.code().map(|c| c.code()), Some("53100"), "{filled:?}");
    cannot_write_then_recover(&env, &service, "disk_full", async {
        // Space freed, as an operator would.
        db.batch_execute("DROP TABLE filler").await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_exhausted_retries_unready_and_loses_nothing() {
    // The server's own limit, on servers of the test's own: other clients
    // hold every slot but the superuser-reserved ones.
    let servers = PrivateServers::up("pgerr-conns");
    let admin_url = servers.var("DATABASE_URL");
    let admin = connect(&admin_url).await;
    // One statement a call: CREATE DATABASE refuses a transaction block.
    for sql in [
        "CREATE ROLE ingest LOGIN",
        "CREATE DATABASE conns OWNER ingest",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    let env = TestEnv {
        name: "pg_max_connections".into(),
        redis_url: servers.var("OBSERVABILITY_REDIS_URL"),
        // The test's own checks connect as the superuser; the service as
        // `ingest`, which the full server refuses.
        database_url: format!("{base}/conns"),
        stream: "test:max_connections".into(),
        group: "group-max-connections".into(),
    };
    let role_url = env.database_url.replacen("postgres@", "ingest@", 1);
    let service = env.spawn("conns", &[("DATABASE_URL", role_url.as_str())]);
    service.wait_ready(LONG);
    let mut redis = env.redis();
    env.publish_traces(&mut redis, 0..10);
    assert!(wait_for(LONG, || acked(&service) >= 70.0));

    let setting = |name: &'static str| {
        let admin = &admin;
        async move {
            let row = admin
                .query_one(&format!("SELECT current_setting('{name}')::int"), &[])
                .await
                .unwrap();
            row.get::<_, i32>(0) as i64
        }
    };
    let open_to_others =
        setting("max_connections").await - setting("superuser_reserved_connections").await;
    let in_use = || async {
        count(
            &admin,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
        )
        .await
    };
    let service_sessions = || async {
        count(
            &admin,
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'ingest'",
        )
        .await
    };
    // Fill every slot open to non-superusers, end the service's sessions,
    // and fill again until the service holds none: its reconnects are
    // refused with 53300, as on a server whose clients took every slot.
    let mut fillers = Vec::new();
    for _ in 0..20 {
        while in_use().await < open_to_others {
            fillers.push(connect(&admin_url).await);
        }
        if service_sessions().await == 0 {
            break;
        }
        admin
            .batch_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'ingest'",
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(service_sessions().await, 0, "the service kept a connection");
    let held = fillers.len();
    cannot_write_then_recover(&env, &service, "too_many_connections", async {
        fillers.clear();
    })
    .await;
    report_figure(&format!(
        "max_connections: the {open_to_others} slots open to non-superusers held by {held} other sessions and the test's own"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeouts_split_then_retry_without_dead_letters() {
    let tenant = Tenant::new("pg_stmt_timeout").await;
    tenant
        .sql("ALTER ROLE ROLE_ SET statement_timeout = '500ms'")
        .await;
    let service = tenant.spawn("timeout", &[]);
    warm_up(&tenant, &service).await;
    // Another session holds a lock on the studio's observations: every
    // merge of an observation waits past the role's statement_timeout, and
    // since no observation can be stored, no entry is the one at fault.
    let locker = lock_observations(&tenant.env).await;
    cannot_write_then_recover(&tenant.env, &service, "statement_timeout", async {
        locker.batch_execute("ROLLBACK").await.unwrap();
    })
    .await;
}

/// A held lock stops every entry of a kind, and the service must say so
/// (unready, counted) after a few timeouts whatever the batch's size. It
/// used to split the whole batch down to single entries first, one
/// statement_timeout per subset (2N − 1 for a batch of N): a 69-entry batch
/// stayed "ready" for over a minute at 500 ms, a full one of 128 for over
/// two hours at a 30 s statement_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_is_reported_after_a_few_timeouts_whatever_the_batch() {
    let tenant = Tenant::new("pg_held_lock").await;
    tenant
        .sql("ALTER ROLE ROLE_ SET statement_timeout = '300ms'")
        .await;
    let first = tenant.spawn("held", &[]);
    warm_up(&tenant, &first).await;
    drop(first);
    let locker = lock_observations(&tenant.env).await;
    // Waiting while stopped, the backlog is read in full pages.
    let mut redis = tenant.env.redis();
    tenant.env.publish_backlog(
        &mut redis,
        (10..40).flat_map(|t| seed_trace(&format!("trace-{t}"), "p")),
    );
    let service = tenant.spawn("held-again", &[]);
    // Unready also while starting: the write must have failed first.
    let reported = wait_for(LONG, || {
        errors(&service, "statement_timeout") >= 1.0 && unready(&service)
    });
    let timeouts = errors(&service, "statement_timeout");
    assert!(
        reported,
        "still ready after a minute behind a held lock ({timeouts} timeouts); log: {}",
        service.log()
    );
    // Per writer and round: the batch, two entries tried alone, the round's
    // error; two writers, and a retry that may have begun.
    assert!(
        timeouts <= 12.0,
        "{timeouts} statement timeouts before the held lock was reported"
    );
    assert_eq!(acked(&service), 0.0, "acked while nothing could be stored");
    locker.batch_execute("ROLLBACK").await.unwrap();
    all_stored_without_dead_letters(&tenant.env, &service, 40, "held lock").await;
    report_figure(&format!(
        "held lock, 210 entries waiting: unready after {timeouts} statement timeouts, 0 dead letters"
    ));
}

/// Ids are the studio's keys: a trace id reused by another project stays
/// the row of the project stored first (the oldest event's, by publish time
/// then entry id, when both arrive together), and the other project's
/// events are dead letters `project_mismatch`, whichever comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_reusing_ids_keep_the_first_projects_rows_and_dead_letter_the_others() {
    let env = TestEnv::new("project_ids").await;
    let service = env.spawn("tenancy", &[]);
    service.wait_ready(LONG);
    let mut redis = env.redis();
    // The intruder's events arrive first for one trace and last for the other.
    let intruder = |trace: &str| {
        seed_trace(trace, "project-b").into_iter().map(|mut event| {
            for (k, v) in event.iter_mut() {
                if k == "data" {
                    *v = v.replace("chat", "intruder").replace("user-1", "user-b");
                }
            }
            event
        })
    };
    // Each step is stored before the next is published: with two consumers,
    // entries published a moment apart can reach the writer in either order,
    // and "first" means first stored.
    let db = env.db().await;
    let ended = |trace: &'static str| {
        let db = &db;
        async move {
            count(
                db,
                &format!(
                    "SELECT count(*) FROM public.observations
                     WHERE trace_id = '{trace}' AND end_time IS NOT NULL"
                ),
            )
            .await
                == 3
        }
    };
    env.publish_each(&mut redis, intruder("shared-1"));
    assert!(
        wait_for_async(LONG, || ended("shared-1")).await,
        "log: {}",
        service.log()
    );
    env.publish_each(
        &mut redis,
        ["shared-1", "shared-2"]
            .into_iter()
            .flat_map(|trace| seed_trace(trace, "project-a")),
    );
    assert!(
        wait_for_async(LONG, || ended("shared-2")).await,
        "log: {}",
        service.log()
    );
    env.publish_each(&mut redis, intruder("shared-2"));
    let settled = wait_for_async(LONG, || async {
        count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await == 14
            && count(
                &db,
                "SELECT count(*) FROM public.observations WHERE end_time IS NOT NULL",
            )
            .await
                == 6
    })
    .await;
    assert!(settled, "log: {}", service.log());
    for (trace, owner, name, user, refused) in [
        ("shared-1", "project-b", "intruder", "user-b", "project-a"),
        ("shared-2", "project-a", "chat", "user-1", "project-b"),
    ] {
        let rows = db
            .query(
                "SELECT project_id, name, user_id FROM public.traces WHERE id = $1",
                &[&trace],
            )
            .await
            .unwrap();
        let rows: Vec<(String, String, String)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert_eq!(rows, [(owner.into(), name.into(), user.into())], "{trace}");
        // Its observations are the owner's: their start and end both came
        // from the owner's events (the intruder's error is not there).
        let observations = db
            .query(
                "SELECT o.id, t.project_id, s.project_id, o.level
                 FROM public.observations o
                 JOIN public.traces t ON t.id = o.trace_id
                 JOIN swisper_ingest.observation_state s ON s.id = o.id
                 WHERE o.trace_id = $1 ORDER BY o.id",
                &[&trace],
            )
            .await
            .unwrap();
        let observations: Vec<(String, String, String, String)> = observations
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        assert_eq!(
            observations,
            [
                (
                    format!("{trace}-child"),
                    owner.into(),
                    owner.into(),
                    "DEFAULT".into()
                ),
                (
                    format!("{trace}-grandchild"),
                    owner.into(),
                    owner.into(),
                    "ERROR".into()
                ),
                (
                    format!("{trace}-root"),
                    owner.into(),
                    owner.into(),
                    "DEFAULT".into()
                ),
            ],
            "{trace}"
        );
        assert_eq!(
            count(
                &db,
                &format!(
                    "SELECT count(*) FROM swisper_ingest.trace_state
                     WHERE id = '{trace}' AND project_id = '{owner}'"
                )
            )
            .await,
            1
        );
        // Every event of the other project is a dead letter, kept whole.
        let letters = db
            .query(
                "SELECT reason_code, reason, fields @> jsonb_build_array(jsonb_build_array('project_id', $2::text))
                 FROM swisper_ingest.dead_letters WHERE trace_id = $1",
                &[&trace, &refused],
            )
            .await
            .unwrap();
        assert_eq!(letters.len(), 7, "{trace}");
        for letter in &letters {
            assert_eq!(letter.get::<_, String>(0), "project_mismatch");
            assert!(
                letter.get::<_, String>(1).contains(owner),
                "{}",
                letter.get::<_, String>(1)
            );
            assert!(letter.get::<_, bool>(2), "the refused project's entry");
        }
    }
    assert_eq!(
        service
            .metric("swisper_ingest_dead_letters_total{reason=\"project_mismatch\"}")
            .unwrap_or(0.0),
        14.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_session_id_is_stored_truncated_and_heartbeat_series_are_capped() {
    let env = TestEnv::new("long_text").await;
    let service = env.spawn("bounds", &[("OBSERVABILITY_SDK_HEARTBEAT_SERIES", "3")]);
    service.wait_ready(LONG);
    let mut redis = env.redis();
    // Random text does not compress: Postgres would refuse it in the btree.
    let session: String = (0..6000)
        .map(|i| char::from(b'a' + ((i * 7919 + i / 3) % 26) as u8))
        .collect();
    let ts = now_ts();
    let data = serde_json::json!({"name": "chat", "session_id": session}).to_string();
    env.publish(
        &mut redis,
        &[
            ("event_type", "trace_start"),
            ("trace_id", "long-session"),
            ("project_id", "p"),
            ("timestamp", &ts),
            ("data", &data),
        ],
    );
    for project in 0..5 {
        let data =
            serde_json::json!({"project_id": format!("hb-{project}"), "sdk_version": "0.14.3"})
                .to_string();
        env.publish(
            &mut redis,
            &[
                ("event_type", "heartbeat"),
                ("timestamp", &ts),
                ("data", &data),
            ],
        );
    }
    let db = env.db().await;
    let stored = wait_for_count(
        &db,
        "SELECT count(*) FROM traces WHERE id = 'long-session'",
        1,
        LONG,
    )
    .await;
    assert!(stored, "trace not stored; log: {}", service.log());
    let row = db
        .query_one(
            "SELECT session_id, meta->'_ingest_repairs' FROM public.traces WHERE id = 'long-session'",
            &[],
        )
        .await
        .unwrap();
    let stored_session: String = row.get(0);
    assert_eq!(stored_session, session[..1024]);
    let repairs: serde_json::Value = row.get(1);
    assert_eq!(
        repairs,
        serde_json::json!(["data.session_id truncated from 6000 to 1024 bytes (indexed column)"])
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await,
        0
    );
    // Five projects heard, three series exported.
    let series = |service: &Service| {
        service
            .get("/metrics")
            .map(|(_, text)| {
                text.lines()
                    .filter(|l| l.starts_with("swisper_ingest_sdk_heartbeat_age_seconds{"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(
        wait_for(LONG, || count_heartbeats(&service) && series(&service) == 3),
        "expected 3 heartbeat series; log: {}",
        service.log()
    );
    let (_, text) = service.get("/metrics").unwrap();
    for name in [
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
}

fn count_heartbeats(service: &Service) -> bool {
    service
        .metric("swisper_ingest_events_total{event_type=\"heartbeat\",outcome=\"heartbeat\"}")
        .unwrap_or(0.0)
        >= 5.0
}

/// A pgbouncer in transaction mode in front of the shared Postgres, run by
/// this test (as the postgres user: pgbouncer refuses root).
struct Pgbouncer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Pgbouncer {
    fn start(pg_port: u16) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("pgbouncer-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host=127.0.0.1 port={pg_port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
                 default_pool_size = 2\nmax_client_conn = 200\n\
                 ignore_startup_parameters = extra_float_digits\n",
                users = dir.join("users.txt").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("pgbouncer.log")).unwrap();
        let child = Command::new("pgbouncer")
            .arg("-u")
            .arg("postgres")
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("pgbouncer is installed (scripts/test.sh installs it)");
        let up = wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "pgbouncer did not start: {}", Self::log_of(&dir));
        Self { child, port, dir }
    }

    fn log_of(dir: &std::path::Path) -> String {
        std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_in_transaction_mode_works_and_survives_a_reset() {
    let env = TestEnv::new("pgbouncer").await;
    let pg_port: u16 = std::env::var("PG_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .or_else(|| {
            let url = std::env::var("DATABASE_URL").ok()?;
            url.rsplit_once(':')?.1.split('/').next()?.parse().ok()
        })
        .expect("the Postgres port");
    let bouncer = Pgbouncer::start(pg_port);
    let url = env
        .database_url
        .replacen(&format!(":{pg_port}/"), &format!(":{}/", bouncer.port), 1);
    let service = env.spawn(
        "bounced",
        &[
            ("DATABASE_URL", url.as_str()),
            ("OBSERVABILITY_DB_POOL_SIZE", "4"),
        ],
    );
    // Two replicas migrating at once through the pooler: the lock holds.
    let second = env.spawn("bounced-2", &[("DATABASE_URL", url.as_str())]);
    service.wait_ready(LONG);
    second.wait_ready(LONG);
    drop(second);
    let mut redis = env.redis();
    env.publish_traces(&mut redis, 0..20);
    let db = env.db().await;
    assert!(
        wait_for_ended_observations(&db, 60, LONG).await,
        "not stored through pgbouncer; log: {}\npgbouncer: {}",
        service.log(),
        Pgbouncer::log_of(&bouncer.dir)
    );
    // A pooler reset: pgbouncer's server connections end, the new ones are
    // fresh sessions, yet the service's client sessions live on.
    let database = env.database_url.rsplit_once('/').unwrap().1.to_owned();
    let admin = connect(&std::env::var("DATABASE_URL").unwrap()).await;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&database],
        )
        .await
        .unwrap();
    env.publish_traces(&mut redis, 20..60);
    // Our own direct session ended too.
    let db = env.db().await;
    assert!(
        wait_for_ended_observations(&db, 180, LONG).await,
        "not stored after the pooler reset; log: {}",
        service.log()
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await,
        0
    );
    service.wait_ready(LONG);
    report_figure(&format!(
        "pgbouncer transaction mode (2 server connections, pool of 4): 60 traces stored, 0 dead letters, {} unavailable retries after a reset",
        errors(&service, "unavailable")
    ));
}
