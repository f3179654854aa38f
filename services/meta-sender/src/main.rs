//! `meta-sender`: loads settings, starts telemetry, consumes until SIGINT/SIGTERM.

use std::process::ExitCode;

use leadpipe_consumer::Sender;
use leadpipe_meta_sender::MetaAdapter;
use leadpipe_meta_sender::cfg::Settings;
use leadpipe_telemetry::LogFormat;

#[tokio::main]
async fn main() -> ExitCode {
    leadpipe_telemetry::init("meta-sender", "info", LogFormat::from_env());
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            eprintln!("meta-sender: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if settings.dry_run {
        let missing: Vec<&str> = [
            ("META_PIXEL_ID", settings.pixel_id.is_none()),
            ("META_ACCESS_TOKEN", settings.access_token.is_none()),
        ]
        .into_iter()
        .filter_map(|(k, m)| m.then_some(k))
        .collect();
        tracing::warn!(
            missing = ?missing,
            "DRY_RUN: nothing is sent to Meta; each request is built and recorded in the delivery log"
        );
        eprintln!(
            "meta-sender: DRY_RUN — nothing will be sent to Meta{}",
            if missing.is_empty() {
                String::new()
            } else {
                format!(" ({} not set)", missing.join(", "))
            }
        );
    }
    let shutdown = leadpipe_telemetry::shutdown::on_signal();
    let runtime = settings.runtime.clone();
    let sender = match Sender::build(runtime, MetaAdapter::new(settings), shutdown.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error.cause_chain = ?e, error.message = %e, "meta-sender failed to start");
            eprintln!("meta-sender: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(metrics_addr = %sender.metrics_addr(), "meta-sender started");
    match sender.run_until_stopped(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error.cause_chain = ?e, error.message = %e, "meta-sender stopped on error");
            ExitCode::FAILURE
        }
    }
}
