//! The batch pipeline: decode → dedupe → claim (leases renewed while the batch is in hand)
//! → prepare → send → decide → route → record → ack.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};
use tracing::Instrument;

use leadpipe_bus::headers;
use leadpipe_db::DeliveryStatus;
use leadpipe_events::Envelope;
use leadpipe_telemetry::otel;
use leadpipe_telemetry::traceparent::TraceParent;

use crate::adapter::{Adapter, Awaiting, Item};
use crate::outcome::{Failure, Outcome, Prepared};
use crate::store::{ClaimRequest, EventKey, Resolution, Store};

use super::ack::acknowledge;
use super::decide::{self, Action, Done, Wait};
use super::route::{DB_AWAY, patiently, publish_patiently, requeue_all};
use super::state::Shared;

pub(super) struct Slot {
    pub(super) delivery: Delivery,
    pub(super) attempts: u32,
    /// `x-leadpipe-polls`: > 0 when the message came back for a verdict.
    pub(super) polls: u32,
    pub(super) envelope: Option<Envelope>,
    /// The delivery-log key of a decoded event.
    pub(super) key: Option<EventKey>,
    pub(super) action: Option<Action>,
}

/// What a batch showed of the destination.
#[derive(Debug, Default)]
pub(crate) struct BatchReport {
    /// Requests made (events the destination was asked about).
    pub(crate) requests: usize,
    /// Of which failed transiently.
    pub(crate) transient: usize,
    /// The first systemic failure, if any.
    pub(crate) systemic: Option<Failure>,
}

pub(super) fn header_u32(table: Option<&FieldTable>, name: &str) -> u32 {
    let Some(v) = table.and_then(|t| t.inner().get(name)) else {
        return 0;
    };
    match v {
        AMQPValue::LongString(s) => s.to_string().parse().unwrap_or(0),
        AMQPValue::ShortString(s) => s.as_str().parse().unwrap_or(0),
        AMQPValue::LongLongInt(n) => u32::try_from(*n).unwrap_or(0),
        AMQPValue::LongInt(n) => u32::try_from(*n).unwrap_or(0),
        AMQPValue::LongUInt(n) => *n,
        _ => 0,
    }
}

pub(super) fn header_str(table: Option<&FieldTable>, name: &str) -> Option<String> {
    match table?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Describes a decode error by category and position only: serde's own messages can quote
/// the offending value.
pub(super) fn describe_decode_error(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "not a schema-1 envelope",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("body is {kind} (line {}, column {})", e.line(), e.column())
}

/// Processes one batch end to end. `Err` only for infrastructure failures (database, broker),
/// after giving every undecided delivery back to the queue. Everything it logs (dead letters,
/// routing, lost leases) is inside its `batch` span, which names the destination; the span
/// is at WARN level so that it is there whenever a warning is (`RUST_LOG=warn` included).
#[tracing::instrument(
    name = "batch",
    level = "warn",
    skip_all,
    fields(destination = shared.destination(), deliveries = batch.len(), trial = trial)
)]
pub(super) async fn process_batch<A: Adapter>(
    shared: &Arc<Shared<A>>,
    store: &Store,
    batch: Vec<Delivery>,
    trial: bool,
) -> anyhow::Result<BatchReport> {
    let now = Utc::now();
    let batch_started = SystemTime::now();
    let mut slots: Vec<Slot> = batch.into_iter().map(|d| decode(d, store)).collect();

    // Lag, and duplicates within the batch. Each new event is prepared now (a verdict poll
    // needs no payload), so that one the destination takes nothing of (unmapped, consent
    // blocked, expired) is written with its final status by the claim itself.
    let mut first_of: HashMap<EventKey, usize> = HashMap::new();
    let mut claims = Vec::new();
    let mut early: HashMap<usize, Prepared<A::Prepared>> = HashMap::new();
    for (i, slot) in slots.iter_mut().enumerate() {
        let (Some(env), Some(key)) = (&slot.envelope, &slot.key) else {
            continue;
        };
        let ingested = DateTime::parse_from_rfc3339(&env.ingested_at)
            .ok()
            .map(|t| t.with_timezone(&Utc));
        if let Some(t) = ingested {
            shared
                .metrics
                .lag
                .observe((now - t).num_milliseconds().max(0) as f64 / 1000.0);
        }
        if first_of.contains_key(key) {
            slot.action = Some(Action::Ack(Done::Duplicate));
            continue;
        }
        first_of.insert(key.clone(), i);
        let mut settled = None;
        if slot.polls == 0 {
            let prepared = prepare(shared, env, key);
            if let Prepared::Done(outcome) = &prepared {
                settled = decide::settled_without_request(outcome);
            }
            early.insert(i, prepared);
        }
        claims.push(ClaimRequest {
            key: key.clone(),
            occurred_at: env.event.occurred_at_utc(),
            source: env.event.source_id().to_owned(),
            ingested_at: ingested,
            lead_id: env.event.lead_id.clone(),
            order_id: env.event.order_id.clone(),
            settled,
        });
    }
    // Rows the claim wrote final: no lease to renew, no outcome to write.
    let settled_keys: HashSet<EventKey> = claims
        .iter()
        .filter(|c| c.settled.is_some())
        .map(|c| c.key.clone())
        .collect();

    let claim = if claims.is_empty() {
        Default::default()
    } else {
        match store.claim(&claims).await {
            Ok(c) => c,
            Err(e) => {
                requeue_all(shared, &slots).await;
                return Err(anyhow::Error::new(e).context("claiming idempotency keys failed"));
            }
        }
    };
    let leased: Vec<EventKey> = claim
        .claimed
        .iter()
        .filter(|k| !settled_keys.contains(*k))
        .cloned()
        .collect();
    let leased_count = leased.len() as i64;
    shared.metrics.in_flight.add(leased_count);
    // The leases are renewed for as long as the batch is in hand, so that a slow destination
    // never lets another worker take over (and send again) an event still being sent.
    let _renewal = LeaseRenewal::start(shared.destination(), store.clone(), leased);

    // Prepare what we hold.
    let mut outcomes: HashMap<usize, Outcome> = HashMap::new();
    let mut to_send: Vec<(usize, Item<A::Prepared>)> = Vec::new();
    let mut to_poll: Vec<(usize, Awaiting)> = Vec::new();
    let mut traces: HashMap<usize, EventTrace> = HashMap::new();
    // In arrival order: a CRM must see a lead before its won.
    let mut order: Vec<(&EventKey, usize)> = first_of.iter().map(|(k, &i)| (k, i)).collect();
    order.sort_unstable_by_key(|&(_, i)| i);
    for (key, i) in order {
        let slot = &mut slots[i];
        if claim.done.contains(key) {
            slot.action = Some(Action::Ack(Done::Duplicate));
        } else if let Some(reference) = claim.awaiting.get(key) {
            if slot.polls > 0 || slot.delivery.redelivered {
                // Back from the delay queue to ask for the destination's verdict, or the
                // accepted event's own message handed back before its wait could be routed
                // (or its worker died): ask, never upload again.
                to_poll.push((
                    i,
                    Awaiting {
                        event_id: key.event_id.clone(),
                        reference: reference.clone(),
                        poll: slot.polls.max(1),
                    },
                ));
            } else {
                // Another copy of an event the destination already has.
                slot.action = Some(Action::Ack(Done::Duplicate));
            }
        } else if let Some(left) = claim.busy.get(key) {
            // Another live worker holds it: look again once its lease has run out.
            slot.action = Some(Action::Delay {
                delay: *left,
                attempts: slot.attempts,
                wait: Wait::LeaseHeld,
                poll: (slot.polls > 0).then_some(slot.polls),
            });
        } else if claim.claimed.contains(key) {
            let prepared = match early.remove(&i) {
                Some(prepared) => prepared,
                None => {
                    let env = slot.envelope.as_ref().expect("claimed slots decoded");
                    prepare(shared, env, key)
                }
            };
            match prepared {
                Prepared::Done(outcome) => {
                    outcomes.insert(i, outcome);
                }
                Prepared::Send(prepared) => {
                    let trace = header_str(
                        slot.delivery.properties.headers().as_ref(),
                        headers::TRACEPARENT,
                    )
                    .and_then(|t| TraceParent::parse(&t))
                    .map(EventTrace::continuing);
                    to_send.push((
                        i,
                        Item {
                            event_id: key.event_id.clone(),
                            prepared,
                            traceparent: trace.as_ref().map(|t| t.call.to_string()),
                        },
                    ));
                    if let Some(trace) = trace {
                        traces.insert(i, trace);
                    }
                }
            }
        } else {
            // Not returned by the claim nor found: treat as busy briefly (raced a delete).
            slot.action = Some(Action::Delay {
                delay: Duration::from_secs(1),
                attempts: slot.attempts,
                wait: Wait::LeaseHeld,
                poll: (slot.polls > 0).then_some(slot.polls),
            });
        }
    }

    // Send, in chunks the destination accepts.
    let chunk = shared.adapter.max_batch().max(1);
    while !to_send.is_empty() {
        let rest = to_send.split_off(to_send.len().min(chunk));
        let (indexes, items): (Vec<usize>, Vec<Item<A::Prepared>>) = to_send.into_iter().unzip();
        let started = Instant::now();
        let sent_at = SystemTime::now();
        let n = items.len();
        // The destination call's span: the adapter's own warnings land in it, with the ids
        // of the first and last event of the request.
        let call = tracing::warn_span!(
            "send",
            destination = shared.destination(),
            events = n,
            first_event_id = %items.first().map(|i| i.event_id.as_str()).unwrap_or(""),
            last_event_id = %items.last().map(|i| i.event_id.as_str()).unwrap_or(""),
        );
        // A panicking send: whether the request left is unknown, so its events are retried
        // (with their ids, which the destination dedupes) rather than the whole batch
        // redelivered with the outcomes of the other requests lost.
        let results = AssertUnwindSafe(shared.adapter.send(items).instrument(call))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!(
                    destination = shared.destination(),
                    events = n,
                    "the destination adapter panicked sending a request"
                );
                (0..n)
                    .map(|_| Outcome::Retry {
                        failure: Failure::new(
                            "adapter_panic",
                            "the destination adapter panicked sending the request",
                        ),
                        retry_after: None,
                    })
                    .collect()
            });
        shared
            .metrics
            .request_seconds
            .observe(started.elapsed().as_secs_f64());
        debug_assert_eq!(results.len(), indexes.len());
        if otel::enabled() {
            let answered_at = SystemTime::now();
            for (i, outcome) in indexes.iter().zip(&results) {
                if let (Some(trace), Some(env)) = (traces.get(i), &slots[*i].envelope) {
                    trace.export(
                        shared.destination(),
                        &env.event_id,
                        outcome,
                        (batch_started, sent_at, answered_at),
                    );
                }
            }
        }
        for (i, outcome) in indexes.into_iter().zip(results) {
            outcomes.insert(i, outcome);
        }
        to_send = rest;
    }

    // Outcomes → actions and delivery log rows.
    let mut records = Vec::new();
    let mut report = BatchReport::default();
    for (i, outcome) in outcomes {
        let slot = &mut slots[i];
        let key = slot.key.clone().expect("decided slots decoded");
        if let Outcome::Systemic(failure) = &outcome
            && report.systemic.is_none()
        {
            report.systemic = Some(failure.clone());
            // Paused at once, so the other channels stop taking deliveries now rather than
            // after this batch is handed back (a trial's verdict is the trial's to give).
            if !trial {
                shared.pause(failure);
            }
        }
        report.transient += usize::from(matches!(outcome, Outcome::Retry { .. }));
        let (action, record) = decide::on_outcome(
            &shared.settings,
            slot.attempts,
            shared.adapter.verdict_delay(1),
            key,
            outcome,
        );
        report.requests += record.tried as usize;
        slot.action = Some(action);
        // Written final by the claim (the only outcome these rows can have).
        if !settled_keys.contains(&record.key) {
            records.push(record);
        }
    }

    // Verdicts on accepted events that came back to ask for them.
    let resolutions = ask_verdicts(shared, &mut slots, to_poll).await;

    // Publish retries, verdict waits, dead letters and handed-back work (confirmed) before
    // anything is acked. While the broker blocks publishing or is away, the deliveries are
    // held and the publishes tried again, so no retry skips its backoff and no accepted event
    // is uploaded again.
    let failed_publishes = publish_patiently(shared, &slots).await;
    for i in &failed_publishes {
        if let Some(r) = records
            .iter_mut()
            .find(|r| Some(&r.key) == slots[*i].key.as_ref())
        {
            // Not routed. An event the destination has accepted stays `accepted`, so that
            // its redelivery asks for the verdict; anything else is released to be processed
            // again.
            if r.status != Some(DeliveryStatus::Accepted) {
                r.status = None;
            }
        }
        slots[*i].action = Some(Action::Requeue);
    }

    // The destination has acted on these events: while the database is away the outcome is
    // written again and again, the deliveries held unacked, rather than handed back to the
    // queue to be sent a second time.
    let lost = match patiently(shared.destination(), "recording outcomes", DB_AWAY, || {
        store.record(&records)
    })
    .await
    {
        Ok(lost) => lost,
        Err(e) => {
            requeue_all(shared, &slots).await;
            shared.metrics.in_flight.sub(leased_count);
            return Err(anyhow::Error::new(e).context("recording outcomes failed"));
        }
    };
    shared.metrics.in_flight.sub(leased_count);
    if !lost.is_empty() {
        shared.metrics.lost_leases.inc_by(lost.len() as u64);
        let ids: Vec<String> = lost.iter().map(ToString::to_string).collect();
        tracing::warn!(
            destination = shared.destination(),
            event_ids = ?ids,
            lease_secs = shared.settings.lease.as_secs(),
            "lost leases: another worker took these events over before their outcome was written \
             (the database was unreachable for longer than LEASE_SECS); the other worker's outcome stands"
        );
    }
    // A verdict whose delay or dead-letter publish failed is not written: the requeued
    // message asks again.
    let resolutions: Vec<Resolution> = resolutions
        .into_iter()
        .filter(|(i, _)| !failed_publishes.contains(i))
        .map(|(_, r)| r)
        .collect();
    if let Err(e) = patiently(shared.destination(), "recording verdicts", DB_AWAY, || {
        store.resolve(&resolutions)
    })
    .await
    {
        requeue_all(shared, &slots).await;
        return Err(anyhow::Error::new(e).context("recording verdicts failed"));
    }

    acknowledge(shared, &slots).await?;
    Ok(report)
}

/// The adapter's view of one event; a panic dead-letters that event alone.
fn prepare<A: Adapter>(
    shared: &Shared<A>,
    env: &Envelope,
    key: &EventKey,
) -> Prepared<A::Prepared> {
    std::panic::catch_unwind(AssertUnwindSafe(|| shared.adapter.prepare(env))).unwrap_or_else(
        |_| {
            tracing::error!(
                destination = shared.destination(),
                event_id = %key.event_id,
                "the destination adapter panicked preparing the event"
            );
            Prepared::Done(Outcome::Permanent(Failure::new(
                "adapter_panic",
                "the destination adapter panicked preparing this event",
            )))
        },
    )
}

/// Reads one delivery's headers and body.
pub(super) fn decode(delivery: Delivery, store: &Store) -> Slot {
    let attempts = header_u32(delivery.properties.headers().as_ref(), headers::ATTEMPTS);
    let polls = header_u32(delivery.properties.headers().as_ref(), headers::POLLS);
    let decoded = serde_json::from_slice::<Envelope>(&delivery.data);
    let (envelope, action) = match decoded {
        Ok(env) if env.schema_version == leadpipe_events::SCHEMA_VERSION => (Some(env), None),
        Ok(env) => (
            None,
            Some(Action::DeadLetter {
                failure: Failure::new(
                    "unsupported_schema",
                    format!("schema_version {} is not supported", env.schema_version),
                ),
                attempts,
            }),
        ),
        Err(e) => (
            None,
            Some(Action::DeadLetter {
                failure: Failure::new("undecodable", describe_decode_error(&e)),
                attempts,
            }),
        ),
    };
    Slot {
        key: envelope.as_ref().map(|e| store.key_of(e)),
        delivery,
        attempts,
        polls,
        envelope,
        action,
    }
}

/// Renews a batch's leases every third of `LEASE_SECS` until dropped.
pub(super) struct LeaseRenewal(Option<tokio::task::JoinHandle<()>>);

impl LeaseRenewal {
    pub(super) fn start(destination: &'static str, store: Store, mut keys: Vec<EventKey>) -> Self {
        if keys.is_empty() {
            return Self(None);
        }
        let every = (store.lease() / 3).max(Duration::from_millis(100));
        Self(Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match store.renew(&keys).await {
                    Ok(lost) if !lost.is_empty() => {
                        let ids: Vec<String> = lost.iter().map(ToString::to_string).collect();
                        tracing::warn!(
                            destination,
                            event_ids = ?ids,
                            "lease lost while the batch is in hand: another worker took these events over"
                        );
                        keys.retain(|k| !lost.contains(k));
                        if keys.is_empty() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(destination, error = %e, "renewing leases failed; trying again");
                    }
                }
            }
        })))
    }
}

impl Drop for LeaseRenewal {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// The spans of one event at this sender: its consume (continuing the publish that put it on
/// the bus) and the destination call (whose `traceparent` the request carries).
pub(super) struct EventTrace {
    /// The `traceparent` the message came with (the publish span).
    incoming: TraceParent,
    consume: TraceParent,
    call: TraceParent,
}

impl EventTrace {
    pub(super) fn continuing(incoming: TraceParent) -> Self {
        let consume = incoming.child();
        let call = consume.child();
        Self {
            incoming,
            consume,
            call,
        }
    }

    /// Exports both spans: consume from the batch's start to the answer, the call from the
    /// request to the answer.
    pub(super) fn export(
        &self,
        destination: &str,
        event_id: &str,
        outcome: &Outcome,
        (started, sent, answered): (SystemTime, SystemTime, SystemTime),
    ) {
        let result = match outcome {
            Outcome::Sent { .. } => "sent",
            Outcome::Accepted { .. } => "accepted",
            Outcome::DryRun { .. } => "dry_run",
            Outcome::Retry { .. } => "retry",
            Outcome::Permanent(_) => "permanent",
            Outcome::Systemic(_) => "systemic",
            Outcome::BlockedConsent => "blocked_consent",
            Outcome::Unmapped => "skipped_unmapped",
            Outcome::Expired => "expired",
        };
        otel::Span::start_at(
            format!("consume leadpipe.{destination}"),
            otel::Kind::Consumer,
            &self.consume,
            Some(&self.incoming.parent_id),
            started,
        )
        .attribute("messaging.message.id", event_id.to_owned())
        .attribute("leadpipe.destination", destination)
        .end_at(answered);
        otel::Span::start_at(
            format!("send {destination}"),
            otel::Kind::Client,
            &self.call,
            Some(&self.consume.parent_id),
            sent,
        )
        .attribute("leadpipe.destination", destination)
        .attribute("leadpipe.result", result)
        .end_at(answered);
    }
}

/// Asks the adapter for the verdicts of accepted events, turns them into actions on their
/// slots, and returns what to write on their rows (by slot index).
#[tracing::instrument(
    name = "verdicts",
    level = "warn",
    skip_all,
    fields(destination = shared.destination(), events = to_poll.len())
)]
pub(super) async fn ask_verdicts<A: Adapter>(
    shared: &Arc<Shared<A>>,
    slots: &mut [Slot],
    to_poll: Vec<(usize, Awaiting)>,
) -> Vec<(usize, Resolution)> {
    if to_poll.is_empty() {
        return Vec::new();
    }
    let (indexes, items): (Vec<usize>, Vec<Awaiting>) = to_poll.into_iter().unzip();
    let polled: Vec<u32> = items.iter().map(|a| a.poll).collect();
    let keys: Vec<EventKey> = indexes
        .iter()
        .map(|i| slots[*i].key.clone().expect("awaiting slots decoded"))
        .collect();
    let verdicts = shared.adapter.verdicts(items).await;
    debug_assert_eq!(verdicts.len(), indexes.len());
    let mut out = Vec::new();
    for (((i, poll), key), verdict) in indexes.into_iter().zip(polled).zip(keys).zip(verdicts) {
        let slot = &mut slots[i];
        let (action, settled) = decide::on_verdict(
            &shared.settings,
            slot.attempts,
            poll,
            shared.adapter.verdict_delay(poll + 1),
            verdict,
        );
        let row = settled.map(|settled| Resolution {
            key,
            status: settled.status,
            error_code: settled.failure.as_ref().map(|f| f.code.clone()),
            error_message: settled.failure.map(|f| f.message),
        });
        slot.action = Some(action);
        if let Some(row) = row {
            out.push((i, row));
        }
    }
    out
}
