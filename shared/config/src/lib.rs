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

/// Where the broker is and which namespace of names to use. `Debug` shows the URL without
/// its password.
#[derive(Clone)]
pub struct AmqpSettings {
    /// `AMQP_URL`. May hold a password: never logged.
    pub url: String,
    /// `LEADPIPE_NAMESPACE`: the prefix of every exchange and queue name.
    pub namespace: String,
    /// `AMQP_QUORUM_GROUP_SIZE`: replicas of each quorum queue when it is created (default:
    /// the number of nodes in `AMQP_URL`).
    pub quorum_group_size: u32,
}

impl AmqpSettings {
    /// Reads `AMQP_URL` (one URL, or a cluster's nodes separated by commas),
    /// `LEADPIPE_NAMESPACE` and `AMQP_QUORUM_GROUP_SIZE`.
    pub fn from_env() -> Result<Self> {
        let namespace = env::string_or("LEADPIPE_NAMESPACE", DEFAULT_NAMESPACE);
        validate_namespace(&namespace)?;
        let url = env::string_or("AMQP_URL", DEFAULT_AMQP_URL);
        let nodes: Vec<&str> = url.split(',').map(str::trim).collect();
        if let Some(bad) = nodes
            .iter()
            .find(|n| !(n.starts_with("amqp://") || n.starts_with("amqps://")))
        {
            return Err(ConfigError::invalid(
                "AMQP_URL",
                format!(
                    "{:?} is not an amqp:// or amqps:// URL (a cluster's nodes are separated by commas)",
                    redacted_url(bad)
                ),
            ));
        }
        let quorum_group_size = env::parse_or(
            "AMQP_QUORUM_GROUP_SIZE",
            u32::try_from(nodes.len()).unwrap_or(u32::MAX),
            "a number of nodes",
        )?;
        if quorum_group_size == 0 {
            return Err(ConfigError::invalid(
                "AMQP_QUORUM_GROUP_SIZE",
                "must be at least 1",
            ));
        }
        Ok(Self {
            url,
            namespace,
            quorum_group_size,
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

/// Where the database is. `Debug` shows the URL without its password.
#[derive(Clone)]
pub struct DatabaseSettings {
    /// `DATABASE_URL`. May hold a password: never logged.
    pub url: String,
}

impl std::fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<String> = self
            .url
            .split(',')
            .map(|u| redacted_url(u.trim()))
            .collect();
        f.debug_struct("AmqpSettings")
            .field("url", &nodes.join(","))
            .field("namespace", &self.namespace)
            .field("quorum_group_size", &self.quorum_group_size)
            .finish()
    }
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redacted_url(&self.url))
            .finish()
    }
}

/// `url` with the password of its `user:password@` part (and any query, where a password
/// can travel too: `?password=…`) replaced by `[redacted]`, for logs and `Debug`.
pub fn redacted_url(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((u, _)) => (u, "?[redacted]"),
        None => (url, ""),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return format!("{url}{query}");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:[redacted]@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{path}{query}")
}

impl DatabaseSettings {
    /// Reads `DATABASE_URL`.
    pub fn from_env() -> Self {
        Self {
            url: env::string_or("DATABASE_URL", DEFAULT_DATABASE_URL),
        }
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn urls_print_without_their_passwords() {
        for (url, want) in [
            (
                "amqp://leadpipe:hunter2@rabbitmq:5672/%2f",
                "amqp://leadpipe:[redacted]@rabbitmq:5672/%2f",
            ),
            (
                "postgres://u:p%40ss@db/leadpipe?sslmode=require&password=x",
                "postgres://u:[redacted]@db/leadpipe?[redacted]",
            ),
            (
                "postgres://postgres@127.0.0.1:5432/leadpipe",
                "postgres://postgres@127.0.0.1:5432/leadpipe",
            ),
            (
                "amqp://guest:guest@127.0.0.1:5672",
                "amqp://guest:[redacted]@127.0.0.1:5672",
            ),
        ] {
            assert_eq!(redacted_url(url), want);
        }
        let amqp = AmqpSettings {
            url: "amqp://leadpipe:hunter2@rabbitmq-0:5672/%2f, amqp://leadpipe:hunter2@rabbitmq:5672/%2f"
                .into(),
            namespace: "ns".into(),
            quorum_group_size: 2,
        };
        let db = DatabaseSettings {
            url: "postgres://u:s3cr3t@db/leadpipe".into(),
        };
        let text = format!("{amqp:?} {db:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("s3cr3t"),
            "{text}"
        );
        assert!(
            text.contains("rabbitmq:5672") && text.contains("ns"),
            "{text}"
        );
    }
}
