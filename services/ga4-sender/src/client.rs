//! The Measurement Protocol calls (`contracts/ga4-mp.md` §1–§2): `/mp/collect`, which answers
//! 2xx even for garbage, and `/debug/mp/collect`, which says what it would drop.

use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use leadpipe_consumer::{Failure, Outcome, http};

use crate::cfg::Settings;

/// One finding of the debug endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationMessage {
    /// Where (`events`, `events.params`, `user_data`, …).
    #[serde(default)]
    pub field_path: String,
    /// What is wrong, in GA4's words (may quote values: see [`ValidationMessage::failure`]).
    #[serde(default)]
    pub description: String,
    /// `NAME_INVALID`, `VALUE_INVALID`, `NAME_RESERVED`, …
    #[serde(default)]
    pub validation_code: String,
}

impl ValidationMessage {
    /// A dead-letter reason for it. GA4 quotes offending values in its descriptions, so every
    /// plain personal value of the request (`plain`) is replaced before the text goes anywhere.
    pub fn failure(messages: &[Self], plain: &[String]) -> Failure {
        let first = messages.first();
        let code = first.map_or("unknown".to_owned(), |m| m.validation_code.to_lowercase());
        let mut text = messages
            .iter()
            .map(|m| {
                format!(
                    "{} at {}: {}",
                    m.validation_code, m.field_path, m.description
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        for value in plain.iter().filter(|v| !v.is_empty()) {
            text = text.replace(value.as_str(), "<redacted>");
        }
        Failure::new(
            format!("ga4_{code}"),
            format!("GA4 validation refused the event: {text}"),
        )
        .with_status(200)
    }
}

/// A client for one web stream.
pub struct Ga4Client {
    http: reqwest::Client,
    /// Parsed once: one request per client id makes URL parsing a per-event cost.
    collect_url: reqwest::Url,
    debug_url: reqwest::Url,
}

impl Ga4Client {
    /// A client from the settings (measurement id and secret present unless DRY_RUN).
    pub fn new(s: &Settings) -> Self {
        let base = s.base_url.trim_end_matches('/');
        let query = format!(
            "measurement_id={}&api_secret={}",
            http::query_escape(s.measurement_id.as_deref().unwrap_or_default()),
            http::query_escape(
                s.api_secret
                    .as_ref()
                    .map(|t| t.expose_secret())
                    .unwrap_or_default()
            )
        );
        Self {
            http: reqwest::Client::builder()
                .timeout(s.timeout)
                // Keep a connection per request that may be under way at once.
                .pool_max_idle_per_host(s.concurrent_requests.max(16))
                .build()
                .expect("an HTTP client builds"),
            collect_url: reqwest::Url::parse(&format!("{base}/mp/collect?{query}"))
                .expect("GA4_API_BASE_URL is a URL"),
            debug_url: reqwest::Url::parse(&format!("{base}/debug/mp/collect?{query}"))
                .expect("GA4_API_BASE_URL is a URL"),
        }
    }

    /// Posts `body` (JSON) to `/mp/collect`: the HTTP status on 2xx, else what to do with its
    /// events.
    pub async fn collect(&self, body: String, traceparent: Option<&str>) -> Result<u16, Outcome> {
        let mut request = self
            .http
            .post(self.collect_url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(t) = traceparent {
            request = request.header("traceparent", t);
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| http::transport_failure("GA4", &e))?;
        let status = response.status();
        let retry_after = http::retry_after(response.headers());
        match http::status_outcome("GA4", status, retry_after) {
            None => Ok(status.as_u16()),
            Some(outcome) => Err(outcome),
        }
    }

    /// Posts `body` (JSON) to `/debug/mp/collect`: what GA4 would refuse (empty: valid).
    pub async fn validate(&self, body: String) -> Result<Vec<ValidationMessage>, Outcome> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            #[serde(default)]
            validation_messages: Vec<ValidationMessage>,
        }
        let response = self
            .http
            .post(self.debug_url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| http::transport_failure("GA4", &e))?;
        let status = response.status();
        let retry_after = http::retry_after(response.headers());
        if let Some(outcome) = http::status_outcome("GA4 debug endpoint", status, retry_after) {
            return Err(outcome);
        }
        let answer: Answer = response.json().await.map_err(|_| Outcome::Retry {
            failure: Failure::new(
                "ga4_debug_unreadable",
                "GA4's debug endpoint answered something that is not its JSON",
            )
            .with_status(status.as_u16()),
            retry_after: None,
        })?;
        Ok(answer.validation_messages)
    }

    /// Whether GA4 answers again, asked without recording anything: a minimal event to the
    /// debug endpoint, which validates and never collects.
    pub async fn probe(&self) -> bool {
        let body = json!({"client_id": "leadpipe.probe", "events": [{"name": "leadpipe_probe"}]});
        matches!(self.http.post(self.debug_url.clone()).json(&body).send().await,
                 Ok(r) if r.status().is_success())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_failures_name_the_code_and_never_quote_plain_values() {
        let m = ValidationMessage {
            field_path: "user_data.address.postal_code".into(),
            description: "Value [SW1A 2AA] for postal_code is invalid".into(),
            validation_code: "VALUE_INVALID".into(),
        };
        let f = ValidationMessage::failure(&[m], &["SW1A 2AA".into()]);
        assert_eq!(f.code, "ga4_value_invalid");
        assert!(
            f.message
                .contains("VALUE_INVALID at user_data.address.postal_code")
        );
        assert!(!f.message.contains("SW1A"), "{}", f.message);
    }
}
