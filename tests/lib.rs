//! Test support: spawn the real services in-process (their `Application::build`) or as the
//! real binaries, against the real RabbitMQ and Postgres, each test in its own namespace and
//! database so tests run in parallel.
//!
//! # Layout
//! - [`spawn_ingest`] / [`TestIngest`]: an ingest on a free port, with request helpers.
//! - [`Broker`]: reads queues of a namespace, and deletes the namespace afterwards.
//! - [`TcpProxy`]: a cuttable TCP hop to the broker, to take it "down" for one test only.
//! - [`fresh_database`]: a new, migrated database per test.
//! - [`bin_path`]: where the workspace's binaries are.

#![forbid(unsafe_code)]
#![allow(unreachable_pub)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use leadpipe_bus::{Destination, Names};
use leadpipe_config::AmqpSettings;
use leadpipe_config::sources::Source;
use leadpipe_consumer::testing::FakeDestination;
use leadpipe_ingest::{Application, Settings};

/// The topology of every registered destination.
pub fn all_topology() -> leadpipe_bus::topology::TopologySettings {
    leadpipe_bus::topology::TopologySettings::for_destinations(
        leadpipe_registry::REGISTRY.destinations(),
    )
    .with_quorum_group_size(leadpipe_bus::node_urls(&amqp_url()).len() as u32)
}

/// The broker every test uses (`AMQP_URL`, else the SPEC default).
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| leadpipe_config::DEFAULT_AMQP_URL.to_owned())
}

/// The Postgres server every test uses: `DATABASE_URL` without its database name.
pub fn database_server_url() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| leadpipe_config::DEFAULT_DATABASE_URL.to_owned());
    match url.rsplit_once('/') {
        Some((server, _)) => server.to_owned(),
        None => url,
    }
}

/// A namespace no other test uses.
pub fn unique_namespace(prefix: &str) -> String {
    format!(
        "t{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The field map of the test source `crm` (`POST /v1/sources/crm/webhook`).
pub static CRM_WEBHOOK_MAP: std::sync::LazyLock<leadpipe_config::sources::WebhookMap> =
    std::sync::LazyLock::new(|| {
        let mut fields = std::collections::BTreeMap::new();
        for (k, v) in [
            ("lead_id", "/conversation/id"),
            ("occurred_at", "/created_at"),
            ("contact.email", "/user/email"),
            ("contact.first_name", "/user/name"),
            ("consent.ad_user_data", "/user/ads_consent"),
        ] {
            fields.insert(k.to_owned(), v.to_owned());
        }
        let mut set = std::collections::BTreeMap::new();
        set.insert("event_name".to_owned(), "lead".into());
        leadpipe_config::sources::WebhookMap {
            set,
            fields,
            ..Default::default()
        }
    });

/// The secret of the test source `site-widget`.
pub const TEST_SECRET: &str = "test-secret";
/// The test source id.
pub const TEST_SOURCE: &str = "site-widget";

/// Options for [`spawn_ingest`].
#[derive(Clone)]
pub struct IngestOptions {
    /// Events per second the test source may post.
    pub rate_limit_per_second: u32,
    /// Broker URL (a [`TcpProxy`] to simulate an outage).
    pub amqp_url: String,
    /// Confirm deadline.
    pub confirm_timeout: Duration,
    /// The namespace (a [`Pipeline`]'s, to feed its senders); a fresh one by default.
    pub namespace: Option<String>,
    /// Sources beside the test ones (e.g. loaded from `examples/`).
    pub extra_sources: Vec<Source>,
    /// `INGEST_BODY_TIMEOUT_MS`.
    pub body_timeout: Duration,
    /// `INGEST_MAX_IN_FLIGHT`.
    pub max_in_flight: usize,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            rate_limit_per_second: 100_000,
            amqp_url: amqp_url(),
            confirm_timeout: Duration::from_secs(5),
            namespace: None,
            extra_sources: Vec::new(),
            body_timeout: leadpipe_ingest::cfg::DEFAULT_BODY_TIMEOUT,
            max_in_flight: leadpipe_ingest::cfg::DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// An ingest service running in this process.
pub struct TestIngest {
    /// Base URL, `http://127.0.0.1:<port>`.
    pub base: String,
    /// The namespace of its queues.
    pub names: Names,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The running application's state.
    pub state: leadpipe_ingest::AppState,
    shutdown: CancellationToken,
}

/// Builds and starts ingest on a free port in a fresh namespace and waits until it is ready.
pub async fn spawn_ingest(opts: IngestOptions) -> TestIngest {
    let namespace = opts.namespace.unwrap_or_else(|| unique_namespace("i"));
    let settings = Settings {
        destinations: leadpipe_registry::REGISTRY.destinations(),
        addr: "127.0.0.1:0".parse().unwrap(),
        amqp: AmqpSettings {
            url: opts.amqp_url,
            namespace: namespace.clone(),
            quorum_group_size: 1,
        },
        sources: vec![
            Source {
                id: TEST_SOURCE.into(),
                secret: SecretString::from(TEST_SECRET),
                default_region: Some("US".into()),
                rate_limit_per_second: opts.rate_limit_per_second,
                webhook: None,
            },
            Source {
                id: "crm".into(),
                secret: SecretString::from("crm-secret"),
                default_region: Some("US".into()),
                rate_limit_per_second: opts.rate_limit_per_second,
                webhook: Some(CRM_WEBHOOK_MAP.clone()),
            },
        ]
        .into_iter()
        .chain(opts.extra_sources)
        .collect(),
        custom_events: HashSet::from(["demo_booked".to_owned()]),
        max_body_bytes: leadpipe_ingest::cfg::DEFAULT_MAX_BODY_BYTES,
        confirm_timeout: opts.confirm_timeout,
        publish_channels: 2,
        body_timeout: opts.body_timeout,
        max_in_flight: opts.max_in_flight,
    };
    let shutdown = CancellationToken::new();
    let app = Application::build(settings, shutdown.clone())
        .await
        .expect("ingest builds");
    let base = format!("http://{}", app.local_addr());
    let state = app.state().clone();
    assert!(
        state.publisher.wait_ready(Duration::from_secs(20)).await,
        "ingest did not connect to RabbitMQ at {}",
        amqp_url()
    );
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestIngest {
        base,
        names: Names::new(namespace),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .unwrap(),
        state,
        shutdown,
    }
}

/// A valid lead whose identity (and so derived event_id) is `lead_id`.
pub fn lead(lead_id: &str) -> Value {
    json!({
        "source": TEST_SOURCE,
        "event_name": "lead",
        "occurred_at": "2026-11-21T11:00:00+01:00",
        "lead_id": lead_id,
        "contact": {"email": "Jane.Doe@Example.com", "phone": "(650) 555-1234"},
        "consent": {"ad_user_data": "granted"}
    })
}

impl TestIngest {
    /// Posts `body` to `path`, signed as `source` with `secret`.
    pub async fn post_signed_as(
        &self,
        path: &str,
        body: &[u8],
        source: &str,
        secret: &str,
    ) -> reqwest::Response {
        let ts = chrono::Utc::now().timestamp();
        self.post_with(path, body, source, ts, &sign(secret, ts, body))
            .await
    }

    /// Posts `body` to `path`, signed by the test source.
    pub async fn post_signed(&self, path: &str, body: &[u8]) -> reqwest::Response {
        let ts = chrono::Utc::now().timestamp();
        self.post_with(path, body, TEST_SOURCE, ts, &sign(TEST_SECRET, ts, body))
            .await
    }

    /// Posts with explicit authentication headers.
    pub async fn post_with(
        &self,
        path: &str,
        body: &[u8],
        source: &str,
        ts: i64,
        signature: &str,
    ) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("x-leadpipe-source", source)
            .header("x-leadpipe-timestamp", ts.to_string())
            .header("x-leadpipe-signature", signature)
            .body(body.to_vec())
            .send()
            .await
            .expect("ingest answers")
    }

    /// Posts one event as JSON to `/v1/events`.
    pub async fn post_event(&self, event: &Value) -> reqwest::Response {
        self.post_signed("/v1/events", &serde_json::to_vec(event).unwrap())
            .await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("ingest answers")
    }

    /// Stops the service and deletes its namespace.
    pub async fn stop(self) {
        self.shutdown.cancel();
        Broker::connect(self.names.clone()).await.delete().await;
    }
}

/// `request` carrying `body` as the test source sends it: JSON, signed now.
pub fn signed(request: reqwest::RequestBuilder, body: Vec<u8>) -> reqwest::RequestBuilder {
    let ts = chrono::Utc::now().timestamp();
    request
        .header("content-type", "application/json")
        .header("x-leadpipe-source", TEST_SOURCE)
        .header("x-leadpipe-timestamp", ts.to_string())
        .header("x-leadpipe-signature", sign(TEST_SECRET, ts, &body))
        .body(body)
}

/// `sha256=<hex>` of `"<ts>.<body>"`.
pub fn sign(secret: &str, ts: i64, body: &[u8]) -> String {
    leadpipe_ingest::auth::sign(secret.as_bytes(), ts, body)
}

/// A test's view of its namespace on the broker.
pub struct Broker {
    /// Names of the namespace.
    pub names: Names,
    /// Its connection.
    pub conn: Connection,
    /// A channel for declarations and reads.
    pub channel: Channel,
}

/// One message read from a queue (and acked).
#[derive(Debug, Clone)]
pub struct Received {
    /// The body, parsed (`Null` when it is not JSON).
    pub body: Value,
    /// AMQP properties.
    pub properties: lapin::BasicProperties,
}

impl Received {
    /// `message_id` property.
    pub fn message_id(&self) -> Option<String> {
        self.properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned())
    }

    /// A string header.
    pub fn header(&self, name: &str) -> Option<String> {
        let headers = self.properties.headers().as_ref()?;
        match headers.inner().get(name)? {
            lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
            lapin::types::AMQPValue::ShortString(s) => Some(s.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

impl Broker {
    /// Connects to the shared broker for `names`' namespace.
    pub async fn connect(names: Names) -> Self {
        let conn = leadpipe_bus::connect(&amqp_url(), "leadpipe-tests")
            .await
            .expect("RabbitMQ is running (make services)");
        let channel = conn.create_channel().await.unwrap();
        Self {
            names,
            conn,
            channel,
        }
    }

    /// The broker's delivery count (`x-delivery-count`) of every message in `queue`, read
    /// with `basic.get` and returned unacked (which adds one to each).
    pub async fn delivery_counts(&self, queue: &str) -> Vec<i64> {
        let channel = self.conn.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(m) = channel
            .basic_get(
                queue.into(),
                lapin::options::BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap()
        {
            let count = m
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-delivery-count").cloned());
            out.push(match count {
                Some(lapin::types::AMQPValue::LongLongInt(n)) => n,
                Some(lapin::types::AMQPValue::LongInt(n)) => i64::from(n),
                Some(lapin::types::AMQPValue::LongUInt(n)) => i64::from(n),
                Some(other) => panic!("x-delivery-count is {other:?}"),
                None => 0,
            });
        }
        let _ = channel.close(200, "read only".into()).await;
        out
    }

    /// Ready messages in `queue`.
    pub async fn depth(&self, queue: &str) -> u32 {
        leadpipe_bus::topology::queue_depth(&self.channel, queue)
            .await
            .unwrap()
    }

    /// Waits until `queue` holds `count` ready messages, checks it holds no more, then reads
    /// (and acks) them, failing after `timeout`.
    ///
    /// The count is checked before consuming, not after: a quorum queue may return messages
    /// whose acks were still being settled when the reading channel closed, so a depth read
    /// after the fact can count them again.
    pub async fn take(&self, queue: &str, count: usize, timeout: Duration) -> Vec<Received> {
        let want = u32::try_from(count).unwrap();
        eventually(timeout, || async { self.depth(queue).await >= want }).await;
        assert_eq!(
            self.depth(queue).await,
            want,
            "{queue}: wrong number of messages"
        );
        self.read(queue, count, timeout).await
    }

    /// Waits until `queue` holds at least `count` ready messages, then reads (and acks) as
    /// many as it holds: a message published again after its confirm was lost (a node of a
    /// cluster going away) is read with its copy.
    pub async fn take_at_least(
        &self,
        queue: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<Received> {
        let want = u32::try_from(count).unwrap();
        eventually(timeout, || async { self.depth(queue).await >= want }).await;
        let held = self.depth(queue).await as usize;
        assert!(
            held >= count,
            "{queue}: {held} messages of at least {count}"
        );
        self.read(queue, held, timeout).await
    }

    /// Reads (and acks) `count` messages of `queue` within `timeout`.
    async fn read(&self, queue: &str, count: usize, timeout: Duration) -> Vec<Received> {
        let channel = self.conn.create_channel().await.unwrap();
        channel
            .basic_qos(500, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                format!("test-{}", uuid::Uuid::new_v4()).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut out = Vec::with_capacity(count);
        let deadline = Instant::now() + timeout;
        while out.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, consumer.next()).await;
            let Ok(Some(Ok(delivery))) = next else {
                panic!(
                    "{queue}: got {} of {count} messages in {timeout:?}",
                    out.len()
                );
            };
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            out.push(Received {
                body: serde_json::from_slice(&delivery.data).unwrap_or(Value::Null),
                properties: delivery.properties.clone(),
            });
        }
        let _ = channel.close(200, "done".into()).await;
        out
    }

    /// Deletes the namespace's queues and exchanges.
    pub async fn delete(&self) {
        let _ = leadpipe_bus::topology::delete(
            &self.channel,
            &self.names,
            &leadpipe_registry::REGISTRY.destinations(),
        )
        .await;
    }

    /// Every registered destination's work queue.
    pub fn work_queues(&self) -> Vec<String> {
        leadpipe_registry::REGISTRY
            .destinations()
            .iter()
            .map(|d| self.names.work_queue(*d))
            .collect()
    }
}

/// A TCP hop between a service and the broker that a test can cut and restore, so one test
/// sees the broker go away without disturbing the others sharing it.
#[derive(Clone)]
pub struct TcpProxy {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<tokio::sync::watch::Sender<u64>>,
}

impl TcpProxy {
    /// Starts a proxy to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let cut = Arc::new(cut);
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::Acquire) {
                    drop(inbound);
                    continue;
                }
                let mut cut_rx = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Self { addr, up, cut }
    }

    /// Starts a proxy to the broker of [`amqp_url`] (assumed on 127.0.0.1:5672).
    pub async fn to_broker() -> Self {
        Self::start("127.0.0.1:5672".parse().unwrap()).await
    }

    /// `url` (a `postgres://` or `amqp://` URL on 127.0.0.1) with its port replaced by the
    /// proxy's.
    pub fn rewrite(&self, url: &str) -> String {
        let (head, tail) = url.split_once("127.0.0.1:").expect("a 127.0.0.1 URL");
        let rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
        format!("{head}127.0.0.1:{}{rest}", self.addr.port())
    }

    /// An AMQP URL through the proxy.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::Release);
        self.cut.send_modify(|n| *n += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::Release);
    }
}

/// Polls `check` every 20 ms until it holds or `timeout` passes; returns whether it held.
/// For conditions with no event to wait on (an HTTP endpoint's answer), never as a delay.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A new, migrated database for one test; returns its URL and a pool.
pub async fn fresh_database() -> (String, sqlx::PgPool) {
    let url = format!(
        "{}/t{}",
        database_server_url(),
        uuid::Uuid::new_v4().simple()
    );
    let pool = leadpipe_db::connect(&url, 5)
        .await
        .expect("PostgreSQL is running (make services)");
    leadpipe_db::migrate(&pool).await.expect("migrations apply");
    (url, pool)
}

/// Sends SIGTERM to `child` and returns its exit status, failing if it takes over 30 s
/// (the services' shutdown promise).
pub async fn sigterm_and_wait(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    let pid = child.id().expect("a running child").to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the service exits within 30 s of SIGTERM")
        .expect("wait succeeds")
}

/// A test destination: `send` gets the call's number (0, 1, …) and the batch size and returns
/// the outcomes; everything else is fixed.
pub struct FnAdapter {
    /// Which destination it stands for.
    pub destination: Destination,
    /// Calls to `send` so far.
    pub calls: Arc<std::sync::atomic::AtomicUsize>,
    /// Events passed to `send` so far.
    pub events: Arc<std::sync::atomic::AtomicUsize>,
    send: Box<dyn Fn(usize, usize) -> Vec<leadpipe_consumer::Outcome> + Send + Sync>,
}

impl FnAdapter {
    /// An adapter for `destination` answering with `send(call, batch_len)`.
    pub fn new(
        destination: Destination,
        send: impl Fn(usize, usize) -> Vec<leadpipe_consumer::Outcome> + Send + Sync + 'static,
    ) -> Self {
        Self {
            destination,
            calls: Arc::default(),
            events: Arc::default(),
            send: Box::new(send),
        }
    }
}

impl leadpipe_consumer::Adapter for FnAdapter {
    type Prepared = ();
    fn destination(&self) -> Destination {
        self.destination
    }
    fn max_batch(&self) -> usize {
        500
    }
    fn prepare(&self, _: &leadpipe_events::Envelope) -> leadpipe_consumer::Prepared<()> {
        leadpipe_consumer::Prepared::Send(())
    }
    async fn send(
        &self,
        items: Vec<leadpipe_consumer::Item<()>>,
    ) -> Vec<leadpipe_consumer::Outcome> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        self.events.fetch_add(items.len(), Ordering::SeqCst);
        (self.send)(call, items.len())
    }
    async fn probe(&self) -> bool {
        true
    }
    fn verdict_delay(&self, _poll: u32) -> Duration {
        Duration::from_millis(200)
    }
}

/// Drops a database made by [`fresh_database`] (closing anyone still connected).
pub async fn drop_database(url: &str) {
    let Some((server, name)) = url.rsplit_once('/') else {
        return;
    };
    if let Ok(pool) = leadpipe_db::connect(&format!("{server}/postgres"), 1).await {
        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
        pool.close().await;
    }
}

/// `binary console` (the debug or release `leadpipe`) on `p`'s namespace and database, its
/// broker at [`amqp_url`], on a free loopback port, with `env` besides (`CONSOLE_TOKEN`, …),
/// answering: the process and its base URL (`http://127.0.0.1:<port>`).
pub async fn spawn_console(
    p: &Pipeline,
    binary: &std::path::Path,
    env: &[(&str, String)],
) -> (tokio::process::Child, String) {
    let port = free_port();
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("console")
        .env("DATABASE_URL", &p.database_url)
        .env("AMQP_URL", amqp_url())
        .env("LEADPIPE_NAMESPACE", p.names.namespace())
        .env("CONSOLE_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let up = eventually(Duration::from_secs(20), || async {
        reqwest::get(format!("{base}/login")).await.is_ok()
    })
    .await;
    assert!(up, "the console never answered");
    (child, base)
}

/// Path of a workspace binary (`ingest`, `leadpipe`), built by `cargo build --workspace`.
pub fn bin_path(name: &str) -> PathBuf {
    // The test binary lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` (make test does)",
        path.display()
    );
    path
}

#[path = "support/bench.rs"]
pub mod bench;

#[path = "support/otlp.rs"]
pub mod otlp;

#[path = "support/stream.rs"]
pub mod stream;

#[path = "support/browser.rs"]
pub mod browser;

#[path = "support/storm.rs"]
pub mod storm;

pub use leadpipe_meta_sender::fake as fake_meta;

pub use leadpipe_ga4_sender::fake as fake_ga4;

pub use leadpipe_google_ads_sender::fake as fake_google;

pub use leadpipe_crm_writer::fake as fake_crm;

/// A lead that happened an hour ago, with ad consent granted.
pub fn recent_lead(lead_id: &str) -> Value {
    let mut e = lead(lead_id);
    e["occurred_at"] = json!((chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339());
    e
}

/// Validates `event` as ingest does (source `site-widget`) and wraps it in its envelope.
pub fn envelope_of(event: &Value) -> leadpipe_events::Envelope {
    let custom = HashSet::from(["demo_booked".to_owned()]);
    let ctx = leadpipe_events::ValidationContext {
        source_id: TEST_SOURCE,
        default_region: Some("US"),
        custom_events: &custom,
        now: chrono::Utc::now(),
    };
    let valid = leadpipe_events::validate_event(event, &ctx).expect("a valid test event");
    leadpipe_events::Envelope {
        schema_version: leadpipe_events::SCHEMA_VERSION,
        event_id: valid.event_id,
        ingested_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        event: valid.event,
    }
}

/// The token the fake Meta accepts by default.
pub const META_TOKEN: &str = fake_meta::TOKEN;
/// The API secret the fake GA4 attributes requests with.
pub const GA4_SECRET: &str = fake_ga4::API_SECRET;
/// The measurement id tests use.
pub const GA4_MEASUREMENT_ID: &str = fake_ga4::MEASUREMENT_ID;
/// The Google Ads operating account tests use.
pub const GOOGLE_ADS_CUSTOMER_ID: &str = fake_google::CUSTOMER_ID;
/// The conversion action tests use.
pub const GOOGLE_ADS_CONVERSION_ACTION_ID: &str = fake_google::CONVERSION_ACTION_ID;

/// The shipped mapping config (`config/leadpipe.toml`).
pub fn shipped_mapping() -> leadpipe_config::mapping::MappingConfig {
    leadpipe_config::mapping::MappingConfig::parse(leadpipe_config::mapping::SHIPPED_DEFAULTS)
        .unwrap()
}

/// Builds a sender around `adapter` and starts it in this process, without waiting for it
/// to be ready (it may pause at once on the work already waiting).
pub async fn spawn_sender<A: leadpipe_consumer::Adapter>(
    runtime: leadpipe_consumer::RuntimeSettings,
    adapter: A,
) -> TestSender {
    let shutdown = CancellationToken::new();
    let name = adapter.destination().as_str();
    let sender = leadpipe_consumer::Sender::build(runtime, adapter, shutdown.clone())
        .await
        .unwrap_or_else(|e| panic!("{name} sender builds: {e:#}"));
    let base = format!("http://{}", sender.metrics_addr());
    let handle = tokio::spawn(sender.run_until_stopped(shutdown.clone()));
    TestSender {
        base,
        shutdown,
        handle,
    }
}

/// Builds a sender around `adapter`, starts it in this process and waits until it is ready.
pub async fn start_sender<A: leadpipe_consumer::Adapter>(
    runtime: leadpipe_consumer::RuntimeSettings,
    adapter: A,
) -> TestSender {
    let name = adapter.destination().as_str();
    let s = spawn_sender(runtime, adapter).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            s.readyz().await == 200
        })
        .await,
        "{name} sender never became ready"
    );
    s
}

/// The real `ingest` binary, running.
pub struct IngestProcess {
    /// The process.
    pub child: tokio::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

/// A namespace, a database and fakes of the destinations: everything a sender test needs.
pub struct Pipeline {
    /// Names of the namespace.
    pub names: Names,
    /// The test database's URL.
    pub database_url: String,
    /// A pool on it.
    pub pool: sqlx::PgPool,
    /// Reads queues.
    pub broker: Broker,
    /// The fake Meta.
    pub meta: fake_meta::FakeMeta,
    /// The fake GA4.
    pub ga4: fake_ga4::FakeGa4,
    /// The fake Google (OAuth, Data Manager, Google Ads API).
    pub google: fake_google::FakeGoogle,
    /// The fake CRM (a signed-webhook receiver and a HubSpot-like API).
    pub crm: fake_crm::FakeCrm,
    /// Every registered destination's fake, in queue order (the fields above are the same
    /// fakes, typed, for the tests of one destination).
    pub fakes: Vec<Arc<dyn FakeDestination>>,
    publisher: leadpipe_bus::Publisher,
    shutdown: CancellationToken,
}

/// Options for [`Pipeline::start_meta`].
#[derive(Clone)]
pub struct SenderOptions {
    /// The token meta-sender uses.
    pub token: String,
    /// `DRY_RUN`.
    pub dry_run: bool,
    /// `BATCH_SIZE`.
    pub batch_size: usize,
    /// `BATCH_MAX_WAIT_MS`.
    pub batch_max_wait: Duration,
    /// `LEASE_SECS`.
    pub lease: Duration,
    /// `MAX_ATTEMPTS`.
    pub max_attempts: u32,
    /// `AMQP_URL` (a [`TcpProxy`] to take the broker away from this sender only).
    pub amqp_url: Option<String>,
    /// `DATABASE_URL` (a [`TcpProxy`] to take the database away from this sender only).
    pub database_url: Option<String>,
    /// `PAUSE_AFTER_FAILED_BATCHES`.
    pub pause_after_failed_batches: u32,
    /// `GA4_VALIDATE`.
    pub ga4_validate: bool,
    /// `GOOGLE_ADS_ROUTE=ads_api`.
    pub google_ads_api_route: bool,
    /// `CRM_KIND=hubspot` (else the signed webhook).
    pub hubspot: bool,
}

impl Default for SenderOptions {
    fn default() -> Self {
        Self {
            token: META_TOKEN.into(),
            dry_run: false,
            batch_size: 500,
            batch_max_wait: Duration::from_millis(100),
            lease: Duration::from_secs(2),
            max_attempts: 10,
            amqp_url: None,
            database_url: None,
            pause_after_failed_batches: 5,
            ga4_validate: false,
            google_ads_api_route: false,
            hubspot: false,
        }
    }
}

/// A sender running in this process.
pub struct TestSender {
    /// `http://<metrics addr>`.
    pub base: String,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), leadpipe_consumer::RuntimeError>>,
}

impl TestSender {
    /// `GET /readyz` status.
    pub async fn readyz(&self) -> u16 {
        reqwest::get(format!("{}/readyz", self.base))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// `GET /readyz`: status and JSON body (status 0 when it cannot be reached).
    pub async fn readyz_body(&self) -> (u16, Value) {
        match reqwest::get(format!("{}/readyz", self.base)).await {
            Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or_default()),
            Err(_) => (0, Value::Null),
        }
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// SIGTERM-equivalent: stops and waits for the drain.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.handle.await;
    }
}

impl Pipeline {
    /// A fresh namespace (topology declared), database and fake Meta.
    pub async fn new() -> Self {
        let names = Names::new(unique_namespace("s"));
        let (database_url, pool) = fresh_database().await;
        let shutdown = CancellationToken::new();
        let publisher = leadpipe_bus::Publisher::start(
            leadpipe_bus::PublisherSettings::new(amqp_url(), "tests", all_topology()),
            names.clone(),
            shutdown.clone(),
        );
        assert!(publisher.wait_ready(Duration::from_secs(20)).await);
        let fakes = leadpipe_registry::fakes::start().await;
        fn typed<T: Clone + 'static>(fakes: &[Arc<dyn FakeDestination>]) -> T {
            fakes
                .iter()
                .find_map(|f| f.as_any().downcast_ref::<T>().cloned())
                .expect("the registry starts this fake")
        }
        Self {
            broker: Broker::connect(names.clone()).await,
            names,
            database_url,
            pool,
            meta: typed(&fakes),
            ga4: typed(&fakes),
            google: typed(&fakes),
            crm: typed(&fakes),
            fakes,
            publisher,
            shutdown,
        }
    }

    /// Publishes `event` as ingest would; returns its event_id.
    pub async fn publish(&self, event: &Value) -> String {
        let env = envelope_of(event);
        let body = serde_json::to_vec(&env).unwrap();
        self.publish_raw(&body, &env.event_id, &env.event.event_name.clone().unwrap())
            .await;
        env.event_id
    }

    /// Publishes raw bytes to the events exchange with `message_id`.
    pub async fn publish_raw(&self, body: &[u8], message_id: &str, event_name: &str) {
        let exchange = self.names.events_exchange();
        let key = Names::event_routing_key(event_name, TEST_SOURCE);
        self.publisher
            .publish(&leadpipe_bus::OutgoingMessage {
                exchange: &exchange,
                routing_key: &key,
                body,
                message_id,
                headers: leadpipe_bus::publisher::string_headers([(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
                )]),
                expiration_ms: None,
            })
            .await
            .expect("published");
    }

    /// The runtime's settings for a sender of this pipeline.
    pub fn runtime_settings(&self, opts: &SenderOptions) -> leadpipe_consumer::RuntimeSettings {
        let mut runtime = leadpipe_consumer::RuntimeSettings::defaults(
            AmqpSettings {
                url: opts.amqp_url.clone().unwrap_or_else(amqp_url),
                namespace: self.names.namespace().to_owned(),
                quorum_group_size: 1,
            },
            leadpipe_config::DatabaseSettings {
                url: opts
                    .database_url
                    .clone()
                    .unwrap_or_else(|| self.database_url.clone()),
            },
            0,
        );
        runtime.pause_after_failed_batches = opts.pause_after_failed_batches;
        runtime.metrics_addr = "127.0.0.1:0".parse().unwrap();
        runtime.batch_size = opts.batch_size;
        runtime.prefetch = u16::try_from(opts.batch_size).unwrap_or(u16::MAX);
        runtime.batch_max_wait = opts.batch_max_wait;
        runtime.lease = opts.lease;
        runtime.max_attempts = opts.max_attempts;
        runtime.retry_base = Duration::from_millis(200);
        // Backoff stays short in tests: a storm's unlucky event must not wait minutes.
        runtime.retry_max = Duration::from_secs(3);
        runtime.pause_probe_max = Duration::from_millis(300);
        runtime.dry_run = opts.dry_run;
        runtime
    }

    /// meta-sender settings for this pipeline.
    pub fn meta_settings(&self, opts: &SenderOptions) -> leadpipe_meta_sender::cfg::Settings {
        leadpipe_meta_sender::cfg::Settings {
            runtime: self.runtime_settings(opts),
            base_url: self.meta.base_url.clone(),
            api_version: "v25.0".into(),
            pixel_id: Some(fake_meta::PIXEL_ID.into()),
            access_token: Some(SecretString::from(opts.token.clone())),
            test_event_code: None,
            dry_run: opts.dry_run,
            timeout: Duration::from_secs(5),
            max_batch: 500,
            consent: leadpipe_meta_sender::cfg::ConsentPolicy::Strict,
            mappings: leadpipe_meta_sender::cfg::meta_mappings(&shipped_mapping()).unwrap(),
        }
    }

    /// ga4-sender settings for this pipeline.
    pub fn ga4_settings(&self, opts: &SenderOptions) -> leadpipe_ga4_sender::cfg::Settings {
        leadpipe_ga4_sender::cfg::Settings {
            runtime: self.runtime_settings(opts),
            base_url: self.ga4.base_url.clone(),
            measurement_id: Some(GA4_MEASUREMENT_ID.into()),
            api_secret: Some(SecretString::from(GA4_SECRET)),
            validate: opts.ga4_validate,
            dry_run: opts.dry_run,
            timeout: Duration::from_secs(5),
            concurrent_requests: 16,
            engagement_time_msec: 100,
            consent: leadpipe_config::consent::ConsentPolicy::Strict,
            mappings: leadpipe_ga4_sender::cfg::ga4_mappings(&shipped_mapping()).unwrap(),
        }
    }

    /// google-ads-sender settings for this pipeline: status asked 300 ms after acceptance,
    /// then with backoff up to 2 s.
    pub fn google_settings(
        &self,
        opts: &SenderOptions,
    ) -> leadpipe_google_ads_sender::cfg::Settings {
        use leadpipe_google_ads_sender::cfg;
        cfg::Settings {
            runtime: self.runtime_settings(opts),
            data_manager_base_url: self.google.base_url.clone(),
            ads_api_base_url: self.google.base_url.clone(),
            ads_api_version: "v23".into(),
            route: if opts.google_ads_api_route {
                cfg::Route::AdsApi
            } else {
                cfg::Route::DataManager
            },
            customer_id: Some(GOOGLE_ADS_CUSTOMER_ID.into()),
            login_customer_id: Some("9876543210".into()),
            developer_token: None,
            token_url: self.google.token_url(),
            client_id: Some("client-id".into()),
            client_secret: Some(SecretString::from("client-secret")),
            refresh_token: Some(SecretString::from(fake_google::REFRESH_TOKEN)),
            dry_run: opts.dry_run,
            timeout: Duration::from_secs(5),
            status_delay: Duration::from_millis(300),
            status_delay_max: Duration::from_secs(2),
            consent: leadpipe_config::consent::ConsentPolicy::Strict,
            mappings: cfg::google_ads_mappings(
                &shipped_mapping(),
                Some(GOOGLE_ADS_CONVERSION_ACTION_ID),
            )
            .unwrap(),
        }
    }

    /// Starts google-ads-sender in this process.
    pub async fn start_google(&self, opts: SenderOptions) -> TestSender {
        let settings = self.google_settings(&opts);
        let runtime = settings.runtime.clone();
        start_sender(
            runtime,
            leadpipe_google_ads_sender::GoogleAdsAdapter::new(settings),
        )
        .await
    }

    /// crm-writer settings for this pipeline (the shipped field map).
    pub fn crm_settings(&self, opts: &SenderOptions) -> leadpipe_crm_writer::cfg::Settings {
        use leadpipe_crm_writer::cfg;
        let mapping = shipped_mapping();
        let (fields, id_property) = cfg::crm_fields(&mapping).unwrap();
        cfg::Settings {
            runtime: self.runtime_settings(opts),
            kind: if opts.hubspot {
                cfg::CrmKind::HubSpot {
                    base_url: self.crm.base_url.clone(),
                }
            } else {
                cfg::CrmKind::Webhook {
                    url: Some(self.crm.webhook_url()),
                }
            },
            webhook_secret: Some(SecretString::from(fake_crm::WEBHOOK_SECRET)),
            hubspot_token: Some(SecretString::from(fake_crm::HUBSPOT_TOKEN)),
            dry_run: opts.dry_run,
            timeout: Duration::from_secs(5),
            fields,
            id_property,
            mappings: cfg::crm_mappings(&mapping).unwrap(),
        }
    }

    /// Starts crm-writer in this process.
    pub async fn start_crm(&self, opts: SenderOptions) -> TestSender {
        let settings = self.crm_settings(&opts);
        let runtime = settings.runtime.clone();
        start_sender(runtime, leadpipe_crm_writer::CrmAdapter::new(settings)).await
    }

    /// Starts meta-sender in this process.
    pub async fn start_meta(&self, opts: SenderOptions) -> TestSender {
        let settings = self.meta_settings(&opts);
        let runtime = settings.runtime.clone();
        start_sender(runtime, leadpipe_meta_sender::MetaAdapter::new(settings)).await
    }

    /// Starts ga4-sender in this process.
    pub async fn start_ga4(&self, opts: SenderOptions) -> TestSender {
        let settings = self.ga4_settings(&opts);
        let runtime = settings.runtime.clone();
        start_sender(runtime, leadpipe_ga4_sender::Ga4Adapter::new(settings)).await
    }

    /// Starts a sender's real binary on this pipeline (batches of 20, 2 s leases, fast
    /// retries), with `env` for its destination's variables.
    pub fn spawn_sender_binary(&self, binary: &str, env: &[(&str, &str)]) -> tokio::process::Child {
        let port = free_port();
        let mut command = tokio::process::Command::new(bin_path(binary));
        command
            .env("AMQP_URL", amqp_url())
            .env("DATABASE_URL", &self.database_url)
            .env("LEADPIPE_NAMESPACE", self.names.namespace())
            .env(
                "LEADPIPE_CONFIG",
                format!("{}/../config/leadpipe.toml", env!("CARGO_MANIFEST_DIR")),
            )
            .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("BATCH_SIZE", "20")
            .env("BATCH_MAX_WAIT_MS", "50")
            .env("LEASE_SECS", "2")
            .env("RETRY_BASE_MS", "200")
            .env("RUST_LOG", "warn")
            .kill_on_drop(true);
        let (out, err) = log_files(binary, self.names.namespace());
        command.stdout(out).stderr(err);
        for (k, v) in env {
            command.env(k, v);
        }
        command
            .spawn()
            .unwrap_or_else(|e| panic!("{binary} starts: {e}"))
    }

    /// Starts the real binary of `destination`'s sender, pointed at this pipeline's fake.
    pub fn spawn_destination_binary(&self, destination: Destination) -> tokio::process::Child {
        self.spawn_destination_binary_with(destination, &[])
    }

    /// [`Pipeline::spawn_destination_binary`] with `extra` variables set last (they win).
    pub fn spawn_destination_binary_with(
        &self,
        destination: Destination,
        extra: &[(&str, String)],
    ) -> tokio::process::Child {
        let name = leadpipe_registry::REGISTRY
            .get(destination)
            .unwrap_or_else(|| panic!("{destination} is not registered"))
            .service;
        let env = self.fake(destination).sender_env();
        let env: Vec<(&str, &str)> = env
            .iter()
            .chain(extra)
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        self.spawn_sender_binary(name, &env)
    }

    /// The fake of `destination`.
    pub fn fake(&self, destination: Destination) -> &dyn FakeDestination {
        self.fakes
            .iter()
            .find(|f| f.destination() == destination)
            .map(|f| f.as_ref())
            .unwrap_or_else(|| panic!("no fake for {destination}"))
    }

    /// The fake of `destination` as its own type (what only it has).
    pub fn fake_as<T: 'static>(&self, destination: Destination) -> &T {
        self.fake(destination)
            .as_any()
            .downcast_ref::<T>()
            .unwrap_or_else(|| panic!("the fake of {destination} is another type"))
    }

    /// Starts the real `ingest` binary on this pipeline's namespace, its broker at
    /// `amqp_url` (a [`TcpProxy`]'s, to take the broker away from it), the test source
    /// unthrottled, with `env` besides; waits until it is ready.
    pub async fn spawn_ingest_binary(
        &self,
        amqp_url: &str,
        env: &[(&str, String)],
    ) -> IngestProcess {
        let port = free_port();
        let sources =
            std::env::temp_dir().join(format!("leadpipe-sources-{}.toml", self.names.namespace()));
        std::fs::write(
            &sources,
            format!(
                "[[sources]]\nid = \"{TEST_SOURCE}\"\nsecret_env = \"TEST_SOURCE_SECRET\"\n\
                 default_region = \"US\"\nrate_limit_per_second = 1000000\n"
            ),
        )
        .unwrap();
        let mut command = tokio::process::Command::new(bin_path("ingest"));
        command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let (out, err) = log_files("ingest", self.names.namespace());
        let child = command
            .env("AMQP_URL", amqp_url)
            .env("LEADPIPE_NAMESPACE", self.names.namespace())
            .env("LEADPIPE_SOURCES", &sources)
            .env(
                "LEADPIPE_CONFIG",
                format!("{}/../config/leadpipe.toml", env!("CARGO_MANIFEST_DIR")),
            )
            .env("TEST_SOURCE_SECRET", TEST_SECRET)
            .env("INGEST_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("ingest starts");
        let base = format!("http://127.0.0.1:{port}");
        let ready = eventually(Duration::from_secs(30), || async {
            reqwest::get(format!("{base}/readyz"))
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(ready, "the ingest binary never became ready");
        let _ = std::fs::remove_file(&sources);
        IngestProcess { child, base }
    }

    /// `(status, attempts)` of an event's meta row.
    pub async fn row(&self, event_id: &str) -> Option<(String, i32)> {
        self.row_in(leadpipe_meta_sender::DESTINATION, event_id)
            .await
    }

    /// `(status, attempts)` of an event's row for `destination`.
    pub async fn row_in(&self, destination: Destination, event_id: &str) -> Option<(String, i32)> {
        sqlx::query_as(
            "SELECT status, attempts FROM deliveries WHERE destination = $1 AND event_id = $2",
        )
        .bind(destination.as_str())
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await
        .unwrap()
    }

    /// Ready messages in `destination`'s dead-letter queue.
    pub async fn dlq_depth(&self, destination: Destination) -> u32 {
        self.broker
            .depth(&self.names.dead_letter_queue(destination))
            .await
    }

    /// Waits until the event's meta row has `status`; panics with the last row otherwise.
    pub async fn wait_status(&self, event_id: &str, status: &str, timeout: Duration) -> i32 {
        self.wait_status_in(leadpipe_meta_sender::DESTINATION, event_id, status, timeout)
            .await
    }

    /// Waits until the event's row for `destination` has `status`; panics with the last row
    /// otherwise. Returns the attempts.
    pub async fn wait_status_in(
        &self,
        destination: Destination,
        event_id: &str,
        status: &str,
        timeout: Duration,
    ) -> i32 {
        let ok = eventually(timeout, || async {
            self.row_in(destination, event_id)
                .await
                .is_some_and(|(s, _)| s == status)
        })
        .await;
        let row = self.row_in(destination, event_id).await;
        assert!(ok, "{event_id}: wanted {status}, row is {row:?}");
        row.unwrap().1
    }

    /// Waits until `n` meta rows have `status`.
    pub async fn wait_count(&self, status: &str, n: i64, timeout: Duration) {
        self.wait_count_in(leadpipe_meta_sender::DESTINATION, status, n, timeout)
            .await
    }

    /// Waits until `n` rows of `destination` have `status`.
    pub async fn wait_count_in(
        &self,
        destination: Destination,
        status: &str,
        n: i64,
        timeout: Duration,
    ) {
        let count = || async {
            let (c,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM deliveries WHERE destination = $1 AND status = $2",
            )
            .bind(destination.as_str())
            .bind(status)
            .fetch_one(&self.pool)
            .await
            .unwrap();
            c
        };
        let ok = eventually(timeout, || async { count().await == n }).await;
        assert!(ok, "wanted {n} rows {status}, have {}", count().await);
    }

    /// Stops the publisher, deletes the namespace (through a connection of its own: the
    /// pipeline's may have died with a broker restart) and drops the database.
    pub async fn cleanup(self) {
        self.shutdown.cancel();
        Broker::connect(self.names.clone()).await.delete().await;
        self.pool.close().await;
        drop_database(&self.database_url).await;
    }
}

/// Where a binary started by a test writes its output and log (stdout, stderr): nowhere,
/// unless `LEADPIPE_TEST_LOG_DIR` names a folder, where both append to
/// `<namespace>-<binary>.log` (its warnings and errors).
pub fn log_files(binary: &str, namespace: &str) -> (std::process::Stdio, std::process::Stdio) {
    let nowhere = || (std::process::Stdio::null(), std::process::Stdio::null());
    let Some(dir) = std::env::var_os("LEADPIPE_TEST_LOG_DIR") else {
        return nowhere();
    };
    let _ = std::fs::create_dir_all(&dir);
    let path = std::path::Path::new(&dir).join(format!("{namespace}-{binary}.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path);
    match file.and_then(|f| Ok((f.try_clone()?, f))) {
        Ok((out, err)) => (out.into(), err.into()),
        Err(_) => nowhere(),
    }
}

/// A TCP port free on 127.0.0.1 right now (for a binary's listen address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
