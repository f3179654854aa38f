//! The consumer runtime every sender runs on. A destination is an [`Adapter`] (payload
//! mapping, batching rule, error classification); the runtime does everything else:
//! consuming with manual acks and a prefetch window, batching by size and time, claiming
//! idempotency keys in Postgres, retries through the delay queues, dead letters with their
//! reasons, pausing on systemic failure, metrics, health and graceful shutdown.
//!
//! # Layout
//! - [`adapter`]: the trait a destination implements.
//! - [`outcome`]: what an adapter reports per event.
//! - [`bisect`]: isolating the bad events of a batch a destination refused whole.
//! - [`worker`]: the consume loop and the batch pipeline (the runtime's decisions).
//! - [`store`]: idempotency claims and the delivery log.
//! - [`retry`]: backoff with full jitter.
//! - [`cfg`]: settings from the environment.
//! - [`error`]: the runtime's public error.
//! - [`metrics`]: the sender metric families.
//! - [`registry`]: what leadpipe knows about each destination.
//! - [`http`]: `Retry-After`, transport failures and plain status codes, for HTTP adapters.
//! - `testing` (feature `testing`): storms and the fake trait the destinations' fakes share.
//! - [`service`]: a sender binary's life (DRY_RUN notice, run until SIGTERM, exit code).

#![forbid(unsafe_code)]

pub mod adapter;
pub mod bisect;
pub mod cfg;
pub mod error;
pub mod http;
pub mod metrics;
pub mod outcome;
pub mod registry;
pub mod retention;
pub mod retry;
pub mod service;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use leadpipe_bus::topology::TopologySettings;
use leadpipe_bus::{Names, Publisher, PublisherSettings};

pub use adapter::{Adapter, Item};
pub use cfg::RuntimeSettings;
pub use error::RuntimeError;
pub use outcome::{Failure, Outcome, Prepared, Skip};
pub use registry::{Registration, Registry};

use worker::{Flow, Shared};

/// How long shutdown waits for in-flight batches before it gives up (SIGTERM → exit ≤ 30 s).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// A sender, built and ready to run.
pub struct Sender<A: Adapter> {
    shared: Arc<Shared<A>>,
    listener: TcpListener,
}

impl<A: Adapter> Sender<A> {
    /// Connects to Postgres (applying migrations), starts the publisher (declaring the
    /// topology) and binds the metrics address.
    pub async fn build(
        settings: RuntimeSettings,
        adapter: A,
        shutdown: CancellationToken,
    ) -> Result<Self, RuntimeError> {
        let destination = adapter.destination();
        let pool = leadpipe_db::connect(
            &settings.database.url,
            u32::try_from(settings.concurrency + 2).unwrap_or(8),
        )
        .await
        .map_err(RuntimeError::Database)?;
        leadpipe_db::migrate(&pool)
            .await
            .map_err(RuntimeError::Migrate)?;
        let listener = TcpListener::bind(settings.metrics_addr)
            .await
            .map_err(|source| RuntimeError::MetricsAddr {
                addr: settings.metrics_addr,
                source,
            })?;
        let names = Names::new(settings.amqp.namespace.clone());
        let publisher = Publisher::start(
            PublisherSettings {
                // A retry or dead letter whose publish waits out a broker alarm is published
                // once, never a second copy after a timeout.
                wait_while_blocked: true,
                ..PublisherSettings::new(
                    settings.amqp.url.clone(),
                    format!("{}-sender-publisher", destination.as_str()),
                    // A sender declares its own queues only: a destination nobody runs or
                    // enables has none filling up.
                    TopologySettings::for_destinations([destination])
                        .with_quorum_group_size(settings.amqp.quorum_group_size),
                )
            },
            names.clone(),
            shutdown,
        );
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
        let owner = format!(
            "{host}-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let metrics = metrics::Metrics::new(destination.as_str());
        // Partitions before the store: it reads whether rows from before partitioning are left.
        retention::maintain_at_start(&pool, destination.as_str(), settings.retention, &metrics)
            .await;
        let store = store::Store::open(pool, destination.as_str(), owner, settings.lease)
            .await
            .map_err(RuntimeError::Database)?;
        let (flow, _) = tokio::sync::watch::channel(Flow::Open);
        metrics.dry_run.set(i64::from(settings.dry_run));
        let probe_wait = worker::ProbeWait::first(&settings);
        let shared = Arc::new(Shared {
            metrics,
            adapter: Arc::new(adapter),
            settings,
            names,
            store,
            publisher,
            flow,
            trial_taken: AtomicBool::new(false),
            pause_reason: Mutex::new(None),
            probe_wait: Mutex::new(probe_wait),
            consuming: AtomicUsize::new(0),
            failing_batches: AtomicU32::new(0),
        });
        Ok(Self { shared, listener })
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener")
    }

    /// Consumes until `shutdown` is cancelled, then stops taking deliveries, finishes the
    /// batches in hand (or returns them to the queue) and returns within [`SHUTDOWN_GRACE`].
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), RuntimeError> {
        let shared = self.shared;
        let destination = shared.adapter.destination();
        if !shared.publisher.wait_ready(Duration::from_secs(10)).await {
            tracing::warn!(
                destination = destination.as_str(),
                "RabbitMQ not reachable yet; retrying"
            );
        }
        let http_stop = CancellationToken::new();
        let server = {
            let app = Router::new()
                .route("/metrics", get(metrics_page::<A>))
                .route("/healthz", get(|| async { StatusCode::OK }))
                .route("/readyz", get(readyz::<A>))
                .with_state(shared.clone());
            let stop = http_stop.clone();
            tokio::spawn(async move {
                axum::serve(self.listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            })
        };
        let depth = tokio::spawn(poll_depth(shared.clone(), shutdown.clone()));
        let prober = tokio::spawn(worker::run_prober(shared.clone(), shutdown.clone()));
        let maintenance = tokio::spawn(retention::run(
            shared.store.pool().clone(),
            destination.as_str(),
            shared.settings.retention,
            leadpipe_db::partitions::maintenance_period(shared.store.width()),
            shared.metrics.clone(),
            shutdown.clone(),
        ));
        let workers: Vec<_> = (0..shared.settings.concurrency)
            .map(|i| tokio::spawn(worker::run_worker(shared.clone(), i, shutdown.clone())))
            .collect();
        tracing::info!(
            destination = destination.as_str(),
            concurrency = shared.settings.concurrency,
            "sender consuming"
        );
        shutdown.cancelled().await;
        tracing::info!(
            destination = destination.as_str(),
            "draining in-flight batches"
        );
        let drained =
            tokio::time::timeout(SHUTDOWN_GRACE, futures::future::join_all(workers)).await;
        if drained.is_err() {
            tracing::warn!(
                "in-flight batches did not finish in time; their messages return to the queue"
            );
        }
        prober.abort();
        depth.abort();
        maintenance.abort();
        http_stop.cancel();
        let _ = server.await;
        tracing::info!(destination = destination.as_str(), "sender stopped");
        Ok(())
    }
}

async fn metrics_page<A: Adapter>(State(shared): State<Arc<Shared<A>>>) -> Response {
    shared.metrics.ready.set(i64::from(shared.is_ready()));
    (
        [(
            header::CONTENT_TYPE,
            leadpipe_telemetry::metrics::CONTENT_TYPE,
        )],
        leadpipe_telemetry::metrics::render(&shared.metrics.registry),
    )
        .into_response()
}

async fn readyz<A: Adapter>(State(shared): State<Arc<Shared<A>>>) -> Response {
    let destination = shared.adapter.destination();
    let dry_run = shared.settings.dry_run;
    let mut body = if shared.is_ready() {
        serde_json::json!({"status": "ready"})
    } else {
        let reason = match *shared.flow.borrow() {
            Flow::Paused => {
                let why = shared
                    .pause_reason()
                    .map(|f| format!("{}: {}", f.code, f.message))
                    .unwrap_or_else(|| "systemic failure".into());
                format!(
                    "paused: the destination refuses requests ({why}); next probe in {} ms",
                    shared.probe_wait().as_millis()
                )
            }
            Flow::Trial => {
                "half-open: the probe passed; a trial batch goes first, then consumption resumes"
                    .to_owned()
            }
            Flow::Open if shared.publisher.is_blocked() => {
                "RabbitMQ blocks publishing (memory or disk alarm): not taking deliveries until it \
                 unblocks"
                    .to_owned()
            }
            Flow::Open => "not consuming yet (broker or database unreachable)".to_owned(),
        };
        serde_json::json!({"status": "not_ready", "reason": reason})
    };
    if dry_run {
        body["dry_run"] = serde_json::Value::Bool(true);
        body["note"] = serde_json::Value::String(format!(
            "DRY_RUN: nothing is sent to {destination}; each request is built and recorded as dry_run"
        ));
    }
    let status = if body["status"] == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Keeps the queue depth gauges current (every 5 s).
async fn poll_depth<A: Adapter>(shared: Arc<Shared<A>>, shutdown: CancellationToken) {
    let d = shared.adapter.destination();
    let queues = [
        ("work", shared.names.work_queue(d)),
        ("dlq", shared.names.dead_letter_queue(d)),
    ];
    loop {
        if let Ok(conn) = leadpipe_bus::connect(&shared.settings.amqp.url, "depth-poller").await
            && let Ok(channel) = conn.create_channel().await
        {
            loop {
                let mut ok = true;
                for (label, q) in &queues {
                    match leadpipe_bus::topology::queue_depth(&channel, q).await {
                        Ok(n) => shared
                            .metrics
                            .depth
                            .with_label_values(&[label])
                            .set(i64::from(n)),
                        Err(_) => ok = false,
                    }
                }
                if !ok {
                    break;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = conn.close(200, "stopping".into()).await;
                        return;
                    }
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
