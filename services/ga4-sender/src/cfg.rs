//! ga4-sender settings (SPEC §5) and the `ga4` part of the mapping config, checked against
//! GA4's naming rules when it loads (`contracts/ga4-mp.md` §4): a bad name stops start-up.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

pub use leadpipe_config::consent::ConsentPolicy;
use leadpipe_config::mapping::MappingConfig;
use leadpipe_config::{ConfigError, env};
use leadpipe_consumer::RuntimeSettings;

/// GA4's collection host.
pub const DEFAULT_BASE_URL: &str = "https://www.google-analytics.com";
/// Events per request: GA4's limit (ga4-mp.md §4).
pub const MAX_EVENTS_PER_REQUEST: usize = 25;
/// Parameters per event: GA4's limit.
pub const MAX_PARAMS: usize = 25;
/// Longest event or parameter name, in characters.
pub const MAX_NAME_CHARS: usize = 40;
/// Longest parameter value GA4 keeps, in characters; longer strings are truncated.
pub const MAX_PARAM_VALUE_CHARS: usize = 100;
/// Requests under way at once per batch (one request per client id).
pub const DEFAULT_CONCURRENT_REQUESTS: usize = 32;
/// `engagement_time_msec` sent with a known session, in milliseconds.
pub const DEFAULT_ENGAGEMENT_TIME_MSEC: u64 = 100;

/// Event names GA4 reserves (MP reference and the web naming rules, ga4-mp.md §4).
pub const RESERVED_EVENT_NAMES: [&str; 35] = [
    "ad_activeview",
    "ad_click",
    "ad_exposure",
    "ad_impression",
    "ad_query",
    "adunit_exposure",
    "app_clear_data",
    "app_install",
    "app_remove",
    "app_store_refund",
    "app_store_subscription_cancel",
    "app_store_subscription_renew",
    "app_update",
    "click",
    "error",
    "file_download",
    "first_open",
    "first_visit",
    "form_start",
    "form_submit",
    "in_app_purchase",
    "notification_dismiss",
    "notification_foreground",
    "notification_open",
    "notification_receive",
    "os_update",
    "page_view",
    "screen_view",
    "scroll",
    "session_start",
    "user_engagement",
    "video_complete",
    "video_progress",
    "video_start",
    "view_search_results",
];

/// Prefixes no event or parameter name may start with.
pub const RESERVED_PREFIXES: [&str; 5] = ["_", "ga_", "google_", "firebase_", "gtag."];

/// Parameters ga4-sender sets itself; a mapping may not redefine them.
pub const OWN_PARAMS: [&str; 6] = [
    "event_id",
    "value",
    "currency",
    "transaction_id",
    "session_id",
    "engagement_time_msec",
];

/// Canonical paths whose values are personal data and never become GA4 parameters.
const PERSONAL_PATHS: [&str; 5] = [
    "contact",
    "client",
    "context.transcript",
    "external_ids",
    "user_id",
];

/// Checks an event or parameter name against GA4's rules; `Err` says why.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("must be 1 to {MAX_NAME_CHARS} characters"));
    }
    if let Some(prefix) = RESERVED_PREFIXES.iter().find(|p| name.starts_with(*p)) {
        return Err(format!("starts with the reserved prefix `{prefix}`"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err("must start with a letter".into());
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err("may hold only letters, digits and `_`".into());
    }
    Ok(())
}

/// What GA4 receives for one canonical event name.
#[derive(Debug, Clone, PartialEq)]
pub struct Ga4Mapping {
    /// GA4 event name (`generate_lead`, `purchase`, …).
    pub event_name: String,
    /// Extra parameters: GA4 name → canonical path (`source`, `attribution.utm_campaign`,
    /// `context.chatbot`, `custom.plan`) read from the event.
    pub params: BTreeMap<String, String>,
}

/// Everything ga4-sender needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The consumer runtime's settings.
    pub runtime: RuntimeSettings,
    /// `GA4_API_BASE_URL`.
    pub base_url: String,
    /// `GA4_MEASUREMENT_ID` (`G-…`).
    pub measurement_id: Option<String>,
    /// `GA4_API_SECRET`.
    pub api_secret: Option<SecretString>,
    /// `GA4_VALIDATE`: check each payload with the debug endpoint first and dead-letter what
    /// it rejects.
    pub validate: bool,
    /// `DRY_RUN` (only when asked for: without it a missing measurement id or secret refuses
    /// to start).
    pub dry_run: bool,
    /// `GA4_TIMEOUT_MS`: one request's deadline.
    pub timeout: Duration,
    /// `GA4_CONCURRENT_REQUESTS`: requests under way at once for one batch.
    pub concurrent_requests: usize,
    /// `GA4_ENGAGEMENT_TIME_MSEC`: sent beside a known `session_id`.
    pub engagement_time_msec: u64,
    /// `CONSENT_POLICY`: whether `unknown` ad consent lets `user_data` go.
    pub consent: ConsentPolicy,
    /// Per canonical event name.
    pub mappings: HashMap<String, Ga4Mapping>,
}

/// Reads the `ga4` sections of the mapping config, naming any bad key or name.
pub fn ga4_mappings(cfg: &MappingConfig) -> Result<HashMap<String, Ga4Mapping>, ConfigError> {
    /// `[events.<name>.ga4]` as written; checked into a [`Ga4Mapping`] below.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Section {
        event_name: String,
        #[serde(default)]
        params: BTreeMap<String, String>,
    }
    let sections: HashMap<String, Section> = cfg.typed_sections(crate::DESTINATION.as_str())?;
    let mut out = HashMap::new();
    for (name, section) in sections {
        let key = |k: &str| format!("events.{name}.ga4.{k}");
        let event_name = section.event_name.trim().to_owned();
        check_name(&event_name).map_err(|why| {
            ConfigError::invalid(key("event_name"), format!("`{event_name}` {why}"))
        })?;
        if RESERVED_EVENT_NAMES.contains(&event_name.as_str()) {
            return Err(ConfigError::invalid(
                key("event_name"),
                format!("`{event_name}` is reserved by GA4"),
            ));
        }
        let params = section.params;
        for (param, path) in &params {
            let pkey = key(&format!("params.{param}"));
            check_name(param)
                .map_err(|why| ConfigError::invalid(&pkey, format!("`{param}` {why}")))?;
            if param == "firebase_conversion" || OWN_PARAMS.contains(&param.as_str()) {
                return Err(ConfigError::invalid(
                    &pkey,
                    format!("`{param}` is reserved (set by ga4-sender or GA4)"),
                ));
            }
            check_path(path).map_err(|why| ConfigError::invalid(&pkey, why))?;
        }
        if params.len() + OWN_PARAMS.len() > MAX_PARAMS {
            return Err(ConfigError::invalid(
                key("params"),
                format!(
                    "at most {} parameters beside the {} ga4-sender sets (GA4 keeps {MAX_PARAMS})",
                    MAX_PARAMS - OWN_PARAMS.len(),
                    OWN_PARAMS.len()
                ),
            ));
        }
        out.insert(name, Ga4Mapping { event_name, params });
    }
    Ok(out)
}

/// A parameter's source must be a scalar of the canonical event that is not personal data.
fn check_path(path: &str) -> Result<(), String> {
    const ROOTS: [&str; 7] = [
        "source",
        "event_name",
        "lead_id",
        "order_id",
        "attribution.",
        "context.",
        "custom.",
    ];
    if PERSONAL_PATHS
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}.")))
    {
        return Err(format!("`{path}` is personal data and never sent to GA4"));
    }
    let known = ROOTS.iter().any(|r| {
        if r.ends_with('.') {
            path.len() > r.len() && path.starts_with(r)
        } else {
            path == *r
        }
    });
    if known {
        Ok(())
    } else {
        Err(format!(
            "`{path}` is not a canonical path GA4 parameters can read (source, event_name, lead_id, order_id, attribution.*, context.*, custom.*)"
        ))
    }
}

impl Settings {
    /// Reads the environment and the mapping config.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mapping = MappingConfig::from_env()?;
        let measurement_id = env::optional("GA4_MEASUREMENT_ID");
        if let Some(id) = &measurement_id
            && !(id.starts_with("G-")
                && id.len() > 2
                && id[2..].bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(ConfigError::invalid(
                "GA4_MEASUREMENT_ID",
                "must be the web stream's measurement id: G- and letters and digits (not the stream id)",
            ));
        }
        let api_secret = env::optional("GA4_API_SECRET").map(SecretString::from);
        let runtime = RuntimeSettings::from_env(&crate::REGISTRATION)?;
        let dry_run = runtime.dry_run;
        let concurrent_requests = env::parse_or(
            "GA4_CONCURRENT_REQUESTS",
            DEFAULT_CONCURRENT_REQUESTS,
            "a number of requests",
        )?;
        if concurrent_requests == 0 {
            return Err(ConfigError::invalid(
                "GA4_CONCURRENT_REQUESTS",
                "must be at least 1",
            ));
        }
        let base_url = env::base_url("GA4_API_BASE_URL", DEFAULT_BASE_URL)?;
        let settings = Self {
            runtime,
            base_url,
            measurement_id,
            api_secret,
            validate: env::flag("GA4_VALIDATE", false)?,
            dry_run,
            timeout: Duration::from_millis(env::parse_or(
                "GA4_TIMEOUT_MS",
                10_000u64,
                "milliseconds",
            )?),
            concurrent_requests,
            engagement_time_msec: env::parse_or(
                "GA4_ENGAGEMENT_TIME_MSEC",
                DEFAULT_ENGAGEMENT_TIME_MSEC,
                "milliseconds",
            )?,
            consent: ConsentPolicy::from_env()?,
            mappings: ga4_mappings(&mapping)?,
        };
        ConfigError::require_unless_dry_run("GA4", settings.dry_run, &settings.missing())?;
        Ok(settings)
    }

    /// The variables missing to send for real (for the DRY_RUN notice and the refusal to
    /// start): what the registration reports, read from the same environment.
    pub fn missing(&self) -> Vec<&'static str> {
        (crate::REGISTRATION.missing_credentials)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        let cfg = MappingConfig::parse(text).unwrap();
        ga4_mappings(&cfg).unwrap_err().to_string()
    }

    #[test]
    fn shipped_defaults_map_the_lead_funnel() {
        let cfg = MappingConfig::parse(leadpipe_config::mapping::SHIPPED_DEFAULTS).unwrap();
        let m = ga4_mappings(&cfg).unwrap();
        assert_eq!(m["lead"].event_name, "generate_lead");
        assert_eq!(m["won"].event_name, "purchase");
        assert_eq!(m["refund"].event_name, "refund");
        assert_eq!(m["lead"].params["lead_source"], "source");
    }

    #[test]
    fn reserved_or_malformed_names_stop_start_up_naming_the_key() {
        for (text, key, why) in [
            (
                "[events.lead.ga4]\nevent_name = \"session_start\"\n",
                "events.lead.ga4.event_name",
                "reserved",
            ),
            (
                "[events.lead.ga4]\nevent_name = \"ga_lead\"\n",
                "events.lead.ga4.event_name",
                "prefix `ga_`",
            ),
            (
                "[events.lead.ga4]\nevent_name = \"1lead\"\n",
                "events.lead.ga4.event_name",
                "start with a letter",
            ),
            (
                "[events.lead.ga4]\nevent_name = \"lead-form\"\n",
                "events.lead.ga4.event_name",
                "letters, digits",
            ),
            (
                &format!("[events.lead.ga4]\nevent_name = \"{}\"\n", "a".repeat(41)),
                "events.lead.ga4.event_name",
                "1 to 40",
            ),
            (
                "[events.lead.ga4]\nevent_name = \"generate_lead\"\nparams = { google_campaign = \"attribution.utm_campaign\" }\n",
                "events.lead.ga4.params.google_campaign",
                "prefix `google_`",
            ),
            (
                "[events.lead.ga4]\nevent_name = \"generate_lead\"\nparams = { _x = \"source\" }\n",
                "events.lead.ga4.params._x",
                "prefix `_`",
            ),
            (
                "[events.lead.ga4]\nevent_name = \"generate_lead\"\nparams = { value = \"custom.v\" }\n",
                "events.lead.ga4.params.value",
                "reserved",
            ),
            (
                "[events.lead.ga4]\nevent_name = \"generate_lead\"\nparams = { who = \"contact.email\" }\n",
                "events.lead.ga4.params.who",
                "personal data",
            ),
            (
                "[events.lead.ga4]\nevent_name = \"generate_lead\"\nparams = { who = \"nowhere\" }\n",
                "events.lead.ga4.params.who",
                "not a canonical path",
            ),
            (
                "[events.lead.ga4]\nname = \"generate_lead\"\n",
                "events.lead.ga4.name",
                "unknown field `name`, expected `event_name` or `params`",
            ),
        ] {
            let err = error_of(text);
            assert!(err.starts_with(key), "{err}");
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn names_follow_ga4s_rules() {
        assert!(check_name("generate_lead").is_ok());
        assert!(check_name("Lead2").is_ok());
        assert!(check_name("firebase_x").is_err());
        assert!(check_name("gtag.x").is_err());
        assert!(check_name("").is_err());
    }
}
