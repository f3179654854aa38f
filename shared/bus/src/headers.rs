//! AMQP header names (SPEC §4).

use lapin::types::FieldTable;

/// W3C trace context of the ingest request, carried to each destination call.
pub const TRACEPARENT: &str = "traceparent";
/// Dead letters: machine-readable reason (`invalid_parameter`, `max_attempts`, `poison`, …).
pub const ERROR_CODE: &str = "x-leadpipe-error-code";
/// Dead letters: human-readable reason, without PII.
pub const ERROR_MESSAGE: &str = "x-leadpipe-error-message";
/// Dead letters: the destination's last HTTP status, when there was one.
pub const HTTP_STATUS: &str = "x-leadpipe-http-status";
/// Attempts made so far; on a retry, the number of the next attempt minus one.
pub const ATTEMPTS: &str = "x-leadpipe-attempts";
/// Dead letters: when the message was dead-lettered, RFC 3339 UTC.
pub const FAILED_AT: &str = "x-leadpipe-failed-at";
/// Accepted events awaiting the destination's verdict: which poll the message comes back for.
pub const POLLS: &str = "x-leadpipe-polls";
/// Set by the broker on a quorum queue's redeliveries: a copy published without it starts
/// with none of the original's deliveries spent.
pub const DELIVERY_COUNT: &str = "x-delivery-count";

/// `table` without the header `name`.
pub fn without(table: &FieldTable, name: &str) -> FieldTable {
    let mut kept = FieldTable::default();
    for (k, v) in table.inner() {
        if k.as_str() != name {
            kept.insert(k.clone(), v.clone());
        }
    }
    kept
}
