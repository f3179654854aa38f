//! A confirmed publisher that survives the broker going away.
//!
//! A supervisor task owns the connection: it connects, declares the topology, opens a few
//! channels in confirm mode, each drained by one publishing task (a lane); when the connection
//! fails it drops the lanes (so [`Publisher::is_ready`] turns false at once) and reconnects
//! with capped exponential backoff, without a restart of the service. Every publish sets
//! `mandatory` and awaits its own confirm within a deadline: `Ok` means the broker has the
//! message on every queue it routes to; anything else is an error the caller must report as
//! "not accepted".
//!
//! A lane takes every message waiting for it at once (a burst), hands the whole burst to the
//! channel in one go and awaits the burst's confirms together, then answers each caller: one
//! wake-up of the connection's I/O loop and of the lane per burst instead of several per
//! message, which is what lets ingest keep up with the broker. No caller is answered before
//! its own message's confirm.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::{Notify, RwLock, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::names::Names;
use crate::topology::{self, TopologySettings};

/// Why a message was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No open channel: the broker is unreachable or the publisher is reconnecting.
    #[error("not connected to RabbitMQ")]
    NotConnected,
    /// The broker did not confirm within the deadline.
    #[error("RabbitMQ did not confirm within {0:?}")]
    Timeout(Duration),
    /// The broker refused the message (e.g. a queue is full or unavailable).
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    /// No queue is bound for the routing key: the topology is missing.
    #[error("RabbitMQ could not route the message: {0}")]
    Unroutable(String),
    /// The channel failed during the publish.
    #[error("publishing failed: {0}")]
    Amqp(#[from] lapin::Error),
}

/// Publisher knobs.
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    /// `AMQP_URL`.
    pub url: String,
    /// Shown in the broker's connection list.
    pub connection_name: String,
    /// How long a publish waits for its confirm before it is reported as failed.
    pub confirm_timeout: Duration,
    /// First reconnect delay; doubles up to [`PublisherSettings::max_reconnect_delay`].
    pub min_reconnect_delay: Duration,
    /// Longest reconnect delay.
    pub max_reconnect_delay: Duration,
    /// Topology declared on every (re)connect.
    pub topology: TopologySettings,
    /// Confirm-mode channels publishes are spread over (the broker runs each channel as one
    /// process).
    pub channels: usize,
    /// Keep waiting for a confirm past the deadline while the broker blocks the connection
    /// (a memory or disk alarm). A message written before the block is published once it
    /// clears, so giving up on it and publishing it again would put it on the queue twice:
    /// senders wait; ingest, which must answer its client, does not.
    pub wait_while_blocked: bool,
}

impl PublisherSettings {
    /// Defaults for `url` declaring `topology`: 5 s confirm deadline, reconnect every
    /// 100 ms → 5 s.
    pub fn new(
        url: impl Into<String>,
        connection_name: impl Into<String>,
        topology: TopologySettings,
    ) -> Self {
        Self {
            url: url.into(),
            connection_name: connection_name.into(),
            confirm_timeout: Duration::from_secs(5),
            min_reconnect_delay: Duration::from_millis(100),
            max_reconnect_delay: Duration::from_secs(5),
            topology,
            channels: 1,
            wait_while_blocked: false,
        }
    }
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct OutgoingMessage<'a> {
    /// Target exchange.
    pub exchange: &'a str,
    /// Routing key.
    pub routing_key: &'a str,
    /// JSON body.
    pub body: &'a [u8],
    /// `message_id` (the event_id).
    pub message_id: &'a str,
    /// AMQP headers (`traceparent`, and for dead letters the error headers).
    pub headers: FieldTable,
    /// Per-message TTL in milliseconds (retries waiting in a delay queue).
    pub expiration_ms: Option<u64>,
}

impl OutgoingMessage<'_> {
    /// Properties of every leadpipe message: persistent JSON with its id and a timestamp.
    fn properties(&self) -> BasicProperties {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(self.message_id.into())
            .with_timestamp(now)
            .with_headers(self.headers.clone());
        match self.expiration_ms {
            Some(ms) => props.with_expiration(ms.to_string().into()),
            None => props,
        }
    }
}

/// Builds a header table from string pairs.
pub fn string_headers<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(k.into(), AMQPValue::LongString(v.into()));
    }
    t
}

/// A cheaply cloneable handle to the publishing channel and its supervisor.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

/// One message handed to a lane, with where its outcome goes.
struct Job {
    exchange: String,
    routing_key: String,
    body: Vec<u8>,
    properties: BasicProperties,
    reply: oneshot::Sender<Result<(), PublishError>>,
}

/// Most messages a lane publishes as one burst.
const BURST: usize = 256;

struct Inner {
    settings: PublisherSettings,
    names: Names,
    lanes: RwLock<Vec<mpsc::Sender<Job>>>,
    next: AtomicUsize,
    ready: AtomicBool,
    /// The broker has blocked the connection (a memory or disk alarm): publishes wait.
    blocked: AtomicBool,
    /// Woken when a publish finds the channel broken, so the supervisor reconnects at once.
    broken: Notify,
    /// Woken whenever readiness changes (tests and start-up wait on it).
    changed: Notify,
    connects: AtomicU64,
}

impl Publisher {
    /// Starts the supervisor; it keeps connecting until `shutdown` is cancelled. Returns at once:
    /// use [`Publisher::wait_ready`] to wait for the first connection.
    pub fn start(settings: PublisherSettings, names: Names, shutdown: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            settings,
            names,
            lanes: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            broken: Notify::new(),
            changed: Notify::new(),
            connects: AtomicU64::new(0),
        });
        tokio::spawn(supervise(inner.clone(), shutdown));
        Self { inner }
    }

    /// Whether a confirm-mode channel is open (`/readyz`).
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Whether the broker has blocked publishing (`connection.blocked`: a memory or disk
    /// alarm). RabbitMQ says so once the connection tries to publish; until it unblocks, no
    /// publish is confirmed.
    pub fn is_blocked(&self) -> bool {
        self.inner.blocked.load(Ordering::Acquire)
    }

    /// Whether a publish can be confirmed now: connected and not blocked.
    pub fn is_usable(&self) -> bool {
        self.is_ready() && !self.is_blocked()
    }

    /// Waits until [`Publisher::is_usable`] or `timeout` passes; returns usability.
    pub async fn wait_usable(&self, timeout: Duration) -> bool {
        self.wait_until(Self::is_usable, timeout).await
    }

    /// How many times the supervisor has connected (1 after start-up; more after recoveries).
    pub fn connections_made(&self) -> u64 {
        self.inner.connects.load(Ordering::Acquire)
    }

    /// Waits until ready or `timeout` passes; returns readiness.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        self.wait_until(Self::is_ready, timeout).await
    }

    /// Waits until `state` holds (checked whenever readiness or blocking changes) or `timeout`
    /// passes; returns whether it holds.
    async fn wait_until(&self, state: fn(&Self) -> bool, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let changed = self.inner.changed.notified();
                if state(self) {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// The namespace's names.
    pub fn names(&self) -> &Names {
        &self.inner.names
    }

    /// Publishes `msg` with `mandatory` and waits for the broker's confirm.
    pub async fn publish(&self, msg: &OutgoingMessage<'_>) -> Result<(), PublishError> {
        let lane = {
            let lanes = self.inner.lanes.read().await;
            if lanes.is_empty() {
                return Err(PublishError::NotConnected);
            }
            let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % lanes.len();
            lanes[i].clone()
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            exchange: msg.exchange.to_owned(),
            routing_key: msg.routing_key.to_owned(),
            body: msg.body.to_vec(),
            properties: msg.properties(),
            reply,
        };
        let deadline = self.inner.settings.confirm_timeout;
        let outcome = async {
            // A closed lane, or one that drops the job: the connection is being replaced.
            lane.send(job)
                .await
                .map_err(|_| PublishError::NotConnected)?;
            answer.await.map_err(|_| PublishError::NotConnected)?
        };
        tokio::pin!(outcome);
        loop {
            match tokio::time::timeout(deadline, &mut outcome).await {
                Ok(result) => return result,
                // Blocked: the message is written and goes out when the alarm clears; its
                // confirm (or the connection's loss) answers then.
                Err(_) if self.inner.settings.wait_while_blocked && self.is_blocked() => {}
                Err(_) => return Err(PublishError::Timeout(deadline)),
            }
        }
    }
}

/// Drains `jobs` in bursts onto `channel` until the publisher drops the lane.
async fn lane(inner: Arc<Inner>, channel: Channel, mut jobs: mpsc::Receiver<Job>) {
    let mut burst = Vec::with_capacity(BURST);
    while jobs.recv_many(&mut burst, BURST).await > 0 {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        // Every message of the burst goes to the channel before any is awaited: the I/O loop
        // writes them together.
        let published = futures::future::join_all(burst.iter().map(|job| {
            channel.basic_publish(
                job.exchange.as_str().into(),
                job.routing_key.as_str().into(),
                options,
                &job.body,
                job.properties.clone(),
            )
        }))
        .await;
        let mut confirms = Vec::with_capacity(published.len());
        for (job, sent) in burst.drain(..).zip(published) {
            match sent {
                Ok(confirm) => confirms.push((confirm, job.reply)),
                Err(e) => {
                    inner.broken.notify_one();
                    let _ = job.reply.send(Err(e.into()));
                }
            }
        }
        // The confirms are awaited aside, so the next burst goes out meanwhile.
        let inner = inner.clone();
        tokio::spawn(async move {
            for (confirm, reply) in confirms {
                let outcome = settle(&inner, confirm.await);
                let _ = reply.send(outcome);
            }
        });
    }
}

/// What a confirm means for the caller.
fn settle(inner: &Inner, confirm: lapin::Result<Confirmation>) -> Result<(), PublishError> {
    match confirm {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) => Err(
            PublishError::Unroutable(format!("{} {}", returned.reply_code, returned.reply_text)),
        ),
        Ok(Confirmation::Nack(None)) => Err(PublishError::Nacked),
        Ok(Confirmation::NotRequested) => {
            // Only a channel without confirm mode answers this; never ours, but never a 202.
            inner.broken.notify_one();
            Err(PublishError::NotConnected)
        }
        Err(e) => {
            inner.broken.notify_one();
            Err(e.into())
        }
    }
}

async fn supervise(inner: Arc<Inner>, shutdown: CancellationToken) {
    let reconnects = || {
        crate::backoff::doubling(
            inner.settings.min_reconnect_delay,
            inner.settings.max_reconnect_delay,
        )
    };
    let mut backoff = reconnects();
    loop {
        let opened = match tokio::time::timeout(SETUP_TIMEOUT, open(&inner)).await {
            Ok(opened) => opened,
            Err(_) => Err(crate::Error::SetupTimeout(SETUP_TIMEOUT)),
        };
        let failed = match opened {
            Ok((conn, channels)) => {
                backoff = reconnects();
                let mut events = conn.events_listener();
                let mut lanes = Vec::with_capacity(channels.len());
                for channel in &channels {
                    let (tx, rx) = mpsc::channel(BURST * 4);
                    tokio::spawn(lane(inner.clone(), channel.clone(), rx));
                    lanes.push(tx);
                }
                *inner.lanes.write().await = lanes;
                inner.ready.store(true, Ordering::Release);
                inner.connects.fetch_add(1, Ordering::AcqRel);
                inner.changed.notify_waiters();
                tracing::info!(namespace = inner.names.namespace(), "publisher connected");
                let stop = loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break true,
                        _ = inner.broken.notified() => {
                            if !conn.status().connected()
                                || channels.iter().any(|c| !c.status().connected())
                            {
                                break false;
                            }
                        }
                        ev = events.next() => match ev {
                            Some(lapin::Event::Error(e)) => {
                                tracing::warn!(error = %e, "broker connection lost");
                                break false;
                            }
                            Some(lapin::Event::ConnectionBlocked(reason)) => {
                                tracing::warn!(
                                    %reason,
                                    "RabbitMQ blocks publishing (resource alarm): publishes wait until it unblocks"
                                );
                                inner.blocked.store(true, Ordering::Release);
                                inner.changed.notify_waiters();
                            }
                            Some(lapin::Event::ConnectionUnblocked) => {
                                tracing::info!("RabbitMQ unblocked publishing");
                                inner.blocked.store(false, Ordering::Release);
                                inner.changed.notify_waiters();
                            }
                            None => break false,
                            Some(_) => {}
                        },
                    }
                };
                inner.ready.store(false, Ordering::Release);
                inner.blocked.store(false, Ordering::Release);
                // Dropping the senders ends the lanes once they have drained.
                inner.lanes.write().await.clear();
                inner.changed.notify_waiters();
                if stop {
                    // Let in-flight confirms land, then close politely.
                    let drain =
                        futures::future::join_all(channels.iter().map(|c| c.wait_for_confirms()));
                    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
                    let _ = conn.close(200, "shutdown".into()).await;
                    return;
                }
                let _ = conn.close(320, "reconnecting".into()).await;
                None
            }
            Err(e) => Some(e),
        };
        let delay = backoff.next_wait();
        if let Some(e) = failed {
            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach RabbitMQ");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// How long the publisher's connection may take to be set up (connecting to each node in
/// turn, declaring the topology, opening its channels) before it is dropped and made again:
/// a declaration left waiting by a cluster that lost a node must not keep the publisher, and
/// the senders that wait for it, away for good.
const SETUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

async fn open(inner: &Inner) -> crate::Result<(Connection, Vec<Channel>)> {
    let conn = crate::connect(&inner.settings.url, &inner.settings.connection_name).await?;
    topology::declare(&conn, &inner.names, &inner.settings.topology).await?;
    let mut channels = Vec::with_capacity(inner.settings.channels.max(1));
    for _ in 0..inner.settings.channels.max(1) {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channels.push(channel);
    }
    Ok((conn, channels))
}
