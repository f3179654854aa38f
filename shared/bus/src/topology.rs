//! Declares the whole topology of a namespace (SPEC §4). Every declaration is idempotent:
//! each service runs it at start-up and `leadpipe topology apply` runs it on demand.
//!
//! ```text
//!  ingest ──► <ns>.events (topic) ──#──► <ns>.meta | <ns>.ga4 | <ns>.google_ads | <ns>.crm
//!                                            │ (quorum; dead-letter on reject or delivery limit)
//!                                            ▼
//!            <ns>.dlx (direct, key = destination) ──► <ns>.<destination>.dlq
//!
//!  sender retry ──► <ns>.delay (topic, key = <tier>.<destination>) ──► <ns>.delay.<tier>
//!                     (TTL = tier) ──► <ns>.redeliver (topic, *.<destination>) ──► work queue
//! ```

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::names::{DELAY_TIERS, Destination, Names, tier_label};
use crate::{Error, Result};

/// How many times the broker redelivers a message whose consumer died holding it before it
/// dead-letters it (`x-delivery-limit`): a poison message cannot loop forever.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// Topology knobs.
#[derive(Debug, Clone, Copy)]
pub struct TopologySettings {
    /// `x-delivery-limit` of the work queues.
    pub delivery_limit: u32,
}

impl Default for TopologySettings {
    fn default() -> Self {
        Self {
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
        }
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn text(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

/// Arguments every quorum queue here shares. Quorum queues replicate and fsync before
/// confirming, which is what makes a `202` durable (SPEC §1.1). At-least-once dead-lettering
/// (which needs `reject-publish` overflow) keeps a dead letter until the DLQ has confirmed it,
/// instead of the default at-most-once, which can drop it.
fn quorum_args() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-queue-type".into(), text("quorum"));
    t
}

fn dead_lettering(t: &mut FieldTable, exchange: &str, routing_key: Option<&str>) {
    t.insert("x-dead-letter-exchange".into(), text(exchange));
    if let Some(rk) = routing_key {
        t.insert("x-dead-letter-routing-key".into(), text(rk));
    }
    t.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    t.insert("x-overflow".into(), text("reject-publish"));
}

/// Declares every exchange, queue and binding of `names`' namespace.
pub async fn declare(channel: &Channel, names: &Names, settings: TopologySettings) -> Result<()> {
    let exchanges = [
        (names.events_exchange(), ExchangeKind::Topic),
        (names.dead_letter_exchange(), ExchangeKind::Direct),
        (names.delay_exchange(), ExchangeKind::Topic),
        (names.redeliver_exchange(), ExchangeKind::Topic),
    ];
    for (name, kind) in exchanges {
        channel
            .exchange_declare(
                name.as_str().into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| Error::Declare {
                what: format!("exchange {name}"),
                source,
            })?;
    }

    for d in Destination::ALL {
        // The dead-letter queue first, so that nothing dead-lettered is ever unroutable.
        let dlq = names.dead_letter_queue(d);
        queue(channel, &dlq, quorum_args()).await?;
        bind(channel, &dlq, &names.dead_letter_exchange(), d.as_str()).await?;

        let work = names.work_queue(d);
        let mut args = quorum_args();
        dead_lettering(&mut args, &names.dead_letter_exchange(), Some(d.as_str()));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(settings.delivery_limit)),
        );
        queue(channel, &work, args).await?;
        // Every event name reaches every destination: a destination skips what its mapping
        // does not send, and custom event names need no new binding.
        bind(channel, &work, &names.events_exchange(), "#").await?;
        bind(
            channel,
            &work,
            &names.redeliver_exchange(),
            &format!("*.{}", d.as_str()),
        )
        .await?;
    }

    for tier in DELAY_TIERS {
        let q = names.delay_queue(tier);
        let mut args = quorum_args();
        // Expired messages keep their routing key `<tier>.<destination>`, which the
        // redeliver exchange routes back to the destination's work queue.
        dead_lettering(&mut args, &names.redeliver_exchange(), None);
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(tier.as_millis()).unwrap_or(i64::MAX)),
        );
        queue(channel, &q, args).await?;
        bind(
            channel,
            &q,
            &names.delay_exchange(),
            &format!("{}.*", tier_label(tier)),
        )
        .await?;
    }
    tracing::info!(namespace = names.namespace(), "topology declared");
    Ok(())
}

async fn queue(channel: &Channel, name: &str, args: FieldTable) -> Result<()> {
    channel
        .queue_declare(name.into(), durable(), args)
        .await
        .map(|_| ())
        .map_err(|source| Error::Declare {
            what: format!(
                "queue {name} (if it exists with other arguments, delete it or use another LEADPIPE_NAMESPACE)"
            ),
            source,
        })
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> Result<()> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| Error::Declare {
            what: format!("binding {exchange} -[{key}]-> {queue}"),
            source,
        })
}

/// Number of ready messages in `queue` (a passive declare; fails if the queue does not exist).
pub async fn queue_depth(channel: &Channel, queue: &str) -> Result<u32> {
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

/// Deletes every queue and exchange of the namespace (tests and `topology delete`).
pub async fn delete(channel: &Channel, names: &Names) -> Result<()> {
    for q in names.all_queues() {
        channel
            .queue_delete(q.as_str().into(), Default::default())
            .await?;
    }
    for e in names.all_exchanges() {
        channel
            .exchange_delete(e.as_str().into(), Default::default())
            .await?;
    }
    Ok(())
}

/// The smallest delay tier at least `delay` long (the longest when none is).
pub fn tier_for(delay: Duration) -> Duration {
    DELAY_TIERS
        .into_iter()
        .find(|t| *t >= delay)
        .unwrap_or(DELAY_TIERS[DELAY_TIERS.len() - 1])
}
