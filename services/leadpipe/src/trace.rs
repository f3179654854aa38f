//! `leadpipe trace <event_id>` (or `--lead-id`, `--order-id`): every destination's delivery log
//! row for one event, or for every event of a lead or an order. The console's event page shows
//! the same rows ([`find`]).

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
    pub event_id: String,
    pub lead_id: Option<String>,
    pub order_id: Option<String>,
    pub source: Option<String>,
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

/// What to look an event up by.
#[derive(Debug, Clone)]
pub(crate) enum Lookup {
    /// The event_id ingest returned.
    EventId(String),
    /// The client's id of the lead.
    LeadId(String),
    /// The client's id of the order.
    OrderId(String),
    /// Every event of a source first seen in `[from, to)`.
    Source {
        source: String,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
}

/// At most this many rows answer a lookup by lead, order or source (newest first).
pub(crate) const LIMIT: i64 = 500;

const COLUMNS: &str = "destination, event_id, lead_id, order_id, source, event_name, status, \
     attempts, last_http_status, last_error_code, last_error_message, destination_ref, \
     first_seen_at, updated_at";

/// The rows a lookup finds. Each is one probe per destination table of an index the
/// delivery log keeps: the primary key (event_id), `deliveries_lead_id`,
/// `deliveries_order_id`, or a range of `deliveries_first_seen` (source).
pub(crate) async fn find(pool: &PgPool, lookup: &Lookup) -> sqlx::Result<Vec<TraceRow>> {
    // Every destination named, so the planner probes each destination's table.
    let destinations: Vec<&str> = REGISTRY.destinations().iter().map(|d| d.as_str()).collect();
    let query = |filter: &str, order: &str| {
        format!(
            "SELECT {COLUMNS} FROM deliveries WHERE destination = ANY($1) AND {filter} ORDER BY {order}"
        )
    };
    let rows: Vec<TraceRow> = match lookup {
        Lookup::EventId(id) => {
            sqlx::query_as(sqlx::AssertSqlSafe(query(
                "event_id = $2",
                "destination, event_name",
            )))
            .bind(destinations)
            .bind(id)
            .fetch_all(pool)
            .await
        }
        Lookup::LeadId(id) | Lookup::OrderId(id) => {
            let column = if matches!(lookup, Lookup::LeadId(_)) {
                "lead_id"
            } else {
                "order_id"
            };
            sqlx::query_as(sqlx::AssertSqlSafe(query(
                &format!("{column} = $2"),
                "first_seen_at DESC, event_id, destination, event_name LIMIT $3",
            )))
            .bind(destinations)
            .bind(id)
            .bind(LIMIT)
            .fetch_all(pool)
            .await
        }
        Lookup::Source { source, from, to } => {
            sqlx::query_as(sqlx::AssertSqlSafe(query(
                "source = $2 AND first_seen_at >= $3 AND first_seen_at < $4",
                "first_seen_at DESC, event_id, destination, event_name LIMIT $5",
            )))
            .bind(destinations)
            .bind(source)
            .bind(from)
            .bind(to)
            .bind(LIMIT)
            .fetch_all(pool)
            .await
        }
    }?;
    Ok(by_event(rows))
}

/// Keeps each event's rows together (by destination and name), the events in the order they
/// come (newest first).
fn by_event(rows: Vec<TraceRow>) -> Vec<TraceRow> {
    let mut order: std::collections::HashMap<String, usize> = Default::default();
    for r in &rows {
        let next = order.len();
        order.entry(r.event_id.clone()).or_insert(next);
    }
    let mut rows = rows;
    rows.sort_by(|a, b| {
        (order[&a.event_id], &a.destination, &a.event_name).cmp(&(
            order[&b.event_id],
            &b.destination,
            &b.event_name,
        ))
    });
    rows
}

/// What to say when an event has no row.
pub(crate) const NOT_FOUND: &str = "no sender has consumed it yet (it may still wait in the work \
     queues), or the id is not one ingest returned";

pub(crate) async fn run(lookup: &Lookup) -> anyhow::Result<ExitCode> {
    let db = DatabaseSettings::from_env();
    let pool = leadpipe_db::connect(&db.url, 1).await?;
    let rows = find(&pool, lookup).await?;
    let what = match lookup {
        Lookup::EventId(id) => id.clone(),
        Lookup::LeadId(id) => format!("lead_id {id}"),
        Lookup::OrderId(id) => format!("order_id {id}"),
        Lookup::Source { source, .. } => format!("source {source}"),
    };
    if rows.is_empty() {
        eprintln!("no delivery recorded for {what}: {NOT_FOUND}");
        return Ok(ExitCode::FAILURE);
    }
    let mut event = None;
    for r in rows {
        if event.as_ref() != Some(&r.event_id) {
            println!("event {}", r.event_id);
            event = Some(r.event_id.clone());
        }
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
