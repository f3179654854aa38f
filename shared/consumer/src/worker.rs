//! The consume loop and the batch pipeline.
//!
//! Per batch: decode → dedupe → claim in Postgres → adapter `prepare` → adapter `send` →
//! outcomes turned into actions → delay/DLQ publishes confirmed → outcomes committed →
//! deliveries acked (one `multiple` ack when the whole batch is done). A delivery is never
//! held while waiting for a retry: it goes to a delay queue and is acked. An outcome the
//! database cannot take is written again until it can (the deliveries stay unacked
//! meanwhile): a sent event is never handed back to be sent twice because Postgres restarted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use std::panic::AssertUnwindSafe;

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use leadpipe_bus::headers;
use leadpipe_bus::names::Names;
use leadpipe_bus::topology::tier_for;
use leadpipe_bus::{OutgoingMessage, Publisher};
use leadpipe_db::DeliveryStatus;
use leadpipe_events::Envelope;
use leadpipe_telemetry::otel;
use leadpipe_telemetry::traceparent::TraceParent;

use crate::adapter::{Adapter, Awaiting, Item, Verdict};
use crate::cfg::RuntimeSettings;
use crate::metrics::Metrics;
use crate::outcome::{Failure, Outcome, Prepared};
use crate::retry;
use crate::store::{ClaimRequest, Record, Resolution, Store};

/// State every worker shares.
pub(crate) struct Shared<A: Adapter> {
    pub(crate) adapter: Arc<A>,
    pub(crate) settings: RuntimeSettings,
    pub(crate) names: Names,
    pub(crate) store: Store,
    pub(crate) publisher: Publisher,
    pub(crate) metrics: Metrics,
    /// `true` while paused on a systemic failure.
    pub(crate) paused: watch::Sender<bool>,
    /// Workers with an open consumer.
    pub(crate) consuming: AtomicUsize,
    /// Consecutive batches in which every request failed transiently.
    pub(crate) failing_batches: AtomicU32,
}

impl<A: Adapter> Shared<A> {
    fn destination(&self) -> &'static str {
        self.adapter.destination().as_str()
    }

    /// Pauses consumption (idempotent).
    pub(crate) fn pause(&self, reason: &Failure) {
        if !self.paused.send_replace(true) {
            tracing::warn!(
                destination = self.destination(),
                error.code = %reason.code,
                error.message = %reason.message,
                "systemic failure: pausing consumption until the destination accepts requests"
            );
            self.metrics.paused.set(1);
        }
    }

    /// Whether `/readyz` says ready.
    pub(crate) fn is_ready(&self) -> bool {
        !*self.paused.borrow()
            && self.consuming.load(Ordering::Acquire) > 0
            && self.publisher.is_ready()
    }
}

/// Runs one consumer channel until `shutdown`, reconnecting with backoff.
pub(crate) async fn run_worker<A: Adapter>(
    shared: Arc<Shared<A>>,
    index: usize,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut paused = shared.paused.subscribe();
    while !shutdown.is_cancelled() {
        if *paused.borrow_and_update() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = paused.wait_for(|p| !*p) => continue,
            }
        }
        match consume(&shared, index, &shutdown).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(
                    destination = shared.destination(),
                    worker = index,
                    error = %format!("{e:#}"),
                    retry_in_ms = backoff.as_millis() as u64,
                    "consumer stopped; reconnecting"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One consumer session: returns `Ok` on shutdown or pause, `Err` on a broker or database
/// failure. Closing the channel returns every unacked delivery to the queue.
async fn consume<A: Adapter>(
    shared: &Arc<Shared<A>>,
    index: usize,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let s = &shared.settings;
    let conn = leadpipe_bus::connect(
        &s.amqp.url,
        &format!("{}-sender-{index}", shared.destination()),
    )
    .await?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(s.prefetch, BasicQosOptions::default())
        .await?;
    let queue = shared.names.work_queue(shared.adapter.destination());
    let store = shared.store.for_worker(index);
    let tag = format!("{}-{index}", shared.store.owner());
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    shared.consuming.fetch_add(1, Ordering::AcqRel);
    shared.metrics.ready.set(i64::from(shared.is_ready()));
    let mut paused = shared.paused.subscribe();
    let batch_size = s.batch_size.min(shared.adapter.max_batch()).max(1);
    let result = loop {
        // Biased: a pause or shutdown wins over a waiting delivery, so nothing new is taken
        // once either is decided.
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            _ = paused.wait_for(|p| *p) => break Ok(()),
            d = consumer.next() => d,
        };
        let first = match first {
            Some(Ok(d)) => d,
            Some(Err(e)) => break Err(e.into()),
            None => break Err(anyhow::anyhow!("the broker cancelled the consumer")),
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + s.batch_max_wait;
        let mut stream_error = None;
        while batch.len() < batch_size {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(d))) => batch.push(d),
                Ok(Some(Err(e))) => {
                    stream_error = Some(e);
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        // A panicking adapter must not take the worker down with its deliveries unacked: the
        // session ends like any failure, the channel closes, the batch returns to the queue
        // (where the delivery limit eventually parks a message that panics every time).
        match AssertUnwindSafe(process_batch(shared, &store, batch))
            .catch_unwind()
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break Err(e),
            Err(_) => {
                break Err(anyhow::anyhow!(
                    "the destination adapter panicked on a batch"
                ));
            }
        }
        if let Some(e) = stream_error {
            break Err(e.into());
        }
    };
    shared.consuming.fetch_sub(1, Ordering::AcqRel);
    shared.metrics.ready.set(i64::from(shared.is_ready()));
    let _ = channel.close(200, "stopping".into()).await;
    let _ = conn.close(200, "stopping".into()).await;
    result
}

/// What happens to one delivery.
#[derive(Debug)]
enum Action {
    /// Done: ack (with the metrics result).
    Ack(&'static str),
    /// Retry later: publish to the delay queue with `attempts`, then ack. `poll`: the
    /// message comes back to ask for an accepted event's verdict (header `x-leadpipe-polls`);
    /// `None` removes that header (the event is to be sent again).
    Delay {
        delay: Duration,
        attempts: u32,
        code: String,
        poll: Option<u32>,
    },
    /// Publish to the DLQ with the error headers, then ack.
    DeadLetter { failure: Failure, attempts: u32 },
    /// Give it back to the queue (systemic pause, or a failed publish).
    Requeue,
}

struct Slot {
    delivery: Delivery,
    attempts: u32,
    /// `x-leadpipe-polls`: > 0 when the message came back for a verdict.
    polls: u32,
    envelope: Option<Envelope>,
    action: Option<Action>,
}

fn header_u32(table: Option<&FieldTable>, name: &str) -> u32 {
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

fn header_str(table: Option<&FieldTable>, name: &str) -> Option<String> {
    match table?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Describes a decode error by category and position only: serde's own messages can quote
/// the offending value.
fn describe_decode_error(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "not a schema-1 envelope",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("body is {kind} (line {}, column {})", e.line(), e.column())
}

/// Processes one batch end to end. `Err` only for infrastructure failures (database, broker),
/// after giving every undecided delivery back to the queue.
async fn process_batch<A: Adapter>(
    shared: &Arc<Shared<A>>,
    store: &Store,
    batch: Vec<Delivery>,
) -> anyhow::Result<()> {
    let now = Utc::now();
    let batch_started = SystemTime::now();
    let mut slots: Vec<Slot> = batch
        .into_iter()
        .map(|delivery| {
            let attempts = header_u32(delivery.properties.headers().as_ref(), headers::ATTEMPTS);
            let polls = header_u32(delivery.properties.headers().as_ref(), headers::POLLS);
            let decoded = serde_json::from_slice::<Envelope>(&delivery.data);
            let (envelope, action) = match decoded {
                Ok(env) if env.schema_version == leadpipe_events::SCHEMA_VERSION => {
                    (Some(env), None)
                }
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
                delivery,
                attempts,
                polls,
                envelope,
                action,
            }
        })
        .collect();

    // Lag, and duplicates within the batch.
    let mut first_of: HashMap<String, usize> = HashMap::new();
    let mut claims = Vec::new();
    for (i, slot) in slots.iter_mut().enumerate() {
        let Some(env) = &slot.envelope else { continue };
        let ingested = DateTime::parse_from_rfc3339(&env.ingested_at)
            .ok()
            .map(|t| t.with_timezone(&Utc));
        if let Some(t) = ingested {
            shared
                .metrics
                .lag
                .observe((now - t).num_milliseconds().max(0) as f64 / 1000.0);
        }
        if first_of.contains_key(&env.event_id) {
            slot.action = Some(Action::Ack("duplicate"));
            continue;
        }
        first_of.insert(env.event_id.clone(), i);
        claims.push(ClaimRequest {
            event_id: env.event_id.clone(),
            event_name: env.event.name().to_owned(),
            source: env.event.source_id().to_owned(),
            ingested_at: ingested,
        });
    }

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
    shared.metrics.in_flight.add(claim.claimed.len() as i64);

    // Prepare what we hold.
    let mut outcomes: HashMap<usize, Outcome> = HashMap::new();
    let mut to_send: Vec<(usize, Item<A::Prepared>)> = Vec::new();
    let mut to_poll: Vec<(usize, Awaiting)> = Vec::new();
    let mut traces: HashMap<usize, EventTrace> = HashMap::new();
    // In arrival order: a CRM must see a lead before its won.
    let mut order: Vec<(&String, usize)> = first_of.iter().map(|(id, &i)| (id, i)).collect();
    order.sort_unstable_by_key(|&(_, i)| i);
    for (id, i) in order {
        let slot = &mut slots[i];
        if claim.done.contains(id) {
            slot.action = Some(Action::Ack("duplicate"));
        } else if let Some(reference) = claim.awaiting.get(id) {
            if slot.polls > 0 {
                // Back from the delay queue to ask for the destination's verdict.
                to_poll.push((
                    i,
                    Awaiting {
                        event_id: id.clone(),
                        reference: reference.clone(),
                        poll: slot.polls,
                    },
                ));
            } else {
                // Another copy of an event the destination already has.
                slot.action = Some(Action::Ack("duplicate"));
            }
        } else if let Some(left) = claim.busy.get(id) {
            // Another live worker holds it: look again once its lease has run out.
            slot.action = Some(Action::Delay {
                delay: *left,
                attempts: slot.attempts,
                code: "lease_held".into(),
                poll: (slot.polls > 0).then_some(slot.polls),
            });
        } else if claim.claimed.contains(id) {
            let env = slot.envelope.as_ref().expect("claimed slots decoded");
            match shared.adapter.prepare(env) {
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
                            event_id: id.clone(),
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
                code: "lease_held".into(),
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
        let results = shared.adapter.send(items).await;
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
    let s = &shared.settings;
    let mut records = Vec::new();
    let mut systemic = None;
    let (mut requests, mut transient) = (0usize, 0usize);
    for (i, outcome) in outcomes {
        let slot = &mut slots[i];
        let event_id = slot
            .envelope
            .as_ref()
            .map(|e| e.event_id.clone())
            .unwrap_or_default();
        let tried = i32::from(outcome.made_request());
        requests += tried as usize;
        let mut record = Record {
            event_id,
            status: None,
            tried,
            http_status: None,
            error_code: None,
            error_message: None,
            reference: None,
            payload: None,
        };
        let action = match outcome {
            Outcome::Sent {
                reference,
                http_status,
            } => {
                record.status = Some(DeliveryStatus::Sent);
                record.reference = reference;
                record.http_status = http_status;
                Action::Ack("success")
            }
            Outcome::Accepted { reference } => {
                // The message waits in the delay queues and comes back for the verdict.
                record.status = Some(DeliveryStatus::Accepted);
                record.reference = reference;
                Action::Delay {
                    delay: shared.adapter.verdict_delay(1),
                    attempts: slot.attempts + 1,
                    code: AWAITING.into(),
                    poll: Some(1),
                }
            }
            Outcome::DryRun { payload } => {
                record.status = Some(DeliveryStatus::DryRun);
                record.payload = Some(payload);
                Action::Ack("dry_run")
            }
            Outcome::BlockedConsent => {
                record.status = Some(DeliveryStatus::BlockedConsent);
                Action::Ack("blocked_consent")
            }
            Outcome::Unmapped => {
                record.status = Some(DeliveryStatus::SkippedUnmapped);
                Action::Ack("skipped_unmapped")
            }
            Outcome::Expired => {
                record.status = Some(DeliveryStatus::Expired);
                Action::Ack("expired")
            }
            Outcome::Retry {
                failure,
                retry_after,
            } => {
                transient += 1;
                let attempts = slot.attempts + 1;
                record.http_status = failure.http_status;
                record.error_code = Some(failure.code.clone());
                record.error_message = Some(failure.message.clone());
                if attempts >= s.max_attempts {
                    record.status = Some(DeliveryStatus::DeadLettered);
                    let message = format!("gave up after {attempts} attempts: {}", failure.message);
                    record.error_message = Some(message.clone());
                    Action::DeadLetter {
                        failure: Failure { message, ..failure },
                        attempts,
                    }
                } else {
                    record.status = Some(DeliveryStatus::Retrying);
                    Action::Delay {
                        delay: retry::delay(attempts, s.retry_base, s.retry_max, retry_after),
                        attempts,
                        code: failure.code,
                        poll: None,
                    }
                }
            }
            Outcome::Permanent(failure) => {
                record.status = Some(DeliveryStatus::DeadLettered);
                record.http_status = failure.http_status;
                record.error_code = Some(failure.code.clone());
                record.error_message = Some(failure.message.clone());
                Action::DeadLetter {
                    attempts: slot.attempts + tried as u32,
                    failure,
                }
            }
            Outcome::Systemic(failure) => {
                record.http_status = failure.http_status;
                record.error_code = Some(failure.code.clone());
                record.error_message = Some(failure.message.clone());
                systemic.get_or_insert(failure);
                Action::Requeue
            }
        };
        slot.action = Some(action);
        records.push(record);
    }

    // Verdicts on accepted events that came back to ask for them.
    let resolutions = ask_verdicts(shared, &mut slots, to_poll).await;

    // Publish retries and dead letters (confirmed) before anything is acked.
    let failed_publishes = publish_routed(shared, &slots).await;
    for i in &failed_publishes {
        let id = slots[*i].envelope.as_ref().map(|e| e.event_id.as_str());
        if let Some(r) = records.iter_mut().find(|r| Some(r.event_id.as_str()) == id) {
            // Not routed: release the claim so the redelivery is processed again.
            r.status = None;
        }
        slots[*i].action = Some(Action::Requeue);
    }

    // The destination has acted on these events: while the database is away the outcome is
    // written again and again, the deliveries held unacked, rather than handed back to the
    // queue to be sent a second time.
    if let Err(e) = patiently(shared.destination(), "recording outcomes", || {
        store.record(&records)
    })
    .await
    {
        requeue_all(shared, &slots).await;
        shared.metrics.in_flight.sub(claim.claimed.len() as i64);
        return Err(anyhow::Error::new(e).context("recording outcomes failed"));
    }
    shared.metrics.in_flight.sub(claim.claimed.len() as i64);
    // A verdict whose delay or dead-letter publish failed is not written: the requeued
    // message asks again.
    let resolutions: Vec<Resolution> = resolutions
        .into_iter()
        .filter(|(i, _)| !failed_publishes.contains(i))
        .map(|(_, r)| r)
        .collect();
    if let Err(e) = patiently(shared.destination(), "recording verdicts", || {
        store.resolve(&resolutions)
    })
    .await
    {
        requeue_all(shared, &slots).await;
        return Err(anyhow::Error::new(e).context("recording verdicts failed"));
    }

    acknowledge(shared, &slots).await?;

    // "Every request failing" is systemic too, once it lasts.
    if requests > 0 && transient == requests {
        let n = shared.failing_batches.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= s.pause_after_failed_batches {
            systemic.get_or_insert(Failure::new(
                "all_requests_failing",
                format!("every request of the last {n} batches failed"),
            ));
        }
    } else if requests > transient {
        shared.failing_batches.store(0, Ordering::Release);
    }
    if let Some(reason) = systemic {
        shared.pause(&reason);
    }
    Ok(())
}

/// The spans of one event at this sender: its consume (continuing the publish that put it on
/// the bus) and the destination call (whose `traceparent` the request carries).
struct EventTrace {
    /// The `traceparent` the message came with (the publish span).
    incoming: TraceParent,
    consume: TraceParent,
    call: TraceParent,
}

impl EventTrace {
    fn continuing(incoming: TraceParent) -> Self {
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
    fn export(
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

/// How long a batch's outcome is written again while the database is away, before its
/// deliveries go back to the queue (well inside RabbitMQ's 30-minute delivery timeout).
const PATIENCE: Duration = Duration::from_secs(300);

/// Runs `write` until it succeeds, with backoff from 100 ms to 5 s, for at most
/// [`PATIENCE`]; returns its last error after that.
async fn patiently<T, F, Fut>(destination: &str, what: &str, mut write: F) -> sqlx::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = sqlx::Result<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    let mut wait = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() + wait < deadline => {
                tracing::warn!(
                    destination,
                    error = %e,
                    retry_in_ms = wait.as_millis() as u64,
                    "{what} failed: the database is away, holding the batch and trying again"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The delay code of an accepted event waiting for its verdict (not a retry).
const AWAITING: &str = "awaiting_verdict";

/// Asks the adapter for the verdicts of accepted events, turns them into actions on their
/// slots, and returns what to write on their rows (by slot index).
async fn ask_verdicts<A: Adapter>(
    shared: &Arc<Shared<A>>,
    slots: &mut [Slot],
    to_poll: Vec<(usize, Awaiting)>,
) -> Vec<(usize, Resolution)> {
    if to_poll.is_empty() {
        return Vec::new();
    }
    let s = &shared.settings;
    let (indexes, items): (Vec<usize>, Vec<Awaiting>) = to_poll.into_iter().unzip();
    let polled: Vec<u32> = items.iter().map(|a| a.poll).collect();
    let ids: Vec<String> = items.iter().map(|a| a.event_id.clone()).collect();
    let verdicts = shared.adapter.verdicts(items).await;
    debug_assert_eq!(verdicts.len(), indexes.len());
    let mut out = Vec::new();
    for (((i, poll), event_id), verdict) in indexes.into_iter().zip(polled).zip(ids).zip(verdicts) {
        let slot = &mut slots[i];
        let resolution = |status, failure: Option<&Failure>| Resolution {
            event_id: event_id.clone(),
            status,
            error_code: failure.map(|f| f.code.clone()),
            error_message: failure.map(|f| f.message.clone()),
        };
        let (action, row) = match verdict {
            Verdict::Sent => (
                Action::Ack("success"),
                Some(resolution(DeliveryStatus::Sent, None)),
            ),
            Verdict::Failed(failure) => {
                let row = resolution(DeliveryStatus::DeadLettered, Some(&failure));
                (
                    Action::DeadLetter {
                        failure,
                        attempts: slot.attempts,
                    },
                    Some(row),
                )
            }
            Verdict::Pending if poll >= s.max_polls => {
                let failure = Failure::new(
                    "verdict_timeout",
                    format!("the destination gave no verdict after {poll} status requests"),
                );
                let row = resolution(DeliveryStatus::DeadLettered, Some(&failure));
                (
                    Action::DeadLetter {
                        failure,
                        attempts: slot.attempts,
                    },
                    Some(row),
                )
            }
            Verdict::Pending => (
                Action::Delay {
                    delay: shared.adapter.verdict_delay(poll + 1),
                    attempts: slot.attempts,
                    code: AWAITING.into(),
                    poll: Some(poll + 1),
                },
                None,
            ),
            Verdict::Resend {
                failure,
                retry_after,
            } => {
                let row = resolution(DeliveryStatus::Retrying, Some(&failure));
                (
                    Action::Delay {
                        delay: retry::delay(
                            slot.attempts.max(1),
                            s.retry_base,
                            s.retry_max,
                            retry_after,
                        ),
                        attempts: slot.attempts,
                        code: failure.code,
                        poll: None,
                    },
                    Some(row),
                )
            }
        };
        slot.action = Some(action);
        if let Some(row) = row {
            out.push((i, row));
        }
    }
    out
}

/// Publishes every Delay and DeadLetter slot; returns the indexes whose publish failed.
async fn publish_routed<A: Adapter>(shared: &Arc<Shared<A>>, slots: &[Slot]) -> Vec<usize> {
    let destination = shared.adapter.destination();
    let delay_exchange = shared.names.delay_exchange();
    let dlx = shared.names.dead_letter_exchange();
    let jobs = slots.iter().enumerate().filter_map(|(i, slot)| {
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
                code,
                poll,
            } => {
                set(&mut headers, headers::ATTEMPTS, attempts.to_string());
                match poll {
                    Some(n) => set(&mut headers, headers::POLLS, n.to_string()),
                    None => {
                        let mut kept = FieldTable::default();
                        for (k, v) in headers.inner() {
                            if k.as_str() != headers::POLLS {
                                kept.insert(k.clone(), v.clone());
                            }
                        }
                        headers = kept;
                    }
                }
                if code != AWAITING {
                    shared.metrics.retries.with_label_values(&[code.as_str()]).inc();
                }
                let tier = tier_for(*delay);
                (
                    delay_exchange.clone(),
                    Names::delay_routing_key(tier, destination),
                    Some(delay.as_millis().min(tier.as_millis()) as u64),
                )
            }
            Action::DeadLetter { failure, attempts } => {
                set(&mut headers, headers::ERROR_CODE, failure.code.clone());
                set(&mut headers, headers::ERROR_MESSAGE, failure.message.clone());
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
                    tracing::warn!(error = %e, event_id = %message_id, "could not route; returning it to the queue");
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

/// Acks every decided delivery — with one `multiple` ack when nothing is requeued, since a
/// channel works one batch at a time — and requeues the rest.
async fn acknowledge<A: Adapter>(shared: &Arc<Shared<A>>, slots: &[Slot]) -> anyhow::Result<()> {
    let metrics = &shared.metrics;
    for slot in slots {
        let label = match &slot.action {
            Some(Action::Ack(result)) => *result,
            Some(Action::Delay { code, .. }) if code == "lease_held" => "deferred",
            Some(Action::Delay { code, .. }) if code == AWAITING => "awaiting_verdict",
            Some(Action::Delay { .. }) => "retry",
            Some(Action::DeadLetter { .. }) => "dead_lettered",
            Some(Action::Requeue) | None => "requeued",
        };
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

/// Gives every delivery of the batch back to the queue (infrastructure failure).
async fn requeue_all<A: Adapter>(shared: &Shared<A>, slots: &[Slot]) {
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

/// Probes the destination with backoff while paused, and resumes when it answers.
pub(crate) async fn run_prober<A: Adapter>(shared: Arc<Shared<A>>, shutdown: CancellationToken) {
    let mut paused = shared.paused.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = paused.wait_for(|p| *p) => if r.is_err() { return },
        }
        shared.metrics.ready.set(0);
        let mut wait = Duration::from_millis(500).min(shared.settings.pause_probe_max);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if shared.adapter.probe().await {
                tracing::info!(
                    destination = shared.destination(),
                    "destination accepts requests again: resuming"
                );
                shared.failing_batches.store(0, Ordering::Release);
                shared.metrics.paused.set(0);
                shared.paused.send_replace(false);
                break;
            }
            wait = (wait * 2).min(shared.settings.pause_probe_max);
        }
    }
}
