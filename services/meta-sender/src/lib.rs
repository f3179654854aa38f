//! meta-sender: delivers canonical events to the Meta Conversions API
//! (`contracts/meta-capi.md`) on the shared consumer runtime.
//!
//! # Layout
//! - [`cfg`]: variables and the `meta` part of the mapping config.
//! - [`payload`]: canonical event → Meta server event, hashed per `normalization.md`.
//! - [`client`]: the HTTP call and Meta's error classification.
//! - [`MetaAdapter`]: the runtime adapter; isolates the bad event of a rejected batch by
//!   bisection, so its neighbours are delivered and only it is dead-lettered.

#![forbid(unsafe_code)]

pub mod cfg;
pub mod client;
pub mod payload;

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

use leadpipe_bus::Destination;
use leadpipe_consumer::{Adapter, Failure, Item, Outcome, Prepared};
use leadpipe_events::Envelope;

use crate::cfg::Settings;
use crate::client::{BatchResult, MetaClient};
use crate::payload::Skip;

/// The Meta destination.
pub struct MetaAdapter {
    settings: Settings,
    client: MetaClient,
}

impl MetaAdapter {
    /// An adapter for `settings`.
    pub fn new(settings: Settings) -> Self {
        let client = MetaClient::new(&settings);
        Self { settings, client }
    }

    /// Sends `events`, splitting a poisoned batch in halves until the offenders stand alone.
    fn send_isolating<'a>(
        &'a self,
        events: &'a [Value],
        traceparent: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Vec<Outcome>> + Send + 'a>> {
        Box::pin(async move {
            match self.client.post(events, traceparent).await {
                BatchResult::Accepted(trace) => vec![
                    Outcome::Sent {
                        reference: trace,
                        http_status: Some(200),
                    };
                    events.len()
                ],
                BatchResult::All(outcome) => vec![outcome; events.len()],
                BatchResult::Poisoned(failure) if events.len() == 1 => {
                    vec![Outcome::Permanent(failure)]
                }
                BatchResult::Poisoned(_) => {
                    let (left, right) = events.split_at(events.len() / 2);
                    let mut out = self.send_isolating(left, traceparent).await;
                    out.extend(self.send_isolating(right, traceparent).await);
                    out
                }
            }
        })
    }
}

impl Adapter for MetaAdapter {
    type Prepared = Value;

    fn destination(&self) -> Destination {
        Destination::Meta
    }

    fn max_batch(&self) -> usize {
        self.settings.max_batch
    }

    fn prepare(&self, envelope: &Envelope) -> Prepared<Value> {
        let mapping = self.settings.mappings.get(envelope.event.name());
        match payload::build(envelope, mapping, self.settings.consent, chrono::Utc::now()) {
            Ok(event) => Prepared::Send(event),
            Err(Skip::Consent) => Prepared::Done(Outcome::BlockedConsent),
            Err(Skip::Unmapped) => Prepared::Done(Outcome::Unmapped),
            Err(Skip::Expired) => Prepared::Done(Outcome::Expired),
            Err(Skip::Invalid(reason)) => {
                Prepared::Done(Outcome::Permanent(Failure::new("invalid_event", reason)))
            }
        }
    }

    async fn send(&self, items: Vec<Item<Value>>) -> Vec<Outcome> {
        let traceparent = items.first().and_then(|i| i.traceparent.clone());
        let events: Vec<Value> = items.into_iter().map(|i| i.prepared).collect();
        if self.settings.dry_run {
            return events
                .iter()
                .map(|e| Outcome::DryRun {
                    payload: self.client.body(&[payload::redacted(e)]),
                })
                .collect();
        }
        self.send_isolating(&events, traceparent.as_deref()).await
    }

    async fn probe(&self) -> bool {
        self.settings.dry_run || self.client.probe().await
    }
}
