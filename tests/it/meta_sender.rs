//! meta-sender on the consumer runtime, against the real broker and database and a fake Meta.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use leadpipe_events::sha256_hex;
use leadpipe_tests::fake_meta::{REJECTED_EMAIL, Scripted};
use leadpipe_tests::{Pipeline, SenderOptions, eventually, recent_lead};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_lead_reaches_meta_with_identifiers_hashed_per_the_vectors() {
    // Arrange
    let p = Pipeline::new().await;
    let mut event = recent_lead("L-h1");
    event["contact"] = json!({
        "email": "  John.Doe@Example.COM  ", "phone": "+44 20 7946 0958", "country": "GB",
        "first_name": "  José ", "last_name": "O'Brien", "city": "New York",
        "region": "California", "postal_code": "M1 1AE", "date_of_birth": "1990-02-03",
        "gender": "Female"
    });
    event["external_ids"] = json!(["CRM-000123"]);
    event["client"] = json!({"ip_address": "203.0.113.7", "user_agent": "Mozilla/5.0"});
    event["attribution"] = json!({"fbclid": "IwAR0abc", "utm_source": "google",
                                  "landing_page_url": "https://example.com/pricing"});
    let id = p.publish(&event).await;

    // Act
    let sender = p.start_meta(SenderOptions::default()).await;
    p.wait_status(&id, "sent", WAIT).await;

    // Assert
    let sent = p.meta.event(&id).expect("Meta received the event");
    assert_eq!(sent["event_name"], "Lead");
    assert_eq!(sent["action_source"], "chat");
    assert_eq!(sent["event_id"], id.as_str());
    assert_eq!(sent["event_source_url"], "https://example.com/pricing");
    let u = &sent["user_data"];
    assert_eq!(
        u["em"],
        "836f82db99121b3481011f16b49dfa5fbc714a0d1b1b9f784a1ebbbf5b39577f"
    );
    assert_eq!(
        u["ph"],
        "35e206e5dec4c89b9e8b71b8c32724a5bb518483ac5a20c6617d738375b3b823"
    );
    assert_eq!(
        u["fn"],
        "d994e1d001886fe5b45b1267bd1fa2b752ac50742579bd3dad7b2a2aa0ed6866"
    );
    assert_eq!(
        u["ln"],
        "b4cb6cb33fe4b865868de825023a1e2790dc12ac01ecc8d7c5afe8254071c8ba"
    );
    assert_eq!(
        u["ct"],
        "350c754ba4d38897693aa077ef43072a859d23f613443133fecbbd90a3512ca5"
    );
    assert_eq!(
        u["zp"],
        "1dc694c2070e697769fb959b50671d76cafd430d8ca191fbdd0affcaea344ac5"
    );
    assert_eq!(u["country"], sha256_hex("gb"));
    assert_eq!(
        u["db"],
        "de8dbdfc21186d2b8035ddbb9d51db9ac4b4919c79a6cda2350e852b7a2eb915"
    );
    assert_eq!(
        u["ge"],
        "252f10c83610ebca1a059c0bae8255eba2f95be4d1d7bcfa89d7248a82d9f111"
    );
    assert_eq!(
        u["external_id"],
        json!(["c4b4d9756afd66a87d001d43868ac50831a88c9ba46845fd10edb7debd865de0"])
    );
    assert_eq!(u["client_ip_address"], "203.0.113.7");
    assert_eq!(u["client_user_agent"], "Mozilla/5.0");
    let fbc = u["fbc"].as_str().unwrap();
    assert!(
        fbc.starts_with("fb.1.") && fbc.ends_with(".IwAR0abc"),
        "{fbc}"
    );
    assert_eq!(sent["custom_data"]["lead_source"], "google");
    let (reference,): (Option<String>,) = sqlx::query_as(
        "SELECT destination_ref FROM deliveries WHERE destination='meta' AND event_id=$1",
    )
    .bind(&id)
    .fetch_one(&p.pool)
    .await
    .unwrap();
    assert_eq!(reference.as_deref(), Some("Ftrace"));
    let metrics = sender.metrics().await;
    assert!(
        metrics.contains(r#"leadpipe_deliveries_total{destination="meta",result="success"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("leadpipe_queue_lag_seconds_bucket"));
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn the_same_event_delivered_twice_by_the_broker_makes_one_request() {
    // Arrange
    let p = Pipeline::new().await;
    let event = recent_lead("L-dup");
    let id = p.publish(&event).await;
    p.publish(&event).await;

    // Act
    let sender = p.start_meta(SenderOptions::default()).await;
    p.wait_status(&id, "sent", WAIT).await;
    let depth_zero = eventually(WAIT, || async {
        p.broker
            .depth(&p.names.work_queue(leadpipe_meta_sender::DESTINATION))
            .await
            == 0
    })
    .await;

    // Assert
    assert!(depth_zero);
    assert_eq!(p.meta.event_ids_seen(), vec![id.clone()]);
    assert_eq!(p.row(&id).await.unwrap().1, 1);
    sender.stop().await;
    // A redelivery after the fact is acked without a request too.
    p.publish(&event).await;
    let sender = p.start_meta(SenderOptions::default()).await;
    assert!(
        eventually(WAIT, || async {
            p.broker
                .depth(&p.names.work_queue(leadpipe_meta_sender::DESTINATION))
                .await
                == 0
        })
        .await
    );
    sender.stop().await;
    assert_eq!(p.meta.event_ids_seen().len(), 1);
    p.cleanup().await;
}

#[tokio::test]
async fn server_errors_then_success_deliver_once_with_the_same_event_id_every_attempt() {
    // Arrange
    let p = Pipeline::new().await;
    p.meta
        .script([Scripted::Status(500), Scripted::Status(503)]);
    let id = p.publish(&recent_lead("L-5xx")).await;

    // Act
    let sender = p.start_meta(SenderOptions::default()).await;
    let attempts = p.wait_status(&id, "sent", WAIT).await;

    // Assert
    assert_eq!(attempts, 3);
    assert_eq!(
        p.meta.event_ids_seen(),
        vec![id.clone(), id.clone(), id.clone()]
    );
    assert_eq!(p.meta.accepted()[&id], 1);
    assert!(sender.metrics().await.contains("leadpipe_retries_total"));
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn throttling_with_retry_after_is_waited_out_then_delivered() {
    // Arrange
    let p = Pipeline::new().await;
    p.meta.script([Scripted::GraphError {
        code: 17,
        retry_after: Some(2),
    }]);
    let id = p.publish(&recent_lead("L-throttle")).await;

    // Act
    let sender = p.start_meta(SenderOptions::default()).await;
    p.wait_status(&id, "sent", WAIT).await;

    // Assert
    let requests = p.meta.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].status, 400);
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_millis(1900),
        "retried after {waited:?}"
    );
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn one_event_meta_rejects_in_a_batch_of_50_is_isolated_and_dead_lettered() {
    // Arrange: 49 good leads and one Meta refuses, all waiting before the sender starts.
    let p = Pipeline::new().await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let mut e = recent_lead(&format!("L-b{i}"));
        if i == 17 {
            e["contact"]["email"] = json!(REJECTED_EMAIL);
        }
        ids.push(p.publish(&e).await);
    }
    let bad = ids[17].clone();

    // Act
    let sender = p
        .start_meta(SenderOptions {
            batch_max_wait: Duration::from_millis(500),
            ..SenderOptions::default()
        })
        .await;
    p.wait_count("sent", 49, WAIT).await;
    p.wait_status(&bad, "dead_lettered", WAIT).await;

    // Assert
    let accepted = p.meta.accepted();
    assert_eq!(accepted.len(), 49);
    assert!(accepted.values().all(|n| *n == 1));
    assert!(!accepted.contains_key(&bad));
    let dlq = p.names.dead_letter_queue(leadpipe_meta_sender::DESTINATION);
    let dead = p.broker.take(&dlq, 1, WAIT).await;
    let m = &dead[0];
    assert_eq!(m.message_id().as_deref(), Some(bad.as_str()));
    assert_eq!(
        m.header("x-leadpipe-error-code").as_deref(),
        Some("meta_100")
    );
    assert_eq!(m.header("x-leadpipe-http-status").as_deref(), Some("400"));
    assert_eq!(m.header("x-leadpipe-attempts").as_deref(), Some("1"));
    assert!(m.header("x-leadpipe-failed-at").is_some());
    let message = m.header("x-leadpipe-error-message").unwrap();
    assert!(
        !message.contains("reject@"),
        "PII in the error header: {message}"
    );
    assert!(m.header("traceparent").is_some());
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn an_invalid_token_pauses_without_dead_lettering_and_resumes_when_accepted_again() {
    // Arrange
    let p = Pipeline::new().await;
    let sender = p.start_meta(SenderOptions::default()).await;
    p.meta.set_token("rotated-token");

    // Act
    let id = p.publish(&recent_lead("L-token")).await;
    let paused = eventually(WAIT, || async { sender.readyz().await == 503 }).await;

    // Assert: paused, not ready, nothing dead-lettered, the event still pending.
    assert!(paused, "sender never reported not-ready");
    assert!(
        sender
            .metrics()
            .await
            .contains(r#"leadpipe_destination_paused{destination="meta"} 1"#)
    );
    assert_eq!(p.dlq_depth(leadpipe_meta_sender::DESTINATION).await, 0);
    assert_ne!(p.row(&id).await.map(|r| r.0), Some("dead_lettered".into()));
    // While paused it probes with a side-effect-free read of the pixel, refused with 190,
    // and never posts an (invalid) empty batch.
    let probed = eventually(WAIT, || async { !p.meta.reads().is_empty() }).await;
    assert!(probed, "no probe while paused");
    assert!(
        p.meta
            .reads()
            .iter()
            .all(|(fields, status)| fields == "id" && *status == 400)
    );
    assert!(
        p.meta
            .requests()
            .iter()
            .all(|r| r.body["data"].as_array().is_some_and(|d| !d.is_empty())),
        "an empty batch was posted"
    );

    // Act: the token works again.
    p.meta.set_token(leadpipe_tests::META_TOKEN);

    // Assert: resumes by itself and delivers.
    p.wait_status(&id, "sent", WAIT).await;
    assert!(eventually(WAIT, || async { sender.readyz().await == 200 }).await);
    assert_eq!(p.meta.accepted()[&id], 1);
    assert_eq!(p.dlq_depth(leadpipe_meta_sender::DESTINATION).await, 0);
    assert!(p.meta.reads().iter().any(|(_, status)| *status == 200));
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn denied_consent_is_recorded_blocked_and_nothing_is_requested() {
    let p = Pipeline::new().await;
    let mut denied = recent_lead("L-consent");
    denied["consent"] = json!({"ad_user_data": "denied"});
    let mut unknown = recent_lead("L-unknown");
    unknown.as_object_mut().unwrap().remove("consent");
    let a = p.publish(&denied).await;
    let b = p.publish(&unknown).await;

    let sender = p.start_meta(SenderOptions::default()).await;
    p.wait_status(&a, "blocked_consent", WAIT).await;
    p.wait_status(&b, "blocked_consent", WAIT).await;

    assert!(p.meta.requests().is_empty());
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn events_older_than_metas_window_are_expired_and_unmapped_ones_skipped() {
    let p = Pipeline::new().await;
    let mut old = recent_lead("L-old");
    old["occurred_at"] = json!((chrono::Utc::now() - chrono::Duration::days(8)).to_rfc3339());
    let mut mql = recent_lead("L-mql");
    mql["event_name"] = json!("mql");
    let a = p.publish(&old).await;
    let b = p.publish(&mql).await;

    let sender = p.start_meta(SenderOptions::default()).await;
    assert_eq!(p.wait_status(&a, "expired", WAIT).await, 0);
    p.wait_status(&b, "skipped_unmapped", WAIT).await;

    assert!(p.meta.requests().is_empty());
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn two_replicas_on_one_queue_never_send_an_event_twice() {
    // Arrange: 300 events, 30 of them published twice.
    let p = Pipeline::new().await;
    p.meta.set_latency(Duration::from_millis(20));
    let opts = SenderOptions {
        batch_size: 25,
        batch_max_wait: Duration::from_millis(20),
        ..SenderOptions::default()
    };
    let a = p.start_meta(opts.clone()).await;
    let b = p.start_meta(opts).await;

    // Act
    let events: Vec<_> = (0..300).map(|i| recent_lead(&format!("L-r{i}"))).collect();
    let mut ids = HashSet::new();
    for e in &events {
        ids.insert(p.publish(e).await);
    }
    for i in 0..30 {
        p.publish(&events[i * 7]).await;
    }
    p.wait_count("sent", 300, Duration::from_secs(60)).await;

    // Assert
    let accepted = p.meta.accepted();
    assert_eq!(accepted.keys().cloned().collect::<HashSet<_>>(), ids);
    assert!(
        accepted.values().all(|n| *n == 1),
        "an event was sent twice"
    );
    let seen = p.meta.event_ids_seen();
    assert_eq!(
        seen.len(),
        300,
        "{} requests' events for 300 events",
        seen.len()
    );
    a.stop().await;
    b.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn dry_run_records_the_hashed_payload_and_sends_nothing() {
    let p = Pipeline::new().await;
    let mut e = recent_lead("L-dry");
    e["client"] = json!({"ip_address": "203.0.113.7", "user_agent": "Mozilla/5.0"});
    let id = p.publish(&e).await;

    let sender = p
        .start_meta(SenderOptions {
            dry_run: true,
            ..SenderOptions::default()
        })
        .await;
    p.wait_status(&id, "dry_run", WAIT).await;

    assert!(p.meta.requests().is_empty());
    let (payload,): (serde_json::Value,) = sqlx::query_as(
        "SELECT dry_run_payload FROM deliveries WHERE destination='meta' AND event_id=$1",
    )
    .bind(&id)
    .fetch_one(&p.pool)
    .await
    .unwrap();
    let event = &payload["data"][0];
    assert_eq!(event["event_id"], id.as_str());
    assert_eq!(event["user_data"]["em"], sha256_hex("jane.doe@example.com"));
    assert_eq!(event["user_data"]["client_ip_address"], "[redacted]");
    let text = payload.to_string();
    for pii in ["jane.doe@", "6505551234", "203.0.113.7"] {
        assert!(!text.contains(pii), "{pii} in the recorded payload");
    }
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn an_undecodable_message_goes_to_the_dlq_at_once() {
    let p = Pipeline::new().await;
    p.publish_raw(
        b"{\"schema_version\": 1, \"secret\": \"jane@example.com\"",
        "poison-1",
        "lead",
    )
    .await;

    let sender = p.start_meta(SenderOptions::default()).await;
    let dlq = p.names.dead_letter_queue(leadpipe_meta_sender::DESTINATION);
    let dead = p.broker.take(&dlq, 1, WAIT).await;

    assert_eq!(
        dead[0].header("x-leadpipe-error-code").as_deref(),
        Some("undecodable")
    );
    let msg = dead[0].header("x-leadpipe-error-message").unwrap();
    assert!(!msg.contains("jane"), "{msg}");
    assert!(p.meta.requests().is_empty());
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn an_event_that_keeps_failing_is_dead_lettered_after_max_attempts() {
    let p = Pipeline::new().await;
    p.meta.script((0..3).map(|_| Scripted::Status(502)));
    let id = p.publish(&recent_lead("L-give-up")).await;

    let sender = p
        .start_meta(SenderOptions {
            max_attempts: 3,
            ..SenderOptions::default()
        })
        .await;
    p.wait_status(&id, "dead_lettered", WAIT).await;

    let dead = p
        .broker
        .take(
            &p.names.dead_letter_queue(leadpipe_meta_sender::DESTINATION),
            1,
            WAIT,
        )
        .await;
    assert_eq!(dead[0].header("x-leadpipe-attempts").as_deref(), Some("3"));
    assert_eq!(
        dead[0].header("x-leadpipe-error-code").as_deref(),
        Some("http_502")
    );
    assert!(
        dead[0]
            .header("x-leadpipe-error-message")
            .unwrap()
            .contains("gave up after 3 attempts")
    );
    assert_eq!(p.row(&id).await.unwrap().1, 3);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn accents_foreign_postcodes_and_unicode_separated_phones_are_hashed_per_the_contract() {
    // Arrange
    let p = Pipeline::new().await;
    let mut brazil = recent_lead("L-br");
    brazil["contact"] = json!({
        "email": "ifeoluwa@example.com", "phone": "+1\u{A0}201\u{2009}555\u{2011}0123;ext=44",
        "first_name": "Ìfẹ́olúwa", "last_name": "Nguyễn", "postal_code": "26738-274",
        "country": "Brazil"
    });
    let mut unknown_country = recent_lead("L-jp");
    unknown_country["contact"] = json!({"email": "a@example.jp", "postal_code": "332-5485"});
    let a = p.publish(&brazil).await;
    let b = p.publish(&unknown_country).await;

    // Act
    let sender = p.start_meta(SenderOptions::default()).await;
    p.wait_status(&a, "sent", WAIT).await;
    p.wait_status(&b, "sent", WAIT).await;

    // Assert
    let u = p.meta.event(&a).unwrap()["user_data"].clone();
    assert_eq!(u["ph"], sha256_hex("12015550123"));
    assert_eq!(u["fn"], sha256_hex("ìfẹ́olúwa"));
    assert_eq!(u["ln"], sha256_hex("nguyễn"));
    assert_eq!(u["zp"], sha256_hex("26738274"));
    assert_eq!(u["country"], sha256_hex("br"));
    let u = p.meta.event(&b).unwrap()["user_data"].clone();
    assert_eq!(u["zp"], sha256_hex("3325485"));
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_copy_arriving_on_another_channel_while_the_first_is_in_flight_is_not_sent_again() {
    // Arrange: one event per batch, two channels, a slow Meta: the second copy reaches the
    // other channel of the same process while the first is still being sent.
    let p = Pipeline::new().await;
    p.meta.set_latency(Duration::from_millis(500));
    let event = recent_lead("L-two-channels");
    let id = p.publish(&event).await;
    p.publish(&event).await;

    // Act
    let sender = p
        .start_meta(SenderOptions {
            batch_size: 1,
            batch_max_wait: Duration::from_millis(10),
            ..SenderOptions::default()
        })
        .await;
    p.wait_status(&id, "sent", WAIT).await;
    assert!(
        eventually(WAIT, || async {
            p.broker
                .depth(&p.names.work_queue(leadpipe_meta_sender::DESTINATION))
                .await
                == 0
        })
        .await
    );

    // Assert
    assert_eq!(p.meta.event_ids_seen(), vec![id.clone()], "sent twice");
    sender.stop().await;
    p.cleanup().await;
}
