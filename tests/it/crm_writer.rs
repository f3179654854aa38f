//! crm-writer on the consumer runtime, against the real broker and database, a webhook
//! receiver that verifies Standard Webhooks signatures, and a HubSpot-like fake.

use std::time::Duration;

use serde_json::{Value, json};

use leadpipe_bus::Destination;
use leadpipe_tests::fake_crm::HUBSPOT_REJECTED_EMAIL;
use leadpipe_tests::{Pipeline, SenderOptions, eventually, recent_lead};

const WAIT: Duration = Duration::from_secs(30);
const CRM: Destination = leadpipe_crm_writer::DESTINATION;

/// A lead with the conversation context sales needs.
fn rich_lead(lead_id: &str) -> Value {
    let mut e = recent_lead(lead_id);
    e["contact"] = json!({"email": "Jane.Doe@Example.com", "phone": "(650) 555-1234",
                          "first_name": "Jane", "last_name": "Doe", "company": "Acme"});
    e["attribution"] = json!({"utm_source": "google", "utm_medium": "cpc",
                              "utm_campaign": "spring", "gclid": "Cj0KCQ"});
    e["context"] = json!({"transcript": "Bot: Hi!\nJane: I need 12 seats.", "chatbot": "acme-bot",
                          "entry_page_url": "https://example.com/pricing",
                          "qualification": {"seats": 12, "budget": "10k"}});
    e["consent"] = json!({"ad_user_data": "denied"});
    e
}

#[tokio::test]
async fn a_lead_reaches_the_webhook_signed_with_its_mapped_fields_and_context() {
    // Arrange
    let p = Pipeline::new().await;
    let id = p.publish(&rich_lead("L-crm1")).await;

    // Act
    let writer = p.start_crm(SenderOptions::default()).await;
    p.wait_status_in(CRM, &id, "sent", WAIT).await;

    // Assert: signed, keyed by the event id, raw contact and context through the map, and
    // written although ad consent was denied (the CRM is the system of record).
    let d = &p.crm.deliveries()[0];
    assert!(d.verified, "signature did not verify");
    assert_eq!(d.id, id);
    assert_eq!(d.body["event_id"], id.as_str());
    assert_eq!(d.body["type"], "leadpipe.lead");
    let data = &d.body["data"];
    assert_eq!(data["email"], "jane.doe@example.com");
    assert_eq!(data["phone"], "+16505551234");
    assert_eq!(data["firstname"], "Jane");
    assert_eq!(data["company"], "Acme");
    assert_eq!(
        data["leadpipe_transcript"],
        "Bot: Hi!\nJane: I need 12 seats."
    );
    assert_eq!(data["leadpipe_chatbot"], "acme-bot");
    assert_eq!(data["leadpipe_entry_page"], "https://example.com/pricing");
    assert_eq!(data["leadpipe_qualification"], "budget: 10k\nseats: 12");
    assert_eq!(data["utm_campaign"], "spring");
    assert_eq!(data["leadpipe_gclid"], "Cj0KCQ");
    assert_eq!(data["leadpipe_ad_consent"], "denied");
    assert_eq!(data["lifecycle_stage"], "lead");
    writer.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_redelivered_event_is_not_written_twice() {
    // Arrange: the same event twice on the bus; then another event the receiver already has.
    let p = Pipeline::new().await;
    let event = rich_lead("L-crm2");
    let id = p.publish(&event).await;
    p.publish(&event).await;
    let other = p.publish(&rich_lead("L-crm3")).await;

    // Act
    let writer = p.start_crm(SenderOptions::default()).await;
    p.wait_status_in(CRM, &id, "sent", WAIT).await;
    p.wait_status_in(CRM, &other, "sent", WAIT).await;
    assert!(
        eventually(WAIT, || async {
            p.broker.depth(&p.names.work_queue(CRM)).await == 0
        })
        .await
    );

    // Assert
    let ids: Vec<String> = p.crm.deliveries().into_iter().map(|d| d.id).collect();
    assert_eq!(ids.iter().filter(|i| **i == id).count(), 1, "written twice");
    assert_eq!(p.crm.written()[&id], 1);
    writer.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_receiver_answering_409_already_exists_is_delivered_and_a_5xx_retried_with_the_same_id() {
    let p = Pipeline::new().await;
    p.crm.script_webhook([503, 409]);
    let id = p.publish(&rich_lead("L-crm4")).await;

    let writer = p.start_crm(SenderOptions::default()).await;
    let attempts = p.wait_status_in(CRM, &id, "sent", WAIT).await;

    let statuses: Vec<u16> = p.crm.deliveries().iter().map(|d| d.status).collect();
    assert_eq!(statuses, [503, 409]);
    assert_eq!(attempts, 2);
    assert!(p.crm.deliveries().iter().all(|d| d.id == id));
    assert_eq!(p.dlq_depth(CRM).await, 0);
    writer.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn hubspot_upserts_by_email_and_a_phone_only_lead_by_the_lead_id_property() {
    let p = Pipeline::new().await;
    let a = p.publish(&rich_lead("L-hs1")).await;
    let mut phone_only = recent_lead("L-hs2");
    phone_only["contact"] = json!({"phone": "+44 20 7946 0958", "first_name": "Sam"});
    let b = p.publish(&phone_only).await;
    let mut won = rich_lead("L-hs1");
    won["event_name"] = json!("won");
    won["order_id"] = json!("O-1");
    won["value"] = json!(100);
    won["currency"] = json!("usd");
    let c = p.publish(&won).await;

    let writer = p
        .start_crm(SenderOptions {
            hubspot: true,
            ..SenderOptions::default()
        })
        .await;
    for id in [&a, &b, &c] {
        p.wait_status_in(CRM, id, "sent", WAIT).await;
    }

    // By email, with the raw contact and context, the stage following the events.
    let jane = p.crm.contact("email", "jane.doe@example.com").unwrap();
    assert_eq!(jane["firstname"], "Jane");
    assert_eq!(
        jane["leadpipe_transcript"],
        "Bot: Hi!\nJane: I need 12 seats."
    );
    assert_eq!(jane["lifecyclestage"], "customer");
    // Without an email: by the unique lead-id property.
    let sam = p.crm.contact("leadpipe_lead_id", "L-hs2").unwrap();
    assert_eq!(sam["phone"], "+442079460958");
    assert_eq!(sam["lifecyclestage"], "lead");
    // Each input carries its event id; one contact appears once per request.
    for batch in p.crm.batches() {
        let inputs = batch.body["inputs"].as_array().unwrap();
        assert!(inputs.iter().all(|i| i["objectWriteTraceId"].is_string()));
        assert!(inputs.len() <= 100);
    }
    writer.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_207_with_one_refused_contact_dead_letters_only_that_event() {
    let p = Pipeline::new().await;
    let ok = p.publish(&rich_lead("L-207a")).await;
    let mut bad = recent_lead("L-207b");
    bad["contact"] = json!({"email": HUBSPOT_REJECTED_EMAIL});
    let bad = p.publish(&bad).await;

    let writer = p
        .start_crm(SenderOptions {
            hubspot: true,
            ..SenderOptions::default()
        })
        .await;
    p.wait_status_in(CRM, &ok, "sent", WAIT).await;
    p.wait_status_in(CRM, &bad, "dead_lettered", WAIT).await;

    assert_eq!(p.crm.batches()[0].status, 207);
    let dlq = p
        .broker
        .take(&p.names.dead_letter_queue(CRM), 1, WAIT)
        .await;
    assert_eq!(dlq[0].message_id().as_deref(), Some(bad.as_str()));
    assert_eq!(
        dlq[0].header("x-leadpipe-error-code").as_deref(),
        Some("hubspot_validation_error")
    );
    let message = dlq[0].header("x-leadpipe-error-message").unwrap();
    assert!(
        !message.contains("refused@"),
        "PII in the error header: {message}"
    );
    writer.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_hubspot_429_is_waited_out_as_its_headers_say_then_written() {
    let p = Pipeline::new().await;
    p.crm.script_hubspot([429]);
    let id = p.publish(&rich_lead("L-429")).await;

    let writer = p
        .start_crm(SenderOptions {
            hubspot: true,
            ..SenderOptions::default()
        })
        .await;
    p.wait_status_in(CRM, &id, "sent", WAIT).await;

    let batches = p.crm.batches();
    assert_eq!(batches[0].status, 429);
    let waited = batches[1].at - batches[0].at;
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    writer.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn dry_run_records_field_names_and_lengths_only() {
    let p = Pipeline::new().await;
    let id = p.publish(&rich_lead("L-dry")).await;

    let writer = p
        .start_crm(SenderOptions {
            dry_run: true,
            ..SenderOptions::default()
        })
        .await;
    p.wait_status_in(CRM, &id, "dry_run", WAIT).await;

    assert!(p.crm.deliveries().is_empty());
    let (payload,): (Value,) = sqlx::query_as(
        "SELECT dry_run_payload FROM deliveries WHERE destination = 'crm' AND event_id = $1",
    )
    .bind(&id)
    .fetch_one(&p.pool)
    .await
    .unwrap();
    assert_eq!(payload["fields"]["email"], "<20 chars>");
    let text = payload.to_string();
    assert!(!text.contains("jane") && !text.contains("seats"), "{text}");
    writer.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_receiver_refusing_the_credentials_pauses_the_writer_instead_of_dead_lettering() {
    // Arrange: the receiver answers 401 once (a rotated secret, say), then accepts.
    let p = Pipeline::new().await;
    p.crm.script_webhook([401]);
    let id = p.publish(&rich_lead("L-401")).await;

    // Act
    let writer = p.start_crm(SenderOptions::default()).await;
    p.wait_status_in(CRM, &id, "sent", WAIT).await;

    // Assert: the batch went back to the queue (systemic) as a fresh copy, not to the DLQ,
    // and was written once the endpoint answered the probe and the trial batch went through.
    let statuses: Vec<u16> = p.crm.deliveries().iter().map(|d| d.status).collect();
    assert_eq!(statuses, [401, 200]);
    assert_eq!(p.dlq_depth(CRM).await, 0);
    let metrics = writer.metrics().await;
    assert!(
        metrics.contains(r#"leadpipe_deliveries_total{destination="crm",result="handed_back"}"#)
            && !metrics.contains(r#"result="requeued""#),
        "{metrics}"
    );
    writer.stop().await;
    p.cleanup().await;
}
