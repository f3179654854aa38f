//! `make bench` — ingest throughput, latency and memory against the broker's own ceiling.
//!
//! In one run, on one topology (a fresh namespace: the topic exchange fanning out to every
//! registered destination's quorum work queue):
//! 1. **ceiling**: a bare confirmed publisher (lapin, one channel, 64 messages in flight, the
//!    same message bytes ingest publishes);
//! 2. **ingest**: the real release `ingest` binary under closed-loop load (signed posts) at
//!    increasing concurrency: accepted events/s, p50/p99 latency;
//! 3. **half load**: open-loop at half of ingest's peak rate: p50/p99 latency;
//! 4. **memory**: ingest's peak RSS (VmHWM).
//!
//! Queues are purged between runs so the broker works on the same depth each time.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::Channel;
use lapin::options::QueuePurgeOptions;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use leadpipe_bus::Names;
use leadpipe_bus::topology::{self};
use leadpipe_events::{Envelope, SCHEMA_VERSION, ValidationContext};
use leadpipe_tests::bench::{bare_publisher, memory_mib, ms, percentile, release_bin};
use leadpipe_tests::{Broker, amqp_url, unique_namespace};

const SECRET: &str = "bench-secret";
const RUN: Duration = Duration::from_secs(6);
const WARMUP: Duration = Duration::from_secs(1);
const IN_FLIGHT: usize = 64;
const LEVELS: [usize; 5] = [8, 16, 32, 64, 128];

fn event(i: usize) -> Value {
    // A realistic lead padded to about 1 KiB on the bus.
    json!({
        "source": "bench",
        "event_name": "lead",
        "occurred_at": "2026-11-21T11:00:00+01:00",
        "lead_id": format!("L-{i}"),
        "contact": {"email": format!("lead{i}@example.com"), "phone": "+1 650 555 1234",
                    "first_name": "Jane", "last_name": "Doe", "city": "Menlo Park", "country": "US"},
        "attribution": {"gclid": "Cj0KCQiA-bench", "fbclid": "IwAR0bench", "utm_source": "google",
                        "utm_campaign": "spring", "landing_page_url": "https://example.com/pricing"},
        "client": {"ip_address": "203.0.113.7", "user_agent": "Mozilla/5.0 (X11; Linux x86_64)"},
        "consent": {"ad_user_data": "granted", "ad_personalization": "granted", "analytics": "granted"},
        "context": {"chatbot": "sales-bot", "transcript": "x".repeat(420)},
    })
}

async fn purge(channel: &Channel, names: &Names) {
    for q in names.all_queues(&leadpipe_registry::REGISTRY.destinations()) {
        let _ = channel
            .queue_purge(q.as_str().into(), QueuePurgeOptions::default())
            .await;
    }
}

struct Load {
    rate: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

/// A minimal keep-alive HTTP/1.1 client: the load generator shares the machine with ingest
/// and the broker, so it must cost as little CPU as possible (reqwest costs about as much as
/// the server side).
struct RawClient {
    addr: std::net::SocketAddr,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
}

impl RawClient {
    fn new(addr: std::net::SocketAddr) -> Self {
        Self {
            addr,
            conn: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Posts a signed event; true on `202`.
    async fn post(&mut self, body: &[u8]) -> bool {
        let ts = chrono::Utc::now().timestamp();
        let sig = leadpipe_ingest::auth::sign(SECRET.as_bytes(), ts, body);
        let mut req = format!(
            "POST /v1/events HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n\
             x-leadpipe-source: bench\r\nx-leadpipe-timestamp: {ts}\r\n\
             x-leadpipe-signature: {sig}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        for _ in 0..2 {
            if self.conn.is_none() {
                match TcpStream::connect(self.addr).await {
                    Ok(c) => {
                        let _ = c.set_nodelay(true);
                        self.conn = Some(c);
                    }
                    Err(_) => return false,
                }
            }
            match self.round_trip(&req).await {
                Some(status) => return status == 202,
                None => self.conn = None,
            }
        }
        false
    }

    async fn round_trip(&mut self, req: &[u8]) -> Option<u16> {
        let conn = self.conn.as_mut()?;
        conn.write_all(req).await.ok()?;
        self.buf.clear();
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).ok()?;
                let status: u16 = head.get(9..12)?.parse().ok()?;
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    let mut chunk = [0u8; 4096];
                    let n = conn.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return Some(status);
            }
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Closed loop: `workers` clients posting back to back.
async fn closed_loop(
    addr: std::net::SocketAddr,
    bodies: &Arc<Vec<Vec<u8>>>,
    workers: usize,
) -> Load {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (bodies, next) = (bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = RawClient::new(addr);
            let mut lat = Vec::new();
            let mut errors = 0;
            while started.elapsed() < RUN {
                let i = next.fetch_add(1, Ordering::Relaxed) % bodies.len();
                let t = Instant::now();
                let ok = client.post(&bodies[i]).await;
                if started.elapsed() > WARMUP {
                    if ok {
                        lat.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    Load {
        rate: all.len() as f64 / (RUN - WARMUP).as_secs_f64(),
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        errors,
    }
}

/// Open loop: one request every `1/rate` seconds, whatever the latency (a new connection is
/// opened whenever every idle one is busy).
async fn open_loop(addr: std::net::SocketAddr, bodies: &Arc<Vec<Vec<u8>>>, rate: f64) -> Load {
    let idle = Arc::new(std::sync::Mutex::new(Vec::<RawClient>::new()));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut i = 0usize;
    while started.elapsed() < RUN {
        ticker.tick().await;
        let (bodies, idle) = (bodies.clone(), idle.clone());
        let measured = started.elapsed() > WARMUP;
        i += 1;
        tasks.push(tokio::spawn(async move {
            let mut client = idle
                .lock()
                .unwrap()
                .pop()
                .unwrap_or_else(|| RawClient::new(addr));
            let t = Instant::now();
            let ok = client.post(&bodies[i % bodies.len()]).await;
            let d = t.elapsed();
            idle.lock().unwrap().push(client);
            (measured, ok, d)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (measured, ok, d) = t.await.unwrap();
        if measured {
            if ok {
                lat.push(d);
            } else {
                errors += 1;
            }
        }
    }
    lat.sort_unstable();
    Load {
        rate: lat.len() as f64 / (RUN - WARMUP).as_secs_f64(),
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        errors,
    }
}

#[tokio::main]
async fn main() {
    let names = Names::new(unique_namespace("bench"));
    let broker = Broker::connect(names.clone()).await;
    topology::declare(&broker.conn, &names, &leadpipe_tests::all_topology())
        .await
        .unwrap();

    // The exact bytes ingest publishes for one bench event.
    let custom = HashSet::new();
    let ctx = ValidationContext {
        source_id: "bench",
        default_region: Some("US"),
        custom_events: &custom,
        now: chrono::Utc::now(),
    };
    let valid = leadpipe_events::validate_event(&event(0), &ctx).unwrap();
    let envelope = serde_json::to_vec(&Envelope {
        schema_version: SCHEMA_VERSION,
        event_id: valid.event_id,
        ingested_at: "2026-12-01T00:00:00.000Z".into(),
        event: valid.event,
    })
    .unwrap();
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..50_000)
            .map(|i| serde_json::to_vec(&event(i)).unwrap())
            .collect(),
    );

    println!(
        "leadpipe ingest benchmark — {} CPUs, message {} bytes, namespace {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        envelope.len(),
        names.namespace()
    );

    let ceiling = bare_publisher(&names, &envelope, IN_FLIGHT, RUN, WARMUP).await;
    purge(&broker.channel, &names).await;
    println!(
        "\nbare confirmed publisher ({IN_FLIGHT} in flight, {} quorum queues): {ceiling:.0} msg/s",
        leadpipe_registry::REGISTRY.all().len()
    );

    // The real binary, release build.
    let port = leadpipe_tests::free_port();
    let dir = std::env::temp_dir().join(names.namespace());
    std::fs::create_dir_all(&dir).unwrap();
    let sources = dir.join("sources.toml");
    std::fs::write(
        &sources,
        "[[sources]]\nid = \"bench\"\nsecret_env = \"BENCH_SECRET\"\ndefault_region = \"US\"\nrate_limit_per_second = 1000000\n",
    )
    .unwrap();
    let mut child = tokio::process::Command::new(release_bin("ingest"))
        .env("LEADPIPE_SOURCES", &sources)
        .env("BENCH_SECRET", SECRET)
        .env("LEADPIPE_NAMESPACE", names.namespace())
        .env("INGEST_ADDR", format!("127.0.0.1:{port}"))
        .env("AMQP_URL", amqp_url())
        .envs(
            std::env::var("INGEST_PUBLISH_CHANNELS")
                .ok()
                .map(|n| ("INGEST_PUBLISH_CHANNELS", n)),
        )
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let http = reqwest::Client::new();
    let ready = leadpipe_tests::eventually(Duration::from_secs(30), || async {
        http.get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready, "ingest did not become ready");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    println!("\ningest, closed loop (signed POST /v1/events, 202 after confirm):");
    println!(
        "  {:>11} {:>10} {:>9} {:>9} {:>8} {:>7}",
        "concurrency", "events/s", "p50 ms", "p99 ms", "vs bare", "errors"
    );
    let mut peak = 0.0f64;
    for workers in LEVELS {
        let l = closed_loop(addr, &bodies, workers).await;
        purge(&broker.channel, &names).await;
        peak = peak.max(l.rate);
        println!(
            "  {workers:>11} {:>10.0} {:>9.2} {:>9.2} {:>7.0}% {:>7}",
            l.rate,
            ms(l.p50),
            ms(l.p99),
            100.0 * l.rate / ceiling,
            l.errors
        );
    }
    let half = open_loop(addr, &bodies, peak / 2.0).await;
    purge(&broker.channel, &names).await;
    let rss = memory_mib(pid, "VmHWM");
    let _ = child.kill().await;

    println!(
        "\ningest, open loop at half its peak ({:.0}/s): achieved {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
        peak / 2.0,
        half.rate,
        ms(half.p50),
        ms(half.p99),
        half.errors
    );
    println!("ingest peak RSS: {rss:.1} MiB");
    let ratio = peak / ceiling;
    println!("\nsummary:");
    println!(
        "  peak ingest rate / bare publisher = {peak:.0} / {ceiling:.0} = {:.0}% (target >= 70%) {}",
        100.0 * ratio,
        if ratio >= 0.7 { "PASS" } else { "MISS" }
    );
    println!(
        "  p99 at half peak = {:.2} ms (target < 20 ms) {}",
        ms(half.p99),
        if half.p99 < Duration::from_millis(20) {
            "PASS"
        } else {
            "MISS"
        }
    );
    println!(
        "  peak RSS = {rss:.1} MiB (target < 64 MiB) {}",
        if rss < 64.0 { "PASS" } else { "MISS" }
    );
    broker.delete().await;
    let _ = std::fs::remove_dir_all(dir);
}
