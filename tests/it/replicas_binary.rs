//! Two replicas of each sender's real binary on one queue, one of them SIGKILLed mid-stream:
//! the survivor finishes, every event reaches the destination, none twice (beyond the one
//! unavoidable window, where the resend carries the same id the destination dedupes on).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use leadpipe_bus::Destination;
use leadpipe_tests::stream::routed;
use leadpipe_tests::{Pipeline, eventually, recent_lead};

async fn one_of_two_replicas_killed(d: Destination) {
    // Arrange: 120 events and a destination slow enough to kill a replica mid-request.
    let p = Pipeline::new().await;
    let latency = Duration::from_millis(150);
    p.fake(d).set_latency(latency);
    // A lead where the destination takes leads, else a won (Google takes only wins).
    let won = !routed("lead", d);
    let mut keys = HashSet::new();
    for i in 0..120 {
        let mut e: Value = recent_lead(&format!("L-rk{i}"));
        if won {
            e["event_name"] = json!("won");
            e["order_id"] = json!(format!("O-rk{i}"));
            e["value"] = json!(10);
            e["currency"] = json!("usd");
        }
        keys.insert(p.publish(&e).await);
    }

    // Act: two replicas; SIGKILL one once requests flow; the other finishes.
    let mut doomed = p.spawn_destination_binary(d);
    let mut survivor = p.spawn_destination_binary(d);
    assert!(
        eventually(Duration::from_secs(30), || async {
            p.fake(d).requests_seen() >= 2
        })
        .await,
        "{}: no request",
        d.as_str()
    );
    doomed.start_kill().unwrap();
    doomed.wait().await.unwrap();
    p.wait_count_in(d, "sent", 120, Duration::from_secs(90))
        .await;

    // Assert: every event kept; a repeat only from the killed replica's unfinished batch.
    let fake = p.fake(d);
    let kept = fake.kept();
    if fake.kept_by_event_id() {
        let unique: HashSet<String> = kept.keys().cloned().collect();
        assert_eq!(unique, keys, "{}", d.as_str());
    } else {
        assert_eq!(kept.len(), keys.len(), "{}", d.as_str());
    }
    let repeats = kept.values().sum::<usize>() - kept.len();
    assert!(
        repeats <= 40,
        "{}: {repeats} repeats, more than the killed replica's two batches in flight",
        d.as_str(),
    );
    assert_eq!(p.dlq_depth(d).await, 0);
    survivor.start_kill().unwrap();
    let _ = survivor.wait().await;
    p.cleanup().await;
}

#[tokio::test]
async fn meta_sender_one_of_two_replicas_killed_loses_nothing() {
    one_of_two_replicas_killed(leadpipe_meta_sender::DESTINATION).await;
}

#[tokio::test]
async fn ga4_sender_one_of_two_replicas_killed_loses_nothing() {
    one_of_two_replicas_killed(leadpipe_ga4_sender::DESTINATION).await;
}

#[tokio::test]
async fn google_ads_sender_one_of_two_replicas_killed_loses_nothing() {
    one_of_two_replicas_killed(leadpipe_google_ads_sender::DESTINATION).await;
}

#[tokio::test]
async fn crm_writer_one_of_two_replicas_killed_loses_nothing() {
    one_of_two_replicas_killed(leadpipe_crm_writer::DESTINATION).await;
}
