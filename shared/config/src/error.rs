//! The configuration error: always names the variable, file or key, and the reason.

/// A configuration problem found at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable or key has a value that cannot be used.
    #[error("{key}: {reason}")]
    Invalid {
        /// The variable (`INGEST_ADDR`) or file key (`sources[0].secret_env`).
        key: String,
        /// Why the value cannot be used.
        reason: String,
    },
    /// A required variable or key is not set.
    #[error("{key} is not set: {hint}")]
    Missing {
        /// The variable or key.
        key: String,
        /// What it is for and how to set it.
        hint: String,
    },
    /// A sender lacks what it needs to send for real, and `DRY_RUN` was not asked for.
    #[error(
        "{destination} cannot be sent to: {} not set. Set {}, or set DRY_RUN=true to build and \
         record every request without sending it",
        missing.join(", "),
        if missing.len() == 1 { "it" } else { "them" }
    )]
    Credentials {
        /// The destination (`Meta`, `Google Ads`).
        destination: String,
        /// Every variable or mapping key missing.
        missing: Vec<String>,
    },
    /// A file could not be read or parsed.
    #[error("{path} ({variable}): {reason}")]
    File {
        /// The file's path.
        path: String,
        /// The variable that named it.
        variable: &'static str,
        /// What went wrong, with the line for a parse error.
        reason: String,
    },
}

/// The names whose condition is true: `missing(&[("META_PIXEL_ID", pixel.is_none()), …])`.
pub fn missing(checks: &[(&'static str, bool)]) -> Vec<&'static str> {
    checks
        .iter()
        .filter_map(|(name, absent)| absent.then_some(*name))
        .collect()
}

/// The variables among `names` that are unset or empty.
pub fn missing_from_env(names: &[&'static str]) -> Vec<&'static str> {
    names
        .iter()
        .copied()
        .filter(|n| crate::env::optional(n).is_none())
        .collect()
}

impl ConfigError {
    /// `Ok` when nothing is `missing` or `DRY_RUN` was asked for; otherwise the error naming
    /// every missing variable or key. `DRY_RUN` is never assumed: a sender that silently
    /// recorded everything as `dry_run` would discard every conversion.
    pub fn require_unless_dry_run(
        destination: &str,
        dry_run: bool,
        missing: &[&str],
    ) -> Result<(), Self> {
        if dry_run || missing.is_empty() {
            return Ok(());
        }
        Err(Self::Credentials {
            destination: destination.to_owned(),
            missing: missing.iter().map(|m| (*m).to_owned()).collect(),
        })
    }

    /// An unusable value of `key`.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Result with [`ConfigError`].
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;
