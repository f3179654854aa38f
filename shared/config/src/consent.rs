//! `CONSENT_POLICY` (SPEC §1.3): whether an `unknown` `ad_user_data` signal counts as granted.
//! Shared by every ad destination so they gate personal data the same way.

use leadpipe_events::model::ConsentState;

use crate::env;
use crate::error::{ConfigError, Result};

/// Whether an `unknown` ad consent counts as granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsentPolicy {
    /// Only `granted` lets personal data leave (the default, SPEC §1.3).
    #[default]
    Strict,
    /// `unknown` lets it leave too; `denied` never does.
    UnknownAllows,
}

impl ConsentPolicy {
    /// Reads `CONSENT_POLICY` (`strict`, the default, or `unknown_allows`).
    pub fn from_env() -> Result<Self> {
        match env::string_or("CONSENT_POLICY", "strict").as_str() {
            "strict" => Ok(Self::Strict),
            "unknown_allows" => Ok(Self::UnknownAllows),
            _ => Err(ConfigError::invalid(
                "CONSENT_POLICY",
                "must be strict or unknown_allows",
            )),
        }
    }

    /// Whether personal data may leave under this signal.
    pub fn allows(self, state: ConsentState) -> bool {
        match state {
            ConsentState::Granted => true,
            ConsentState::Unknown => self == Self::UnknownAllows,
            ConsentState::Denied => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_granted_passes_the_strict_policy_and_denied_never_passes() {
        assert!(ConsentPolicy::Strict.allows(ConsentState::Granted));
        assert!(!ConsentPolicy::Strict.allows(ConsentState::Unknown));
        assert!(!ConsentPolicy::Strict.allows(ConsentState::Denied));
        assert!(ConsentPolicy::UnknownAllows.allows(ConsentState::Unknown));
        assert!(!ConsentPolicy::UnknownAllows.allows(ConsentState::Denied));
    }
}
