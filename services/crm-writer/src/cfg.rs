//! crm-writer settings (SPEC §5) and the CRM parts of the mapping config: the CRM-wide field
//! map (`[crm.fields]`, canonical path → CRM field, with a length limit each) and, per event,
//! the lifecycle stage (`[events.<name>.crm]`).

use std::collections::HashMap;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use leadpipe_config::mapping::MappingConfig;
use leadpipe_config::{ConfigError, env};
use leadpipe_consumer::RuntimeSettings;

/// HubSpot's API host.
pub const DEFAULT_HUBSPOT_BASE_URL: &str = "https://api.hubapi.com";
/// HubSpot takes at most 100 inputs per batch upsert.
pub const HUBSPOT_MAX_BATCH: usize = 100;
/// A field's value is cut to this many characters unless the map says otherwise (HubSpot's
/// text properties hold 65,536).
pub const DEFAULT_MAX_CHARS: usize = 65_000;
/// The custom unique property holding the lead id, for leads without an email.
pub const DEFAULT_ID_PROPERTY: &str = "leadpipe_lead_id";

/// Where leads are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrmKind {
    /// A signed JSON POST per event (Standard Webhooks) to `CRM_WEBHOOK_URL`.
    Webhook {
        /// `CRM_WEBHOOK_URL`.
        url: Option<String>,
    },
    /// HubSpot contacts, batch upserted.
    HubSpot {
        /// `HUBSPOT_API_BASE_URL`.
        base_url: String,
    },
}

/// One CRM field fed from the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmField {
    /// Canonical path (`contact.email`, `context.transcript`, `custom.plan`, `event_id`).
    pub path: String,
    /// The CRM's field name.
    pub name: String,
    /// Longer values are cut to this many characters.
    pub max_chars: usize,
}

/// What the CRM receives for one canonical event name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmMapping {
    /// The lifecycle stage written with it (`lead`, `marketingqualifiedlead`, …), if any.
    pub lifecycle_stage: Option<String>,
}

/// Everything crm-writer needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The consumer runtime's settings.
    pub runtime: RuntimeSettings,
    /// `CRM_KIND`.
    pub kind: CrmKind,
    /// `CRM_WEBHOOK_SECRET` (`whsec_…`, base64), for the webhook kind.
    pub webhook_secret: Option<SecretString>,
    /// `HUBSPOT_ACCESS_TOKEN`, for the hubspot kind.
    pub hubspot_token: Option<SecretString>,
    /// `DRY_RUN` (only when asked for: without it a missing URL or credential refuses to
    /// start).
    pub dry_run: bool,
    /// `CRM_TIMEOUT_MS`.
    pub timeout: Duration,
    /// `[crm.fields]`.
    pub fields: Vec<CrmField>,
    /// `[crm] id_property`: HubSpot's unique property for the lead id.
    pub id_property: String,
    /// Per canonical event name.
    pub mappings: HashMap<String, CrmMapping>,
}

/// The field map used when the mapping config has no `[crm.fields]`: HubSpot's contact
/// property names, and the context sales needs.
pub const DEFAULT_FIELDS: [(&str, &str); 20] = [
    ("contact.email", "email"),
    ("contact.phone", "phone"),
    ("contact.first_name", "firstname"),
    ("contact.last_name", "lastname"),
    ("contact.company", "company"),
    ("contact.job_title", "jobtitle"),
    ("contact.city", "city"),
    ("contact.region", "state"),
    ("contact.postal_code", "zip"),
    ("contact.country", "country"),
    ("lead_id", "leadpipe_lead_id"),
    ("context.transcript", "leadpipe_transcript"),
    ("context.entry_page_url", "leadpipe_entry_page"),
    ("context.chatbot", "leadpipe_chatbot"),
    ("context.qualification", "leadpipe_qualification"),
    ("attribution.utm_source", "utm_source"),
    ("attribution.utm_medium", "utm_medium"),
    ("attribution.utm_campaign", "utm_campaign"),
    ("attribution.gclid", "leadpipe_gclid"),
    ("consent.ad_user_data", "leadpipe_ad_consent"),
];

/// Paths a field may read beside the canonical event's own fields.
fn is_readable(path: &str) -> bool {
    ["event_id", "ingested_at"].contains(&path) || leadpipe_events::validate::is_mappable_path(path)
}

/// Reads `[crm]`: the field map and the id property, naming any bad key.
pub fn crm_fields(cfg: &MappingConfig) -> Result<(Vec<CrmField>, String), ConfigError> {
    let Some(crm) = cfg.destination_table("crm")? else {
        return Ok((default_fields(), DEFAULT_ID_PROPERTY.to_owned()));
    };
    for k in crm.keys() {
        if !["fields", "id_property"].contains(&k.as_str()) {
            return Err(ConfigError::invalid(
                format!("crm.{k}"),
                "is not a crm key (fields, id_property)",
            ));
        }
    }
    let id_property = match crm.get("id_property") {
        None => DEFAULT_ID_PROPERTY.to_owned(),
        Some(toml::Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        Some(_) => {
            return Err(ConfigError::invalid(
                "crm.id_property",
                "must be the name of a unique CRM property",
            ));
        }
    };
    let fields = match crm.get("fields") {
        None => default_fields(),
        Some(toml::Value::Table(t)) => {
            let mut out = Vec::new();
            for (path, spec) in t {
                let key = format!("crm.fields.{path}");
                if !is_readable(path) {
                    return Err(ConfigError::invalid(
                        key,
                        "is not a canonical path (contact.email, context.transcript, custom.<key>, …)",
                    ));
                }
                let (name, max_chars) = match spec {
                    toml::Value::String(name) => (name.clone(), DEFAULT_MAX_CHARS),
                    toml::Value::Table(t) => {
                        let name =
                            t.get("name").and_then(toml::Value::as_str).ok_or_else(|| {
                                ConfigError::invalid(&key, "needs name = \"<crm field>\"")
                            })?;
                        let max = match t.get("max_chars") {
                            None => DEFAULT_MAX_CHARS,
                            Some(toml::Value::Integer(n)) if *n > 0 => *n as usize,
                            Some(_) => {
                                return Err(ConfigError::invalid(
                                    format!("{key}.max_chars"),
                                    "must be a positive number of characters",
                                ));
                            }
                        };
                        if let Some(extra) = t.keys().find(|k| *k != "name" && *k != "max_chars") {
                            return Err(ConfigError::invalid(
                                format!("{key}.{extra}"),
                                "is not a field key (name, max_chars)",
                            ));
                        }
                        (name.to_owned(), max)
                    }
                    _ => {
                        return Err(ConfigError::invalid(
                            key,
                            "must be a CRM field name or { name, max_chars }",
                        ));
                    }
                };
                if name.trim().is_empty() {
                    return Err(ConfigError::invalid(key, "names an empty CRM field"));
                }
                out.push(CrmField {
                    path: path.clone(),
                    name: name.trim().to_owned(),
                    max_chars,
                });
            }
            out
        }
        Some(_) => return Err(ConfigError::invalid("crm.fields", "must be a table")),
    };
    Ok((fields, id_property))
}

fn default_fields() -> Vec<CrmField> {
    DEFAULT_FIELDS
        .iter()
        .map(|(path, name)| CrmField {
            path: (*path).to_owned(),
            name: (*name).to_owned(),
            max_chars: DEFAULT_MAX_CHARS,
        })
        .collect()
}

/// Reads the `crm` sections of the events, naming any bad key.
pub fn crm_mappings(cfg: &MappingConfig) -> Result<HashMap<String, CrmMapping>, ConfigError> {
    /// `[events.<name>.crm]` as written.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Section {
        lifecycle_stage: Option<String>,
    }
    let sections: HashMap<String, Section> = cfg.typed_sections(crate::DESTINATION.as_str())?;
    let mut out = HashMap::new();
    for (name, section) in sections {
        let lifecycle_stage = match section.lifecycle_stage.map(|s| s.trim().to_owned()) {
            Some(s) if s.is_empty() => {
                return Err(ConfigError::invalid(
                    format!("events.{name}.crm.lifecycle_stage"),
                    "must be the stage's internal value, such as lead or customer",
                ));
            }
            stage => stage,
        };
        out.insert(name, CrmMapping { lifecycle_stage });
    }
    Ok(out)
}

impl Settings {
    /// Reads the environment and the mapping config.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mapping = MappingConfig::from_env()?;
        let (fields, id_property) = crm_fields(&mapping)?;
        let kind = match env::string_or("CRM_KIND", "webhook").as_str() {
            "webhook" => CrmKind::Webhook {
                url: env::optional("CRM_WEBHOOK_URL"),
            },
            "hubspot" => CrmKind::HubSpot {
                base_url: env::base_url("HUBSPOT_API_BASE_URL", DEFAULT_HUBSPOT_BASE_URL)?,
            },
            _ => {
                return Err(ConfigError::invalid(
                    "CRM_KIND",
                    "must be webhook or hubspot",
                ));
            }
        };
        if let CrmKind::Webhook { url: Some(url) } = &kind
            && !leadpipe_events::identifiers::is_http_url(url)
        {
            return Err(ConfigError::invalid(
                "CRM_WEBHOOK_URL",
                "must be an http(s) URL",
            ));
        }
        let webhook_secret = env::optional("CRM_WEBHOOK_SECRET").map(SecretString::from);
        if let Some(secret) = &webhook_secret {
            crate::webhook::signing_key(secret)
                .map_err(|why| ConfigError::invalid("CRM_WEBHOOK_SECRET", why))?;
        }
        let runtime = RuntimeSettings::from_env(&crate::REGISTRATION)?;
        let settings = Self {
            dry_run: runtime.dry_run,
            runtime,
            kind,
            webhook_secret,
            hubspot_token: env::optional("HUBSPOT_ACCESS_TOKEN").map(SecretString::from),
            timeout: Duration::from_millis(env::parse_or(
                "CRM_TIMEOUT_MS",
                15_000u64,
                "milliseconds",
            )?),
            fields,
            id_property,
            mappings: crm_mappings(&mapping)?,
        };
        ConfigError::require_unless_dry_run("the CRM", settings.dry_run, &settings.missing())?;
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

    #[test]
    fn the_shipped_map_reads_contact_and_context_fields() {
        let cfg = MappingConfig::parse(leadpipe_config::mapping::SHIPPED_DEFAULTS).unwrap();
        let (fields, id) = crm_fields(&cfg).unwrap();
        assert_eq!(id, "leadpipe_lead_id");
        let email = fields.iter().find(|f| f.path == "contact.email").unwrap();
        assert_eq!(email.name, "email");
        assert!(fields.iter().any(|f| f.path == "context.transcript"));
        let m = crm_mappings(&cfg).unwrap();
        assert_eq!(m["lead"].lifecycle_stage.as_deref(), Some("lead"));
        assert_eq!(m["won"].lifecycle_stage.as_deref(), Some("customer"));
    }

    #[test]
    fn bad_crm_keys_and_paths_are_named() {
        for (text, key) in [
            (
                "[crm.fields]\n\"contact.mail\" = \"email\"\n",
                "crm.fields.contact.mail",
            ),
            (
                "[crm.fields]\n\"context.transcript\" = { name = \"t\", max_chars = 0 }\n",
                "crm.fields.context.transcript.max_chars",
            ),
            (
                "[crm.fields]\n\"contact.email\" = { field = \"email\" }\n",
                "crm.fields.contact.email",
            ),
            ("[crm]\nobject = \"contacts\"\n", "crm.object"),
            (
                "[events.lead.crm]\nstage = \"lead\"\n",
                "events.lead.crm.stage",
            ),
            (
                "[events.lead.crm]\nlifecycle_stage = 3\n",
                "events.lead.crm.lifecycle_stage",
            ),
            (
                "[events.lead.crm]\nlifecycle_stage = \"\"\n",
                "events.lead.crm.lifecycle_stage",
            ),
        ] {
            let cfg = MappingConfig::parse(text).unwrap();
            let err = crm_fields(&cfg)
                .and_then(|_| crm_mappings(&cfg).map(|_| (Vec::<CrmField>::new(), String::new())))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(key), "{err}");
        }
    }

    #[test]
    fn custom_and_qualification_keys_are_readable() {
        assert!(is_readable("custom.plan"));
        assert!(is_readable("context.qualification.budget"));
        assert!(is_readable("event_id"));
        assert!(!is_readable("custom."));
        assert!(!is_readable("contact.nickname"));
    }
}
