//! The delivery log's partitions: `deliveries` is partitioned by destination, each
//! destination's table (`deliveries_<destination>`) by time over `bucket`, the start of the
//! interval (`delivery_log_settings.partition_secs`, a UTC day by default) holding the
//! event's `occurred_at`. [`maintain`] creates the partitions ahead of time and drops those
//! past the destination's retention; every sender runs it at start and then on a timer
//! ([`maintenance_period`]), and `leadpipe maintain` runs it by hand.
//!
//! # Tables
//! - `deliveries_<destination>_<YYYYMMDD>_<HHMM>`: one interval, named by its start (UTC).
//! - `deliveries_<destination>_default`: what no interval table holds (an event older than
//!   the ones created, or any row written while a partition was missing), so a claim never
//!   fails. Creating an interval table moves the default's rows for its range into it; rows
//!   past the retention are deleted from it.
//! - `deliveries_<destination>_legacy`: the rows from before partitioning (bucket
//!   [`LEGACY_BUCKET`]), dropped once every one of them is past the retention.
//! - `deliveries_default`: rows of a destination whose table does not exist yet (moved
//!   into it when it is created).

use chrono::{DateTime, NaiveDateTime, TimeDelta, TimeZone, Utc};
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};

use crate::{Error, Result};

/// The bucket of every row from before partitioning (their `occurred_at` is unknown).
pub const LEGACY_BUCKET: DateTime<Utc> = DateTime::UNIX_EPOCH;

/// How far in the future an event may be (ingest refuses more), so how far ahead of now an
/// interval table must already exist.
const FUTURE_SKEW: TimeDelta = TimeDelta::minutes(5);

/// The advisory-lock class of partition maintenance (the second key is the destination's
/// hash): replicas of one sender take turns, each destination independently.
const LOCK_CLASS: i32 = 0x6c70_6470; // "lpdp"

/// How long maintenance waits for a table lock before it gives up until its next round,
/// rather than queue the senders' claims behind it.
const LOCK_TIMEOUT: &str = "5s";

/// The width of one time partition, as the database says.
pub async fn partition_width(pool: &PgPool) -> Result<TimeDelta> {
    let secs: i32 = sqlx::query_scalar("SELECT partition_secs FROM delivery_log_settings")
        .fetch_one(pool)
        .await?;
    Ok(TimeDelta::seconds(i64::from(secs)))
}

/// Changes the width of the time partitions. Only an empty delivery log can change it (a
/// row's bucket is part of its key): every destination's table is dropped and made again by
/// the next [`maintain`].
pub async fn set_partition_width(pool: &PgPool, width: TimeDelta) -> Result<()> {
    let secs = width.num_seconds();
    if !(60..=86_400).contains(&secs) || 86_400 % secs != 0 {
        return Err(Error::Refused(format!(
            "the partition width must divide a day and be 60 to 86400 seconds, not {secs}"
        )));
    }
    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE delivery_log_settings IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let current: i32 = sqlx::query_scalar("SELECT partition_secs FROM delivery_log_settings")
        .fetch_one(&mut *tx)
        .await?;
    if i64::from(current) == secs {
        return Ok(());
    }
    let rows: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM deliveries)")
        .fetch_one(&mut *tx)
        .await?;
    if rows {
        return Err(Error::Refused(
            "the delivery log holds rows: its partition width can only change while it is empty"
                .into(),
        ));
    }
    for table in children(&mut tx, "deliveries").await? {
        if table != "deliveries_default" {
            execute(&mut tx, format!("DROP TABLE {}", ident(&table))).await?;
        }
    }
    sqlx::query("UPDATE delivery_log_settings SET partition_secs = $1")
        .bind(i32::try_from(secs).expect("checked above"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The start of the interval of `width` that holds `t` (intervals start at the epoch, so a
/// day's is midnight UTC).
pub fn bucket_of(width: TimeDelta, t: DateTime<Utc>) -> DateTime<Utc> {
    let w = width.num_seconds().max(1);
    let secs = t.timestamp().div_euclid(w) * w;
    Utc.timestamp_opt(secs, 0).single().unwrap_or(LEGACY_BUCKET)
}

/// How often a sender maintains its partitions: a quarter of the width, between 10 s and an
/// hour.
pub fn maintenance_period(width: TimeDelta) -> std::time::Duration {
    let quarter = width.num_seconds().max(4) as u64 / 4;
    std::time::Duration::from_secs(quarter.clamp(10, 3600))
}

/// How far ahead of now interval tables exist after [`maintain`]: two widths, and at least
/// two maintenance periods plus the future an event may be in.
pub fn ahead(width: TimeDelta) -> TimeDelta {
    let period = TimeDelta::from_std(maintenance_period(width)).unwrap_or(TimeDelta::hours(1));
    (width * 2).max(period * 2 + FUTURE_SKEW)
}

/// What one round of [`maintain`] did for a destination.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Maintained {
    /// Tables created (the destination's own, interval tables).
    pub created: Vec<String>,
    /// Tables dropped (intervals past the retention, the legacy table).
    pub dropped: Vec<String>,
    /// Rows moved out of a default partition into a table created for them.
    pub moved_rows: u64,
    /// Rows past the retention deleted from the destination's default partition.
    pub pruned_rows: u64,
    /// Another process was maintaining this destination: nothing was done this round.
    pub busy: bool,
}

impl Maintained {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        !self.created.is_empty()
            || !self.dropped.is_empty()
            || self.moved_rows > 0
            || self.pruned_rows > 0
    }
}

/// The name of `destination`'s table (`deliveries_<destination>`).
pub fn destination_table(destination: &str) -> String {
    format!("deliveries_{destination}")
}

/// The name of the interval table starting at `start`.
pub fn interval_table(destination: &str, start: DateTime<Utc>) -> String {
    format!(
        "{}_{}",
        destination_table(destination),
        start.format("%Y%m%d_%H%M")
    )
}

/// One round for `destination` (a registered name: `Destination::as_str`) at `now`: its
/// table exists, interval tables exist from the one before now's (the last hour's, for
/// intervals under an hour) to [`ahead`] of now, tables whose interval ended more than `retention`
/// ago are dropped, and the default partition loses its rows past `retention`. One
/// transaction; a replica that finds another one at it does nothing (`busy`).
pub async fn maintain(
    pool: &PgPool,
    destination: &str,
    retention: TimeDelta,
    now: DateTime<Utc>,
) -> Result<Maintained> {
    let width = partition_width(pool).await?;
    let mut done = Maintained::default();
    let mut tx = pool.begin().await?;
    execute(
        &mut tx,
        format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"),
    )
    .await?;
    let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext($2))")
        .bind(LOCK_CLASS)
        .bind(destination)
        .fetch_one(&mut *tx)
        .await?;
    if !ours {
        done.busy = true;
        return Ok(done);
    }

    let parent = destination_table(destination);
    if !exists(&mut tx, &parent).await? {
        // Attaching a destination's table locks `deliveries` and its default partition:
        // destinations take turns (senders starting together would deadlock otherwise).
        sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
            .bind(LOCK_CLASS)
            .execute(&mut *tx)
            .await?;
        done.moved_rows += create_destination_table(&mut tx, destination).await?;
        done.created.push(parent.clone());
    }

    // Interval tables from the one before now's (the last hour's, for narrow ones; no older
    // than the retention) to `ahead` of now.
    let behind = width.max(TimeDelta::hours(1)).min(retention.max(width));
    let mut start = bucket_of(width, now - behind).max(bucket_of(width, now) - behind);
    let last = bucket_of(width, now + ahead(width));
    while start <= last {
        let table = interval_table(destination, start);
        if !exists(&mut tx, &table).await? {
            done.moved_rows +=
                create_interval_table(&mut tx, &parent, &table, start, width).await?;
            done.created.push(table);
        }
        start += width;
    }

    // Intervals that ended more than `retention` ago.
    let cutoff = now - retention;
    let prefix = format!("{parent}_");
    for table in children(&mut tx, &parent).await? {
        let Some(start) = table
            .strip_prefix(&prefix)
            .and_then(|s| NaiveDateTime::parse_from_str(s, "%Y%m%d_%H%M").ok())
            .map(|t| t.and_utc())
        else {
            continue;
        };
        if start + width <= cutoff {
            execute(&mut tx, format!("DROP TABLE {}", ident(&table))).await?;
            done.dropped.push(table);
        }
    }

    // The rows from before partitioning, once every one is past the retention: no row's
    // event happened after it was ingested (plus the future an event may be in).
    let legacy = format!("{parent}_legacy");
    if exists(&mut tx, &legacy).await? {
        let newest: Option<DateTime<Utc>> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT max(COALESCE(ingested_at, first_seen_at)) FROM {}",
            ident(&legacy)
        )))
        .fetch_one(&mut *tx)
        .await?;
        if newest.is_none_or(|t| t + FUTURE_SKEW < cutoff) {
            execute(&mut tx, format!("DROP TABLE {}", ident(&legacy))).await?;
            done.dropped.push(legacy);
        }
    }

    // The default partition's rows past the retention.
    let default = format!("{parent}_default");
    done.pruned_rows = sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {} WHERE bucket + make_interval(secs => $1) <= $2",
        ident(&default)
    )))
    .bind(width.num_seconds() as f64)
    .bind(cutoff)
    .execute(&mut *tx)
    .await?
    .rows_affected();

    tx.commit().await?;
    Ok(done)
}

/// How many rows a table must have changed, beyond the rows it held at its last analyze,
/// before [`analyze_changed`] analyzes it again.
const ANALYZE_AFTER_ROWS: f32 = 200.0;

/// Analyzes `destination`'s time partitions (and its default one) that changed more than
/// they held at their last analyze, or [`ANALYZE_AFTER_ROWS`] when they were never analyzed;
/// returns the tables analyzed.
///
/// Without statistics the planner takes `destination = $1` (true of every row of a
/// destination's partition) to hold for 0.5 % of a partition, and writes a sender's batch of
/// outcomes by scanning the whole young partition instead of probing its keys: the cost per
/// event then grows with the partition. Autovacuum would analyze it in time only where it
/// runs, and only after its first minute. Analyzing once a table doubled its changes costs a
/// few analyzes per partition per day.
pub async fn analyze_changed(pool: &PgPool, destination: &str) -> Result<Vec<String>> {
    let stale: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text
         FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_stat_user_tables s ON s.relid = c.oid
         WHERE i.inhparent = to_regclass(quote_ident($1))
           AND c.relkind = 'r'
           AND s.n_mod_since_analyze > $2 + greatest(c.reltuples, 0)
         ORDER BY c.relname",
    )
    .bind(destination_table(destination))
    .bind(ANALYZE_AFTER_ROWS)
    .fetch_all(pool)
    .await?;
    for table in &stale {
        sqlx::query(AssertSqlSafe(format!("ANALYZE {}", ident(table))))
            .execute(pool)
            .await?;
    }
    Ok(stale)
}

/// Creates `deliveries_<destination>` (partitioned by time, with its default partition),
/// moves the rows `deliveries_default` holds for it, and attaches it; returns the rows moved.
async fn create_destination_table(
    tx: &mut Transaction<'_, Postgres>,
    destination: &str,
) -> Result<u64> {
    let parent = ident(&destination_table(destination));
    let default = ident(&format!("{}_default", destination_table(destination)));
    execute(
        tx,
        format!(
            "CREATE TABLE {parent} (LIKE deliveries INCLUDING DEFAULTS INCLUDING CONSTRAINTS) \
             PARTITION BY RANGE (bucket)"
        ),
    )
    .await?;
    execute(
        tx,
        format!("CREATE TABLE {default} PARTITION OF {parent} DEFAULT WITH (fillfactor = 70)"),
    )
    .await?;
    let moved = move_rows(
        tx,
        "deliveries_default",
        &format!("destination = {}", literal(destination)),
        &parent,
    )
    .await?;
    execute(
        tx,
        format!(
            "ALTER TABLE deliveries ATTACH PARTITION {parent} FOR VALUES IN ({})",
            literal(destination)
        ),
    )
    .await?;
    Ok(moved)
}

/// Creates the interval table `table` of `parent` for [start, start + width), with the rows
/// the default partition holds for that range; returns the rows moved.
async fn create_interval_table(
    tx: &mut Transaction<'_, Postgres>,
    parent: &str,
    table: &str,
    start: DateTime<Utc>,
    width: TimeDelta,
) -> Result<u64> {
    let (parent_id, table_id) = (ident(parent), ident(table));
    let default = ident(&format!("{parent}_default"));
    let (from, to) = (timestamp(start), timestamp(start + width));
    execute(
        tx,
        format!(
            "CREATE TABLE {table_id} (LIKE {parent_id} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) \
             WITH (fillfactor = 70)"
        ),
    )
    .await?;
    let moved = move_rows(
        tx,
        &default,
        &format!("bucket >= {from} AND bucket < {to}"),
        &table_id,
    )
    .await?;
    execute(
        tx,
        format!(
            "ALTER TABLE {parent_id} ATTACH PARTITION {table_id} FOR VALUES FROM ({from}) TO ({to})"
        ),
    )
    .await?;
    Ok(moved)
}

/// Moves the rows of `from` matching `filter` into `into` (quoted names, a filter of
/// literals); returns how many.
async fn move_rows(
    tx: &mut Transaction<'_, Postgres>,
    from: &str,
    filter: &str,
    into: &str,
) -> Result<u64> {
    Ok(sqlx::query(AssertSqlSafe(format!(
        "WITH moved AS (DELETE FROM {from} WHERE {filter} RETURNING *) \
         INSERT INTO {into} SELECT * FROM moved"
    )))
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// The partitions of `table`, by name.
async fn children(tx: &mut Transaction<'_, Postgres>, table: &str) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = to_regclass($1) ORDER BY 1",
    )
    .bind(table)
    .fetch_all(&mut **tx)
    .await?)
}

async fn exists(tx: &mut Transaction<'_, Postgres>, table: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT to_regclass(quote_ident($1)) IS NOT NULL")
            .bind(table)
            .fetch_one(&mut **tx)
            .await?,
    )
}

async fn execute(tx: &mut Transaction<'_, Postgres>, sql: String) -> Result<()> {
    sqlx::query(AssertSqlSafe(sql)).execute(&mut **tx).await?;
    Ok(())
}

/// A quoted identifier (names here are built from checked destination names and digits).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn timestamp(t: DateTime<Utc>) -> String {
    format!("'{}'", t.format("%Y-%m-%d %H:%M:%S+00"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_bucket_is_the_start_of_its_interval_from_the_epoch() {
        let day = TimeDelta::days(1);
        assert_eq!(
            bucket_of(day, at("2026-12-07T23:59:59Z")),
            at("2026-12-07T00:00:00Z")
        );
        assert_eq!(
            bucket_of(day, at("2026-12-08T00:00:00Z")),
            at("2026-12-08T00:00:00Z")
        );
        assert_eq!(
            bucket_of(TimeDelta::minutes(1), at("2026-12-07T10:42:31+02:00")),
            at("2026-12-07T08:42:00Z")
        );
        assert_eq!(
            bucket_of(day, at("1969-12-31T12:00:00Z")),
            at("1969-12-31T00:00:00Z")
        );
    }

    #[test]
    fn tables_are_named_by_their_start_and_made_ahead_by_two_periods_at_least() {
        assert_eq!(
            interval_table("google_ads", at("2026-12-07T00:00:00Z")),
            "deliveries_google_ads_20261207_0000"
        );
        assert_eq!(maintenance_period(TimeDelta::days(1)).as_secs(), 3600);
        assert_eq!(maintenance_period(TimeDelta::minutes(1)).as_secs(), 15);
        assert_eq!(ahead(TimeDelta::days(1)), TimeDelta::days(2));
        assert_eq!(ahead(TimeDelta::minutes(1)), TimeDelta::seconds(330));
    }
}
