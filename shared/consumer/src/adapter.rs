//! The destination adapter: payload mapping, batching rule and error classification, and
//! nothing else. Everything else (acks, idempotency, retries, dead letters, pausing, metrics)
//! is the runtime's.

use std::future::Future;
use std::time::Duration;

use leadpipe_bus::Destination;
use leadpipe_events::Envelope;

use crate::outcome::{Failure, Outcome, Prepared};

/// One event handed to [`Adapter::send`], with what the adapter prepared for it.
#[derive(Debug)]
pub struct Item<T> {
    /// The event's id (the destination's dedupe key).
    pub event_id: String,
    /// What [`Adapter::prepare`] built.
    pub prepared: T,
    /// The `traceparent` for the destination call: the event's trace (from its message) under
    /// the id of the call's own span, the child of this sender's consume span (both exported
    /// when OTLP export is on). A request carrying several events carries its first event's.
    pub traceparent: Option<String>,
}

/// An event the destination accepted earlier (`Outcome::Accepted`) and has not given its
/// verdict on; handed to [`Adapter::verdicts`] each time its message comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Awaiting {
    /// The event's id.
    pub event_id: String,
    /// What the adapter recorded with `Outcome::Accepted` (e.g. `<request id>#<index>`).
    pub reference: Option<String>,
    /// Which verdict request this is for the event (1 for the first).
    pub poll: u32,
}

/// The destination's verdict on an accepted event.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Recorded by the destination: `sent`.
    Sent,
    /// Refused after all: dead-letter it with the reason.
    Failed(Failure),
    /// Not decided yet, or the status could not be read: ask again later.
    Pending,
    /// Refused for now and to be sent again (e.g. a click too recent): retried like a
    /// transient failure, with the same event id.
    Resend {
        /// Why.
        failure: Failure,
        /// Not before this.
        retry_after: Option<Duration>,
    },
}

/// A destination.
pub trait Adapter: Send + Sync + 'static {
    /// What [`Adapter::prepare`] builds per event.
    type Prepared: Send + Sync + 'static;

    /// Which destination this is (queue, metrics label, delivery log).
    fn destination(&self) -> Destination;

    /// Most events in one request.
    fn max_batch(&self) -> usize;

    /// Maps one event: consent, mapping, age and local validation decide here, without I/O.
    fn prepare(&self, envelope: &Envelope) -> Prepared<Self::Prepared>;

    /// Sends `items` (at most [`Adapter::max_batch`]; the adapter may split them further, e.g.
    /// per client id) and returns one outcome per item, in order.
    fn send(&self, items: Vec<Item<Self::Prepared>>) -> impl Future<Output = Vec<Outcome>> + Send;

    /// After a systemic failure: whether the destination accepts requests again (e.g. the
    /// token works). Called with backoff while consumption is paused.
    fn probe(&self) -> impl Future<Output = bool> + Send;

    /// Verdicts on events this destination accepted (`Outcome::Accepted`), one per item, in
    /// order. Only destinations that answer `Accepted` need it; the message of an accepted
    /// event waits in the delay queues and comes back for each poll, so nothing but the broker
    /// holds it meanwhile.
    fn verdicts(&self, items: Vec<Awaiting>) -> impl Future<Output = Vec<Verdict>> + Send {
        async move { items.iter().map(|_| Verdict::Pending).collect() }
    }

    /// How long to wait before asking for an accepted event's verdict the `poll`-th time.
    fn verdict_delay(&self, poll: u32) -> Duration {
        Duration::from_secs(60).saturating_mul(poll.min(60))
    }
}
