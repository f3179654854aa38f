//! Canonical event → Google Ads payloads (`contracts/google-data-manager.md` §3–§5, §9;
//! `contracts/google-ads.md` §3–§4), identifiers hashed per `normalization.md`'s Google rules.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use leadpipe_events::hashing::google as h;
use leadpipe_events::model::{ConsentState, RefundKind};
use leadpipe_events::{Envelope, LeadEvent};

use crate::cfg::{ConsentPolicy, GoogleAdsMapping, Kind, Route};

/// Clicks older than this are outside every conversion action's click-through window.
pub const MAX_CONVERSION_AGE: chrono::Duration = chrono::Duration::days(90);
/// Google Ads accepts adjustments of conversions up to 54 days old.
pub const MAX_ADJUSTMENT_AGE: chrono::Duration = chrono::Duration::days(54);

/// How old an event Google Ads still takes: a full refund's retraction ages by the adjustment
/// window, anything else by the conversion window.
pub fn acceptance_window(env: &leadpipe_events::Envelope) -> Option<chrono::Duration> {
    let full_refund = env
        .event
        .refund
        .as_ref()
        .is_some_and(|r| r.kind == Some(RefundKind::Full));
    Some(if full_refund {
        MAX_ADJUSTMENT_AGE
    } else {
        MAX_CONVERSION_AGE
    })
}

/// One event ready for a request.
#[derive(Debug, Clone, PartialEq)]
pub enum GoogleEvent {
    /// Data Manager `events:ingest`: a conversion, an enhanced conversion for leads, or a
    /// restatement (same `transactionId`, new value).
    Ingest {
        /// Conversion action (`productDestinationId`).
        action_id: String,
        /// The `Event`.
        event: Value,
    },
    /// Google Ads API `uploadClickConversions` (`GOOGLE_ADS_ROUTE=ads_api`).
    Click {
        /// Conversion action id.
        action_id: String,
        /// The `ClickConversion`.
        conversion: Value,
    },
    /// Google Ads API `uploadConversionAdjustments` with `RETRACTION`: the only way to take a
    /// conversion back (Data Manager has none).
    Retraction {
        /// Conversion action id.
        action_id: String,
        /// The `ConversionAdjustment`.
        adjustment: Value,
    },
}

impl GoogleEvent {
    /// Which request family the event goes in: events of one family and conversion action
    /// share requests.
    pub fn group(&self) -> (u8, &str) {
        match self {
            Self::Ingest { action_id, .. } => (0, action_id),
            Self::Click { action_id, .. } => (1, action_id),
            Self::Retraction { action_id, .. } => (2, action_id),
        }
    }
}

pub use leadpipe_consumer::Skip;

/// What the builder needs besides the event.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Which API carries click conversions.
    pub route: Route,
    /// The operating account (digits); a placeholder in DRY_RUN without one.
    pub customer_id: &'a str,
    /// `CONSENT_POLICY`.
    pub consent: ConsentPolicy,
    /// Now.
    pub now: DateTime<Utc>,
}

/// Builds the Google Ads payload for `env`, or says why it is not sent.
pub fn build(
    env: &Envelope,
    mapping: Option<&GoogleAdsMapping>,
    cx: Context<'_>,
) -> Result<GoogleEvent, Skip> {
    let ev = &env.event;
    if !cx.consent.allows(ev.ad_user_data_consent()) {
        return Err(Skip::Consent);
    }
    let mapping = mapping.ok_or(Skip::Unmapped)?;
    let action_id = mapping
        .conversion_action_id
        .clone()
        .unwrap_or_else(|| "0".to_owned());
    let occurred = ev
        .occurred_at_utc()
        .ok_or_else(|| Skip::Invalid("invalid_event", "occurred_at is not a timestamp".into()))?;
    let occurred = occurred.min(cx.now);
    let refund = ev
        .refund
        .as_ref()
        .filter(|_| mapping.kind == Kind::Adjustment);
    let full_refund = refund.is_some_and(|r| r.kind == Some(RefundKind::Full));
    let max_age = if full_refund {
        MAX_ADJUSTMENT_AGE
    } else {
        MAX_CONVERSION_AGE
    };
    if cx.now - occurred > max_age {
        return Err(Skip::Expired);
    }
    if mapping.kind == Kind::Adjustment && refund.is_none() {
        return Err(Skip::Invalid(
            "invalid_event",
            "an adjustment needs the refund object".into(),
        ));
    }
    if full_refund {
        let order = ev
            .order_id
            .as_deref()
            .ok_or_else(|| Skip::Invalid("invalid_event", "a retraction needs order_id".into()))?;
        let adjustment = json!({
            "adjustmentType": "RETRACTION",
            "conversionAction": conversion_action(cx.customer_id, &action_id),
            "orderId": order,
            "adjustmentDateTime": ads_datetime(occurred),
        });
        return Ok(GoogleEvent::Retraction {
            action_id,
            adjustment,
        });
    }
    // A conversion, or a partial refund restated with what the order is now worth.
    let (value, currency) = match refund {
        Some(r) => (r.remaining_value, ev.currency.clone()),
        None => (ev.value, ev.currency.clone()),
    };
    let transaction_id = ev.order_id.clone().unwrap_or_else(|| env.event_id.clone());
    let consent = ev.consent.clone().unwrap_or_default();
    let personalization = consent.ad_personalization == ConsentState::Granted;
    match (cx.route, refund.is_some()) {
        (Route::AdsApi, false) => {
            let mut c = Map::new();
            c.insert(
                "conversionAction".into(),
                json!(conversion_action(cx.customer_id, &action_id)),
            );
            c.insert("conversionDateTime".into(), json!(ads_datetime(occurred)));
            if let (Some(v), Some(cur)) = (value, &currency) {
                c.insert("conversionValue".into(), json!(v));
                c.insert("currencyCode".into(), json!(cur));
            }
            c.insert("orderId".into(), json!(transaction_id));
            let click = click_id(ev);
            if let Some((k, v)) = &click {
                c.insert((*k).into(), json!(v));
            }
            let ids = ads_identifiers(ev);
            if click.is_none() && ids.is_empty() {
                return Err(no_identifiers());
            }
            if !ids.is_empty() {
                c.insert("userIdentifiers".into(), Value::Array(ids));
            }
            c.insert(
                "consent".into(),
                json!({"adUserData": "GRANTED",
                       "adPersonalization": if personalization { "GRANTED" } else { "DENIED" }}),
            );
            Ok(GoogleEvent::Click {
                action_id,
                conversion: Value::Object(c),
            })
        }
        _ => {
            let mut e = Map::new();
            e.insert("transactionId".into(), json!(transaction_id));
            e.insert(
                "eventTimestamp".into(),
                json!(occurred.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            );
            e.insert("eventSource".into(), json!(mapping.event_source));
            if let (Some(v), Some(cur)) = (value, &currency) {
                e.insert("conversionValue".into(), json!(v));
                e.insert("currency".into(), json!(cur));
            }
            let click = click_id(ev);
            if let Some((k, v)) = &click {
                e.insert("adIdentifiers".into(), json!({ *k: v }));
            }
            let ids = data_manager_identifiers(ev);
            if click.is_none() && ids.is_empty() {
                return Err(no_identifiers());
            }
            if !ids.is_empty() {
                e.insert("userData".into(), json!({ "userIdentifiers": ids }));
            }
            e.insert(
                "consent".into(),
                json!({"adUserData": "CONSENT_GRANTED",
                       "adPersonalization": if personalization { "CONSENT_GRANTED" } else { "CONSENT_DENIED" }}),
            );
            Ok(GoogleEvent::Ingest {
                action_id,
                event: Value::Object(e),
            })
        }
    }
}

fn no_identifiers() -> Skip {
    Skip::Invalid(
        "no_identifiers",
        "no click id (gclid, gbraid, wbraid) and no email or phone to match on".into(),
    )
}

/// `customers/{customer}/conversionActions/{action}`.
pub fn conversion_action(customer_id: &str, action_id: &str) -> String {
    format!("customers/{customer_id}/conversionActions/{action_id}")
}

/// The Google Ads API's date-time: `yyyy-mm-dd hh:mm:ss+00:00` (the offset is mandatory).
pub fn ads_datetime(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S+00:00").to_string()
}

/// Exactly one click id: gclid, else gbraid, else wbraid (never gbraid with wbraid).
fn click_id(ev: &LeadEvent) -> Option<(&'static str, String)> {
    let a = ev.attribution.as_ref()?;
    [
        ("gclid", &a.gclid),
        ("gbraid", &a.gbraid),
        ("wbraid", &a.wbraid),
    ]
    .into_iter()
    .find_map(|(k, v)| v.clone().filter(|s| !s.is_empty()).map(|v| (k, v)))
}

/// Data Manager `userIdentifiers`: one identifier per object — email, phone, and the address
/// when all four of its parts are known.
fn data_manager_identifiers(ev: &LeadEvent) -> Vec<Value> {
    let Some(c) = &ev.contact else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(v) = c.email.as_deref().and_then(h::email) {
        out.push(json!({ "emailAddress": v }));
    }
    if let Some(v) = c.phone.as_deref().and_then(h::phone) {
        out.push(json!({ "phoneNumber": v }));
    }
    let given = c.first_name.as_deref().and_then(h::name);
    let family = c.last_name.as_deref().and_then(h::name);
    let region = c.country.as_deref().map(str::to_ascii_uppercase);
    let postal = c
        .postal_code
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty());
    if let (Some(g), Some(f), Some(r), Some(p)) = (given, family, region, postal) {
        out.push(json!({ "address": {
            "givenName": g, "familyName": f, "regionCode": r, "postalCode": p
        }}));
    }
    out
}

/// Google Ads API click-upload `userIdentifiers`: only `hashedEmail` and `hashedPhoneNumber`,
/// each in its own object.
fn ads_identifiers(ev: &LeadEvent) -> Vec<Value> {
    let Some(c) = &ev.contact else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(v) = c.email.as_deref().and_then(h::email) {
        out.push(json!({ "userIdentifierSource": "FIRST_PARTY", "hashedEmail": v }));
    }
    if let Some(v) = c.phone.as_deref().and_then(h::phone) {
        out.push(json!({ "userIdentifierSource": "FIRST_PARTY", "hashedPhoneNumber": v }));
    }
    out
}

/// A request body as DRY_RUN records it: hashes stay, the plain postal code goes.
pub fn redacted(body: &Value) -> Value {
    let mut body = body.clone();
    if let Some(events) = body.get_mut("events").and_then(Value::as_array_mut) {
        for e in events {
            if let Some(ids) = e
                .pointer_mut("/userData/userIdentifiers")
                .and_then(Value::as_array_mut)
            {
                for id in ids {
                    if let Some(p) = id.pointer_mut("/address/postalCode") {
                        *p = json!("<redacted>");
                    }
                }
            }
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(event: Value) -> Envelope {
        Envelope {
            schema_version: 1,
            event_id: "evt-1".into(),
            ingested_at: "2026-12-01T10:00:01Z".into(),
            event: serde_json::from_value(event).unwrap(),
        }
    }

    fn won() -> Value {
        json!({"source": "crm", "event_name": "won", "lead_id": "L-1", "order_id": "O-1",
               "occurred_at": "2026-12-01T10:00:00Z", "value": 120.5, "currency": "USD",
               "contact": {"email": "jane.doe+promo@gmail.com", "phone": "+16505551234"},
               "consent": {"ad_user_data": "granted"}})
    }

    fn cx(route: Route) -> Context<'static> {
        Context {
            route,
            customer_id: "1234567890",
            consent: ConsentPolicy::Strict,
            now: "2026-12-01T12:00:00Z".parse().unwrap(),
        }
    }

    fn mapping(kind: Kind) -> GoogleAdsMapping {
        GoogleAdsMapping {
            kind,
            conversion_action_id: Some("555".into()),
            event_source: "WEB".into(),
        }
    }

    #[test]
    fn a_won_without_a_click_id_is_an_enhanced_conversion_for_leads_with_identifiers_only() {
        let GoogleEvent::Ingest { event, action_id } = build(
            &env(won()),
            Some(&mapping(Kind::ClickConversion)),
            cx(Route::DataManager),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(action_id, "555");
        assert!(event.get("adIdentifiers").is_none());
        let ids = event["userData"]["userIdentifiers"].as_array().unwrap();
        // E2 (gmail dots and +tag removed) and P1 (E.164 with +), one per object.
        assert_eq!(
            ids[0],
            json!({"emailAddress": "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69"})
        );
        assert_eq!(
            ids[1],
            json!({"phoneNumber": "a2996076d3ad4af5dc818b908b3d8e354f26ededf7df0e0aa6ac354143805ee0"})
        );
        assert_eq!(event["transactionId"], "O-1");
        assert_eq!(event["eventTimestamp"], "2026-12-01T10:00:00Z");
        assert_eq!(event["conversionValue"], 120.5);
    }

    #[test]
    fn the_ads_api_route_builds_click_conversions_with_offsets_and_one_identifier_per_object() {
        let mut e = won();
        e["attribution"] = json!({"gclid": "G-1", "wbraid": "W-1"});
        let GoogleEvent::Click { conversion, .. } = build(
            &env(e),
            Some(&mapping(Kind::ClickConversion)),
            cx(Route::AdsApi),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            conversion["conversionDateTime"],
            "2026-12-01 10:00:00+00:00"
        );
        assert_eq!(conversion["gclid"], "G-1");
        assert!(conversion.get("wbraid").is_none());
        assert_eq!(
            conversion["conversionAction"],
            "customers/1234567890/conversionActions/555"
        );
        let ids = conversion["userIdentifiers"].as_array().unwrap();
        assert!(ids.iter().all(|i| i.as_object().unwrap().len() == 2));
    }

    #[test]
    fn refunds_are_a_restatement_when_partial_and_a_retraction_when_full() {
        let mut partial = won();
        partial["event_name"] = json!("refund");
        partial["value"] = json!(30);
        partial["refund"] = json!({"kind": "partial", "remaining_value": 70});
        let GoogleEvent::Ingest { event, .. } = build(
            &env(partial.clone()),
            Some(&mapping(Kind::Adjustment)),
            cx(Route::DataManager),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(event["transactionId"], "O-1");
        assert_eq!(event["conversionValue"], 70.0);
        let mut full = partial;
        full["refund"] = json!({"kind": "full"});
        let GoogleEvent::Retraction { adjustment, .. } = build(
            &env(full),
            Some(&mapping(Kind::Adjustment)),
            cx(Route::DataManager),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(adjustment["adjustmentType"], "RETRACTION");
        assert_eq!(adjustment["orderId"], "O-1");
        assert!(adjustment.get("restatementValue").is_none());
    }

    #[test]
    fn consent_identifiers_and_age_decide_before_any_request() {
        let m = mapping(Kind::ClickConversion);
        let mut denied = won();
        denied["consent"] = json!({"ad_user_data": "denied"});
        assert_eq!(
            build(&env(denied), Some(&m), cx(Route::DataManager)),
            Err(Skip::Consent)
        );
        let mut bare = won();
        bare.as_object_mut().unwrap().remove("contact");
        bare["contact"] = json!({"first_name": "Jane"});
        assert!(matches!(
            build(&env(bare), Some(&m), cx(Route::DataManager)),
            Err(Skip::Invalid("no_identifiers", _))
        ));
        let mut old = won();
        old["occurred_at"] = json!("2026-08-01T10:00:00Z");
        assert_eq!(
            build(&env(old), Some(&m), cx(Route::DataManager)),
            Err(Skip::Expired)
        );
        assert_eq!(
            build(&env(won()), None, cx(Route::DataManager)),
            Err(Skip::Unmapped)
        );
    }
}
