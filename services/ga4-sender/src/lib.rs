//! ga4-sender: delivers canonical events to the GA4 Measurement Protocol
//! (`contracts/ga4-mp.md`) on the shared consumer runtime.
//!
//! # Layout
//! - [`cfg`]: variables and the `ga4` part of the mapping config, checked against GA4's
//!   naming rules at start-up.
//! - [`payload`]: canonical event → GA4 event and its request head (client id, user id,
//!   `user_data` under consent, `consent`).
//! - [`client`]: `/mp/collect`, the debug endpoint, and the probe.
//! - [`Ga4Adapter`]: the runtime adapter; groups a batch into requests of one head (≤ 25
//!   events), sends them concurrently, and with `GA4_VALIDATE` dead-letters only the events
//!   the debug endpoint refuses.

#![forbid(unsafe_code)]

pub mod cfg;
pub mod client;
#[cfg(feature = "fake")]
pub mod fake;
pub mod payload;

use std::collections::HashMap;

use futures::StreamExt;

use leadpipe_bus::Destination;
use leadpipe_consumer::{Adapter, Failure, Item, Outcome, Prepared, Registration};
use leadpipe_events::Envelope;

use crate::cfg::{MAX_EVENTS_PER_REQUEST, Settings};
use crate::client::{Ga4Client, ValidationMessage};
use crate::payload::Ga4Event;

/// The destination's name in queue names, metrics labels and the delivery log.
pub const DESTINATION: Destination = Destination::new("ga4");

/// What leadpipe knows about this destination (`leadpipe-registry` lists it).
pub static REGISTRATION: Registration = Registration {
    destination: DESTINATION,
    aliases: &[],
    service: "ga4-sender",
    title: "GA4 Measurement Protocol",
    metrics_port: 9102,
    acceptance_window: |_| Some(payload::MAX_AGE),
    retention: leadpipe_consumer::registry::Retention::AcceptanceWindow(payload::MAX_AGE),
    check_mapping: |cfg| cfg::ga4_mappings(cfg).map(|_| ()),
    missing_credentials: || {
        leadpipe_config::error::missing_from_env(&["GA4_MEASUREMENT_ID", "GA4_API_SECRET"])
    },
};

/// Largest request body built, in bytes: GA4 refuses bodies of 130 kB or more.
pub const MAX_BODY_BYTES: usize = 120_000;

/// The GA4 destination.
pub struct Ga4Adapter {
    settings: Settings,
    client: Ga4Client,
}

/// Events of one head bound for one request: (position in the batch, event).
struct Request<'a> {
    events: Vec<(usize, &'a Ga4Event)>,
    /// The first event's `traceparent`.
    traceparent: Option<&'a str>,
}

/// The request body for some events of one request.
fn body_of(events: &[(usize, &Ga4Event)]) -> String {
    let list: Vec<&Ga4Event> = events.iter().map(|(_, e)| *e).collect();
    payload::body(&list)
}

impl Ga4Adapter {
    /// An adapter for `settings`.
    pub fn new(settings: Settings) -> Self {
        let client = Ga4Client::new(&settings);
        Self { settings, client }
    }

    /// Groups prepared events into requests: one head each, at most 25 events and
    /// [`MAX_BODY_BYTES`], in batch order.
    fn requests(items: &[Item<Ga4Event>]) -> Vec<Request<'_>> {
        let mut out: Vec<Request<'_>> = Vec::new();
        let mut open: HashMap<&str, (usize, usize)> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let e = &item.prepared;
            let size = e.json.len() + 1;
            let slot = open.get(e.key.as_str()).copied().filter(|&(at, bytes)| {
                out[at].events.len() < MAX_EVENTS_PER_REQUEST && bytes + size <= MAX_BODY_BYTES
            });
            match slot {
                Some((at, bytes)) => {
                    out[at].events.push((i, e));
                    open.insert(&e.key, (at, bytes + size));
                }
                None => {
                    open.insert(&e.key, (out.len(), e.key.len() + size + 16));
                    out.push(Request {
                        events: vec![(i, e)],
                        traceparent: item.traceparent.as_deref(),
                    });
                }
            }
        }
        out
    }

    /// Sends one request (validating it first with `GA4_VALIDATE`); one outcome per event.
    async fn send_request(&self, request: Request<'_>) -> Vec<(usize, Outcome)> {
        if self.settings.dry_run {
            return request
                .events
                .iter()
                .map(|&(i, e)| {
                    let body = serde_json::from_str(&body_of(&[(i, e)])).unwrap_or_default();
                    (
                        i,
                        Outcome::DryRun {
                            payload: payload::redacted(&body),
                        },
                    )
                })
                .collect();
        }
        let mut out = Vec::with_capacity(request.events.len());
        let mut valid = request.events.clone();
        if self.settings.validate {
            match self.refused(&request).await {
                Err(outcome) => return valid.iter().map(|&(i, _)| (i, outcome.clone())).collect(),
                Ok(refused) => {
                    valid.retain(|(i, _)| match refused.iter().find(|(r, _)| r == i) {
                        Some((_, failure)) => {
                            out.push((*i, Outcome::Permanent(failure.clone())));
                            false
                        }
                        None => true,
                    });
                }
            }
            if valid.is_empty() {
                return out;
            }
        }
        let outcome = match self
            .client
            .collect(body_of(&valid), request.traceparent)
            .await
        {
            Ok(status) => Outcome::Sent {
                reference: None,
                http_status: Some(status),
            },
            Err(outcome) => outcome,
        };
        out.extend(valid.iter().map(|&(i, _)| (i, outcome.clone())));
        out
    }

    /// The events of a request the debug endpoint refuses, with why. A request it refuses as
    /// a whole is checked again event by event, so only the offenders are dead-lettered.
    async fn refused(&self, request: &Request<'_>) -> Result<Vec<(usize, Failure)>, Outcome> {
        let whole = body_of(&request.events);
        let messages = self.client.validate(whole.clone()).await?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let plain = payload::plain_values(&serde_json::from_str(&whole).unwrap_or_default());
        if let [(i, _)] = request.events.as_slice() {
            return Ok(vec![(*i, ValidationMessage::failure(&messages, &plain))]);
        }
        let singles = futures::future::join_all(
            request
                .events
                .iter()
                .map(|&(i, e)| async move { (i, self.client.validate(body_of(&[(i, e)])).await) }),
        )
        .await;
        let mut refused = Vec::new();
        for (i, answer) in singles {
            match answer? {
                m if m.is_empty() => {}
                m => refused.push((i, ValidationMessage::failure(&m, &plain))),
            }
        }
        Ok(refused)
    }
}

impl Adapter for Ga4Adapter {
    type Prepared = Ga4Event;

    fn destination(&self) -> Destination {
        DESTINATION
    }

    fn max_batch(&self) -> usize {
        // Requests are per client id; the runtime's batch is split here.
        usize::MAX
    }

    fn prepare(&self, envelope: &Envelope) -> Prepared<Ga4Event> {
        let mapping = self.settings.mappings.get(envelope.event.name());
        let opts = payload::Options {
            consent: self.settings.consent,
            engagement_time_msec: self.settings.engagement_time_msec,
        };
        Prepared::from_build(payload::build(envelope, mapping, opts, chrono::Utc::now()))
    }

    async fn send(&self, items: Vec<Item<Ga4Event>>) -> Vec<Outcome> {
        let n = items.len();
        let requests = Self::requests(&items);
        let sends: Vec<_> = requests.into_iter().map(|r| self.send_request(r)).collect();
        let answers: Vec<Vec<(usize, Outcome)>> = futures::stream::iter(sends)
            .buffer_unordered(self.settings.concurrent_requests)
            .collect()
            .await;
        leadpipe_consumer::outcome::in_batch_order(n, answers.into_iter().flatten())
    }

    async fn probe(&self) -> bool {
        self.settings.dry_run || self.client.probe().await
    }
}
