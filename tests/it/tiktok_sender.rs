//! tiktok-sender on the consumer runtime, against the real broker and database and the fake
//! Events API of its own folder (`leadpipe_tiktok_sender::fake`), in process and as its real
//! binary.

use std::collections::HashSet;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;

use leadpipe_tests::{Pipeline, SenderOptions, TestSender, eventually, recent_lead, start_sender};
use leadpipe_tiktok_sender::DESTINATION;
use leadpipe_tiktok_sender::fake::{FakeTikTok, PIXEL_CODE, REJECTED_EMAIL, Scripted, TOKEN};

const WAIT: Duration = Duration::from_secs(30);

fn fake(p: &Pipeline) -> &FakeTikTok {
    p.fake_as::<FakeTikTok>(DESTINATION)
}

fn settings(p: &Pipeline, opts: &SenderOptions) -> leadpipe_tiktok_sender::cfg::Settings {
    leadpipe_tiktok_sender::cfg::Settings {
        runtime: p.runtime_settings(opts),
        base_url: fake(p).base_url.clone(),
        pixel_code: Some(PIXEL_CODE.into()),
        access_token: Some(SecretString::from(TOKEN)),
        test_event_code: None,
        dry_run: opts.dry_run,
        timeout: Duration::from_secs(5),
        max_batch: 500,
        consent: leadpipe_tiktok_sender::cfg::ConsentPolicy::Strict,
        mappings: leadpipe_tiktok_sender::cfg::tiktok_mappings(&leadpipe_tests::shipped_mapping())
            .unwrap(),
    }
}

async fn start(p: &Pipeline, opts: SenderOptions) -> TestSender {
    let s = settings(p, &opts);
    let runtime = s.runtime.clone();
    start_sender(runtime, leadpipe_tiktok_sender::TikTokAdapter::new(s)).await
}

async fn wait_status(p: &Pipeline, id: &str, status: &str) -> i32 {
    p.wait_status_in(DESTINATION, id, status, WAIT).await
}

fn won(lead_id: &str) -> serde_json::Value {
    let mut e = recent_lead(lead_id);
    e["event_name"] = json!("won");
    e["order_id"] = json!(format!("O-{lead_id}"));
    e["value"] = json!(1499.0);
    e["currency"] = json!("usd");
    e
}

#[tokio::test]
async fn a_lead_and_a_won_reach_tiktok_hashed_per_the_contract() {
    // Arrange
    let p = Pipeline::new().await;
    let mut lead = recent_lead("L-tt1");
    lead["contact"] = json!({"email": "  John.Doe@Example.COM  ", "phone": "(650) 555-1234",
                             "first_name": "Ada"});
    lead["external_ids"] = json!(["CRM-000123"]);
    lead["client"] = json!({"ip_address": "203.0.113.7", "user_agent": "Mozilla/5.0"});
    lead["attribution"] = json!({"ttclid": "E.C.P.abcDEF", "ttp": "2F7h37YkS1j57AYSKTI7IHhJPYH",
        "landing_page_url": "https://example.com/pricing?email=john.doe@example.com#top"});
    let lead_id = p.publish(&lead).await;
    let mut sale = won("L-tt2");
    sale["consent"]["ad_personalization"] = json!("denied");
    let won_id = p.publish(&sale).await;
    let mut mql = recent_lead("L-tt3");
    mql["event_name"] = json!("mql");
    let mql_id = p.publish(&mql).await;

    // Act
    let sender = start(&p, SenderOptions::default()).await;
    wait_status(&p, &lead_id, "sent").await;
    wait_status(&p, &won_id, "sent").await;
    wait_status(&p, &mql_id, "skipped_unmapped").await;

    // Assert: the lead, hashed as TikTok hashes (phone with its +, unlike Meta).
    let request = &fake(&p).requests()[0];
    assert_eq!(request.token.as_deref(), Some(TOKEN));
    assert_eq!(request.body["event_source"], "web");
    assert_eq!(request.body["event_source_id"], PIXEL_CODE);
    let e = fake(&p).event(&lead_id).expect("TikTok kept the lead");
    assert_eq!(e["event"], "Lead");
    assert_eq!(e["event_id"], lead_id.as_str());
    assert!(e["event_time"].is_i64());
    let u = &e["user"];
    assert_eq!(
        u["email"],
        json!(["836f82db99121b3481011f16b49dfa5fbc714a0d1b1b9f784a1ebbbf5b39577f"])
    );
    assert_eq!(
        u["phone"],
        json!(["a2996076d3ad4af5dc818b908b3d8e354f26ededf7df0e0aa6ac354143805ee0"])
    );
    assert_eq!(
        u["external_id"],
        json!(["c4b4d9756afd66a87d001d43868ac50831a88c9ba46845fd10edb7debd865de0"])
    );
    assert_eq!(u["ttclid"], "E.C.P.abcDEF");
    assert_eq!(u["ttp"], "2F7h37YkS1j57AYSKTI7IHhJPYH");
    assert_eq!(u["ip"], "203.0.113.7");
    assert_eq!(u["user_agent"], "Mozilla/5.0");
    assert!(u.get("first_name").is_none());
    assert_eq!(e["page"]["url"], "https://example.com/pricing");
    assert_eq!(e["limited_data_use"], false);
    // The won, as a Purchase with value, currency and order id; ad personalization refused.
    let w = fake(&p).event(&won_id).expect("TikTok kept the won");
    assert_eq!(w["event"], "Purchase");
    assert_eq!(w["properties"]["value"], 1499.0);
    assert_eq!(w["properties"]["currency"], "USD");
    assert_eq!(w["properties"]["order_id"], "O-L-tt2");
    assert_eq!(w["limited_data_use"], true);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn one_event_tiktok_rejects_in_a_batch_of_40_is_isolated_and_dead_lettered() {
    // Arrange: 39 good leads and one TikTok refuses (code 40002 in an HTTP 200).
    let p = Pipeline::new().await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let mut e = recent_lead(&format!("L-ttb{i}"));
        if i == 11 {
            e["contact"]["email"] = json!(REJECTED_EMAIL);
        }
        ids.push(p.publish(&e).await);
    }
    let bad = ids[11].clone();

    // Act
    let sender = start(
        &p,
        SenderOptions {
            batch_max_wait: Duration::from_millis(500),
            ..SenderOptions::default()
        },
    )
    .await;
    p.wait_count_in(DESTINATION, "sent", 39, WAIT).await;
    wait_status(&p, &bad, "dead_lettered").await;

    // Assert: the neighbours once each, the bad one in the DLQ with TikTok's code, no PII.
    let accepted = fake(&p).accepted();
    assert_eq!(accepted.len(), 39);
    assert!(accepted.values().all(|n| *n == 1));
    assert!(!accepted.contains_key(&bad));
    let dlq = p.names.dead_letter_queue(DESTINATION);
    let dead = p.broker.take(&dlq, 1, WAIT).await;
    assert_eq!(dead[0].message_id().as_deref(), Some(bad.as_str()));
    assert_eq!(
        dead[0].header("x-leadpipe-error-code").as_deref(),
        Some("tiktok_40002")
    );
    assert_eq!(
        dead[0].header("x-leadpipe-http-status").as_deref(),
        Some("200")
    );
    let message = dead[0].header("x-leadpipe-error-message").unwrap();
    assert!(!message.contains("reject@"), "PII: {message}");
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn server_errors_and_throttling_are_retried_with_the_same_event_id() {
    // Arrange: a gateway 502 (not JSON), a 429, a throttling code 40100 and a service code.
    let p = Pipeline::new().await;
    fake(&p).script([
        Scripted::Status(502),
        Scripted::Status(429),
        Scripted::Code(40100),
        Scripted::Code(50002),
    ]);
    let id = p.publish(&recent_lead("L-tt5xx")).await;

    // Act
    let sender = start(&p, SenderOptions::default()).await;
    let attempts = wait_status(&p, &id, "sent").await;

    // Assert: five attempts, every one carrying the same event_id, kept once.
    assert_eq!(attempts, 5);
    assert_eq!(fake(&p).event_ids_seen(), vec![id.clone(); 5]);
    assert_eq!(fake(&p).accepted()[&id], 1);
    assert_eq!(p.dlq_depth(DESTINATION).await, 0);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_revoked_token_pauses_without_dead_lettering_and_resumes_when_replaced() {
    // Arrange
    let p = Pipeline::new().await;
    let sender = start(&p, SenderOptions::default()).await;
    fake(&p).set_token("rotated");

    // Act: TikTok answers 40105 in an HTTP 200.
    let id = p.publish(&recent_lead("L-tttoken")).await;
    let paused = eventually(WAIT, || async { sender.readyz().await == 503 }).await;

    // Assert: paused, nothing dead-lettered, the event still pending; probes go on.
    assert!(paused, "sender never reported not-ready");
    assert!(
        sender
            .metrics()
            .await
            .contains(r#"leadpipe_destination_paused{destination="tiktok"} 1"#)
    );
    assert_eq!(p.dlq_depth(DESTINATION).await, 0);
    assert_ne!(
        p.row_in(DESTINATION, &id).await.map(|r| r.0),
        Some("dead_lettered".into())
    );
    let probed = eventually(WAIT, || async {
        fake(&p)
            .requests()
            .iter()
            .filter(|r| r.code == Some(40105))
            .count()
            >= 2
    })
    .await;
    assert!(probed, "no probe while paused");

    // Act: the token works again.
    fake(&p).set_token(TOKEN);

    // Assert: resumes by itself and delivers once.
    wait_status(&p, &id, "sent").await;
    assert!(eventually(WAIT, || async { sender.readyz().await == 200 }).await);
    assert_eq!(fake(&p).accepted()[&id], 1);
    assert_eq!(p.dlq_depth(DESTINATION).await, 0);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn denied_or_unknown_consent_is_blocked_and_old_events_expire_unsent() {
    let p = Pipeline::new().await;
    let mut denied = recent_lead("L-ttc1");
    denied["consent"] = json!({"ad_user_data": "denied"});
    let mut unknown = recent_lead("L-ttc2");
    unknown.as_object_mut().unwrap().remove("consent");
    let mut old = recent_lead("L-ttold");
    old["occurred_at"] = json!((chrono::Utc::now() - chrono::Duration::hours(48)).to_rfc3339());
    let a = p.publish(&denied).await;
    let b = p.publish(&unknown).await;
    let c = p.publish(&old).await;

    let sender = start(&p, SenderOptions::default()).await;
    wait_status(&p, &a, "blocked_consent").await;
    wait_status(&p, &b, "blocked_consent").await;
    assert_eq!(wait_status(&p, &c, "expired").await, 0);

    assert!(fake(&p).requests().is_empty(), "nothing is requested");
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn dry_run_records_the_redacted_payload_and_sends_nothing() {
    let p = Pipeline::new().await;
    let mut lead = recent_lead("L-ttdry");
    lead["attribution"] = json!({"ttclid": "E.C.P.secret"});
    let id = p.publish(&lead).await;
    let sender = start(
        &p,
        SenderOptions {
            dry_run: true,
            ..SenderOptions::default()
        },
    )
    .await;
    wait_status(&p, &id, "dry_run").await;
    let (payload,): (serde_json::Value,) = sqlx::query_as(
        "SELECT dry_run_payload FROM deliveries WHERE destination = $1 AND event_id = $2",
    )
    .bind(DESTINATION.as_str())
    .bind(&id)
    .fetch_one(&p.pool)
    .await
    .unwrap();
    assert_eq!(payload["event_source"], "web");
    assert_eq!(payload["data"][0]["user"]["ttclid"], "[redacted]");
    assert!(!payload.to_string().contains("@example.com"));
    assert!(fake(&p).requests().is_empty());
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn the_binary_killed_mid_batch_and_restarted_delivers_every_event_under_its_own_id() {
    // Arrange
    let p = Pipeline::new().await;
    leadpipe_consumer::testing::FakeDestination::set_latency(fake(&p), Duration::from_millis(300));
    let mut ids = HashSet::new();
    for i in 0..150 {
        ids.insert(p.publish(&recent_lead(&format!("L-ttk{i}"))).await);
    }

    // Act: SIGKILL while requests are under way, then start it again.
    let mut child = p.spawn_destination_binary(DESTINATION);
    assert!(
        eventually(WAIT, || async { fake(&p).requests().len() >= 2 }).await,
        "no request"
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let before = fake(&p).requests().len();
    let mut child = p.spawn_destination_binary(DESTINATION);
    p.wait_count_in(DESTINATION, "sent", 150, Duration::from_secs(90))
        .await;

    // Assert: every event kept; any resend carried the event's own id (TikTok's dedupe key).
    assert!(fake(&p).requests().len() > before);
    let accepted = fake(&p).accepted();
    assert_eq!(accepted.keys().cloned().collect::<HashSet<_>>(), ids);
    let seen: HashSet<String> = fake(&p).event_ids_seen().into_iter().collect();
    assert_eq!(seen, ids);
    assert_eq!(p.dlq_depth(DESTINATION).await, 0);
    child.start_kill().unwrap();
    let _ = child.wait().await;
    p.cleanup().await;
}

#[tokio::test]
async fn the_binary_refuses_a_bad_base_url_naming_it() {
    let p = Pipeline::new().await;
    let mut child = p.spawn_destination_binary_with(
        DESTINATION,
        &[(
            "TIKTOK_API_BASE_URL",
            "https://business-api.tiktok.com/?access_token=x".into(),
        )],
    );
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert_eq!(status.code(), Some(2));
    p.cleanup().await;
}
