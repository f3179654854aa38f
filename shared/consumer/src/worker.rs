//! The consume loop and the batch pipeline.
//!
//! Per batch: decode → dedupe → claim in Postgres (leases renewed while the batch is in hand)
//! → adapter `prepare` (a panic dead-letters that event alone) → adapter `send` → outcomes
//! turned into actions (`decide`) → delay/DLQ/hand-back publishes confirmed (held while the
//! broker blocks publishing) → outcomes committed → deliveries acked (one `multiple` ack when
//! the whole batch is done). A delivery is never held while waiting for a retry: it goes to a
//! delay queue and is acked. An outcome the database cannot take is written again until it
//! can (the deliveries stay unacked meanwhile): a sent event is never handed back to be sent
//! twice because Postgres restarted.
//!
//! Around it, `Flow`: a systemic failure pauses every worker (their work handed back to the
//! queue as fresh copies), the prober probes, and a passing probe lets one trial batch go
//! first (half-open) before consumption resumes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use std::panic::AssertUnwindSafe;

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicQosOptions,
};
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
use crate::store::{ClaimRequest, EventKey, Record, Resolution, Store};

/// Whether the workers take deliveries: a circuit breaker around the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Consuming.
    Open,
    /// Paused on a systemic failure: nothing is taken, the prober probes.
    Paused,
    /// The probe passed (half-open): one worker takes one small trial batch; its outcome
    /// resumes consumption or pauses it again with the probe wait doubled.
    Trial,
}

/// Most events in the trial batch taken after a probe passed.
pub(crate) const TRIAL_BATCH: usize = 10;

/// The first wait before probing a paused destination.
const FIRST_PROBE_WAIT: Duration = Duration::from_millis(500);

/// The first probe wait, within `PAUSE_PROBE_MAX_MS`.
pub(crate) fn first_probe_wait(settings: &RuntimeSettings) -> Duration {
    FIRST_PROBE_WAIT.min(settings.pause_probe_max)
}

/// State every worker shares.
pub(crate) struct Shared<A: Adapter> {
    pub(crate) adapter: Arc<A>,
    pub(crate) settings: RuntimeSettings,
    pub(crate) names: Names,
    pub(crate) store: Store,
    pub(crate) publisher: Publisher,
    pub(crate) metrics: Metrics,
    /// Open, paused or half-open.
    pub(crate) flow: watch::Sender<Flow>,
    /// Whether a worker has taken the trial batch of the current half-open state.
    pub(crate) trial_taken: AtomicBool,
    /// Why consumption is paused (for `/readyz`).
    pub(crate) pause_reason: Mutex<Option<Failure>>,
    /// The wait before the next probe: doubles after each failed probe or trial (up to
    /// `PAUSE_PROBE_MAX_MS`), back to [`FIRST_PROBE_WAIT`] once a batch is delivered again.
    pub(crate) probe_wait: Mutex<Duration>,
    /// Workers with an open consumer.
    pub(crate) consuming: AtomicUsize,
    /// Consecutive batches in which every request failed transiently.
    pub(crate) failing_batches: AtomicU32,
}

impl<A: Adapter> Shared<A> {
    fn destination(&self) -> &'static str {
        self.adapter.destination().as_str()
    }

    /// The destination took requests again: the next pause probes after the first wait.
    fn reset_probe_wait(&self) {
        *self.probe_wait.lock().expect("probe wait lock") = first_probe_wait(&self.settings);
    }

    /// The current wait before a probe.
    pub(crate) fn probe_wait(&self) -> Duration {
        *self.probe_wait.lock().expect("probe wait lock")
    }

    /// Doubles the probe wait, up to `PAUSE_PROBE_MAX_MS`.
    fn lengthen_probe_wait(&self) -> Duration {
        let mut wait = self.probe_wait.lock().expect("probe wait lock");
        *wait = (*wait * 2).min(self.settings.pause_probe_max);
        *wait
    }

    /// Why consumption is paused, if it is.
    pub(crate) fn pause_reason(&self) -> Option<Failure> {
        self.pause_reason.lock().expect("pause reason lock").clone()
    }

    /// Pauses consumption (idempotent): the workers hand back what they hold and stop taking
    /// deliveries; the prober probes.
    pub(crate) fn pause(&self, reason: &Failure) {
        *self.pause_reason.lock().expect("pause reason lock") = Some(reason.clone());
        if self.flow.send_replace(Flow::Paused) != Flow::Paused {
            tracing::warn!(
                destination = self.destination(),
                error.code = %reason.code,
                error.message = %reason.message,
                next_probe_ms = self.probe_wait().as_millis() as u64,
                "systemic failure: pausing consumption until the destination accepts requests"
            );
            self.metrics.paused.set(1);
            self.metrics.pauses.inc();
        }
    }

    /// The probe passed: half-open, one trial batch goes first.
    fn start_trial(&self) {
        self.trial_taken.store(false, Ordering::Release);
        // Still "paused" for the gauge (and its alert) until the trial goes through.
        self.flow.send_replace(Flow::Trial);
    }

    /// Consumption resumes in full.
    fn resume(&self) {
        self.failing_batches.store(0, Ordering::Release);
        *self.pause_reason.lock().expect("pause reason lock") = None;
        self.metrics.paused.set(0);
        self.flow.send_replace(Flow::Open);
    }

    /// Whether `/readyz` says ready.
    pub(crate) fn is_ready(&self) -> bool {
        *self.flow.borrow() == Flow::Open
            && self.consuming.load(Ordering::Acquire) > 0
            && self.publisher.is_usable()
    }
}

/// Runs one consumer channel until `shutdown`, reconnecting with backoff.
pub(crate) async fn run_worker<A: Adapter>(
    shared: Arc<Shared<A>>,
    index: usize,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut flow = shared.flow.subscribe();
    while !shutdown.is_cancelled() {
        let now = *flow.borrow_and_update();
        let result = match now {
            Flow::Paused => {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = flow.changed() => continue,
                }
            }
            Flow::Trial => {
                if shared
                    .trial_taken
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    // Another worker runs the trial.
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = flow.changed() => continue,
                    }
                }
                let tried = trial(&shared, index).await;
                if tried.is_err() {
                    // Not decided: the next worker to look takes the trial again.
                    shared.trial_taken.store(false, Ordering::Release);
                }
                tried
            }
            Flow::Open => consume(&shared, index, &shutdown).await,
        };
        match result {
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

/// Runs `process_batch` so that a panic in it ends the session like any failure (the
/// channel closes and the batch returns to the queue) instead of taking the worker down.
async fn guarded_batch<A: Adapter>(
    shared: &Arc<Shared<A>>,
    store: &Store,
    batch: Vec<Delivery>,
    trial: bool,
) -> anyhow::Result<BatchReport> {
    match AssertUnwindSafe(process_batch(shared, store, batch, trial))
        .catch_unwind()
        .await
    {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("the runtime panicked on a batch")),
    }
}

/// The half-open trial: takes at most [`TRIAL_BATCH`] deliveries (`basic.get`, so nothing
/// else is prefetched), processes them as one batch, and resumes consumption or pauses again.
async fn trial<A: Adapter>(shared: &Arc<Shared<A>>, index: usize) -> anyhow::Result<()> {
    let s = &shared.settings;
    let (conn, channel) = open_channel(shared, &format!("{index}-trial")).await?;
    let queue = shared.names.work_queue(shared.adapter.destination());
    let size = TRIAL_BATCH
        .min(s.batch_size)
        .min(shared.adapter.max_batch())
        .max(1);
    let mut batch = Vec::with_capacity(size);
    let got = async {
        while batch.len() < size {
            match channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await?
            {
                Some(m) => batch.push(m.delivery),
                None => break,
            }
        }
        anyhow::Ok(())
    }
    .await;
    let result = match got {
        Err(e) => Err(e),
        Ok(()) if batch.is_empty() => {
            // Nothing waits: consumption resumes, and the first batch to fail systemically
            // pauses it again with the longer wait (it is not reset before a delivery).
            tracing::info!(
                destination = shared.destination(),
                "half-open: no work waiting; resuming"
            );
            shared.resume();
            Ok(())
        }
        Ok(()) => {
            let n = batch.len();
            let store = shared.store.for_worker(index);
            match guarded_batch(shared, &store, batch, true).await {
                Ok(report) => {
                    judge_trial(shared, n, &report);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    };
    let _ = channel.close(200, "trial done".into()).await;
    let _ = conn.close(200, "trial done".into()).await;
    result
}

/// What the trial batch says: resume, pause again (probe wait doubled), or try again.
fn judge_trial<A: Adapter>(shared: &Shared<A>, events: usize, report: &BatchReport) {
    let failed = report.systemic.clone().or_else(|| {
        (report.requests > 0 && report.transient == report.requests).then(|| {
            Failure::new(
                "trial_failed",
                "every request of the trial batch failed transiently",
            )
        })
    });
    if let Some(reason) = failed {
        let wait = shared.lengthen_probe_wait();
        tracing::warn!(
            destination = shared.destination(),
            error.code = %reason.code,
            next_probe_ms = wait.as_millis() as u64,
            "half-open: the trial batch failed; pausing again"
        );
        shared.pause(&reason);
    } else if report.requests == 0 {
        // Nothing was asked of the destination (duplicates, unmapped…): try again.
        shared.trial_taken.store(false, Ordering::Release);
    } else {
        tracing::info!(
            destination = shared.destination(),
            events,
            "half-open: the trial batch went through; resuming"
        );
        shared.reset_probe_wait();
        shared.resume();
    }
}

/// After a batch while consuming: "every request failing" is systemic too once it lasts, and
/// a systemic failure pauses.
fn judge_batch<A: Adapter>(shared: &Shared<A>, report: BatchReport) {
    let mut systemic = report.systemic;
    if report.requests > 0 && report.transient == report.requests {
        let n = shared.failing_batches.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= shared.settings.pause_after_failed_batches {
            systemic.get_or_insert(Failure::new(
                "all_requests_failing",
                format!("every request of the last {n} batches failed"),
            ));
        }
    } else if report.requests > report.transient && systemic.is_none() {
        shared.failing_batches.store(0, Ordering::Release);
        shared.reset_probe_wait();
    }
    if let Some(reason) = systemic {
        shared.pause(&reason);
    }
}

/// One consumer session: returns `Ok` on shutdown or pause, `Err` on a broker or database
/// failure. On a pause, the deliveries prefetched and not yet taken are handed back to the
/// queue as fresh copies (spending none of their delivery attempts); closing the channel
/// returns anything else unacked.
async fn consume<A: Adapter>(
    shared: &Arc<Shared<A>>,
    index: usize,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let s = &shared.settings;
    let (conn, channel) = open_channel(shared, &index.to_string()).await?;
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
    let mut flow = shared.flow.subscribe();
    let batch_size = s.batch_size.min(shared.adapter.max_batch()).max(1);
    let result = loop {
        // While the broker blocks publishing (a memory or disk alarm) or the publisher is
        // away, retries, verdict waits and dead letters could not be routed: take nothing.
        let usable = shared.publisher.is_usable();
        // Biased: a pause or shutdown wins over a waiting delivery, so nothing new is taken
        // once either is decided.
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            _ = until_not_open(&mut flow) => {
                hand_back_prefetched(shared, &channel, &tag, &mut consumer).await;
                break Ok(());
            }
            _ = shared.publisher.wait_usable(Duration::from_secs(3600)), if !usable => continue,
            d = consumer.next(), if usable => d,
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
        match guarded_batch(shared, &store, batch, false).await {
            Ok(report) => judge_batch(shared, report),
            Err(e) => break Err(e),
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

/// A connection of its own (named `<destination>-sender-<name>` in the broker's list) and a
/// channel on it.
async fn open_channel<A: Adapter>(
    shared: &Shared<A>,
    name: &str,
) -> anyhow::Result<(lapin::Connection, lapin::Channel)> {
    let conn = leadpipe_bus::connect(
        &shared.settings.amqp.url,
        &format!("{}-sender-{name}", shared.destination()),
    )
    .await?;
    let channel = conn.create_channel().await?;
    Ok((conn, channel))
}

/// Resolves once the flow is no longer [`Flow::Open`] (or its sender is gone).
async fn until_not_open(flow: &mut watch::Receiver<Flow>) {
    let _ = flow.wait_for(|f| *f != Flow::Open).await;
}

/// Cancels the consumer and hands every delivery it had prefetched back to the queue.
async fn hand_back_prefetched<A: Adapter>(
    shared: &Arc<Shared<A>>,
    channel: &lapin::Channel,
    tag: &str,
    consumer: &mut lapin::Consumer,
) {
    if channel
        .basic_cancel(tag.into(), BasicCancelOptions::default())
        .await
        .is_err()
    {
        return;
    }
    // The cancel ends the stream after the deliveries already received.
    let mut held = Vec::new();
    while let Ok(Some(Ok(d))) =
        tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
    {
        held.push(d);
    }
    if held.is_empty() {
        return;
    }
    let n = held.len();
    let mut slots: Vec<Slot> = held
        .into_iter()
        .map(|delivery| Slot {
            attempts: 0,
            polls: 0,
            envelope: None,
            key: None,
            action: Some(Action::HandBack),
            delivery,
        })
        .collect();
    let failed = publish_routed(shared, &slots, None).await;
    for i in &failed {
        slots[*i].action = Some(Action::Requeue);
    }
    // A channel that fails here closes, which returns whatever was not acked.
    let _ = acknowledge(shared, &slots).await;
    tracing::info!(
        destination = shared.destination(),
        handed_back = n - failed.len(),
        requeued = failed.len(),
        "paused: prefetched deliveries handed back to the queue"
    );
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
    /// Paused work: publish a copy to the work queue, then ack, so that handing it back spends
    /// none of the work queue's delivery limit (a nack would).
    HandBack,
    /// Give it back to the queue with a nack (a publish that could not be made).
    Requeue,
}

impl Action {
    /// The `result` label of `leadpipe_deliveries_total`.
    fn label(action: Option<&Action>) -> &'static str {
        match action {
            Some(Action::Ack(result)) => result,
            Some(Action::Delay { code, .. }) if code == LEASE_HELD => "deferred",
            Some(Action::Delay { code, .. }) if code == AWAITING => "awaiting_verdict",
            Some(Action::Delay { .. }) => "retry",
            Some(Action::DeadLetter { .. }) => "dead_lettered",
            Some(Action::HandBack) => "handed_back",
            Some(Action::Requeue) | None => "requeued",
        }
    }
}

/// The delay code of a copy whose event another worker holds.
const LEASE_HELD: &str = "lease_held";

struct Slot {
    delivery: Delivery,
    attempts: u32,
    /// `x-leadpipe-polls`: > 0 when the message came back for a verdict.
    polls: u32,
    envelope: Option<Envelope>,
    /// The delivery-log key of a decoded event.
    key: Option<EventKey>,
    action: Option<Action>,
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
    trial: bool,
) -> anyhow::Result<BatchReport> {
    let now = Utc::now();
    let batch_started = SystemTime::now();
    let mut slots: Vec<Slot> = batch.into_iter().map(decode).collect();

    // Lag, and duplicates within the batch.
    let mut first_of: HashMap<EventKey, usize> = HashMap::new();
    let mut claims = Vec::new();
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
            slot.action = Some(Action::Ack("duplicate"));
            continue;
        }
        first_of.insert(key.clone(), i);
        claims.push(ClaimRequest {
            event_id: key.event_id.clone(),
            event_name: key.event_name.clone(),
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
    // The leases are renewed for as long as the batch is in hand, so that a slow destination
    // never lets another worker take over (and send again) an event still being sent.
    let _renewal = LeaseRenewal::start(
        shared.destination(),
        store.clone(),
        claim.claimed.iter().cloned().collect(),
    );

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
            slot.action = Some(Action::Ack("duplicate"));
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
                slot.action = Some(Action::Ack("duplicate"));
            }
        } else if let Some(left) = claim.busy.get(key) {
            // Another live worker holds it: look again once its lease has run out.
            slot.action = Some(Action::Delay {
                delay: *left,
                attempts: slot.attempts,
                code: LEASE_HELD.into(),
                poll: (slot.polls > 0).then_some(slot.polls),
            });
        } else if claim.claimed.contains(key) {
            let env = slot.envelope.as_ref().expect("claimed slots decoded");
            // A panic preparing one event dead-letters that event alone.
            let prepared =
                std::panic::catch_unwind(AssertUnwindSafe(|| shared.adapter.prepare(env)))
                    .unwrap_or_else(|_| {
                        tracing::error!(
                            destination = shared.destination(),
                            event_id = %key.event_id,
                            "the destination adapter panicked preparing the event"
                        );
                        Prepared::Done(Outcome::Permanent(Failure::new(
                            "adapter_panic",
                            "the destination adapter panicked preparing this event",
                        )))
                    });
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
                code: LEASE_HELD.into(),
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
        // A panicking send: whether the request left is unknown, so its events are retried
        // (with their ids, which the destination dedupes) rather than the whole batch
        // redelivered with the outcomes of the other requests lost.
        let results = AssertUnwindSafe(shared.adapter.send(items))
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
        let (action, record) = decide(&shared.settings, &*shared.adapter, slot, key, outcome);
        report.requests += record.tried as usize;
        slot.action = Some(action);
        records.push(record);
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
            shared.metrics.in_flight.sub(claim.claimed.len() as i64);
            return Err(anyhow::Error::new(e).context("recording outcomes failed"));
        }
    };
    shared.metrics.in_flight.sub(claim.claimed.len() as i64);
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

/// Reads one delivery's headers and body.
fn decode(delivery: Delivery) -> Slot {
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
        key: envelope
            .as_ref()
            .map(|e| EventKey::new(e.event_id.clone(), e.event.name())),
        delivery,
        attempts,
        polls,
        envelope,
        action,
    }
}

/// One outcome → what happens to the delivery and what the delivery log records.
fn decide<A: Adapter>(
    s: &RuntimeSettings,
    adapter: &A,
    slot: &Slot,
    key: EventKey,
    outcome: Outcome,
) -> (Action, Record) {
    let tried = i32::from(outcome.made_request());
    let mut record = Record {
        key,
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
                delay: adapter.verdict_delay(1),
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
            // Released, not decided; the delivery goes back to the queue unspent.
            record.http_status = failure.http_status;
            record.error_code = Some(failure.code.clone());
            record.error_message = Some(failure.message.clone());
            Action::HandBack
        }
    };
    (action, record)
}

/// Renews a batch's leases every third of `LEASE_SECS` until dropped.
struct LeaseRenewal(Option<tokio::task::JoinHandle<()>>);

impl LeaseRenewal {
    fn start(destination: &'static str, store: Store, mut keys: Vec<EventKey>) -> Self {
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

/// How long a batch's outcome is written (or its retries routed) again while the database or
/// the broker is away, before its deliveries go back to the queue (well inside RabbitMQ's
/// 30-minute delivery timeout).
const PATIENCE: Duration = Duration::from_secs(300);

/// What [`patiently`] says is away when a database write fails.
const DB_AWAY: &str = "the database is away";

/// Runs `write` until it succeeds, with backoff from 100 ms to 5 s, for at most
/// [`PATIENCE`], holding the batch; returns its last error after that. `cause` says in the
/// warning what is away.
async fn patiently<T, E, F, Fut>(
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
    let mut wait = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() + wait < deadline => {
                tracing::warn!(
                    destination,
                    error = %e,
                    retry_in_ms = wait.as_millis() as u64,
                    "{what} failed ({cause}): holding the batch and trying again"
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
    let keys: Vec<EventKey> = indexes
        .iter()
        .map(|i| slots[*i].key.clone().expect("awaiting slots decoded"))
        .collect();
    let verdicts = shared.adapter.verdicts(items).await;
    debug_assert_eq!(verdicts.len(), indexes.len());
    let mut out = Vec::new();
    for (((i, poll), key), verdict) in indexes.into_iter().zip(polled).zip(keys).zip(verdicts) {
        let slot = &mut slots[i];
        let resolution = |status, failure: Option<&Failure>| Resolution {
            key: key.clone(),
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

/// Publishes every routed slot ([`publish_routed`]); what fails is published again
/// [`patiently`] once the publisher can be used (the broker unblocked, or reconnected) — the
/// deliveries stay unacked meanwhile. Returns what still failed then.
async fn publish_patiently<A: Adapter>(shared: &Arc<Shared<A>>, slots: &[Slot]) -> Vec<usize> {
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
async fn publish_routed<A: Adapter>(
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
                code,
                poll,
            } => {
                set(&mut headers, headers::ATTEMPTS, attempts.to_string());
                match poll {
                    Some(n) => set(&mut headers, headers::POLLS, n.to_string()),
                    None => headers = headers::without(&headers, headers::POLLS),
                }
                if code != AWAITING {
                    shared
                        .metrics
                        .retries
                        .with_label_values(&[code.as_str()])
                        .inc();
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

/// Acks every decided delivery — with one `multiple` ack when nothing is requeued, since a
/// channel works one batch at a time — and requeues the rest.
async fn acknowledge<A: Adapter>(shared: &Arc<Shared<A>>, slots: &[Slot]) -> anyhow::Result<()> {
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

/// Probes the destination with backoff while paused; when a probe passes, the sender goes
/// half-open (one trial batch first, [`Flow::Trial`]). The wait doubles after every failed
/// probe or trial, up to `PAUSE_PROBE_MAX_MS`, and starts again only once a batch goes through.
pub(crate) async fn run_prober<A: Adapter>(shared: Arc<Shared<A>>, shutdown: CancellationToken) {
    let mut flow = shared.flow.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = flow.wait_for(|f| *f == Flow::Paused) => if r.is_err() { return },
        }
        shared.metrics.ready.set(0);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(shared.probe_wait()) => {}
            }
            if shared.adapter.probe().await {
                tracing::info!(
                    destination = shared.destination(),
                    "the probe passed: half-open, a trial batch goes first"
                );
                shared.start_trial();
                break;
            }
            shared.lengthen_probe_wait();
        }
    }
}
