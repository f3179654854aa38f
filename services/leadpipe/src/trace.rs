//! `leadpipe trace <event_id>`: every destination's delivery log row for one event.

use std::process::ExitCode;

use chrono::{DateTime, Utc};

use leadpipe_config::DatabaseSettings;
use leadpipe_registry::REGISTRY;

type Row = (
    String,
    String,
    String,
    i32,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
);

pub(crate) async fn run(event_id: &str) -> anyhow::Result<ExitCode> {
    let db = DatabaseSettings::from_env();
    let pool = leadpipe_db::connect(&db.url, 1).await?;
    let rows: Vec<Row> = sqlx::query_as(
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
    .fetch_all(&pool)
    .await?;
    if rows.is_empty() {
        eprintln!(
            "no delivery recorded for {event_id}: no sender has consumed it yet (it may still wait in \
             the work queues), or the id is not one ingest returned"
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("event {event_id}");
    // One row per destination and event name: a client may give one id to a lead and its won.
    for (dest, name, status, attempts, http, code, message, reference, first, updated) in rows {
        println!("  {dest:<11} {name:<12} {status:<16} attempts {attempts}");
        println!("              first seen {first}, updated {updated}");
        if let Some(http) = http {
            println!("              last HTTP status {http}");
        }
        if let Some(code) = code {
            println!(
                "              last error {code}: {}",
                message.unwrap_or_default()
            );
        }
        if let Some(r) = reference {
            println!("              destination reference {r}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
