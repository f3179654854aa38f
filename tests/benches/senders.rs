//! `make bench` — meta-sender and ga4-sender throughput against the consumer runtime's own
//! ceiling, in one table.
//!
//! In one run, against one database seeded with 1,000,000 delivery rows (analysed, so the
//! planner sees a production-sized table):
//! 1. **chassis ceiling**: the runtime with a null destination (consume, batch claim in
//!    Postgres, outcome commit, one multiple ack per batch; no HTTP);
//! 2. **meta-sender, CPU-bound**: the fake Meta answers at once; one replica, then two;
//! 3. **meta-sender, destination-bound**: the fake answers after 50 ms; one replica, then two;
//! 4. **ga4-sender**, the same two cases against a fake GA4 (one request per client id: each
//!    preloaded lead is its own browser, so one event per request);
//! 5. **google-ads-sender**, the same against a fake Data Manager (wins with a gclid; what is
//!    timed is Google accepting them — their status is asked for 30 minutes later);
//! 6. **crm-writer**, the same against a webhook receiver that verifies every signature (one
//!    signed POST per lead, 16 under way per batch).
//!
//! Each run preloads its own namespace's queue, then times the drain.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use leadpipe_bus::{Destination, Names, OutgoingMessage, Publisher, PublisherSettings};
use leadpipe_consumer::{Outcome, Sender};
use leadpipe_tests::fake_crm::FakeCrm;
use leadpipe_tests::fake_ga4::FakeGa4;
use leadpipe_tests::fake_google::FakeGoogle;
use leadpipe_tests::fake_meta::FakeMeta;
use leadpipe_tests::{
    FnAdapter, Pipeline, SenderOptions, amqp_url, envelope_of, recent_lead, unique_namespace,
};

const EVENTS: usize = 30_000;
const SEED_ROWS: i64 = 1_000_000;

async fn preload(names: &Names, run: &str, keep: Destination) {
    let stop = CancellationToken::new();
    let publisher = Publisher::start(
        PublisherSettings::new(amqp_url(), "bench-preload", leadpipe_tests::all_topology()),
        names.clone(),
        stop.clone(),
    );
    assert!(publisher.wait_ready(Duration::from_secs(20)).await);
    // Google Ads takes wins (with a click id); the others take leads.
    let won = keep == leadpipe_google_ads_sender::DESTINATION;
    let routing_key = if won {
        "won.site-widget"
    } else {
        "lead.site-widget"
    };
    let bodies: Vec<(String, Vec<u8>)> = (0..EVENTS)
        .map(|i| {
            let mut event = recent_lead(&format!("{run}-{i}"));
            if won {
                event["event_name"] = serde_json::json!("won");
                event["order_id"] = serde_json::json!(format!("O-{run}-{i}"));
                event["value"] = serde_json::json!(99.5);
                event["currency"] = serde_json::json!("USD");
                event["attribution"] = serde_json::json!({"gclid": format!("Cj0-{i}")});
            }
            let env = envelope_of(&event);
            (env.event_id.clone(), serde_json::to_vec(&env).unwrap())
        })
        .collect();
    let exchange = names.events_exchange();
    futures::stream::iter(bodies.iter())
        .for_each_concurrent(64, |(id, body)| {
            let (publisher, exchange) = (&publisher, &exchange);
            async move {
                publisher
                    .publish(&OutgoingMessage {
                        exchange,
                        routing_key,
                        body,
                        message_id: id,
                        headers: Default::default(),
                        expiration_ms: None,
                    })
                    .await
                    .unwrap();
            }
        })
        .await;
    stop.cancel();
    // Only one queue matters per run; empty the others so the broker holds less.
    let broker = leadpipe_tests::Broker::connect(names.clone()).await;
    for d in leadpipe_registry::REGISTRY
        .destinations()
        .into_iter()
        .filter(|d| *d != keep)
    {
        let _ = broker
            .channel
            .queue_purge(names.work_queue(d).as_str().into(), Default::default())
            .await;
    }
}

async fn wait_until(count: impl Fn() -> usize) -> Duration {
    let started = Instant::now();
    while count() < EVENTS {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "drain stalled at {}",
            count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    // One database for every run, seeded and analysed.
    let p = Pipeline::new().await;
    let seed_started = Instant::now();
    // Into today's partition of meta, where the runs' rows go too.
    leadpipe_db::partitions::maintain(
        &p.pool,
        "meta",
        chrono::TimeDelta::days(8),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO deliveries (destination, event_id, status, attempts, event_name, source, sent_at,
                                 bucket)
         SELECT 'meta', md5(g::text), 'sent', 1, 'lead', 'seed', now(),
                date_bin('1 day', now(), 'epoch') FROM generate_series(1, $1) g",
    )
    .bind(SEED_ROWS)
    .execute(&p.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE deliveries")
        .execute(&p.pool)
        .await
        .unwrap();
    println!(
        "meta-sender benchmark — {} CPUs, {EVENTS} events per run, delivery table seeded with {SEED_ROWS} rows in {:.1}s",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        seed_started.elapsed().as_secs_f64()
    );

    // 1. Chassis ceiling.
    let names = Names::new(unique_namespace("bc"));
    preload(&names, "ceiling", leadpipe_meta_sender::DESTINATION).await;
    let mut settings = p.meta_settings(&SenderOptions::default()).runtime;
    settings.amqp.namespace = names.namespace().to_owned();
    // A destination that accepts everything at once: what is left is the chassis.
    let adapter = FnAdapter::new(leadpipe_meta_sender::DESTINATION, |_, n| {
        vec![
            Outcome::Sent {
                reference: None,
                http_status: Some(200)
            };
            n
        ]
    });
    let done = adapter.events.clone();
    let stop = CancellationToken::new();
    let sender = Sender::build(settings, adapter, stop.clone())
        .await
        .unwrap();
    let handle = tokio::spawn(sender.run_until_stopped(stop.clone()));
    let took = wait_until(|| done.load(Ordering::Relaxed)).await;
    stop.cancel();
    let _ = handle.await;
    leadpipe_tests::Broker::connect(names).await.delete().await;
    let ceiling = EVENTS as f64 / took.as_secs_f64();
    println!(
        "\nchassis ceiling (null destination, batches of 500, 2 channels): {ceiling:.0} events/s"
    );

    // 2–4. meta-sender and ga4-sender against their fakes.
    println!("\nsenders against fake destinations:");
    println!(
        "  {:<12} {:<28} {:>9} {:>10} {:>12}",
        "sender", "run", "replicas", "events/s", "vs ceiling"
    );
    let mut results = Vec::new();
    // `BENCH_SENDERS=ga4` (or `meta`) runs one sender only.
    let only = std::env::var("BENCH_SENDERS").ok();
    let senders: Vec<Destination> = leadpipe_registry::REGISTRY
        .destinations()
        .into_iter()
        .filter(|d| only.as_deref().is_none_or(|o| o == d.as_str()))
        .collect();
    for &destination in &senders {
        for (label, latency, opts) in [
            (
                "fake answers at once",
                Duration::ZERO,
                SenderOptions::default(),
            ),
            (
                "fake answers after 50 ms",
                Duration::from_millis(50),
                SenderOptions {
                    batch_size: 100,
                    ..SenderOptions::default()
                },
            ),
        ] {
            for replicas in [1usize, 2] {
                let rate = run_sender(&p, destination, latency, &opts, replicas).await;
                println!(
                    "  {:<12} {label:<28} {replicas:>9} {rate:>10.0} {:>11.0}%",
                    sender_name(destination),
                    100.0 * rate / ceiling
                );
                results.push(rate);
            }
        }
    }
    println!("\nsummary:");
    for (i, destination) in senders.iter().enumerate() {
        let sender = sender_name(*destination);
        let r = &results[i * 4..i * 4 + 4];
        println!(
            "  {sender}: one replica (fake at once) / chassis ceiling = {:.0}% (target >= 50%) {}",
            100.0 * r[0] / ceiling,
            verdict(r[0] >= 0.5 * ceiling)
        );
        println!(
            "  {sender}: two replicas / one, CPU-bound = {:.2}x (target >= 1.0x) {}",
            r[1] / r[0],
            verdict(r[1] >= r[0] * 0.95)
        );
        println!(
            "  {sender}: two replicas / one, fake after 50 ms = {:.2}x (target >= 1.8x) {}",
            r[3] / r[2],
            verdict(r[3] >= 1.8 * r[2])
        );
    }
    p.cleanup().await;
}

/// The service's name (`google-ads-sender`, not the queue's `google_ads`).
fn sender_name(destination: Destination) -> String {
    match destination {
        leadpipe_crm_writer::DESTINATION => "crm-writer".to_owned(),
        d => format!("{}-sender", d.as_str().replace('_', "-")),
    }
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

/// Drains a preloaded queue of `destination` with `replicas` senders against a fresh fake
/// answering after `latency`; events per second.
async fn run_sender(
    p: &Pipeline,
    destination: Destination,
    latency: Duration,
    opts: &SenderOptions,
    replicas: usize,
) -> f64 {
    let names = Names::new(unique_namespace("bm"));
    preload(
        &names,
        &format!("{}-{replicas}-{}", latency.as_millis(), names.namespace()),
        destination,
    )
    .await;
    let stop = CancellationToken::new();
    let mut handles = Vec::new();
    // Destination-bound: one batch at a time per replica.
    let concurrency = if latency.is_zero() { None } else { Some(1) };
    let took = match destination {
        leadpipe_ga4_sender::DESTINATION => {
            let fake = FakeGa4::start(leadpipe_tests::GA4_SECRET).await;
            fake.set_latency(latency);
            fake.set_lean();
            let mut settings = p.ga4_settings(opts);
            settings.base_url = fake.base_url.clone();
            settings.runtime.amqp.namespace = names.namespace().to_owned();
            // One request per client id. CPU-bound: 64 under way per batch; destination-bound:
            // the whole batch at once (GA4_CONCURRENT_REQUESTS = BATCH_SIZE).
            settings.concurrent_requests = std::env::var("GA4_CONCURRENT_REQUESTS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(64);
            if let Some(c) = concurrency {
                settings.runtime.concurrency = c;
                settings.concurrent_requests = opts.batch_size;
            }
            for _ in 0..replicas {
                let adapter = leadpipe_ga4_sender::Ga4Adapter::new(settings.clone());
                let sender = Sender::build(settings.runtime.clone(), adapter, stop.clone())
                    .await
                    .unwrap();
                handles.push(tokio::spawn(sender.run_until_stopped(stop.clone())));
            }
            wait_until(|| fake.kept()).await
        }
        leadpipe_google_ads_sender::DESTINATION => {
            let fake = FakeGoogle::start().await;
            fake.set_latency(latency);
            let mut settings = p.google_settings(opts);
            settings.data_manager_base_url = fake.base_url.clone();
            settings.token_url = fake.token_url();
            settings.runtime.amqp.namespace = names.namespace().to_owned();
            // Measure what Google accepts; the status polls come 30 min later, as in production.
            settings.status_delay = Duration::from_secs(1800);
            if let Some(c) = concurrency {
                settings.runtime.concurrency = c;
            }
            for _ in 0..replicas {
                let adapter = leadpipe_google_ads_sender::GoogleAdsAdapter::new(settings.clone());
                let sender = Sender::build(settings.runtime.clone(), adapter, stop.clone())
                    .await
                    .unwrap();
                handles.push(tokio::spawn(sender.run_until_stopped(stop.clone())));
            }
            wait_until(|| fake.accepted_count()).await
        }
        leadpipe_crm_writer::DESTINATION => {
            let fake = FakeCrm::start().await;
            let mut settings = p.crm_settings(opts);
            settings.kind = leadpipe_crm_writer::cfg::CrmKind::Webhook {
                url: Some(fake.webhook_url()),
            };
            settings.runtime.amqp.namespace = names.namespace().to_owned();
            if let Some(c) = concurrency {
                settings.runtime.concurrency = c;
            }
            fake.set_latency(latency);
            fake.set_lean();
            for _ in 0..replicas {
                let adapter = leadpipe_crm_writer::CrmAdapter::new(settings.clone());
                let sender = Sender::build(settings.runtime.clone(), adapter, stop.clone())
                    .await
                    .unwrap();
                handles.push(tokio::spawn(sender.run_until_stopped(stop.clone())));
            }
            wait_until(|| fake.written_count()).await
        }
        leadpipe_meta_sender::DESTINATION => {
            let fake = FakeMeta::start(leadpipe_tests::META_TOKEN).await;
            fake.set_latency(latency);
            let mut settings = p.meta_settings(opts);
            settings.base_url = fake.base_url.clone();
            settings.runtime.amqp.namespace = names.namespace().to_owned();
            if let Some(c) = concurrency {
                settings.runtime.concurrency = c;
            }
            for _ in 0..replicas {
                let adapter = leadpipe_meta_sender::MetaAdapter::new(settings.clone());
                let sender = Sender::build(settings.runtime.clone(), adapter, stop.clone())
                    .await
                    .unwrap();
                handles.push(tokio::spawn(sender.run_until_stopped(stop.clone())));
            }
            wait_until(|| fake.accepted().len()).await
        }
        leadpipe_tiktok_sender::DESTINATION => {
            use leadpipe_tiktok_sender::fake::{FakeTikTok, PIXEL_CODE, TOKEN};
            let fake = FakeTikTok::start(TOKEN).await;
            leadpipe_consumer::testing::FakeDestination::set_latency(&fake, latency);
            leadpipe_consumer::testing::FakeDestination::set_lean(&fake);
            let mut runtime = p.runtime_settings(opts);
            runtime.amqp.namespace = names.namespace().to_owned();
            if let Some(c) = concurrency {
                runtime.concurrency = c;
            }
            let settings = leadpipe_tiktok_sender::cfg::Settings {
                runtime,
                base_url: fake.base_url.clone(),
                pixel_code: Some(PIXEL_CODE.into()),
                access_token: Some(TOKEN.to_owned().into()),
                test_event_code: None,
                dry_run: false,
                timeout: Duration::from_secs(10),
                max_batch: 500,
                consent: leadpipe_tiktok_sender::cfg::ConsentPolicy::Strict,
                mappings: leadpipe_tiktok_sender::cfg::tiktok_mappings(
                    &leadpipe_tests::shipped_mapping(),
                )
                .unwrap(),
            };
            for _ in 0..replicas {
                let adapter = leadpipe_tiktok_sender::TikTokAdapter::new(settings.clone());
                let sender = Sender::build(settings.runtime.clone(), adapter, stop.clone())
                    .await
                    .unwrap();
                handles.push(tokio::spawn(sender.run_until_stopped(stop.clone())));
            }
            wait_until(|| fake.accepted().len()).await
        }
        other => panic!("no sender benchmark for {other}"),
    };
    stop.cancel();
    for h in handles {
        let _ = h.await;
    }
    leadpipe_tests::Broker::connect(names).await.delete().await;
    EVENTS as f64 / took.as_secs_f64()
}
