//! What every worker of a sender shares: the flow (a circuit breaker around the destination:
//! open, paused, half-open), why it is paused, and the wait before the next probe.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use leadpipe_bus::Publisher;
use leadpipe_bus::names::Names;

use crate::adapter::Adapter;
use crate::cfg::RuntimeSettings;
use crate::metrics::Metrics;
use crate::outcome::Failure;
use crate::store::Store;

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
pub(super) const FIRST_PROBE_WAIT: Duration = Duration::from_millis(500);

/// The wait before the next probe of a paused destination: [`FIRST_PROBE_WAIT`] (within
/// `PAUSE_PROBE_MAX_MS`), doubling after each failed probe or trial up to `PAUSE_PROBE_MAX_MS`.
#[derive(Debug)]
pub(crate) struct ProbeWait {
    now: Duration,
    later: leadpipe_bus::backoff::Doubling,
}

impl ProbeWait {
    /// The first wait, for `settings`.
    pub(crate) fn first(settings: &RuntimeSettings) -> Self {
        let mut later = leadpipe_bus::backoff::doubling(
            FIRST_PROBE_WAIT.min(settings.pause_probe_max),
            settings.pause_probe_max,
        );
        Self {
            now: later.next_wait(),
            later,
        }
    }

    /// The next, longer wait.
    fn lengthen(&mut self) -> Duration {
        self.now = self.later.next_wait();
        self.now
    }
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
    pub(crate) probe_wait: Mutex<ProbeWait>,
    /// Workers with an open consumer.
    pub(crate) consuming: AtomicUsize,
    /// Consecutive batches in which every request failed transiently.
    pub(crate) failing_batches: AtomicU32,
}

impl<A: Adapter> Shared<A> {
    pub(super) fn destination(&self) -> &'static str {
        self.adapter.destination().as_str()
    }

    /// The destination took requests again: the next pause probes after the first wait.
    pub(super) fn reset_probe_wait(&self) {
        *self.probe_wait.lock().expect("probe wait lock") = ProbeWait::first(&self.settings);
    }

    /// The current wait before a probe.
    pub(crate) fn probe_wait(&self) -> Duration {
        self.probe_wait.lock().expect("probe wait lock").now
    }

    /// Doubles the probe wait, up to `PAUSE_PROBE_MAX_MS`.
    pub(super) fn lengthen_probe_wait(&self) -> Duration {
        self.probe_wait.lock().expect("probe wait lock").lengthen()
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
    pub(super) fn start_trial(&self) {
        self.trial_taken.store(false, Ordering::Release);
        // Still "paused" for the gauge (and its alert) until the trial goes through.
        self.flow.send_replace(Flow::Trial);
    }

    /// Consumption resumes in full.
    pub(super) fn resume(&self) {
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
