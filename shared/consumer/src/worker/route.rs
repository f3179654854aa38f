//! Routing what a batch decided: delay queues, the DLQ and hand-backs, published confirmed
//! and held while the broker blocks or is away; giving a batch back to the queue.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};

use lapin::options::BasicNackOptions;
use lapin::types::{AMQPValue, FieldTable};

use leadpipe_bus::OutgoingMessage;
use leadpipe_bus::headers;
use leadpipe_bus::names::Names;
use leadpipe_bus::topology::tier_for;

use crate::adapter::Adapter;

use super::batch::Slot;
use super::decide::Action;
use super::state::Shared;

/// How long a batch's outcome is written (or its retries routed) again while the database or
/// the broker is away, before its deliveries go back to the queue (well inside RabbitMQ's
/// 30-minute delivery timeout).
pub(super) const PATIENCE: Duration = Duration::from_secs(300);

/// What [`patiently`] says is away when a database write fails.
pub(super) const DB_AWAY: &str = "the database is away";

/// Runs `write` until it succeeds, with backoff from 100 ms to 5 s, for at most
/// [`PATIENCE`], holding the batch; returns its last error after that. `cause` says in the
/// warning what is away.
pub(super) async fn patiently<T, E, F, Fut>(
    destination: &str,
    what: &str,
    cause: &str,
    mut write: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + PATIENCE;
    let mut backoff = super::patient_backoff();
    loop {
        let result = write().await;
        let wait = backoff.next_wait();
        match result {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() + wait < deadline => {
                tracing::warn!(
                    destination,
                    error = %e,
                    retry_in_ms = wait.as_millis() as u64,
                    "{what} failed ({cause}): holding the batch and trying again"
                );
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Publishes every routed slot ([`publish_routed`]); what fails is published again
/// [`patiently`] once the publisher can be used (the broker unblocked, or reconnected) — the
/// deliveries stay unacked meanwhile. Returns what still failed then.
pub(super) async fn publish_patiently<A: Adapter>(
    shared: &Arc<Shared<A>>,
    slots: &[Slot],
) -> Vec<usize> {
    let failed = Mutex::new(publish_routed(shared, slots, None).await);
    if failed.lock().expect("failed publishes lock").is_empty() {
        return Vec::new();
    }
    let deadline = Instant::now() + PATIENCE;
    let failed_ref = &failed;
    let routed = patiently(
        shared.destination(),
        "routing retries, verdict waits or dead letters",
        "the broker blocks publishing or is away",
        || async move {
            shared.metrics.publish_holds.inc();
            shared
                .publisher
                .wait_usable(deadline.saturating_duration_since(Instant::now()))
                .await;
            let only = failed_ref.lock().expect("failed publishes lock").clone();
            let still = publish_routed(shared, slots, Some(&only)).await;
            let n = still.len();
            *failed_ref.lock().expect("failed publishes lock") = still;
            if n == 0 {
                Ok(())
            } else {
                Err(format!("{n} publishes not confirmed"))
            }
        },
    )
    .await;
    let failed = failed.into_inner().expect("failed publishes lock");
    if routed.is_err() {
        tracing::warn!(
            destination = shared.destination(),
            requeued = failed.len(),
            "could not route for {} s: returning the deliveries to the queue",
            PATIENCE.as_secs()
        );
    }
    failed
}

/// Publishes every Delay, DeadLetter and HandBack slot (of `only`, when given); returns the
/// indexes whose publish failed.
pub(super) async fn publish_routed<A: Adapter>(
    shared: &Arc<Shared<A>>,
    slots: &[Slot],
    only: Option<&[usize]>,
) -> Vec<usize> {
    let destination = shared.adapter.destination();
    let delay_exchange = shared.names.delay_exchange();
    let dlx = shared.names.dead_letter_exchange();
    let jobs = slots.iter().enumerate().filter_map(|(i, slot)| {
        if only.is_some_and(|o| !o.contains(&i)) {
            return None;
        }
        let mut headers = slot
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        let message_id = slot
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .or_else(|| slot.envelope.as_ref().map(|e| e.event_id.clone()))
            .unwrap_or_default();
        let set = |h: &mut FieldTable, k: &str, v: String| {
            h.insert(k.into(), AMQPValue::LongString(v.into()));
        };
        let (exchange, routing_key, expiration_ms) = match slot.action.as_ref()? {
            Action::Delay {
                delay,
                attempts,
                wait,
                poll,
            } => {
                set(&mut headers, headers::ATTEMPTS, attempts.to_string());
                match poll {
                    Some(n) => set(&mut headers, headers::POLLS, n.to_string()),
                    None => headers = headers::without(&headers, headers::POLLS),
                }
                if let Some(code) = wait.retry_code() {
                    shared.metrics.retries.with_label_values(&[code]).inc();
                }
                let tier = tier_for(*delay);
                (
                    delay_exchange.clone(),
                    Names::delay_routing_key(tier, destination),
                    Some(delay.as_millis().min(tier.as_millis()) as u64),
                )
            }
            Action::HandBack => {
                // A fresh copy at the work queue's tail: the broker's delivery count starts
                // again, so a pause never spends the work queue's delivery limit.
                headers = headers::without(&headers, headers::DELIVERY_COUNT);
                (String::new(), shared.names.work_queue(destination), None)
            }
            Action::DeadLetter { failure, attempts } => {
                set(&mut headers, headers::ERROR_CODE, failure.code.clone());
                set(
                    &mut headers,
                    headers::ERROR_MESSAGE,
                    failure.message.clone(),
                );
                if let Some(status) = failure.http_status {
                    set(&mut headers, headers::HTTP_STATUS, status.to_string());
                }
                set(&mut headers, headers::ATTEMPTS, attempts.to_string());
                set(
                    &mut headers,
                    headers::FAILED_AT,
                    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
                );
                tracing::warn!(
                    destination = destination.as_str(),
                    event_id = %message_id,
                    error.code = %failure.code,
                    error.message = %failure.message,
                    attempts,
                    "dead-lettered"
                );
                (dlx.clone(), destination.as_str().to_owned(), None)
            }
            _ => return None,
        };
        Some(async move {
            let msg = OutgoingMessage {
                exchange: &exchange,
                routing_key: &routing_key,
                body: &slot.delivery.data,
                message_id: &message_id,
                headers,
                expiration_ms,
            };
            match shared.publisher.publish(&msg).await {
                Ok(()) => None,
                Err(e) => {
                    tracing::debug!(error = %e, event_id = %message_id, "could not route");
                    Some(i)
                }
            }
        })
    });
    futures::future::join_all(jobs)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Gives every delivery of the batch back to the queue (infrastructure failure).
pub(super) async fn requeue_all<A: Adapter>(shared: &Shared<A>, slots: &[Slot]) {
    shared
        .metrics
        .deliveries
        .with_label_values(&["requeued"])
        .inc_by(slots.len() as u64);
    for slot in slots {
        let _ = slot
            .delivery
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await;
    }
}
