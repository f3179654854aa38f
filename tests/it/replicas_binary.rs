//! Two replicas of each sender's real binary on one queue, one of them SIGKILLed mid-stream:
//! the survivor finishes, every event reaches the destination, none twice (beyond the one
//! unavoidable window, where the resend carries the same id the destination dedupes on).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use leadpipe_bus::Destination;
use leadpipe_tests::{Pipeline, eventually, recent_lead};

/// Requests the destination's fake has seen so far.
fn requests(p: &Pipeline, d: Destination) -> usize {
    match d {
        Destination::Meta => p.meta.requests().len(),
        Destination::Ga4 => p.ga4.requests().len(),
        Destination::GoogleAds => p.google.ingests().len(),
        Destination::Crm => p.crm.deliveries().len(),
    }
}

/// The keys the destination kept, with repeats (event ids; orders for Google).
fn kept(p: &Pipeline, d: Destination) -> Vec<String> {
    match d {
        Destination::Meta => p
            .meta
            .accepted()
            .into_iter()
            .flat_map(|(id, n)| std::iter::repeat_n(id, n))
            .collect(),
        Destination::Ga4 => p
            .ga4
            .collected_counts()
            .into_iter()
            .flat_map(|(id, n)| std::iter::repeat_n(id, n))
            .collect(),
        Destination::GoogleAds => p.google.transaction_ids_sent(),
        Destination::Crm => p
            .crm
            .written()
            .into_iter()
            .flat_map(|(id, n)| std::iter::repeat_n(id, n))
            .collect(),
    }
}

async fn one_of_two_replicas_killed(d: Destination) {
    // Arrange: 120 events and a destination slow enough to kill a replica mid-request.
    let p = Pipeline::new().await;
    let latency = Duration::from_millis(150);
    p.meta.set_latency(latency);
    p.ga4.set_latency(latency);
    p.google.set_latency(latency);
    p.crm.set_latency(latency);
    let mut keys = HashSet::new();
    for i in 0..120 {
        let mut e: Value = recent_lead(&format!("L-rk{i}"));
        if d == Destination::GoogleAds {
            e["event_name"] = json!("won");
            e["order_id"] = json!(format!("O-rk{i}"));
            e["value"] = json!(10);
            e["currency"] = json!("usd");
            keys.insert(format!("O-rk{i}"));
            p.publish(&e).await;
        } else {
            keys.insert(p.publish(&e).await);
        }
    }

    // Act: two replicas; SIGKILL one once requests flow; the other finishes.
    let mut doomed = p.spawn_destination_binary(d);
    let mut survivor = p.spawn_destination_binary(d);
    assert!(
        eventually(Duration::from_secs(30), || async { requests(&p, d) >= 2 }).await,
        "{}: no request",
        d.as_str()
    );
    doomed.start_kill().unwrap();
    doomed.wait().await.unwrap();
    p.wait_count_in(d, "sent", 120, Duration::from_secs(90))
        .await;

    // Assert: every event kept; a repeat only from the killed replica's unfinished batch.
    let kept = kept(&p, d);
    let unique: HashSet<String> = kept.iter().cloned().collect();
    assert_eq!(unique, keys, "{}", d.as_str());
    assert!(
        kept.len() - unique.len() <= 40,
        "{}: {} repeats, more than the killed replica's two batches in flight",
        d.as_str(),
        kept.len() - unique.len()
    );
    assert_eq!(p.dlq_depth(d).await, 0);
    survivor.start_kill().unwrap();
    let _ = survivor.wait().await;
    p.cleanup().await;
}

#[tokio::test]
async fn meta_sender_one_of_two_replicas_killed_loses_nothing() {
    one_of_two_replicas_killed(Destination::Meta).await;
}

#[tokio::test]
async fn ga4_sender_one_of_two_replicas_killed_loses_nothing() {
    one_of_two_replicas_killed(Destination::Ga4).await;
}

#[tokio::test]
async fn google_ads_sender_one_of_two_replicas_killed_loses_nothing() {
    one_of_two_replicas_killed(Destination::GoogleAds).await;
}

#[tokio::test]
async fn crm_writer_one_of_two_replicas_killed_loses_nothing() {
    one_of_two_replicas_killed(Destination::Crm).await;
}
