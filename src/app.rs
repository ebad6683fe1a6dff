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
use redis::aio::ConnectionManagerConfig;

use crate::actors::supervisor::{Drain, Supervisor};
use crate::actors::Shared;
use crate::backoff::Backoff;
use crate::config::ServeSettings;
use crate::health::Health;
use crate::http::{self, HttpState};
use crate::store::{self, migrate};
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
        settings.http_addr,
        HttpState {
            health: health.clone(),
            prometheus: prometheus.clone(),
            group: settings.group.clone(),
            stall_timeout: Duration::from_secs(settings.stall_timeout_secs),
            lagging_threshold: settings.lagging_threshold,
        },
    )
    .with_context(|| {
        format!(
            "cannot listen on OBSERVABILITY_HTTP_ADDR {}",
            settings.http_addr
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
        budget_secs = settings.shutdown_timeout_secs,
        "shutting down: draining"
    );
    match tokio::time::timeout(settings.shutdown_timeout(), supervisor.send(Drain)).await {
        Ok(_) => tracing::info!("drained; every entry in hand is stored and acked"),
        Err(_) => tracing::warn!(
            "drain budget exceeded; unacked entries stay pending for another replica"
        ),
    }
    http.stop(true).await;
    Ok(())
}

async fn start_pipeline(
    settings: Arc<ServeSettings>,
    health: Arc<Health>,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<Addr<Supervisor>> {
    let pg_config = settings.database.pg_config()?;
    if !settings.skip_migrations {
        retry("apply migrations", || async {
            match migrate::run(&pg_config).await {
                Ok(applied) => {
                    tracing::info!(?applied, "migrations applied");
                    Ok(Ok(()))
                }
                // Unreachable Postgres is retried; a failing migration is fatal.
                Err(migrate::MigrateError::Migration(e)) => Ok(Err(e)),
                Err(other) => Err(other.to_string()),
            }
        })
        .await
        .context("migrations failed")?;
    }
    let pool = store::connect_pool(&settings.database)?;
    let redis = redis::Client::open(settings.redis_url.expose())?;
    let control = retry("connect to redis", || async {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        redis
            .get_connection_manager_with_config(config)
            .await
            .map(Ok::<_, std::convert::Infallible>)
            .map_err(|e| e.to_string())
    })
    .await?;
    retry("create the consumer group", || async {
        let mut conn = control.clone();
        redis_stream::ensure_group(&mut conn, &settings.stream, &settings.group)
            .await
            .map(Ok::<_, std::convert::Infallible>)
            .map_err(|e| e.to_string())
    })
    .await?;
    health.set_redis(true);
    health.set_group(true);
    let shared = Shared {
        settings: settings.clone(),
        health,
        redis,
        horizons: Arc::new(crate::retention::Horizons::new(&settings.retention)),
    };
    Ok(Supervisor::new(shared, pool, control, prometheus).start())
}

/// Retries `attempt` while it fails with a transient error (the outer `Err`),
/// with backoff; an inner `Err` is final.
async fn retry<T, E, F, Fut>(what: &str, mut attempt: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Result<T, E>, String>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match attempt().await {
            Ok(result) => return result,
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot {what} yet");
                tokio::time::sleep(delay).await;
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
