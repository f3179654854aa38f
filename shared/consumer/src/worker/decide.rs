//! What happens to a delivery, decided without I/O: an adapter's outcome becomes an action
//! and a delivery-log record ([`on_outcome`]); a destination's verdict on an accepted event
//! becomes an action and, when it settles the event, the status to write ([`on_verdict`]).

use std::time::Duration;

use leadpipe_db::DeliveryStatus;

use crate::adapter::Verdict;
use crate::cfg::RuntimeSettings;
use crate::outcome::{Failure, Outcome};
use crate::retry;
use crate::store::{EventKey, Record};

/// Why a delivery is acked with nothing more to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Done {
    /// Delivered (or its verdict said so).
    Success,
    /// `DRY_RUN`: built and recorded, not sent.
    DryRun,
    /// Consent refused it.
    BlockedConsent,
    /// No mapping for it at this destination.
    SkippedUnmapped,
    /// Older than the destination accepts.
    Expired,
    /// A copy of an event already decided, or of one the destination already has.
    Duplicate,
}

impl Done {
    /// The `result` label of `leadpipe_deliveries_total`.
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::DryRun => "dry_run",
            Self::BlockedConsent => "blocked_consent",
            Self::SkippedUnmapped => "skipped_unmapped",
            Self::Expired => "expired",
            Self::Duplicate => "duplicate",
        }
    }
}

/// Why a delivery goes to a delay queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Wait {
    /// Another live worker holds the event's lease: look again once it has run out.
    LeaseHeld,
    /// An accepted event waits for the destination's verdict (not a retry).
    Verdict,
    /// A retry after a transient failure with this error code.
    Retry(String),
}

impl Wait {
    /// The `code` label of `leadpipe_retries_total`, when the wait counts as a retry.
    pub(super) fn retry_code(&self) -> Option<&str> {
        match self {
            Self::LeaseHeld => Some("lease_held"),
            Self::Verdict => None,
            Self::Retry(code) => Some(code),
        }
    }
}

/// What happens to one delivery.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Action {
    /// Done: ack.
    Ack(Done),
    /// Later: publish to the delay queue with `attempts`, then ack. `poll`: the message comes
    /// back to ask for an accepted event's verdict (header `x-leadpipe-polls`); `None` removes
    /// that header (the event is to be sent again).
    Delay {
        delay: Duration,
        attempts: u32,
        wait: Wait,
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
    pub(super) fn label(action: Option<&Action>) -> &'static str {
        match action {
            Some(Action::Ack(done)) => done.label(),
            Some(Action::Delay {
                wait: Wait::LeaseHeld,
                ..
            }) => "deferred",
            Some(Action::Delay {
                wait: Wait::Verdict,
                ..
            }) => "awaiting_verdict",
            Some(Action::Delay { .. }) => "retry",
            Some(Action::DeadLetter { .. }) => "dead_lettered",
            Some(Action::HandBack) => "handed_back",
            Some(Action::Requeue) | None => "requeued",
        }
    }
}

/// The final status of an outcome that needs neither a request nor a route (unmapped,
/// consent blocked, expired), if it is one: the claim writes it at once, and
/// [`on_outcome`] gives such an outcome the same status with a plain ack.
pub(super) fn settled_without_request(outcome: &Outcome) -> Option<DeliveryStatus> {
    match outcome {
        Outcome::Unmapped => Some(DeliveryStatus::SkippedUnmapped),
        Outcome::BlockedConsent => Some(DeliveryStatus::BlockedConsent),
        Outcome::Expired => Some(DeliveryStatus::Expired),
        _ => None,
    }
}

/// One outcome of a delivery that came with `attempts` (`x-leadpipe-attempts`) → what happens
/// to it and what the delivery log records. `first_verdict_delay`: the adapter's wait before
/// the first question about an accepted event.
pub(super) fn on_outcome(
    s: &RuntimeSettings,
    attempts: u32,
    first_verdict_delay: Duration,
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
    let failed = |record: &mut Record, failure: &Failure| {
        record.http_status = failure.http_status;
        record.error_code = Some(failure.code.clone());
        record.error_message = Some(failure.message.clone());
    };
    let done = |record: &mut Record, status, done| {
        record.status = Some(status);
        Action::Ack(done)
    };
    let action = match outcome {
        Outcome::Sent {
            reference,
            http_status,
        } => {
            record.reference = reference;
            record.http_status = http_status;
            done(&mut record, DeliveryStatus::Sent, Done::Success)
        }
        Outcome::Accepted { reference } => {
            // The message waits in the delay queues and comes back for the verdict.
            record.status = Some(DeliveryStatus::Accepted);
            record.reference = reference;
            Action::Delay {
                delay: first_verdict_delay,
                attempts: attempts + 1,
                wait: Wait::Verdict,
                poll: Some(1),
            }
        }
        Outcome::DryRun { payload } => {
            record.payload = Some(payload);
            done(&mut record, DeliveryStatus::DryRun, Done::DryRun)
        }
        Outcome::BlockedConsent => done(
            &mut record,
            DeliveryStatus::BlockedConsent,
            Done::BlockedConsent,
        ),
        Outcome::Unmapped => done(
            &mut record,
            DeliveryStatus::SkippedUnmapped,
            Done::SkippedUnmapped,
        ),
        Outcome::Expired => done(&mut record, DeliveryStatus::Expired, Done::Expired),
        Outcome::Retry {
            failure,
            retry_after,
        } => {
            let attempts = attempts + 1;
            failed(&mut record, &failure);
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
                    wait: Wait::Retry(failure.code),
                    poll: None,
                }
            }
        }
        Outcome::Permanent(failure) => {
            record.status = Some(DeliveryStatus::DeadLettered);
            failed(&mut record, &failure);
            Action::DeadLetter {
                attempts: attempts + tried as u32,
                failure,
            }
        }
        Outcome::Systemic(failure) => {
            // Released, not decided; the delivery goes back to the queue unspent.
            failed(&mut record, &failure);
            Action::HandBack
        }
    };
    (action, record)
}

/// What a verdict settles on an accepted event's row: its new status and why.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Settled {
    /// The row's new status.
    pub(super) status: DeliveryStatus,
    /// The failure it records, if any.
    pub(super) failure: Option<Failure>,
}

/// The verdict on an accepted event whose delivery came with `attempts`, asked for the
/// `poll`-th time → what happens to the delivery, and what its row records when the verdict
/// settles it (`None`: ask again later, the row stays `accepted`). `next_verdict_delay`: the
/// adapter's wait before poll `poll + 1`.
pub(super) fn on_verdict(
    s: &RuntimeSettings,
    attempts: u32,
    poll: u32,
    next_verdict_delay: Duration,
    verdict: Verdict,
) -> (Action, Option<Settled>) {
    let settled = |status, failure: Option<&Failure>| {
        Some(Settled {
            status,
            failure: failure.cloned(),
        })
    };
    match verdict {
        Verdict::Sent => (
            Action::Ack(Done::Success),
            settled(DeliveryStatus::Sent, None),
        ),
        Verdict::Failed(failure) => {
            let row = settled(DeliveryStatus::DeadLettered, Some(&failure));
            (Action::DeadLetter { failure, attempts }, row)
        }
        Verdict::Pending if poll >= s.max_polls => {
            let failure = Failure::new(
                "verdict_timeout",
                format!("the destination gave no verdict after {poll} status requests"),
            );
            let row = settled(DeliveryStatus::DeadLettered, Some(&failure));
            (Action::DeadLetter { failure, attempts }, row)
        }
        Verdict::Pending => (
            Action::Delay {
                delay: next_verdict_delay,
                attempts,
                wait: Wait::Verdict,
                poll: Some(poll + 1),
            },
            None,
        ),
        Verdict::Resend {
            failure,
            retry_after,
        } => {
            let row = settled(DeliveryStatus::Retrying, Some(&failure));
            (
                Action::Delay {
                    delay: retry::delay(attempts.max(1), s.retry_base, s.retry_max, retry_after),
                    attempts,
                    wait: Wait::Retry(failure.code),
                    poll: None,
                },
                row,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use leadpipe_config::{AmqpSettings, DatabaseSettings};

    use super::*;

    /// Three attempts, three polls, retries between 1 s and 10 s.
    fn settings() -> RuntimeSettings {
        let mut s = RuntimeSettings::defaults(
            AmqpSettings {
                url: String::new(),
                namespace: "t".into(),
                quorum_group_size: 1,
            },
            DatabaseSettings { url: String::new() },
            0,
        );
        s.max_attempts = 3;
        s.max_polls = 3;
        s.retry_base = Duration::from_secs(1);
        s.retry_max = Duration::from_secs(10);
        s
    }

    fn key() -> EventKey {
        EventKey::new("E1", "lead", chrono::DateTime::UNIX_EPOCH)
    }

    fn failure() -> Failure {
        Failure::new("http_503", "server error").with_status(503)
    }

    const VERDICT_WAIT: Duration = Duration::from_secs(60);

    /// What a test row expects of an action, without the random part of a retry's delay.
    #[derive(Debug, PartialEq)]
    enum Want {
        Ack(Done),
        Delay {
            attempts: u32,
            wait: Wait,
            poll: Option<u32>,
        },
        DeadLetter {
            code: &'static str,
            attempts: u32,
        },
        HandBack,
    }

    fn want(action: &Action) -> Want {
        match action {
            Action::Ack(done) => Want::Ack(*done),
            Action::Delay {
                attempts,
                wait,
                poll,
                ..
            } => Want::Delay {
                attempts: *attempts,
                wait: wait.clone(),
                poll: *poll,
            },
            Action::DeadLetter { failure, attempts } => Want::DeadLetter {
                code: match failure.code.as_str() {
                    "http_503" => "http_503",
                    "http_400" => "http_400",
                    "auth" => "auth",
                    "verdict_timeout" => "verdict_timeout",
                    other => panic!("unexpected code {other}"),
                },
                attempts: *attempts,
            },
            Action::HandBack => Want::HandBack,
            Action::Requeue => panic!("decide never requeues"),
        }
    }

    /// (what, attempts so far, outcome, expected action, row status, requests counted).
    type OutcomeRow = (
        &'static str,
        u32,
        Outcome,
        Want,
        Option<DeliveryStatus>,
        i32,
    );

    #[test]
    fn every_outcome_at_the_attempt_boundaries() {
        use DeliveryStatus as S;
        let retry = |retry_after| Outcome::Retry {
            failure: failure(),
            retry_after,
        };
        let rows: Vec<OutcomeRow> = vec![
            (
                "sent",
                0,
                Outcome::Sent {
                    reference: Some("R".into()),
                    http_status: Some(200),
                },
                Want::Ack(Done::Success),
                Some(S::Sent),
                1,
            ),
            (
                "accepted waits for its first verdict",
                0,
                Outcome::Accepted {
                    reference: Some("REQ".into()),
                },
                Want::Delay {
                    attempts: 1,
                    wait: Wait::Verdict,
                    poll: Some(1),
                },
                Some(S::Accepted),
                1,
            ),
            (
                "dry run",
                0,
                Outcome::DryRun {
                    payload: serde_json::json!({"data": []}),
                },
                Want::Ack(Done::DryRun),
                Some(S::DryRun),
                0,
            ),
            (
                "consent",
                0,
                Outcome::BlockedConsent,
                Want::Ack(Done::BlockedConsent),
                Some(S::BlockedConsent),
                0,
            ),
            (
                "unmapped",
                0,
                Outcome::Unmapped,
                Want::Ack(Done::SkippedUnmapped),
                Some(S::SkippedUnmapped),
                0,
            ),
            (
                "expired",
                4,
                Outcome::Expired,
                Want::Ack(Done::Expired),
                Some(S::Expired),
                0,
            ),
            (
                "first retry",
                0,
                retry(None),
                Want::Delay {
                    attempts: 1,
                    wait: Wait::Retry("http_503".into()),
                    poll: None,
                },
                Some(S::Retrying),
                1,
            ),
            (
                "the attempt before the last retries",
                1,
                retry(None),
                Want::Delay {
                    attempts: 2,
                    wait: Wait::Retry("http_503".into()),
                    poll: None,
                },
                Some(S::Retrying),
                1,
            ),
            (
                "the last attempt dead-letters",
                2,
                retry(None),
                Want::DeadLetter {
                    code: "http_503",
                    attempts: 3,
                },
                Some(S::DeadLettered),
                1,
            ),
            (
                "past the last attempt dead-letters too",
                7,
                retry(Some(Duration::from_secs(1))),
                Want::DeadLetter {
                    code: "http_503",
                    attempts: 8,
                },
                Some(S::DeadLettered),
                1,
            ),
            (
                "permanent",
                1,
                Outcome::Permanent(Failure::new("http_400", "rejected").with_status(400)),
                Want::DeadLetter {
                    code: "http_400",
                    attempts: 2,
                },
                Some(S::DeadLettered),
                1,
            ),
            (
                "systemic hands back, deciding nothing",
                2,
                Outcome::Systemic(Failure::new("auth", "token refused").with_status(401)),
                Want::HandBack,
                None,
                1,
            ),
        ];
        let s = settings();
        for (what, attempts, outcome, expected, status, tried) in rows {
            let (action, record) = on_outcome(&s, attempts, VERDICT_WAIT, key(), outcome);
            assert_eq!(want(&action), expected, "{what}");
            assert_eq!(record.status, status, "{what}");
            assert_eq!(record.tried, tried, "{what}");
            assert_eq!(record.key, key(), "{what}");
            if let Action::Delay {
                delay,
                wait: Wait::Verdict,
                ..
            } = action
            {
                assert_eq!(delay, VERDICT_WAIT, "{what}");
            }
        }
    }

    #[test]
    fn a_retry_records_the_failure_and_the_last_one_says_it_gave_up() {
        let s = settings();
        let (_, record) = on_outcome(
            &s,
            0,
            VERDICT_WAIT,
            key(),
            Outcome::Retry {
                failure: failure(),
                retry_after: None,
            },
        );
        assert_eq!(record.http_status, Some(503));
        assert_eq!(record.error_code.as_deref(), Some("http_503"));
        assert_eq!(record.error_message.as_deref(), Some("server error"));
        let (action, record) = on_outcome(
            &s,
            2,
            VERDICT_WAIT,
            key(),
            Outcome::Retry {
                failure: failure(),
                retry_after: None,
            },
        );
        let Action::DeadLetter { failure, .. } = action else {
            panic!("{action:?}")
        };
        assert_eq!(failure.message, "gave up after 3 attempts: server error");
        assert_eq!(
            record.error_message.as_deref(),
            Some(failure.message.as_str())
        );
        assert_eq!(failure.http_status, Some(503));
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let s = settings();
        for (retry_after, at_least, at_most) in [
            (Duration::from_secs(5), Duration::from_secs(5), s.retry_max),
            // Above RETRY_MAX_MS: capped at it.
            (Duration::from_secs(3600), s.retry_max, s.retry_max),
        ] {
            for _ in 0..50 {
                let (action, _) = on_outcome(
                    &s,
                    0,
                    VERDICT_WAIT,
                    key(),
                    Outcome::Retry {
                        failure: failure(),
                        retry_after: Some(retry_after),
                    },
                );
                let Action::Delay { delay, .. } = action else {
                    panic!("{action:?}")
                };
                assert!(
                    delay >= at_least && delay <= at_most,
                    "{retry_after:?} → {delay:?}"
                );
            }
        }
    }

    #[test]
    fn an_outcome_the_claim_settles_is_the_one_on_outcome_acks_with_that_status_and_no_request() {
        let s = settings();
        let outcomes = [
            Outcome::Unmapped,
            Outcome::BlockedConsent,
            Outcome::Expired,
            Outcome::Sent {
                reference: None,
                http_status: Some(200),
            },
            Outcome::Accepted { reference: None },
            Outcome::DryRun {
                payload: serde_json::json!({}),
            },
            Outcome::Retry {
                failure: failure(),
                retry_after: None,
            },
            Outcome::Permanent(failure()),
            Outcome::Systemic(failure()),
        ];
        for outcome in outcomes {
            let settled = settled_without_request(&outcome);
            let (action, record) = on_outcome(&s, 0, VERDICT_WAIT, key(), outcome.clone());
            let plain = matches!(
                action,
                Action::Ack(Done::SkippedUnmapped | Done::BlockedConsent | Done::Expired)
            ) && record.tried == 0;
            assert_eq!(settled.is_some(), plain, "{outcome:?}");
            if settled.is_some() {
                assert_eq!(record.status, settled, "{outcome:?}");
            }
        }
    }

    #[test]
    fn every_verdict_at_the_poll_boundaries() {
        use DeliveryStatus as S;
        let resend = |retry_after| Verdict::Resend {
            failure: Failure::new("http_503", "too recent"),
            retry_after,
        };
        let rows: Vec<(&str, u32, Verdict, Want, Option<S>)> = vec![
            (
                "sent",
                1,
                Verdict::Sent,
                Want::Ack(Done::Success),
                Some(S::Sent),
            ),
            (
                "failed",
                2,
                Verdict::Failed(Failure::new("http_400", "refused")),
                Want::DeadLetter {
                    code: "http_400",
                    attempts: 1,
                },
                Some(S::DeadLettered),
            ),
            (
                "pending asks again",
                1,
                Verdict::Pending,
                Want::Delay {
                    attempts: 1,
                    wait: Wait::Verdict,
                    poll: Some(2),
                },
                None,
            ),
            (
                "pending before the last poll asks again",
                2,
                Verdict::Pending,
                Want::Delay {
                    attempts: 1,
                    wait: Wait::Verdict,
                    poll: Some(3),
                },
                None,
            ),
            (
                "pending at MAX_POLLS gives up",
                3,
                Verdict::Pending,
                Want::DeadLetter {
                    code: "verdict_timeout",
                    attempts: 1,
                },
                Some(S::DeadLettered),
            ),
            (
                "resend is a retry without the poll header",
                3,
                resend(None),
                Want::Delay {
                    attempts: 1,
                    wait: Wait::Retry("http_503".into()),
                    poll: None,
                },
                Some(S::Retrying),
            ),
        ];
        let s = settings();
        for (what, poll, verdict, expected, status) in rows {
            let (action, settled) = on_verdict(&s, 1, poll, VERDICT_WAIT, verdict);
            assert_eq!(want(&action), expected, "{what}");
            assert_eq!(settled.as_ref().map(|r| r.status), status, "{what}");
            if let Action::Delay {
                delay,
                wait: Wait::Verdict,
                ..
            } = action
            {
                assert_eq!(delay, VERDICT_WAIT, "{what}");
            }
        }
        let (_, settled) = on_verdict(&s, 1, 3, VERDICT_WAIT, Verdict::Pending);
        let failure = settled.unwrap().failure.unwrap();
        assert_eq!(
            failure.message,
            "the destination gave no verdict after 3 status requests"
        );
        // A resend whose Retry-After is above RETRY_MAX_MS waits RETRY_MAX_MS.
        let (action, _) = on_verdict(
            &s,
            1,
            1,
            VERDICT_WAIT,
            resend(Some(Duration::from_secs(3600))),
        );
        let Action::Delay { delay, .. } = action else {
            panic!("{action:?}")
        };
        assert_eq!(delay, s.retry_max);
    }

    #[test]
    fn labels_and_retry_codes_follow_the_action() {
        let delay = |wait| Action::Delay {
            delay: Duration::ZERO,
            attempts: 1,
            wait,
            poll: None,
        };
        for (action, label) in [
            (Some(Action::Ack(Done::Duplicate)), "duplicate"),
            (Some(Action::Ack(Done::Success)), "success"),
            (Some(delay(Wait::LeaseHeld)), "deferred"),
            (Some(delay(Wait::Verdict)), "awaiting_verdict"),
            (Some(delay(Wait::Retry("timeout".into()))), "retry"),
            (
                Some(Action::DeadLetter {
                    failure: failure(),
                    attempts: 1,
                }),
                "dead_lettered",
            ),
            (Some(Action::HandBack), "handed_back"),
            (Some(Action::Requeue), "requeued"),
            (None, "requeued"),
        ] {
            assert_eq!(Action::label(action.as_ref()), label, "{action:?}");
        }
        assert_eq!(Wait::LeaseHeld.retry_code(), Some("lease_held"));
        assert_eq!(Wait::Verdict.retry_code(), None);
        assert_eq!(
            Wait::Retry("http_429".into()).retry_code(),
            Some("http_429")
        );
    }
}
