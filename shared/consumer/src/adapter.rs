//! The destination adapter: payload mapping, batching rule and error classification, and
//! nothing else. Everything else (acks, idempotency, retries, dead letters, pausing, metrics)
//! is the runtime's.

use std::future::Future;

use leadpipe_bus::Destination;
use leadpipe_events::Envelope;

use crate::outcome::{Outcome, Prepared};

/// One event handed to [`Adapter::send`], with what the adapter prepared for it.
#[derive(Debug)]
pub struct Item<T> {
    /// The event's id (the destination's dedupe key).
    pub event_id: String,
    /// What [`Adapter::prepare`] built.
    pub prepared: T,
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
}
