//! `tiktok-sender`: loads settings, starts telemetry, consumes until SIGINT/SIGTERM.

use std::process::ExitCode;

use leadpipe_consumer::service;
use leadpipe_telemetry::LogFormat;
use leadpipe_tiktok_sender::TikTokAdapter;
use leadpipe_tiktok_sender::cfg::Settings;

#[tokio::main]
async fn main() -> ExitCode {
    leadpipe_telemetry::init("tiktok-sender", "info", LogFormat::from_env());
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => return service::config_error("tiktok-sender", &e),
    };
    if settings.dry_run {
        service::announce_dry_run("tiktok-sender", "TikTok", &settings.missing());
    }
    let runtime = settings.runtime.clone();
    service::run("tiktok-sender", runtime, TikTokAdapter::new(settings)).await
}
