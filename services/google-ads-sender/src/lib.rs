//! google-ads-sender: delivers canonical events to Google Ads on the shared consumer runtime —
//! conversions and restatements through Google's Data Manager API (the default route),
//! retractions through the Google Ads API (`contracts/google-data-manager.md`,
//! `contracts/google-ads.md`).
//!
//! # Layout
//! - [`cfg`]: variables and the `google_ads` part of the mapping config.
//! - [`payload`]: canonical event → Data Manager event, click conversion or retraction.
//! - [`oauth`]: the refresh-token flow, one cached access token for both APIs.
//! - [`client`]: the calls and Google's error model.
//! - [`GoogleAdsAdapter`]: the runtime adapter. Data Manager only accepts a request; each
//!   event is recorded `accepted` with `<requestId>#<index>`, its message waits in the delay
//!   queues, and [`Adapter::verdicts`] reads `requestStatus:retrieve` when it comes back.

#![forbid(unsafe_code)]

pub mod cfg;
pub mod client;
#[cfg(feature = "fake")]
pub mod fake;
pub mod oauth;
pub mod payload;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use leadpipe_bus::Destination;
use leadpipe_consumer::adapter::{Awaiting, Verdict};
use leadpipe_consumer::{Adapter, Failure, Item, Outcome, Prepared, Registration};
use leadpipe_events::Envelope;

use crate::cfg::{MAX_EVENTS_PER_REQUEST, Settings};
use crate::client::{GoogleClient, IngestResult, Upload};
use crate::payload::{Context, GoogleEvent};

/// The destination's name in queue names, metrics labels and the delivery log.
pub const DESTINATION: Destination = Destination::new("google_ads");

/// What leadpipe knows about this destination (`leadpipe-registry` lists it).
pub static REGISTRATION: Registration = Registration {
    destination: DESTINATION,
    aliases: &["google-ads"],
    service: "google-ads-sender",
    title: "Google Ads",
    metrics_port: 9103,
    acceptance_window: payload::acceptance_window,
    retention: leadpipe_consumer::registry::Retention::AcceptanceWindow(
        payload::MAX_CONVERSION_AGE,
    ),
    check_mapping: |cfg| cfg::google_ads_mappings(cfg, None).map(|_| ()),
    missing_credentials: cfg::missing_from_env,
};

/// Events of one request family and conversion action: ((family, action id), members by
/// their position in the batch).
type Group<'a> = ((u8, &'a str), Vec<(usize, &'a GoogleEvent)>);

/// The Google Ads destination.
pub struct GoogleAdsAdapter {
    settings: Settings,
    client: GoogleClient,
}

impl GoogleAdsAdapter {
    /// An adapter for `settings`.
    pub fn new(settings: Settings) -> Self {
        let client = GoogleClient::new(&settings);
        Self { settings, client }
    }

    /// Sends Data Manager events of one conversion action; a fast-fail that names events
    /// dead-letters those and sends the rest again at once.
    async fn ingest(
        &self,
        action_id: &str,
        events: Vec<(usize, &Value)>,
        traceparent: Option<&str>,
    ) -> Vec<(usize, Outcome)> {
        let mut out = Vec::new();
        let mut pending = events;
        while !pending.is_empty() {
            let bodies: Vec<&Value> = pending.iter().map(|(_, e)| *e).collect();
            match self.client.ingest(action_id, &bodies, traceparent).await {
                IngestResult::Accepted(request_id) => {
                    out.extend(pending.iter().enumerate().map(|(k, (i, _))| {
                        (
                            *i,
                            Outcome::Accepted {
                                reference: Some(format!("{request_id}#{k}")),
                            },
                        )
                    }));
                    break;
                }
                IngestResult::All(outcome) => {
                    out.extend(pending.iter().map(|(i, _)| (*i, outcome.clone())));
                    break;
                }
                IngestResult::Refused(named) => {
                    let mut rest = Vec::new();
                    for (k, (i, e)) in pending.into_iter().enumerate() {
                        match named.iter().find(|(n, _)| *n == k) {
                            Some((_, failure)) => {
                                out.push((i, Outcome::Permanent(failure.clone())))
                            }
                            None => rest.push((i, e)),
                        }
                    }
                    pending = rest;
                }
            }
        }
        out
    }

    /// What DRY_RUN records for one event: the exact request it would be sent in, alone.
    fn dry_run_payload(&self, event: &GoogleEvent) -> Value {
        match event {
            GoogleEvent::Ingest { action_id, event } => {
                payload::redacted(&self.client.ingest_body(action_id, &[event]))
            }
            GoogleEvent::Click { conversion, .. } => {
                GoogleClient::upload_body(Upload::Clicks, &[conversion])
            }
            GoogleEvent::Retraction { adjustment, .. } => {
                GoogleClient::upload_body(Upload::Adjustments, &[adjustment])
            }
        }
    }
}

impl Adapter for GoogleAdsAdapter {
    type Prepared = GoogleEvent;

    fn destination(&self) -> Destination {
        DESTINATION
    }

    fn max_batch(&self) -> usize {
        MAX_EVENTS_PER_REQUEST
    }

    fn prepare(&self, envelope: &Envelope) -> Prepared<GoogleEvent> {
        let mapping = self.settings.mappings.get(envelope.event.name());
        let cx = Context {
            route: self.settings.route,
            customer_id: self.client.customer_id(),
            consent: self.settings.consent,
            now: chrono::Utc::now(),
        };
        Prepared::from_build(payload::build(envelope, mapping, cx))
    }

    async fn send(&self, items: Vec<Item<GoogleEvent>>) -> Vec<Outcome> {
        let n = items.len();
        if self.settings.dry_run {
            return items
                .iter()
                .map(|i| Outcome::DryRun {
                    payload: self.dry_run_payload(&i.prepared),
                })
                .collect();
        }
        // One request per family (ingest, clicks, retractions) and conversion action.
        let mut groups: Vec<Group<'_>> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = item.prepared.group();
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push((i, &item.prepared)),
                None => groups.push((key, vec![(i, &item.prepared)])),
            }
        }
        let mut reported: Vec<(usize, Outcome)> = Vec::with_capacity(n);
        for ((family, action_id), members) in groups {
            let traceparent = members
                .first()
                .and_then(|(i, _)| items[*i].traceparent.as_deref());
            let results: Vec<(usize, Outcome)> = match family {
                0 => {
                    let events = members
                        .iter()
                        .filter_map(|(i, e)| match e {
                            GoogleEvent::Ingest { event, .. } => Some((*i, event)),
                            _ => None,
                        })
                        .collect();
                    self.ingest(action_id, events, traceparent).await
                }
                _ => {
                    let kind = if family == 1 {
                        Upload::Clicks
                    } else {
                        Upload::Adjustments
                    };
                    let rows: Vec<&Value> = members
                        .iter()
                        .map(|(_, e)| match e {
                            GoogleEvent::Click { conversion, .. } => conversion,
                            GoogleEvent::Retraction { adjustment, .. } => adjustment,
                            GoogleEvent::Ingest { event, .. } => event,
                        })
                        .collect();
                    let answers = self.client.upload(kind, &rows, traceparent).await;
                    members.iter().map(|(i, _)| *i).zip(answers).collect()
                }
            };
            reported.extend(results);
        }
        leadpipe_consumer::outcome::in_batch_order(n, reported)
    }

    async fn probe(&self) -> bool {
        self.settings.dry_run || self.client.probe().await
    }

    async fn verdicts(&self, items: Vec<Awaiting>) -> Vec<Verdict> {
        // One status request per Data Manager request.
        let parsed: Vec<Option<(String, usize)>> = items
            .iter()
            .map(|a| {
                let (id, k) = a.reference.as_deref()?.rsplit_once('#')?;
                Some((id.to_owned(), k.parse().ok()?))
            })
            .collect();
        let mut answers: HashMap<String, Result<Value, Outcome>> = HashMap::new();
        for (id, _) in parsed.iter().flatten() {
            if !answers.contains_key(id) {
                let answer = self.client.status(id).await;
                answers.insert(id.clone(), answer);
            }
        }
        parsed
            .iter()
            .map(|p| match p {
                None => Verdict::Failed(Failure::new(
                    "dm_no_request_id",
                    "the delivery log holds no Data Manager request id for the event",
                )),
                Some((id, k)) => match &answers[id] {
                    Ok(answer) => verdict_of(answer, id, *k),
                    // A request id Google no longer knows: send again (transactionId dedupes).
                    Err(Outcome::Permanent(f)) => Verdict::Resend {
                        failure: f.clone(),
                        retry_after: None,
                    },
                    Err(_) => Verdict::Pending,
                },
            })
            .collect()
    }

    fn verdict_delay(&self, poll: u32) -> Duration {
        let factor = 2u32.saturating_pow(poll.saturating_sub(1).min(16));
        self.settings
            .status_delay
            .saturating_mul(factor)
            .min(self.settings.status_delay_max)
    }
}

/// The verdict on event `index` of request `request_id` from its `requestStatus:retrieve`
/// answer (google-data-manager.md §6.2).
pub fn verdict_of(answer: &Value, request_id: &str, index: usize) -> Verdict {
    let dest = &answer["requestStatusPerDestination"][0];
    let status = dest["requestStatus"].as_str().unwrap_or("");
    if status == "SUCCESS" {
        return Verdict::Sent;
    }
    if status != "FAILED" && status != "PARTIAL_SUCCESS" {
        // PROCESSING, REQUEST_STATUS_UNKNOWN, or nothing yet: never marked sent early.
        return Verdict::Pending;
    }
    let counts = dest["errorInfo"]["errorCounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut attributed = false;
    for c in &counts {
        let reason = c["reason"]
            .as_str()
            .unwrap_or("PROCESSING_ERROR_REASON_UNSPECIFIED");
        let indices = c["recordIndices"].as_array().cloned().unwrap_or_default();
        attributed |= !indices.is_empty();
        let hit = indices.iter().any(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .is_some_and(|v| v as usize == index)
        });
        if hit {
            return reason_verdict(reason, request_id);
        }
    }
    if attributed {
        Verdict::Sent
    } else {
        // Failed without saying which records: every event of the request is in doubt.
        let reason = counts
            .first()
            .and_then(|c| c["reason"].as_str())
            .unwrap_or("PROCESSING_ERROR_REASON_UNATTRIBUTED");
        reason_verdict(reason, request_id)
    }
}

/// One record's processing error (google-data-manager.md §6.2).
fn reason_verdict(reason: &str, request_id: &str) -> Verdict {
    let short = reason
        .trim_start_matches("PROCESSING_ERROR_REASON_")
        .trim_start_matches("PROCESSING_ERROR_");
    let failure = Failure::new(
        format!("dm_{}", short.to_lowercase()),
        format!("Data Manager could not record the event: {reason} (request {request_id})"),
    );
    match short {
        "DUPLICATE_GCLID" | "DUPLICATE_TRANSACTION_ID" => Verdict::Sent,
        "TOO_RECENT_CLICK" => Verdict::Resend {
            failure,
            retry_after: Some(Duration::from_secs(6 * 3600)),
        },
        "INTERNAL_ERROR" => Verdict::Resend {
            failure,
            retry_after: None,
        },
        _ => Verdict::Failed(failure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_statuses_become_verdicts_by_record_index() {
        let status = |s: &str, counts: Value| {
            json!({"requestStatusPerDestination": [{"requestStatus": s,
                   "errorInfo": {"errorCounts": counts}}]})
        };
        assert_eq!(
            verdict_of(&status("PROCESSING", json!([])), "r", 0),
            Verdict::Pending
        );
        assert_eq!(verdict_of(&json!({}), "r", 0), Verdict::Pending);
        assert_eq!(
            verdict_of(&status("SUCCESS", json!([])), "r", 0),
            Verdict::Sent
        );
        let partial = status(
            "PARTIAL_SUCCESS",
            json!([{"recordCount": "1", "reason": "PROCESSING_ERROR_REASON_CLICK_NOT_FOUND",
                    "recordIndices": [1]},
                   {"recordCount": "1", "reason": "PROCESSING_ERROR_REASON_DUPLICATE_TRANSACTION_ID",
                    "recordIndices": ["2"]}]),
        );
        assert_eq!(verdict_of(&partial, "r", 0), Verdict::Sent);
        let Verdict::Failed(f) = verdict_of(&partial, "r", 1) else {
            panic!()
        };
        assert_eq!(f.code, "dm_click_not_found");
        assert_eq!(verdict_of(&partial, "r", 2), Verdict::Sent);
        let too_recent = status(
            "FAILED",
            json!([{"reason": "PROCESSING_ERROR_REASON_TOO_RECENT_CLICK", "recordIndices": [0]}]),
        );
        assert!(matches!(
            verdict_of(&too_recent, "r", 0),
            Verdict::Resend { .. }
        ));
        let unattributed = status(
            "FAILED",
            json!([{"reason": "PROCESSING_ERROR_REASON_INVALID_CLICK"}]),
        );
        assert!(matches!(
            verdict_of(&unattributed, "r", 3),
            Verdict::Failed(_)
        ));
    }
}
