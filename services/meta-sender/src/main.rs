//! `meta-sender`: loads settings, starts telemetry, consumes until SIGINT/SIGTERM.

use std::process::ExitCode;

use leadpipe_consumer::service;
use leadpipe_meta_sender::MetaAdapter;
use leadpipe_meta_sender::cfg::Settings;
use leadpipe_telemetry::LogFormat;

#[tokio::main]
async fn main() -> ExitCode {
    leadpipe_telemetry::init("meta-sender", "info", LogFormat::from_env());
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => return service::config_error("meta-sender", &e),
    };
    if settings.dry_run {
        service::announce_dry_run("meta-sender", "Meta", &settings.missing());
    }
    let runtime = settings.runtime.clone();
    service::run("meta-sender", runtime, MetaAdapter::new(settings)).await
}
