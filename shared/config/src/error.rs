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

impl ConfigError {
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
