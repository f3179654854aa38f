//! The overview: per destination, its work queue and DLQ (depth and consumers, from the
//! broker; with `RABBITMQ_MANAGEMENT_URL`, the work queue's rates in and out from its
//! management API), how long events waited in the work queue lately and its rows of the last hour and
//! day by status (from the delivery log), and its sender's state (from the sender's
//! `/readyz`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use maud::html;

use leadpipe_bus::Names;
use leadpipe_consumer::Registration;

use super::{Console, Counts, count_table, layout};

/// A queue as the broker reports it.
#[derive(Debug, Clone, Copy)]
struct QueueState {
    messages: u32,
    consumers: u32,
}

/// What a sender's `/readyz` says.
#[derive(Debug)]
struct SenderState {
    /// `ready`, `paused`, `half-open`, `not-ready` or `unreachable`.
    state: &'static str,
    reason: Option<String>,
    dry_run: bool,
}

/// How long the events first seen in the last five minutes waited in the work queue.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
struct Wait {
    events: i64,
    p95_secs: Option<f64>,
    max_secs: Option<f64>,
}

pub(super) async fn page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let names = Names::new(console.amqp.namespace.clone());
    let destinations: Vec<&str> = console.destinations.iter().map(|r| r.name()).collect();
    let (hour, day, waits, queues, senders, rates) = tokio::join!(
        counts(&console, &destinations, "1 hour"),
        day_counts(&console),
        waits(&console, &destinations),
        queues(&console, &names),
        senders(&console),
        rates(&console),
    );
    let rates_note = match &rates {
        Some(Err(e)) => Some(e.clone()),
        _ => None,
    };
    let rates = rates.and_then(Result::ok);
    let ((day, day_age), hour, waits) = match (day, hour, waits) {
        (Ok(d), Ok(h), Ok(w)) => (d, h, w),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return console.unavailable(&headers, "The delivery log", &e);
        }
    };
    let queue_note = queues.as_ref().err().map(|e| e.to_string());
    let queues = queues.unwrap_or_default();
    let body = html! {
        table #destinations {
            thead { tr {
                th { "destination" } th { "sender" }
                th.n { "work queue" } th.n { "consumers" }
                @if rates.is_some() { th.n { "in /s" } th.n { "out /s" } }
                th.n { "waited p95 (5 min)" } th.n { "waited max" }
                th.n { "dead letters" }
            } }
            tbody {
                @for (r, sender) in console.destinations.iter().zip(&senders) {
                    @let work = queues.get(&names.work_queue(r.destination));
                    @let dlq = queues.get(&names.dead_letter_queue(r.destination));
                    @let wait = waits.get(r.name());
                    tr data-destination=(r.name()) {
                        td { strong { (r.name()) } br; span.muted { (r.title) } }
                        td {
                            span class={ "state " (sender.state) } data-state=(sender.state) { (sender.state) }
                            @if sender.dry_run { " " span.state.dry-run { "dry run" } }
                            @if let Some(why) = &sender.reason { br; span.muted { (why) } }
                        }
                        td.n data-queue="work" { (depth(work.map(|q| q.messages))) }
                        td.n { (depth(work.map(|q| q.consumers))) }
                        @if let Some(rates) = &rates {
                            @let r = rates.get(&names.work_queue(r.destination));
                            td.n data-rate="in" { (rate(r.map(|r| r.publish))) }
                            td.n data-rate="out" { (rate(r.map(|r| r.ack))) }
                        }
                        td.n { (seconds(wait.and_then(|w| w.p95_secs))) }
                        td.n { (seconds(wait.and_then(|w| w.max_secs))) }
                        td.n data-queue="dlq" {
                            a href={ "/dead-letters/" (r.name()) } { (depth(dlq.map(|q| q.messages))) }
                        }
                    }
                }
            }
        }
        @if let Some(e) = rates_note {
            p.error #management { "The management API cannot be read right now (" (e) "): rates are missing." }
        }
        @if let Some(e) = queue_note {
            p.error { "The broker cannot be read right now (" (e) "): queue figures are missing." }
        }
        p.muted {
            "Waited: from ingest's acceptance to the sender's first take, for the events first seen in the last five minutes. "
            "Work queue: messages ready or in a sender's hands."
        }
        h2 { "Last hour" }
        (count_table("last-hour", &console.destinations, &hour))
        h2 { "Last 24 hours" }
        @if let Some(age) = day_age {
            p.muted #day-counted {
                "Counted " (age.as_secs()) " s ago: counting the day takes "
                (day.took.as_millis()) " ms, so the last count is shown while the next one runs."
            }
        }
        (count_table("last-day", &console.destinations, &day.counts))
        p.muted { "Each event counted once per destination, under its status now, by when the destination's sender first took it." }
    };
    layout::page(&console.frame(&headers), "Overview", body).into_response()
}

fn depth(n: Option<u32>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "?".into())
}

fn rate(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.1}")).unwrap_or_else(|| "?".into())
}

fn seconds(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        Some(s) => format!("{s:.1} s"),
    }
}

/// Rows first seen in the last `window`, by destination and status (a range of
/// `deliveries_first_seen` in each destination's tables).
async fn counts(console: &Console, destinations: &[&str], window: &str) -> sqlx::Result<Counts> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT destination, status, count(*) FROM deliveries
         WHERE destination = ANY($1) AND first_seen_at >= now() - $2::interval
         GROUP BY destination, status",
    )
    .bind(destinations)
    .bind(window)
    .fetch_all(&console.pool)
    .await?;
    Ok(rows.into_iter().map(|(d, s, n)| ((d, s), n)).collect())
}

/// Counting the last 24 hours is the one query of the page that grows with the log (about
/// 250 ms for 1,000,000 rows in a day). Where it takes longer than [`SLOW_COUNT`], the last
/// count is shown, with its age, for up to [`REUSE_FOR`], and from [`RECOUNT_AFTER`] on a
/// request starts the next count in the background. Where it is quick, every page counts.
const SLOW_COUNT: Duration = Duration::from_millis(50);
const RECOUNT_AFTER: Duration = Duration::from_secs(5);
const REUSE_FOR: Duration = Duration::from_secs(60);

/// The last count of the last 24 hours.
#[derive(Default)]
pub(super) struct DayCounts {
    last: std::sync::Mutex<Option<Arc<DayCount>>>,
    counting: AtomicBool,
}

/// One count of the last 24 hours.
pub(super) struct DayCount {
    at: Instant,
    took: Duration,
    counts: Counts,
}

/// The last 24 hours' counts, and their age when they are a reused count.
async fn day_counts(console: &Arc<Console>) -> sqlx::Result<(Arc<DayCount>, Option<Duration>)> {
    let last = console.day_counts.last.lock().unwrap().clone();
    if let Some(last) = last
        && last.took >= SLOW_COUNT
        && last.at.elapsed() < REUSE_FOR
    {
        if last.at.elapsed() >= RECOUNT_AFTER
            && !console.day_counts.counting.swap(true, Ordering::SeqCst)
        {
            let console = console.clone();
            tokio::spawn(async move {
                if let Err(e) = count_day(&console).await {
                    tracing::warn!(error = %e, "console: counting the last 24 hours failed");
                }
                console.day_counts.counting.store(false, Ordering::SeqCst);
            });
        }
        let age = last.at.elapsed();
        return Ok((last, Some(age)));
    }
    Ok((count_day(console).await?, None))
}

/// Counts the last 24 hours, and keeps the count.
async fn count_day(console: &Console) -> sqlx::Result<Arc<DayCount>> {
    let destinations: Vec<&str> = console.destinations.iter().map(|r| r.name()).collect();
    let started = Instant::now();
    let counts = counts(console, &destinations, "1 day").await?;
    let count = Arc::new(DayCount {
        at: started,
        took: started.elapsed(),
        counts,
    });
    *console.day_counts.last.lock().unwrap() = Some(count.clone());
    Ok(count)
}

/// How long the events first seen in the last five minutes waited, by destination.
async fn waits(console: &Console, destinations: &[&str]) -> sqlx::Result<HashMap<String, Wait>> {
    let rows: Vec<(String, i64, Option<f64>, Option<f64>)> = sqlx::query_as(
        "SELECT destination, count(*),
                percentile_cont(0.95) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM first_seen_at - ingested_at))::float8,
                max(EXTRACT(EPOCH FROM first_seen_at - ingested_at))::float8
         FROM deliveries
         WHERE destination = ANY($1) AND first_seen_at >= now() - interval '5 minutes'
           AND ingested_at IS NOT NULL
         GROUP BY destination",
    )
    .bind(destinations)
    .fetch_all(&console.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(d, events, p95, max)| {
            (
                d,
                Wait {
                    events,
                    p95_secs: p95,
                    max_secs: max,
                },
            )
        })
        .filter(|(_, w)| w.events > 0)
        .collect())
}

/// Every enabled destination's work queue and DLQ, by name. A queue that does not exist
/// (topology not declared) is left out.
async fn queues(console: &Console, names: &Names) -> anyhow::Result<HashMap<String, QueueState>> {
    let conn = leadpipe_bus::connect(&console.amqp.url, "leadpipe-console").await?;
    let mut out = HashMap::new();
    for r in &console.destinations {
        for q in [
            names.work_queue(r.destination),
            names.dead_letter_queue(r.destination),
        ] {
            // A channel per queue: a passive declare of a missing queue closes its channel.
            let channel = conn.create_channel().await?;
            if let Ok(state) = channel
                .queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
            {
                out.insert(
                    q,
                    QueueState {
                        messages: state.message_count(),
                        consumers: state.consumer_count(),
                    },
                );
                let _ = channel.close(200, "read".into()).await;
            }
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(out)
}

/// A queue's rates as the management API reports them (messages per second, averaged by the
/// broker over its last few seconds).
#[derive(Debug, Clone, Copy, Default)]
struct Rates {
    /// Published to it.
    publish: f64,
    /// Acknowledged by its consumers.
    ack: f64,
}

/// The namespace's queues' rates from `RABBITMQ_MANAGEMENT_URL` (`None`: not set), with the
/// user, password and vhost of `AMQP_URL`'s first node.
async fn rates(console: &Console) -> Option<Result<HashMap<String, Rates>, String>> {
    let base = console.management.as_ref()?;
    let node = leadpipe_bus::node_urls(&console.amqp.url)
        .first()
        .copied()
        .unwrap_or_default()
        .to_owned();
    let uri: lapin::uri::AMQPUri = match node.parse() {
        Ok(u) => u,
        Err(e) => return Some(Err(format!("AMQP_URL: {e}"))),
    };
    let vhost: String = uri
        .vhost
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let url = format!(
        "{}/api/queues/{vhost}?columns=name,message_stats.publish_details.rate,message_stats.ack_details.rate",
        base.trim_end_matches('/')
    );
    let answer = async {
        let r = console
            .http
            .get(&url)
            .basic_auth(
                &uri.authority.userinfo.username,
                Some(&uri.authority.userinfo.password),
            )
            .send()
            .await?
            .error_for_status()?;
        r.json::<Vec<serde_json::Value>>().await
    }
    .await;
    let queues = match answer {
        Ok(q) => q,
        Err(e) => {
            let e = e.without_url();
            return Some(Err(format!("{base}: {e}")));
        }
    };
    let prefix = format!("{}.", console.amqp.namespace);
    Some(Ok(queues
        .iter()
        .filter_map(|q| {
            let name = q["name"].as_str()?;
            name.starts_with(&prefix).then(|| {
                let stats = &q["message_stats"];
                (
                    name.to_owned(),
                    Rates {
                        publish: stats["publish_details"]["rate"].as_f64().unwrap_or(0.0),
                        ack: stats["ack_details"]["rate"].as_f64().unwrap_or(0.0),
                    },
                )
            })
        })
        .collect()))
}

/// Each enabled destination's sender state, in order.
async fn senders(console: &Console) -> Vec<SenderState> {
    futures::future::join_all(console.destinations.iter().map(|r| sender(console, r))).await
}

/// The sender's URL of a destination (`CONSOLE_SENDERS`, else `CONSOLE_SENDER_URL`).
fn sender_url(console: &Console, r: &Registration) -> String {
    if let Some(url) = console.senders.get(&r.destination) {
        return url.trim_end_matches('/').to_owned();
    }
    console
        .sender_url
        .replace("{service}", r.service)
        .replace("{port}", &r.metrics_port.to_string())
        .trim_end_matches('/')
        .to_owned()
}

async fn sender(console: &Console, r: &Registration) -> SenderState {
    let url = format!("{}/readyz", sender_url(console, r));
    let body: Result<serde_json::Value, reqwest::Error> =
        async { console.http.get(&url).send().await?.json().await }.await;
    let Ok(body) = body else {
        return SenderState {
            state: "unreachable",
            reason: Some(format!("no answer from {url}")),
            dry_run: false,
        };
    };
    let reason = body["reason"].as_str().map(str::to_owned);
    let state = match (body["status"].as_str(), reason.as_deref()) {
        (Some("ready"), _) => "ready",
        (_, Some(r)) if r.starts_with("paused") => "paused",
        (_, Some(r)) if r.starts_with("half-open") => "half-open",
        _ => "not-ready",
    };
    SenderState {
        state,
        reason,
        dry_run: body["dry_run"].as_bool().unwrap_or(false),
    }
}
