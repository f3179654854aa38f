//! The real `crm-writer` binary: SIGKILL mid-batch and restart, SIGTERM drain, and a bad
//! field map at start-up.

use std::collections::HashSet;
use std::time::Duration;

use leadpipe_tests::{Pipeline, SenderOptions, bin_path, eventually, recent_lead};

fn spawn_binary(p: &Pipeline) -> tokio::process::Child {
    p.spawn_destination_binary(leadpipe_crm_writer::DESTINATION)
}

#[tokio::test]
async fn a_crm_writer_killed_mid_batch_and_restarted_writes_every_lead_under_its_own_id() {
    // Arrange
    let p = Pipeline::new().await;
    p.crm.set_latency(Duration::from_millis(200));
    let mut ids = HashSet::new();
    for i in 0..100 {
        ids.insert(p.publish(&recent_lead(&format!("L-ck{i}"))).await);
    }

    // Act: SIGKILL while posts are under way, then start again.
    let mut child = spawn_binary(&p);
    assert!(
        eventually(Duration::from_secs(30), || async {
            p.crm.deliveries().len() >= 2
        })
        .await
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let mut child = spawn_binary(&p);
    p.wait_count_in(
        leadpipe_crm_writer::DESTINATION,
        "sent",
        100,
        Duration::from_secs(90),
    )
    .await;

    // Assert: every lead written once (a resend carries the same webhook-id, which the
    // receiver answers 409 and the writer counts as delivered), nothing dead-lettered.
    let written = p.crm.written();
    assert_eq!(written.keys().cloned().collect::<HashSet<_>>(), ids);
    assert!(written.values().all(|&n| n == 1));
    assert!(p.crm.deliveries().iter().all(|d| d.verified));
    assert_eq!(p.dlq_depth(leadpipe_crm_writer::DESTINATION).await, 0);
    child.start_kill().unwrap();
    let _ = child.wait().await;
    p.cleanup().await;
}

#[tokio::test]
async fn sigterm_drains_the_crm_writer_and_it_exits_cleanly_losing_nothing() {
    let p = Pipeline::new().await;
    p.crm.set_latency(Duration::from_millis(300));
    let mut ids = HashSet::new();
    for i in 0..60 {
        ids.insert(p.publish(&recent_lead(&format!("L-ct{i}"))).await);
    }
    let mut child = spawn_binary(&p);
    assert!(
        eventually(Duration::from_secs(30), || async {
            !p.crm.deliveries().is_empty()
        })
        .await
    );

    let status = leadpipe_tests::sigterm_and_wait(&mut child).await;

    assert!(status.success(), "{status:?}");
    let writer = p.start_crm(SenderOptions::default()).await;
    p.wait_count_in(
        leadpipe_crm_writer::DESTINATION,
        "sent",
        60,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(p.crm.written().keys().cloned().collect::<HashSet<_>>(), ids);
    writer.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_bad_field_map_stops_start_up_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("leadpipe-crm-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("leadpipe.toml");
    std::fs::write(&config, "[crm.fields]\n\"contact.mail\" = \"email\"\n").unwrap();

    let out = tokio::process::Command::new(bin_path("crm-writer"))
        .env("LEADPIPE_CONFIG", &config)
        .env("METRICS_ADDR", "127.0.0.1:0")
        .output()
        .await
        .unwrap();

    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("crm.fields.contact.mail"), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}
