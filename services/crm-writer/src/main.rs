//! `crm-writer`: loads settings, starts telemetry, consumes until SIGINT/SIGTERM.

use std::process::ExitCode;

use leadpipe_consumer::service;
use leadpipe_crm_writer::CrmAdapter;
use leadpipe_crm_writer::cfg::Settings;
use leadpipe_telemetry::LogFormat;

#[tokio::main]
async fn main() -> ExitCode {
    leadpipe_telemetry::init("crm-writer", "info", LogFormat::from_env());
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => return service::config_error("crm-writer", &e),
    };
    if settings.dry_run {
        service::announce_dry_run("crm-writer", "the CRM", &settings.missing());
    }
    let runtime = settings.runtime.clone();
    service::run("crm-writer", runtime, CrmAdapter::new(settings)).await
}
