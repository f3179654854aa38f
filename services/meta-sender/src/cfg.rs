//! meta-sender settings (SPEC §5) and its part of the mapping config.

use std::collections::HashMap;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

pub use leadpipe_config::consent::ConsentPolicy;
use leadpipe_config::mapping::MappingConfig;
use leadpipe_config::{ConfigError, env};
use leadpipe_consumer::RuntimeSettings;

/// Meta's Graph API host.
pub const DEFAULT_BASE_URL: &str = "https://graph.facebook.com";
/// The Graph API version the contract was written against.
pub const DEFAULT_API_VERSION: &str = "v25.0";
/// Meta accepts at most 1,000 events per request; 500 keeps requests well under size limits.
pub const DEFAULT_MAX_BATCH: usize = 500;
/// The `action_source` values Meta accepts (contracts/meta-capi.md §3).
pub const ACTION_SOURCES: [&str; 9] = [
    "email",
    "website",
    "app",
    "phone_call",
    "chat",
    "physical_store",
    "system_generated",
    "business_messaging",
    "other",
];

/// What Meta receives for one canonical event name (`[events.<name>.meta]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaMapping {
    /// Meta `event_name` (`Lead`, `Purchase`, …).
    pub event_name: String,
    /// Meta `action_source` (default `chat`).
    #[serde(default = "chat")]
    pub action_source: String,
    /// `custom_data.content_name`, if set.
    #[serde(default)]
    pub content_name: Option<String>,
    /// `custom_data.content_category`, if set.
    #[serde(default)]
    pub content_category: Option<String>,
}

fn chat() -> String {
    "chat".to_owned()
}

/// Everything meta-sender needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The consumer runtime's settings.
    pub runtime: RuntimeSettings,
    /// `META_API_BASE_URL`.
    pub base_url: String,
    /// `META_API_VERSION`.
    pub api_version: String,
    /// `META_PIXEL_ID`.
    pub pixel_id: Option<String>,
    /// `META_ACCESS_TOKEN`.
    pub access_token: Option<SecretString>,
    /// `META_TEST_EVENT_CODE`.
    pub test_event_code: Option<String>,
    /// `DRY_RUN` (only when asked for: without it a missing pixel or token refuses to start).
    pub dry_run: bool,
    /// `META_TIMEOUT_MS`: one request's deadline.
    pub timeout: Duration,
    /// `META_MAX_BATCH`: events per request (1–1000).
    pub max_batch: usize,
    /// `CONSENT_POLICY`: `strict` (default) or `unknown_allows`.
    pub consent: ConsentPolicy,
    /// Per canonical event name.
    pub mappings: HashMap<String, MetaMapping>,
}

/// Reads the `meta` sections of the mapping config, naming any bad key.
pub fn meta_mappings(cfg: &MappingConfig) -> Result<HashMap<String, MetaMapping>, ConfigError> {
    let mut mappings: HashMap<String, MetaMapping> =
        cfg.typed_sections(crate::DESTINATION.as_str())?;
    for (name, m) in &mut mappings {
        let key = |k: &str| format!("events.{name}.meta.{k}");
        let text = |k: &str, v: &mut String| {
            *v = v.trim().to_owned();
            if v.is_empty() {
                return Err(ConfigError::invalid(key(k), "must be a non-empty string"));
            }
            Ok(())
        };
        text("event_name", &mut m.event_name)?;
        text("action_source", &mut m.action_source)?;
        for (k, v) in [
            ("content_name", &mut m.content_name),
            ("content_category", &mut m.content_category),
        ] {
            if let Some(t) = v {
                text(k, t)?;
            }
        }
        if !ACTION_SOURCES.contains(&m.action_source.as_str()) {
            return Err(ConfigError::invalid(
                key("action_source"),
                format!("must be one of {}", ACTION_SOURCES.join(", ")),
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
        let pixel_id = env::optional("META_PIXEL_ID");
        let access_token = env::optional("META_ACCESS_TOKEN").map(SecretString::from);
        let runtime = RuntimeSettings::from_env(&crate::REGISTRATION)?;
        let dry_run = runtime.dry_run;
        let max_batch = env::parse_or("META_MAX_BATCH", DEFAULT_MAX_BATCH, "a number of events")?;
        if !(1..=1000).contains(&max_batch) {
            return Err(ConfigError::invalid(
                "META_MAX_BATCH",
                "must be between 1 and 1000 (Meta's limit)",
            ));
        }
        let consent = ConsentPolicy::from_env()?;
        let settings = Self {
            runtime,
            base_url: env::base_url("META_API_BASE_URL", DEFAULT_BASE_URL)?,
            api_version: env::string_or("META_API_VERSION", DEFAULT_API_VERSION),
            pixel_id,
            access_token,
            test_event_code: env::optional("META_TEST_EVENT_CODE"),
            dry_run,
            timeout: Duration::from_millis(env::parse_or(
                "META_TIMEOUT_MS",
                10_000u64,
                "milliseconds",
            )?),
            max_batch,
            consent,
            mappings: meta_mappings(&mapping)?,
        };
        ConfigError::require_unless_dry_run("Meta", settings.dry_run, &settings.missing())?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_defaults_map_lead_and_won() {
        let cfg = MappingConfig::parse(leadpipe_config::mapping::SHIPPED_DEFAULTS).unwrap();
        let m = meta_mappings(&cfg).unwrap();
        assert_eq!(m["lead"].event_name, "Lead");
        assert_eq!(m["won"].event_name, "Purchase");
        assert!(!m.contains_key("mql"));
    }

    #[test]
    fn bad_mapping_keys_are_named() {
        for (text, key) in [
            (
                "[events.lead.meta]\nevent_name = \"Lead\"\naction_source = \"web\"\n",
                "events.lead.meta.action_source",
            ),
            (
                "[events.lead.meta]\naction_source = \"chat\"\n",
                "events.lead.meta.event_name",
            ),
            (
                "[events.lead.meta]\nevent_name = \"Lead\"\nvalue = 1\n",
                "events.lead.meta.value",
            ),
        ] {
            let cfg = MappingConfig::parse(text).unwrap();
            let err = meta_mappings(&cfg).unwrap_err().to_string();
            assert!(err.starts_with(key), "{err}");
        }
    }
}
