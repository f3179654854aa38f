//! The shipped native-webhook examples (`examples/webhooks/`): a website chat widget's lead and
//! a Messenger-style lead form, posted as the platforms send them, reach every destination as
//! the canonical event they stand for — with no code, only the sources file's field maps.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use leadpipe_events::sha256_hex;
use leadpipe_tests::{IngestOptions, Pipeline, SenderOptions, spawn_ingest};

const WAIT: Duration = Duration::from_secs(30);

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/webhooks")
        .join(name)
}

/// The example sources, with test secrets.
fn example_sources() -> Vec<leadpipe_config::sources::Source> {
    leadpipe_config::sources::load(&example("sources.toml"), |name| {
        Some(format!("secret-of-{name}"))
    })
    .expect("the shipped example sources load")
}

/// The event id ingest derives for a hand-written canonical event.
fn canonical_id(event: &Value) -> String {
    let custom = std::collections::HashSet::new();
    let region = if event["source"] == "acme-widget" {
        "DE"
    } else {
        "US"
    };
    let ctx = leadpipe_events::ValidationContext {
        source_id: event["source"].as_str().unwrap(),
        default_region: Some(region),
        custom_events: &custom,
        now: chrono::Utc::now(),
    };
    leadpipe_events::validate_event(event, &ctx)
        .expect("a valid canonical event")
        .event_id
}

#[tokio::test]
async fn the_widget_and_messenger_examples_reach_every_destination_as_their_canonical_events() {
    // Arrange: ingest with the example sources, feeding a pipeline's senders.
    let p = Pipeline::new().await;
    let ingest = spawn_ingest(IngestOptions {
        namespace: Some(p.names.namespace().to_owned()),
        extra_sources: example_sources(),
        ..IngestOptions::default()
    })
    .await;
    let meta = p.start_meta(SenderOptions::default()).await;
    let ga4 = p.start_ga4(SenderOptions::default()).await;
    let google = p.start_google(SenderOptions::default()).await;
    let crm = p.start_crm(SenderOptions::default()).await;
    // The examples happened on 2026-12-04; posted as if yesterday, so that no destination's
    // acceptance window (GA4: 72 h) has passed.
    let day = chrono::Utc::now().date_naive() - chrono::Days::new(1);
    let (iso, dmy) = (
        day.format("%Y-%m-%d").to_string(),
        day.format("%d/%m/%Y").to_string(),
    );
    let recent = |text: &str| text.replace("2026-12-04", &iso).replace("04/12/2026", &dmy);
    // What each payload stands for, written by hand.
    let widget_canonical = json!({
        "source": "acme-widget", "event_name": "lead", "lead_id": "conv_7d1f9a",
        "occurred_at": recent("2026-12-04T10:02:11+01:00"),
        "contact": {"email": "juergen.mueller@example.de", "phone": "030 1234567",
                    "first_name": "Jürgen", "last_name": "Müller-Lüdenscheidt", "country": "DE"}
    });
    let messenger_canonical = json!({
        "source": "messenger-forms", "event_name": "lead", "lead_id": "6043219876543210",
        "occurred_at": recent("2026-12-04T09:15:00Z"),
        "contact": {"email": "ada.oneil@example.com"}
    });

    // Act: post the platforms' own payloads.
    let mut ids = Vec::new();
    for (source, file) in [
        ("acme-widget", "widget-lead.json"),
        ("messenger-forms", "messenger-lead.json"),
    ] {
        let body = recent(&std::fs::read_to_string(example(file)).unwrap()).into_bytes();
        let secret = format!(
            "secret-of-{}",
            if source == "acme-widget" {
                "ACME_WIDGET_SECRET"
            } else {
                "MESSENGER_FORMS_SECRET"
            }
        );
        let response = ingest
            .post_signed_as(
                &format!("/v1/sources/{source}/webhook"),
                &body,
                source,
                &secret,
            )
            .await;
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, 202, "{source}: {answer}");
        ids.push(answer["event_id"].as_str().unwrap().to_owned());
    }

    // Assert: the same identity as the canonical events…
    assert_eq!(ids[0], canonical_id(&widget_canonical));
    assert_eq!(ids[1], canonical_id(&messenger_canonical));
    // …delivered to every destination they are routed to (leads: Google Ads skips them).
    for id in &ids {
        p.wait_status_in(leadpipe_meta_sender::DESTINATION, id, "sent", WAIT)
            .await;
        p.wait_status_in(leadpipe_ga4_sender::DESTINATION, id, "sent", WAIT)
            .await;
        p.wait_status_in(leadpipe_crm_writer::DESTINATION, id, "sent", WAIT)
            .await;
        p.wait_status_in(
            leadpipe_google_ads_sender::DESTINATION,
            id,
            "skipped_unmapped",
            WAIT,
        )
        .await;
    }
    // Meta: hashed per the contract (German national number completed with the lead's country;
    // accents kept in names); Messenger's opt-in true became granted consent.
    let widget_meta = p.meta.event(&ids[0]).unwrap();
    assert_eq!(
        widget_meta["user_data"]["em"],
        sha256_hex("juergen.mueller@example.de")
    );
    assert_eq!(widget_meta["user_data"]["ph"], sha256_hex("49301234567"));
    assert_eq!(widget_meta["user_data"]["fn"], sha256_hex("jürgen"));
    assert_eq!(
        widget_meta["user_data"]["fbp"],
        "fb.1.1764838931000.1234567890"
    );
    let messenger_meta = p.meta.event(&ids[1]).unwrap();
    assert_eq!(messenger_meta["user_data"]["ph"], sha256_hex("12015550123"));
    assert_eq!(messenger_meta["user_data"]["ln"], sha256_hex("oneil"));
    // GA4: the widget's _ga cookie became its client id.
    let (body, _) = p.ga4.event(&ids[0]).unwrap();
    assert_eq!(body["client_id"], "1234567890.1764838931");
    // The CRM: raw contact and the conversation context.
    let crm_writes = p.crm.deliveries();
    let widget_crm = crm_writes.iter().find(|d| d.id == ids[0]).unwrap();
    assert_eq!(
        widget_crm.body["data"]["email"],
        "juergen.mueller@example.de"
    );
    assert_eq!(widget_crm.body["data"]["phone"], "+49301234567");
    assert_eq!(
        widget_crm.body["data"]["leadpipe_qualification"],
        "budget: 10-20k\nseats: 12"
    );
    assert!(
        widget_crm.body["data"]["leadpipe_transcript"]
            .as_str()
            .unwrap()
            .contains("12 seats")
    );
    let messenger_crm = crm_writes.iter().find(|d| d.id == ids[1]).unwrap();
    assert_eq!(
        messenger_crm.body["data"]["leadpipe_chatbot"],
        "messenger-lead-form"
    );
    assert_eq!(messenger_crm.body["data"]["city"], "Hoboken");
    for s in [meta, ga4, google, crm] {
        s.stop().await;
    }
    ingest.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_native_payload_the_map_turns_invalid_is_refused_naming_both_paths() {
    // Arrange
    let p = Pipeline::new().await;
    let ingest = spawn_ingest(IngestOptions {
        namespace: Some(p.names.namespace().to_owned()),
        extra_sources: example_sources(),
        ..IngestOptions::default()
    })
    .await;
    let mut payload: Value =
        serde_json::from_slice(&std::fs::read(example("messenger-lead.json")).unwrap()).unwrap();
    payload["event"] = json!("page_liked");
    payload["form"]["answers"]["email"] = json!("not-an-email");
    payload["form"]["marketing_opt_in"] = json!("maybe");

    // Act
    let response = ingest
        .post_signed_as(
            "/v1/sources/messenger-forms/webhook",
            &serde_json::to_vec(&payload).unwrap(),
            "messenger-forms",
            "secret-of-MESSENGER_FORMS_SECRET",
        )
        .await;

    // Assert: 422, each error naming the canonical field and the native path.
    assert_eq!(response.status(), 422);
    let answer: Value = response.json().await.unwrap();
    let errors = answer["errors"].as_array().unwrap();
    let find = |field: &str| {
        errors
            .iter()
            .find(|e| e["field"] == field)
            .unwrap_or_else(|| panic!("no error for {field}: {answer}"))["message"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(find("event_name").contains("/event"), "{answer}");
    assert!(
        find("contact.email").contains("/form/answers/email"),
        "{answer}"
    );
    assert!(
        find("consent.ad_user_data").contains("/form/marketing_opt_in"),
        "{answer}"
    );
    assert!(
        !answer.to_string().contains("not-an-email"),
        "a value was echoed"
    );
    ingest.stop().await;
    p.cleanup().await;
}
