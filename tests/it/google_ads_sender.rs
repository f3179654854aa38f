//! google-ads-sender on the consumer runtime, against the real broker and database and a fake
//! Google (OAuth, Data Manager, Google Ads API) that validates as the contracts describe.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use leadpipe_bus::Destination;
use leadpipe_tests::fake_google::{ADS_UNKNOWN_ORDER, CLICK_NOT_FOUND, DM_INVALID_TRANSACTION};
use leadpipe_tests::{
    GOOGLE_ADS_CONVERSION_ACTION_ID, GOOGLE_ADS_CUSTOMER_ID, Pipeline, SenderOptions, eventually,
    recent_lead,
};

const WAIT: Duration = Duration::from_secs(30);
const ADS: Destination = leadpipe_google_ads_sender::DESTINATION;

/// A `won` of `lead_id` for `order`, an hour ago, with a gclid when given.
fn won(lead_id: &str, order: &str, gclid: Option<&str>) -> Value {
    let mut e = recent_lead(lead_id);
    e["event_name"] = json!("won");
    e["order_id"] = json!(order);
    e["value"] = json!(120.5);
    e["currency"] = json!("eur");
    e["contact"] = json!({"email": "Jane.Doe+promo@gmail.com", "phone": "(650) 555-1234",
                          "first_name": "José", "last_name": "O'Brien", "country": "US",
                          "postal_code": "94025"});
    if let Some(g) = gclid {
        e["attribution"] = json!({ "gclid": g });
    }
    e
}

fn refund(lead_id: &str, order: &str, kind: &str) -> Value {
    let mut e = won(lead_id, order, Some("Cj0-gclid"));
    e["event_name"] = json!("refund");
    e["value"] = json!(30);
    e["refund"] = if kind == "full" {
        json!({"kind": "full"})
    } else {
        json!({"kind": "partial", "remaining_value": 90.5})
    };
    e
}

#[tokio::test]
async fn a_won_with_a_gclid_is_ingested_accepted_then_sent_once_its_status_says_so() {
    // Arrange
    let p = Pipeline::new().await;
    p.google.set_pending_polls(1);
    let id = p.publish(&won("L-w1", "O-w1", Some("Cj0KCQ-click"))).await;

    // Act
    let sender = p.start_google(SenderOptions::default()).await;

    // Assert: accepted first, never sent before the status says so.
    p.wait_status_in(ADS, &id, "accepted", WAIT).await;
    p.wait_status_in(ADS, &id, "sent", WAIT).await;
    let ingests = p.google.ingests();
    assert_eq!(ingests.len(), 1);
    let body = &ingests[0].body;
    assert_eq!(body["encoding"], "HEX");
    let d = &body["destinations"][0];
    assert_eq!(d["operatingAccount"]["accountId"], GOOGLE_ADS_CUSTOMER_ID);
    assert_eq!(d["operatingAccount"]["accountType"], "GOOGLE_ADS");
    assert_eq!(d["loginAccount"]["accountId"], "9876543210");
    assert_eq!(d["productDestinationId"], GOOGLE_ADS_CONVERSION_ACTION_ID);
    let e = &body["events"][0];
    assert_eq!(e["transactionId"], "O-w1");
    assert_eq!(e["eventSource"], "WEB");
    assert_eq!(e["conversionValue"], 120.5);
    assert_eq!(e["currency"], "EUR");
    assert_eq!(e["adIdentifiers"], json!({"gclid": "Cj0KCQ-click"}));
    assert_eq!(e["consent"]["adUserData"], "CONSENT_GRANTED");
    // Google's normalization: gmail dots and +tag removed (E2), E.164 with + (P1), one
    // identifier per object, the address with hashed names and plain region/postal code.
    let ids = e["userData"]["userIdentifiers"].as_array().unwrap();
    assert_eq!(
        ids[0],
        json!({"emailAddress": "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69"})
    );
    assert_eq!(
        ids[1],
        json!({"phoneNumber": "a2996076d3ad4af5dc818b908b3d8e354f26ededf7df0e0aa6ac354143805ee0"})
    );
    assert_eq!(
        ids[2]["address"],
        json!({"givenName": "d994e1d001886fe5b45b1267bd1fa2b752ac50742579bd3dad7b2a2aa0ed6866",
               "familyName": "b4cb6cb33fe4b865868de825023a1e2790dc12ac01ecc8d7c5afe8254071c8ba",
               "regionCode": "US", "postalCode": "94025"})
    );
    assert!(
        p.google.polls().len() >= 2,
        "polled while PROCESSING, then again"
    );
    let (reference,): (Option<String>,) = sqlx::query_as(
        "SELECT destination_ref FROM deliveries WHERE destination = 'google_ads' AND event_id = $1",
    )
    .bind(&id)
    .fetch_one(&p.pool)
    .await
    .unwrap();
    assert_eq!(reference.as_deref(), Some("req-1#0"));
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_won_without_a_click_id_is_an_enhanced_conversion_for_leads_with_identifiers_only() {
    let p = Pipeline::new().await;
    let id = p.publish(&won("L-ecl", "O-ecl", None)).await;

    let sender = p.start_google(SenderOptions::default()).await;
    p.wait_status_in(ADS, &id, "sent", WAIT).await;

    let events = p.google.accepted_events();
    assert_eq!(events.len(), 1);
    let e = &events[0].1;
    assert!(e.get("adIdentifiers").is_none(), "{e}");
    assert_eq!(
        e["userData"]["userIdentifiers"].as_array().unwrap().len(),
        3
    );
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn one_record_failed_in_a_requests_status_dead_letters_only_that_event_with_the_reason() {
    // Arrange: three wins in one request; Google cannot attribute the middle one's click.
    let p = Pipeline::new().await;
    let a = p.publish(&won("L-s1", "O-s1", Some("G-1"))).await;
    let bad = p.publish(&won("L-s2", "O-s2", Some(CLICK_NOT_FOUND))).await;
    let c = p.publish(&won("L-s3", "O-s3", Some("G-3"))).await;

    // Act
    let sender = p.start_google(SenderOptions::default()).await;
    p.wait_status_in(ADS, &bad, "dead_lettered", WAIT).await;
    p.wait_status_in(ADS, &a, "sent", WAIT).await;
    p.wait_status_in(ADS, &c, "sent", WAIT).await;

    // Assert
    assert_eq!(p.google.ingests().len(), 1, "one request for the three");
    let dlq = p
        .broker
        .take(&p.names.dead_letter_queue(ADS), 1, WAIT)
        .await;
    assert_eq!(dlq[0].message_id().as_deref(), Some(bad.as_str()));
    assert_eq!(
        dlq[0].header("x-leadpipe-error-code").as_deref(),
        Some("dm_click_not_found")
    );
    let message = dlq[0].header("x-leadpipe-error-message").unwrap();
    assert!(
        message.contains("PROCESSING_ERROR_REASON_CLICK_NOT_FOUND"),
        "{message}"
    );
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_status_still_pending_is_asked_again_with_backoff_and_never_marked_sent_early() {
    // Arrange: PROCESSING for the first three status requests.
    let p = Pipeline::new().await;
    p.google.set_pending_polls(3);
    let id = p.publish(&won("L-p", "O-p", Some("G-p"))).await;

    // Act
    let sender = p.start_google(SenderOptions::default()).await;
    p.wait_status_in(ADS, &id, "accepted", WAIT).await;
    assert!(
        eventually(WAIT, || async { p.google.polls().len() >= 2 }).await,
        "asked again"
    );
    assert_eq!(
        p.row_in(ADS, &id).await.unwrap().0,
        "accepted",
        "marked before the verdict"
    );
    p.wait_status_in(ADS, &id, "sent", WAIT).await;

    // Assert: four status requests, further and further apart.
    let polls = p.google.polls();
    assert_eq!(polls.len(), 4);
    let gaps: Vec<Duration> = polls.windows(2).map(|w| w[1].1 - w[0].1).collect();
    assert!(gaps[2] > gaps[0], "no backoff: {gaps:?}");
    assert_eq!(
        p.google.ingests().len(),
        1,
        "pending is not a reason to send again"
    );
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_full_refund_is_one_retraction_by_order_id_and_a_partial_one_a_restatement() {
    // Arrange
    let p = Pipeline::new().await;
    let full = p.publish(&refund("L-rf", "O-full", "full")).await;
    let partial = p.publish(&refund("L-rp", "O-part", "partial")).await;
    let unknown = p.publish(&refund("L-ru", ADS_UNKNOWN_ORDER, "full")).await;

    // Act
    let sender = p.start_google(SenderOptions::default()).await;
    p.wait_status_in(ADS, &full, "sent", WAIT).await;
    p.wait_status_in(ADS, &partial, "sent", WAIT).await;
    p.wait_status_in(ADS, &unknown, "dead_lettered", WAIT).await;

    // Assert: retractions through the Google Ads API, by order id, with partial failure on.
    let uploads = p.google.uploads();
    assert_eq!(uploads.len(), 1);
    let u = &uploads[0];
    assert_eq!(u.method, "uploadConversionAdjustments");
    assert_eq!(u.body["partialFailure"], true);
    let rows = u.body["conversionAdjustments"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let retraction = rows.iter().find(|r| r["orderId"] == "O-full").unwrap();
    assert_eq!(retraction["adjustmentType"], "RETRACTION");
    assert!(retraction.get("restatementValue").is_none());
    assert_eq!(
        retraction["conversionAction"],
        format!(
            "customers/{GOOGLE_ADS_CUSTOMER_ID}/conversionActions/{GOOGLE_ADS_CONVERSION_ACTION_ID}"
        )
    );
    assert_eq!(
        u.failed_rows.len(),
        1,
        "the unknown order is row-failed by index"
    );
    assert_eq!(p.row_in(ADS, &unknown).await.unwrap().0, "dead_lettered");
    let (code,): (Option<String>,) = sqlx::query_as(
        "SELECT last_error_code FROM deliveries WHERE destination = 'google_ads' AND event_id = $1",
    )
    .bind(&unknown)
    .fetch_one(&p.pool)
    .await
    .unwrap();
    assert_eq!(code.as_deref(), Some("ads_conversion_not_found"));
    // The partial refund: a restatement through Data Manager, same transactionId, new value.
    let events = p.google.accepted_events();
    let restated = events
        .iter()
        .find(|(_, e)| e["transactionId"] == "O-part")
        .unwrap();
    assert_eq!(restated.1["conversionValue"], 90.5);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_request_refused_fast_for_one_event_dead_letters_that_event_and_sends_its_neighbours() {
    let p = Pipeline::new().await;
    let a = p.publish(&won("L-f1", "O-f1", Some("G-1"))).await;
    let bad = p
        .publish(&won("L-f2", DM_INVALID_TRANSACTION, Some("G-2")))
        .await;
    let c = p.publish(&won("L-f3", "O-f3", Some("G-3"))).await;

    let sender = p.start_google(SenderOptions::default()).await;
    p.wait_status_in(ADS, &bad, "dead_lettered", WAIT).await;
    p.wait_status_in(ADS, &a, "sent", WAIT).await;
    p.wait_status_in(ADS, &c, "sent", WAIT).await;

    let ingests = p.google.ingests();
    assert_eq!(ingests[0].status, 400);
    assert_eq!(ingests[1].status, 200);
    assert_eq!(ingests[1].body["events"].as_array().unwrap().len(), 2);
    let dlq = p
        .broker
        .take(&p.names.dead_letter_queue(ADS), 1, WAIT)
        .await;
    assert_eq!(dlq[0].message_id().as_deref(), Some(bad.as_str()));
    assert_eq!(
        dlq[0].header("x-leadpipe-error-code").as_deref(),
        Some("dm_invalid_format")
    );
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn the_ads_api_route_uploads_clicks_and_maps_a_row_failure_to_its_event() {
    let p = Pipeline::new().await;
    let a = p.publish(&won("L-a1", "O-a1", Some("G-1"))).await;
    let bad = p.publish(&won("L-a2", "O-a2", Some(CLICK_NOT_FOUND))).await;

    let sender = p
        .start_google(SenderOptions {
            google_ads_api_route: true,
            ..SenderOptions::default()
        })
        .await;
    p.wait_status_in(ADS, &a, "sent", WAIT).await;
    p.wait_status_in(ADS, &bad, "dead_lettered", WAIT).await;

    assert!(p.google.ingests().is_empty());
    let uploads = p.google.uploads();
    assert_eq!(uploads[0].method, "uploadClickConversions");
    assert_eq!(uploads[0].body["partialFailure"], true);
    assert_eq!(
        uploads[0]
            .headers
            .get("login-customer-id")
            .map(String::as_str),
        Some("9876543210")
    );
    let rows = uploads[0].body["conversions"].as_array().unwrap();
    for row in rows {
        let dt = row["conversionDateTime"].as_str().unwrap();
        assert!(dt.ends_with("+00:00") && dt.len() == 25, "{dt}");
        for id in row["userIdentifiers"].as_array().unwrap() {
            assert_eq!(
                id.as_object().unwrap().len(),
                2,
                "one identifier per object: {id}"
            );
        }
    }
    let (code,): (Option<String>,) = sqlx::query_as(
        "SELECT last_error_code FROM deliveries WHERE destination = 'google_ads' AND event_id = $1",
    )
    .bind(&bad)
    .fetch_one(&p.pool)
    .await
    .unwrap();
    assert_eq!(code.as_deref(), Some("ads_click_not_found"));
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn an_access_token_that_expires_mid_run_is_refreshed_and_nothing_is_lost() {
    // Arrange: tokens live 61 s, so the one-minute margin makes each one good for ~1 s.
    let p = Pipeline::new().await;
    p.google.set_token_ttl(61);
    let first = p.publish(&won("L-t1", "O-t1", Some("G-1"))).await;
    let sender = p.start_google(SenderOptions::default()).await;
    p.wait_status_in(ADS, &first, "sent", WAIT).await;
    let grants = p.google.grants();

    // Act: a second wave once the first token has gone stale.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = p.publish(&won("L-t2", "O-t2", Some("G-2"))).await;
    p.wait_status_in(ADS, &second, "sent", WAIT).await;

    // Act: Google forgets the cached token before it expires: a 401, one refresh, success.
    let grants_before_401 = p.google.grants();
    p.google.expire_access_tokens();
    let third = p.publish(&won("L-t3", "O-t3", Some("G-3"))).await;
    p.wait_status_in(ADS, &third, "accepted", WAIT).await;

    // Assert
    assert!(grants_before_401 > grants, "the token was not refreshed");
    assert_eq!(
        p.google.grants(),
        grants_before_401 + 1,
        "one refresh after the 401"
    );
    p.wait_status_in(ADS, &third, "sent", WAIT).await;
    assert_eq!(p.dlq_depth(ADS).await, 0);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_revoked_refresh_token_pauses_the_sender_without_dead_letters_until_it_works_again() {
    // Arrange
    let p = Pipeline::new().await;
    p.google.set_revoked(true);
    let id = p.publish(&won("L-rev", "O-rev", Some("G-1"))).await;
    let sender = p
        .start_google(SenderOptions {
            pause_after_failed_batches: 50,
            ..SenderOptions::default()
        })
        .await;

    // Act + Assert: paused and not ready, nothing dead-lettered.
    assert!(eventually(WAIT, || async { sender.readyz().await == 503 }).await);
    assert_eq!(p.dlq_depth(ADS).await, 0);
    assert!(p.google.ingests().is_empty());
    assert_ne!(
        p.row_in(ADS, &id).await.map(|r| r.0),
        Some("dead_lettered".into())
    );

    // The credential works again: resumes by itself and delivers.
    p.google.set_revoked(false);
    p.wait_status_in(ADS, &id, "sent", WAIT).await;
    assert!(eventually(WAIT, || async { sender.readyz().await == 200 }).await);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn denied_consent_sends_nothing_and_old_or_unmapped_events_are_recorded_so() {
    let p = Pipeline::new().await;
    let mut denied = won("L-c", "O-c", Some("G-1"));
    denied["consent"] = json!({"ad_user_data": "denied"});
    let mut old = won("L-o", "O-o", Some("G-2"));
    old["occurred_at"] = json!((chrono::Utc::now() - chrono::Duration::days(91)).to_rfc3339());
    let lead = recent_lead("L-lead");
    let a = p.publish(&denied).await;
    let b = p.publish(&old).await;
    let c = p.publish(&lead).await;

    let sender = p.start_google(SenderOptions::default()).await;
    p.wait_status_in(ADS, &a, "blocked_consent", WAIT).await;
    p.wait_status_in(ADS, &b, "expired", WAIT).await;
    p.wait_status_in(ADS, &c, "skipped_unmapped", WAIT).await;

    assert!(p.google.ingests().is_empty() && p.google.uploads().is_empty());
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn the_same_event_delivered_twice_makes_one_request() {
    let p = Pipeline::new().await;
    let event = won("L-d", "O-d", Some("G-1"));
    let id = p.publish(&event).await;
    p.publish(&event).await;

    let sender = p.start_google(SenderOptions::default()).await;
    p.wait_status_in(ADS, &id, "sent", WAIT).await;
    assert!(
        eventually(WAIT, || async {
            p.broker.depth(&p.names.work_queue(ADS)).await == 0
        })
        .await
    );

    assert_eq!(p.google.transaction_ids_sent(), vec!["O-d".to_owned()]);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn server_errors_and_rate_limits_are_retried_with_the_same_transaction_id() {
    // Arrange: 503, then 429 with Retry-After 2 s, then accepted.
    let p = Pipeline::new().await;
    p.google.script([(503, None), (429, Some(2))]);
    let id = p.publish(&won("L-5", "O-5", Some("G-5"))).await;

    // Act
    let sender = p.start_google(SenderOptions::default()).await;
    p.wait_status_in(ADS, &id, "sent", WAIT).await;

    // Assert
    let ingests = p.google.ingests();
    assert_eq!(
        ingests.iter().map(|i| i.status).collect::<Vec<_>>(),
        [503, 429, 200]
    );
    assert_eq!(p.google.transaction_ids_sent(), vec!["O-5".to_owned(); 3]);
    let waited = ingests[2].at - ingests[1].at;
    assert!(
        waited >= Duration::from_secs(2),
        "Retry-After not honoured: {waited:?}"
    );
    assert_eq!(p.dlq_depth(ADS).await, 0);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn two_replicas_on_one_queue_never_send_an_event_twice() {
    let p = Pipeline::new().await;
    p.google.set_latency(Duration::from_millis(20));
    let mut orders = HashSet::new();
    let mut ids = Vec::new();
    for i in 0..100 {
        let order = format!("O-r{i}");
        ids.push(p.publish(&won(&format!("L-r{i}"), &order, Some("G"))).await);
        orders.insert(order);
    }
    let opts = SenderOptions {
        batch_size: 10,
        ..SenderOptions::default()
    };

    let one = p.start_google(opts.clone()).await;
    let two = p.start_google(opts).await;
    p.wait_count_in(ADS, "sent", 100, Duration::from_secs(60))
        .await;

    let sent = p.google.transaction_ids_sent();
    assert_eq!(sent.len(), 100, "an event was sent twice");
    assert_eq!(sent.into_iter().collect::<HashSet<_>>(), orders);
    one.stop().await;
    two.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn dry_run_records_the_exact_request_with_hashes_only_and_sends_nothing() {
    let p = Pipeline::new().await;
    let id = p.publish(&won("L-dry", "O-dry", Some("G-1"))).await;

    let sender = p
        .start_google(SenderOptions {
            dry_run: true,
            ..SenderOptions::default()
        })
        .await;
    p.wait_status_in(ADS, &id, "dry_run", WAIT).await;

    assert!(p.google.ingests().is_empty());
    assert_eq!(p.google.grants(), 0, "no token was even asked for");
    let (payload,): (Value,) = sqlx::query_as(
        "SELECT dry_run_payload FROM deliveries WHERE destination = 'google_ads' AND event_id = $1",
    )
    .bind(&id)
    .fetch_one(&p.pool)
    .await
    .unwrap();
    assert_eq!(payload["events"][0]["transactionId"], "O-dry");
    let text = payload.to_string();
    assert!(!text.contains("94025") && !text.contains("jane"), "{text}");
    sender.stop().await;
    p.cleanup().await;
}
