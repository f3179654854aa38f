//! `leadpipe trace <event_id>`: every destination's delivery log row for one event. The
//! console's event page shows the same rows ([`rows`]).

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use leadpipe_config::DatabaseSettings;
use leadpipe_registry::REGISTRY;

/// One destination's row for an event: ids, names and codes only (the delivery log holds no
/// personal data).
#[derive(sqlx::FromRow, Debug, Clone)]
pub(crate) struct TraceRow {
    pub destination: String,
    pub event_name: String,
    pub status: String,
    pub attempts: i32,
    pub last_http_status: Option<i32>,
    pub last_error_code: Option<String>,
    pub last_error_message: Option<String>,
    pub destination_ref: Option<String>,
    pub first_seen_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Every registered destination's rows for `event_id`, by destination and event name (a
/// client may give one id to a lead and its won).
pub(crate) async fn rows(pool: &PgPool, event_id: &str) -> sqlx::Result<Vec<TraceRow>> {
    sqlx::query_as(
        "SELECT destination, event_name, status, attempts, last_http_status, last_error_code,
                last_error_message, destination_ref, first_seen_at, updated_at
         FROM deliveries WHERE destination = ANY($1) AND event_id = $2 ORDER BY destination, event_name",
    )
    // Every destination named, so the lookup is one probe of the primary key per destination.
    .bind(
        REGISTRY
            .destinations()
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(event_id)
    .fetch_all(pool)
    .await
}

/// What to say when an event has no row.
pub(crate) const NOT_FOUND: &str = "no sender has consumed it yet (it may still wait in the work \
     queues), or the id is not one ingest returned";

pub(crate) async fn run(event_id: &str) -> anyhow::Result<ExitCode> {
    let db = DatabaseSettings::from_env();
    let pool = leadpipe_db::connect(&db.url, 1).await?;
    let rows = rows(&pool, event_id).await?;
    if rows.is_empty() {
        eprintln!("no delivery recorded for {event_id}: {NOT_FOUND}");
        return Ok(ExitCode::FAILURE);
    }
    println!("event {event_id}");
    for r in rows {
        println!(
            "  {:<11} {:<12} {:<16} attempts {}",
            r.destination, r.event_name, r.status, r.attempts
        );
        println!(
            "              first seen {}, updated {}",
            r.first_seen_at, r.updated_at
        );
        if let Some(http) = r.last_http_status {
            println!("              last HTTP status {http}");
        }
        if let Some(code) = r.last_error_code {
            println!(
                "              last error {code}: {}",
                r.last_error_message.unwrap_or_default()
            );
        }
        if let Some(reference) = r.destination_ref {
            println!("              destination reference {reference}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
