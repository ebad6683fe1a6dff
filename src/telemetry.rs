//! Logs and spans: the `tracing` subscriber (text or JSON log lines, each
//! carrying the spans it was written in) and, when the standard
//! OpenTelemetry variables ask for it, an OTLP/HTTP exporter of the
//! service's spans ([`crate::batch_span`]).
//!
//! Span export is off unless an endpoint is set (or `OTEL_TRACES_EXPORTER`
//! is `otlp`): then no exporter, no background thread. When on, spans are
//! batched by the SDK's processor on a thread of its own and sent over
//! HTTP; a collector that is down costs spans, never ingestion. Settings
//! this build cannot honour (gRPC, another exporter) are logged and leave
//! export off rather than stopping the service.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, Registry};

/// `service.name` unless `OTEL_SERVICE_NAME` (or `OTEL_RESOURCE_ATTRIBUTES`) says otherwise.
const SERVICE_NAME: &str = "swisper-ingest";
/// The OTLP/HTTP endpoint of the specification, when only the exporter is named.
const DEFAULT_ENDPOINT: &str = "http://localhost:4318";
/// What the spans of this crate are exported at; other crates' spans never are.
const EXPORTED: &str = "swisper_ingest";
/// How long the exit waits for the last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What the `OTEL_*` variables ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpanExport {
    /// No exporter: the default.
    Off,
    /// OTLP over HTTP to `endpoint` (the full URL, `/v1/traces` included).
    Otlp { endpoint: String, json: bool },
    /// Asked for, but not something this build does: said once, not exported.
    Unsupported(String),
}

impl SpanExport {
    /// Reads the standard variables through `var` (empty counts as unset).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Self::Off;
        }
        let endpoint = match var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(endpoint) => Some(endpoint),
            None => var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|base| format!("{}/v1/traces", base.trim_end_matches('/'))),
        };
        let exporters = var("OTEL_TRACES_EXPORTER").unwrap_or_default();
        let exporters: Vec<String> = exporters
            .split(',')
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect();
        let endpoint = match (exporters.as_slice(), endpoint) {
            ([], None) => return Self::Off,
            ([], Some(endpoint)) => endpoint,
            (names, endpoint) if names.iter().any(|name| name == "otlp") => {
                endpoint.unwrap_or_else(|| format!("{DEFAULT_ENDPOINT}/v1/traces"))
            }
            (names, _) if names.iter().all(|name| name == "none") => return Self::Off,
            (names, _) => {
                return Self::Unsupported(format!(
                    "OTEL_TRACES_EXPORTER={}: only otlp (or none) is supported",
                    names.join(",")
                ))
            }
        };
        let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".to_owned());
        match protocol.trim().to_ascii_lowercase().as_str() {
            "http/protobuf" => Self::Otlp {
                endpoint,
                json: false,
            },
            "http/json" => Self::Otlp {
                endpoint,
                json: true,
            },
            other => Self::Unsupported(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other}: this build exports over HTTP only \
                 (http/protobuf or http/json, the collector's port 4318)"
            )),
        }
    }
}

/// Flushes exported spans at exit; holds nothing when export is off.
#[must_use = "call shutdown at exit, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still buffered (waiting at most [`FLUSH_TIMEOUT`]),
    /// then stops the exporter's thread.
    pub fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        match provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
            Ok(()) => tracing::debug!("span exporter flushed"),
            Err(error) => tracing::warn!(%error, "span exporter: last spans not all sent"),
        }
    }
}

/// Installs the global subscriber: logs to stdout, or to stderr for
/// commands whose stdout is their report; spans exported when `spans` (the
/// service, not the one-shot commands) and the environment ask for it.
pub fn init(format: &str, to_stderr: bool, spans: bool) -> Telemetry {
    let export = if spans {
        SpanExport::from_env(|name| std::env::var(name).ok())
    } else {
        SpanExport::Off
    };
    let provider = match &export {
        SpanExport::Otlp { endpoint, json } => Some(provider(endpoint, *json)),
        _ => None,
    };
    let otel = provider.as_ref().and_then(|p| p.as_ref().ok()).map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(SERVICE_NAME))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_target(false)
            .with_filter(Targets::new().with_target(EXPORTED, Level::INFO))
    });
    tracing_subscriber::registry()
        .with(log_layer(format, to_stderr))
        .with(otel)
        .init();
    let provider = match (export, provider) {
        (SpanExport::Otlp { endpoint, json }, Some(Ok(provider))) => {
            let protocol = if json { "http/json" } else { "http/protobuf" };
            tracing::info!(%endpoint, protocol, "exporting spans over otlp");
            Some(provider)
        }
        (_, Some(Err(error))) => {
            tracing::error!(%error, "span export off: the otlp exporter cannot be built");
            None
        }
        (SpanExport::Unsupported(why), _) => {
            tracing::error!("span export off: {why}");
            None
        }
        _ => None,
    };
    Telemetry { provider }
}

/// Log lines: `RUST_LOG` (default `info`), text or JSON.
fn log_layer(
    format: &str,
    to_stderr: bool,
) -> Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = if to_stderr {
        BoxMakeWriter::new(std::io::stderr)
    } else {
        BoxMakeWriter::new(std::io::stdout)
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(false);
    if format == "json" {
        layer.json().with_filter(filter).boxed()
    } else {
        layer.with_filter(filter).boxed()
    }
}

/// The tracer provider with its batch processor (the background thread).
fn provider(
    endpoint: &str,
    json: bool,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let protocol = if json {
        Protocol::HttpJson
    } else {
        Protocol::HttpBinary
    };
    // The client of an https endpoint takes the process's TLS provider.
    crate::connect::crypto_provider();
    // Headers, timeout and compression come from their OTEL_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .with_protocol(protocol)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build())
}

/// `service.name` and `service.version`, then `OTEL_RESOURCE_ATTRIBUTES`,
/// then `OTEL_SERVICE_NAME`: the later wins.
fn resource() -> Resource {
    let builder = Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_service_name(SERVICE_NAME)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_detector(Box::new(EnvResourceDetector::new()));
    match std::env::var("OTEL_SERVICE_NAME") {
        Ok(name) if !name.trim().is_empty() => builder.with_service_name(name),
        _ => builder,
    }
    .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(vars: &[(&str, &str)]) -> SpanExport {
        SpanExport::from_env(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    fn otlp(endpoint: &str, json: bool) -> SpanExport {
        SpanExport::Otlp {
            endpoint: endpoint.to_owned(),
            json,
        }
    }

    #[test]
    fn off_without_an_endpoint() {
        assert_eq!(export(&[]), SpanExport::Off);
        assert_eq!(export(&[("OTEL_SERVICE_NAME", "x")]), SpanExport::Off);
        assert_eq!(
            export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]),
            SpanExport::Off
        );
    }

    #[test]
    fn endpoints_as_the_specification_reads_them() {
        let base = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")];
        assert_eq!(
            export(&base),
            otlp("http://collector:4318/v1/traces", false)
        );
        let both = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:9999/in",
            ),
        ];
        assert_eq!(export(&both), otlp("http://traces:9999/in", false));
        assert_eq!(
            export(&[("OTEL_TRACES_EXPORTER", "otlp")]),
            otlp("http://localhost:4318/v1/traces", false)
        );
    }

    #[test]
    fn none_and_disabled_win_over_an_endpoint() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert_eq!(
            export(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]),
            SpanExport::Off
        );
        assert_eq!(
            export(&[endpoint, ("OTEL_SDK_DISABLED", "true")]),
            SpanExport::Off
        );
    }

    #[test]
    fn protocols() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert_eq!(
            export(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]),
            otlp("http://c:4318/v1/traces", true)
        );
        let traces_first = [
            endpoint,
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ];
        assert_eq!(
            export(&traces_first),
            otlp("http://c:4318/v1/traces", false)
        );
        assert!(matches!(
            export(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
            SpanExport::Unsupported(_)
        ));
        assert!(matches!(
            export(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")]),
            SpanExport::Unsupported(_)
        ));
    }
}
