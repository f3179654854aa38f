//! The HTTP calls: Data Manager `events:ingest` and `requestStatus:retrieve`, Google Ads API
//! `uploadClickConversions` and `uploadConversionAdjustments`, each with a bearer token from
//! [`TokenSource`] (refreshed once on a 401), and Google's error model classified per the
//! contracts (google-data-manager.md §7, google-ads.md §5 and §7).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use leadpipe_consumer::{Failure, Outcome, http};

use crate::cfg::Settings;
use crate::oauth::TokenSource;
use crate::payload::conversion_action;

/// How an `events:ingest` request went.
#[derive(Debug)]
pub enum IngestResult {
    /// Accepted for processing: the `requestId` to ask the status of.
    Accepted(String),
    /// Fast-fail: the events the error names, by their index in the request, with why. The
    /// others were not processed and may be sent again at once.
    Refused(Vec<(usize, Failure)>),
    /// Every event of the request gets this outcome.
    All(Outcome),
}

/// Which Google Ads API upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// `uploadClickConversions`.
    Clicks,
    /// `uploadConversionAdjustments`.
    Adjustments,
}

impl Upload {
    fn method(self) -> &'static str {
        match self {
            Self::Clicks => "uploadClickConversions",
            Self::Adjustments => "uploadConversionAdjustments",
        }
    }
    fn field(self) -> &'static str {
        match self {
            Self::Clicks => "conversions",
            Self::Adjustments => "conversionAdjustments",
        }
    }
}

/// A client for one operating account.
pub struct GoogleClient {
    http: reqwest::Client,
    tokens: Option<TokenSource>,
    ingest_url: String,
    status_url: String,
    ads_base: String,
    customer_id: String,
    login_customer_id: Option<String>,
    developer_token: Option<SecretString>,
}

impl GoogleClient {
    /// A client from the settings (credentials may be absent in DRY_RUN).
    pub fn new(s: &Settings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(s.timeout)
            .pool_max_idle_per_host(16)
            .build()
            .expect("an HTTP client builds");
        let tokens = match (&s.client_id, &s.client_secret, &s.refresh_token) {
            (Some(id), Some(secret), Some(refresh)) => Some(TokenSource::new(
                http.clone(),
                &s.token_url,
                id,
                secret,
                refresh,
            )),
            _ => None,
        };
        let dm = s.data_manager_base_url.trim_end_matches('/');
        Self {
            http,
            tokens,
            ingest_url: format!("{dm}/v1/events:ingest"),
            status_url: format!("{dm}/v1/requestStatus:retrieve"),
            ads_base: format!(
                "{}/{}",
                s.ads_api_base_url.trim_end_matches('/'),
                s.ads_api_version
            ),
            customer_id: s.customer_id.clone().unwrap_or_else(|| "0".into()),
            login_customer_id: s.login_customer_id.clone(),
            developer_token: s.developer_token.clone(),
        }
    }

    /// The operating account (digits).
    pub fn customer_id(&self) -> &str {
        &self.customer_id
    }

    /// The `events:ingest` body for `events` of one conversion action.
    pub fn ingest_body(&self, action_id: &str, events: &[&Value]) -> Value {
        let mut destination = json!({
            "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": self.customer_id},
            "productDestinationId": action_id,
        });
        if let Some(login) = &self.login_customer_id {
            destination["loginAccount"] = json!({"accountType": "GOOGLE_ADS", "accountId": login});
        }
        json!({"destinations": [destination], "encoding": "HEX", "events": events})
    }

    /// The Google Ads API body for `rows` (partial failure on, as the API requires).
    pub fn upload_body(kind: Upload, rows: &[&Value]) -> Value {
        json!({ kind.field(): rows, "partialFailure": true })
    }

    /// Sends with a bearer token; a 401 refreshes the token and tries once more.
    async fn send(
        &self,
        make: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Outcome> {
        let tokens = self.tokens.as_ref().ok_or_else(|| {
            Outcome::Systemic(Failure::new(
                "oauth_missing",
                "no OAuth credentials (GOOGLE_ADS_CLIENT_ID/SECRET/REFRESH_TOKEN)",
            ))
        })?;
        let mut refreshed = false;
        loop {
            let token = tokens.token().await?;
            let response = make(token.expose_secret())
                .send()
                .await
                .map_err(|e| http::transport_failure("Google", &e))?;
            if response.status().as_u16() == 401 && !refreshed {
                tokens.invalidate().await;
                refreshed = true;
                continue;
            }
            return Ok(response);
        }
    }

    /// Posts `events` (one conversion action) to `events:ingest`.
    pub async fn ingest(
        &self,
        action_id: &str,
        events: &[&Value],
        traceparent: Option<&str>,
    ) -> IngestResult {
        let body = self.ingest_body(action_id, events);
        let response = match self
            .send(|token| {
                let r = self
                    .http
                    .post(&self.ingest_url)
                    .bearer_auth(token)
                    .json(&body);
                match traceparent {
                    Some(t) => r.header("traceparent", t),
                    None => r,
                }
            })
            .await
        {
            Ok(r) => r,
            Err(outcome) => return IngestResult::All(outcome),
        };
        let status = response.status();
        let retry_after = http::retry_after(response.headers());
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return match answer["requestId"].as_str() {
                Some(id) => IngestResult::Accepted(id.to_owned()),
                None => IngestResult::All(Outcome::Retry {
                    failure: Failure::new(
                        "dm_no_request_id",
                        "Data Manager answered without a requestId",
                    )
                    .with_status(status.as_u16()),
                    retry_after: None,
                }),
            };
        }
        let outcome = classify_error(status.as_u16(), &answer, retry_after, "Data Manager");
        if !matches!(outcome, Outcome::Permanent(_)) {
            return IngestResult::All(outcome);
        }
        // Fast-fail: quarantine the events the violations name, if they name any.
        let mut named: Vec<(usize, Failure)> = Vec::new();
        for v in field_violations(&answer) {
            let field = v["field"].as_str().unwrap_or_default();
            let reason = v["reason"].as_str().unwrap_or("INVALID_ARGUMENT");
            if let Some(i) = event_index(field).filter(|i| *i < events.len())
                && !named.iter().any(|(n, _)| *n == i)
            {
                named.push((
                    i,
                    Failure::new(
                        format!("dm_{}", reason.to_lowercase()),
                        format!("Data Manager refused the event: {reason} at {field}"),
                    )
                    .with_status(status.as_u16()),
                ));
            }
        }
        if named.is_empty() {
            IngestResult::All(outcome)
        } else {
            IngestResult::Refused(named)
        }
    }

    /// `requestStatus:retrieve` for `request_id`: Google's answer, or what went wrong.
    pub async fn status(&self, request_id: &str) -> Result<Value, Outcome> {
        let url = format!(
            "{}?requestId={}",
            self.status_url,
            http::query_escape(request_id)
        );
        let response = self
            .send(|token| self.http.get(&url).bearer_auth(token))
            .await?;
        let status = response.status();
        let retry_after = http::retry_after(response.headers());
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(answer)
        } else {
            Err(classify_error(
                status.as_u16(),
                &answer,
                retry_after,
                "Data Manager",
            ))
        }
    }

    /// A Google Ads API upload; one outcome per row, mapped from partial failures by index.
    pub async fn upload(
        &self,
        kind: Upload,
        rows: &[&Value],
        traceparent: Option<&str>,
    ) -> Vec<Outcome> {
        let body = Self::upload_body(kind, rows);
        let url = format!(
            "{}/customers/{}:{}",
            self.ads_base,
            self.customer_id,
            kind.method()
        );
        let response = self
            .send(|token| {
                let mut r = self.http.post(&url).bearer_auth(token).json(&body);
                if let Some(dev) = &self.developer_token {
                    r = r.header("developer-token", dev.expose_secret());
                }
                if let Some(login) = &self.login_customer_id {
                    r = r.header("login-customer-id", login);
                }
                if let Some(t) = traceparent {
                    r = r.header("traceparent", t);
                }
                r
            })
            .await;
        let response = match response {
            Ok(r) => r,
            Err(outcome) => return vec![outcome; rows.len()],
        };
        let status = response.status();
        let retry_after = http::retry_after(response.headers());
        let request_id = response
            .headers()
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return vec![
                classify_error(status.as_u16(), &answer, retry_after, "Google Ads");
                rows.len()
            ];
        }
        let mut out = vec![
            Outcome::Sent {
                reference: request_id.clone(),
                http_status: Some(status.as_u16()),
            };
            rows.len()
        ];
        for error in ads_errors(&answer["partialFailureError"]) {
            let Some(i) = row_index(&error, kind.field()).filter(|i| *i < rows.len()) else {
                continue;
            };
            out[i] = row_outcome(&error, status.as_u16(), request_id.as_deref());
        }
        out
    }

    /// Whether Google gives us a token again (side-effect free: a token refresh).
    pub async fn probe(&self) -> bool {
        match &self.tokens {
            Some(t) => {
                t.invalidate().await;
                t.token().await.is_ok()
            }
            None => false,
        }
    }

    /// The conversion action resource name for the operating account.
    pub fn conversion_action(&self, action_id: &str) -> String {
        conversion_action(&self.customer_id, action_id)
    }
}

/// Google's error model (`{"error": {"code", "status", "details"}}`) → an outcome for the
/// whole request.
pub fn classify_error(
    http: u16,
    answer: &Value,
    retry_after: Option<Duration>,
    api: &str,
) -> Outcome {
    let err = &answer["error"];
    let status = err["status"].as_str().unwrap_or("");
    let code = if status.is_empty() {
        format!("http_{http}")
    } else {
        format!("google_{}", status.to_lowercase())
    };
    let failure = Failure::new(
        code,
        format!("{api} answered {http} {status}")
            .trim_end()
            .to_owned(),
    )
    .with_status(http);
    let delay = retry_after.or_else(|| retry_delay(answer));
    match (http, status) {
        (429, _) | (_, "RESOURCE_EXHAUSTED") => Outcome::Retry {
            failure,
            retry_after: delay,
        },
        (401, _) | (403, _) | (_, "UNAUTHENTICATED" | "PERMISSION_DENIED") => {
            Outcome::Systemic(failure)
        }
        (408 | 409, _)
        | (500..=599, _)
        | (_, "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "INTERNAL" | "ABORTED") => Outcome::Retry {
            failure,
            retry_after: delay,
        },
        _ => Outcome::Permanent(failure),
    }
}

/// `RetryInfo.retryDelay` or `quotaErrorDetails.retryDelay` (`"30s"`), when present.
fn retry_delay(answer: &Value) -> Option<Duration> {
    let details = answer["error"]["details"].as_array()?;
    details.iter().find_map(|d| {
        let text = d["retryDelay"]
            .as_str()
            .or_else(|| d["quotaErrorDetails"]["retryDelay"].as_str())
            .or_else(|| {
                d["errors"].as_array().and_then(|errs| {
                    errs.iter()
                        .find_map(|e| e["details"]["quotaErrorDetails"]["retryDelay"].as_str())
                })
            })?;
        let secs: f64 = text.trim_end_matches('s').parse().ok()?;
        Some(Duration::from_secs_f64(secs.max(0.0)))
    })
}

/// `BadRequest.fieldViolations` of a Google error.
fn field_violations(answer: &Value) -> Vec<Value> {
    answer["error"]["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["fieldViolations"].as_array())
        .flatten()
        .cloned()
        .collect()
}

/// The event index a violation's field path names (`events.events[1].user_data…`,
/// `events[1]…`).
pub fn event_index(field: &str) -> Option<usize> {
    let at = field.rfind("events[")? + "events[".len();
    let digits: String = field[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The `GoogleAdsError`s of a `partialFailureError`.
fn ads_errors(partial: &Value) -> Vec<Value> {
    partial["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["errors"].as_array())
        .flatten()
        .cloned()
        .collect()
}

/// The row a `GoogleAdsError` is about: the index of its `conversions` /
/// `conversion_adjustments` path element (compared without case or `_`).
fn row_index(error: &Value, field: &str) -> Option<usize> {
    let squash = |s: &str| s.replace('_', "").to_lowercase();
    let want = squash(field);
    error["location"]["fieldPathElements"]
        .as_array()?
        .iter()
        .find(|e| e["fieldName"].as_str().is_some_and(|n| squash(n) == want))
        .and_then(|e| {
            e["index"]
                .as_u64()
                .or_else(|| e["index"].as_str()?.parse().ok())
        })
        .map(|i| i as usize)
}

/// One row's failure (google-ads.md §7): retried later, already done, or permanent.
fn row_outcome(error: &Value, http: u16, request_id: Option<&str>) -> Outcome {
    let (family, code) = error["errorCode"]
        .as_object()
        .and_then(|o| o.iter().next())
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("UNKNOWN").to_owned()))
        .unwrap_or_else(|| ("unknown".into(), "UNKNOWN".into()));
    let failure = Failure::new(
        format!("ads_{}", code.to_lowercase()),
        format!(
            "Google Ads refused the row: {family} {code}{}",
            request_id
                .map(|r| format!(" (request-id {r})"))
                .unwrap_or_default()
        ),
    )
    .with_status(http);
    let hours = |h: u64| Some(Duration::from_secs(h * 3600));
    match code.as_str() {
        "TOO_RECENT_EVENT"
        | "TOO_RECENT_CONVERSION_ACTION"
        | "TOO_RECENT_CALL"
        | "TOO_RECENT_CLICK" => Outcome::Retry {
            failure,
            retry_after: hours(6),
        },
        "TOO_RECENT_CONVERSION" => Outcome::Retry {
            failure,
            retry_after: hours(24),
        },
        "CLICK_CONVERSION_ALREADY_EXISTS"
        | "ORDER_ID_ALREADY_IN_USE"
        | "CONVERSION_ALREADY_RETRACTED"
        | "CONVERSION_ALREADY_ENHANCED"
        | "RESTATEMENT_ALREADY_EXISTS" => Outcome::Sent {
            reference: request_id.map(str::to_owned),
            http_status: Some(http),
        },
        "RESOURCE_EXHAUSTED"
        | "RESOURCE_TEMPORARILY_EXHAUSTED"
        | "INTERNAL_ERROR"
        | "TRANSIENT_ERROR" => Outcome::Retry {
            failure,
            retry_after: None,
        },
        _ => Outcome::Permanent(failure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(o: &Outcome) -> &'static str {
        match o {
            Outcome::Retry { .. } => "retry",
            Outcome::Systemic(_) => "systemic",
            Outcome::Permanent(_) => "permanent",
            Outcome::Sent { .. } => "sent",
            _ => "other",
        }
    }

    #[test]
    fn google_statuses_are_classified_per_the_contract() {
        let err = |code: u16, status: &str| json!({"error": {"code": code, "status": status}});
        for (http, status, want) in [
            (503, "UNAVAILABLE", "retry"),
            (504, "DEADLINE_EXCEEDED", "retry"),
            (500, "INTERNAL", "retry"),
            (409, "ABORTED", "retry"),
            (429, "RESOURCE_EXHAUSTED", "retry"),
            (400, "INVALID_ARGUMENT", "permanent"),
            (400, "FAILED_PRECONDITION", "permanent"),
            (404, "NOT_FOUND", "permanent"),
            (403, "PERMISSION_DENIED", "systemic"),
            (401, "UNAUTHENTICATED", "systemic"),
        ] {
            assert_eq!(
                kind(&classify_error(http, &err(http, status), None, "X")),
                want,
                "{status}"
            );
        }
    }

    #[test]
    fn a_quota_errors_retry_delay_is_honoured() {
        let answer = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "30s"}]}});
        let Outcome::Retry { retry_after, .. } = classify_error(429, &answer, None, "X") else {
            panic!()
        };
        assert_eq!(retry_after, Some(Duration::from_secs(30)));
    }

    #[test]
    fn violation_paths_name_their_event() {
        assert_eq!(
            event_index("events.events[1].user_data.user_identifiers[2]"),
            Some(1)
        );
        assert_eq!(event_index("events[12].event_source"), Some(12));
        assert_eq!(
            event_index("destinations[0].login_account.account_id"),
            None
        );
    }

    #[test]
    fn row_failures_map_by_index_and_code() {
        let error = |code: &str, field: &str, i: u64| {
            json!({"errorCode": {"conversionUploadError": code},
                   "location": {"fieldPathElements": [{"fieldName": field, "index": i}]}})
        };
        assert_eq!(
            row_index(&error("X", "conversions", 3), "conversions"),
            Some(3)
        );
        assert_eq!(
            row_index(
                &error("X", "conversion_adjustments", 1),
                "conversionAdjustments"
            ),
            Some(1)
        );
        assert_eq!(
            kind(&row_outcome(
                &error("TOO_RECENT_EVENT", "conversions", 0),
                200,
                None
            )),
            "retry"
        );
        assert_eq!(
            kind(&row_outcome(
                &error("CLICK_NOT_FOUND", "conversions", 0),
                200,
                None
            )),
            "permanent"
        );
        assert_eq!(
            kind(&row_outcome(
                &error("CONVERSION_ALREADY_RETRACTED", "conversions", 0),
                200,
                None
            )),
            "sent"
        );
    }
}
