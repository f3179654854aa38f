//! Declares the whole topology of a namespace (SPEC §4). Every declaration is idempotent:
//! each service runs it at start-up and `leadpipe topology apply` runs it on demand.
//!
//! ```text
//!  ingest ──► <ns>.events (topic) ──#──► <ns>.<destination>, one per enabled destination
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
use lapin::{Channel, Connection, ExchangeKind};

use crate::names::{DELAY_TIERS, Destination, Names, tier_label};
use crate::{Error, Result};

/// How many times the broker redelivers a message whose consumer died holding it before it
/// dead-letters it (`x-delivery-limit`): a poison message cannot loop forever.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// Topology knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologySettings {
    /// `x-delivery-limit` of the work queues.
    pub delivery_limit: u32,
    /// The destinations whose work and dead-letter queues are declared (the enabled ones,
    /// `LEADPIPE_DESTINATIONS`). The exchanges and delay queues are declared in any case.
    pub destinations: Vec<Destination>,
    /// How many nodes hold a replica of each quorum queue when it is created
    /// (`x-quorum-initial-group-size`; `AMQP_QUORUM_GROUP_SIZE`, else the nodes in
    /// `AMQP_URL`). At 1 the argument is left out, as before clusters were supported, so the
    /// queues of a single-node install keep their declaration.
    pub quorum_group_size: u32,
}

impl TopologySettings {
    /// The default delivery limit, queues for `destinations`, one replica.
    pub fn for_destinations(destinations: impl IntoIterator<Item = Destination>) -> Self {
        Self {
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
            destinations: destinations.into_iter().collect(),
            quorum_group_size: 1,
        }
    }

    /// The same with `size` replicas per quorum queue.
    pub fn with_quorum_group_size(self, size: u32) -> Self {
        Self {
            quorum_group_size: size.max(1),
            ..self
        }
    }
}

/// A queue argument value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Arg {
    /// A string argument.
    Text(String),
    /// An integer argument.
    Int(i64),
}

/// An exchange to declare.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeSpec {
    /// Its name.
    pub name: String,
    /// `topic` or `direct`.
    pub kind: &'static str,
}

/// A queue to declare (always durable).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    /// Its name.
    pub name: String,
    /// Its `x-` arguments.
    pub arguments: Vec<(&'static str, Arg)>,
}

/// A binding from an exchange to a queue.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingSpec {
    /// The exchange.
    pub exchange: String,
    /// The queue.
    pub queue: String,
    /// The binding key.
    pub routing_key: String,
}

/// The whole topology of a namespace, as data: declared by [`declare`], exported by
/// [`definitions`] (so `deploy/rabbitmq/definitions.json` can never drift from the code).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Exchanges, in declaration order.
    pub exchanges: Vec<ExchangeSpec>,
    /// Queues, in declaration order (each DLQ before the queue that dead-letters to it).
    pub queues: Vec<QueueSpec>,
    /// Bindings.
    pub bindings: Vec<BindingSpec>,
}

fn text(v: &str) -> Arg {
    Arg::Text(v.to_owned())
}

/// Arguments of every queue here. Quorum queues replicate and fsync before confirming, which
/// is what makes a `202` durable (SPEC §1.1); on a cluster, a majority of `group_size`
/// replicas must have the message.
fn quorum(group_size: u32) -> Vec<(&'static str, Arg)> {
    let mut args = vec![("x-queue-type", text("quorum"))];
    if group_size > 1 {
        args.push((
            "x-quorum-initial-group-size",
            Arg::Int(i64::from(group_size)),
        ));
    }
    args
}

/// At-least-once dead-lettering (which needs `reject-publish` overflow) keeps a dead letter
/// until the target queue has confirmed it, instead of the default at-most-once, which can
/// drop it.
fn dead_lettering(args: &mut Vec<(&'static str, Arg)>, exchange: &str, routing_key: Option<&str>) {
    args.push(("x-dead-letter-exchange", text(exchange)));
    if let Some(rk) = routing_key {
        args.push(("x-dead-letter-routing-key", text(rk)));
    }
    args.push(("x-dead-letter-strategy", text("at-least-once")));
    args.push(("x-overflow", text("reject-publish")));
}

/// The topology of `names`' namespace.
pub fn plan(names: &Names, settings: &TopologySettings) -> Plan {
    let mut p = Plan::default();
    for (name, kind) in [
        (names.events_exchange(), "topic"),
        (names.dead_letter_exchange(), "direct"),
        (names.delay_exchange(), "topic"),
        (names.redeliver_exchange(), "topic"),
    ] {
        p.exchanges.push(ExchangeSpec { name, kind });
    }
    let mut bind = |exchange: String, queue: &str, key: String| {
        p.bindings.push(BindingSpec {
            exchange,
            queue: queue.to_owned(),
            routing_key: key,
        });
    };
    let mut queues = Vec::new();
    for &d in &settings.destinations {
        // The dead-letter queue first, so that nothing dead-lettered is ever unroutable.
        let dlq = names.dead_letter_queue(d);
        queues.push(QueueSpec {
            name: dlq.clone(),
            arguments: quorum(settings.quorum_group_size),
        });
        bind(names.dead_letter_exchange(), &dlq, d.as_str().to_owned());

        let work = names.work_queue(d);
        let mut args = quorum(settings.quorum_group_size);
        dead_lettering(&mut args, &names.dead_letter_exchange(), Some(d.as_str()));
        args.push((
            "x-delivery-limit",
            Arg::Int(i64::from(settings.delivery_limit)),
        ));
        queues.push(QueueSpec {
            name: work.clone(),
            arguments: args,
        });
        // Every event name reaches every destination: a destination skips what its mapping
        // does not send, and custom event names need no new binding.
        bind(names.events_exchange(), &work, "#".to_owned());
        bind(
            names.redeliver_exchange(),
            &work,
            format!("*.{}", d.as_str()),
        );
    }
    for tier in DELAY_TIERS {
        let q = names.delay_queue(tier);
        let mut args = quorum(settings.quorum_group_size);
        // Expired messages keep their routing key `<tier>.<destination>`, which the
        // redeliver exchange routes back to the destination's work queue.
        dead_lettering(&mut args, &names.redeliver_exchange(), None);
        args.push((
            "x-message-ttl",
            Arg::Int(i64::try_from(tier.as_millis()).unwrap_or(i64::MAX)),
        ));
        queues.push(QueueSpec {
            name: q.clone(),
            arguments: args,
        });
        bind(
            names.delay_exchange(),
            &q,
            format!("{}.*", tier_label(tier)),
        );
    }
    p.queues = queues;
    p
}

/// Declares every exchange, queue and binding of `names`' namespace, on a channel of its own
/// on `conn`.
///
/// A quorum queue that exists with another `x-quorum-initial-group-size` is kept as it is
/// (that size only counts when a queue is created; `rabbitmq-queues grow` adds replicas to
/// one that exists), with a warning: clients given another list of nodes, or a cluster grown
/// since, still start. Any other argument that differs is an error naming the queue.
pub async fn declare(conn: &Connection, names: &Names, settings: &TopologySettings) -> Result<()> {
    let p = plan(names, settings);
    let mut channel = conn.create_channel().await?;
    for e in &p.exchanges {
        let kind = if e.kind == "direct" {
            ExchangeKind::Direct
        } else {
            ExchangeKind::Topic
        };
        channel
            .exchange_declare(
                e.name.as_str().into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| Error::Declare {
                what: format!("exchange {}", e.name),
                source,
            })?;
    }
    for q in &p.queues {
        let mut args = FieldTable::default();
        for (k, v) in &q.arguments {
            let v = match v {
                Arg::Text(s) => AMQPValue::LongString(s.as_str().into()),
                Arg::Int(n) => AMQPValue::LongLongInt(*n),
            };
            args.insert((*k).into(), v);
        }
        let declared = channel
            .queue_declare(
                q.name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await;
        let source = match declared {
            Ok(_) => continue,
            Err(source) => source,
        };
        if !source.to_string().contains("x-quorum-initial-group-size") {
            return Err(Error::Declare {
                what: format!(
                    "queue {} (if it exists with other arguments, delete it or use another LEADPIPE_NAMESPACE)",
                    q.name
                ),
                source,
            });
        }
        // The refusal closed the channel: check on a new one that the queue is there.
        channel = conn.create_channel().await?;
        channel
            .queue_declare(
                q.name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| Error::Declare {
                what: format!("queue {}", q.name),
                source,
            })?;
        tracing::warn!(
            queue = %q.name,
            quorum_group_size = settings.quorum_group_size,
            "queue exists with another initial quorum group size; it keeps its replicas \
             (rabbitmq-queues grow adds members)"
        );
    }
    for b in &p.bindings {
        channel
            .queue_bind(
                b.queue.as_str().into(),
                b.exchange.as_str().into(),
                b.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| Error::Declare {
                what: format!("binding {} -[{}]-> {}", b.exchange, b.routing_key, b.queue),
                source,
            })?;
    }
    let _ = channel.close(200, "topology declared".into()).await;
    tracing::info!(namespace = names.namespace(), "topology declared");
    Ok(())
}

/// The plan as a RabbitMQ definitions document (`rabbitmqctl import_definitions`, or the
/// management plugin's `load_definitions`), for vhost `/`.
pub fn definitions(plan: &Plan) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let exchanges: Vec<Value> = plan
        .exchanges
        .iter()
        .map(|e| {
            json!({"name": e.name, "vhost": "/", "type": e.kind, "durable": true,
                   "auto_delete": false, "internal": false, "arguments": {}})
        })
        .collect();
    let queues: Vec<Value> = plan
        .queues
        .iter()
        .map(|q| {
            let args: Map<String, Value> = q
                .arguments
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Arg::Text(s) => json!(s),
                        Arg::Int(n) => json!(n),
                    };
                    ((*k).to_owned(), v)
                })
                .collect();
            json!({"name": q.name, "vhost": "/", "durable": true, "auto_delete": false,
                   "arguments": args})
        })
        .collect();
    let bindings: Vec<Value> = plan
        .bindings
        .iter()
        .map(|b| {
            json!({"source": b.exchange, "vhost": "/", "destination": b.queue,
                   "destination_type": "queue", "routing_key": b.routing_key, "arguments": {}})
        })
        .collect();
    json!({"exchanges": exchanges, "queues": queues, "bindings": bindings})
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

/// Deletes every queue of `destinations` and every exchange of the namespace (tests and
/// `topology delete`).
pub async fn delete(channel: &Channel, names: &Names, destinations: &[Destination]) -> Result<()> {
    for q in names.all_queues(destinations) {
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_work_queue_dead_letters_to_its_own_dlq_with_a_delivery_limit() {
        let n = Names::new("x");
        let destinations = [Destination::new("one"), Destination::new("two")];
        let p = plan(
            &n,
            &TopologySettings {
                delivery_limit: 7,
                destinations: destinations.to_vec(),
                quorum_group_size: 1,
            },
        );
        for d in destinations {
            let q = p.queues.iter().find(|q| q.name == n.work_queue(d)).unwrap();
            assert!(q.arguments.contains(&("x-delivery-limit", Arg::Int(7))));
            assert!(
                q.arguments
                    .contains(&("x-dead-letter-routing-key", text(d.as_str())))
            );
            assert!(p.bindings.iter().any(|b| b.queue == n.dead_letter_queue(d)
                && b.exchange == n.dead_letter_exchange()
                && b.routing_key == d.as_str()));
        }
    }

    #[test]
    fn quorum_queues_get_an_initial_group_size_only_on_a_cluster() {
        let n = Names::new("x");
        let one = TopologySettings::for_destinations([Destination::new("one")]);
        let size = |p: &Plan| {
            p.queues
                .iter()
                .map(|q| {
                    q.arguments
                        .iter()
                        .find(|(k, _)| *k == "x-quorum-initial-group-size")
                        .map(|(_, v)| v.clone())
                })
                .collect::<HashSet<_>>()
        };
        assert_eq!(size(&plan(&n, &one)), HashSet::from([None]));
        let three = one.with_quorum_group_size(3);
        assert_eq!(size(&plan(&n, &three)), HashSet::from([Some(Arg::Int(3))]));
    }

    #[test]
    fn a_destination_that_is_not_enabled_has_no_queue() {
        let n = Names::new("x");
        let p = plan(
            &n,
            &TopologySettings::for_destinations([Destination::new("one")]),
        );
        assert!(p.queues.iter().any(|q| q.name == "x.one"));
        assert!(!p.queues.iter().any(|q| q.name.starts_with("x.two")));
        assert!(p.queues.iter().any(|q| q.name == "x.delay.1s"));
    }
}
