//! One consumer session per channel, and reconnecting: consume in batches while open, take
//! the trial batch while half-open, wait while paused; a broker or database failure ends the
//! session and the worker connects again with backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::adapter::Adapter;
use crate::outcome::Failure;
use crate::store::Store;

use super::ack::acknowledge;
use super::batch::{BatchReport, Slot, process_batch};
use super::decide::Action;
use super::route::publish_routed;
use super::state::{Flow, Shared, TRIAL_BATCH};

/// Runs one consumer channel until `shutdown`, reconnecting with backoff.
pub(crate) async fn run_worker<A: Adapter>(
    shared: Arc<Shared<A>>,
    index: usize,
    shutdown: CancellationToken,
) {
    let mut backoff = super::patient_backoff();
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
            Ok(()) => backoff = super::patient_backoff(),
            Err(e) => {
                let wait = backoff.next_wait();
                tracing::warn!(
                    destination = shared.destination(),
                    worker = index,
                    error = %format!("{e:#}"),
                    retry_in_ms = wait.as_millis() as u64,
                    "consumer stopped; reconnecting"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Runs `process_batch` so that a panic in it ends the session like any failure (the
/// channel closes and the batch returns to the queue) instead of taking the worker down.
pub(super) async fn guarded_batch<A: Adapter>(
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
pub(super) async fn trial<A: Adapter>(shared: &Arc<Shared<A>>, index: usize) -> anyhow::Result<()> {
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
pub(super) fn judge_trial<A: Adapter>(shared: &Shared<A>, events: usize, report: &BatchReport) {
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
pub(super) fn judge_batch<A: Adapter>(shared: &Shared<A>, report: BatchReport) {
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
pub(super) async fn consume<A: Adapter>(
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
pub(super) async fn open_channel<A: Adapter>(
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
pub(super) async fn until_not_open(flow: &mut watch::Receiver<Flow>) {
    let _ = flow.wait_for(|f| *f != Flow::Open).await;
}

/// Cancels the consumer and hands every delivery it had prefetched back to the queue.
pub(super) async fn hand_back_prefetched<A: Adapter>(
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
