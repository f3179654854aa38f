//! The consume loop and the batch pipeline, in modules by what they decide:
//!
//! - [`state`]: the flow (open, paused, half-open) every worker shares;
//! - [`session`]: one consumer session per channel, and reconnecting;
//! - [`batch`]: the batch pipeline;
//! - [`decide`]: outcome → action + delivery-log record, verdict → action (no I/O);
//! - [`route`]: delay queues, the DLQ, hand-backs and requeues;
//! - [`ack`]: acks and their metrics;
//! - [`prober`]: probing a paused destination.
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

mod ack;
mod batch;
mod decide;
mod prober;
mod route;
mod session;
mod state;

pub(crate) use prober::run_prober;

/// The backoff of a consumer session's reconnects and of a write or publish held while the
/// database or the broker is away: 100 ms, doubling up to 5 s.
fn patient_backoff() -> leadpipe_bus::backoff::Doubling {
    leadpipe_bus::backoff::doubling(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(5),
    )
}

pub(crate) use session::run_worker;
pub(crate) use state::{Flow, ProbeWait, Shared};
