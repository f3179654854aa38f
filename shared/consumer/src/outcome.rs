//! What a destination adapter reports per event, and what the runtime does with it.

use std::time::Duration;

/// Why a delivery failed, without PII: safe for logs, headers and the delivery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Machine-readable code (`http_500`, `meta_100`, `timeout`, `invalid_event`, …).
    pub code: String,
    /// Human-readable reason.
    pub message: String,
    /// The destination's HTTP status, when there was a response.
    pub http_status: Option<u16>,
}

impl Failure {
    /// A failure with `code`, `message` and no HTTP status.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            http_status: None,
        }
    }

    /// The same failure with an HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.http_status = Some(status);
        self
    }
}

/// The result of one event at one destination. The runtime alone turns it into ack, delay
/// queue or dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Delivered; the destination's reference (e.g. `fbtrace_id`).
    Sent {
        /// Destination reference for the delivery log.
        reference: Option<String>,
        /// HTTP status of the response.
        http_status: Option<u16>,
    },
    /// Taken by a destination that reports each event's outcome later (Google's Data Manager
    /// API): recorded `accepted` with the request's reference; a poller later calls
    /// [`crate::store::Store::resolve`].
    Accepted {
        /// The destination's request id, for the poller.
        reference: Option<String>,
    },
    /// `DRY_RUN`: the exact request was built and recorded, nothing sent. The payload must hold
    /// hashed identifiers only.
    DryRun {
        /// What would have been sent (redacted of anything not hashed).
        payload: serde_json::Value,
    },
    /// Transient: try again later (timeouts, connection errors, 429, 5xx, throttling).
    Retry {
        /// What went wrong.
        failure: Failure,
        /// The destination's `Retry-After`, honoured within the configured bounds.
        retry_after: Option<Duration>,
    },
    /// This event will never be accepted as it is: dead-letter it now.
    Permanent(Failure),
    /// The destination refuses everything (bad token, permissions): pause, nothing is
    /// dead-lettered.
    Systemic(Failure),
    /// Not sent: ad consent denied or unknown.
    BlockedConsent,
    /// Not sent: the mapping config sends nothing to this destination for this event.
    Unmapped,
    /// Not sent: older than the destination accepts.
    Expired,
}

impl Outcome {
    /// Whether a request to the destination was made for it (counted as an attempt).
    pub fn made_request(&self) -> bool {
        match self {
            Self::Sent { .. } | Self::Accepted { .. } | Self::Retry { .. } | Self::Systemic(_) => {
                true
            }
            Self::Permanent(f) => f.http_status.is_some(),
            _ => false,
        }
    }
}

/// Puts outcomes reported by batch position (`(index, outcome)`, from requests an adapter
/// split the batch into) back in batch order; an event no request reported on is retried,
/// never dropped.
pub fn in_batch_order(
    n: usize,
    reported: impl IntoIterator<Item = (usize, Outcome)>,
) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    for (i, outcome) in reported {
        if let Some(slot) = outcomes.get_mut(i) {
            *slot = Some(outcome);
        }
    }
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| Outcome::Retry {
                failure: Failure::new("internal", "no outcome was recorded for the event"),
                retry_after: None,
            })
        })
        .collect()
}

/// What an adapter says of one event before any request: send it (as `T`), or it is decided.
#[derive(Debug)]
pub enum Prepared<T> {
    /// Build into the next request.
    Send(T),
    /// Decided without a request (consent, unmapped, expired, invalid).
    Done(Outcome),
}

impl<T> Prepared<T> {
    /// What a destination's payload builder decided: its payload to send, or the outcome of
    /// the reason it sends nothing.
    pub fn from_build(built: Result<T, Skip>) -> Self {
        match built {
            Ok(payload) => Self::Send(payload),
            Err(Skip::Consent) => Self::Done(Outcome::BlockedConsent),
            Err(Skip::Unmapped) => Self::Done(Outcome::Unmapped),
            Err(Skip::Expired) => Self::Done(Outcome::Expired),
            Err(Skip::Invalid(code, reason)) => {
                Self::Done(Outcome::Permanent(Failure::new(code, reason)))
            }
        }
    }
}

/// Why a destination sends nothing for an event, decided before any request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The consent the destination needs is denied (or unknown under the strict policy).
    Consent,
    /// No mapping section for the event name at this destination.
    Unmapped,
    /// Older than the destination accepts (or can dedupe).
    Expired,
    /// The destination would refuse it: a code and the reason, without PII.
    Invalid(&'static str, String),
}

impl Skip {
    /// [`Skip::Invalid`] with the code `invalid_event`.
    pub fn invalid(reason: String) -> Self {
        Self::Invalid("invalid_event", reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_becomes_the_outcome_of_its_reason() {
        let done = |skip: Skip| match Prepared::<()>::from_build(Err(skip)) {
            Prepared::Done(outcome) => outcome,
            Prepared::Send(()) => panic!("a skip is never sent"),
        };
        assert_eq!(done(Skip::Consent), Outcome::BlockedConsent);
        assert_eq!(done(Skip::Unmapped), Outcome::Unmapped);
        assert_eq!(done(Skip::Expired), Outcome::Expired);
        assert_eq!(
            done(Skip::invalid("Purchase needs value".into())),
            Outcome::Permanent(Failure::new("invalid_event", "Purchase needs value"))
        );
        assert_eq!(
            done(Skip::Invalid("no_identifiers", "nothing to match".into())),
            Outcome::Permanent(Failure::new("no_identifiers", "nothing to match"))
        );
        assert!(matches!(Prepared::from_build(Ok(7)), Prepared::Send(7)));
    }
}
