//! The rate search of `make bench`: the highest steady rate the whole pipeline holds, and what
//! each event costs in CPU.
//!
//! Steps of `PIPELINE_STEP_SECS` (30) at a steady rate, rising by half each time from 10 % of
//! the bare publisher until a step fails, then one step halfway between the last that held
//! and the first that failed. A step **holds** when ingest accepted every event it was offered
//! (no 503, no error), the load generator kept its schedule (within 5 %), everything was taken
//! up at every destination within 5 s of the last post (nothing backs up), and end-to-end p99
//! (ingest's `ingested_at` → the destination's answer) stayed under 1 s.
//!
//! `PIPELINE_STEPS=1000,1500` runs those rates instead of the search (to compare two builds at
//! the same rate).
//!
//! The load generator is made cheap before a step starts: every body is built and signed
//! ahead (HMAC over the body with a fresh timestamp), and posts go over one keep-alive
//! connection pool. Its CPU, with the fakes' (one process), is counted like a service's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use leadpipe_tests::bench::{cpu_seconds, ms, percentile, pids_named};
use leadpipe_tests::stream::{Processes, event};
use leadpipe_tests::{TEST_SECRET, TEST_SOURCE, sign};

/// Concurrent posters (enough for rate × ingest latency at every rate searched).
const POSTERS: usize = 128;

/// What one step measured.
pub(crate) struct Step {
    pub(crate) rate: f64,
    pub(crate) offered: usize,
    pub(crate) accepted: usize,
    pub(crate) failed: usize,
    /// How long posting the step took (its schedule is `secs`).
    pub(crate) load: Duration,
    pub(crate) secs: f64,
    pub(crate) ingest_p99: Duration,
    pub(crate) e2e_p50: Duration,
    pub(crate) e2e_p99: Duration,
    /// From the last post until every event was taken up everywhere (`None`: not within 30 s).
    pub(crate) drained: Option<Duration>,
    /// CPU seconds of each group of processes over the step and its drain.
    pub(crate) cpu: Vec<f64>,
    /// How many of the accepted events were wins (Google Ads takes only those).
    pub(crate) wins: usize,
    /// The database's transactions, rows inserted, updated, deleted and WAL bytes over the step.
    pub(crate) db: [f64; 5],
}

impl Step {
    /// Why the step did not hold (`None`: it held).
    pub(crate) fn failure(&self) -> Option<String> {
        if self.failed > 0 || self.accepted < self.offered {
            return Some(format!(
                "{} of {} not accepted",
                self.offered - self.accepted,
                self.offered
            ));
        }
        if self.load.as_secs_f64() > self.secs * 1.05 {
            return Some(format!(
                "the load generator fell behind ({:.1} s for {:.0} s)",
                self.load.as_secs_f64(),
                self.secs
            ));
        }
        match self.drained {
            None => return Some("backed up: not taken up within 30 s".into()),
            Some(d) if d > Duration::from_secs(5) => {
                return Some(format!("backed up: {:.1} s to drain", d.as_secs_f64()));
            }
            _ => {}
        }
        if self.e2e_p99 >= Duration::from_secs(1) {
            return Some(format!("e2e p99 {:.0} ms", ms(self.e2e_p99)));
        }
        None
    }

    /// The accepted rate.
    pub(crate) fn throughput(&self) -> f64 {
        self.accepted as f64 / self.load.as_secs_f64().max(1e-9)
    }
}

/// One prepared post: the body and its signature headers, and the order id of a win.
struct Prepared {
    body: Vec<u8>,
    ts: String,
    signature: String,
    order: Option<String>,
}

/// CPU seconds so far of every process of each group, by pid. The broker's and the
/// database's processes are listed again each time (PostgreSQL starts a backend for each new
/// connection): one started during a step counts from zero.
fn cpu_at(cpu_of: &[(String, Vec<u32>)]) -> Vec<HashMap<u32, f64>> {
    cpu_of
        .iter()
        .map(|(name, pids)| {
            let pids = match name.as_str() {
                "rabbitmq" => pids_named("beam.smp"),
                "postgres" => pids_named("postgres"),
                _ => pids.clone(),
            };
            pids.into_iter().map(|p| (p, cpu_seconds(p))).collect()
        })
        .collect()
}

/// The database's counters: commits, rows inserted, updated, deleted (this database), and WAL
/// bytes written (the whole server).
async fn db_counters(pool: &sqlx::PgPool) -> [f64; 5] {
    let (c, i, u, d, w): (i64, i64, i64, i64, f64) = sqlx::query_as(
        "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted,
                pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8
         FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .unwrap_or((0, 0, 0, 0, 0.0));
    [c as f64, i as f64, u as f64, d as f64, w]
}

/// Rows past being sent: claimed and answered, or decided without a request.
async fn taken_up(pool: &sqlx::PgPool) -> (usize, usize) {
    let (all, open): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status IN ('in_flight', 'retrying')) FROM deliveries",
    )
    .fetch_one(pool)
    .await
    .unwrap_or((0, 0));
    (all as usize, open as usize)
}

/// Runs one step: `rate` events/s for `secs`, events `first..` of the mixed stream.
pub(crate) async fn step(
    run: &Processes,
    cpu_of: &[(String, Vec<u32>)],
    rate: f64,
    secs: f64,
    first: usize,
) -> Step {
    let total = (rate * secs) as usize;
    let now = chrono::Utc::now();
    let ts = now.timestamp();
    let prepared: Arc<Vec<Prepared>> = Arc::new(
        (first..first + total)
            .map(|i| {
                let (e, _) = event(i, now - chrono::Duration::milliseconds(i as i64));
                let body = serde_json::to_vec(&e).unwrap();
                Prepared {
                    signature: sign(TEST_SECRET, ts, &body),
                    ts: ts.to_string(),
                    body,
                    order: e["order_id"].as_str().map(str::to_owned),
                }
            })
            .collect(),
    );
    let wins = prepared.iter().filter(|p| p.order.is_some()).count();
    let pool = &run.p.pool;
    let (rows_before, _) = taken_up(pool).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(POSTERS)
        .build()
        .unwrap();
    let url = format!("{}/v1/events", run.ingest.base);
    let cpu_start = cpu_at(cpu_of);
    let db_start = db_counters(pool).await;
    let step_start = chrono::Utc::now();
    let started = Instant::now();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let posted: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let failed = Arc::new(AtomicUsize::new(0));
    let mut posters = Vec::new();
    for w in 0..POSTERS {
        let (http, url, prepared, latencies, posted, failed) = (
            http.clone(),
            url.clone(),
            prepared.clone(),
            latencies.clone(),
            posted.clone(),
            failed.clone(),
        );
        posters.push(tokio::spawn(async move {
            let (mut mine, mut orders) = (Vec::new(), Vec::new());
            for i in (w..prepared.len()).step_by(POSTERS) {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let p = &prepared[i];
                let t = Instant::now();
                let answer = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-leadpipe-source", TEST_SOURCE)
                    .header("x-leadpipe-timestamp", &p.ts)
                    .header("x-leadpipe-signature", &p.signature)
                    .body(p.body.clone())
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status() == 202 => {
                        mine.push(t.elapsed());
                        if let Some(o) = &p.order {
                            orders.push((o.clone(), t));
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies.lock().unwrap().extend(mine);
            posted.lock().unwrap().extend(orders);
        }));
    }
    for p in posters {
        p.await.unwrap();
    }
    let load = started.elapsed();
    let step_end = chrono::Utc::now();
    let accepted = latencies.lock().unwrap().len();
    let want = rows_before + accepted * leadpipe_registry::REGISTRY.destinations().len();
    let drain_start = Instant::now();
    let drained = leadpipe_tests::eventually(Duration::from_secs(30), || async {
        let (all, open) = taken_up(pool).await;
        all >= want && open == 0
    })
    .await
    .then(|| drain_start.elapsed());
    let cpu_end = cpu_at(cpu_of);
    let db_end = db_counters(pool).await;

    // End to end: the delivery log for the destinations that answer at once; Google's
    // receipt (its rows wait for a verdict asked for later, by design).
    let lags: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM sent_at - ingested_at)::float8 FROM deliveries
         WHERE status = 'sent' AND destination <> 'google_ads'
           AND ingested_at >= $1 AND ingested_at <= $2",
    )
    .bind(step_start)
    .bind(step_end + chrono::Duration::seconds(1))
    .fetch_all(pool)
    .await
    .unwrap();
    let mut e2e: Vec<Duration> = lags
        .into_iter()
        .map(|s| Duration::from_secs_f64(s.max(0.0)))
        .collect();
    let orders: std::collections::HashMap<String, Instant> =
        posted.lock().unwrap().iter().cloned().collect();
    for ingest in run.p.google.ingests() {
        for e in ingest.body["events"].as_array().into_iter().flatten() {
            if let Some(at) = e["transactionId"].as_str().and_then(|t| orders.get(t)) {
                e2e.push(ingest.at.saturating_duration_since(*at));
            }
        }
    }
    e2e.sort();
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    Step {
        rate,
        offered: total,
        accepted,
        failed: failed.load(Ordering::Relaxed),
        load,
        secs,
        ingest_p99: percentile(&lat, 0.99),
        e2e_p50: percentile(&e2e, 0.5),
        e2e_p99: percentile(&e2e, 0.99),
        drained,
        cpu: cpu_end
            .iter()
            .zip(&cpu_start)
            .map(|(end, start)| {
                end.iter()
                    .map(|(pid, t)| t - start.get(pid).copied().unwrap_or(0.0))
                    .sum()
            })
            .collect(),
        wins,
        db: std::array::from_fn(|i| db_end[i] - db_start[i]),
    }
}

/// Prints one step's line.
pub(crate) fn report(s: &Step) {
    println!(
        "  {:>7.0}/s offered: {:>7.0}/s accepted, ingest p99 {:>6.1} ms, e2e p50 {:>6.1} ms p99 {:>7.1} ms, drained {:>5} — {}",
        s.rate,
        s.throughput(),
        ms(s.ingest_p99),
        ms(s.e2e_p50),
        ms(s.e2e_p99),
        s.drained
            .map_or("no".into(), |d| format!("{:.1}s", d.as_secs_f64())),
        s.failure()
            .map_or("held".into(), |why| format!("failed: {why}"))
    );
}

/// Searches the highest rate that holds, from `ceiling` (the bare publisher); returns every
/// step in order and the index of the highest that held (`None`: not even the first).
pub(crate) async fn search(
    run: &Processes,
    cpu_of: &[(String, Vec<u32>)],
    ceiling: f64,
    secs: f64,
) -> (Vec<Step>, Option<usize>) {
    let mut steps: Vec<Step> = Vec::new();
    let mut next = 0usize;
    // Given rates instead of a search (to compare builds at the same rate).
    if let Ok(list) = std::env::var("PIPELINE_STEPS") {
        let mut best = None;
        for rate in list.split(',').filter_map(|r| r.trim().parse::<f64>().ok()) {
            let s = step(run, cpu_of, rate, secs, next).await;
            next += s.offered;
            report(&s);
            cost(&s, cpu_of);
            let held = s.failure().is_none();
            steps.push(s);
            if held {
                best = Some(steps.len() - 1);
            }
        }
        return (steps, best);
    }
    let mut rate = (ceiling * 0.10 / 50.0).round().max(1.0) * 50.0;
    let mut best: Option<usize> = None;
    loop {
        let s = step(run, cpu_of, rate, secs, next).await;
        next += s.offered;
        report(&s);
        let held = s.failure().is_none();
        steps.push(s);
        if !held {
            break;
        }
        best = Some(steps.len() - 1);
        rate = (rate * 1.5 / 50.0).round() * 50.0;
    }
    // Once halfway between the last that held and the first that failed.
    if let Some(b) = best {
        let (low, high) = (steps[b].rate, steps[steps.len() - 1].rate);
        let mid = ((low + high) / 2.0 / 50.0).round() * 50.0;
        if mid > low && mid < high {
            let s = step(run, cpu_of, mid, secs, next).await;
            report(&s);
            let held = s.failure().is_none();
            steps.push(s);
            if held {
                best = Some(steps.len() - 1);
            }
        }
    }
    (steps, best)
}

/// Prints each group's CPU per event of `s` (and per won for google-ads-sender).
pub(crate) fn cost(s: &Step, cpu_of: &[(String, Vec<u32>)]) {
    println!(
        "\nCPU per event at {:.0}/s ({} events, {} of them wins; µs of CPU per accepted event):",
        s.rate, s.accepted, s.wins
    );
    let per = |seconds: f64, n: usize| seconds * 1e6 / n.max(1) as f64;
    let mut own = 0.0;
    for ((name, _), seconds) in cpu_of.iter().zip(&s.cpu) {
        let extra = if name == "google_ads" {
            format!(" ({:.0} per won)", per(*seconds, s.wins))
        } else {
            String::new()
        };
        println!("  {name:<12} {:>8.0} µs{extra}", per(*seconds, s.accepted));
        if !matches!(name.as_str(), "rabbitmq" | "postgres" | "load+fakes") {
            own += per(*seconds, s.accepted);
        }
    }
    println!(
        "  {:<12} {:>8.0} µs (ingest and the senders)",
        "pipeline", own
    );
    let n = s.accepted.max(1) as f64;
    println!(
        "database per event: {:.2} transactions, {:.2} rows inserted, {:.2} updated, {:.2} deleted, {:.0} bytes of WAL",
        s.db[0] / n,
        s.db[1] / n,
        s.db[2] / n,
        s.db[3] / n,
        s.db[4] / n
    );
}
