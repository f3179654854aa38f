//! Ingest, in-process (`Application::build`), against the real broker.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};

use leadpipe_tests::{
    Broker, IngestOptions, TEST_SECRET, TEST_SOURCE, TcpProxy, eventually, lead, sign, spawn_ingest,
};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_signed_event_lands_on_all_four_work_queues_persistent_with_its_id_and_trace() {
    // Arrange
    let app = spawn_ingest(IngestOptions::default()).await;
    let broker = Broker::connect(app.names.clone()).await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let body = serde_json::to_vec(&lead("L-1")).unwrap();
    let ts = chrono::Utc::now().timestamp();

    // Act
    let response = app
        .http
        .post(format!("{}/v1/events", app.base))
        .header("content-type", "application/json; charset=utf-8")
        .header("x-leadpipe-source", TEST_SOURCE)
        .header("x-leadpipe-timestamp", ts.to_string())
        .header("x-leadpipe-signature", sign(TEST_SECRET, ts, &body))
        .header("traceparent", trace)
        .body(body)
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "accepted");
    let event_id = answer["event_id"].as_str().unwrap().to_owned();
    assert_eq!(
        event_id,
        leadpipe_events::derive_event_id(TEST_SOURCE, "lead", "L-1", "2026-11-21T10:00:00Z", "")
    );
    for queue in broker.work_queues() {
        let got = broker.take(&queue, 1, WAIT).await;
        let m = &got[0];
        assert_eq!(
            m.properties.delivery_mode(),
            &Some(2),
            "{queue}: not persistent"
        );
        assert_eq!(
            m.properties.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(m.message_id().as_deref(), Some(event_id.as_str()));
        let tp = m.header("traceparent").expect("traceparent header");
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        assert_eq!(m.body["schema_version"], 1);
        assert_eq!(m.body["event_id"], event_id.as_str());
        assert!(m.body["ingested_at"].as_str().unwrap().ends_with('Z'));
        let event = &m.body["event"];
        assert_eq!(event["contact"]["email"], "jane.doe@example.com");
        assert_eq!(event["contact"]["phone"], "+16505551234");
        assert_eq!(event["occurred_at"], "2026-11-21T10:00:00Z");
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_signature_stale_timestamp_unknown_source_and_missing_headers_get_401() {
    // Arrange
    let app = spawn_ingest(IngestOptions::default()).await;
    let broker = Broker::connect(app.names.clone()).await;
    let body = serde_json::to_vec(&lead("L-2")).unwrap();
    let now = chrono::Utc::now().timestamp();

    // Act + Assert
    let cases = [
        (
            "bad signature",
            TEST_SOURCE,
            now,
            sign("wrong-secret", now, &body),
        ),
        (
            "stale timestamp",
            TEST_SOURCE,
            now - 301,
            sign(TEST_SECRET, now - 301, &body),
        ),
        (
            "future timestamp",
            TEST_SOURCE,
            now + 400,
            sign(TEST_SECRET, now + 400, &body),
        ),
        (
            "unknown source",
            "nobody",
            now,
            sign(TEST_SECRET, now, &body),
        ),
        (
            "malformed signature",
            TEST_SOURCE,
            now,
            "sha256=zz".to_owned(),
        ),
    ];
    for (case, source, ts, sig) in cases {
        let r = app.post_with("/v1/events", &body, source, ts, &sig).await;
        assert_eq!(r.status(), 401, "{case}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"], "unauthorized", "{case}");
        assert!(!err["message"].as_str().unwrap().is_empty(), "{case}");
    }
    let r = app
        .http
        .post(format!("{}/v1/events", app.base))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let err: Value = r.json().await.unwrap();
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("x-leadpipe-source")
    );
    for q in broker.work_queues() {
        assert_eq!(
            broker.depth(&q).await,
            0,
            "{q}: a refused event was published"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn invalid_email_invalid_phone_and_an_unknown_field_are_named_in_one_422() {
    // Arrange
    let app = spawn_ingest(IngestOptions::default()).await;
    let mut event = lead("L-3");
    event["contact"] = json!({"email": "jane@", "phone": "12"});
    event["colour"] = json!("blue");

    // Act
    let r = app.post_event(&event).await;

    // Assert
    assert_eq!(r.status(), 422);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"], "validation_failed");
    let found: HashSet<(String, String)> = err["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(!e["message"].as_str().unwrap().is_empty());
            (
                e["field"].as_str().unwrap().to_owned(),
                e["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: HashSet<(String, String)> = [
        ("contact.email", "invalid_email"),
        ("contact.phone", "invalid_phone"),
        ("colour", "unknown_field"),
    ]
    .into_iter()
    .map(|(f, c)| (f.to_owned(), c.to_owned()))
    .collect();
    assert_eq!(found, want);
    // No value is echoed back: the error can be logged without PII.
    assert!(!err.to_string().contains("jane@"));
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_body_gets_413_and_a_non_json_body_gets_415_and_bad_json_400() {
    // Arrange
    let app = spawn_ingest(IngestOptions::default()).await;
    let mut big = lead("L-4");
    big["context"] = json!({"transcript": "x".repeat(300 * 1024)});
    let big = serde_json::to_vec(&big).unwrap();

    // Act
    let too_large = app.post_signed("/v1/events", &big).await;
    let wrong_type = app
        .http
        .post(format!("{}/v1/events", app.base))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    let not_json = app.post_signed("/v1/events", b"{\"source\": ").await;

    // Assert
    assert_eq!(too_large.status(), 413);
    assert_eq!(
        too_large.json::<Value>().await.unwrap()["error"],
        "payload_too_large"
    );
    assert_eq!(wrong_type.status(), 415);
    assert_eq!(
        wrong_type.json::<Value>().await.unwrap()["error"],
        "unsupported_media_type"
    );
    assert_eq!(not_json.status(), 400);
    assert_eq!(
        not_json.json::<Value>().await.unwrap()["error"],
        "invalid_json"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_batch_publishes_its_valid_events_and_rejects_the_invalid_ones_with_their_errors() {
    // Arrange
    let app = spawn_ingest(IngestOptions::default()).await;
    let broker = Broker::connect(app.names.clone()).await;
    let mut bad = lead("L-bad");
    bad["contact"]["email"] = json!("not-an-email");
    let mut custom = lead("L-c");
    custom["event_name"] = json!("demo_booked");
    let batch = json!([lead("L-a"), bad, lead("L-b"), {"event_name": "lead"}, custom]);

    // Act
    let r = app
        .post_signed("/v1/events/batch", &serde_json::to_vec(&batch).unwrap())
        .await;

    // Assert
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    let results = answer["results"].as_array().unwrap();
    let statuses: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["accepted", "rejected", "accepted", "rejected", "accepted"]
    );
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i);
    }
    assert_eq!(results[1]["errors"][0]["field"], "contact.email");
    assert_eq!(results[1]["errors"][0]["code"], "invalid_email");
    let missing: HashSet<&str> = results[3]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for field in ["source", "occurred_at", "lead_id"] {
        assert!(missing.contains(field), "{field} not reported: {missing:?}");
    }
    let accepted: HashSet<String> = [0, 2, 4]
        .iter()
        .map(|&i| results[i]["event_id"].as_str().unwrap().to_owned())
        .collect();
    for q in broker.work_queues() {
        let ids: HashSet<String> = broker
            .take(&q, 3, WAIT)
            .await
            .iter()
            .map(|m| m.message_id().unwrap())
            .collect();
        assert_eq!(ids, accepted, "{q}");
    }
    app.stop().await;
}

#[tokio::test]
async fn batches_that_are_not_arrays_empty_or_over_500_are_refused() {
    let app = spawn_ingest(IngestOptions::default()).await;
    let too_many = Value::Array((0..501).map(|i| lead(&format!("L-{i}"))).collect());
    for body in [json!(lead("L-1")), json!([]), too_many] {
        let r = app
            .post_signed("/v1/events/batch", &serde_json::to_vec(&body).unwrap())
            .await;
        assert_eq!(r.status(), 422);
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["errors"][0]["field"], "");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_source_over_its_rate_gets_429_with_retry_after() {
    // Arrange
    let app = spawn_ingest(IngestOptions {
        rate_limit_per_second: 3,
        ..IngestOptions::default()
    })
    .await;

    // Act
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..5 {
        let r = app.post_event(&lead(&format!("L-r{i}"))).await;
        let status = r.status().as_u16();
        if status == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(r.json::<Value>().await.unwrap()["error"], "rate_limited");
        }
        statuses.push(status);
    }

    // Assert
    assert_eq!(&statuses[..3], [202, 202, 202]);
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&secs), "Retry-After {secs}");
    app.stop().await;
}

#[tokio::test]
async fn with_the_broker_unreachable_ingest_answers_503_then_recovers_without_a_restart() {
    // Arrange: ingest reaches the broker through a proxy this test can cut.
    let proxy = TcpProxy::to_broker().await;
    let app = spawn_ingest(IngestOptions {
        amqp_url: proxy.amqp_url(),
        confirm_timeout: Duration::from_secs(2),
        ..IngestOptions::default()
    })
    .await;
    let broker = Broker::connect(app.names.clone()).await;
    let readyz = || async { app.get("/readyz").await.status().as_u16() };

    // Act: the broker goes away.
    proxy.cut();
    assert!(eventually(WAIT, || async { readyz().await == 503 }).await);
    let down = app.post_event(&lead("L-down")).await;
    let down_batch = app
        .post_signed(
            "/v1/events/batch",
            &serde_json::to_vec(&json!([lead("L-down-1"), lead("L-down-2")])).unwrap(),
        )
        .await;

    // Assert: nothing is reported accepted.
    assert_eq!(down.status(), 503);
    assert!(down.headers().contains_key("retry-after"));
    assert_eq!(down.json::<Value>().await.unwrap()["error"], "unavailable");
    assert_eq!(down_batch.status(), 503);
    let body: Value = down_batch.json().await.unwrap();
    for r in body["results"].as_array().unwrap() {
        assert_eq!(r["status"], "unavailable");
    }

    // Act: the broker comes back.
    proxy.restore();
    assert!(
        eventually(WAIT, || async { readyz().await == 200 }).await,
        "ingest did not reconnect"
    );
    let up = app.post_event(&lead("L-up")).await;

    // Assert: the same process accepts again, and only the accepted event is queued.
    assert_eq!(up.status(), 202);
    let id = up.json::<Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(app.state.publisher.connections_made() >= 2);
    for q in broker.work_queues() {
        let got = broker.take(&q, 1, WAIT).await;
        assert_eq!(got[0].message_id().as_deref(), Some(id.as_str()));
    }
    app.stop().await;
}

#[tokio::test]
async fn two_thousand_concurrent_posts_with_duplicates_all_reach_every_queue() {
    // Arrange: 1,800 distinct leads, 200 of them posted twice.
    let app = spawn_ingest(IngestOptions::default()).await;
    let broker = Broker::connect(app.names.clone()).await;
    let mut events: Vec<Value> = (0..1800).map(|i| lead(&format!("L-c{i}"))).collect();
    events.extend((0..200).map(|i| lead(&format!("L-c{}", i * 9))));

    // Act
    let answers = futures::future::join_all(events.iter().map(|e| async {
        let r = app.post_event(e).await;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        (status, body)
    }))
    .await;

    // Assert
    let mut accepted: HashMap<String, usize> = HashMap::new();
    for (status, body) in &answers {
        assert_eq!(*status, 202, "{body}");
        *accepted
            .entry(body["event_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(accepted.len(), 1800);
    for q in broker.work_queues() {
        let mut on_queue: HashMap<String, usize> = HashMap::new();
        for m in broker.take(&q, 2000, Duration::from_secs(60)).await {
            *on_queue.entry(m.message_id().unwrap()).or_default() += 1;
        }
        assert_eq!(on_queue, accepted, "{q}: a 202'd event is missing");
    }
    app.stop().await;
}

#[tokio::test]
async fn schema_health_readiness_and_metrics_are_served() {
    // Arrange
    let app = spawn_ingest(IngestOptions::default()).await;
    app.post_event(&lead("L-m")).await;

    // Act
    let schema: Value = app.get("/v1/schema").await.json().await.unwrap();
    let health = app.get("/healthz").await.status();
    let ready = app.get("/readyz").await.status();
    let metrics = app.get("/metrics").await.text().await.unwrap();

    // Assert
    assert_eq!(schema["additionalProperties"], false);
    assert!(schema["properties"]["contact"].is_object());
    assert_eq!(health, 200);
    assert_eq!(ready, 200);
    assert!(
        metrics.contains(r#"leadpipe_ingest_requests_total{source="site-widget",status="202"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"leadpipe_events_published_total{event_name="lead",source="site-widget"} 1"#
        )
    );
    assert!(metrics.contains("leadpipe_ingest_request_duration_seconds_bucket"));
    assert!(metrics.contains("leadpipe_ingest_broker_ready 1"));
    assert!(!metrics.contains("jane"), "PII in metrics");
    app.stop().await;
}

#[tokio::test]
async fn a_native_webhook_is_mapped_by_the_sources_field_map_validated_and_published() {
    // Arrange
    let app = spawn_ingest(IngestOptions::default()).await;
    let broker = Broker::connect(app.names.clone()).await;
    let now = chrono::Utc::now().timestamp();
    let native = json!({"conversation": {"id": 4242}, "created_at": now,
                        "user": {"email": " Ann@Example.com ", "name": "Ann", "ads_consent": "granted"},
                        "platform_noise": {"x": 1}});

    // Act
    let r = app
        .post_signed_as(
            "/v1/sources/crm/webhook",
            native.to_string().as_bytes(),
            "crm",
            "crm-secret",
        )
        .await;

    // Assert
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let m = &broker
        .take(
            &app.names.work_queue(leadpipe_crm_writer::DESTINATION),
            1,
            WAIT,
        )
        .await[0];
    assert_eq!(m.message_id().as_deref(), Some(id.as_str()));
    let event = &m.body["event"];
    assert_eq!(event["source"], "crm");
    assert_eq!(event["event_name"], "lead");
    assert_eq!(event["lead_id"], "4242");
    assert_eq!(event["contact"]["email"], "ann@example.com");
    assert_eq!(event["consent"]["ad_user_data"], "granted");
    app.stop().await;
}

#[tokio::test]
async fn webhook_errors_name_the_canonical_field_and_where_it_was_mapped_from() {
    let app = spawn_ingest(IngestOptions::default()).await;
    let now = chrono::Utc::now().timestamp();

    // An invalid mapped value: 422 naming the canonical field and the pointer.
    let bad = json!({"conversation": {"id": "c-1"}, "created_at": now, "user": {"email": "nope"}});
    let r = app
        .post_signed_as(
            "/v1/sources/crm/webhook",
            bad.to_string().as_bytes(),
            "crm",
            "crm-secret",
        )
        .await;
    assert_eq!(r.status(), 422);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["errors"][0]["field"], "contact.email");
    assert!(
        err["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("/user/email"),
        "{err}"
    );

    // The path must name the authenticated source; a source without a map is 404.
    let ok = json!({"conversation": {"id": "c-2"}, "created_at": now, "user": {"email": "a@b.io"}});
    let r = app
        .post_signed_as(
            "/v1/sources/site-widget/webhook",
            ok.to_string().as_bytes(),
            "crm",
            "crm-secret",
        )
        .await;
    assert_eq!(r.status(), 401);
    let r = app
        .post_signed_as(
            "/v1/sources/site-widget/webhook",
            ok.to_string().as_bytes(),
            TEST_SOURCE,
            TEST_SECRET,
        )
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
    app.stop().await;
}

#[tokio::test]
async fn messy_real_world_contact_data_and_a_partial_refund_worth_more_than_refunded_are_accepted()
{
    // Arrange: what chatbots really send — a phone pasted with NBSP and thin spaces and an
    // RFC 3966 extension, Brazilian and Japanese postcodes, Yoruba and Vietnamese names — and a
    // 30 % refund of 100 (`value` 30 refunded, the order worth 70 afterwards).
    let app = spawn_ingest(IngestOptions::default()).await;
    let broker = Broker::connect(app.names.clone()).await;
    let mut messy = lead("L-messy");
    messy["contact"] = json!({
        "email": "Ifeoluwa@Example.com", "phone": "tel:+1\u{A0}201\u{2009}555\u{2011}0123;ext=44",
        "first_name": "Ìfẹ́olúwa", "last_name": "Nguyễn", "postal_code": "26738-274",
        "country": "Brazil"
    });
    let mut japanese = lead("L-jp");
    japanese["contact"] = json!({
        "phone": "03\u{3000}1234\u{3000}5678 ext. 12", "postal_code": "332-5485", "country": "JP"
    });
    let mut refund = lead("L-refund");
    refund["event_name"] = json!("refund");
    refund["order_id"] = json!("O-30");
    refund["value"] = json!(30);
    refund["currency"] = json!("usd");
    refund["refund"] = json!({"kind": "partial", "remaining_value": 70});

    // Act
    let mut ids = Vec::new();
    for event in [&messy, &japanese, &refund] {
        let response = app.post_event(event).await;
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, 202, "{answer}");
        ids.push(answer["event_id"].as_str().unwrap().to_owned());
    }

    // Assert: normalized on the bus, nothing of the number's extension kept.
    let got = broker
        .take(
            &app.names.work_queue(leadpipe_meta_sender::DESTINATION),
            3,
            WAIT,
        )
        .await;
    let by_id: HashMap<String, Value> = got
        .into_iter()
        .map(|m| (m.message_id().unwrap(), m.body["event"].clone()))
        .collect();
    let messy = &by_id[&ids[0]]["contact"];
    assert_eq!(messy["phone"], "+12015550123");
    assert_eq!(messy["first_name"], "Ìfẹ́olúwa");
    assert_eq!(messy["country"], "BR");
    assert_eq!(messy["postal_code"], "26738-274");
    assert_eq!(by_id[&ids[1]]["contact"]["phone"], "+81312345678");
    let refund = &by_id[&ids[2]];
    assert_eq!(refund["value"], 30.0);
    assert_eq!(refund["refund"]["remaining_value"], 70.0);
    assert_eq!(refund["refund"]["kind"], "partial");
    app.stop().await;
}
