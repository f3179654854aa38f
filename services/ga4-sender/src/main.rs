//! `ga4-sender`: loads settings, starts telemetry, consumes until SIGINT/SIGTERM.

use std::process::ExitCode;

use leadpipe_consumer::service;
use leadpipe_ga4_sender::Ga4Adapter;
use leadpipe_ga4_sender::cfg::Settings;
use leadpipe_telemetry::LogFormat;

#[tokio::main]
async fn main() -> ExitCode {
    leadpipe_telemetry::init("ga4-sender", "info", LogFormat::from_env());
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => return service::config_error("ga4-sender", &e),
    };
    if settings.dry_run {
        service::announce_dry_run("ga4-sender", "GA4", &settings.missing());
    }
    if settings.validate {
        tracing::info!("GA4_VALIDATE: every payload is checked with the debug endpoint first");
    }
    let runtime = settings.runtime.clone();
    service::run("ga4-sender", runtime, Ga4Adapter::new(settings)).await
}
