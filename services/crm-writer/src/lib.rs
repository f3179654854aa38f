//! crm-writer: writes leads to the CRM, the system of record, on the shared consumer runtime —
//! as a signed webhook (Standard Webhooks) or as HubSpot contacts (`contracts/hubspot.md`).
//!
//! # Layout
//! - [`cfg`]: variables, the CRM field map and lifecycle stages.
//! - [`payload`]: canonical event → CRM fields (raw contact and conversation context).
//! - [`webhook`]: the signed POST per event.
//! - [`hubspot`]: batch upsert by email or by the lead-id property.
//! - [`CrmAdapter`]: the runtime adapter.

#![forbid(unsafe_code)]

pub mod cfg;
#[cfg(feature = "fake")]
pub mod fake;
pub mod hubspot;
pub mod payload;
pub mod webhook;

use futures::StreamExt;
use serde_json::Value;

use leadpipe_bus::Destination;
use leadpipe_consumer::{Adapter, Failure, Item, Outcome, Prepared, Registration};
use leadpipe_events::Envelope;

use crate::cfg::{CrmKind, HUBSPOT_MAX_BATCH, Settings};
use crate::hubspot::HubSpotClient;
use crate::payload::CrmRecord;
use crate::webhook::WebhookClient;

/// The destination's name in queue names, metrics labels and the delivery log.
pub const DESTINATION: Destination = Destination::new("crm");

/// What leadpipe knows about this destination (`leadpipe-registry` lists it).
pub static REGISTRATION: Registration = Registration {
    destination: DESTINATION,
    aliases: &[],
    service: "crm-writer",
    title: "the CRM (HubSpot, or a signed webhook)",
    metrics_port: 9104,
    acceptance_window: |_| None,
    retention: leadpipe_consumer::registry::Retention::Days {
        variable: "DELIVERY_RETENTION_DAYS_CRM",
        default_days: 30,
    },
    check_mapping: |cfg| {
        cfg::crm_fields(cfg)
            .and_then(|_| cfg::crm_mappings(cfg))
            .map(|_| ())
    },
    missing_credentials: || {
        if leadpipe_config::env::optional("CRM_KIND").as_deref() == Some("hubspot") {
            leadpipe_config::error::missing_from_env(&["HUBSPOT_ACCESS_TOKEN"])
        } else {
            leadpipe_config::error::missing_from_env(&["CRM_WEBHOOK_URL", "CRM_WEBHOOK_SECRET"])
        }
    },
};

/// Webhook posts under way at once for one batch.
pub const WEBHOOK_CONCURRENCY: usize = 16;

/// Where the adapter writes.
enum Target {
    Webhook(WebhookClient),
    HubSpot(HubSpotClient),
    /// DRY_RUN.
    Nowhere,
}

/// The CRM destination.
pub struct CrmAdapter {
    settings: Settings,
    target: Target,
}

impl CrmAdapter {
    /// An adapter for `settings`.
    pub fn new(settings: Settings) -> Self {
        let target = match (&settings.kind, settings.dry_run) {
            (_, true) => Target::Nowhere,
            (CrmKind::Webhook { url }, false) => Target::Webhook(WebhookClient::new(
                settings.timeout,
                url.as_deref().unwrap_or_default(),
                settings
                    .webhook_secret
                    .as_ref()
                    .and_then(|s| webhook::signing_key(s).ok())
                    .unwrap_or_default(),
            )),
            (CrmKind::HubSpot { base_url }, false) => Target::HubSpot(HubSpotClient::new(
                settings.timeout,
                base_url,
                settings.hubspot_token.clone().unwrap_or_default(),
                &settings.id_property,
            )),
        };
        Self { settings, target }
    }

    async fn upsert_all(&self, client: &HubSpotClient, items: &[Item<CrmRecord>]) -> Vec<Outcome> {
        // One request holds each contact once: a second event of the same contact waits
        // for the next request, so its lifecycle stage lands after the first.
        let inputs: Vec<(String, Value)> = items
            .iter()
            .map(|i| {
                (
                    i.event_id.clone(),
                    hubspot::input(&i.event_id, &i.prepared, client.id_property()),
                )
            })
            .collect();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; inputs.len()];
        let mut left: Vec<usize> = (0..inputs.len()).collect();
        while !left.is_empty() {
            let mut keys = std::collections::HashSet::new();
            let mut this = Vec::new();
            let mut next = Vec::new();
            for i in left {
                let key = (
                    inputs[i].1["idProperty"].to_string(),
                    inputs[i].1["id"].to_string(),
                );
                if this.len() < HUBSPOT_MAX_BATCH && keys.insert(key) {
                    this.push(i);
                } else {
                    next.push(i);
                }
            }
            let batch: Vec<(String, Value)> = this.iter().map(|&i| inputs[i].clone()).collect();
            let traceparent = this.first().and_then(|&i| items[i].traceparent.as_deref());
            for (i, o) in this.iter().zip(client.upsert(&batch, traceparent).await) {
                outcomes[*i] = Some(o);
            }
            left = next;
        }
        outcomes
            .into_iter()
            .map(|o| o.expect("every input answered"))
            .collect()
    }
}

impl Adapter for CrmAdapter {
    type Prepared = CrmRecord;

    fn destination(&self) -> Destination {
        DESTINATION
    }

    fn max_batch(&self) -> usize {
        HUBSPOT_MAX_BATCH
    }

    fn prepare(&self, envelope: &Envelope) -> Prepared<CrmRecord> {
        // The CRM is the system of record: consent does not block the write (it is a field).
        let Some(mapping) = self.settings.mappings.get(envelope.event.name()) else {
            return Prepared::Done(Outcome::Unmapped);
        };
        let record = payload::build(
            envelope,
            &self.settings.fields,
            mapping.lifecycle_stage.as_deref(),
        );
        if record.email.is_none() && record.lead_id.is_empty() {
            return Prepared::Done(Outcome::Permanent(Failure::new(
                "no_contact_key",
                "neither an email nor a lead id to key the contact on",
            )));
        }
        Prepared::Send(record)
    }

    async fn send(&self, items: Vec<Item<CrmRecord>>) -> Vec<Outcome> {
        match &self.target {
            Target::Nowhere => items
                .iter()
                .map(|i| Outcome::DryRun {
                    payload: payload::redacted(&i.prepared),
                })
                .collect(),
            Target::Webhook(client) => {
                let posts: Vec<_> = items
                    .iter()
                    .map(|i| {
                        let body = payload::webhook_body(&i.event_id, &i.prepared).to_string();
                        client.post(&i.event_id, body.into_bytes(), i.traceparent.as_deref())
                    })
                    .collect();
                futures::stream::iter(posts)
                    .buffered(WEBHOOK_CONCURRENCY)
                    .collect()
                    .await
            }
            Target::HubSpot(client) => self.upsert_all(client, &items).await,
        }
    }

    async fn probe(&self) -> bool {
        match &self.target {
            Target::Nowhere => true,
            Target::Webhook(c) => c.probe().await,
            Target::HubSpot(c) => c.probe().await,
        }
    }
}
