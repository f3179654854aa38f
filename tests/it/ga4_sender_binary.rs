//! The real `ga4-sender` binary: SIGKILL mid-batch, SIGTERM, and a bad mapping at start-up.

use std::collections::HashSet;
use std::time::Duration;

use leadpipe_tests::{
    GA4_MEASUREMENT_ID, GA4_SECRET, Pipeline, SenderOptions, bin_path, eventually, recent_lead,
};

fn spawn_binary(p: &Pipeline) -> tokio::process::Child {
    p.spawn_destination_binary(leadpipe_ga4_sender::DESTINATION)
}

#[tokio::test]
async fn a_ga4_sender_killed_mid_batch_and_restarted_delivers_every_event_with_its_own_id() {
    // Arrange
    let p = Pipeline::new().await;
    p.ga4.set_latency(Duration::from_millis(300));
    let mut ids = HashSet::new();
    for i in 0..200 {
        ids.insert(p.publish(&recent_lead(&format!("L-gk{i}"))).await);
    }

    // Act: SIGKILL while requests are under way, then start again.
    let mut child = spawn_binary(&p);
    assert!(
        eventually(Duration::from_secs(30), || async {
            p.ga4.requests().len() >= 2
        })
        .await
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let before = p.ga4.requests().len();
    let mut child = spawn_binary(&p);
    p.wait_count_in(
        leadpipe_ga4_sender::DESTINATION,
        "sent",
        200,
        Duration::from_secs(90),
    )
    .await;

    // Assert: every event kept by GA4; any resend carried the event's own id.
    assert!(
        p.ga4.requests().len() > before,
        "the restarted sender did the rest"
    );
    let counts = p.ga4.collected_counts();
    assert_eq!(counts.keys().cloned().collect::<HashSet<_>>(), ids);
    let sent: HashSet<String> = p.ga4.event_ids_sent().into_iter().collect();
    assert_eq!(sent, ids, "a request carried an id that is not the event's");
    assert_eq!(p.dlq_depth(leadpipe_ga4_sender::DESTINATION).await, 0);
    child.start_kill().unwrap();
    let _ = child.wait().await;
    p.cleanup().await;
}

#[tokio::test]
async fn sigterm_drains_the_ga4_sender_and_it_exits_cleanly_losing_nothing() {
    // Arrange
    let p = Pipeline::new().await;
    p.ga4.set_latency(Duration::from_millis(400));
    let mut ids = HashSet::new();
    for i in 0..100 {
        ids.insert(p.publish(&recent_lead(&format!("L-gt{i}"))).await);
    }
    let mut child = spawn_binary(&p);
    assert!(
        eventually(Duration::from_secs(30), || async {
            !p.ga4.requests().is_empty()
        })
        .await
    );

    // Act
    let status = leadpipe_tests::sigterm_and_wait(&mut child).await;

    // Assert: a clean exit; a fresh sender finishes the rest and nothing is lost.
    assert!(status.success(), "{status:?}");
    let sender = p.start_ga4(SenderOptions::default()).await;
    p.wait_count_in(
        leadpipe_ga4_sender::DESTINATION,
        "sent",
        100,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        p.ga4
            .collected_counts()
            .keys()
            .cloned()
            .collect::<HashSet<_>>(),
        ids
    );
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_reserved_name_in_the_mapping_stops_start_up_naming_it() {
    // Arrange
    let dir = std::env::temp_dir().join(format!("leadpipe-ga4-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("leadpipe.toml");
    std::fs::write(
        &config,
        "[events.lead.ga4]\nevent_name = \"generate_lead\"\nparams = { ga_source = \"source\" }\n",
    )
    .unwrap();

    // Act
    let out = tokio::process::Command::new(bin_path("ga4-sender"))
        .env("LEADPIPE_CONFIG", &config)
        .env("GA4_MEASUREMENT_ID", GA4_MEASUREMENT_ID)
        .env("GA4_API_SECRET", GA4_SECRET)
        .env("METRICS_ADDR", "127.0.0.1:0")
        .output()
        .await
        .unwrap();

    // Assert: exit 2, the key and the rule named.
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("events.lead.ga4.params.ga_source")
            && stderr.contains("reserved prefix `ga_`"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
