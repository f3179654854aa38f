//! What every HTTP destination client shares: reading `Retry-After`, and turning a request
//! that got no answer into a retry whose message never quotes the URL (query strings carry
//! tokens and API secrets).

use std::time::Duration;

use crate::{Failure, Outcome};

/// `Retry-After` in seconds, when present and numeric.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// A request to `destination` that got no answer: `timeout` or `connection`, retried.
pub fn transport_failure(destination: &str, error: &reqwest::Error) -> Outcome {
    let code = if error.is_timeout() {
        "timeout"
    } else {
        "connection"
    };
    // reqwest's own message names the URL, whose query may hold a secret: keep it out.
    Outcome::Retry {
        failure: Failure::new(code, format!("request to {destination} failed ({code})")),
        retry_after: None,
    }
}

/// The outcome of an HTTP status that carries no destination-specific error: 429, 408 and
/// 5xx are retried, 401/403 are systemic, any other 4xx is permanent; `None` for 2xx.
pub fn status_outcome(
    destination: &str,
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
) -> Option<Outcome> {
    let http = status.as_u16();
    let failure = |what: &str| {
        Failure::new(format!("http_{http}"), format!("{destination} {what}")).with_status(http)
    };
    if status.is_success() {
        None
    } else if http == 429 || http == 408 || status.is_server_error() {
        Some(Outcome::Retry {
            failure: failure(if http == 429 {
                "rate limited"
            } else {
                "server error"
            }),
            retry_after,
        })
    } else if http == 401 || http == 403 {
        Some(Outcome::Systemic(failure("refused the credentials")))
    } else {
        Some(Outcome::Permanent(failure("rejected the request")))
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept): tokens and API
/// secrets travel in query strings.
pub fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_escape("t ok/+~"), "t%20ok%2F%2B~");
    }

    #[test]
    fn statuses_map_to_retry_systemic_or_permanent() {
        let kind = |s: u16| match status_outcome("X", StatusCode::from_u16(s).unwrap(), None) {
            None => "ok",
            Some(Outcome::Retry { .. }) => "retry",
            Some(Outcome::Systemic(_)) => "systemic",
            Some(Outcome::Permanent(_)) => "permanent",
            Some(_) => "other",
        };
        for (s, want) in [
            (200, "ok"),
            (204, "ok"),
            (408, "retry"),
            (429, "retry"),
            (500, "retry"),
            (503, "retry"),
            (401, "systemic"),
            (403, "systemic"),
            (400, "permanent"),
            (413, "permanent"),
        ] {
            assert_eq!(kind(s), want, "{s}");
        }
    }
}
