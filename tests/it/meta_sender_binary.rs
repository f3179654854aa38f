//! The real `meta-sender` binary: SIGKILL mid-batch and SIGTERM.

use std::collections::HashSet;
use std::time::Duration;

use leadpipe_tests::{Pipeline, SenderOptions, eventually, recent_lead};

fn spawn_binary(p: &Pipeline) -> tokio::process::Child {
    p.spawn_destination_binary(leadpipe_meta_sender::DESTINATION)
}

#[tokio::test]
async fn a_sender_killed_mid_batch_and_restarted_delivers_every_event_with_its_own_id() {
    // Arrange
    let p = Pipeline::new().await;
    p.meta.set_latency(Duration::from_millis(300));
    let mut ids = HashSet::new();
    for i in 0..200 {
        ids.insert(p.publish(&recent_lead(&format!("L-k{i}"))).await);
    }

    // Act: SIGKILL while requests are under way.
    let mut child = spawn_binary(&p);
    assert!(
        eventually(Duration::from_secs(30), || async {
            p.meta.requests().len() >= 2
        })
        .await
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let before = p.meta.requests().len();
    let mut child = spawn_binary(&p);
    p.wait_count("sent", 200, Duration::from_secs(90)).await;

    // Assert: every event delivered; any resend carried the same event_id (the key Meta
    // dedupes on), and nothing was dead-lettered.
    assert!(
        p.meta.requests().len() > before,
        "the restarted sender did the rest"
    );
    let accepted = p.meta.accepted();
    assert_eq!(accepted.keys().cloned().collect::<HashSet<_>>(), ids);
    let seen: HashSet<String> = p.meta.event_ids_seen().into_iter().collect();
    assert_eq!(seen, ids, "a request carried an id that is not the event's");
    assert_eq!(p.dlq_depth(leadpipe_meta_sender::DESTINATION).await, 0);
    child.start_kill().unwrap();
    let _ = child.wait().await;
    p.cleanup().await;
}

#[tokio::test]
async fn sigterm_drains_in_flight_work_and_exits_cleanly_losing_nothing() {
    // Arrange
    let p = Pipeline::new().await;
    p.meta.set_latency(Duration::from_millis(400));
    let mut ids = HashSet::new();
    for i in 0..100 {
        ids.insert(p.publish(&recent_lead(&format!("L-t{i}"))).await);
    }
    let mut child = spawn_binary(&p);
    assert!(
        eventually(Duration::from_secs(30), || async {
            !p.meta.requests().is_empty()
        })
        .await
    );

    // Act
    let status = leadpipe_tests::sigterm_and_wait(&mut child).await;

    // Assert: a clean exit; a fresh sender finishes the rest and nothing is lost.
    assert!(status.success(), "{status:?}");
    let sender = p.start_meta(SenderOptions::default()).await;
    p.wait_count("sent", 100, Duration::from_secs(60)).await;
    assert_eq!(
        p.meta.accepted().keys().cloned().collect::<HashSet<_>>(),
        ids
    );
    sender.stop().await;
    p.cleanup().await;
}
