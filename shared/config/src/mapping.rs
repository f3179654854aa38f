//! The mapping config (`LEADPIPE_CONFIG`, SPEC §5): per canonical event name, what each
//! destination receives. Ingest reads it for the custom event names it declares; each sender
//! reads its own destination's part.
//!
//! A missing file at the default path means "the shipped defaults"; a missing file at a path
//! the operator named is an error.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{ConfigError, Result};

/// Default `LEADPIPE_CONFIG`.
pub const DEFAULT_MAPPING_PATH: &str = "config/leadpipe.toml";

/// The shipped defaults, compiled in (the same file as `config/leadpipe.toml`).
pub const SHIPPED_DEFAULTS: &str = include_str!("../../../config/leadpipe.toml");

/// The whole mapping config.
///
/// `[events.<event_name>.<destination>]` says what a destination receives for one canonical
/// event name; a top-level `[<destination>]` table holds a destination's own settings (the
/// CRM's field map). Destination names are not known here: the registry
/// (`leadpipe-registry`) refuses a name that is not registered, and each destination reads
/// its own sections into its typed mapping struct.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MappingConfig {
    /// Per canonical event name (built-in or custom), per destination, its section.
    #[serde(default)]
    pub events: BTreeMap<String, BTreeMap<String, toml::Table>>,
    /// Destination-wide tables, keyed by destination name.
    #[serde(flatten)]
    pub destinations: BTreeMap<String, toml::Value>,
}

/// Reads a mapping section into its typed struct, naming the key that is wrong
/// (`events.lead.tiktok.event`): `T` is `deny_unknown_fields`, so a misspelt key is refused.
pub fn typed_section<T: DeserializeOwned>(key: &str, table: &toml::Table) -> Result<T> {
    let value = toml::Value::Table(table.clone());
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        let reason = e.into_inner().to_string();
        // serde names an unknown or missing key only in its message: put it in the key.
        let field = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|p| reason.strip_prefix(p))
            .and_then(|rest| rest.split('`').next());
        let key = match (path.as_str(), field) {
            ("." | "", Some(field)) => format!("{key}.{field}"),
            ("." | "", None) => key.to_owned(),
            (path, _) => format!("{key}.{path}"),
        };
        ConfigError::invalid(key, reason)
    })
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

    /// The `destination` sections: (canonical event name, its table).
    pub fn sections<'a>(
        &'a self,
        destination: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a toml::Table)> + 'a {
        self.events
            .iter()
            .filter_map(move |(name, m)| m.get(destination).map(|t| (name.as_str(), t)))
    }

    /// The `destination` sections read into `T` (a `deny_unknown_fields` struct), keyed by
    /// canonical event name; an error names the wrong key.
    pub fn typed_sections<T: DeserializeOwned>(
        &self,
        destination: &str,
    ) -> Result<std::collections::HashMap<String, T>> {
        self.sections(destination)
            .map(|(name, t)| {
                typed_section(&format!("events.{name}.{destination}"), t)
                    .map(|v| (name.to_owned(), v))
            })
            .collect()
    }

    /// The destination-wide `[<destination>]` table, if any.
    pub fn destination_table(&self, destination: &str) -> Result<Option<&toml::Table>> {
        match self.destinations.get(destination) {
            None => Ok(None),
            Some(toml::Value::Table(t)) => Ok(Some(t)),
            Some(_) => Err(ConfigError::invalid(destination, "must be a table")),
        }
    }

    /// Every destination name the config mentions (in events sections and top-level tables),
    /// each with the key that mentions it first.
    pub fn destination_names(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for top in self.destinations.keys() {
            out.push((top.clone(), top.clone()));
        }
        for (name, m) in &self.events {
            for d in m.keys() {
                if !out.iter().any(|(n, _)| n == d) {
                    out.push((d.clone(), format!("events.{name}.{d}")));
                }
            }
        }
        out
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
        assert!(cfg.events["lead"].contains_key("meta"));
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
    fn a_malformed_custom_name_is_refused_and_destinations_are_listed() {
        let err = MappingConfig::parse("[events.Demo]\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("events.Demo:"), "{err}");
        let cfg =
            MappingConfig::parse("[events.lead.nowhere]\n[crm]\nid_property = \"x\"\n").unwrap();
        assert_eq!(
            cfg.destination_names(),
            [
                ("crm".to_owned(), "crm".to_owned()),
                ("nowhere".to_owned(), "events.lead.nowhere".to_owned())
            ]
        );
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        event: String,
        #[serde(default)]
        value: Option<f64>,
    }

    #[test]
    fn a_typed_section_names_the_wrong_key() {
        let cfg = MappingConfig::parse("[events.lead.x]\nevent = \"Lead\"\nevnt = 1\n").unwrap();
        let err = cfg.typed_sections::<Section>("x").unwrap_err().to_string();
        assert!(err.starts_with("events.lead.x.evnt:"), "{err}");
        assert!(err.contains("unknown field `evnt`"), "{err}");
        let cfg = MappingConfig::parse("[events.lead.x]\nvalue = 1.5\n").unwrap();
        let err = cfg.typed_sections::<Section>("x").unwrap_err().to_string();
        assert!(
            err.starts_with("events.lead.x.event: missing field"),
            "{err}"
        );
        let cfg =
            MappingConfig::parse("[events.lead.x]\nevent = \"Lead\"\nvalue = \"a\"\n").unwrap();
        let err = cfg.typed_sections::<Section>("x").unwrap_err().to_string();
        assert!(err.starts_with("events.lead.x.value:"), "{err}");
        let cfg = MappingConfig::parse("[events.lead.x]\nevent = \"Lead\"\n").unwrap();
        assert_eq!(
            cfg.typed_sections::<Section>("x").unwrap()["lead"].event,
            "Lead"
        );
    }

    #[test]
    fn a_named_file_that_is_missing_is_an_error_but_the_default_path_falls_back() {
        let missing = Path::new("/nonexistent/leadpipe.toml");
        assert!(MappingConfig::load(missing, true).is_err());
        assert!(MappingConfig::load(missing, false).is_ok());
    }
}
