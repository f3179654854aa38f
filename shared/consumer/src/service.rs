//! The life of a sender binary, the same for every destination: announce `DRY_RUN`, build the
//! runtime around the adapter, consume until SIGINT/SIGTERM, and turn the result into the
//! process's exit code. Each sender's `main.rs` only loads its settings and calls [`run`].

use std::process::ExitCode;

use crate::{Adapter, RuntimeSettings, Sender};

/// Exit code of a service whose configuration is invalid (a named key or variable).
pub const EXIT_CONFIG: u8 = 2;

/// Reports an invalid configuration (log and stderr) and returns [`EXIT_CONFIG`].
pub fn config_error(service: &str, error: &dyn std::fmt::Display) -> ExitCode {
    tracing::error!(error = %error, "invalid configuration");
    eprintln!("{service}: invalid configuration: {error}");
    ExitCode::from(EXIT_CONFIG)
}

/// Says loudly that `DRY_RUN` is on and nothing will be sent to `destination`, naming what
/// would be `missing` to send for real.
pub fn announce_dry_run(service: &str, destination: &str, missing: &[&str]) {
    tracing::warn!(
        missing = ?missing,
        "DRY_RUN: nothing is sent to {destination}; each request is built and recorded in the delivery log"
    );
    eprintln!(
        "{service}: DRY_RUN — nothing will be sent to {destination}{}",
        if missing.is_empty() {
            String::new()
        } else {
            format!(" (also not set: {})", missing.join(", "))
        }
    );
}

/// Builds the sender and runs it until SIGINT/SIGTERM; returns the exit code.
pub async fn run<A: Adapter>(
    service: &'static str,
    runtime: RuntimeSettings,
    adapter: A,
) -> ExitCode {
    match leadpipe_telemetry::otel::init(service) {
        Ok(true) => tracing::info!("exporting spans over OTLP"),
        Ok(false) => {}
        Err(e) => return config_error(service, &e),
    }
    let shutdown = leadpipe_telemetry::shutdown::on_signal();
    let sender = match Sender::build(runtime, adapter, shutdown.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error.cause_chain = ?e, error.message = %e, "{service} failed to start");
            eprintln!("{service}: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(metrics_addr = %sender.metrics_addr(), "{service} started");
    let stopped = sender.run_until_stopped(shutdown).await;
    // Spans still buffered are exported before the process ends.
    let _ = tokio::task::spawn_blocking(leadpipe_telemetry::otel::shutdown).await;
    match stopped {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error.cause_chain = ?e, error.message = %e, "{service} stopped on error");
            ExitCode::FAILURE
        }
    }
}
