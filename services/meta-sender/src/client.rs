//! The Conversions API call and Meta's error classification (contracts/meta-capi.md §8).

use std::time::Duration;

use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use leadpipe_consumer::{Failure, Outcome, http};

use crate::cfg::Settings;

pub use leadpipe_consumer::bisect::BatchAnswer as BatchResult;

/// A client for one pixel.
pub struct MetaClient {
    http: reqwest::Client,
    url: String,
    token: String,
    test_event_code: Option<String>,
}

impl MetaClient {
    /// A client from the settings (pixel and token present).
    pub fn new(s: &Settings) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(s.timeout)
                .pool_max_idle_per_host(16)
                .build()
                .expect("an HTTP client builds"),
            url: format!(
                "{}/{}/{}/events",
                s.base_url.trim_end_matches('/'),
                s.api_version,
                s.pixel_id.as_deref().unwrap_or_default()
            ),
            token: s
                .access_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned())
                .unwrap_or_default(),
            test_event_code: s.test_event_code.clone(),
        }
    }

    /// The events URL with the token as the `access_token` query parameter.
    fn authed_url(&self) -> String {
        format!(
            "{}?access_token={}",
            self.url,
            http::query_escape(&self.token)
        )
    }

    /// The request body for `events`.
    pub fn body(&self, events: &[Value]) -> Value {
        let mut body = json!({ "data": events });
        if let Some(code) = &self.test_event_code {
            body["test_event_code"] = json!(code);
        }
        body
    }

    /// Posts `events` as one request, with `traceparent` when given.
    pub async fn post(&self, events: &[Value], traceparent: Option<&str>) -> BatchResult {
        let mut request = self.http.post(self.authed_url()).json(&self.body(events));
        if let Some(t) = traceparent {
            request = request.header("traceparent", t);
        }
        let response = request.send().await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return BatchResult::All(http::transport_failure("Meta", &e)),
        };
        let status = response.status();
        let retry_after = http::retry_after(response.headers());
        let body: Value = response.json().await.unwrap_or(Value::Null);
        classify(status, &body, retry_after, events.len())
    }

    /// Whether Meta accepts this token and pixel again, asked with a read that has no side
    /// effect: `GET /{version}/{pixel_id}?fields=id`. Only a 200 means the token and the pixel
    /// work; an auth or permission error (code 190, 10, 200–299), a server error or no answer
    /// all mean "still paused". Nothing is posted while paused.
    pub async fn probe(&self) -> bool {
        let url = format!(
            "{}?fields=id&access_token={}",
            self.pixel_url(),
            http::query_escape(&self.token)
        );
        match self.http.get(url).send().await {
            Ok(response) => response.status().is_success(),
            Err(_) => false,
        }
    }

    /// `{base}/{version}/{pixel_id}`, the pixel's Graph node.
    fn pixel_url(&self) -> &str {
        self.url.strip_suffix("/events").unwrap_or(&self.url)
    }
}

/// Maps Meta's answer to outcomes.
pub fn classify(
    status: StatusCode,
    body: &Value,
    retry_after: Option<Duration>,
    sent: usize,
) -> BatchResult {
    let http = status.as_u16();
    if status.is_success() {
        let received = body["events_received"].as_u64();
        let trace = body["fbtrace_id"].as_str().map(str::to_owned);
        if received.is_some_and(|n| n as usize != sent) {
            return BatchResult::All(Outcome::Retry {
                failure: Failure::new(
                    "meta_count_mismatch",
                    format!("Meta received {} of {sent} events", received.unwrap_or(0)),
                )
                .with_status(http),
                retry_after,
            });
        }
        return BatchResult::Accepted(trace);
    }
    let err = &body["error"];
    let code = err["code"].as_i64();
    let subcode = err["error_subcode"].as_i64();
    // Meta's generic fields only: `message` may quote the offending value.
    let describe = |what: &str| {
        let kind = err["type"].as_str().unwrap_or("unknown");
        let title = err["error_user_title"].as_str().unwrap_or("");
        let trace = err["fbtrace_id"].as_str().unwrap_or("");
        format!(
            "{what}: Meta error {}{} ({kind}){}{}",
            code.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
            subcode.map(|s| format!("/{s}")).unwrap_or_default(),
            if title.is_empty() {
                String::new()
            } else {
                format!(" {title}")
            },
            if trace.is_empty() {
                String::new()
            } else {
                format!(" fbtrace_id={trace}")
            },
        )
    };
    let failure = |label: &str, what: &str| {
        Failure::new(
            code.map(|c| format!("meta_{c}"))
                .unwrap_or_else(|| label.to_owned()),
            describe(what),
        )
        .with_status(http)
    };
    let retry = |f: Failure, ra: Option<Duration>| {
        BatchResult::All(Outcome::Retry {
            failure: f,
            retry_after: ra.or(retry_after),
        })
    };
    if err["is_transient"].as_bool() == Some(true) {
        return retry(failure("meta_transient", "transient"), None);
    }
    match code {
        Some(1 | 2) => retry(failure("meta_transient", "Meta service error"), None),
        Some(4 | 17 | 32 | 341 | 613 | 80000..=80014) => {
            retry(failure("meta_throttled", "throttled"), None)
        }
        Some(368) => retry(
            failure("meta_blocked", "temporarily blocked"),
            Some(Duration::from_secs(600)),
        ),
        Some(190 | 10 | 200..=299) => BatchResult::All(Outcome::Systemic(failure(
            "meta_auth",
            "token or permissions refused",
        ))),
        _ if status == StatusCode::TOO_MANY_REQUESTS => {
            retry(failure("http_429", "rate limited"), None)
        }
        _ if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT => {
            retry(failure(&format!("http_{http}"), "server error"), None)
        }
        _ if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN => {
            BatchResult::All(Outcome::Systemic(failure(
                &format!("http_{http}"),
                "refused",
            )))
        }
        _ => {
            let f = failure(&format!("http_{http}"), "rejected");
            if sent > 1 {
                BatchResult::Poisoned(f)
            } else {
                BatchResult::All(Outcome::Permanent(f))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: i64, transient: bool) -> Value {
        json!({"error": {"message": "x@y.z is bad", "type": "OAuthException", "code": code,
                         "is_transient": transient, "fbtrace_id": "T1"}})
    }

    fn kind(r: &BatchResult) -> &'static str {
        match r {
            BatchResult::Accepted(_) => "accepted",
            BatchResult::Poisoned(_) => "poisoned",
            BatchResult::All(Outcome::Retry { .. }) => "retry",
            BatchResult::All(Outcome::Systemic(_)) => "systemic",
            BatchResult::All(Outcome::Permanent(_)) => "permanent",
            BatchResult::All(_) => "other",
        }
    }

    #[test]
    fn meta_error_codes_are_classified_per_the_contract() {
        let bad = StatusCode::BAD_REQUEST;
        for (status, body, sent, want) in [
            (
                StatusCode::OK,
                json!({"events_received": 2, "fbtrace_id": "A"}),
                2,
                "accepted",
            ),
            (StatusCode::OK, json!({"events_received": 1}), 2, "retry"),
            (bad, err(4, false), 2, "retry"),
            (bad, err(17, false), 2, "retry"),
            (bad, err(613, false), 2, "retry"),
            (bad, err(80004, false), 2, "retry"),
            (bad, err(1, false), 2, "retry"),
            (bad, err(100, true), 2, "retry"),
            (bad, err(190, false), 2, "systemic"),
            (StatusCode::FORBIDDEN, err(10, false), 2, "systemic"),
            (bad, err(200, false), 2, "systemic"),
            (bad, err(100, false), 2, "poisoned"),
            (bad, err(100, false), 1, "permanent"),
            (StatusCode::INTERNAL_SERVER_ERROR, Value::Null, 2, "retry"),
            (StatusCode::SERVICE_UNAVAILABLE, Value::Null, 2, "retry"),
            (StatusCode::TOO_MANY_REQUESTS, Value::Null, 2, "retry"),
            (StatusCode::UNAUTHORIZED, Value::Null, 2, "systemic"),
        ] {
            assert_eq!(
                kind(&classify(status, &body, None, sent)),
                want,
                "{status} {body}"
            );
        }
    }

    #[test]
    fn error_messages_carry_codes_not_values() {
        let BatchResult::All(Outcome::Permanent(f)) =
            classify(StatusCode::BAD_REQUEST, &err(100, false), None, 1)
        else {
            panic!()
        };
        assert_eq!(f.code, "meta_100");
        assert_eq!(f.http_status, Some(400));
        assert!(!f.message.contains("x@y.z"), "{}", f.message);
        assert!(f.message.contains("fbtrace_id=T1"));
    }

    #[test]
    fn retry_after_is_passed_on() {
        let r = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &err(4, false),
            Some(Duration::from_secs(3)),
            1,
        );
        let BatchResult::All(Outcome::Retry { retry_after, .. }) = r else {
            panic!()
        };
        assert_eq!(retry_after, Some(Duration::from_secs(3)));
    }
}

#[cfg(test)]
mod body_tests {
    use super::*;

    #[test]
    fn the_test_event_code_is_passed_through_at_the_top_level() {
        let client = MetaClient {
            http: reqwest::Client::new(),
            url: "http://meta/v25.0/1/events".into(),
            token: "t ok/+".into(),
            test_event_code: Some("TEST123".into()),
        };
        let body = client.body(&[json!({"event_name": "Lead"})]);
        assert_eq!(body["test_event_code"], "TEST123");
        assert!(body["data"][0].get("test_event_code").is_none());
        assert_eq!(
            client.authed_url(),
            "http://meta/v25.0/1/events?access_token=t%20ok%2F%2B"
        );
    }
}
