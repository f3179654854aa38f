//! `make bench` (60 s) and `make soak` (10 min) — the whole pipeline under a steady load.
//!
//! The release binaries of ingest and every registered sender, one process each, on the real broker
//! and database, with fakes of every destination (answering at once, keeping counts only).
//! In one run:
//! 1. **ceiling**: a bare confirmed publisher into the same exchange (fan-out to every registered
//!    work queues), the broker's own pace on this machine in this run;
//! 2. **load**: signed single-event `POST /v1/events` at a steady rate (`PIPELINE_RATE`,
//!    default 2,000 events/s) for `PIPELINE_SECS` (60; `make soak`: 600), the mixed stream of
//!    the end-to-end tests (every event name, consent denied, refusals);
//! 3. **results**: events accepted per second and the ratio to the ceiling; ingest's answer
//!    p50/p99; end to end (`ingested_at` → the delivery log's `sent_at`, after the
//!    destination's answer) p50/p99 per destination and per minute (the lag over time); the
//!    drain after the last post; RSS of every service after warm-up and at the end, its
//!    growth, and the peak (VmHWM); the delivery log's size and PostgreSQL's checkpoints at
//!    the start and the end (and the size every 30 s).
//!
//! Without `PIPELINE_RATE` (`make bench`), it searches the highest rate the pipeline holds
//! instead (`pipeline/search.rs`), prints it as a share of the bare publisher and the CPU each
//! event costs in every process, and writes the rate to `target/bench/held-rate`, where
//! `make soak` takes it. `BENCH_WITHOUT_CONSOLE_INDEXES=1` drops the console's lookup
//! indexes first (to measure what they cost the senders).
//!
//! With `SOAK_RETENTION_SECS` (`make soak` sets 180) the delivery log is cut into one-minute
//! partitions and every sender keeps its rows that long (`DELIVERY_RETENTION_SECS`): the log's
//! size must level off. Rows are then dropped during the run, so what was decided is counted
//! per partition as the run goes (each partition's count, seen every 30 s, before it is
//! dropped), and the end-to-end figures come from the rows still kept at the end.

#[path = "pipeline/search.rs"]
mod pipeline_search;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leadpipe_bus::Names;
use leadpipe_tests::bench::{bare_publisher, cpu_seconds, memory_mib, ms, percentile, pids_named};
use leadpipe_tests::stream::{Processes, event};
use leadpipe_tests::{Broker, Pipeline, signed};

const WORKERS: usize = 256;
const WARMUP: Duration = Duration::from_secs(10);

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn purge(names: &Names) {
    let broker = Broker::connect(names.clone()).await;
    for q in names.all_queues(&leadpipe_registry::REGISTRY.destinations()) {
        let _ = broker
            .channel
            .queue_purge(q.as_str().into(), Default::default())
            .await;
    }
}

/// The delivery log's size on disk (every partition: tables, indexes, TOAST) and its rows.
async fn log_size(pool: &sqlx::PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT COALESCE(sum(pg_total_relation_size(relid)), 0)::bigint,
                (SELECT count(*) FROM deliveries)
         FROM pg_partition_tree('deliveries') WHERE isleaf",
    )
    .fetch_one(pool)
    .await
    .unwrap_or((0, 0))
}

/// Counts the decided rows of every partition, keeping the largest count seen for each (a
/// partition's rows are all decided long before its retention drops it).
async fn record_decided(pool: &sqlx::PgPool, seen: &Mutex<std::collections::HashMap<String, i64>>) {
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tableoid::regclass::text, count(*) FROM deliveries
         WHERE status NOT IN ('in_flight', 'retrying', 'accepted') GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let mut seen = seen.lock().unwrap();
    for (table, n) in counts {
        let e = seen.entry(table).or_default();
        *e = (*e).max(n);
    }
}

#[tokio::main]
async fn main() {
    // Without PIPELINE_RATE, `make bench` searches the rate the pipeline holds.
    let search = std::env::var("PIPELINE_RATE").is_err();
    let rate = env_f64("PIPELINE_RATE", 2000.0);
    let secs = env_f64("PIPELINE_SECS", 60.0);
    let retention_secs = std::env::var("SOAK_RETENTION_SECS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok());

    // Arrange: namespace, database, fakes keeping counts only.
    let p = Pipeline::new().await;
    for fake in &p.fakes {
        fake.set_lean();
    }
    let sample = serde_json::to_vec(&leadpipe_tests::envelope_of(
        &event(0, chrono::Utc::now()).0,
    ))
    .unwrap();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    if search {
        println!(
            "whole pipeline: the highest steady rate it holds (steps of {:.0} s), one process per \
             service (release), {cores} cores shared with RabbitMQ and PostgreSQL",
            env_f64("PIPELINE_STEP_SECS", 30.0)
        );
    } else {
        println!(
            "whole pipeline: {rate:.0} events/s offered for {secs:.0} s, {WORKERS} connections, \
             one process per service (release), {cores} cores shared with RabbitMQ and PostgreSQL"
        );
    }
    let ceiling = bare_publisher(
        &p.names,
        &sample,
        64,
        Duration::from_secs(6),
        Duration::from_secs(1),
    )
    .await;
    purge(&p.names).await;
    println!(
        "ceiling: bare confirmed publisher, {} B envelopes fanned out to {} quorum queues: {ceiling:.0} msg/s",
        sample.len(),
        leadpipe_registry::REGISTRY.all().len()
    );
    let mut env = vec![
        ("BATCH_SIZE", "500".to_owned()),
        ("BATCH_MAX_WAIT_MS", "200".to_owned()),
        ("CONCURRENCY", "4".to_owned()),
        ("LEASE_SECS", "60".to_owned()),
    ];
    if let Some(r) = retention_secs {
        leadpipe_db::partitions::set_partition_width(&p.pool, chrono::TimeDelta::minutes(1))
            .await
            .expect("an empty delivery log takes one-minute partitions");
        env.push(("DELIVERY_RETENTION_SECS", r.to_string()));
        println!(
            "delivery log: one-minute partitions, every destination's rows kept {r} s \
             (DELIVERY_RETENTION_SECS)"
        );
    }
    if std::env::var_os("BENCH_WITHOUT_CONSOLE_INDEXES").is_some() {
        sqlx::query("DROP INDEX deliveries_first_seen, deliveries_lead_id, deliveries_order_id")
            .execute(&p.pool)
            .await
            .unwrap();
    }
    let run = Processes::start(p, None, 1, env).await;
    let mut pids = vec![("ingest".to_owned(), run.ingest.child.id().unwrap())];
    for (d, child) in &run.senders {
        pids.push((d.as_str().to_owned(), child.id().unwrap()));
    }

    // Memory: a sample after warm-up, and at the end.
    let warm: Arc<Mutex<Vec<f64>>> = Arc::default();
    {
        let (warm, pids) = (warm.clone(), pids.clone());
        tokio::spawn(async move {
            tokio::time::sleep(WARMUP).await;
            *warm.lock().unwrap() = pids
                .iter()
                .map(|(_, pid)| memory_mib(*pid, "VmRSS"))
                .collect();
        });
    }

    // CPU: every service, the broker, the database and this process (load and fakes).
    let mut cpu_of: Vec<(String, Vec<u32>)> = pids
        .iter()
        .map(|(name, pid)| (name.clone(), vec![*pid]))
        .collect();
    cpu_of.push(("rabbitmq".into(), pids_named("beam.smp")));
    cpu_of.push(("postgres".into(), pids_named("postgres")));
    cpu_of.push(("load+fakes".into(), vec![std::process::id()]));
    let cpu_now = |cpu_of: &[(String, Vec<u32>)]| -> Vec<f64> {
        cpu_of
            .iter()
            .map(|(_, pids)| pids.iter().map(|p| cpu_seconds(*p)).sum())
            .collect()
    };
    let cpu_start = cpu_now(&cpu_of);
    if search {
        let (steps, best) =
            pipeline_search::search(&run, &cpu_of, ceiling, env_f64("PIPELINE_STEP_SECS", 30.0))
                .await;
        println!("\nsummary:");
        match best {
            Some(b) => {
                let s = &steps[b];
                println!(
                    "  held {:.0} events/s (offered {:.0}/s, e2e p99 {:.0} ms, ingest p99 {:.1} ms) = \
                     {:.1} % of the bare confirmed publisher ({ceiling:.0} msg/s) in the same run; \
                     target >= 25 %: {}",
                    s.throughput(),
                    s.rate,
                    ms(s.e2e_p99),
                    ms(s.ingest_p99),
                    100.0 * s.throughput() / ceiling,
                    if s.throughput() >= 0.25 * ceiling {
                        "PASS"
                    } else {
                        "MISS"
                    }
                );
                if std::env::var_os("PIPELINE_STEPS").is_none() {
                    pipeline_search::cost(s, &cpu_of);
                }
                // `make soak` runs at the rate found (not at rates given by PIPELINE_STEPS).
                if std::env::var_os("PIPELINE_STEPS").is_none() {
                    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("../target/bench/held-rate");
                    let _ = std::fs::create_dir_all(file.parent().unwrap());
                    std::fs::write(&file, format!("{:.0}\n", s.rate)).unwrap();
                    println!("  (written to target/bench/held-rate for `make soak`)");
                }
            }
            None => println!(
                "  not even the first step held: {}",
                steps[0].failure().unwrap_or_default()
            ),
        }
        run.stop().await;
        return;
    }
    let checkpoints = || async {
        let (timed, requested): (i64, i64) =
            sqlx::query_as("SELECT checkpoints_timed, checkpoints_req FROM pg_stat_bgwriter")
                .fetch_one(&run.p.pool)
                .await
                .unwrap_or((0, 0));
        (timed, requested)
    };
    let checkpoints_start = checkpoints().await;
    let log_start = log_size(&run.p.pool).await;

    // Act: the steady load.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(WORKERS)
        .build()
        .unwrap();
    let started = Instant::now();
    let total = (rate * secs) as usize;
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    // When each win was posted, by order id: Google's latency is to its receipt (its verdict
    // is asked for later, by design).
    let posted_orders: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let so_far = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Decided rows per partition, as last seen (only while rows are dropped during the run).
    let seen: Arc<Mutex<std::collections::HashMap<String, i64>>> = Arc::default();
    // Progress every 30 s: accepted so far, the memory of every service, the log's size.
    let progress = {
        let (so_far, failures, pids) = (so_far.clone(), failures.clone(), pids.clone());
        let (pool, seen) = (run.p.pool.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let rss: Vec<String> = pids
                    .iter()
                    .map(|(name, pid)| format!("{name} {:.0}", memory_mib(*pid, "VmRSS")))
                    .collect();
                let (bytes, rows) = log_size(&pool).await;
                println!(
                    "  {:>4.0} s: {} accepted, {} failed; delivery log {:.0} MiB, {rows} rows; RSS MiB: {}",
                    started.elapsed().as_secs_f64(),
                    so_far.load(std::sync::atomic::Ordering::Relaxed),
                    failures.load(std::sync::atomic::Ordering::Relaxed),
                    bytes as f64 / (1024.0 * 1024.0),
                    rss.join(", ")
                );
                if retention_secs.is_some() {
                    record_decided(&pool, &seen).await;
                }
            }
        })
    };
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let so_far = so_far.clone();
        let (http, base, latencies, failures, posted_orders) = (
            http.clone(),
            run.ingest.base.clone(),
            latencies.clone(),
            failures.clone(),
            posted_orders.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut orders = Vec::new();
            for i in (w..total).step_by(WORKERS) {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                // The stream's events happened 30 minutes before `now`; with a retention of
                // minutes they must be recent, or they would be past it on arrival.
                let now = chrono::Utc::now()
                    + if retention_secs.is_some() {
                        chrono::Duration::minutes(30)
                    } else {
                        chrono::Duration::zero()
                    };
                let (e, _) = event(i, now - chrono::Duration::milliseconds(i as i64));
                let body = serde_json::to_vec(&e).unwrap();
                let t = Instant::now();
                let answer = signed(http.post(format!("{base}/v1/events")), body)
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status() == 202 => {
                        mine.push(t.elapsed());
                        so_far.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if let Some(order) = e["order_id"].as_str() {
                            orders.push((order.to_owned(), t));
                        }
                    }
                    _ => {
                        failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            latencies.lock().unwrap().extend(mine);
            posted_orders.lock().unwrap().extend(orders);
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    progress.abort();
    let load_time = started.elapsed();
    let accepted = latencies.lock().unwrap().len();

    // Drain: every accepted event decided at every destination.
    let pool = &run.p.pool;
    let decided = || async {
        if retention_secs.is_some() {
            record_decided(pool, &seen).await;
            return seen.lock().unwrap().values().sum::<i64>() as usize;
        }
        let (c,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM deliveries WHERE status NOT IN ('in_flight', 'retrying', 'accepted')",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        c as usize
    };
    let drain_started = Instant::now();
    let drained = leadpipe_tests::eventually(Duration::from_secs(300), || async {
        decided().await >= accepted * leadpipe_registry::REGISTRY.destinations().len()
    })
    .await;
    let drain = drain_started.elapsed();
    let cpu_end = cpu_now(&cpu_of);
    let checkpoints_end = checkpoints().await;
    let wall = started.elapsed().as_secs_f64();
    let end_rss: Vec<f64> = pids
        .iter()
        .map(|(_, pid)| memory_mib(*pid, "VmRSS"))
        .collect();
    let peak_rss: Vec<f64> = pids
        .iter()
        .map(|(_, pid)| memory_mib(*pid, "VmHWM"))
        .collect();

    // Results.
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    let throughput = accepted as f64 / load_time.as_secs_f64();
    println!(
        "\nload: {accepted} accepted, {} failed, in {:.1} s",
        failures.load(std::sync::atomic::Ordering::Relaxed),
        load_time.as_secs_f64()
    );
    println!(
        "ingest answers (202 after confirm): p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99))
    );
    println!(
        "drain after the last post: {:.1} s{}",
        drain.as_secs_f64(),
        if drained {
            ""
        } else {
            " (NOT drained within 300 s)"
        }
    );
    // End to end: the delivery log for the three destinations that answer at once; the fake's
    // receipt for Google (the row turns `sent` only when its verdict is asked for).
    let logged: Vec<(String, f64, f64)> = sqlx::query_as(
        "SELECT destination,
                extract(epoch FROM ingested_at - min(ingested_at) OVER ())::float8,
                extract(epoch FROM sent_at - ingested_at)::float8
         FROM deliveries WHERE status = 'sent' AND destination <> 'google_ads'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut per: std::collections::BTreeMap<String, Vec<Duration>> = Default::default();
    let mut by_minute: std::collections::BTreeMap<i64, Vec<Duration>> = Default::default();
    for (d, since_start, lag) in logged {
        let lag = Duration::from_secs_f64(lag.max(0.0));
        per.entry(d).or_default().push(lag);
        by_minute
            .entry((since_start / 60.0) as i64)
            .or_default()
            .push(lag);
    }
    let posted: std::collections::HashMap<String, Instant> =
        posted_orders.lock().unwrap().iter().cloned().collect();
    for ingest in run.p.google.ingests() {
        for e in ingest.body["events"].as_array().into_iter().flatten() {
            if let Some(at) = e["transactionId"].as_str().and_then(|t| posted.get(t)) {
                let lag = ingest.at.saturating_duration_since(*at);
                per.entry("google_ads".into()).or_default().push(lag);
                by_minute
                    .entry((at.duration_since(started).as_secs() / 60) as i64)
                    .or_default()
                    .push(lag);
            }
        }
    }
    let mut all: Vec<Duration> = per.values().flatten().copied().collect();
    all.sort();
    let all_p99 = percentile(&all, 0.99).as_secs_f64();
    println!(
        "\nend to end (ingested_at → delivery log `sent`; Google: post → the fake's receipt){}:",
        if retention_secs.is_some() {
            " — the rows still kept at the end (retention)"
        } else {
            ""
        }
    );
    println!(
        "  {:<12} {:>9} {:>10} {:>10}",
        "destination", "sent", "p50 ms", "p99 ms"
    );
    for (d, lags) in &mut per {
        lags.sort();
        println!(
            "  {d:<12} {:>9} {:>10.1} {:>10.1}",
            lags.len(),
            ms(percentile(lags, 0.5)),
            ms(percentile(lags, 0.99))
        );
    }
    println!(
        "  {:<12} {:>9} {:>10.1} {:>10.1}",
        "all",
        all.len(),
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99))
    );
    println!("\nlag p99 by minute of ingestion:");
    for (m, mut lags) in by_minute {
        lags.sort();
        println!(
            "  minute {:>2}: {:>7} deliveries, p99 {:>7.1} ms",
            m + 1,
            lags.len(),
            ms(percentile(&lags, 0.99))
        );
    }
    let warm = warm.lock().unwrap().clone();
    println!("\nmemory (MiB):");
    println!(
        "  {:<12} {:>10} {:>10} {:>10} {:>10}",
        "service", "after 10 s", "end", "growth", "peak"
    );
    for (i, (name, _)) in pids.iter().enumerate() {
        let w = warm.get(i).copied().unwrap_or(f64::NAN);
        println!(
            "  {name:<12} {w:>10.1} {:>10.1} {:>+10.1} {:>10.1}",
            end_rss[i],
            end_rss[i] - w,
            peak_rss[i]
        );
    }
    println!("\nCPU over load and drain ({wall:.0} s; 2 cores = 200 %):");
    for (i, (name, _)) in cpu_of.iter().enumerate() {
        let used = cpu_end[i] - cpu_start[i];
        println!("  {name:<12} {used:>8.1} s {:>6.0} %", 100.0 * used / wall);
    }
    let setting = |name: &'static str| async move {
        sqlx::query_scalar::<_, String>("SELECT current_setting($1)")
            .bind(name)
            .fetch_one(pool)
            .await
            .unwrap_or_default()
    };
    let log_end = log_size(pool).await;
    let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
    println!(
        "\ndelivery log: {:.1} MiB, {} rows at the start; {:.1} MiB, {} rows at the end \
         ({:.0} bytes per row)",
        mib(log_start.0),
        log_start.1,
        mib(log_end.0),
        log_end.1,
        if log_end.1 > 0 {
            log_end.0 as f64 / log_end.1 as f64
        } else {
            0.0
        },
    );
    println!(
        "\nPostgreSQL: {} checkpoints forced by WAL volume, {} timed (max_wal_size {}, \
         shared_buffers {}, wal_compression {})",
        checkpoints_end.1 - checkpoints_start.1,
        checkpoints_end.0 - checkpoints_start.0,
        setting("max_wal_size").await,
        setting("shared_buffers").await,
        setting("wal_compression").await,
    );
    println!("\nsummary:");
    println!(
        "  accepted {throughput:.0} events/s = {:.0} % of the broker's bare publisher ({ceiling:.0} msg/s); target >= 2,000 events/s: {}",
        100.0 * throughput / ceiling,
        if throughput >= 2000.0 * 0.98 && drained {
            "PASS"
        } else {
            "MISS"
        }
    );
    println!(
        "  end-to-end p99 {:.0} ms; target < 1,000 ms: {}",
        all_p99 * 1000.0,
        if all_p99 < 1.0 && drained {
            "PASS"
        } else {
            "MISS"
        }
    );
    if let Ok(path) = std::env::var("PIPELINE_SUMMARY") {
        // One line for `scripts/bench-cluster.sh`, which runs this bench on one node and on
        // the cluster and sets the two side by side.
        let line = format!(
            "{}\t{throughput:.0}\t{:.0}\t{:.1}\t{ceiling:.0}\t{}\n",
            std::env::var("PIPELINE_LABEL").unwrap_or_else(|_| "pipeline".into()),
            all_p99 * 1000.0,
            ms(percentile(&lat, 0.99)),
            if drained { "drained" } else { "NOT drained" }
        );
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .unwrap_or_else(|e| panic!("PIPELINE_SUMMARY {path}: {e}"));
    }
    run.stop().await;
}
