//! `google-ads-sender`: loads settings, starts telemetry, consumes until SIGINT/SIGTERM.

use std::process::ExitCode;

use leadpipe_consumer::service;
use leadpipe_google_ads_sender::GoogleAdsAdapter;
use leadpipe_google_ads_sender::cfg::Settings;
use leadpipe_telemetry::LogFormat;

#[tokio::main]
async fn main() -> ExitCode {
    leadpipe_telemetry::init("google-ads-sender", "info", LogFormat::from_env());
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => return service::config_error("google-ads-sender", &e),
    };
    if settings.dry_run {
        service::announce_dry_run("google-ads-sender", "Google Ads", &settings.missing());
    }
    let runtime = settings.runtime.clone();
    service::run(
        "google-ads-sender",
        runtime,
        GoogleAdsAdapter::new(settings),
    )
    .await
}
