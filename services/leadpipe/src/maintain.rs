//! `leadpipe maintain`: one round of the delivery log's partition maintenance (what every
//! sender runs on a timer) for the enabled destinations, and what each destination's log
//! holds afterwards.

use std::process::ExitCode;

use chrono::{TimeDelta, Utc};
use sqlx::PgPool;

use leadpipe_config::DatabaseSettings;
use leadpipe_consumer::Registration;
use leadpipe_db::partitions;

/// What `leadpipe maintain` was asked.
#[derive(clap::Args)]
pub(crate) struct MaintainArgs {
    /// Only these destinations (default: every enabled one).
    #[arg(long = "destination", value_name = "NAME")]
    destinations: Vec<String>,
    /// Set the width of the time partitions first, in seconds (60 to 86400, dividing a day;
    /// only while the delivery log is empty). Default width: a day.
    #[arg(long, value_name = "SECS")]
    partition_secs: Option<i64>,
}

/// Runs `leadpipe maintain`.
pub(crate) async fn run(args: MaintainArgs) -> anyhow::Result<ExitCode> {
    let registrations: Vec<&'static Registration> = if args.destinations.is_empty() {
        leadpipe_registry::enabled()?
    } else {
        args.destinations
            .iter()
            .map(|d| leadpipe_registry::REGISTRY.parse_named("--destination", d))
            .collect::<Result<_, _>>()?
    };
    let pool = leadpipe_db::connect(&DatabaseSettings::from_env().url, 2).await?;
    leadpipe_db::migrate(&pool).await?;
    if let Some(secs) = args.partition_secs {
        partitions::set_partition_width(&pool, TimeDelta::seconds(secs))
            .await
            .map_err(|e| anyhow::anyhow!("--partition-secs {secs}: {e}"))?;
    }
    let width = partitions::partition_width(&pool).await?;
    println!("delivery log partitions: {} wide", humanize(width));
    for r in registrations {
        let done = round(&pool, r).await?;
        println!("{done}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One round for `r` with the retention its sender would use; a line saying what it did and
/// what the destination's log holds.
pub(crate) async fn round(pool: &PgPool, r: &Registration) -> anyhow::Result<String> {
    let retention = r.retention.from_env()?;
    let done = partitions::maintain(pool, r.name(), retention, Utc::now()).await?;
    let (tables, rows, bytes): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), COALESCE(sum(c.reltuples) FILTER (WHERE c.reltuples > 0), 0)::bigint,
                COALESCE(sum(pg_total_relation_size(c.oid)), 0)::bigint
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = to_regclass($1)",
    )
    .bind(partitions::destination_table(r.name()))
    .fetch_one(pool)
    .await?;
    let what = if done.busy {
        "another process is maintaining it".to_owned()
    } else {
        format!(
            "{} created, {} dropped, {} rows moved, {} pruned",
            done.created.len(),
            done.dropped.len(),
            done.moved_rows,
            done.pruned_rows
        )
    };
    Ok(format!(
        "{}: retention {}; {what}; {tables} partitions, about {rows} rows, {:.1} MiB",
        r.name(),
        humanize(retention),
        bytes as f64 / (1024.0 * 1024.0)
    ))
}

fn humanize(d: TimeDelta) -> String {
    let s = d.num_seconds();
    let parts = [
        (s / 86_400, "d"),
        (s % 86_400 / 3600, "h"),
        (s % 3600 / 60, "min"),
        (s % 60, "s"),
    ];
    let text: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n} {unit}"))
        .collect();
    if text.is_empty() {
        "0 s".into()
    } else {
        text.join(" ")
    }
}
