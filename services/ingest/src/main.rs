//! `ingest`: loads settings, starts telemetry, serves until SIGINT/SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use leadpipe_ingest::{Application, Settings};
use leadpipe_telemetry::LogFormat;

#[tokio::main]
async fn main() -> ExitCode {
    leadpipe_telemetry::init("ingest", "info", LogFormat::from_env());
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            eprintln!("ingest: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match leadpipe_telemetry::otel::init("ingest") {
        Ok(true) => tracing::info!("exporting spans over OTLP"),
        Ok(false) => {}
        Err(e) => {
            eprintln!("ingest: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    }
    let shutdown = leadpipe_telemetry::shutdown::on_signal();
    let app = match Application::build(settings, shutdown.clone()).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error.cause_chain = ?e, error.message = %e, "ingest failed to start");
            eprintln!("ingest: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let publisher = app.state().publisher.clone();
    tokio::spawn(async move {
        if !publisher.wait_ready(Duration::from_secs(5)).await {
            tracing::warn!(
                "RabbitMQ is not reachable yet (check AMQP_URL); answering 503 until it is"
            );
        }
    });
    let stopped = app.run_until_stopped(shutdown).await;
    // Spans still buffered are exported before the process ends.
    let _ = tokio::task::spawn_blocking(leadpipe_telemetry::otel::shutdown).await;
    match stopped {
        Ok(()) => {
            tracing::info!("ingest stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error.cause_chain = ?e, error.message = %e, "ingest stopped on error");
            ExitCode::FAILURE
        }
    }
}
