//! The real `google-ads-sender` binary: SIGKILL mid-batch and SIGTERM.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use leadpipe_tests::{Pipeline, SenderOptions, eventually, recent_lead};

fn spawn_binary(p: &Pipeline) -> tokio::process::Child {
    p.spawn_destination_binary(leadpipe_google_ads_sender::DESTINATION)
}

fn won(i: usize) -> serde_json::Value {
    let mut e = recent_lead(&format!("L-gb{i}"));
    e["event_name"] = json!("won");
    e["order_id"] = json!(format!("O-gb{i}"));
    e["value"] = json!(10);
    e["currency"] = json!("usd");
    e
}

#[tokio::test]
async fn a_google_ads_sender_killed_mid_batch_and_restarted_delivers_every_event() {
    // Arrange
    let p = Pipeline::new().await;
    p.google.set_latency(Duration::from_millis(300));
    let mut orders = HashSet::new();
    for i in 0..100 {
        p.publish(&won(i)).await;
        orders.insert(format!("O-gb{i}"));
    }

    // Act: SIGKILL while requests are under way, then start again.
    let mut child = spawn_binary(&p);
    assert!(
        eventually(Duration::from_secs(30), || async {
            !p.google.ingests().is_empty()
        })
        .await
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let mut child = spawn_binary(&p);
    p.wait_count_in(
        leadpipe_google_ads_sender::DESTINATION,
        "sent",
        100,
        Duration::from_secs(90),
    )
    .await;

    // Assert: every order ingested; a resend carries the same transactionId, which Google
    // dedupes on; nothing dead-lettered.
    let sent: HashSet<String> = p.google.transaction_ids_sent().into_iter().collect();
    assert_eq!(sent, orders);
    assert_eq!(
        p.dlq_depth(leadpipe_google_ads_sender::DESTINATION).await,
        0
    );
    child.start_kill().unwrap();
    let _ = child.wait().await;
    p.cleanup().await;
}

#[tokio::test]
async fn sigterm_drains_the_google_ads_sender_and_it_exits_cleanly_losing_nothing() {
    // Arrange
    let p = Pipeline::new().await;
    p.google.set_latency(Duration::from_millis(400));
    for i in 0..60 {
        p.publish(&won(i)).await;
    }
    let mut child = spawn_binary(&p);
    assert!(
        eventually(Duration::from_secs(30), || async {
            !p.google.ingests().is_empty()
        })
        .await
    );

    // Act
    let status = leadpipe_tests::sigterm_and_wait(&mut child).await;

    // Assert: a clean exit; a fresh sender finishes the rest (polls included).
    assert!(status.success(), "{status:?}");
    let sender = p.start_google(SenderOptions::default()).await;
    p.wait_count_in(
        leadpipe_google_ads_sender::DESTINATION,
        "sent",
        60,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        p.dlq_depth(leadpipe_google_ads_sender::DESTINATION).await,
        0
    );
    sender.stop().await;
    p.cleanup().await;
}
