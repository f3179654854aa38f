//! The consumer runtime itself, with test adapters and a cuttable broker connection.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use leadpipe_bus::Destination;
use leadpipe_consumer::adapter::{Awaiting, Verdict};
use leadpipe_consumer::{Failure, Item, Outcome, Prepared, Sender};
use leadpipe_tests::{FnAdapter, Pipeline, SenderOptions, TcpProxy, eventually, recent_lead};

const WAIT: Duration = Duration::from_secs(30);

/// A destination that takes requests and reports each event's outcome later (like Google's
/// Data Manager API), scripted by lead id: `L-later` is pending at the first poll and recorded
/// at the second; `L-fail` is refused; `L-resend` must be sent again once, then is recorded
/// at once.
struct LaterAdapter {
    sends: Arc<Mutex<Vec<String>>>,
    polls: Arc<Mutex<Vec<(String, u32)>>>,
}

impl leadpipe_consumer::Adapter for LaterAdapter {
    type Prepared = String;
    fn destination(&self) -> Destination {
        leadpipe_google_ads_sender::DESTINATION
    }
    fn max_batch(&self) -> usize {
        100
    }
    fn prepare(&self, env: &leadpipe_events::Envelope) -> Prepared<String> {
        Prepared::Send(env.event.lead_id.clone().unwrap_or_default())
    }
    async fn send(&self, items: Vec<Item<String>>) -> Vec<Outcome> {
        let mut sends = self.sends.lock().unwrap();
        items
            .into_iter()
            .map(|item| {
                let again = sends.contains(&item.prepared);
                sends.push(item.prepared.clone());
                if again {
                    Outcome::Sent {
                        reference: None,
                        http_status: Some(200),
                    }
                } else {
                    Outcome::Accepted {
                        reference: Some(format!("req-1#{}", item.prepared)),
                    }
                }
            })
            .collect()
    }
    async fn probe(&self) -> bool {
        true
    }
    async fn verdicts(&self, items: Vec<Awaiting>) -> Vec<Verdict> {
        let mut polls = self.polls.lock().unwrap();
        items
            .into_iter()
            .map(|a| {
                let lead = a.reference.unwrap_or_default().replace("req-1#", "");
                polls.push((lead.clone(), a.poll));
                match (lead.as_str(), a.poll) {
                    ("L-later", 1) => Verdict::Pending,
                    ("L-later", _) => Verdict::Sent,
                    ("L-fail", _) => Verdict::Failed(Failure::new(
                        "click_not_found",
                        "no click matches the event",
                    )),
                    _ => Verdict::Resend {
                        failure: Failure::new("too_recent_click", "the click is too recent"),
                        retry_after: Some(Duration::from_millis(100)),
                    },
                }
            })
            .collect()
    }
    fn verdict_delay(&self, _poll: u32) -> Duration {
        Duration::from_millis(300)
    }
}

#[tokio::test]
async fn accepted_events_wait_in_the_delay_queues_for_their_verdicts_and_are_resolved_once() {
    // Arrange
    let p = Pipeline::new().await;
    let later_event = recent_lead("L-later");
    let later = p.publish(&later_event).await;
    let fail = p.publish(&recent_lead("L-fail")).await;
    let resend = p.publish(&recent_lead("L-resend")).await;
    let adapter = LaterAdapter {
        sends: Arc::default(),
        polls: Arc::default(),
    };
    let (sends, polls) = (adapter.sends.clone(), adapter.polls.clone());
    let mut settings = p.runtime_settings(&SenderOptions::default());
    settings.batch_max_wait = Duration::from_millis(50);
    let stop = CancellationToken::new();
    let sender = Sender::build(settings, adapter, stop.clone())
        .await
        .unwrap();
    let handle = tokio::spawn(sender.run_until_stopped(stop.clone()));

    // Act + Assert: recorded `accepted` first, never marked sent before its verdict.
    p.wait_status_in(
        leadpipe_google_ads_sender::DESTINATION,
        &later,
        "accepted",
        WAIT,
    )
    .await;
    // A second copy of the original event is a duplicate, not a poll and not a request.
    p.publish(&later_event).await;
    p.wait_status_in(
        leadpipe_google_ads_sender::DESTINATION,
        &later,
        "sent",
        WAIT,
    )
    .await;
    p.wait_status_in(
        leadpipe_google_ads_sender::DESTINATION,
        &fail,
        "dead_lettered",
        WAIT,
    )
    .await;
    p.wait_status_in(
        leadpipe_google_ads_sender::DESTINATION,
        &resend,
        "sent",
        WAIT,
    )
    .await;

    // Assert
    let sends = sends.lock().unwrap().clone();
    assert_eq!(sends.iter().filter(|l| *l == "L-later").count(), 1);
    assert_eq!(sends.iter().filter(|l| *l == "L-resend").count(), 2);
    let polls = polls.lock().unwrap().clone();
    assert_eq!(
        polls
            .iter()
            .filter(|(l, _)| l == "L-later")
            .map(|(_, n)| *n)
            .collect::<Vec<_>>(),
        [1, 2],
        "pending at the first poll, asked again with the next poll number"
    );
    let dlq = p
        .broker
        .take(
            &p.names
                .dead_letter_queue(leadpipe_google_ads_sender::DESTINATION),
            1,
            WAIT,
        )
        .await;
    assert_eq!(dlq[0].message_id().as_deref(), Some(fail.as_str()));
    assert_eq!(
        dlq[0].header("x-leadpipe-error-code").as_deref(),
        Some("click_not_found")
    );
    let (code,): (Option<String>,) = sqlx::query_as(
        "SELECT last_error_code FROM deliveries WHERE destination = 'google_ads' AND event_id = $1",
    )
    .bind(&fail)
    .fetch_one(&p.pool)
    .await
    .unwrap();
    assert_eq!(code.as_deref(), Some("click_not_found"));
    let queue = p.names.work_queue(leadpipe_google_ads_sender::DESTINATION);
    assert!(eventually(WAIT, || async { p.broker.depth(&queue).await == 0 }).await);
    stop.cancel();
    let _ = handle.await;
    p.cleanup().await;
}

#[tokio::test]
async fn an_event_without_a_verdict_after_max_polls_is_dead_lettered_as_verdict_timeout() {
    // Arrange: a destination that accepts and never decides (FnAdapter's verdicts are Pending).
    let p = Pipeline::new().await;
    let id = p.publish(&recent_lead("L-never")).await;
    let adapter = FnAdapter::new(leadpipe_google_ads_sender::DESTINATION, |_, n| {
        vec![Outcome::Accepted { reference: None }; n]
    });
    let mut settings = p.runtime_settings(&SenderOptions::default());
    settings.max_polls = 2;
    let stop = CancellationToken::new();
    let sender = Sender::build(settings, adapter, stop.clone())
        .await
        .unwrap();
    let handle = tokio::spawn(sender.run_until_stopped(stop.clone()));

    // Act + Assert
    p.wait_status_in(
        leadpipe_google_ads_sender::DESTINATION,
        &id,
        "dead_lettered",
        Duration::from_secs(60),
    )
    .await;
    let dlq = p
        .broker
        .take(
            &p.names
                .dead_letter_queue(leadpipe_google_ads_sender::DESTINATION),
            1,
            WAIT,
        )
        .await;
    assert_eq!(
        dlq[0].header("x-leadpipe-error-code").as_deref(),
        Some("verdict_timeout")
    );
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
    let queue = p.names.work_queue(leadpipe_meta_sender::DESTINATION);
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
    assert_eq!(p.dlq_depth(leadpipe_meta_sender::DESTINATION).await, 0);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_panicking_adapter_does_not_lose_the_batch_or_stop_the_sender() {
    // Arrange
    let p = Pipeline::new().await;
    let id = p.publish(&recent_lead("L-panic")).await;
    // Panics on its first batch, then accepts everything.
    let adapter = FnAdapter::new(leadpipe_crm_writer::DESTINATION, |call, n| {
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
        p.row_in(leadpipe_crm_writer::DESTINATION, &id)
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
