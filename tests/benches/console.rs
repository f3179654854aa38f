//! `make bench` — the operator console's pages on a delivery log of 1,000,000 rows.
//!
//! The log is seeded as a busy week would leave it: 200,000 events at each of the five
//! destinations, first taken evenly over the last seven days (so the last day holds about
//! 143,000 rows and the last hour about 6,000), in the day partitions the senders keep, with
//! the indexes the migrations create; analysed. `CONSOLE_BENCH_DAYS=1` puts all of them in the
//! last day (the overview's worst case). Meta's dead-letter queue holds 1,000 messages.
//!
//! Each page is asked for 30 times through the release binary, after two warm-up requests.
//! Beside each page's time is its own query's time run straight against PostgreSQL in the
//! same run (the database's ceiling for that page), and how many rows its plan reads by
//! sequential scans (0: only indexes and the rows they point to).
//! The target is every page under 200 ms at p95. Where counting the last 24 hours takes
//! over 50 ms, the overview shows the last count with its age and counts again in the
//! background (its "page / query" ratio then falls under 1); the bench says which it did.

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use leadpipe_bus::{OutgoingMessage, Publisher, PublisherSettings};
use leadpipe_tests::bench::{ms, percentile, release_bin};
use leadpipe_tests::{Pipeline, amqp_url};

const EVENTS: i64 = 200_000;
const DEAD_LETTERS: usize = 1_000;
const REQUESTS: usize = 30;
const TARGET: Duration = Duration::from_millis(200);

/// Over how many days the rows are spread (`CONSOLE_BENCH_DAYS`, default 7).
fn days() -> i32 {
    std::env::var("CONSOLE_BENCH_DAYS")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(7)
}

async fn seed(p: &Pipeline) {
    let now = Utc::now();
    for d in leadpipe_registry::REGISTRY.destinations() {
        for day in (0..8).rev() {
            leadpipe_db::partitions::maintain(
                &p.pool,
                d.as_str(),
                TimeDelta::days(30),
                now - TimeDelta::days(day),
            )
            .await
            .unwrap();
        }
    }
    sqlx::query(
        "INSERT INTO deliveries (destination, event_id, event_name, status, attempts, source,
                                 lead_id, order_id, last_http_status, last_error_code,
                                 last_error_message, ingested_at, first_seen_at, updated_at,
                                 occurred_at, bucket)
         SELECT d.name, md5(g::text), CASE WHEN g % 10 = 0 THEN 'won' ELSE 'lead' END,
                CASE WHEN g % 100 < 2 THEN 'dead_lettered' WHEN g % 100 < 12 THEN 'skipped_unmapped'
                     WHEN g % 100 < 15 THEN 'blocked_consent' ELSE 'sent' END,
                1, 'source-' || (g % 3), 'L-' || (g / 3), CASE WHEN g % 10 = 0 THEN 'O-' || g END,
                CASE WHEN g % 100 < 2 THEN 400 ELSE 200 END,
                CASE WHEN g % 100 < 2 THEN 'http_400' END,
                CASE WHEN g % 100 < 2 THEN 'refused by the destination' END,
                t - interval '80 ms', t, t, t - interval '2 s',
                date_bin('1 day', t - interval '2 s', 'epoch')
         FROM generate_series(1, $1) g,
              unnest(array['meta', 'ga4', 'google_ads', 'crm', 'tiktok']) d(name),
              LATERAL (SELECT now() - (g::float8 / $1) * make_interval(days => $2) AS t) x",
    )
    .bind(EVENTS)
    .bind(days())
    .execute(&p.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE deliveries")
        .execute(&p.pool)
        .await
        .unwrap();

    // Meta's dead letters.
    let stop = CancellationToken::new();
    let publisher = Publisher::start(
        PublisherSettings::new(amqp_url(), "bench-console", leadpipe_tests::all_topology()),
        p.names.clone(),
        stop.clone(),
    );
    assert!(publisher.wait_ready(Duration::from_secs(20)).await);
    let exchange = p.names.dead_letter_exchange();
    for i in 0..DEAD_LETTERS {
        let id = format!("dead-{i}");
        let headers = leadpipe_bus::publisher::string_headers([
            (
                leadpipe_bus::headers::ERROR_CODE,
                format!("http_{}", 400 + i % 3),
            ),
            (leadpipe_bus::headers::FAILED_AT, Utc::now().to_rfc3339()),
        ]);
        publisher
            .publish(&OutgoingMessage {
                exchange: &exchange,
                routing_key: "meta",
                body: br#"{"schema_version":1}"#,
                message_id: &id,
                headers,
                expiration_ms: None,
            })
            .await
            .unwrap();
    }
    stop.cancel();
}

/// The median and p95 of `n` runs of `f`.
async fn time<F, Fut>(n: usize, mut f: F) -> (Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        f().await;
        took.push(started.elapsed());
    }
    took.sort();
    (percentile(&took, 0.5), percentile(&took, 0.95))
}

/// How many rows PostgreSQL's plan for `sql` reads by sequential scans (run once with
/// `EXPLAIN ANALYZE`): 0 where every table is reached through an index.
async fn scanned(p: &Pipeline, sql: &str) -> f64 {
    fn walk(node: &serde_json::Value) -> f64 {
        let own = if node["Node Type"] == "Seq Scan" {
            node["Actual Rows"].as_f64().unwrap_or(0.0)
                * node["Actual Loops"].as_f64().unwrap_or(1.0)
                + node["Rows Removed by Filter"].as_f64().unwrap_or(0.0)
        } else {
            0.0
        };
        own + node["Plans"]
            .as_array()
            .map_or(0.0, |children| children.iter().map(walk).sum())
    }
    let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) {sql}"
    )))
    .fetch_one(&p.pool)
    .await
    .unwrap();
    walk(&plan[0]["Plan"])
}

#[tokio::main]
async fn main() {
    let p = Pipeline::new().await;
    let started = Instant::now();
    seed(&p).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries")
        .fetch_one(&p.pool)
        .await
        .unwrap();
    let size: String =
        sqlx::query_scalar("SELECT pg_size_pretty(sum(pg_total_relation_size(relid))) FROM pg_partition_tree('deliveries')")
            .fetch_one(&p.pool)
            .await
            .unwrap();
    println!(
        "console benchmark — {} CPUs, {rows} delivery rows over {} day(s) ({size} with indexes) seeded in {:.1}s, {DEAD_LETTERS} dead letters at meta",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        days(),
        started.elapsed().as_secs_f64()
    );

    let token = "bench-token";
    let (mut console, base) = leadpipe_tests::spawn_console(
        &p,
        &release_bin("leadpipe"),
        &[("CONSOLE_TOKEN", token.into())],
    )
    .await;
    let http = reqwest::Client::new();

    let hour_ago = (Utc::now() - TimeDelta::hours(1)).format("%Y-%m-%dT%H:%M");
    let soon = (Utc::now() + TimeDelta::minutes(5)).format("%Y-%m-%dT%H:%M");
    let window = |w: &str| {
        format!(
            "SELECT destination, status, count(*) FROM deliveries
             WHERE destination IN ('meta', 'ga4', 'google_ads', 'crm', 'tiktok')
               AND first_seen_at >= now() - interval '{w}' GROUP BY 1, 2"
        )
    };
    let id = "'c4ca4238a0b923820dcc509a6f75849b'"; // md5('1')
    let find = |filter: &str| {
        format!(
            "SELECT * FROM deliveries WHERE destination IN ('meta', 'ga4', 'google_ads', 'crm', 'tiktok')
               AND {filter} ORDER BY first_seen_at DESC LIMIT 500"
        )
    };
    let pages: Vec<(&str, String, Vec<String>)> = vec![
        (
            "overview",
            "/".into(),
            vec![window("1 hour"), window("1 day")],
        ),
        (
            "find by event_id",
            "/events?event_id=c4ca4238a0b923820dcc509a6f75849b".into(),
            vec![find(&format!("event_id = {id}"))],
        ),
        (
            "find by lead_id",
            "/events?lead_id=L-33333".into(),
            vec![find("lead_id = 'L-33333'")],
        ),
        (
            "find by order_id",
            "/events?order_id=O-100000".into(),
            vec![find("order_id = 'O-100000'")],
        ),
        (
            "find by source, last hour",
            format!("/events?source=source-1&from={hour_ago}&to={soon}"),
            vec![find(
                "source = 'source-1' AND first_seen_at >= now() - interval '1 hour'",
            )],
        ),
        (
            "dead letters (1,000 in the DLQ)",
            "/dead-letters/meta".into(),
            vec![],
        ),
    ];
    println!(
        "{:<34} {:>9} {:>9} {:>11} {:>14} {:>10}",
        "page", "p50 ms", "p95 ms", "query ms", "page / query", "seq rows"
    );
    let mut worst = Duration::ZERO;
    for (name, path, queries) in &pages {
        let url = format!("{base}{path}");
        let get = || async {
            let r = http.get(&url).bearer_auth(token).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
            r.bytes().await.unwrap();
        };
        get().await;
        get().await;
        let (p50, p95) = time(REQUESTS, get).await;
        worst = worst.max(p95);
        let (query, plan) = if queries.is_empty() {
            (None, "-".to_owned())
        } else {
            let (q50, _) = time(REQUESTS, || async {
                for q in queries {
                    sqlx::query(sqlx::AssertSqlSafe(q.clone()))
                        .fetch_all(&p.pool)
                        .await
                        .unwrap();
                }
            })
            .await;
            let mut rows = 0.0;
            for q in queries {
                rows += scanned(&p, q).await;
            }
            (Some(q50), format!("{rows:.0}"))
        };
        println!(
            "{name:<34} {:>9.1} {:>9.1} {:>11} {:>14} {plan:>10}",
            ms(p50),
            ms(p95),
            query.map_or("-".into(), |q| format!("{:.1}", ms(q))),
            query.map_or("-".into(), |q| format!(
                "{:.2}x",
                p50.as_secs_f64() / q.as_secs_f64().max(1e-6)
            )),
        );
    }
    // Whether the overview showed a reused count of the day (counting it was slow).
    let overview = http
        .get(format!("{base}/"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    match overview.find(r#"id="day-counted""#) {
        Some(at) => {
            let note = &overview[overview[at..].find('>').map_or(at, |i| at + i + 1)..];
            println!(
                "overview: the last 24 hours' counts are reused — \"{}\"",
                &note[..note.find('<').unwrap_or(note.len())]
            );
        }
        None => println!("overview: the last 24 hours are counted on every page"),
    }
    println!(
        "slowest page p95 {:.1} ms: {:.0}% of the {} ms target — {}",
        ms(worst),
        100.0 * worst.as_secs_f64() / TARGET.as_secs_f64(),
        TARGET.as_millis(),
        if worst < TARGET { "met" } else { "NOT met" }
    );
    let _ = console.start_kill();
    let _ = console.wait().await;
    p.cleanup().await;
}
