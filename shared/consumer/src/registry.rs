//! What leadpipe knows about a destination, declared once in the destination's own crate as a
//! [`Registration`], and the [`Registry`] of them (`leadpipe-registry` holds the list). The
//! runtime, the CLI, ingest's topology and the test support read destinations from here; none
//! of them names one.

use leadpipe_bus::Destination;
use leadpipe_config::mapping::MappingConfig;
use leadpipe_config::{ConfigError, env};
use leadpipe_events::Envelope;

/// The variable that lists the enabled destinations (default: every registered one).
pub const DESTINATIONS_VARIABLE: &str = "LEADPIPE_DESTINATIONS";

/// One destination, as its crate declares it.
#[derive(Debug)]
pub struct Registration {
    /// Its name in queue names, metrics labels and the delivery log.
    pub destination: Destination,
    /// Other spellings an operator may type (`google-ads`).
    pub aliases: &'static [&'static str],
    /// The service (binary) that delivers to it.
    pub service: &'static str,
    /// What it is, for people (`Meta Conversions API`).
    pub title: &'static str,
    /// Default port of the sender's `/metrics`, `/healthz` and `/readyz`.
    pub metrics_port: u16,
    /// How old an event the destination still takes (`None`: any age), from the same
    /// constants the sender's own `expired` decision uses: the CLI's replay refusal reads it.
    pub acceptance_window: fn(&Envelope) -> Option<chrono::Duration>,
    /// How long the delivery log keeps its rows ([`Retention`]).
    pub retention: Retention,
    /// Reads the destination's sections of the mapping config into its typed mapping,
    /// naming the key that is wrong.
    pub check_mapping: fn(&MappingConfig) -> Result<(), ConfigError>,
    /// The variables this environment lacks to send for real (`make run` starts the sender
    /// in DRY_RUN when any is missing, and says which).
    pub missing_credentials: fn() -> Vec<&'static str>,
}

/// The variable that, set, keeps every destination's delivery-log rows this many seconds
/// instead of its own retention (benchmarks and soaks: below an acceptance window, a copy of an
/// event may be sent twice).
pub const RETENTION_OVERRIDE_VARIABLE: &str = "DELIVERY_RETENTION_SECS";

/// How long past an acceptance window a row is kept (clock skew between the sender that
/// decides `expired` and the one that drops partitions, with room to spare).
pub const RETENTION_MARGIN: chrono::Duration = chrono::Duration::days(1);

/// How long the delivery log keeps a destination's rows: past that, a copy of an event finds
/// no row and is handled as new.
#[derive(Debug, Clone, Copy)]
pub enum Retention {
    /// The longest acceptance window of any of its events: rows are kept that long plus
    /// [`RETENTION_MARGIN`]. A copy older than the window is recorded `expired` before any
    /// request, so a dropped row cannot make it sent twice.
    AcceptanceWindow(chrono::Duration),
    /// No window (the CRM, whose writes are upserts): `variable` days, `default_days` when
    /// unset.
    Days {
        /// The variable (`DELIVERY_RETENTION_DAYS_CRM`).
        variable: &'static str,
        /// Its default.
        default_days: u32,
    },
}

impl Retention {
    /// How long rows are kept without [`RETENTION_OVERRIDE_VARIABLE`].
    pub fn own(&self) -> Result<chrono::Duration, ConfigError> {
        match *self {
            Self::AcceptanceWindow(window) => Ok(window + RETENTION_MARGIN),
            Self::Days {
                variable,
                default_days,
            } => {
                let days: u32 = env::parse_or(variable, default_days, "a number of days")?;
                if days == 0 {
                    return Err(ConfigError::invalid(variable, "must be at least 1"));
                }
                Ok(chrono::Duration::days(i64::from(days)))
            }
        }
    }

    /// How long rows are kept: [`RETENTION_OVERRIDE_VARIABLE`] when set, else [`Self::own`].
    pub fn from_env(&self) -> Result<chrono::Duration, ConfigError> {
        let own = self.own()?;
        match env::optional(RETENTION_OVERRIDE_VARIABLE) {
            None => Ok(own),
            Some(_) => {
                let secs: u32 = env::parse_or(RETENTION_OVERRIDE_VARIABLE, 0, "seconds")?;
                if secs < 60 {
                    return Err(ConfigError::invalid(
                        RETENTION_OVERRIDE_VARIABLE,
                        "must be at least 60 seconds",
                    ));
                }
                Ok(chrono::Duration::seconds(i64::from(secs)))
            }
        }
    }
}

impl Registration {
    /// Its name.
    pub fn name(&self) -> &'static str {
        self.destination.as_str()
    }
}

/// Every registered destination.
#[derive(Debug, Clone, Copy)]
pub struct Registry(&'static [&'static Registration]);

impl Registry {
    /// A registry of `registrations`, in queue order.
    pub const fn new(registrations: &'static [&'static Registration]) -> Self {
        Self(registrations)
    }

    /// Every registration.
    pub fn all(&self) -> &'static [&'static Registration] {
        self.0
    }

    /// Every registered destination.
    pub fn destinations(&self) -> Vec<Destination> {
        self.0.iter().map(|r| r.destination).collect()
    }

    /// The registered names, comma-separated (for error messages).
    pub fn names(&self) -> String {
        self.0
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The registration of `destination`.
    pub fn get(&self, destination: Destination) -> Option<&'static Registration> {
        self.0
            .iter()
            .copied()
            .find(|r| r.destination == destination)
    }

    /// The registration named `name` (or one of its aliases).
    pub fn parse(&self, name: &str) -> Option<&'static Registration> {
        let name = name.trim();
        self.0
            .iter()
            .copied()
            .find(|r| r.name() == name || r.aliases.contains(&name))
    }

    /// Parses a name an operator typed; the error lists the registered names.
    pub fn parse_named(
        &self,
        what: &str,
        name: &str,
    ) -> Result<&'static Registration, ConfigError> {
        self.parse(name)
            .ok_or_else(|| self.not_registered(what, name))
    }

    /// The error for `name` at `key`: not a registered destination, listing those that are.
    fn not_registered(&self, key: impl Into<String>, name: &str) -> ConfigError {
        ConfigError::invalid(
            key,
            format!(
                "{name:?} is not a registered destination (one of {})",
                self.names()
            ),
        )
    }

    /// The enabled destinations: `LEADPIPE_DESTINATIONS` (comma-separated names), or every
    /// registered one when it is unset.
    pub fn enabled_from_env(&self) -> Result<Vec<&'static Registration>, ConfigError> {
        self.enabled(env::optional(DESTINATIONS_VARIABLE).as_deref())
    }

    /// The enabled destinations for a value of `LEADPIPE_DESTINATIONS`.
    pub fn enabled(&self, list: Option<&str>) -> Result<Vec<&'static Registration>, ConfigError> {
        let Some(list) = list.filter(|l| !l.trim().is_empty()) else {
            return Ok(self.0.to_vec());
        };
        let mut out: Vec<&'static Registration> = Vec::new();
        for name in list.split(',').map(str::trim) {
            if name.is_empty() {
                return Err(ConfigError::invalid(
                    DESTINATIONS_VARIABLE,
                    "an empty name (write names separated by commas: meta,ga4)",
                ));
            }
            let r = self.parse_named(DESTINATIONS_VARIABLE, name)?;
            if !out.iter().any(|o| o.destination == r.destination) {
                out.push(r);
            }
        }
        // Queue order, whatever order the variable used.
        out.sort_by_key(|r| self.0.iter().position(|a| a.destination == r.destination));
        Ok(out)
    }

    /// Checks a mapping config: every destination it names is registered, and each
    /// registered destination's sections read into its typed mapping.
    pub fn check_mapping(&self, cfg: &MappingConfig) -> Result<(), ConfigError> {
        for (name, key) in cfg.destination_names() {
            // Sections use the name itself, never an alias.
            if self.parse(&name).is_none_or(|r| r.name() != name) {
                return Err(self.not_registered(key, &name));
            }
        }
        for r in self.0 {
            (r.check_mapping)(cfg)?;
        }
        Ok(())
    }
}

/// Whether a `LEADPIPE_DESTINATIONS` value names `registration` (by its name or an alias, as
/// [`Registry::enabled`] reads it).
fn enables(list: &str, registration: &Registration) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|n| n == registration.name() || registration.aliases.contains(&n))
}

/// Whether `registration`'s sender may run: `LEADPIPE_DESTINATIONS` is unset or names it. A sender
/// reads only names here (it does not know the other destinations); ingest and the CLI check
/// the whole list against the registry.
pub fn enabled_by_env(registration: &Registration) -> Result<(), ConfigError> {
    let Some(list) = env::optional(DESTINATIONS_VARIABLE) else {
        return Ok(());
    };
    if enables(&list, registration) {
        Ok(())
    } else {
        let destination = registration.destination;
        Err(ConfigError::invalid(
            DESTINATIONS_VARIABLE,
            format!(
                "{list:?} does not enable {destination}: add it, or do not run its sender (its queue is not declared)"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &Envelope) -> Option<chrono::Duration> {
        None
    }
    fn ok(_: &MappingConfig) -> Result<(), ConfigError> {
        Ok(())
    }
    fn refuses(cfg: &MappingConfig) -> Result<(), ConfigError> {
        cfg.typed_sections::<Strict>("two").map(|_| ())
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Strict {}

    static ONE: Registration = Registration {
        destination: Destination::new("one"),
        aliases: &["uno"],
        service: "one-sender",
        title: "One",
        metrics_port: 1,
        acceptance_window: none,
        retention: Retention::AcceptanceWindow(chrono::Duration::days(1)),
        check_mapping: ok,
        missing_credentials: Vec::new,
    };
    static TWO: Registration = Registration {
        destination: Destination::new("two"),
        aliases: &[],
        service: "two-sender",
        title: "Two",
        metrics_port: 2,
        acceptance_window: none,
        retention: Retention::AcceptanceWindow(chrono::Duration::days(1)),
        check_mapping: refuses,
        missing_credentials: Vec::new,
    };
    static REGISTRY: Registry = Registry::new(&[&ONE, &TWO]);

    #[test]
    fn the_enabled_list_defaults_to_all_and_is_checked() {
        let names = |v: Vec<&Registration>| v.iter().map(|r| r.name()).collect::<Vec<_>>();
        assert_eq!(names(REGISTRY.enabled(None).unwrap()), ["one", "two"]);
        assert_eq!(
            names(REGISTRY.enabled(Some("two, uno")).unwrap()),
            ["one", "two"]
        );
        assert_eq!(names(REGISTRY.enabled(Some("two,two")).unwrap()), ["two"]);
        let err = REGISTRY.enabled(Some("one,three")).unwrap_err().to_string();
        assert!(err.starts_with("LEADPIPE_DESTINATIONS:"), "{err}");
        assert!(
            err.contains("\"three\"") && err.contains("one, two"),
            "{err}"
        );
        assert!(REGISTRY.enabled(Some("one,,two")).is_err());
    }

    #[test]
    fn a_sender_is_enabled_by_its_name_or_an_alias_as_ingest_reads_the_list() {
        for (list, enabled) in [
            ("one", true),
            (" two , uno ", true),
            ("two", false),
            ("ones", false),
        ] {
            assert_eq!(enables(list, &ONE), enabled, "{list:?}");
            let by_registry = REGISTRY
                .enabled(Some(list))
                .is_ok_and(|v| v.iter().any(|r| r.name() == "one"));
            assert_eq!(by_registry, enabled, "{list:?}");
        }
    }

    #[test]
    fn a_mapping_naming_an_unregistered_destination_or_a_bad_key_is_refused() {
        let cfg = MappingConfig::parse("[events.lead.three]\n").unwrap();
        let err = REGISTRY.check_mapping(&cfg).unwrap_err().to_string();
        assert!(err.starts_with("events.lead.three:"), "{err}");
        let cfg = MappingConfig::parse("[events.lead.uno]\n").unwrap();
        assert!(
            REGISTRY.check_mapping(&cfg).is_err(),
            "an alias is not a section name"
        );
        let cfg = MappingConfig::parse("[events.lead.two]\nx = 1\n").unwrap();
        let err = REGISTRY.check_mapping(&cfg).unwrap_err().to_string();
        assert!(err.contains("unknown field `x`"), "{err}");
        let cfg = MappingConfig::parse("[events.lead.one]\n[events.lead.two]\n").unwrap();
        REGISTRY.check_mapping(&cfg).unwrap();
    }
}
