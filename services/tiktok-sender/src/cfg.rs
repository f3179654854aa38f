//! tiktok-sender settings and its part of the mapping config (`[events.<name>.tiktok]`).

use std::collections::HashMap;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

pub use leadpipe_config::consent::ConsentPolicy;
use leadpipe_config::mapping::MappingConfig;
use leadpipe_config::{ConfigError, env};
use leadpipe_consumer::RuntimeSettings;

/// TikTok's Business API host (contracts/tiktok-events.md §1).
pub const DEFAULT_BASE_URL: &str = "https://business-api.tiktok.com";
/// The Events API 2.0 path; its version is `v1.3` (pitfall P1: there is no `v2.0` path).
pub const TRACK_PATH: &str = "/open_api/v1.3/event/track/";
/// TikTok rejects a whole request of more than 1,000 events; 500 keeps requests small.
pub const DEFAULT_MAX_BATCH: usize = 500;
/// The most events one request may carry.
pub const MAX_BATCH_LIMIT: usize = 1000;

/// What TikTok receives for one canonical event name (`[events.<name>.tiktok]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TikTokMapping {
    /// TikTok `event`, case-sensitive (`Lead`, `Purchase`, `Contact`, …).
    pub event: String,
}

/// Everything tiktok-sender needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The consumer runtime's settings.
    pub runtime: RuntimeSettings,
    /// `TIKTOK_API_BASE_URL`.
    pub base_url: String,
    /// `TIKTOK_PIXEL_CODE`: the `event_source_id` of `web` events.
    pub pixel_code: Option<String>,
    /// `TIKTOK_ACCESS_TOKEN`: sent as the `Access-Token` header.
    pub access_token: Option<SecretString>,
    /// `TIKTOK_TEST_EVENT_CODE`: events show under Events Manager → Test Events.
    pub test_event_code: Option<String>,
    /// `DRY_RUN` (only when asked for: without it a missing pixel or token refuses to start).
    pub dry_run: bool,
    /// `TIKTOK_TIMEOUT_MS`: one request's deadline.
    pub timeout: Duration,
    /// `TIKTOK_MAX_BATCH`: events per request (1–1000).
    pub max_batch: usize,
    /// `CONSENT_POLICY`: `strict` (default) or `unknown_allows`.
    pub consent: ConsentPolicy,
    /// Per canonical event name.
    pub mappings: HashMap<String, TikTokMapping>,
}

/// Reads the `tiktok` sections of the mapping config, naming any bad key.
pub fn tiktok_mappings(cfg: &MappingConfig) -> Result<HashMap<String, TikTokMapping>, ConfigError> {
    let mappings: HashMap<String, TikTokMapping> =
        cfg.typed_sections(crate::DESTINATION.as_str())?;
    for (name, m) in &mappings {
        if m.event.trim().is_empty() || m.event.trim() != m.event {
            return Err(ConfigError::invalid(
                format!("events.{name}.tiktok.event"),
                "must be a non-empty event name without surrounding spaces (TikTok names are case-sensitive)",
            ));
        }
    }
    Ok(mappings)
}

impl Settings {
    /// The variables missing to send for real (for the DRY_RUN notice and the refusal to
    /// start): what the registration reports, read from the same environment.
    pub fn missing(&self) -> Vec<&'static str> {
        (crate::REGISTRATION.missing_credentials)()
    }

    /// Reads the environment and the mapping config.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mapping = MappingConfig::from_env()?;
        let runtime = RuntimeSettings::from_env(&crate::REGISTRATION)?;
        let dry_run = runtime.dry_run;
        let max_batch = env::parse_or("TIKTOK_MAX_BATCH", DEFAULT_MAX_BATCH, "a number of events")?;
        if !(1..=MAX_BATCH_LIMIT).contains(&max_batch) {
            return Err(ConfigError::invalid(
                "TIKTOK_MAX_BATCH",
                "must be between 1 and 1000 (TikTok rejects a larger request whole)",
            ));
        }
        let settings = Self {
            runtime,
            base_url: env::base_url("TIKTOK_API_BASE_URL", DEFAULT_BASE_URL)?,
            pixel_code: env::optional("TIKTOK_PIXEL_CODE"),
            access_token: env::optional("TIKTOK_ACCESS_TOKEN").map(SecretString::from),
            test_event_code: env::optional("TIKTOK_TEST_EVENT_CODE"),
            dry_run,
            timeout: Duration::from_millis(env::parse_or(
                "TIKTOK_TIMEOUT_MS",
                10_000u64,
                "milliseconds",
            )?),
            max_batch,
            consent: ConsentPolicy::from_env()?,
            mappings: tiktok_mappings(&mapping)?,
        };
        ConfigError::require_unless_dry_run("TikTok", settings.dry_run, &settings.missing())?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_defaults_map_lead_and_won() {
        let cfg = MappingConfig::parse(leadpipe_config::mapping::SHIPPED_DEFAULTS).unwrap();
        let m = tiktok_mappings(&cfg).unwrap();
        assert_eq!(m["lead"].event, "Lead");
        assert_eq!(m["won"].event, "Purchase");
        assert!(!m.contains_key("mql"));
        assert!(!m.contains_key("refund"));
    }

    #[test]
    fn bad_mapping_keys_are_named() {
        for (text, key) in [
            (
                "[events.lead.tiktok]\nevent = \"Lead\"\nvalue = 1\n",
                "events.lead.tiktok",
            ),
            ("[events.lead.tiktok]\n", "events.lead.tiktok"),
            (
                "[events.lead.tiktok]\nevent = 3\n",
                "events.lead.tiktok.event",
            ),
            (
                "[events.lead.tiktok]\nevent = \" \"\n",
                "events.lead.tiktok.event",
            ),
        ] {
            let cfg = MappingConfig::parse(text).unwrap();
            let err = tiktok_mappings(&cfg).unwrap_err().to_string();
            assert!(err.starts_with(key), "{text}: {err}");
        }
        let cfg =
            MappingConfig::parse("[events.lead.tiktok]\nevent = \"Lead\"\nvalue = 1\n").unwrap();
        let err = tiktok_mappings(&cfg).unwrap_err().to_string();
        assert!(err.contains("value"), "{err}");
    }
}
