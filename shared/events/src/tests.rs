//! Tests of the whole validation pass: every rule, error collection, and normalization
//! properties (derived id stable across offsets, normalizing twice changes nothing).

use std::collections::HashSet;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::{FieldError, ValidationContext, codes, derive_event_id, validate_event};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap()
}

fn custom() -> HashSet<String> {
    HashSet::from(["demo_booked".to_owned()])
}

fn check(body: Value) -> Result<crate::ValidatedEvent, Vec<FieldError>> {
    let custom = custom();
    let ctx = ValidationContext {
        source_id: "site-widget",
        default_region: Some("US"),
        custom_events: &custom,
        now: now(),
    };
    validate_event(&body, &ctx)
}

fn lead() -> Value {
    json!({
        "source": "site-widget",
        "event_name": "lead",
        "occurred_at": "2026-11-21T11:00:00+01:00",
        "lead_id": "L-1",
        "contact": {"email": "  Jane.Doe@Example.COM ", "phone": "(650) 555-1234"}
    })
}

fn codes_of(errors: &[FieldError]) -> Vec<(String, &'static str)> {
    errors.iter().map(|e| (e.field.clone(), e.code)).collect()
}

fn errors_for(body: Value) -> Vec<(String, &'static str)> {
    codes_of(&check(body).expect_err("expected validation errors"))
}

fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = if parent.is_empty() {
        &mut base
    } else {
        base.pointer_mut(parent).unwrap()
    };
    target[key] = value;
    base
}

fn without(mut base: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = if parent.is_empty() {
        &mut base
    } else {
        base.pointer_mut(parent).unwrap()
    };
    target.as_object_mut().unwrap().remove(key);
    base
}

#[test]
fn a_valid_lead_is_normalized_and_gets_a_derived_id() {
    // Act
    let ok = check(lead()).unwrap();
    // Assert
    let contact = ok.event.contact.as_ref().unwrap();
    assert_eq!(contact.email.as_deref(), Some("jane.doe@example.com"));
    assert_eq!(contact.phone.as_deref(), Some("+16505551234"));
    assert_eq!(
        ok.event.occurred_at.as_deref(),
        Some("2026-11-21T10:00:00Z")
    );
    assert_eq!(
        ok.event_id,
        derive_event_id("site-widget", "lead", "L-1", "2026-11-21T10:00:00Z", "")
    );
    assert_eq!(ok.event.event_id.as_deref(), Some(ok.event_id.as_str()));
}

#[test]
fn a_client_event_id_is_kept() {
    let ok = check(with(lead(), "/event_id", json!("pixel-123"))).unwrap();
    assert_eq!(ok.event_id, "pixel-123");
}

#[test]
fn invalid_email_invalid_phone_and_unknown_field_are_reported_together() {
    // Arrange
    let body = json!({
        "source": "site-widget",
        "event_name": "lead",
        "occurred_at": "2026-11-21T11:00:00Z",
        "lead_id": "L-1",
        "emial": "typo@example.com",
        "contact": {"email": "not-an-email", "phone": "12"}
    });
    // Act
    let errors = errors_for(body);
    // Assert
    assert!(errors.contains(&("emial".into(), codes::UNKNOWN_FIELD)));
    assert!(errors.contains(&("contact.email".into(), codes::INVALID_EMAIL)));
    assert!(errors.contains(&("contact.phone".into(), codes::INVALID_PHONE)));
    assert_eq!(errors.len(), 3, "{errors:?}");
}

#[test]
fn unknown_fields_are_reported_at_every_depth() {
    let mut body = lead();
    body["contact"]["emali"] = json!("x");
    body["attribution"] = json!({"utm_sourse": "x"});
    body["external_ids"] = json!(["a"]);
    let errors = errors_for(body);
    assert!(errors.contains(&("contact.emali".into(), codes::UNKNOWN_FIELD)));
    assert!(errors.contains(&("attribution.utm_sourse".into(), codes::UNKNOWN_FIELD)));
}

#[test]
fn wrong_types_are_reported_at_their_path_all_at_once() {
    let mut body = lead();
    body["value"] = json!("ten");
    body["contact"]["email"] = json!(42);
    body["consent"] = json!({"ad_user_data": "yes"});
    body["external_ids"] = json!(["ok", 5]);
    let errors = errors_for(body);
    for field in [
        "value",
        "contact.email",
        "consent.ad_user_data",
        "external_ids[1]",
    ] {
        assert!(
            errors.contains(&(field.into(), codes::INVALID_TYPE)),
            "{field}: {errors:?}"
        );
    }
}

#[test]
fn type_error_messages_do_not_echo_the_value() {
    let mut body = lead();
    body["contact"]["phone"] = json!(6505551234_u64);
    let errors = check(body).unwrap_err();
    let e = errors.iter().find(|e| e.field == "contact.phone").unwrap();
    assert!(!e.message.contains("6505551234"), "{}", e.message);
}

#[test]
fn a_body_that_is_not_an_object_is_refused() {
    assert_eq!(
        errors_for(json!([1, 2])),
        vec![(String::new(), codes::INVALID_TYPE)]
    );
}

#[test]
fn required_fields_are_reported_when_missing_or_blank() {
    for field in ["source", "event_name", "occurred_at", "lead_id"] {
        let errors = errors_for(without(lead(), &format!("/{field}")));
        assert_eq!(errors, vec![(field.to_owned(), codes::REQUIRED)], "{field}");
        let errors = errors_for(with(lead(), &format!("/{field}"), json!("   ")));
        assert_eq!(
            errors,
            vec![(field.to_owned(), codes::REQUIRED)],
            "{field} blank"
        );
    }
}

#[test]
fn source_must_match_the_authenticated_source() {
    assert_eq!(
        errors_for(with(lead(), "/source", json!("other"))),
        vec![("source".into(), codes::SOURCE_MISMATCH)]
    );
}

#[test]
fn event_names_are_builtin_or_declared_custom() {
    assert!(check(with(lead(), "/event_name", json!("demo_booked"))).is_ok());
    for bad in ["undeclared_event", "Lead", "lead!", "9lead"] {
        assert_eq!(
            errors_for(with(lead(), "/event_name", json!(bad))),
            vec![("event_name".into(), codes::UNKNOWN_EVENT_NAME)],
            "{bad}"
        );
    }
}

#[test]
fn event_id_must_be_printable_ascii_up_to_128() {
    for bad in [json!("é"), json!("a".repeat(129)), json!("tab\there")] {
        assert_eq!(
            errors_for(with(lead(), "/event_id", bad)),
            vec![("event_id".into(), codes::INVALID_EVENT_ID)]
        );
    }
}

#[test]
fn occurred_at_needs_an_offset_and_may_not_be_far_in_the_future() {
    for bad in ["2026-11-21 10:00:00", "2026-11-21T10:00:00", "yesterday"] {
        assert_eq!(
            errors_for(with(lead(), "/occurred_at", json!(bad))),
            vec![("occurred_at".into(), codes::INVALID_TIMESTAMP)],
            "{bad}"
        );
    }
    assert!(check(with(lead(), "/occurred_at", json!("2026-11-21T12:04:59Z"))).is_ok());
    assert_eq!(
        errors_for(with(lead(), "/occurred_at", json!("2026-11-21T12:05:01Z"))),
        vec![("occurred_at".into(), codes::IN_FUTURE)]
    );
}

#[test]
fn a_lead_needs_an_email_or_a_phone() {
    let body = with(lead(), "/contact", json!({"first_name": "Jane"}));
    assert_eq!(
        errors_for(body),
        vec![("contact".into(), codes::MISSING_IDENTIFIER)]
    );
    assert!(
        check(with(
            lead(),
            "/contact",
            json!({"phone": "+44 20 7946 0958"})
        ))
        .is_ok()
    );
    // Other events need no identifier.
    let contact_event = without(with(lead(), "/event_name", json!("contact")), "/contact");
    assert!(check(contact_event).is_ok());
}

fn won() -> Value {
    let mut body = with(lead(), "/event_name", json!("won"));
    body["order_id"] = json!("O-1");
    body["value"] = json!(120.5);
    body["currency"] = json!("usd");
    body
}

#[test]
fn won_needs_order_value_and_currency_and_upper_cases_currency() {
    let ok = check(won()).unwrap();
    assert_eq!(ok.event.currency.as_deref(), Some("USD"));
    let derived = derive_event_id("site-widget", "won", "L-1", "2026-11-21T10:00:00Z", "O-1");
    assert_eq!(ok.event_id, derived);
    for field in ["order_id", "value", "currency"] {
        assert_eq!(
            errors_for(without(won(), &format!("/{field}"))),
            vec![(field.to_owned(), codes::REQUIRED)]
        );
    }
}

#[test]
fn value_must_be_non_negative_and_currency_iso_4217() {
    assert_eq!(
        errors_for(with(won(), "/value", json!(-1))),
        vec![("value".into(), codes::INVALID_VALUE)]
    );
    assert_eq!(
        errors_for(with(won(), "/currency", json!("dollars"))),
        vec![("currency".into(), codes::INVALID_CURRENCY)]
    );
}

#[test]
fn refunds_need_a_kind_and_partial_ones_a_remaining_value() {
    let refund = with(won(), "/event_name", json!("refund"));
    assert_eq!(
        errors_for(refund.clone()),
        vec![("refund".into(), codes::REQUIRED)]
    );
    assert!(check(with(refund.clone(), "/refund", json!({"kind": "full"}))).is_ok());
    assert!(
        check(with(
            refund.clone(),
            "/refund",
            json!({"kind": "partial", "remaining_value": 20})
        ))
        .is_ok()
    );
    assert_eq!(
        errors_for(with(refund.clone(), "/refund", json!({"kind": "partial"}))),
        vec![("refund.remaining_value".into(), codes::REQUIRED)]
    );
    assert_eq!(
        errors_for(with(refund.clone(), "/refund", json!({}))),
        vec![("refund.kind".into(), codes::REQUIRED)]
    );
    // A 30 % refund of 100: `value` 30 refunded, the order worth 70 afterwards. What the
    // order is worth afterwards may exceed what was refunded (SPEC §2).
    let partial = with(
        with(refund.clone(), "/value", json!(30)),
        "/refund",
        json!({"kind": "partial", "remaining_value": 70}),
    );
    let ok = check(partial).unwrap();
    assert_eq!(ok.event.value, Some(30.0));
    assert_eq!(ok.event.refund.unwrap().remaining_value, Some(70.0));
    assert!(
        check(with(
            refund.clone(),
            "/refund",
            json!({"kind": "partial", "remaining_value": 500})
        ))
        .is_ok()
    );
    assert!(
        check(with(
            refund.clone(),
            "/refund",
            json!({"kind": "partial", "remaining_value": 0})
        ))
        .is_ok()
    );
    assert_eq!(
        errors_for(with(
            refund,
            "/refund",
            json!({"kind": "partial", "remaining_value": -1})
        )),
        vec![("refund.remaining_value".into(), codes::INVALID_VALUE)]
    );
    assert_eq!(
        errors_for(with(lead(), "/refund", json!({"kind": "full"}))),
        vec![("refund".into(), codes::NOT_ALLOWED)]
    );
}

#[test]
fn phone_uses_the_lead_country_before_the_source_region() {
    // A GB national number only parses with the lead's country, not the source's US default.
    let body = with(
        lead(),
        "/contact",
        json!({"phone": "020 7946 0958", "country": "United Kingdom"}),
    );
    let ok = check(body).unwrap();
    let contact = ok.event.contact.unwrap();
    assert_eq!(contact.phone.as_deref(), Some("+442079460958"));
    assert_eq!(contact.country.as_deref(), Some("GB"));
    // Without a country the source's default (US) applies.
    let body = with(lead(), "/contact", json!({"phone": "020 7946 0958"}));
    assert_eq!(
        errors_for(body),
        vec![("contact.phone".into(), codes::INVALID_PHONE)]
    );
}

#[test]
fn contact_fields_are_normalized() {
    let body = with(
        lead(),
        "/contact",
        json!({
            "email": "J.A.N.E@GoogleMail.com",
            "first_name": "  José ",
            "last_name": "",
            "country": " us ",
            "gender": "Female",
            "date_of_birth": "1990-02-03",
            "city": "New York"
        }),
    );
    let contact = check(body).unwrap().event.contact.unwrap();
    assert_eq!(contact.email.as_deref(), Some("j.a.n.e@googlemail.com"));
    assert_eq!(contact.first_name.as_deref(), Some("José"));
    assert_eq!(contact.last_name, None, "empty strings are dropped");
    assert_eq!(contact.country.as_deref(), Some("US"));
    assert_eq!(contact.gender.as_deref(), Some("f"));
    assert_eq!(contact.city.as_deref(), Some("New York"));
}

#[test]
fn invalid_country_and_date_are_reported() {
    let body = with(
        lead(),
        "/contact",
        json!({"email": "a@example.com", "country": "Atlantis", "date_of_birth": "1990-13-01"}),
    );
    let errors = errors_for(body);
    assert!(errors.contains(&("contact.country".into(), codes::INVALID_COUNTRY)));
    assert!(errors.contains(&("contact.date_of_birth".into(), codes::INVALID_DATE)));
}

#[test]
fn urls_ips_and_lengths_are_checked() {
    let mut body = lead();
    body["attribution"] =
        json!({"landing_page_url": "javascript:alert(1)", "utm_source": "x".repeat(600)});
    body["client"] = json!({"ip_address": "999.1.1.1", "user_agent": "Mozilla/5.0"});
    body["context"] =
        json!({"transcript": "y".repeat(64 * 1024 + 1), "entry_page_url": "https://example.com"});
    let errors = errors_for(body);
    assert!(errors.contains(&("attribution.landing_page_url".into(), codes::INVALID_URL)));
    assert!(errors.contains(&("attribution.utm_source".into(), codes::TOO_LONG)));
    assert!(errors.contains(&("client.ip_address".into(), codes::INVALID_IP_ADDRESS)));
    assert!(errors.contains(&("context.transcript".into(), codes::TOO_LONG)));
    assert_eq!(errors.len(), 4, "{errors:?}");
}

#[test]
fn external_ids_are_trimmed_deduplicated_and_bounded() {
    let ok = check(with(lead(), "/external_ids", json!([" a ", "a", "", "b"]))).unwrap();
    assert_eq!(ok.event.external_ids, Some(vec!["a".into(), "b".into()]));
    let many: Vec<String> = (0..21).map(|i| i.to_string()).collect();
    assert_eq!(
        errors_for(with(lead(), "/external_ids", json!(many))),
        vec![("external_ids".into(), codes::TOO_MANY)]
    );
}

#[test]
fn custom_and_qualification_take_scalars_only() {
    assert!(
        check(with(
            lead(),
            "/custom",
            json!({"plan": "pro", "seats": 5, "vip": true})
        ))
        .is_ok()
    );
    let errors = errors_for(with(lead(), "/custom", json!({"nested": {"a": 1}})));
    assert_eq!(errors, vec![("custom.nested".into(), codes::INVALID_TYPE)]);
}

#[test]
fn consent_defaults_to_unknown_and_captured_at_is_utc() {
    let body = with(
        lead(),
        "/consent",
        json!({"ad_user_data": "granted", "captured_at": "2026-11-21T11:00:00+01:00"}),
    );
    let consent = check(body).unwrap().event.consent.unwrap();
    assert_eq!(consent.ad_user_data, crate::model::ConsentState::Granted);
    assert_eq!(consent.analytics, crate::model::ConsentState::Unknown);
    assert_eq!(consent.captured_at.as_deref(), Some("2026-11-21T10:00:00Z"));
}

#[test]
fn the_schema_is_generated_from_the_types_and_closed() {
    let schema = crate::json_schema();
    assert_eq!(schema["additionalProperties"], json!(false));
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for field in ["source", "event_name", "occurred_at", "lead_id"] {
        assert!(required.contains(&field), "{field} not required");
    }
    assert!(schema["properties"]["contact"].is_object());
    assert_eq!(
        schema["$defs"]["Contact"]["additionalProperties"],
        json!(false)
    );
}

proptest! {
    #[test]
    fn derived_event_id_is_the_same_for_one_instant_at_any_offset(
        secs in 0i64..1_700_000_000,
        offset_minutes in -840i32..=840,
    ) {
        let instant = Utc.timestamp_opt(secs, 0).unwrap();
        let offset = chrono::FixedOffset::east_opt(offset_minutes * 60).unwrap();
        let local = instant.with_timezone(&offset).to_rfc3339();
        let utc = instant.to_rfc3339();
        let a = check(with(lead(), "/occurred_at", json!(local))).unwrap();
        let b = check(with(lead(), "/occurred_at", json!(utc))).unwrap();
        prop_assert_eq!(a.event_id, b.event_id);
    }

    #[test]
    fn normalizing_twice_changes_nothing(
        email in prop::sample::select(vec!["  John.Doe@Example.COM  ", "Jane.Doe+promo@gmail.com", "x@y.io"]),
        phone in prop::sample::select(vec!["(650) 555-1234", "+44 20 7946 0958", "011 44 20 7946 0958", "+1-650-555-1234 ext. 7"]),
        country in prop::sample::select(vec!["United States", " us ", "USA"]),
        gender in prop::sample::select(vec!["Female", "m", "other"]),
        name in "[ A-Za-zéñ'-]{0,12}",
        offset_hours in -12i32..=12,
    ) {
        let occurred = Utc.with_ymd_and_hms(2026, 11, 20, 8, 30, 0).unwrap()
            .with_timezone(&chrono::FixedOffset::east_opt(offset_hours * 3600).unwrap())
            .to_rfc3339();
        let body = json!({
            "source": " site-widget ",
            "event_name": "lead",
            "occurred_at": occurred,
            "lead_id": " L-9 ",
            "contact": {"email": email, "phone": phone, "country": country, "gender": gender, "first_name": name},
            "external_ids": [" v-1 ", "v-1"],
        });
        let once = check(body).unwrap();
        let again = check(serde_json::to_value(&once.event).unwrap()).unwrap();
        prop_assert_eq!(&once.event, &again.event);
        prop_assert_eq!(once.event_id, again.event_id);
    }
}

#[test]
fn field_paths_are_checked_against_the_schema() {
    for ok in [
        "lead_id",
        "contact.email",
        "attribution.gclid",
        "consent.ad_user_data",
        "refund.kind",
    ] {
        assert!(crate::validate::is_field_path(ok), "{ok}");
    }
    for bad in ["contact.mail", "colour", "contact.email.x", ""] {
        assert!(!crate::validate::is_field_path(bad), "{bad}");
    }
}

/// Arbitrary JSON, biased towards the canonical event's own keys so the fuzzing reaches the
/// rules, not only the "unknown field" check.
fn arbitrary_json() -> impl Strategy<Value = Value> {
    let key = prop::sample::select(vec![
        "source",
        "event_name",
        "occurred_at",
        "lead_id",
        "order_id",
        "value",
        "currency",
        "refund",
        "kind",
        "remaining_value",
        "contact",
        "email",
        "phone",
        "country",
        "first_name",
        "date_of_birth",
        "gender",
        "attribution",
        "gclid",
        "consent",
        "ad_user_data",
        "context",
        "transcript",
        "qualification",
        "custom",
        "external_ids",
        "client",
        "ip_address",
        "x",
    ])
    .prop_map(str::to_owned);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<i64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        prop::sample::select(vec![
            "lead",
            "won",
            "refund",
            "granted",
            "partial",
            "US",
            "2026-11-21T10:00:00Z",
            "+1 650 555 1234",
            "a@b.co"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512)
    ))]

    /// Fuzzing the parser and validator: any JSON gets an answer (valid, or field errors each
    /// naming a field), never a panic; an accepted event validates again to itself.
    #[test]
    fn any_json_is_answered_without_panicking(body in arbitrary_json()) {
        match check(body) {
            Ok(valid) => {
                let again = check(serde_json::to_value(&valid.event).unwrap()).unwrap();
                prop_assert_eq!(again.event_id, valid.event_id);
            }
            Err(errors) => prop_assert!(!errors.is_empty()),
        }
    }

    /// And any bytes at all, through the fast path ingest uses.
    #[test]
    fn any_bytes_are_answered_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let custom = custom();
        let ctx = ValidationContext {
            source_id: "site-widget",
            default_region: Some("US"),
            custom_events: &custom,
            now: now(),
        };
        let _ = crate::validate_body(&bytes, &ctx);
    }
}
