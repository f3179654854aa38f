//! Telemetry shared by every leadpipe service: logs, trace context, metrics exposition and the
//! shutdown signal.
//!
//! # Layout
//! - [`init`]: JSON (or pretty, for local use) logs with `RUST_LOG` overriding the default.
//! - [`traceparent`]: W3C `traceparent` values carried in HTTP and AMQP headers.
//! - [`otel`]: OTLP export of the journey's spans when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! - [`metrics`]: Prometheus text exposition of a service's own registry.
//! - [`shutdown`]: a token cancelled on SIGINT or SIGTERM.

#![forbid(unsafe_code)]

pub mod metrics;
pub mod otel;
pub mod shutdown;
pub mod traceparent;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line: the default, for anything that ships logs.
    Json,
    /// Human-readable lines, for a terminal.
    Pretty,
}

impl LogFormat {
    /// Reads `LOG_FORMAT` (`json`, the default, or `pretty`).
    pub fn from_env() -> Self {
        match std::env::var("LOG_FORMAT").as_deref() {
            Ok("pretty") | Ok("text") => Self::Pretty,
            _ => Self::Json,
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides `default_filter` (e.g. `info`).
/// Calling it twice (as tests do) keeps the first subscriber.
pub fn init(service: &'static str, default_filter: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().compact()).try_init(),
    };
    if result.is_ok() {
        tracing::info!(service, "telemetry initialised");
    }
}
