//! The sources file (`LEADPIPE_SOURCES`, SPEC §3): who may post events, with which HMAC secret,
//! which phone region completes national numbers, and how fast.
//!
//! ```toml
//! [[sources]]
//! id = "site-widget"
//! secret_env = "SITE_WIDGET_SECRET"   # the variable that holds the HMAC secret
//! default_region = "US"               # phone parsing default
//! rate_limit_per_second = 500         # optional
//! ```

use std::collections::HashSet;
use std::path::Path;

use secrecy::SecretString;
use serde::Deserialize;

use crate::error::{ConfigError, Result};

/// Default `LEADPIPE_SOURCES`.
pub const DEFAULT_SOURCES_PATH: &str = "config/sources.toml";

/// A source's rate limit when the file sets none, in events per second.
pub const DEFAULT_RATE_LIMIT_PER_SECOND: u32 = 1000;

/// One authenticated source, with its secret resolved.
#[derive(Debug, Clone)]
pub struct Source {
    /// The id sent in `X-Leadpipe-Source` and in the event's `source`.
    pub id: String,
    /// The HMAC-SHA256 key.
    pub secret: SecretString,
    /// ISO 3166-1 alpha-2 region used to parse national phone numbers.
    pub default_region: Option<String>,
    /// Token-bucket rate, in events per second (the bucket holds one second's worth).
    pub rate_limit_per_second: u32,
    /// How `POST /v1/sources/{id}/webhook` maps the platform's native payload, if it may.
    pub webhook: Option<WebhookMap>,
}

/// A declarative field map from a chatbot platform's native payload to the canonical event:
///
/// ```toml
/// [sources.webhook]
/// timestamp_format = "%d/%m/%Y %H:%M"   # optional: strftime pattern (UTC unless %z), or unix / unix_ms
/// [sources.webhook.set]                 # constants
/// "consent.basis" = "form opt-in"
/// [sources.webhook.fields]              # canonical field = JSON pointer or simple dotted path
/// event_name = "/type"
/// lead_id = "conversation.id"
/// occurred_at = "/created_at"           # RFC 3339, unix seconds / milliseconds, or the format
/// "contact.email" = "/user/email"
/// [sources.webhook.values.event_name]   # the event-name table: native value = canonical value
/// "conversation.lead_captured" = "lead"
/// [sources.webhook.values."consent.ad_user_data"]
/// "true" = "granted"
/// "false" = "denied"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookMap {
    /// Canonical field (dotted path) → constant value.
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, toml::Value>,
    /// Canonical field (dotted path) → JSON pointer (RFC 6901) into the native payload; a
    /// simple dotted path (`user.email`) is turned into its pointer when the file loads.
    #[serde(default)]
    pub fields: std::collections::BTreeMap<String, String>,
    /// Canonical field → (native value → canonical value): the event-name table is
    /// `values.event_name`; consent flags map the same way.
    #[serde(default)]
    pub values: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// How string timestamps are written: a strftime pattern (UTC unless it holds `%z`),
    /// `unix` or `unix_ms`; RFC 3339 and unix numbers are always understood.
    #[serde(default)]
    pub timestamp_format: Option<String>,
}

/// A JSON pointer for a field map entry: a pointer as it is (its `~` escapes checked), or a
/// simple dotted path (`user.email`, `items.0.id`) turned into one.
pub fn to_pointer(spec: &str) -> std::result::Result<String, &'static str> {
    let spec = spec.trim();
    if let Some(rest) = spec.strip_prefix('/') {
        let bad_escape = rest.split('/').any(|token| {
            token
                .split('~')
                .skip(1)
                .any(|after| !after.starts_with(['0', '1']))
        });
        return if bad_escape {
            Err("is not a valid JSON pointer (`~` must be followed by 0 or 1)")
        } else {
            Ok(spec.to_owned())
        };
    }
    if spec.is_empty() || spec.split('.').any(str::is_empty) {
        return Err(
            "must be a JSON pointer such as /user/email or a dotted path such as user.email",
        );
    }
    Ok(spec
        .split('.')
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect())
}

/// Checks a source's webhook map (every key a canonical field, every pointer valid, value
/// tables on mapped fields, event names of the right shape, a usable timestamp format), and
/// turns dotted paths into pointers.
fn check_webhook(w: &mut WebhookMap, key: &dyn Fn(&str) -> String) -> Result<()> {
    for path in w.set.keys().chain(w.fields.keys()).chain(w.values.keys()) {
        if !leadpipe_events::validate::is_mappable_path(path) || path == "source" {
            return Err(ConfigError::invalid(
                format!("{}.{path}", key("webhook")),
                "is not a field of the canonical event (source is set from the id)",
            ));
        }
    }
    for (path, spec) in w.fields.iter_mut() {
        *spec = to_pointer(spec).map_err(|why| {
            ConfigError::invalid(format!("{}.fields.{path}", key("webhook")), why)
        })?;
    }
    for (path, table) in &w.values {
        if !w.fields.contains_key(path) {
            return Err(ConfigError::invalid(
                format!("{}.values.{path}", key("webhook")),
                "translates values of a field the map does not read (add it to fields)",
            ));
        }
        if path == "event_name" {
            for (native, name) in table {
                let known = leadpipe_events::model::BUILTIN_EVENT_NAMES.contains(&name.as_str())
                    || leadpipe_events::validate::is_custom_name(name);
                if !known {
                    return Err(ConfigError::invalid(
                        format!("{}.values.event_name.{native}", key("webhook")),
                        "must name a canonical event (lead, won, …, or a custom name)",
                    ));
                }
            }
        }
    }
    if let Some(format) = &w.timestamp_format {
        let parsable = format == "unix"
            || format == "unix_ms"
            || (format.contains('%')
                && !chrono::format::StrftimeItems::new(format)
                    .any(|i| matches!(i, chrono::format::Item::Error)));
        if !parsable {
            return Err(ConfigError::invalid(
                format!("{}.timestamp_format", key("webhook")),
                "must be a strftime pattern such as %d/%m/%Y %H:%M, or unix / unix_ms",
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    sources: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    secret_env: String,
    #[serde(default)]
    default_region: Option<String>,
    #[serde(default)]
    rate_limit_per_second: Option<u32>,
    #[serde(default)]
    webhook: Option<WebhookMap>,
}

/// Reads and checks the sources file at `path`, looking secrets up with `secret_of`
/// (`std::env::var` in services; a map in tests).
pub fn load(path: &Path, secret_of: impl Fn(&str) -> Option<String>) -> Result<Vec<Source>> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        variable: "LEADPIPE_SOURCES",
        reason: format!("cannot read: {e}"),
    })?;
    parse(&text, secret_of).map_err(|e| match e {
        ConfigError::File { reason, .. } => ConfigError::File {
            path: path.display().to_string(),
            variable: "LEADPIPE_SOURCES",
            reason,
        },
        other => other,
    })
}

/// Parses and checks the text of a sources file.
pub fn parse(text: &str, secret_of: impl Fn(&str) -> Option<String>) -> Result<Vec<Source>> {
    let file: File = toml::from_str(text).map_err(|e| ConfigError::File {
        path: "<sources>".into(),
        variable: "LEADPIPE_SOURCES",
        reason: e.to_string(),
    })?;
    if file.sources.is_empty() {
        return Err(ConfigError::invalid(
            "sources",
            "the file declares no [[sources]]; ingest would refuse every request",
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(file.sources.len());
    for (i, e) in file.sources.into_iter().enumerate() {
        let key = |field: &str| format!("sources[{i}].{field}");
        let id = e.id.trim().to_owned();
        if id.is_empty()
            || id.len() > 128
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::invalid(
                key("id"),
                "must be 1-128 characters of letters, digits, '-' or '_' (it becomes part of a routing key)",
            ));
        }
        if !seen.insert(id.clone()) {
            return Err(ConfigError::invalid(
                key("id"),
                format!("{id:?} is declared twice"),
            ));
        }
        let secret = secret_of(e.secret_env.trim())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ConfigError::Missing {
                key: e.secret_env.trim().to_owned(),
                hint: format!(
                    "it holds the HMAC secret of source {id:?} ({})",
                    key("secret_env")
                ),
            })?;
        let default_region = match e.default_region.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(r) if r.len() == 2 => Some(
                leadpipe_events::identifiers::normalize_country(r).ok_or_else(|| {
                    ConfigError::invalid(key("default_region"), "is not an ISO 3166-1 alpha-2 code")
                })?,
            ),
            Some(_) => {
                return Err(ConfigError::invalid(
                    key("default_region"),
                    "must be an ISO 3166-1 alpha-2 code such as US",
                ));
            }
        };
        let rate = e
            .rate_limit_per_second
            .unwrap_or(DEFAULT_RATE_LIMIT_PER_SECOND);
        if rate == 0 {
            return Err(ConfigError::invalid(
                key("rate_limit_per_second"),
                "must be at least 1",
            ));
        }
        let mut webhook = e.webhook;
        if let Some(w) = webhook.as_mut() {
            check_webhook(w, &key)?;
        }
        out.push(Source {
            id,
            secret: SecretString::from(secret),
            default_region,
            rate_limit_per_second: rate,
            webhook,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SITE_WIDGET_SECRET").then(|| "s3cret".to_owned())
    }

    #[test]
    fn a_source_is_read_with_its_secret_region_and_rate() {
        let s = parse(
            r#"[[sources]]
id = "site-widget"
secret_env = "SITE_WIDGET_SECRET"
default_region = "us"
rate_limit_per_second = 500
"#,
            env,
        )
        .unwrap();
        assert_eq!(s[0].id, "site-widget");
        assert_eq!(s[0].secret.expose_secret(), "s3cret");
        assert_eq!(s[0].default_region.as_deref(), Some("US"));
        assert_eq!(s[0].rate_limit_per_second, 500);
    }

    #[test]
    fn a_missing_secret_variable_is_named() {
        let err = parse(
            "[[sources]]\nid = \"bot\"\nsecret_env = \"BOT_SECRET\"\n",
            env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("BOT_SECRET is not set"), "{err}");
        assert!(err.contains("\"bot\""), "{err}");
    }

    #[test]
    fn bad_entries_name_the_key() {
        for (text, key) in [
            (
                "[[sources]]\nid = \"a b\"\nsecret_env = \"SITE_WIDGET_SECRET\"\n",
                "sources[0].id",
            ),
            (
                "[[sources]]\nid = \"a\"\nsecret_env = \"SITE_WIDGET_SECRET\"\ndefault_region = \"Atlantis\"\n",
                "sources[0].default_region",
            ),
            (
                "[[sources]]\nid = \"a\"\nsecret_env = \"SITE_WIDGET_SECRET\"\nrate_limit_per_second = 0\n",
                "sources[0].rate_limit_per_second",
            ),
            (
                "[[sources]]\nid = \"a\"\nsecret_env = \"SITE_WIDGET_SECRET\"\n[[sources]]\nid = \"a\"\nsecret_env = \"SITE_WIDGET_SECRET\"\n",
                "sources[1].id",
            ),
            ("", "sources"),
        ] {
            let err = parse(text, env).unwrap_err().to_string();
            assert!(err.starts_with(key), "{err} should name {key}");
        }
    }

    #[test]
    fn a_webhook_map_is_checked_against_the_canonical_fields() {
        let base = "[[sources]]\nid = \"bot\"\nsecret_env = \"SITE_WIDGET_SECRET\"\n";
        let ok = parse(
            &format!("{base}[sources.webhook.set]\nevent_name = \"lead\"\n[sources.webhook.fields]\nlead_id = \"/id\"\n\"contact.email\" = \"/user/email\"\n"),
            env,
        )
        .unwrap();
        assert_eq!(
            ok[0].webhook.as_ref().unwrap().fields["contact.email"],
            "/user/email"
        );
        let dotted = parse(
            &format!("{base}[sources.webhook.fields]\n\"contact.email\" = \"user.e~mail\"\nlead_id = \"items.0.id\"\n"),
            env,
        )
        .unwrap();
        let fields = &dotted[0].webhook.as_ref().unwrap().fields;
        assert_eq!(fields["contact.email"], "/user/e~0mail");
        assert_eq!(fields["lead_id"], "/items/0/id");
        for (extra, key) in [
            (
                "[sources.webhook.fields]\n\"contact.mail\" = \"/e\"\n",
                "sources[0].webhook.contact.mail",
            ),
            (
                "[sources.webhook.fields]\nlead_id = \"/id/~2\"\n",
                "sources[0].webhook.fields.lead_id",
            ),
            (
                "[sources.webhook.fields]\nlead_id = \"a..b\"\n",
                "sources[0].webhook.fields.lead_id",
            ),
            (
                "[sources.webhook.values.event_name]\nx = \"lead\"\n",
                "sources[0].webhook.values.event_name",
            ),
            (
                "[sources.webhook.fields]\nevent_name = \"/t\"\n[sources.webhook.values.event_name]\nx = \"Lead Created\"\n",
                "sources[0].webhook.values.event_name.x",
            ),
            (
                "[sources.webhook]\ntimestamp_format = \"%Q\"\n",
                "sources[0].webhook.timestamp_format",
            ),
            (
                "[sources.webhook.set]\nsource = \"x\"\n",
                "sources[0].webhook.source",
            ),
        ] {
            let err = parse(&format!("{base}{extra}"), env)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(key), "{err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let err = parse(
            "[[sources]]\nid = \"a\"\nsecret_env = \"SITE_WIDGET_SECRET\"\nregion = \"US\"\n",
            env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `region`"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }
}
