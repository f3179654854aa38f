//! RabbitMQ restarted mid-stream (`rabbitmqctl stop_app` / `start_app`) under a running sender
//! and a publishing pipeline: nothing accepted is lost, nothing is sent twice.
//!
//! A test binary of its own: the broker is shared by every test, and cargo runs test binaries
//! one after another, so no other test sees it go away. The broker is started again even if
//! the test fails half-way.

use std::collections::HashSet;
use std::time::Duration;

use leadpipe_tests::{Broker, Pipeline, SenderOptions, eventually, recent_lead};

/// Starts the broker's application again when dropped, whatever happened before.
struct StartAppOnDrop;

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .status();
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["await_startup", "--timeout", "60"])
            .status();
    }
}

async fn rabbitmqctl(args: &[&str]) {
    let status = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

#[tokio::test]
async fn a_broker_restart_mid_stream_loses_nothing_and_sends_nothing_twice() {
    // Arrange: 300 leads, a sender working through them against a slowish Meta.
    let p = Pipeline::new().await;
    p.meta.set_latency(Duration::from_millis(50));
    let mut ids = HashSet::new();
    for i in 0..300 {
        ids.insert(p.publish(&recent_lead(&format!("L-br{i}"))).await);
    }
    let sender = p
        .start_meta(SenderOptions {
            batch_size: 20,
            ..SenderOptions::default()
        })
        .await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            p.meta.requests().len() >= 2
        })
        .await
    );

    // Act: the broker goes away and comes back while batches are in flight.
    let guard = StartAppOnDrop;
    rabbitmqctl(&["stop_app"]).await;
    rabbitmqctl(&["start_app"]).await;
    rabbitmqctl(&["await_startup", "--timeout", "60"]).await;
    drop(guard);

    // Assert: the sender reconnects by itself; every event sent exactly once (a batch whose
    // ack was lost comes back and is acked as a duplicate, not sent again).
    p.wait_count("sent", 300, Duration::from_secs(120)).await;
    let accepted = p.meta.accepted();
    assert_eq!(accepted.keys().cloned().collect::<HashSet<_>>(), ids);
    assert!(
        accepted.values().all(|&n| n == 1),
        "an event was sent twice"
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            sender.readyz().await == 200
        })
        .await,
        "the sender did not report ready again"
    );
    sender.stop().await;
    // The test's own broker connection died with the restart: clean up through a new one.
    Broker::connect(p.names.clone()).await.delete().await;
    p.cleanup().await;
}
