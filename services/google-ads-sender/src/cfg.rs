//! google-ads-sender settings (SPEC §5) and the `google_ads` part of the mapping config.

use std::collections::HashMap;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

pub use leadpipe_config::consent::ConsentPolicy;
use leadpipe_config::mapping::MappingConfig;
use leadpipe_config::{ConfigError, env};
use leadpipe_consumer::RuntimeSettings;

/// Google's Data Manager API host.
pub const DEFAULT_DATA_MANAGER_BASE_URL: &str = "https://datamanager.googleapis.com";
/// The Google Ads API host.
pub const DEFAULT_ADS_API_BASE_URL: &str = "https://googleads.googleapis.com";
/// The Google Ads API version the contract was written against.
pub const DEFAULT_ADS_API_VERSION: &str = "v23";
/// Google's OAuth 2.0 token endpoint.
pub const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// Events per `events:ingest` request (Data Manager allows 2,000).
pub const MAX_EVENTS_PER_REQUEST: usize = 2000;
/// First wait before asking for a Data Manager request's status: Google asks for 30 minutes.
pub const DEFAULT_STATUS_DELAY: Duration = Duration::from_secs(30 * 60);
/// Longest wait between two status requests.
pub const DEFAULT_STATUS_DELAY_MAX: Duration = Duration::from_secs(6 * 3600);
/// `eventSource` values Data Manager accepts.
pub const EVENT_SOURCES: [&str; 6] = ["WEB", "APP", "IN_STORE", "PHONE", "MESSAGE", "OTHER"];

/// Which API carries click conversions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Data Manager `events:ingest` (the default: the Google Ads API refuses new uploaders).
    DataManager,
    /// Google Ads API `uploadClickConversions`, for allowlisted accounts.
    AdsApi,
}

/// What a canonical event becomes at Google Ads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A click conversion or enhanced conversion for leads.
    ClickConversion,
    /// A refund: partial → restatement through Data Manager, full → `RETRACTION` through the
    /// Google Ads API.
    Adjustment,
}

/// What Google Ads receives for one canonical event name.
#[derive(Debug, Clone, PartialEq)]
pub struct GoogleAdsMapping {
    /// Conversion or adjustment.
    pub kind: Kind,
    /// The conversion action (`productDestinationId`; `ctId` in the UI), digits.
    pub conversion_action_id: Option<String>,
    /// Data Manager `eventSource`.
    pub event_source: String,
}

/// Everything google-ads-sender needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The consumer runtime's settings.
    pub runtime: RuntimeSettings,
    /// `GOOGLE_DATA_MANAGER_BASE_URL`.
    pub data_manager_base_url: String,
    /// `GOOGLE_ADS_API_BASE_URL`.
    pub ads_api_base_url: String,
    /// `GOOGLE_ADS_API_VERSION`.
    pub ads_api_version: String,
    /// `GOOGLE_ADS_ROUTE`.
    pub route: Route,
    /// `GOOGLE_ADS_CUSTOMER_ID`: the operating account, 10 digits.
    pub customer_id: Option<String>,
    /// `GOOGLE_ADS_LOGIN_CUSTOMER_ID`: the manager account the credential reaches it through.
    pub login_customer_id: Option<String>,
    /// `GOOGLE_ADS_DEVELOPER_TOKEN` (Google Ads API only; ignored by Google since 2026-09).
    pub developer_token: Option<SecretString>,
    /// `GOOGLE_OAUTH_TOKEN_URL`.
    pub token_url: String,
    /// `GOOGLE_ADS_CLIENT_ID`.
    pub client_id: Option<String>,
    /// `GOOGLE_ADS_CLIENT_SECRET`.
    pub client_secret: Option<SecretString>,
    /// `GOOGLE_ADS_REFRESH_TOKEN`.
    pub refresh_token: Option<SecretString>,
    /// `DRY_RUN` (only when asked for: without it missing credentials, customer or conversion
    /// action refuse to start).
    pub dry_run: bool,
    /// `GOOGLE_ADS_TIMEOUT_MS`: one request's deadline.
    pub timeout: Duration,
    /// `GOOGLE_DM_STATUS_DELAY_SECS`: first wait before a request's status is asked for.
    pub status_delay: Duration,
    /// `GOOGLE_DM_STATUS_DELAY_MAX_SECS`: longest wait between two status requests.
    pub status_delay_max: Duration,
    /// `CONSENT_POLICY`.
    pub consent: ConsentPolicy,
    /// Per canonical event name.
    pub mappings: HashMap<String, GoogleAdsMapping>,
}

/// Digits of a Google Ads customer id (`123-456-7890` → `1234567890`), checked.
pub fn customer_digits(key: &str, raw: &str) -> Result<String, ConfigError> {
    let digits: String = raw.chars().filter(|c| *c != '-' && *c != ' ').collect();
    if digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(digits)
    } else {
        Err(ConfigError::invalid(
            key,
            "must be a 10-digit Google Ads customer id (dashes allowed)",
        ))
    }
}

/// The variables missing to send for real, read from the environment and the mapping config
/// without building the settings (for `leadpipe destinations` and `make run`). As
/// [`Settings::missing`]: a conversion action named in every mapping section makes
/// `GOOGLE_ADS_CONVERSION_ACTION_ID` unnecessary.
pub fn missing_from_env() -> Vec<&'static str> {
    let default_action = env::optional("GOOGLE_ADS_CONVERSION_ACTION_ID");
    let action_everywhere = MappingConfig::from_env()
        .and_then(|cfg| google_ads_mappings(&cfg, default_action.as_deref()))
        .is_ok_and(|ms| ms.values().all(|m| m.conversion_action_id.is_some()));
    let mut out = leadpipe_config::error::missing_from_env(&[
        "GOOGLE_ADS_CUSTOMER_ID",
        "GOOGLE_ADS_CLIENT_ID",
        "GOOGLE_ADS_CLIENT_SECRET",
        "GOOGLE_ADS_REFRESH_TOKEN",
    ]);
    if !action_everywhere {
        out.push("GOOGLE_ADS_CONVERSION_ACTION_ID");
    }
    out
}

/// Reads the `google_ads` sections of the mapping config, naming any bad key.
/// `default_action`: `GOOGLE_ADS_CONVERSION_ACTION_ID`, for sections that name none.
pub fn google_ads_mappings(
    cfg: &MappingConfig,
    default_action: Option<&str>,
) -> Result<HashMap<String, GoogleAdsMapping>, ConfigError> {
    /// `[events.<name>.google_ads]` as written; checked into a [`GoogleAdsMapping`] below.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Section {
        kind: Option<String>,
        /// Digits, written as a string or a number.
        conversion_action_id: Option<toml::Value>,
        event_source: Option<String>,
    }
    let sections: HashMap<String, Section> = cfg.typed_sections(crate::DESTINATION.as_str())?;
    let mut out = HashMap::new();
    for (name, section) in sections {
        let key = |k: &str| format!("events.{name}.google_ads.{k}");
        let text = |k: &str, v: Option<String>| -> Result<Option<String>, ConfigError> {
            match v.map(|s| s.trim().to_owned()) {
                Some(s) if s.is_empty() => {
                    Err(ConfigError::invalid(key(k), "must be a non-empty string"))
                }
                v => Ok(v),
            }
        };
        let kind = match text("kind", section.kind)?.as_deref() {
            Some("click_conversion") | None => Kind::ClickConversion,
            Some("adjustment") => Kind::Adjustment,
            Some(_) => {
                return Err(ConfigError::invalid(
                    key("kind"),
                    "must be click_conversion or adjustment",
                ));
            }
        };
        if kind == Kind::Adjustment && name != "refund" {
            return Err(ConfigError::invalid(
                key("kind"),
                "adjustment applies to refund events only",
            ));
        }
        let action = match section.conversion_action_id {
            Some(toml::Value::String(s)) => Some(s),
            Some(toml::Value::Integer(n)) => Some(n.to_string()),
            Some(_) => {
                return Err(ConfigError::invalid(
                    key("conversion_action_id"),
                    "must be the conversion action's numeric id (ctId in the Google Ads UI)",
                ));
            }
            None => None,
        };
        let conversion_action_id =
            text("conversion_action_id", action)?.or(default_action.map(str::to_owned));
        if let Some(id) = &conversion_action_id
            && !id.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(ConfigError::invalid(
                key("conversion_action_id"),
                "must be the conversion action's numeric id (ctId in the Google Ads UI)",
            ));
        }
        let event_source =
            text("event_source", section.event_source)?.unwrap_or_else(|| "WEB".to_owned());
        if !EVENT_SOURCES.contains(&event_source.as_str()) {
            return Err(ConfigError::invalid(
                key("event_source"),
                format!("must be one of {}", EVENT_SOURCES.join(", ")),
            ));
        }
        out.insert(
            name,
            GoogleAdsMapping {
                kind,
                conversion_action_id,
                event_source,
            },
        );
    }
    Ok(out)
}

impl Settings {
    /// Reads the environment and the mapping config.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mapping = MappingConfig::from_env()?;
        let default_action = env::optional("GOOGLE_ADS_CONVERSION_ACTION_ID");
        let mappings = google_ads_mappings(&mapping, default_action.as_deref())?;
        let customer_id = env::optional("GOOGLE_ADS_CUSTOMER_ID")
            .map(|c| customer_digits("GOOGLE_ADS_CUSTOMER_ID", &c))
            .transpose()?;
        let login_customer_id = env::optional("GOOGLE_ADS_LOGIN_CUSTOMER_ID")
            .map(|c| customer_digits("GOOGLE_ADS_LOGIN_CUSTOMER_ID", &c))
            .transpose()?;
        let route = match env::string_or("GOOGLE_ADS_ROUTE", "data_manager").as_str() {
            "data_manager" => Route::DataManager,
            "ads_api" => Route::AdsApi,
            _ => {
                return Err(ConfigError::invalid(
                    "GOOGLE_ADS_ROUTE",
                    "must be data_manager or ads_api",
                ));
            }
        };
        let client_id = env::optional("GOOGLE_ADS_CLIENT_ID");
        let client_secret = env::optional("GOOGLE_ADS_CLIENT_SECRET").map(SecretString::from);
        let refresh_token = env::optional("GOOGLE_ADS_REFRESH_TOKEN").map(SecretString::from);
        let runtime = RuntimeSettings::from_env(&crate::REGISTRATION)?;
        let settings = Self {
            dry_run: runtime.dry_run,
            runtime,
            data_manager_base_url: env::base_url(
                "GOOGLE_DATA_MANAGER_BASE_URL",
                DEFAULT_DATA_MANAGER_BASE_URL,
            )?,
            ads_api_base_url: env::base_url("GOOGLE_ADS_API_BASE_URL", DEFAULT_ADS_API_BASE_URL)?,
            ads_api_version: env::string_or("GOOGLE_ADS_API_VERSION", DEFAULT_ADS_API_VERSION),
            route,
            customer_id,
            login_customer_id,
            developer_token: env::optional("GOOGLE_ADS_DEVELOPER_TOKEN").map(SecretString::from),
            token_url: env::base_url("GOOGLE_OAUTH_TOKEN_URL", DEFAULT_TOKEN_URL)?,
            client_id,
            client_secret,
            refresh_token,
            timeout: Duration::from_millis(env::parse_or(
                "GOOGLE_ADS_TIMEOUT_MS",
                30_000u64,
                "milliseconds",
            )?),
            status_delay: Duration::from_secs(env::parse_or(
                "GOOGLE_DM_STATUS_DELAY_SECS",
                DEFAULT_STATUS_DELAY.as_secs(),
                "seconds",
            )?),
            status_delay_max: Duration::from_secs(env::parse_or(
                "GOOGLE_DM_STATUS_DELAY_MAX_SECS",
                DEFAULT_STATUS_DELAY_MAX.as_secs(),
                "seconds",
            )?),
            consent: ConsentPolicy::from_env()?,
            mappings,
        };
        ConfigError::require_unless_dry_run("Google Ads", settings.dry_run, &settings.missing())?;
        Ok(settings)
    }

    /// What is missing to send for real (variables, or a conversion action), for the
    /// DRY_RUN notice.
    pub fn missing(&self) -> Vec<&'static str> {
        leadpipe_config::error::missing(&[
            ("GOOGLE_ADS_CUSTOMER_ID", self.customer_id.is_none()),
            ("GOOGLE_ADS_CLIENT_ID", self.client_id.is_none()),
            ("GOOGLE_ADS_CLIENT_SECRET", self.client_secret.is_none()),
            ("GOOGLE_ADS_REFRESH_TOKEN", self.refresh_token.is_none()),
            (
                "GOOGLE_ADS_CONVERSION_ACTION_ID (or conversion_action_id in the mapping)",
                self.mappings
                    .values()
                    .any(|m| m.conversion_action_id.is_none()),
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_defaults_map_won_and_refund() {
        let cfg = MappingConfig::parse(leadpipe_config::mapping::SHIPPED_DEFAULTS).unwrap();
        let m = google_ads_mappings(&cfg, Some("987654321")).unwrap();
        assert_eq!(m["won"].kind, Kind::ClickConversion);
        assert_eq!(m["refund"].kind, Kind::Adjustment);
        assert_eq!(m["won"].conversion_action_id.as_deref(), Some("987654321"));
        assert!(!m.contains_key("lead"));
    }

    #[test]
    fn bad_mapping_keys_are_named() {
        for (text, key) in [
            (
                "[events.won.google_ads]\nkind = \"retraction\"\n",
                "events.won.google_ads.kind",
            ),
            (
                "[events.won.google_ads]\nkind = \"adjustment\"\n",
                "events.won.google_ads.kind",
            ),
            (
                "[events.won.google_ads]\nconversion_action_id = \"customers/1/conversionActions/2\"\n",
                "events.won.google_ads.conversion_action_id",
            ),
            (
                "[events.won.google_ads]\nevent_source = \"CRM\"\n",
                "events.won.google_ads.event_source",
            ),
            (
                "[events.won.google_ads]\naction = \"1\"\n",
                "events.won.google_ads.action",
            ),
            (
                "[events.won.google_ads]\nconversion_action_id = true\n",
                "events.won.google_ads.conversion_action_id",
            ),
            (
                "[events.won.google_ads]\nkind = \" \"\n",
                "events.won.google_ads.kind",
            ),
        ] {
            let cfg = MappingConfig::parse(text).unwrap();
            let err = google_ads_mappings(&cfg, None).unwrap_err().to_string();
            assert!(err.starts_with(key), "{err}");
        }
    }

    #[test]
    fn customer_ids_lose_their_dashes_and_must_have_ten_digits() {
        assert_eq!(customer_digits("X", "123-456-7890").unwrap(), "1234567890");
        assert!(customer_digits("X", "12345").is_err());
    }
}
