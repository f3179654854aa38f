//! Typed reads of environment variables. An empty variable counts as unset.

use std::str::FromStr;

use crate::error::{ConfigError, Result};

/// The variable's value, or `None` when unset or empty.
pub fn optional(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The variable's value, or `default`.
pub fn string_or(name: &str, default: &str) -> String {
    optional(name).unwrap_or_else(|| default.to_owned())
}

/// The variable parsed as `T`, or `default`; a value that does not parse is an error naming
/// the variable and what it expected.
pub fn parse_or<T: FromStr>(name: &str, default: T, expected: &str) -> Result<T> {
    match optional(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| ConfigError::invalid(name, format!("expected {expected}"))),
    }
}

/// `true` for `1`, `true`, `yes`, `on`; `false` for `0`, `false`, `no`, `off`; else an error.
pub fn flag(name: &str, default: bool) -> Result<bool> {
    match optional(name).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) => match v.as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::invalid(name, "expected true or false")),
        },
    }
}
