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

/// The variable as a destination's base URL, or `default`: `http://` or `https://`, a host,
/// no query or fragment (a token pasted into the URL would end up in logs), no whitespace;
/// the trailing `/` removed. Every sender reads its base URLs through this, so a bad one
/// refuses to start with the same message everywhere.
pub fn base_url(name: &str, default: &str) -> Result<String> {
    let value = string_or(name, default);
    check_base_url(name, &value)
}

/// [`base_url`]'s check of a value.
pub fn check_base_url(name: &str, value: &str) -> Result<String> {
    let value = value.trim();
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .ok_or_else(|| ConfigError::invalid(name, "must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err(ConfigError::invalid(name, "has no host"));
    }
    if rest.contains(['?', '#']) {
        return Err(ConfigError::invalid(
            name,
            "must not carry a query or fragment (credentials have variables of their own)",
        ));
    }
    if rest.chars().any(char::is_whitespace) || host.contains('@') {
        return Err(ConfigError::invalid(
            name,
            "must be a plain URL (no spaces, no user:password@)",
        ));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked_alike() {
        for ok in ["https://business-api.tiktok.com", "http://127.0.0.1:9/x/"] {
            assert!(check_base_url("X_URL", ok).is_ok(), "{ok}");
        }
        assert_eq!(
            check_base_url("X_URL", "http://127.0.0.1:9/x/").unwrap(),
            "http://127.0.0.1:9/x"
        );
        for (bad, why) in [
            ("business-api.tiktok.com", "http:// or https://"),
            ("ftp://h", "http:// or https://"),
            ("https://", "no host"),
            ("https://h/?access_token=1", "query"),
            ("https://u:p@h", "plain URL"),
            ("https://h /x", "plain URL"),
        ] {
            let err = check_base_url("X_URL", bad).unwrap_err().to_string();
            assert!(err.contains("X_URL") && err.contains(why), "{bad}: {err}");
        }
    }
}
