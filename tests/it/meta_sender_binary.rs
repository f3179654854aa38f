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

#[tokio::test]
async fn a_dead_letter_is_logged_inside_the_batch_span_that_names_the_destination() {
    // Arrange: one event Meta refuses for good, and the real binary logging JSON.
    let p = Pipeline::new().await;
    let mut bad = recent_lead("L-span");
    bad["contact"]["email"] = serde_json::json!(leadpipe_tests::fake_meta::REJECTED_EMAIL);
    let id = p.publish(&bad).await;
    let port = leadpipe_tests::free_port();
    let mut command = tokio::process::Command::new(leadpipe_tests::bin_path("meta-sender"));
    command
        .env("AMQP_URL", leadpipe_tests::amqp_url())
        .env("DATABASE_URL", &p.database_url)
        .env("LEADPIPE_NAMESPACE", p.names.namespace())
        .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .env("LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in p.fake(leadpipe_meta_sender::DESTINATION).sender_env() {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();

    // Act
    p.wait_status(&id, "dead_lettered", Duration::from_secs(30))
        .await;
    let status = leadpipe_tests::sigterm_and_wait(&mut child).await;
    assert!(status.success());

    // Assert: the warning carries the event id, inside the batch span naming the destination.
    let out = child.wait_with_output().await.unwrap();
    let logs = String::from_utf8_lossy(&out.stdout);
    let line: serde_json::Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "dead-lettered")
        .unwrap_or_else(|| panic!("no dead-lettered line in {logs}"));
    assert_eq!(line["event_id"], id.as_str(), "{line}");
    assert_eq!(line["span"]["name"], "batch", "{line}");
    assert_eq!(line["span"]["destination"], "meta", "{line}");
    assert!(
        !logs.contains(leadpipe_tests::fake_meta::REJECTED_EMAIL),
        "PII in {logs}"
    );
    p.cleanup().await;
}
