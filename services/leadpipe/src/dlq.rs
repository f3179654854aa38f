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
    for m in messages {
        let headers = headers::without(
            &m.properties.headers().clone().unwrap_or_default(),
            headers::DELIVERY_COUNT,
        );
        publisher
            .publish(&OutgoingMessage {
                exchange: &names.dead_letter_exchange(),
                routing_key: dest.as_str(),
                body: &m.data,
                message_id: &message_id(m),
                headers,
                expiration_ms: None,
            })
            .await?;
        m.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

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

/// `dlq stats`: messages per destination and error code.
pub(crate) async fn stats() -> anyhow::Result<ExitCode> {
    let amqp = AmqpSettings::from_env()?;
    let names = Names::new(amqp.namespace.clone());
    let conn = leadpipe_bus::connect(&amqp.url, "leadpipe-cli").await?;
    let stop = CancellationToken::new();
    let publisher = cli_publisher(&amqp, &names, &stop).await?;
    println!(
        "{:<11} {:<28} {:>8}",
        "destination", "error code", "messages"
    );
    for d in leadpipe_registry::enabled()?.iter().map(|r| r.destination) {
        let channel = conn.create_channel().await?;
        let messages = read_all(&channel, &names.dead_letter_queue(d)).await?;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for m in &messages {
            let code = header(m, headers::ERROR_CODE)
                // Dead-lettered by the broker itself (delivery limit), not by a sender.
                .unwrap_or_else(|| "delivery_limit".into());
            *counts.entry(code).or_default() += 1;
        }
        if counts.is_empty() {
            println!("{:<11} {:<28} {:>8}", d.as_str(), "-", 0);
        }
        for (code, n) in counts {
            println!("{:<11} {code:<28} {n:>8}", d.as_str());
        }
        give_back(&publisher, &names, d, &messages).await?;
        let _ = channel.close(200, "read only".into()).await;
    }
    stop.cancel();
    let _ = conn.close(200, "done".into()).await;
    Ok(ExitCode::SUCCESS)
}

/// `dlq list <destination>`: one line per message, redacted.
pub(crate) async fn list(dest: Destination, limit: usize) -> anyhow::Result<ExitCode> {
    let amqp = AmqpSettings::from_env()?;
    let names = Names::new(amqp.namespace.clone());
    let conn = leadpipe_bus::connect(&amqp.url, "leadpipe-cli").await?;
    let stop = CancellationToken::new();
    let publisher = cli_publisher(&amqp, &names, &stop).await?;
    let channel = conn.create_channel().await?;
    let messages = read_all(&channel, &names.dead_letter_queue(dest)).await?;
    println!(
        "{} message(s) in {}",
        messages.len(),
        names.dead_letter_queue(dest)
    );
    for m in messages.iter().take(limit) {
        println!(
            "{}  code={} http={} attempts={} failed_at={}\n    {}",
            message_id(m),
            header(m, headers::ERROR_CODE).unwrap_or_else(|| "delivery_limit".into()),
            header(m, headers::HTTP_STATUS).unwrap_or_else(|| "-".into()),
            header(m, headers::ATTEMPTS).unwrap_or_else(|| "-".into()),
            header(m, headers::FAILED_AT).unwrap_or_else(|| "-".into()),
            header(m, headers::ERROR_MESSAGE).unwrap_or_else(|| "(no message)".into()),
        );
    }
    give_back(&publisher, &names, dest, &messages).await?;
    stop.cancel();
    let _ = channel.close(200, "read only".into()).await;
    let _ = conn.close(200, "done".into()).await;
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

/// `dlq replay <destination>`: moves matching messages back to the work queue with their
/// attempts reset and the same event_id, and reopens their delivery log rows. A message the
/// destination would now refuse as too old stays in the DLQ, counted and said.
pub(crate) async fn replay(
    dest: Destination,
    filter: ReplayFilter<'_>,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let ReplayFilter {
        error_code,
        since,
        limit,
    } = filter;
    let amqp = AmqpSettings::from_env()?;
    let names = Names::new(amqp.namespace.clone());
    let dlq = names.dead_letter_queue(dest);
    let work = names.work_queue(dest);
    let conn = leadpipe_bus::connect(&amqp.url, "leadpipe-cli").await?;
    let channel = conn.create_channel().await?;
    let messages = read_all(&channel, &dlq).await?;
    let code_of =
        |m: &Delivery| header(m, headers::ERROR_CODE).unwrap_or_else(|| "delivery_limit".into());
    let limit = limit.unwrap_or(usize::MAX);
    let failed_at = |m: &Delivery| {
        header(m, headers::FAILED_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let now = Utc::now();
    // (replay it, too old to replay) per message.
    let (chosen, stale): (Vec<bool>, Vec<bool>) = {
        let mut n = 0;
        messages
            .iter()
            .map(|m| {
                let wanted = error_code.is_none_or(|c| c == code_of(m))
                    && since.is_none_or(|t| failed_at(m).is_some_and(|f| f >= t))
                    && n < limit;
                let old = wanted && too_old(dest, m, now);
                n += usize::from(wanted);
                (wanted && !old, old)
            })
            .unzip()
    };
    let total = chosen.iter().filter(|c| **c).count();
    let refused = stale.iter().filter(|c| **c).count();
    if dry_run {
        for (m, _) in messages.iter().zip(&chosen).filter(|(_, c)| **c) {
            println!("would replay {} ({})", message_id(m), code_of(m));
        }
        for (m, _) in messages.iter().zip(&stale).filter(|(_, c)| **c) {
            println!(
                "would keep {} ({}): too old for {} now",
                message_id(m),
                code_of(m),
                dest.as_str()
            );
        }
        println!(
            "{total} of {} message(s) would be replayed to {work}; {refused} too old for {} would stay",
            messages.len(),
            dest.as_str()
        );
        let stop = CancellationToken::new();
        let publisher = cli_publisher(&amqp, &names, &stop).await?;
        give_back(&publisher, &names, dest, &messages).await?;
        stop.cancel();
        let _ = channel.close(200, "dry run".into()).await;
        return Ok(ExitCode::SUCCESS);
    }
    let pool = leadpipe_db::connect(&DatabaseSettings::from_env().url, 1).await?;
    let stop = CancellationToken::new();
    let publisher = cli_publisher(&amqp, &names, &stop).await?;
    let (mut replayed, mut kept) = (0usize, 0usize);
    for (m, replay) in messages.iter().zip(chosen) {
        let id = message_id(m);
        let traceparent = header(m, headers::TRACEPARENT);
        if replay {
            // Reopen the row first: if the move then fails, the event is still in the DLQ and
            // a reopened row only means the next delivery of it is processed.
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
            .execute(&pool)
            .await?;
            // Fresh headers: attempts start again, error headers go, the trace stays.
            let headers = string_headers(traceparent.map(|t| (headers::TRACEPARENT, t)));
            publisher
                .publish(&OutgoingMessage {
                    exchange: "",
                    routing_key: &work,
                    body: &m.data,
                    message_id: &id,
                    headers,
                    expiration_ms: None,
                })
                .await?;
            replayed += 1;
        } else {
            // Not chosen: to the DLQ's tail, untouched, so this pass never meets it again.
            publisher
                .publish(&OutgoingMessage {
                    exchange: &names.dead_letter_exchange(),
                    routing_key: dest.as_str(),
                    body: &m.data,
                    message_id: &id,
                    headers: m.properties.headers().clone().unwrap_or_default(),
                    expiration_ms: None,
                })
                .await?;
            kept += 1;
        }
        m.ack(BasicAckOptions::default()).await?;
        let done = replayed + kept;
        if done % 50 == 0 || done == messages.len() {
            let width = 30;
            let filled = width * done / messages.len().max(1);
            eprint!(
                "\r  [{}{}] {done}/{} ({replayed} replayed)",
                "#".repeat(filled),
                " ".repeat(width - filled),
                messages.len()
            );
        }
    }
    eprintln!();
    stop.cancel();
    println!("replayed {replayed} message(s) to {work}; {kept} left in {dlq}");
    if refused > 0 {
        println!(
            "{refused} of them too old for {} now (older than it accepts): left in {dlq}",
            dest.as_str()
        );
    }
    let _ = channel.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    Ok(ExitCode::SUCCESS)
}
