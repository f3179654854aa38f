//! The bus topology (SPEC §4) on the real broker.

use std::time::Duration;

use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::FieldTable;

use leadpipe_bus::Names;
use leadpipe_bus::topology::{self, TopologySettings};
use leadpipe_tests::{Broker, unique_namespace};

const WAIT: Duration = Duration::from_secs(20);

async fn declared() -> Broker {
    let broker = Broker::connect(Names::new(unique_namespace("t"))).await;
    topology::declare(&broker.conn, &broker.names, &leadpipe_tests::all_topology())
        .await
        .unwrap();
    broker
}

async fn publish(broker: &Broker, exchange: &str, key: &str, id: &str) {
    broker
        .channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            br#"{"k":1}"#,
            BasicProperties::default().with_message_id(id.into()),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn declaring_twice_is_harmless_and_keeps_messages() {
    // Arrange
    let broker = declared().await;
    publish(&broker, &broker.names.events_exchange(), "lead.site", "m1").await;

    // Act
    topology::declare(&broker.conn, &broker.names, &leadpipe_tests::all_topology())
        .await
        .unwrap();

    // Assert
    for q in broker.work_queues() {
        assert_eq!(
            broker.take(&q, 1, WAIT).await[0].message_id().as_deref(),
            Some("m1")
        );
    }
    broker.delete().await;
}

#[tokio::test]
async fn every_event_name_including_custom_ones_reaches_every_work_queue() {
    let broker = declared().await;
    for (i, key) in ["lead.a", "won.b", "refund.c", "demo_booked.d"]
        .iter()
        .enumerate()
    {
        publish(
            &broker,
            &broker.names.events_exchange(),
            key,
            &format!("m{i}"),
        )
        .await;
    }
    for q in broker.work_queues() {
        assert_eq!(broker.take(&q, 4, WAIT).await.len(), 4, "{q}");
    }
    broker.delete().await;
}

#[tokio::test]
async fn a_message_rejected_by_a_sender_is_dead_lettered_to_its_destinations_dlq() {
    // Arrange
    let broker = declared().await;
    publish(&broker, &broker.names.events_exchange(), "lead.a", "poison").await;
    let meta = broker.names.work_queue(leadpipe_meta_sender::DESTINATION);
    let mut consumer = broker
        .channel
        .basic_consume(
            meta.as_str().into(),
            "t".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // Act
    let delivery = tokio::time::timeout(WAIT, consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    delivery
        .nack(BasicNackOptions {
            requeue: false,
            ..Default::default()
        })
        .await
        .unwrap();

    // Assert: only the meta DLQ holds it.
    let dlq = broker
        .names
        .dead_letter_queue(leadpipe_meta_sender::DESTINATION);
    assert_eq!(
        broker.take(&dlq, 1, WAIT).await[0].message_id().as_deref(),
        Some("poison")
    );
    assert_eq!(
        broker
            .depth(
                &broker
                    .names
                    .dead_letter_queue(leadpipe_ga4_sender::DESTINATION)
            )
            .await,
        0
    );
    broker.delete().await;
}

#[tokio::test]
async fn a_retry_waits_in_its_delay_tier_then_returns_to_its_own_work_queue_only() {
    // Arrange
    let broker = declared().await;
    let key = Names::delay_routing_key(Duration::from_secs(1), leadpipe_crm_writer::DESTINATION);

    // Act
    publish(&broker, &broker.names.delay_exchange(), &key, "retry-1").await;

    // Assert
    let crm = broker.names.work_queue(leadpipe_crm_writer::DESTINATION);
    assert_eq!(
        broker.take(&crm, 1, WAIT).await[0].message_id().as_deref(),
        Some("retry-1")
    );
    assert_eq!(
        broker
            .depth(&broker.names.work_queue(leadpipe_meta_sender::DESTINATION))
            .await,
        0
    );
    broker.delete().await;
}

#[tokio::test]
async fn a_queue_that_exists_with_other_arguments_is_reported_by_name() {
    // Arrange: a classic queue squats the name of the meta work queue.
    let names = Names::new(unique_namespace("t"));
    let broker = Broker::connect(names.clone()).await;
    broker
        .channel
        .queue_declare(
            names
                .work_queue(leadpipe_meta_sender::DESTINATION)
                .as_str()
                .into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();

    // Act
    let err = topology::declare(&broker.conn, &names, &leadpipe_tests::all_topology())
        .await
        .unwrap_err()
        .to_string();

    // Assert
    assert!(
        err.contains(&names.work_queue(leadpipe_meta_sender::DESTINATION)),
        "{err}"
    );
    assert!(err.contains("LEADPIPE_NAMESPACE"), "{err}");
    let cleanup = Broker::connect(names).await;
    cleanup.delete().await;
}

#[tokio::test]
async fn a_message_that_keeps_crashing_its_consumer_is_parked_in_the_dlq_by_the_delivery_limit() {
    // Arrange: a delivery limit of 2, and a consumer that "crashes" (its channel closes
    // without an ack) every time it receives the message.
    let broker = Broker::connect(Names::new(unique_namespace("t"))).await;
    topology::declare(
        &broker.conn,
        &broker.names,
        &TopologySettings {
            delivery_limit: 2,
            ..leadpipe_tests::all_topology()
        },
    )
    .await
    .unwrap();
    publish(
        &broker,
        &broker.names.events_exchange(),
        "lead.a",
        "crasher",
    )
    .await;
    let meta = broker.names.work_queue(leadpipe_meta_sender::DESTINATION);

    // Act: deliver and crash until the broker parks it (a crash returns the message
    // asynchronously, so each round waits for the next delivery rather than a depth).
    let dlq = broker
        .names
        .dead_letter_queue(leadpipe_meta_sender::DESTINATION);
    let mut deliveries = 0;
    for _ in 0..6 {
        let crashing = leadpipe_bus::connect(&leadpipe_tests::amqp_url(), "crash")
            .await
            .unwrap();
        let ch = crashing.create_channel().await.unwrap();
        let mut consumer = ch
            .basic_consume(
                meta.as_str().into(),
                "crash".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(3), consumer.next()).await;
        let _ = crashing.close(320, "crash".into()).await;
        match got {
            Ok(Some(Ok(_))) => deliveries += 1,
            _ => break,
        }
    }

    // Assert: delivered limit + 1 times at most, then parked.
    assert!(
        (2..=3).contains(&deliveries),
        "delivered {deliveries} times"
    );
    let parked = broker.take(&dlq, 1, WAIT).await;
    assert_eq!(parked[0].message_id().as_deref(), Some("crasher"));
    assert_eq!(broker.depth(&meta).await, 0);
    broker.delete().await;
}

#[tokio::test]
async fn a_queue_made_with_another_quorum_group_size_is_kept_not_refused() {
    // Arrange: queues made by clients that listed three nodes, holding a message.
    let broker = Broker::connect(Names::new(unique_namespace("t"))).await;
    let three = leadpipe_tests::all_topology().with_quorum_group_size(3);
    topology::declare(&broker.conn, &broker.names, &three)
        .await
        .unwrap();
    publish(&broker, &broker.names.events_exchange(), "lead.site", "m1").await;

    // Act: a client with one node (no group size) and one with two declare again.
    for size in [1, 2] {
        topology::declare(
            &broker.conn,
            &broker.names,
            &leadpipe_tests::all_topology().with_quorum_group_size(size),
        )
        .await
        .unwrap_or_else(|e| panic!("group size {size}: {e}"));
    }

    // Assert: the queues and their message are still there; another argument still fails.
    for q in broker.work_queues() {
        assert_eq!(
            broker.take(&q, 1, WAIT).await[0].message_id().as_deref(),
            Some("m1"),
            "{q}"
        );
    }
    let err = topology::declare(
        &broker.conn,
        &broker.names,
        &TopologySettings {
            delivery_limit: 3,
            ..three
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("x-delivery-limit"), "{err}");
    broker.delete().await;
}

#[tokio::test]
async fn a_client_given_a_list_of_nodes_connects_to_one_that_answers() {
    // Arrange: a node that refuses (nothing listens on port 1) before the real one.
    let list = format!(
        "amqp://guest:guest@127.0.0.1:1/%2f, {}",
        leadpipe_tests::amqp_url()
    );

    // Act / Assert: every connection gets through, whichever node it tries first.
    for _ in 0..3 {
        let conn = leadpipe_bus::connect(&list, "leadpipe-tests")
            .await
            .unwrap();
        assert!(conn.status().connected());
        let _ = conn.close(200, "done".into()).await;
    }
    let dead = "amqp://guest:guest@127.0.0.1:1/%2f,amqp://guest:guest@127.0.0.1:2/%2f";
    assert!(leadpipe_bus::connect(dead, "leadpipe-tests").await.is_err());
    assert!(
        leadpipe_bus::connect(" , ", "leadpipe-tests")
            .await
            .is_err()
    );
}
