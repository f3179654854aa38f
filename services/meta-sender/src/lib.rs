//! meta-sender: delivers canonical events to the Meta Conversions API
//! (`contracts/meta-capi.md`) on the shared consumer runtime.
//!
//! # Layout
//! - [`cfg`]: variables and the `meta` part of the mapping config.
//! - [`payload`]: canonical event → Meta server event, hashed per `normalization.md`.
//! - [`client`]: the HTTP call and Meta's error classification.
//! - [`MetaAdapter`]: the runtime adapter; a batch refused for one bad event is bisected by
//!   [`leadpipe_consumer::bisect`], so its neighbours are delivered and only it is
//!   dead-lettered.

#![forbid(unsafe_code)]

pub mod cfg;
pub mod client;
#[cfg(feature = "fake")]
pub mod fake;
pub mod payload;

use serde_json::Value;

use leadpipe_bus::Destination;
use leadpipe_consumer::{Adapter, Item, Outcome, Prepared, Registration, bisect};
use leadpipe_events::Envelope;

use crate::cfg::Settings;
use crate::client::MetaClient;

/// The destination's name in queue names, metrics labels and the delivery log.
pub const DESTINATION: Destination = Destination::new("meta");

/// What leadpipe knows about this destination (`leadpipe-registry` lists it).
pub static REGISTRATION: Registration = Registration {
    destination: DESTINATION,
    aliases: &[],
    service: "meta-sender",
    title: "Meta Conversions API",
    metrics_port: 9101,
    acceptance_window: |_| Some(payload::MAX_AGE),
    retention: leadpipe_consumer::registry::Retention::AcceptanceWindow(payload::MAX_AGE),
    check_mapping: |cfg| cfg::meta_mappings(cfg).map(|_| ()),
    missing_credentials: || {
        leadpipe_config::error::missing_from_env(&["META_PIXEL_ID", "META_ACCESS_TOKEN"])
    },
};

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
}

impl Adapter for MetaAdapter {
    type Prepared = Value;

    fn destination(&self) -> Destination {
        DESTINATION
    }

    fn max_batch(&self) -> usize {
        self.settings.max_batch
    }

    fn prepare(&self, envelope: &Envelope) -> Prepared<Value> {
        let mapping = self.settings.mappings.get(envelope.event.name());
        Prepared::from_build(payload::build(
            envelope,
            mapping,
            self.settings.consent,
            chrono::Utc::now(),
        ))
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
        let traceparent = traceparent.as_deref();
        bisect::send_isolating(&events, |batch| self.client.post(batch, traceparent)).await
    }

    async fn probe(&self) -> bool {
        self.settings.dry_run || self.client.probe().await
    }
}
