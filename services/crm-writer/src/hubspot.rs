//! The HubSpot kind: contacts batch-upserted (≤ 100 inputs), by email, or by a unique custom
//! property holding the lead id when there is no email (`contracts/hubspot.md` §2–§4). Each
//! input carries the event id as `objectWriteTraceId`, which maps results and errors back.

use std::time::Duration;

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

use leadpipe_consumer::{Failure, Outcome, http};

use crate::payload::CrmRecord;

/// A HubSpot account.
pub struct HubSpotClient {
    http: reqwest::Client,
    upsert_url: String,
    probe_url: String,
    token: SecretString,
    id_property: String,
}

/// The batch upsert input for an event.
pub fn input(event_id: &str, r: &CrmRecord, id_property: &str) -> Value {
    let mut properties: Map<String, Value> = r
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    if let Some(stage) = &r.lifecycle_stage {
        properties.insert("lifecyclestage".into(), json!(stage));
    }
    let (id_prop, id) = match &r.email {
        Some(email) => ("email", email.clone()),
        None => {
            // A phone-only lead: keyed by the unique property holding the lead id.
            properties.insert(id_property.to_owned(), json!(r.lead_id));
            (id_property, r.lead_id.clone())
        }
    };
    json!({"idProperty": id_prop, "id": id, "properties": properties,
           "objectWriteTraceId": event_id})
}

impl HubSpotClient {
    /// A client for the account behind `token`.
    pub fn new(timeout: Duration, base_url: &str, token: SecretString, id_property: &str) -> Self {
        let base = base_url.trim_end_matches('/');
        Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .pool_max_idle_per_host(8)
                .build()
                .expect("an HTTP client builds"),
            upsert_url: format!("{base}/crm/v3/objects/contacts/batch/upsert"),
            probe_url: format!("{base}/crm/v3/objects/contacts?limit=1"),
            token,
            id_property: id_property.to_owned(),
        }
    }

    /// The property that keys contacts without email.
    pub fn id_property(&self) -> &str {
        &self.id_property
    }

    /// Upserts `inputs` (unique ids, ≤ 100) in one request; one outcome per input. A whole
    /// batch refused as invalid is split until the offender stands alone.
    pub fn upsert<'a>(
        &'a self,
        inputs: &'a [(String, Value)],
        traceparent: Option<&'a str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Outcome>> + Send + 'a>> {
        Box::pin(async move {
            let body = json!({"inputs": inputs.iter().map(|(_, i)| i).collect::<Vec<_>>()});
            let mut request = self
                .http
                .post(&self.upsert_url)
                .bearer_auth(self.token.expose_secret())
                .json(&body);
            if let Some(t) = traceparent {
                request = request.header("traceparent", t);
            }
            let response = request.send().await;
            let response = match response {
                Ok(r) => r,
                Err(e) => return vec![http::transport_failure("HubSpot", &e); inputs.len()],
            };
            let status = response.status();
            let code = status.as_u16();
            let wait = rate_limit_wait(response.headers());
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                return per_input(inputs, &answer, code);
            }
            let category = answer["category"].as_str().unwrap_or("");
            let failure = Failure::new(
                format!(
                    "hubspot_{}",
                    if category.is_empty() {
                        format!("http_{code}")
                    } else {
                        category.to_lowercase()
                    }
                ),
                format!(
                    "HubSpot answered {code} {category}{}",
                    answer["correlationId"]
                        .as_str()
                        .map(|c| format!(" (correlationId {c})"))
                        .unwrap_or_default()
                ),
            )
            .with_status(code);
            let outcome = match code {
                429 => Outcome::Retry {
                    retry_after: wait.or_else(|| policy_wait(&answer)),
                    failure,
                },
                423 => Outcome::Retry {
                    failure,
                    retry_after: Some(Duration::from_secs(2)),
                },
                477 | 408 | 500..=599 => Outcome::Retry {
                    failure,
                    retry_after: wait,
                },
                401 | 403 => Outcome::Systemic(failure),
                400 if inputs.len() > 1 => {
                    let (left, right) = inputs.split_at(inputs.len() / 2);
                    let mut out = self.upsert(left, traceparent).await;
                    out.extend(self.upsert(right, traceparent).await);
                    return out;
                }
                _ => Outcome::Permanent(failure),
            };
            vec![outcome; inputs.len()]
        })
    }

    /// Whether the token works again (a read of one contact).
    pub async fn probe(&self) -> bool {
        matches!(
            self.http.get(&self.probe_url).bearer_auth(self.token.expose_secret()).send().await,
            Ok(r) if r.status().is_success()
        )
    }
}

/// Outcomes of a 200/207 answer, mapped by `objectWriteTraceId`. HubSpot's error messages
/// quote the refused values, so only the category, code and property name are kept.
fn per_input(inputs: &[(String, Value)], answer: &Value, code: u16) -> Vec<Outcome> {
    let trace = |v: &Value| -> Vec<String> {
        let mut ids: Vec<String> = v["objectWriteTraceId"]
            .as_str()
            .map(str::to_owned)
            .into_iter()
            .collect();
        if let Some(list) = v["context"]["objectWriteTraceId"].as_array() {
            ids.extend(list.iter().filter_map(|x| x.as_str().map(str::to_owned)));
        }
        ids
    };
    let results = answer["results"].as_array().cloned().unwrap_or_default();
    let errors = answer["errors"].as_array().cloned().unwrap_or_default();
    inputs
        .iter()
        .map(|(event_id, _)| {
            if let Some(e) = errors.iter().find(|e| trace(e).contains(event_id)) {
                let category = e["category"].as_str().unwrap_or("ERROR");
                let detail = e["errors"][0]["code"].as_str().unwrap_or("");
                let field = e["errors"][0]["in"].as_str().unwrap_or("");
                return Outcome::Permanent(
                    Failure::new(
                        format!("hubspot_{}", category.to_lowercase()),
                        format!("HubSpot refused the contact: {category} {detail} {field}")
                            .trim_end()
                            .to_owned(),
                    )
                    .with_status(code),
                );
            }
            match results.iter().find(|r| trace(r).contains(event_id)) {
                Some(r) => Outcome::Sent {
                    reference: r["id"].as_str().map(|id| format!("contact {id}")),
                    http_status: Some(code),
                },
                None => Outcome::Retry {
                    failure: Failure::new(
                        "hubspot_no_result",
                        "HubSpot's answer holds neither a result nor an error for the event",
                    )
                    .with_status(code),
                    retry_after: None,
                },
            }
        })
        .collect()
}

/// How long a 429 asks to wait: `Retry-After`, else the burst window when it is used up.
fn rate_limit_wait(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    http::retry_after(headers).or_else(|| {
        let remaining = headers
            .get("x-hubspot-ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let interval = headers
            .get("x-hubspot-ratelimit-interval-milliseconds")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match (remaining, interval) {
            (Some(0), Some(ms)) => Some(Duration::from_millis(ms)),
            _ => None,
        }
    })
}

/// The wait a 429's `policyName` implies: 10 s for the rolling burst window, until the next
/// midnight (UTC; the account's timezone is not known here) for the daily limit.
fn policy_wait(answer: &Value) -> Option<Duration> {
    match answer["policyName"].as_str()? {
        "DAILY" => {
            let now = Utc::now();
            let midnight = now
                .date_naive()
                .succ_opt()
                .and_then(|d| d.and_hms_opt(0, 0, 0))?
                .and_utc();
            Some((midnight - now).to_std().ok()?)
        }
        _ => Some(Duration::from_secs(10)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(email: Option<&str>) -> CrmRecord {
        CrmRecord {
            fields: vec![("phone".into(), "+16505551234".into())],
            lifecycle_stage: Some("lead".into()),
            email: email.map(str::to_owned),
            lead_id: "L-9".into(),
            kind: "leadpipe.lead".into(),
            occurred_at: "2026-12-01T10:00:00Z".into(),
        }
    }

    #[test]
    fn contacts_are_keyed_by_email_else_by_the_lead_id_property() {
        let with = input("e1", &record(Some("jane@example.com")), "leadpipe_lead_id");
        assert_eq!(with["idProperty"], "email");
        assert_eq!(with["id"], "jane@example.com");
        assert_eq!(with["objectWriteTraceId"], "e1");
        assert_eq!(with["properties"]["lifecyclestage"], "lead");
        let without = input("e2", &record(None), "leadpipe_lead_id");
        assert_eq!(without["idProperty"], "leadpipe_lead_id");
        assert_eq!(without["id"], "L-9");
        assert_eq!(without["properties"]["leadpipe_lead_id"], "L-9");
    }

    #[test]
    fn a_207_maps_results_and_errors_to_their_events_without_quoting_values() {
        let inputs = vec![
            ("a".to_owned(), json!({})),
            ("b".to_owned(), json!({})),
            ("c".to_owned(), json!({})),
        ];
        let answer = json!({"status": "COMPLETE",
            "results": [{"id": "501", "objectWriteTraceId": "a"}],
            "errors": [{"status": "error", "category": "VALIDATION_ERROR",
                        "message": "Email jane@bad is invalid",
                        "context": {"objectWriteTraceId": ["b"]},
                        "errors": [{"code": "INVALID_EMAIL", "in": "email"}]}]});
        let out = per_input(&inputs, &answer, 207);
        assert!(matches!(&out[0], Outcome::Sent { reference: Some(r), .. } if r == "contact 501"));
        let Outcome::Permanent(f) = &out[1] else {
            panic!()
        };
        assert_eq!(f.code, "hubspot_validation_error");
        assert!(!f.message.contains("jane"), "{}", f.message);
        assert!(matches!(out[2], Outcome::Retry { .. }));
    }

    #[test]
    fn a_429_waits_as_its_headers_or_policy_say() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-hubspot-ratelimit-remaining", "0".parse().unwrap());
        h.insert(
            "x-hubspot-ratelimit-interval-milliseconds",
            "10000".parse().unwrap(),
        );
        assert_eq!(rate_limit_wait(&h), Some(Duration::from_secs(10)));
        assert_eq!(
            policy_wait(&json!({"policyName": "TEN_SECONDLY_ROLLING"})),
            Some(Duration::from_secs(10))
        );
        assert!(
            policy_wait(&json!({"policyName": "DAILY"})).unwrap() <= Duration::from_secs(86400)
        );
    }
}
