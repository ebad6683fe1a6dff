//! HTTP: liveness, readiness, Prometheus metrics and the seed's JSON status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{get, web, App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::health::Health;

/// What the handlers read.
pub struct HttpState {
    pub health: Arc<Health>,
    pub prometheus: PrometheusHandle,
    pub group: String,
    pub stall_timeout: Duration,
    /// Lag plus pending above which the status says "lagging".
    pub lagging_threshold: u64,
}

/// Binds and returns the server (not yet polled) and its bound address.
/// Signals are ours, not actix-web's: its own handling would stop the actor
/// system before the pipeline drains.
pub fn server(addr: SocketAddr, state: HttpState) -> std::io::Result<(Server, SocketAddr)> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .service(healthz)
            .service(readyz)
            .service(metrics_text)
            .service(observability_metrics)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(5)
    .bind(addr)?;
    let bound = server.addrs().first().copied().unwrap_or(addr);
    Ok((server.run(), bound))
}

#[get("/healthz")]
async fn healthz(state: web::Data<HttpState>) -> HttpResponse {
    match state.health.stalled_for(state.stall_timeout) {
        None => HttpResponse::Ok().json(json!({ "live": true })),
        Some(stalled) => HttpResponse::ServiceUnavailable().json(json!({
            "live": false,
            "reason": "entries are waiting but nothing was committed",
            "stalled_for_seconds": stalled.as_secs(),
        })),
    }
}

#[get("/readyz")]
async fn readyz(state: web::Data<HttpState>) -> HttpResponse {
    let readiness = state.health.readiness();
    if readiness.ready {
        HttpResponse::Ok().json(readiness)
    } else {
        HttpResponse::ServiceUnavailable().json(readiness)
    }
}

#[get("/metrics")]
async fn metrics_text(state: web::Data<HttpState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(format!(
            "{}{}{}",
            state.prometheus.render(),
            crate::bounds::render_heartbeat_ages(&state.health.sdk_heartbeat_ages()),
            crate::process_metrics::render()
        ))
}

/// The seed's endpoint. `status` is "lagging" when this group's lag plus
/// pending entries pass the threshold (the seed used the stream length, which
/// producers keep near MAXLEN even when nothing waits).
#[get("/api/v1/observability/metrics")]
async fn observability_metrics(state: web::Data<HttpState>) -> HttpResponse {
    let Some(group_state) = state.health.group_state() else {
        return HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "unknown", "reason": "no reading of the stream yet" }));
    };
    let ours = group_state.group(&state.group);
    let waiting = ours.map(|g| g.lag.unwrap_or(0) + g.pending).unwrap_or(0);
    let status = if ours.is_some() && waiting < state.lagging_threshold {
        "healthy"
    } else {
        "lagging"
    };
    HttpResponse::Ok().json(json!({
        "stream_length": group_state.stream_length,
        "consumer_groups": group_state.groups,
        "status": status,
        "lag": ours.and_then(|g| g.lag),
        "pending": group_state.pending,
        "oldest_pending_id": group_state.oldest_pending,
    }))
}
