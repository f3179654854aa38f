//! The consumer runtime itself, with test adapters and a cuttable broker connection.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use leadpipe_bus::Destination;
use leadpipe_consumer::store::Store;
use leadpipe_consumer::{Outcome, Sender};
use leadpipe_db::DeliveryStatus;
use leadpipe_tests::{FnAdapter, Pipeline, SenderOptions, TcpProxy, eventually, recent_lead};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn an_event_accepted_for_later_confirmation_is_not_resent_and_a_poller_resolves_it() {
    // Arrange
    let p = Pipeline::new().await;
    let event = recent_lead("L-later");
    let id = p.publish(&event).await;
    // A destination that takes requests and reports outcomes later (like Data Manager).
    let adapter = FnAdapter::new(Destination::GoogleAds, |_, n| {
        vec![
            Outcome::Accepted {
                reference: Some("requests/42".into())
            };
            n
        ]
    });
    let sends = adapter.events.clone();
    let mut settings = p.meta_settings(&SenderOptions::default()).runtime;
    settings.batch_max_wait = Duration::from_millis(50);
    let stop = CancellationToken::new();
    let sender = Sender::build(settings.clone(), adapter, stop.clone())
        .await
        .unwrap();
    let handle = tokio::spawn(sender.run_until_stopped(stop.clone()));
    let store = Store::new(
        p.pool.clone(),
        "google_ads",
        "poller".into(),
        settings.lease,
    );
    let status = || async { p.row_in(Destination::GoogleAds, &id).await.map(|r| r.0) };

    // Act: accepted, then redelivered.
    assert!(
        eventually(WAIT, || async {
            status().await.as_deref() == Some("accepted")
        })
        .await
    );
    p.publish(&event).await;
    let queue = p.names.work_queue(Destination::GoogleAds);
    assert!(eventually(WAIT, || async { p.broker.depth(&queue).await == 0 }).await);

    // Assert: one request; the poller finds it and resolves it once.
    assert_eq!(sends.load(Ordering::SeqCst), 1);
    let awaiting = store.awaiting(10).await.unwrap();
    assert_eq!(awaiting, vec![(id.clone(), Some("requests/42".to_owned()))]);
    assert!(
        store
            .resolve(&id, DeliveryStatus::Sent, None, None)
            .await
            .unwrap()
    );
    assert!(
        !store
            .resolve(&id, DeliveryStatus::DeadLettered, Some("x"), None)
            .await
            .unwrap()
    );
    assert_eq!(status().await.as_deref(), Some("sent"));
    stop.cancel();
    let _ = handle.await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_sender_that_loses_the_broker_reconnects_by_itself_and_delivers() {
    // Arrange: the sender reaches the broker through a proxy this test cuts.
    let p = Pipeline::new().await;
    let proxy = TcpProxy::to_broker().await;
    let sender = p
        .start_meta(SenderOptions {
            amqp_url: Some(proxy.amqp_url()),
            ..SenderOptions::default()
        })
        .await;

    // Act
    proxy.cut();
    assert!(eventually(WAIT, || async { sender.readyz().await == 503 }).await);
    let id = p.publish(&recent_lead("L-reconnect")).await;
    proxy.restore();

    // Assert
    p.wait_status(&id, "sent", WAIT).await;
    assert!(eventually(WAIT, || async { sender.readyz().await == 200 }).await);
    assert_eq!(p.meta.accepted()[&id], 1);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_sender_that_loses_the_database_returns_its_batches_and_delivers_once_it_is_back() {
    // Arrange: the sender reaches Postgres through a proxy this test cuts.
    let p = Pipeline::new().await;
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let sender = p
        .start_meta(SenderOptions {
            database_url: Some(proxy.rewrite(&p.database_url)),
            ..SenderOptions::default()
        })
        .await;

    // Act: events arrive while the database is away.
    proxy.cut();
    let id = p.publish(&recent_lead("L-db-down")).await;
    let queue = p.names.work_queue(Destination::Meta);
    let requeued = eventually(WAIT, || async {
        sender.metrics().await.contains(r#"result="requeued""#)
    })
    .await;
    proxy.restore();

    // Assert: nothing was sent or lost meanwhile; delivered once the database is back.
    assert!(requeued, "the batch was not returned to the queue");
    p.wait_status(&id, "sent", WAIT).await;
    assert_eq!(p.meta.accepted()[&id], 1);
    assert!(eventually(WAIT, || async { p.broker.depth(&queue).await == 0 }).await);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn when_every_request_keeps_failing_the_sender_pauses_then_resumes() {
    // Arrange
    let p = Pipeline::new().await;
    p.meta
        .script((0..6).map(|_| leadpipe_tests::fake_meta::Scripted::Status(503)));
    let sender = p
        .start_meta(SenderOptions {
            pause_after_failed_batches: 2,
            ..SenderOptions::default()
        })
        .await;

    // Act
    let id = p.publish(&recent_lead("L-all-failing")).await;
    let paused = eventually(WAIT, || async { sender.readyz().await == 503 }).await;

    // Assert: paused on "every request failing", then resumed and delivered, no DLQ.
    assert!(paused);
    p.wait_status(&id, "sent", WAIT).await;
    assert!(eventually(WAIT, || async { sender.readyz().await == 200 }).await);
    assert_eq!(p.dlq_depth(Destination::Meta).await, 0);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_panicking_adapter_does_not_lose_the_batch_or_stop_the_sender() {
    // Arrange
    let p = Pipeline::new().await;
    let id = p.publish(&recent_lead("L-panic")).await;
    // Panics on its first batch, then accepts everything.
    let adapter = FnAdapter::new(Destination::Crm, |call, n| {
        assert!(call > 0, "adapter bug on the first batch");
        vec![
            Outcome::Sent {
                reference: None,
                http_status: Some(200)
            };
            n
        ]
    });
    let calls = adapter.calls.clone();
    let mut settings = p.meta_settings(&SenderOptions::default()).runtime;
    settings.batch_max_wait = Duration::from_millis(50);
    let stop = CancellationToken::new();
    let sender = Sender::build(settings, adapter, stop.clone())
        .await
        .unwrap();
    let handle = tokio::spawn(sender.run_until_stopped(stop.clone()));

    // Act + Assert: the batch comes back after the panic and is delivered.
    let sent = eventually(WAIT, || async {
        p.row_in(Destination::Crm, &id)
            .await
            .is_some_and(|r| r.0 == "sent")
    })
    .await;
    assert!(
        sent,
        "the event was not delivered after the adapter panicked"
    );
    assert!(calls.load(Ordering::SeqCst) >= 2);
    stop.cancel();
    let _ = handle.await;
    p.cleanup().await;
}
