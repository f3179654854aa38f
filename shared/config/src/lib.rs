//! Configuration shared by every leadpipe service. Variables are the ones SPEC.md names (they
//! are the contract, so there is no prefix scheme of our own); a bad or missing value stops
//! the service at start-up with a message naming the variable or key and the reason.
//!
//! # Layout
//! - [`consent`]: `CONSENT_POLICY`, how ad destinations gate personal data.
//! - [`env`]: typed reads of environment variables with defaults.
//! - [`sources`]: the sources file (`LEADPIPE_SOURCES`): ids, HMAC secrets, regions, limits.
//! - [`mapping`]: the mapping config (`LEADPIPE_CONFIG`): what each destination receives.
//! - [`error`]: the one error type, naming what is wrong.

#![forbid(unsafe_code)]

pub mod consent;
pub mod env;
pub mod error;
pub mod mapping;
pub mod sources;

pub use error::{ConfigError, Result};

/// Default `AMQP_URL` (SPEC §5).
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default `DATABASE_URL` (SPEC §5).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/leadpipe";
/// Default `LEADPIPE_NAMESPACE` (SPEC §4).
pub const DEFAULT_NAMESPACE: &str = "leadpipe";

/// Where the broker is and which namespace of names to use.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// `AMQP_URL`. May hold a password: never logged.
    pub url: String,
    /// `LEADPIPE_NAMESPACE`: the prefix of every exchange and queue name.
    pub namespace: String,
}

impl AmqpSettings {
    /// Reads `AMQP_URL` and `LEADPIPE_NAMESPACE`.
    pub fn from_env() -> Result<Self> {
        let namespace = env::string_or("LEADPIPE_NAMESPACE", DEFAULT_NAMESPACE);
        validate_namespace(&namespace)?;
        Ok(Self {
            url: env::string_or("AMQP_URL", DEFAULT_AMQP_URL),
            namespace,
        })
    }
}

/// A namespace becomes part of every queue name: keep it to characters that need no quoting
/// in the CLI, the management UI or a Prometheus label.
pub fn validate_namespace(ns: &str) -> Result<()> {
    let ok = !ns.is_empty()
        && ns.len() <= 64
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "LEADPIPE_NAMESPACE",
            "must be 1-64 characters of letters, digits, '_', '-' or '.'",
        ))
    }
}

/// Where the database is.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `DATABASE_URL`. May hold a password: never logged.
    pub url: String,
}

impl DatabaseSettings {
    /// Reads `DATABASE_URL`.
    pub fn from_env() -> Self {
        Self {
            url: env::string_or("DATABASE_URL", DEFAULT_DATABASE_URL),
        }
    }
}
