//! The mapping config (`LEADPIPE_CONFIG`, SPEC §5): per canonical event name, what each
//! destination receives. Ingest reads it for the custom event names it declares; each sender
//! reads its own destination's part.
//!
//! A missing file at the default path means "the shipped defaults"; a missing file at a path
//! the operator named is an error.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{ConfigError, Result};

/// Default `LEADPIPE_CONFIG`.
pub const DEFAULT_MAPPING_PATH: &str = "config/leadpipe.toml";

/// The shipped defaults, compiled in (the same file as `config/leadpipe.toml`).
pub const SHIPPED_DEFAULTS: &str = include_str!("../../../config/leadpipe.toml");

/// The whole mapping config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// Per canonical event name (built-in or custom), what each destination receives.
    #[serde(default)]
    pub events: BTreeMap<String, EventMapping>,
    /// CRM-wide settings: the field map (canonical path → CRM field) and the unique property
    /// that identifies a lead without an email (crm-writer reads and checks it).
    #[serde(default)]
    pub crm: Option<toml::Table>,
}

/// What the destinations receive for one canonical event name. A destination without a
/// section skips the event (recorded `skipped_unmapped`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventMapping {
    /// Meta Conversions API.
    #[serde(default)]
    pub meta: Option<toml::Table>,
    /// GA4 Measurement Protocol.
    #[serde(default)]
    pub ga4: Option<toml::Table>,
    /// Google Ads.
    #[serde(default)]
    pub google_ads: Option<toml::Table>,
    /// The CRM.
    #[serde(default)]
    pub crm: Option<toml::Table>,
}

impl MappingConfig {
    /// Loads `path`; when `explicit` is false and the file does not exist, the shipped defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                SHIPPED_DEFAULTS.to_owned()
            }
            Err(e) => {
                return Err(ConfigError::File {
                    path: path.display().to_string(),
                    variable: "LEADPIPE_CONFIG",
                    reason: format!("cannot read: {e}"),
                });
            }
        };
        Self::parse(&text).map_err(|e| match e {
            ConfigError::File { reason, .. } => ConfigError::File {
                path: path.display().to_string(),
                variable: "LEADPIPE_CONFIG",
                reason,
            },
            other => other,
        })
    }

    /// Loads `LEADPIPE_CONFIG` (the shipped defaults when it is unset and
    /// `config/leadpipe.toml` is absent).
    pub fn from_env() -> Result<Self> {
        let named = crate::env::optional("LEADPIPE_CONFIG");
        let path = named.as_deref().unwrap_or(DEFAULT_MAPPING_PATH);
        Self::load(Path::new(path), named.is_some())
    }

    /// Parses and checks the text of a mapping config.
    pub fn parse(text: &str) -> Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::File {
            path: "<mapping>".into(),
            variable: "LEADPIPE_CONFIG",
            reason: e.to_string(),
        })?;
        for name in cfg.events.keys() {
            if !leadpipe_events::model::BUILTIN_EVENT_NAMES.contains(&name.as_str())
                && !leadpipe_events::validate::is_custom_name(name)
            {
                return Err(ConfigError::invalid(
                    format!("events.{name}"),
                    "a custom event name must match [a-z][a-z0-9_]{0,39}",
                ));
            }
        }
        Ok(cfg)
    }

    /// The custom (non built-in) event names the config declares.
    pub fn custom_event_names(&self) -> impl Iterator<Item = &str> {
        self.events
            .keys()
            .map(String::as_str)
            .filter(|n| !leadpipe_events::model::BUILTIN_EVENT_NAMES.contains(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_defaults_parse() {
        let cfg = MappingConfig::parse(SHIPPED_DEFAULTS).unwrap();
        assert!(cfg.events["lead"].meta.is_some());
    }

    #[test]
    fn custom_names_are_declared_by_their_section() {
        let cfg = MappingConfig::parse("[events.demo_booked.crm]\n").unwrap();
        assert_eq!(
            cfg.custom_event_names().collect::<Vec<_>>(),
            ["demo_booked"]
        );
    }

    #[test]
    fn a_malformed_custom_name_or_destination_is_refused_by_key() {
        let err = MappingConfig::parse("[events.Demo]\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("events.Demo:"), "{err}");
        let err = MappingConfig::parse("[events.lead.tiktok]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `tiktok`"), "{err}");
    }

    #[test]
    fn a_named_file_that_is_missing_is_an_error_but_the_default_path_falls_back() {
        let missing = Path::new("/nonexistent/leadpipe.toml");
        assert!(MappingConfig::load(missing, true).is_err());
        assert!(MappingConfig::load(missing, false).is_ok());
    }
}
