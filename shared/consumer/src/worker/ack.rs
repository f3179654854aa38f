//! Acking a decided batch (one `multiple` ack when nothing is requeued) and its metrics.

use std::collections::HashSet;
use std::sync::Arc;

use lapin::options::{BasicAckOptions, BasicNackOptions};

use leadpipe_bus::headers;

use crate::adapter::Adapter;

use super::batch::{Slot, header_str};
use super::decide::Action;
use super::state::Shared;

/// Acks every decided delivery — with one `multiple` ack when nothing is requeued, since a
/// channel works one batch at a time — and requeues the rest.
pub(super) async fn acknowledge<A: Adapter>(
    shared: &Arc<Shared<A>>,
    slots: &[Slot],
) -> anyhow::Result<()> {
    let metrics = &shared.metrics;
    for slot in slots {
        let label = Action::label(slot.action.as_ref());
        metrics.deliveries.with_label_values(&[label]).inc();
        // One span per event, carrying the trace context that came with the message.
        let span = tracing::info_span!(
            "delivery",
            destination = shared.adapter.destination().as_str(),
            event_id = slot
                .envelope
                .as_ref()
                .map(|e| e.event_id.as_str())
                .unwrap_or(""),
            attempt = slot.attempts + 1,
            traceparent = header_str(
                slot.delivery.properties.headers().as_ref(),
                headers::TRACEPARENT
            )
            .as_deref()
            .unwrap_or(""),
        );
        span.in_scope(|| tracing::debug!(result = label, "delivery decided"));
    }
    let requeue: HashSet<u64> = slots
        .iter()
        .filter(|s| matches!(s.action, Some(Action::Requeue) | None))
        .map(|s| s.delivery.delivery_tag)
        .collect();
    if requeue.is_empty() {
        if let Some(last) = slots.iter().max_by_key(|s| s.delivery.delivery_tag) {
            last.delivery
                .ack(BasicAckOptions { multiple: true })
                .await?;
        }
        return Ok(());
    }
    for slot in slots {
        if requeue.contains(&slot.delivery.delivery_tag) {
            slot.delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await?;
        } else {
            slot.delivery.ack(BasicAckOptions::default()).await?;
        }
    }
    Ok(())
}
