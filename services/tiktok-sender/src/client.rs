//! The Events API call and TikTok's error model (contracts/tiktok-events.md §4): errors come
//! as HTTP 200 with a non-zero `code` (pitfall P9), so success is HTTP 2xx **and** `code` 0.

use std::time::Duration;

use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use leadpipe_consumer::{Failure, Outcome, http};

use crate::cfg::{Settings, TRACK_PATH};

pub use leadpipe_consumer::bisect::BatchAnswer as BatchResult;

/// A client for one pixel.
pub struct TikTokClient {
    http: reqwest::Client,
    url: String,
    token: String,
    pixel_code: String,
    test_event_code: Option<String>,
}

impl TikTokClient {
    /// A client from the settings (pixel and token present, or DRY_RUN).
    pub fn new(s: &Settings) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(s.timeout)
                .pool_max_idle_per_host(16)
                .build()
                .expect("an HTTP client builds"),
            url: format!("{}{TRACK_PATH}", s.base_url.trim_end_matches('/')),
            token: s
                .access_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned())
                .unwrap_or_default(),
            pixel_code: s.pixel_code.clone().unwrap_or_default(),
            test_event_code: s.test_event_code.clone(),
        }
    }

    /// The request body for `events`: `event_source` and `event_source_id` at the top level,
    /// `test_event_code` there too (P3), never Events 1.0 keys (P2).
    pub fn body(&self, events: &[Value]) -> Value {
        let mut body = json!({
            "event_source": "web",
            "event_source_id": self.pixel_code,
            "data": events,
        });
        if let Some(code) = &self.test_event_code {
            body["test_event_code"] = json!(code);
        }
        body
    }

    /// Posts `events` as one request, with `traceparent` when given (inside the runtime's
    /// `send` span).
    pub async fn post(&self, events: &[Value], traceparent: Option<&str>) -> BatchResult {
        let mut request = self
            .http
            .post(&self.url)
            .header("Access-Token", &self.token)
            .json(&self.body(events));
        if let Some(t) = traceparent {
            request = request.header("traceparent", t);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return BatchResult::All(http::transport_failure("TikTok", &e)),
        };
        let status = response.status();
        let retry_after = http::retry_after(response.headers());
        let body: Option<Value> = response.json().await.ok();
        classify(status, body.as_ref(), retry_after, events.len())
    }

    /// Whether TikTok takes this token and pixel again. The Events API has no read of a pixel,
    /// so the probe posts a request with no events: TikTok answers a bad token or pixel with
    /// its auth or permission code (still paused), and a good one with a parameter error
    /// about the empty `data` (or 0), which carries no event to record.
    pub async fn probe(&self) -> bool {
        let result = self
            .http
            .post(&self.url)
            .header("Access-Token", &self.token)
            .json(&self.body(&[]))
            .send()
            .await;
        let Ok(response) = result else {
            return false;
        };
        let status = response.status();
        let body: Option<Value> = response.json().await.ok();
        match classify(status, body.as_ref(), None, 0) {
            BatchResult::Accepted(_) | BatchResult::Poisoned(_) => true,
            BatchResult::All(Outcome::Permanent(_)) => true,
            BatchResult::All(_) => false,
        }
    }
}

/// The class of a TikTok `code` (§4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeClass {
    /// Delivered (0, 20001 partial success, 40050 duplicate request).
    Delivered,
    /// This payload is wrong: bisect a batch, dead-letter a single event.
    Invalid,
    /// Wrong for every event the same way (PII sent unhashed, a bad partner name, or a code
    /// nobody documents): dead-letter.
    Permanent,
    /// The token, pixel, account or path is refused: pause.
    Systemic,
    /// Throttled: back off.
    RateLimited,
    /// TikTok's own trouble: retry.
    Transient,
}

/// The class of TikTok body `code`.
pub fn class_of(code: i64) -> CodeClass {
    match code {
        0 | 20001 | 40050 => CodeClass::Delivered,
        40000 | 40002 | 40061 => CodeClass::Invalid,
        40001 | 40003 | 40006 | 40007 | 40051 | 40102 | 40104 | 40105 | 40113 | 40114 | 40118
        | 40125 | 40130 | 40300 | 40301 | 40400 | 41000 => CodeClass::Systemic,
        40100 | 40132 | 51021 | 61000 => CodeClass::RateLimited,
        50000..=59999 | 60001 => CodeClass::Transient,
        _ => CodeClass::Permanent,
    }
}

/// Maps TikTok's answer to outcomes. `body` is `None` when it was not JSON (a gateway page).
pub fn classify(
    status: StatusCode,
    body: Option<&Value>,
    retry_after: Option<Duration>,
    sent: usize,
) -> BatchResult {
    let http = status.as_u16();
    let code = body.and_then(|b| b["code"].as_i64());
    let Some(code) = code else {
        // No envelope: a gateway or transport answer. 2xx without a code is not a success.
        if status.is_success() {
            return BatchResult::All(Outcome::Retry {
                failure: Failure::new(
                    "tiktok_no_code",
                    "TikTok answered without a code (not JSON)",
                )
                .with_status(http),
                retry_after,
            });
        }
        return BatchResult::All(
            http::status_outcome("TikTok", status, retry_after).expect("not a success"),
        );
    };
    let body = body.expect("a code comes from a body");
    let request_id = body["request_id"].as_str().map(str::to_owned);
    // TikTok's message may quote a value back ("Invalid value for …"): keep the code and the
    // request id only.
    let failure = |what: &str| {
        Failure::new(
            format!("tiktok_{code}"),
            format!(
                "{what}: TikTok code {code}{}",
                request_id
                    .as_deref()
                    .map(|r| format!(" request_id={r}"))
                    .unwrap_or_default()
            ),
        )
        .with_status(http)
    };
    let retry = |f: Failure, floor: Option<Duration>| {
        BatchResult::All(Outcome::Retry {
            failure: f,
            retry_after: retry_after.or(floor),
        })
    };
    match class_of(code) {
        CodeClass::Delivered if status.is_success() => {
            if code == 20001 {
                tracing::warn!(code, request_id = ?request_id, "TikTok took the batch with warnings (partial success)");
            }
            BatchResult::Accepted(request_id)
        }
        CodeClass::Delivered => retry(failure("a success code with an error status"), None),
        CodeClass::Invalid if sent > 1 => BatchResult::Poisoned(failure("rejected")),
        CodeClass::Invalid => BatchResult::All(Outcome::Permanent(failure("rejected"))),
        CodeClass::Permanent => {
            if code == 40062 {
                tracing::error!(
                    code,
                    "TikTok says PII was sent unhashed: a bug, dead-lettering"
                );
            }
            BatchResult::All(Outcome::Permanent(failure("refused")))
        }
        CodeClass::Systemic => BatchResult::All(Outcome::Systemic(failure(
            "token, pixel or account refused",
        ))),
        CodeClass::RateLimited => retry(failure("throttled"), None),
        CodeClass::Transient if code == 60001 => {
            retry(failure("in maintenance"), Some(Duration::from_secs(600)))
        }
        CodeClass::Transient => retry(failure("TikTok service error"), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(code: i64) -> Value {
        json!({"code": code, "message": "Invalid value for email: a@b.c",
               "request_id": "R1", "data": {}})
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
    fn tiktok_codes_are_classified_per_the_contract() {
        let ok = StatusCode::OK;
        for (status, body, sent, want) in [
            (ok, Some(envelope(0)), 2, "accepted"),
            (ok, Some(envelope(20001)), 2, "accepted"),
            (ok, Some(envelope(40050)), 2, "accepted"),
            (ok, Some(envelope(40002)), 2, "poisoned"),
            (ok, Some(envelope(40000)), 1, "permanent"),
            (ok, Some(envelope(40061)), 3, "poisoned"),
            (ok, Some(envelope(40062)), 2, "permanent"),
            (ok, Some(envelope(40063)), 2, "permanent"),
            (ok, Some(envelope(49999)), 2, "permanent"),
            (ok, Some(envelope(40001)), 2, "systemic"),
            (ok, Some(envelope(40105)), 2, "systemic"),
            (ok, Some(envelope(40102)), 2, "systemic"),
            (ok, Some(envelope(40104)), 2, "systemic"),
            (ok, Some(envelope(40400)), 2, "systemic"),
            (ok, Some(envelope(41000)), 2, "systemic"),
            (ok, Some(envelope(40100)), 2, "retry"),
            (ok, Some(envelope(40132)), 2, "retry"),
            (ok, Some(envelope(61000)), 2, "retry"),
            (ok, Some(envelope(50000)), 2, "retry"),
            (ok, Some(envelope(51010)), 2, "retry"),
            (ok, Some(envelope(60001)), 2, "retry"),
            (
                StatusCode::BAD_REQUEST,
                Some(envelope(40002)),
                1,
                "permanent",
            ),
            (StatusCode::BAD_GATEWAY, None, 2, "retry"),
            (StatusCode::TOO_MANY_REQUESTS, None, 2, "retry"),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(envelope(0)),
                2,
                "retry",
            ),
            (ok, None, 2, "retry"),
            (StatusCode::UNAUTHORIZED, None, 2, "systemic"),
        ] {
            assert_eq!(
                kind(&classify(status, body.as_ref(), None, sent)),
                want,
                "{status} {body:?}"
            );
        }
    }

    #[test]
    fn failures_carry_the_code_and_request_id_not_the_message() {
        let BatchResult::All(Outcome::Permanent(f)) =
            classify(StatusCode::OK, Some(&envelope(40002)), None, 1)
        else {
            panic!()
        };
        assert_eq!(f.code, "tiktok_40002");
        assert_eq!(f.http_status, Some(200));
        assert!(!f.message.contains("a@b.c"), "{}", f.message);
        assert!(f.message.contains("request_id=R1"), "{}", f.message);
    }

    #[test]
    fn maintenance_waits_long_and_retry_after_wins() {
        let r = classify(StatusCode::OK, Some(&envelope(60001)), None, 1);
        let BatchResult::All(Outcome::Retry { retry_after, .. }) = r else {
            panic!()
        };
        assert_eq!(retry_after, Some(Duration::from_secs(600)));
        let r = classify(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            Some(Duration::from_secs(3)),
            1,
        );
        let BatchResult::All(Outcome::Retry { retry_after, .. }) = r else {
            panic!()
        };
        assert_eq!(retry_after, Some(Duration::from_secs(3)));
    }

    #[test]
    fn the_body_has_the_source_at_the_top_and_the_test_code_there_too() {
        let client = TikTokClient {
            http: reqwest::Client::new(),
            url: "http://t/open_api/v1.3/event/track/".into(),
            token: "tok".into(),
            pixel_code: "PIXEL1".into(),
            test_event_code: Some("TEST123".into()),
        };
        let body = client.body(&[json!({"event": "Lead"})]);
        assert_eq!(body["event_source"], "web");
        assert_eq!(body["event_source_id"], "PIXEL1");
        assert_eq!(body["test_event_code"], "TEST123");
        assert!(body["data"][0].get("test_event_code").is_none());
        for legacy in ["pixel_code", "context", "timestamp", "batch"] {
            assert!(body.get(legacy).is_none(), "{legacy}");
        }
    }
}
