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
use leadpipe_ingest::{Application, Settings};

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
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            rate_limit_per_second: 100_000,
            amqp_url: amqp_url(),
            confirm_timeout: Duration::from_secs(5),
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
    let namespace = unique_namespace("i");
    let settings = Settings {
        addr: "127.0.0.1:0".parse().unwrap(),
        amqp: AmqpSettings {
            url: opts.amqp_url,
            namespace: namespace.clone(),
        },
        sources: vec![
            Source {
                id: TEST_SOURCE.into(),
                secret: SecretString::from(TEST_SECRET),
                default_region: Some("US".into()),
                rate_limit_per_second: opts.rate_limit_per_second,
            },
            Source {
                id: "crm".into(),
                secret: SecretString::from("crm-secret"),
                default_region: None,
                rate_limit_per_second: opts.rate_limit_per_second,
            },
        ],
        custom_events: HashSet::from(["demo_booked".to_owned()]),
        max_body_bytes: leadpipe_ingest::cfg::DEFAULT_MAX_BODY_BYTES,
        confirm_timeout: opts.confirm_timeout,
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

/// `sha256=<hex>` of `"<ts>.<body>"`.
pub fn sign(secret: &str, ts: i64, body: &[u8]) -> String {
    leadpipe_ingest::auth::sign(secret.as_bytes(), ts, body)
}

/// A test's view of its namespace on the broker.
pub struct Broker {
    /// Names of the namespace.
    pub names: Names,
    conn: Connection,
    /// A channel for declarations and reads.
    pub channel: Channel,
}

/// One message read from a queue (and acked).
#[derive(Debug, Clone)]
pub struct Received {
    /// The body, parsed.
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
                body: serde_json::from_slice(&delivery.data).expect("JSON body"),
                properties: delivery.properties.clone(),
            });
        }
        let _ = channel.close(200, "done".into()).await;
        out
    }

    /// Deletes the namespace's queues and exchanges.
    pub async fn delete(&self) {
        let _ = leadpipe_bus::topology::delete(&self.channel, &self.names).await;
    }

    /// The four work queues.
    pub fn work_queues(&self) -> Vec<String> {
        Destination::ALL
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
