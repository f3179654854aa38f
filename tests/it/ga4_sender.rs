//! ga4-sender on the consumer runtime, against the real broker and database and a fake GA4
//! that validates as GA4 does.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use leadpipe_bus::Destination;
use leadpipe_events::sha256_hex;
use leadpipe_tests::fake_ga4::REJECTED_TRANSACTION_ID;
use leadpipe_tests::{Pipeline, SenderOptions, eventually, recent_lead};

const WAIT: Duration = Duration::from_secs(30);
const GA4: Destination = leadpipe_ga4_sender::DESTINATION;

/// A `won` of `lead_id` for `order` worth `value` USD, an hour ago.
fn won(lead_id: &str, order: &str, value: f64) -> Value {
    let mut e = recent_lead(lead_id);
    e["event_name"] = json!("won");
    e["order_id"] = json!(order);
    e["value"] = json!(value);
    e["currency"] = json!("usd");
    e
}

#[tokio::test]
async fn a_lead_reaches_ga4_with_its_cookie_client_id_session_and_hashes_per_the_vectors() {
    // Arrange
    let p = Pipeline::new().await;
    let mut event = recent_lead("L-g1");
    event["contact"] = json!({
        "email": "Jane.Doe+promo@gmail.com", "phone": "0044 20 7946 0958", "country": "GB",
        "first_name": "  José ", "last_name": "O'Brien", "city": "New York",
        "region": "California", "postal_code": "M1 1AE"
    });
    event["external_ids"] = json!(["CRM-000123"]);
    event["attribution"] = json!({
        "ga_client_id": "GA1.1.1234567890.1712345678",
        "ga_session_id": "GS1.1.1712345678.1.1.1712345999.0.0.0",
        "utm_campaign": "spring"
    });
    let id = p.publish(&event).await;

    // Act
    let sender = p.start_ga4(SenderOptions::default()).await;
    p.wait_status_in(GA4, &id, "sent", WAIT).await;

    // Assert
    let (body, sent) = p.ga4.event(&id).expect("GA4 kept the event");
    assert_eq!(body["client_id"], "1234567890.1712345678");
    assert_eq!(body["user_id"], "CRM-000123");
    assert_eq!(
        body["consent"],
        json!({"ad_user_data": "GRANTED", "ad_personalization": "DENIED"})
    );
    let u = &body["user_data"];
    // E2 (GA4: gmail dots removed, +tag kept), P3 (E.164 with +), N1, N2, C1, S1, Z2, K1.
    assert_eq!(
        u["sha256_email_address"][0],
        "3a627126a4392d8cec5f5d4eaa26639d3cfe852ebf1f1b49c3ffa61667798637"
    );
    assert_eq!(
        u["sha256_phone_number"][0],
        "f0bf0228144d9fe2bdf1da2d8ca698f17bf1410ee688b075c27062e47b6f0b6d"
    );
    let a = &u["address"][0];
    assert_eq!(
        a["sha256_first_name"],
        "d994e1d001886fe5b45b1267bd1fa2b752ac50742579bd3dad7b2a2aa0ed6866"
    );
    assert_eq!(
        a["sha256_last_name"],
        "b4cb6cb33fe4b865868de825023a1e2790dc12ac01ecc8d7c5afe8254071c8ba"
    );
    assert_eq!(a["city"], "new york");
    assert_eq!(a["region"], "california");
    assert_eq!(a["postal_code"], "M1 1AE");
    assert_eq!(a["country"], "GB");
    assert_eq!(sent["name"], "generate_lead");
    let params = &sent["params"];
    assert_eq!(params["session_id"], "1712345678");
    assert_eq!(params["engagement_time_msec"], 100);
    assert_eq!(params["lead_source"], "site-widget");
    assert_eq!(params["campaign"], "spring");
    let occurred = chrono::DateTime::parse_from_rfc3339(event["occurred_at"].as_str().unwrap())
        .unwrap()
        .timestamp_micros();
    assert_eq!(sent["timestamp_micros"], occurred);
    assert_eq!(sent["timestamp_micros"].to_string().len(), 16);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn every_lifecycle_step_of_a_lead_without_a_cookie_joins_one_derived_client() {
    // Arrange: lead, won and a partial refund of one lead, none with ga_client_id.
    let p = Pipeline::new().await;
    let lead = p.publish(&recent_lead("L-life")).await;
    let win = p.publish(&won("L-life", "O-life", 100.0)).await;
    let mut refund = won("L-life", "O-life", 30.0);
    refund["event_name"] = json!("refund");
    refund["refund"] = json!({"kind": "partial", "remaining_value": 70});
    let refund = p.publish(&refund).await;

    // Act
    let sender = p.start_ga4(SenderOptions::default()).await;
    for id in [&lead, &win, &refund] {
        p.wait_status_in(GA4, id, "sent", WAIT).await;
    }

    // Assert
    let (lead_body, _) = p.ga4.event(&lead).unwrap();
    let (win_body, win_event) = p.ga4.event(&win).unwrap();
    let (refund_body, refund_event) = p.ga4.event(&refund).unwrap();
    let client = lead_body["client_id"].as_str().unwrap();
    assert_eq!(win_body["client_id"], client);
    assert_eq!(refund_body["client_id"], client);
    assert_eq!(
        client,
        leadpipe_ga4_sender::payload::derived_client_id("L-life")
    );
    assert_eq!(win_event["name"], "purchase");
    assert_eq!(win_event["params"]["transaction_id"], "O-life");
    assert_eq!(win_event["params"]["value"], 100.0);
    assert_eq!(win_event["params"]["currency"], "USD");
    assert_eq!(refund_event["name"], "refund");
    assert_eq!(refund_event["params"]["transaction_id"], "O-life");
    assert_eq!(refund_event["params"]["value"], 30.0);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn thirty_events_of_one_client_go_in_requests_of_at_most_25_and_long_values_are_cut() {
    // Arrange
    let p = Pipeline::new().await;
    let mut ids = HashSet::new();
    for i in 0..30 {
        // Thirty leads from one browser: one client id.
        let mut e = recent_lead(&format!("L-many{i}"));
        e["attribution"] = json!({
            "ga_client_id": "GA1.1.42.1712345678", "utm_campaign": "c".repeat(300)
        });
        ids.insert(p.publish(&e).await);
    }

    // Act
    let sender = p.start_ga4(SenderOptions::default()).await;
    p.wait_count_in(GA4, "sent", 30, WAIT).await;

    // Assert: GA4 kept every event, in requests of ≤ 25, the value cut to 100 characters.
    let collects: Vec<_> = p
        .ga4
        .requests()
        .into_iter()
        .filter(|r| r.path == "/mp/collect")
        .collect();
    assert!(collects.iter().all(|r| r.messages.is_empty()));
    assert!(
        collects
            .iter()
            .all(|r| r.body["events"].as_array().unwrap().len() <= 25)
    );
    assert!(collects.len() >= 2);
    let counts = p.ga4.collected_counts();
    assert_eq!(counts.keys().cloned().collect::<HashSet<_>>(), ids);
    assert!(counts.values().all(|&n| n == 1));
    let (_, e) = p.ga4.event(ids.iter().next().unwrap()).unwrap();
    assert_eq!(e["params"]["campaign"].as_str().unwrap().len(), 100);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn with_validation_only_the_event_the_debug_endpoint_refuses_is_dead_lettered() {
    // Arrange: three wins of one lead (so one request), the middle one refused by GA4.
    let p = Pipeline::new().await;
    let a = p.publish(&won("L-v", "O-v1", 10.0)).await;
    let bad = p.publish(&won("L-v", REJECTED_TRANSACTION_ID, 10.0)).await;
    let c = p.publish(&won("L-v", "O-v3", 10.0)).await;

    // Act
    let sender = p
        .start_ga4(SenderOptions {
            ga4_validate: true,
            ..SenderOptions::default()
        })
        .await;
    p.wait_status_in(GA4, &bad, "dead_lettered", WAIT).await;
    p.wait_status_in(GA4, &a, "sent", WAIT).await;
    p.wait_status_in(GA4, &c, "sent", WAIT).await;

    // Assert: neighbours kept, the offender in the DLQ with GA4's message.
    let counts = p.ga4.collected_counts();
    assert_eq!(counts.get(&a), Some(&1));
    assert_eq!(counts.get(&c), Some(&1));
    assert!(
        !p.ga4.event_ids_sent().contains(&bad),
        "the refused event was collected"
    );
    let dlq = p
        .broker
        .take(&p.names.dead_letter_queue(GA4), 1, WAIT)
        .await;
    let m = &dlq[0];
    assert_eq!(m.message_id().as_deref(), Some(bad.as_str()));
    assert_eq!(
        m.header("x-leadpipe-error-code").as_deref(),
        Some("ga4_value_invalid")
    );
    let message = m.header("x-leadpipe-error-message").unwrap();
    assert!(
        message.contains("VALUE_INVALID at events.params.transaction_id"),
        "{message}"
    );
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn denied_ad_consent_sends_no_user_data_but_the_consent_and_denied_analytics_sends_nothing() {
    // Arrange
    let p = Pipeline::new().await;
    let mut ads_denied = recent_lead("L-c1");
    ads_denied["consent"] = json!({"ad_user_data": "denied", "ad_personalization": "denied"});
    ads_denied["user_id"] = json!("U-1");
    let mut unknown = recent_lead("L-c2");
    unknown.as_object_mut().unwrap().remove("consent");
    let mut analytics_denied = recent_lead("L-c3");
    analytics_denied["consent"] = json!({"ad_user_data": "granted", "analytics": "denied"});
    let a = p.publish(&ads_denied).await;
    let b = p.publish(&unknown).await;
    let c = p.publish(&analytics_denied).await;

    // Act
    let sender = p.start_ga4(SenderOptions::default()).await;
    p.wait_status_in(GA4, &a, "sent", WAIT).await;
    p.wait_status_in(GA4, &b, "sent", WAIT).await;
    p.wait_status_in(GA4, &c, "blocked_consent", WAIT).await;

    // Assert
    for id in [&a, &b] {
        let (body, _) = p.ga4.event(id).unwrap();
        assert!(body.get("user_data").is_none(), "{body}");
        assert_eq!(body["consent"]["ad_user_data"], "DENIED");
        assert_eq!(body["consent"]["ad_personalization"], "DENIED");
        let text = body.to_string();
        assert!(!text.contains(&sha256_hex("jane.doe@example.com")));
        assert!(!text.contains("jane.doe"));
    }
    assert!(!p.ga4.event_ids_sent().contains(&c));
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn events_older_than_ga4_accepts_are_expired_and_unmapped_ones_skipped() {
    let p = Pipeline::new().await;
    let mut old = recent_lead("L-old");
    old["occurred_at"] = json!((chrono::Utc::now() - chrono::Duration::hours(73)).to_rfc3339());
    let mut contact = recent_lead("L-contact");
    contact["event_name"] = json!("contact");
    let a = p.publish(&old).await;
    let b = p.publish(&contact).await;

    let sender = p.start_ga4(SenderOptions::default()).await;
    p.wait_status_in(GA4, &a, "expired", WAIT).await;
    p.wait_status_in(GA4, &b, "skipped_unmapped", WAIT).await;

    assert!(p.ga4.requests().is_empty());
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn the_same_event_delivered_twice_by_the_broker_makes_one_request() {
    let p = Pipeline::new().await;
    let event = recent_lead("L-dup");
    let id = p.publish(&event).await;
    p.publish(&event).await;

    let sender = p.start_ga4(SenderOptions::default()).await;
    p.wait_status_in(GA4, &id, "sent", WAIT).await;
    // The second copy is acked as a duplicate once the first is recorded.
    assert!(
        eventually(WAIT, || async {
            p.broker.depth(&p.names.work_queue(GA4)).await == 0
        })
        .await
    );

    assert_eq!(p.ga4.event_ids_sent(), vec![id.clone()]);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn server_errors_then_success_deliver_once_with_the_same_ids_every_attempt() {
    let p = Pipeline::new().await;
    p.ga4.script([(500, None), (503, None)]);
    let id = p.publish(&recent_lead("L-5xx")).await;

    let sender = p.start_ga4(SenderOptions::default()).await;
    let attempts = p.wait_status_in(GA4, &id, "sent", WAIT).await;

    assert_eq!(attempts, 3);
    assert_eq!(p.ga4.event_ids_sent(), vec![id.clone(); 3]);
    let clients: HashSet<String> = p
        .ga4
        .requests()
        .iter()
        .map(|r| r.body["client_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(clients.len(), 1, "a retry changed the client id");
    assert_eq!(p.ga4.collected_counts()[&id], 1);
    assert_eq!(p.dlq_depth(GA4).await, 0);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn rate_limiting_with_retry_after_is_waited_out_then_delivered() {
    let p = Pipeline::new().await;
    p.ga4.script([(429, Some(2))]);
    let id = p.publish(&recent_lead("L-429")).await;

    let sender = p.start_ga4(SenderOptions::default()).await;
    p.wait_status_in(GA4, &id, "sent", WAIT).await;

    let collects: Vec<_> = p
        .ga4
        .requests()
        .into_iter()
        .filter(|r| r.path == "/mp/collect")
        .collect();
    assert_eq!(collects.len(), 2);
    assert_eq!(collects[0].status, 429);
    let waited = collects[1].at - collects[0].at;
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn two_replicas_on_one_queue_never_send_an_event_twice() {
    let p = Pipeline::new().await;
    p.ga4.set_latency(Duration::from_millis(20));
    let mut ids = HashSet::new();
    for i in 0..200 {
        ids.insert(p.publish(&recent_lead(&format!("L-r{i}"))).await);
    }
    let opts = SenderOptions {
        batch_size: 20,
        ..SenderOptions::default()
    };

    let one = p.start_ga4(opts.clone()).await;
    let two = p.start_ga4(opts).await;
    p.wait_count_in(GA4, "sent", 200, Duration::from_secs(60))
        .await;

    let sent = p.ga4.event_ids_sent();
    assert_eq!(sent.len(), 200, "an event was sent twice");
    assert_eq!(sent.into_iter().collect::<HashSet<_>>(), ids);
    one.stop().await;
    two.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn dry_run_records_the_redacted_payload_and_sends_nothing() {
    let p = Pipeline::new().await;
    let mut event = recent_lead("L-dry");
    event["contact"]["city"] = json!("Springfield");
    event["contact"]["postal_code"] = json!("62704");
    let id = p.publish(&event).await;

    let sender = p
        .start_ga4(SenderOptions {
            dry_run: true,
            ..SenderOptions::default()
        })
        .await;
    p.wait_status_in(GA4, &id, "dry_run", WAIT).await;

    assert!(p.ga4.requests().is_empty());
    let (payload,): (Value,) = sqlx::query_as(
        "SELECT dry_run_payload FROM deliveries WHERE destination = 'ga4' AND event_id = $1",
    )
    .bind(&id)
    .fetch_one(&p.pool)
    .await
    .unwrap();
    assert_eq!(payload["events"][0]["name"], "generate_lead");
    assert_eq!(
        payload["user_data"]["sha256_email_address"][0],
        sha256_hex("jane.doe@example.com")
    );
    let text = payload.to_string();
    assert!(
        !text.contains("springfield") && !text.contains("62704"),
        "{text}"
    );
    sender.stop().await;
    p.cleanup().await;
}
