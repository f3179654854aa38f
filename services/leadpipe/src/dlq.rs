//! `leadpipe dlq stats | list | replay`: inspect and replay dead-letter queues.
//!
//! Reading a DLQ never loses a message and never spends its delivery attempts: `stats`, `list`
//! and `replay --dry-run` read every message once, put a copy back at the DLQ's tail (once the
//! broker confirmed it) and ack the original, so the broker's delivery count never grows with
//! inspections (on RabbitMQ 4.x quorum queues default to a delivery limit of 20, which would
//! discard a DLQ inspected twenty times); `replay` moves a message only after the broker
//! confirmed it on its new queue, and walks the queue once (messages it keeps are moved to the
//! DLQ's tail, so a pass never sees a message twice). Output never includes a body:
//! only ids and the error headers, which carry no PII.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use leadpipe_bus::publisher::string_headers;
use leadpipe_bus::{Destination, Names, OutgoingMessage, Publisher, PublisherSettings, headers};
use leadpipe_config::{AmqpSettings, DatabaseSettings};
use leadpipe_events::Envelope;
use leadpipe_registry::REGISTRY;

fn header(d: &Delivery, name: &str) -> Option<String> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}

fn message_id(d: &Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_else(|| "(no id)".into())
}

/// Parses a destination argument, naming the valid ones.
pub(crate) fn destination(s: &str) -> anyhow::Result<Destination> {
    Ok(REGISTRY.parse_named("destination", s)?.destination)
}

/// Reads up to the queue's current depth of messages; the caller acks or drops the channel.
async fn read_all(channel: &lapin::Channel, queue: &str) -> anyhow::Result<Vec<Delivery>> {
    let depth = leadpipe_bus::topology::queue_depth(channel, queue).await? as usize;
    if depth == 0 {
        return Ok(Vec::new());
    }
    channel
        .basic_qos(
            u16::try_from(depth).unwrap_or(u16::MAX),
            BasicQosOptions::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            format!("leadpipe-cli-{}", std::process::id()).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut out = Vec::with_capacity(depth);
    while out.len() < depth {
        match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
            Ok(Some(Ok(d))) => out.push(d),
            _ => break,
        }
    }
    Ok(out)
}

/// Puts a copy of each read message back at its DLQ's tail, then acks the original, so that
/// reading spends none of the message's delivery attempts. A copy that is not confirmed leaves
/// its original unacked (returned to the queue when the channel closes).
async fn give_back(
    publisher: &Publisher,
    names: &Names,
    dest: Destination,
    messages: &[Delivery],
) -> anyhow::Result<()> {
    let exchange = names.dead_letter_exchange();
    // Confirms are awaited GIVE_BACK_AT_ONCE at a time, not one by one: a DLQ of thousands is
    // read in a fraction of a second. Each original is acked only after its copy's confirm.
    for chunk in messages.chunks(GIVE_BACK_AT_ONCE) {
        let copies = chunk
            .iter()
            .map(|m| give_back_one(publisher, &exchange, dest, m));
        for done in futures::future::join_all(copies).await {
            done?;
        }
    }
    Ok(())
}

/// [`give_back`] of one message.
async fn give_back_one(
    publisher: &Publisher,
    exchange: &str,
    dest: Destination,
    m: &Delivery,
) -> anyhow::Result<()> {
    let headers = headers::without(
        &m.properties.headers().clone().unwrap_or_default(),
        headers::DELIVERY_COUNT,
    );
    publisher
        .publish(&OutgoingMessage {
            exchange,
            routing_key: dest.as_str(),
            body: &m.data,
            message_id: &message_id(m),
            headers,
            expiration_ms: None,
        })
        .await?;
    m.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// How many copies [`give_back`] has under way at once.
const GIVE_BACK_AT_ONCE: usize = 256;

/// A confirmed publisher for the CLI, or an error naming the broker.
async fn cli_publisher(
    amqp: &AmqpSettings,
    names: &Names,
    stop: &CancellationToken,
) -> anyhow::Result<Publisher> {
    let publisher = Publisher::start(
        PublisherSettings::new(
            amqp.url.clone(),
            "leadpipe-cli",
            leadpipe_registry::enabled_topology()?,
        ),
        names.clone(),
        stop.clone(),
    );
    anyhow::ensure!(
        publisher.wait_ready(Duration::from_secs(10)).await,
        "cannot publish to RabbitMQ"
    );
    Ok(publisher)
}

/// One dead letter as the CLI and the console show it: its id and error headers, never its
/// body.
#[derive(Debug, Clone)]
pub(crate) struct Letter {
    pub id: String,
    /// `x-leadpipe-error-code`, or `delivery_limit` when the broker dead-lettered it itself.
    pub code: String,
    pub http_status: Option<String>,
    pub attempts: Option<String>,
    pub failed_at: Option<DateTime<Utc>>,
    pub failed_at_raw: Option<String>,
    pub message: Option<String>,
}

impl Letter {
    fn of(d: &Delivery) -> Self {
        let failed_at_raw = header(d, headers::FAILED_AT);
        Self {
            id: message_id(d),
            code: header(d, headers::ERROR_CODE)
                // Dead-lettered by the broker itself (delivery limit), not by a sender.
                .unwrap_or_else(|| "delivery_limit".into()),
            http_status: header(d, headers::HTTP_STATUS),
            attempts: header(d, headers::ATTEMPTS),
            failed_at: failed_at_raw
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
            failed_at_raw,
            message: header(d, headers::ERROR_MESSAGE),
        }
    }
}

/// The dead letters of one error code.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub code: String,
    pub count: usize,
    pub first_failed: Option<DateTime<Utc>>,
    pub last_failed: Option<DateTime<Utc>>,
    /// The ids of the first few, in queue order.
    pub samples: Vec<String>,
}

/// How many ids a [`Group`] keeps as its sample.
pub(crate) const SAMPLE: usize = 5;

/// Groups dead letters by error code (codes in order).
pub(crate) fn group(letters: &[Letter]) -> Vec<Group> {
    let mut groups: BTreeMap<&str, Group> = BTreeMap::new();
    for l in letters {
        let g = groups.entry(&l.code).or_insert_with(|| Group {
            code: l.code.clone(),
            count: 0,
            first_failed: None,
            last_failed: None,
            samples: Vec::new(),
        });
        g.count += 1;
        if let Some(t) = l.failed_at {
            g.first_failed = Some(g.first_failed.map_or(t, |f| f.min(t)));
            g.last_failed = Some(g.last_failed.map_or(t, |f| f.max(t)));
        }
        if g.samples.len() < SAMPLE {
            g.samples.push(l.id.clone());
        }
    }
    groups.into_values().collect()
}

/// A connection to the broker for reading and moving dead letters: what `leadpipe dlq` and
/// the console both use.
pub(crate) struct Dlq {
    names: Names,
    conn: lapin::Connection,
    publisher: Publisher,
    stop: CancellationToken,
}

impl Dlq {
    /// Connects to `AMQP_URL` with a confirmed publisher.
    pub(crate) async fn connect() -> anyhow::Result<Self> {
        let amqp = AmqpSettings::from_env()?;
        let names = Names::new(amqp.namespace.clone());
        let conn = leadpipe_bus::connect(&amqp.url, "leadpipe-cli").await?;
        let stop = CancellationToken::new();
        let publisher = cli_publisher(&amqp, &names, &stop).await?;
        Ok(Self {
            names,
            conn,
            publisher,
            stop,
        })
    }

    /// The queue names.
    pub(crate) fn names(&self) -> &Names {
        &self.names
    }

    /// Every message in `dest`'s DLQ, in queue order, each put back at the DLQ's tail once
    /// read (so reading spends none of its delivery attempts).
    pub(crate) async fn letters(&self, dest: Destination) -> anyhow::Result<Vec<Letter>> {
        let channel = self.conn.create_channel().await?;
        let messages = read_all(&channel, &self.names.dead_letter_queue(dest)).await?;
        let letters = messages.iter().map(Letter::of).collect();
        give_back(&self.publisher, &self.names, dest, &messages).await?;
        let _ = channel.close(200, "read only".into()).await;
        Ok(letters)
    }

    /// What [`Dlq::replay`] would do with `filter` now, without moving anything.
    pub(crate) async fn plan(
        &self,
        dest: Destination,
        filter: &ReplayFilter<'_>,
    ) -> anyhow::Result<Plan> {
        let channel = self.conn.create_channel().await?;
        let messages = read_all(&channel, &self.names.dead_letter_queue(dest)).await?;
        let plan = Plan::of(dest, &messages, filter, Utc::now());
        give_back(&self.publisher, &self.names, dest, &messages).await?;
        let _ = channel.close(200, "dry run".into()).await;
        Ok(plan)
    }

    /// Moves the messages `filter` picks back to the work queue with their attempts reset and
    /// the same event_id, and reopens their delivery log rows. A message the destination would
    /// now refuse as too old stays in the DLQ, counted. `progress` hears after each message.
    pub(crate) async fn replay(
        &self,
        pool: &PgPool,
        dest: Destination,
        filter: &ReplayFilter<'_>,
        mut progress: impl FnMut(&Progress),
    ) -> anyhow::Result<Progress> {
        let names = &self.names;
        let work = names.work_queue(dest);
        let channel = self.conn.create_channel().await?;
        let messages = read_all(&channel, &names.dead_letter_queue(dest)).await?;
        let plan = Plan::of(dest, &messages, filter, Utc::now());
        let mut done = Progress {
            total: messages.len(),
            refused: plan.too_old.len(),
            ..Progress::default()
        };
        for (m, replay) in messages.iter().zip(&plan.chosen) {
            let id = message_id(m);
            let traceparent = header(m, headers::TRACEPARENT);
            if *replay {
                // Reopen the row first: if the move then fails, the event is still in the DLQ
                // and a reopened row only means the next delivery of it is processed.
                // The row of this event under its own name (any name, for a body that does not
                // decode: its redelivery is dead-lettered again as undecodable).
                let name = serde_json::from_slice::<Envelope>(&m.data)
                    .ok()
                    .map(|e| e.event.name().to_owned());
                sqlx::query(
                    "UPDATE deliveries SET status = 'retrying', updated_at = now()
                     WHERE destination = $1 AND event_id = $2 AND status = 'dead_lettered'
                       AND ($3::text IS NULL OR event_name = $3)",
                )
                .bind(dest.as_str())
                .bind(&id)
                .bind(name)
                .execute(pool)
                .await?;
                // Fresh headers: attempts start again, error headers go, the trace stays.
                let headers = string_headers(traceparent.map(|t| (headers::TRACEPARENT, t)));
                self.publisher
                    .publish(&OutgoingMessage {
                        exchange: "",
                        routing_key: &work,
                        body: &m.data,
                        message_id: &id,
                        headers,
                        expiration_ms: None,
                    })
                    .await?;
                done.replayed += 1;
            } else {
                // Not chosen: to the DLQ's tail, untouched, so this pass never meets it again.
                self.publisher
                    .publish(&OutgoingMessage {
                        exchange: &names.dead_letter_exchange(),
                        routing_key: dest.as_str(),
                        body: &m.data,
                        message_id: &id,
                        headers: m.properties.headers().clone().unwrap_or_default(),
                        expiration_ms: None,
                    })
                    .await?;
                done.kept += 1;
            }
            m.ack(BasicAckOptions::default()).await?;
            progress(&done);
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(done)
    }

    /// Closes the connection.
    pub(crate) async fn close(self) {
        self.stop.cancel();
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// What a replay would move: per message of the DLQ (in queue order), whether it is chosen,
/// and the letters chosen and kept as too old.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Messages in the DLQ when it was read.
    pub total: usize,
    /// Per message: replay it.
    chosen: Vec<bool>,
    /// The letters that would be replayed.
    pub replay: Vec<Letter>,
    /// The letters the filter picks that the destination would refuse as too old now.
    pub too_old: Vec<Letter>,
}

impl Plan {
    fn of(
        dest: Destination,
        messages: &[Delivery],
        filter: &ReplayFilter<'_>,
        now: DateTime<Utc>,
    ) -> Self {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut plan = Plan {
            total: messages.len(),
            ..Plan::default()
        };
        let mut picked = 0;
        for m in messages {
            let letter = Letter::of(m);
            let wanted = filter.error_code.is_none_or(|c| c == letter.code)
                && filter
                    .since
                    .is_none_or(|t| letter.failed_at.is_some_and(|f| f >= t))
                && picked < limit;
            picked += usize::from(wanted);
            let old = wanted && too_old(dest, m, now);
            plan.chosen.push(wanted && !old);
            if old {
                plan.too_old.push(letter);
            } else if wanted {
                plan.replay.push(letter);
            }
        }
        plan
    }
}

/// How far a replay is.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Progress {
    /// Messages in the DLQ when the replay read it.
    pub total: usize,
    /// Moved to the work queue.
    pub replayed: usize,
    /// Put back at the DLQ's tail (not picked, or too old).
    pub kept: usize,
    /// Of those kept, too old for the destination now.
    pub refused: usize,
}

impl Progress {
    /// Messages handled so far.
    pub(crate) fn done(&self) -> usize {
        self.replayed + self.kept
    }
}

/// `dlq stats`: messages per destination and error code.
pub(crate) async fn stats() -> anyhow::Result<ExitCode> {
    let dlq = Dlq::connect().await?;
    println!(
        "{:<11} {:<28} {:>8}",
        "destination", "error code", "messages"
    );
    for d in leadpipe_registry::enabled()?.iter().map(|r| r.destination) {
        let groups = group(&dlq.letters(d).await?);
        if groups.is_empty() {
            println!("{:<11} {:<28} {:>8}", d.as_str(), "-", 0);
        }
        for g in groups {
            println!("{:<11} {:<28} {:>8}", d.as_str(), g.code, g.count);
        }
    }
    dlq.close().await;
    Ok(ExitCode::SUCCESS)
}

/// `dlq list <destination>`: one line per message, redacted.
pub(crate) async fn list(dest: Destination, limit: usize) -> anyhow::Result<ExitCode> {
    let dlq = Dlq::connect().await?;
    let letters = dlq.letters(dest).await?;
    println!(
        "{} message(s) in {}",
        letters.len(),
        dlq.names().dead_letter_queue(dest)
    );
    for l in letters.iter().take(limit) {
        println!(
            "{}  code={} http={} attempts={} failed_at={}\n    {}",
            l.id,
            l.code,
            l.http_status.as_deref().unwrap_or("-"),
            l.attempts.as_deref().unwrap_or("-"),
            l.failed_at_raw.as_deref().unwrap_or("-"),
            l.message.as_deref().unwrap_or("(no message)"),
        );
    }
    dlq.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Parses `--since`: an RFC 3339 time, or an age back from now (`90m`, `6h`, `2d`).
pub(crate) fn since(s: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = n.parse().map_err(|_| {
        anyhow::anyhow!("--since {s:?}: use an RFC 3339 time or an age such as 90m, 6h, 2d")
    })?;
    let age = match unit {
        "m" => chrono::Duration::minutes(n),
        "h" => chrono::Duration::hours(n),
        "d" => chrono::Duration::days(n),
        _ => anyhow::bail!("--since {s:?}: the unit of an age is m, h or d"),
    };
    Ok(Utc::now() - age)
}

/// How old an event the destination still takes, for this event (`None`: any age).
fn max_age(dest: Destination, env: &Envelope) -> Option<chrono::Duration> {
    REGISTRY.get(dest).and_then(|r| (r.acceptance_window)(env))
}

/// Why a chosen message stays in the DLQ instead of being replayed: the destination would
/// refuse it as too old now.
fn too_old(dest: Destination, m: &Delivery, now: DateTime<Utc>) -> bool {
    let Ok(env) = serde_json::from_slice::<Envelope>(&m.data) else {
        return false;
    };
    let occurred = env
        .event
        .occurred_at
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
    match (occurred, max_age(dest, &env)) {
        (Some(t), Some(max)) => now - t.with_timezone(&Utc) > max,
        _ => false,
    }
}

/// What `dlq replay` picks.
pub(crate) struct ReplayFilter<'a> {
    /// Only this `x-leadpipe-error-code`.
    pub(crate) error_code: Option<&'a str>,
    /// Only messages dead-lettered at or after this time.
    pub(crate) since: Option<DateTime<Utc>>,
    /// At most this many.
    pub(crate) limit: Option<usize>,
}

/// `dlq replay <destination>`: [`Dlq::replay`] with a progress bar, or with `--dry-run` what
/// it would move ([`Dlq::plan`]).
pub(crate) async fn replay(
    dest: Destination,
    filter: ReplayFilter<'_>,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let dlq = Dlq::connect().await?;
    let names = dlq.names().clone();
    let (work, dlq_name) = (names.work_queue(dest), names.dead_letter_queue(dest));
    if dry_run {
        let plan = dlq.plan(dest, &filter).await?;
        for l in &plan.replay {
            println!("would replay {} ({})", l.id, l.code);
        }
        for l in &plan.too_old {
            println!(
                "would keep {} ({}): too old for {} now",
                l.id,
                l.code,
                dest.as_str()
            );
        }
        println!(
            "{} of {} message(s) would be replayed to {work}; {} too old for {} would stay",
            plan.replay.len(),
            plan.total,
            plan.too_old.len(),
            dest.as_str()
        );
        dlq.close().await;
        return Ok(ExitCode::SUCCESS);
    }
    let pool = leadpipe_db::connect(&DatabaseSettings::from_env().url, 1).await?;
    let done = dlq
        .replay(&pool, dest, &filter, |p| {
            let n = p.done();
            if n % 50 == 0 || n == p.total {
                let width = 30;
                let filled = width * n / p.total.max(1);
                eprint!(
                    "\r  [{}{}] {n}/{} ({} replayed)",
                    "#".repeat(filled),
                    " ".repeat(width - filled),
                    p.total,
                    p.replayed
                );
            }
        })
        .await?;
    eprintln!();
    println!(
        "replayed {} message(s) to {work}; {} left in {dlq_name}",
        done.replayed, done.kept
    );
    if done.refused > 0 {
        println!(
            "{} of them too old for {} now (older than it accepts): left in {dlq_name}",
            done.refused,
            dest.as_str()
        );
    }
    dlq.close().await;
    Ok(ExitCode::SUCCESS)
}
