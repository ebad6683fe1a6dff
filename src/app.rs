//! Startup and shutdown: the seam shared by `main` and the tests.
//!
//! Start: HTTP first (so probes answer while dependencies come up), then
//! migrations, Redis, the consumer group and the actors, each retried with
//! backoff. Stop: readiness off, consumers stop reading, the writer commits
//! and acks what is in hand, then HTTP stops.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;

use crate::actors::supervisor::{Drain, Supervisor};
use crate::actors::Shared;
use crate::backoff::Backoff;
use crate::config::ServeSettings;
use crate::connect::postgres::PgTarget;
use crate::connect::problem::{self, Problem};
use crate::connect::redis::{ConnectionManager, RedisTarget};
use crate::health::Health;
use crate::http::{self, HttpState};
use crate::once_log::OnceLog;
use crate::store::{self, migrate};
use crate::write_path::Studio;
use crate::{metrics as m, redis_stream};

/// Runs the service until `shutdown` resolves, then drains within the
/// configured budget. Must run inside an actix System.
pub async fn serve(
    settings: ServeSettings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    settings.validate()?;
    let settings = Arc::new(settings);
    let prometheus = m::install();
    let health = Health::new();
    let (server, bound) = http::server(
        settings.http.addr,
        HttpState {
            health: health.clone(),
            prometheus: prometheus.clone(),
            group: settings.pipeline.group.clone(),
            stall_timeout: settings.http.stall_timeout(),
            lagging_threshold: settings.http.lagging_threshold,
        },
    )
    .with_context(|| {
        format!(
            "cannot listen on OBSERVABILITY_HTTP_ADDR {}",
            settings.http.addr
        )
    })?;
    let http = server.handle();
    actix_rt::spawn(server);
    tracing::info!(addr = %bound, "http listening");

    tokio::pin!(shutdown);
    let supervisor = tokio::select! {
        started = start_pipeline(settings.clone(), health.clone(), prometheus) => started?,
        () = &mut shutdown => {
            tracing::info!("shutdown before the pipeline started");
            http.stop(true).await;
            return Ok(());
        }
    };
    shutdown.await;
    tracing::info!(
        budget_secs = settings.pipeline.shutdown_timeout().as_secs(),
        "shutting down: draining"
    );
    let drained =
        tokio::time::timeout(settings.pipeline.shutdown_timeout(), supervisor.send(Drain)).await;
    http.stop(true).await;
    match drained {
        Ok(_) => {
            tracing::info!("drained; every entry in hand is stored and acked");
            Ok(())
        }
        // Exit non-zero, so that an orchestrator or an operator sees that
        // this stop left work behind (nothing is lost: it stays pending).
        Err(_) => Err(anyhow::anyhow!(
            "drain budget of {} s (OBSERVABILITY_SHUTDOWN_TIMEOUT_SECS) ran out with entries still in hand; \
             they stay pending and another replica claims them",
            settings.pipeline.shutdown_timeout().as_secs()
        )),
    }
}

async fn start_pipeline(
    settings: Arc<ServeSettings>,
    health: Arc<Health>,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<Addr<Supervisor>> {
    let pg = settings.database.target()?;
    let redis = settings.redis.target()?;
    settings.redis.warn_if_insecure();
    tracing::info!(
        postgres = %pg.shown,
        sslmode = %pg.mode,
        redis = %settings.redis.url,
        redis_tls = ?redis.verification,
        "connecting"
    );
    connect_postgres(&pg).await?;
    if !settings.skip_migrations {
        apply_migrations(&pg).await?;
    }
    let pools = store::Pools::new(
        &pg,
        settings.database.db_pool_size,
        settings.pipeline.writers,
    )?;
    let control = connect_redis(&redis).await?;
    create_group(&control, &redis, &settings).await?;
    health.set_redis(true);
    health.set_group(true);
    let shared = Shared {
        settings: settings.clone(),
        health,
        redis: redis.clone(),
        horizons: Arc::new(crate::retention::Horizons::new(&settings.retention)),
        studio: Arc::new(
            Studio::new(
                settings.database.create_projects,
                settings.database.price_refresh(),
            )
            .with_toast_compression(settings.database.toast_compression),
        ),
    };
    Ok(Supervisor::new(shared, pools, control, prometheus).start())
}

/// One connection first, with or without migrations: TLS, certificate and
/// password problems surface here as one clear error, before the pool.
async fn connect_postgres(pg: &PgTarget) -> anyhow::Result<()> {
    retry("connect to postgres", || async {
        match pg.connect().await {
            Ok(_) => Ok(Ok::<_, std::convert::Infallible>(())),
            Err(error) => {
                metrics::counter!(m::POSTGRES_ERRORS, "kind" => "unavailable").increment(1);
                Err(pg.explain(&error))
            }
        }
    })
    .await?;
    Ok(())
}

/// Unreachable Postgres is retried; a failing migration is fatal.
async fn apply_migrations(pg: &PgTarget) -> anyhow::Result<()> {
    retry("apply migrations", || async {
        match migrate::run(pg).await {
            Ok(applied) => {
                tracing::info!(?applied, "migrations applied");
                Ok(Ok(()))
            }
            Err(migrate::MigrateError::Migration(e)) => Ok(Err(e)),
            Err(migrate::MigrateError::Connect(e)) => Err(pg.explain(&e)),
            Err(other) => Err(Problem::transient(other.to_string())),
        }
    })
    .await
    .context("migrations failed")
}

/// The connection shared by the claimer, the writers and the lag monitor.
async fn connect_redis(redis: &RedisTarget) -> anyhow::Result<ConnectionManager> {
    let control = retry("connect to redis", || async {
        ConnectionManager::connect(redis)
            .await
            .map(Ok::<_, std::convert::Infallible>)
            .map_err(|e| {
                metrics::counter!(m::REDIS_ERRORS, "operation" => "connect").increment(1);
                problem::redis(&e, redis.verification)
            })
    })
    .await?;
    Ok(control)
}

/// The stream and its consumer group, created when missing.
async fn create_group(
    control: &ConnectionManager,
    redis: &RedisTarget,
    settings: &ServeSettings,
) -> anyhow::Result<()> {
    retry("create the consumer group", || async {
        let mut conn = control.clone();
        redis_stream::ensure_group(
            &mut conn,
            &settings.pipeline.stream,
            &settings.pipeline.group,
        )
        .await
        .map(Ok::<_, std::convert::Infallible>)
        .map_err(|e| match &e {
            redis_stream::StreamError::Redis(e) => problem::redis(e, redis.verification),
            other => Problem::transient(other.to_string()),
        })
    })
    .await?;
    Ok(())
}

/// Retries `attempt` while it fails with a transient error (the outer `Err`),
/// with backoff; an inner `Err` is final. The same problem is logged once
/// (error level when a setting must change), then at debug.
async fn retry<T, E, F, Fut>(what: &str, mut attempt: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Result<T, E>, Problem>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let log = OnceLog::default();
    loop {
        match attempt().await {
            Ok(result) => return result,
            Err(problem) => {
                log.report(what, &problem);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("can install a SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
