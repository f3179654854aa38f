//! Keeping the delivery log bounded: each sender maintains its own destination's time
//! partitions (`leadpipe_db::partitions`) once before it consumes, then every
//! [`maintenance_period`](leadpipe_db::partitions::maintenance_period), creating them ahead
//! and dropping those past its retention. Every [`STATISTICS_PERIOD`] it also analyzes the
//! partitions that changed much since their last analyze
//! ([`analyze_changed`](leadpipe_db::partitions::analyze_changed)), so that writing an
//! outcome stays a probe of its key however large the day's partition grows.

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use leadpipe_db::partitions::{self, Maintained};

use crate::metrics::Metrics;

/// One round for `destination`, logged; a failure is counted and logged, never fatal (a
/// missing partition only sends rows to the default one).
pub async fn maintain_once(
    pool: &PgPool,
    destination: &'static str,
    retention: chrono::Duration,
    metrics: &Metrics,
) -> Option<Maintained> {
    match partitions::maintain(pool, destination, retention, Utc::now()).await {
        Ok(done) => {
            metrics.partitions_dropped.inc_by(done.dropped.len() as u64);
            if done.changed() {
                tracing::info!(
                    destination,
                    created = ?done.created,
                    dropped = ?done.dropped,
                    moved_rows = done.moved_rows,
                    pruned_rows = done.pruned_rows,
                    retention_secs = retention.num_seconds(),
                    "delivery log partitions maintained"
                );
            }
            Some(done)
        }
        Err(e) => {
            metrics.maintenance_failures.inc();
            tracing::warn!(
                destination,
                error = %e,
                "delivery log partition maintenance failed; trying again next round"
            );
            None
        }
    }
}

/// How long a sender tries, before it consumes, to have its partitions made.
const AT_START: std::time::Duration = std::time::Duration::from_secs(30);

/// Rounds until one succeeds (within [`AT_START`]), so that the destination's table and its
/// partitions exist before the first claim: rows never pile into a default partition because
/// the senders started together. After that the sender consumes anyway (a claim never fails).
pub async fn maintain_at_start(
    pool: &PgPool,
    destination: &'static str,
    retention: chrono::Duration,
    metrics: &Metrics,
) {
    let started = std::time::Instant::now();
    let mut wait = std::time::Duration::from_millis(100);
    loop {
        if let Some(done) = maintain_once(pool, destination, retention, metrics).await
            && !done.busy
        {
            return;
        }
        if started.elapsed() > AT_START {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(5));
    }
}

/// How often a sender looks for partitions to analyze.
pub const STATISTICS_PERIOD: std::time::Duration = std::time::Duration::from_secs(15);

/// Analyzes the destination's partitions that changed much; a failure is logged, never
/// fatal (the next round tries again).
pub async fn analyze_once(pool: &PgPool, destination: &'static str) {
    match partitions::analyze_changed(pool, destination).await {
        Ok(tables) if !tables.is_empty() => {
            tracing::debug!(destination, ?tables, "delivery log partitions analyzed");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(
            destination,
            error = %e,
            "analyzing the delivery log's partitions failed; trying again next round"
        ),
    }
}

/// Maintains every `period`, and analyzes every [`STATISTICS_PERIOD`], until `shutdown`.
pub async fn run(
    pool: PgPool,
    destination: &'static str,
    retention: chrono::Duration,
    period: std::time::Duration,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut maintenance = tokio::time::interval(period);
    let mut statistics = tokio::time::interval(STATISTICS_PERIOD);
    for timer in [&mut maintenance, &mut statistics] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    // The first ticks are immediate: maintenance ran at start already.
    maintenance.tick().await;
    statistics.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = maintenance.tick() => {
                maintain_once(&pool, destination, retention, &metrics).await;
            }
            _ = statistics.tick() => analyze_once(&pool, destination).await,
        }
    }
}
