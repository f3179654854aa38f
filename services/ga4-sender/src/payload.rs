//! Canonical event → GA4 Measurement Protocol event (`contracts/ga4-mp.md` §3–§7), with
//! `user_data` hashed per `normalization.md` and only under ad consent.
//!
//! A Measurement Protocol request carries one `client_id`, one `user_id`, one `user_data` and
//! one `consent` for all its events, so each event is prepared as a [`Ga4Event`]: its request
//! head (those four) and the event itself. Events whose heads are equal share requests.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use leadpipe_events::hashing::ga4 as h;
use leadpipe_events::model::ConsentState;
use leadpipe_events::{Envelope, LeadEvent, sha256_hex};

use crate::cfg::{ConsentPolicy, Ga4Mapping, MAX_PARAM_VALUE_CHARS};

/// GA4 takes events up to 72 hours old (ga4-mp.md §5); keep a minute of margin for the time in
/// flight.
pub const MAX_AGE: chrono::Duration = chrono::Duration::minutes(72 * 60 - 1);

/// One event ready for a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Ga4Event {
    /// `client_id`, `user_id`, `user_data` and `consent`: equal heads share a request.
    pub head: Map<String, Value>,
    /// The head serialized (`{…}`): the grouping key, and the start of every request body.
    pub key: String,
    /// `{name, params, timestamp_micros}`.
    pub event: Value,
    /// The event serialized, spliced into request bodies as it is.
    pub json: String,
}

pub use leadpipe_consumer::Skip;

/// What decides the head and the parameters besides the event.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Whether an `unknown` ad consent lets `user_data` go.
    pub consent: ConsentPolicy,
    /// `engagement_time_msec` beside a known session.
    pub engagement_time_msec: u64,
}

/// Builds the GA4 event for `env`, or says why it is not sent.
pub fn build(
    env: &Envelope,
    mapping: Option<&Ga4Mapping>,
    opts: Options,
    now: DateTime<Utc>,
) -> Result<Ga4Event, Skip> {
    let ev = &env.event;
    let consent = ev.consent.clone().unwrap_or_default();
    // Analytics consent refused: GA4 is an analytics destination, nothing goes.
    if consent.analytics == ConsentState::Denied {
        return Err(Skip::Consent);
    }
    let mapping = mapping.ok_or(Skip::Unmapped)?;
    let occurred = ev
        .occurred_at_utc()
        .ok_or_else(|| Skip::invalid("occurred_at is not a timestamp".into()))?;
    if now - occurred > MAX_AGE {
        return Err(Skip::Expired);
    }
    // Only past events may be backdated; never send a time ahead of now.
    let micros = occurred.min(now).timestamp_micros();

    let ad_user_data = opts.consent.allows(consent.ad_user_data);
    let mut head = Map::new();
    head.insert("client_id".into(), json!(client_id(ev)));
    if let Some(user_id) = user_id(ev) {
        head.insert("user_id".into(), json!(user_id));
    }
    if ad_user_data && let Some(user_data) = user_data(ev) {
        head.insert("user_data".into(), Value::Object(user_data));
    }
    let signal = |granted: bool| if granted { "GRANTED" } else { "DENIED" };
    head.insert(
        "consent".into(),
        json!({
            "ad_user_data": signal(ad_user_data),
            "ad_personalization": signal(consent.ad_personalization == ConsentState::Granted),
        }),
    );

    let params = params(env, mapping, opts, &consent_free_session(ev))?;
    let event = json!({
        "name": mapping.event_name,
        "params": Value::Object(params),
        "timestamp_micros": micros,
    });
    Ok(Ga4Event {
        key: Value::Object(head.clone()).to_string(),
        head,
        json: event.to_string(),
        event,
    })
}

/// The session the event belongs to, when the chatbot passed one on.
fn consent_free_session(ev: &LeadEvent) -> Option<String> {
    ev.attribution
        .as_ref()
        .and_then(|a| a.ga_session_id.as_deref())
        .and_then(session_id)
}

/// `client_id`: from `attribution.ga_client_id` (a raw `_ga` cookie value `GA1.1.<id>.<ts>` is
/// reduced to `<id>.<ts>`), else derived from `lead_id` so that every lifecycle event of one
/// lead joins the same client, whichever source sends it.
pub fn client_id(ev: &LeadEvent) -> String {
    if let Some(raw) = ev
        .attribution
        .as_ref()
        .and_then(|a| a.ga_client_id.as_deref())
        .filter(|s| !s.trim().is_empty())
    {
        return reduce_ga_cookie(raw.trim());
    }
    derived_client_id(ev.lead_id.as_deref().unwrap_or_default())
}

/// `GA1.<depth>.<random>.<timestamp>` → `<random>.<timestamp>`; anything else as it is.
pub fn reduce_ga_cookie(raw: &str) -> String {
    let parts: Vec<&str> = raw.split('.').collect();
    let is_cookie = parts.len() == 4
        && parts[0].len() > 2
        && parts[0].starts_with("GA")
        && parts[0][2..].bytes().all(|b| b.is_ascii_digit())
        && parts[1].bytes().all(|b| b.is_ascii_digit());
    if is_cookie {
        format!("{}.{}", parts[2], parts[3])
    } else {
        raw.to_owned()
    }
}

/// A client id of GA's shape (`<u32>.<u32>`) derived from the lead id alone: stable for the
/// lead, and telling nothing about it.
pub fn derived_client_id(lead_id: &str) -> String {
    let digest = sha256_hex(&format!("leadpipe-ga4-client|{lead_id}"));
    let a = u32::from_str_radix(&digest[..8], 16).unwrap_or(0);
    let b = u32::from_str_radix(&digest[8..16], 16).unwrap_or(0);
    format!("{a}.{b}")
}

/// `session_id` from a number, or from the raw `_ga_<container>` cookie (`GS1.1.<sid>.…`,
/// `GS2.1.s<sid>$o1$…`); `None` for anything else.
pub fn session_id(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let digits =
        |s: &str| (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.to_owned());
    if let Some(id) = digits(raw) {
        return Some(id);
    }
    let parts: Vec<&str> = raw.split('.').collect();
    match parts.as_slice() {
        ["GS1", _, sid, ..] => digits(sid),
        ["GS2", _, rest, ..] => rest
            .strip_prefix('s')
            .and_then(|r| digits(r.split('$').next().unwrap_or_default())),
        _ => None,
    }
}

/// `user_id` (plain, X1): the account id, else the first stable external id.
fn user_id(ev: &LeadEvent) -> Option<String> {
    ev.user_id
        .clone()
        .or_else(|| {
            ev.external_ids
                .as_ref()
                .and_then(|ids| ids.first().cloned())
        })
        .filter(|s| !s.is_empty())
}

/// `user_data` per G4: hashed email and phone, one address with hashed names and plain
/// city/region/postal code/country; `None` when there is nothing to send.
fn user_data(ev: &LeadEvent) -> Option<Map<String, Value>> {
    let c = ev.contact.as_ref()?;
    let mut u = Map::new();
    if let Some(v) = c.email.as_deref().and_then(h::email) {
        u.insert("sha256_email_address".into(), json!([v]));
    }
    if let Some(v) = c.phone.as_deref().and_then(h::phone) {
        u.insert("sha256_phone_number".into(), json!([v]));
    }
    let mut address = Map::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            address.insert(k.to_owned(), json!(v));
        }
    };
    put(
        "sha256_first_name",
        c.first_name.as_deref().and_then(h::name),
    );
    put("sha256_last_name", c.last_name.as_deref().and_then(h::name));
    put("city", c.city.as_deref().and_then(h::place));
    put("region", c.region.as_deref().and_then(h::place));
    put(
        "postal_code",
        c.postal_code.as_deref().and_then(h::postal_code),
    );
    put("country", c.country.as_deref().and_then(h::country));
    if !address.is_empty() {
        u.insert("address".into(), json!([address]));
    }
    (!u.is_empty()).then_some(u)
}

/// The event's parameters: the ones ga4-sender sets, then the mapping's.
fn params(
    env: &Envelope,
    mapping: &Ga4Mapping,
    opts: Options,
    session: &Option<String>,
) -> Result<Map<String, Value>, Skip> {
    let ev = &env.event;
    let mut p = Map::new();
    p.insert("event_id".into(), json!(truncate(&env.event_id)));
    if let Some(value) = ev.value {
        let currency = ev
            .currency
            .as_deref()
            .ok_or_else(|| Skip::invalid("value without currency".into()))?;
        p.insert("value".into(), json!(value));
        p.insert("currency".into(), json!(currency));
    }
    if let Some(order) = ev.order_id.as_deref() {
        p.insert("transaction_id".into(), json!(truncate(order)));
    } else if matches!(mapping.event_name.as_str(), "purchase" | "refund") {
        return Err(Skip::invalid(format!(
            "{} needs transaction_id (order_id)",
            mapping.event_name
        )));
    }
    if let Some(sid) = session {
        p.insert("session_id".into(), json!(sid));
        p.insert(
            "engagement_time_msec".into(),
            json!(opts.engagement_time_msec),
        );
    }
    if !mapping.params.is_empty() {
        let doc = serde_json::to_value(ev).unwrap_or(Value::Null);
        for (name, path) in &mapping.params {
            let pointer = format!("/{}", path.replace('.', "/"));
            let value = match doc.pointer(&pointer) {
                Some(Value::String(s)) => json!(truncate(s)),
                Some(Value::Number(n)) => json!(n),
                Some(Value::Bool(b)) => json!(b.to_string()),
                _ => continue,
            };
            p.insert(name.clone(), value);
        }
    }
    Ok(p)
}

/// A string parameter cut to GA4's limit, on a character boundary: over-long values are
/// truncated, never rejected.
pub fn truncate(s: &str) -> String {
    s.chars().take(MAX_PARAM_VALUE_CHARS).collect()
}

/// The request body for `events` of one head: the serialized head with the serialized events
/// spliced in before its closing brace (no re-serialization per request).
pub fn body(events: &[&Ga4Event]) -> String {
    let Some(first) = events.first() else {
        return String::new();
    };
    let head = first.key.strip_suffix('}').unwrap_or(&first.key);
    let size = head.len() + events.iter().map(|e| e.json.len() + 1).sum::<usize>() + 16;
    let mut body = String::with_capacity(size);
    body.push_str(head);
    body.push_str(if head.len() > 1 {
        ",\"events\":["
    } else {
        "\"events\":["
    });
    for (n, e) in events.iter().enumerate() {
        if n > 0 {
            body.push(',');
        }
        body.push_str(&e.json);
    }
    body.push_str("]}");
    body
}

/// A body as DRY_RUN records it: hashed identifiers stay, the plain address parts and the
/// user id (personal data in clear) are replaced.
pub fn redacted(body: &Value) -> Value {
    let mut body = body.clone();
    if let Some(id) = body.get_mut("user_id") {
        *id = json!("<redacted>");
    }
    if let Some(addresses) = body
        .pointer_mut("/user_data/address")
        .and_then(Value::as_array_mut)
    {
        for a in addresses.iter_mut().filter_map(Value::as_object_mut) {
            for k in ["city", "region", "postal_code"] {
                if let Some(v) = a.get_mut(k) {
                    *v = json!("<redacted>");
                }
            }
        }
    }
    body
}

/// Every value a body carries (user and client ids, address parts, every parameter: mapped
/// `custom.*` values, page URLs, transaction ids…): what must never be quoted back from the
/// destination into logs, dead-letter headers or `leadpipe dlq list`. Longest first, so a
/// value inside another is not left half-replaced; values under 3 characters are left (they
/// would mangle the message, and say nothing about a person).
pub fn plain_values(body: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) if s.chars().count() >= 3 => out.push(s.clone()),
            Value::Number(n) if n.to_string().len() >= 3 => out.push(n.to_string()),
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            Value::Object(o) => o.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(body, &mut out);
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(lead_id: &str) -> LeadEvent {
        serde_json::from_value(json!({
            "source": "site-widget", "event_name": "lead", "lead_id": lead_id,
            "occurred_at": "2026-12-01T10:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn a_ga_cookie_is_reduced_to_its_client_id() {
        assert_eq!(
            reduce_ga_cookie("GA1.1.1234567890.1712345678"),
            "1234567890.1712345678"
        );
        assert_eq!(reduce_ga_cookie("GA1.2.99.1712345678"), "99.1712345678");
        assert_eq!(
            reduce_ga_cookie("1234567890.1712345678"),
            "1234567890.1712345678"
        );
        assert_eq!(reduce_ga_cookie("GA1.x.1.2"), "GA1.x.1.2");
        let mut ev = event("L-1");
        ev.attribution = Some(
            serde_json::from_value(json!({"ga_client_id": " GA1.1.555.1700000000 "})).unwrap(),
        );
        assert_eq!(client_id(&ev), "555.1700000000");
    }

    #[test]
    fn without_a_client_id_every_event_of_a_lead_gets_the_same_derived_one() {
        let lead = event("L-42");
        let mut won = event("L-42");
        won.event_name = Some("won".into());
        won.source = Some("crm".into());
        assert_eq!(client_id(&lead), client_id(&won));
        assert_ne!(client_id(&lead), client_id(&event("L-43")));
        let id = client_id(&lead);
        let (a, b) = id.split_once('.').unwrap();
        assert!(a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok(), "{id}");
    }

    #[test]
    fn session_ids_come_from_numbers_or_the_session_cookie() {
        assert_eq!(session_id("1712345678").as_deref(), Some("1712345678"));
        assert_eq!(
            session_id("GS1.1.1712345678.1.1.1712345999.0.0.0").as_deref(),
            Some("1712345678")
        );
        assert_eq!(
            session_id("GS2.1.s1712345678$o1$g1$t1712345999$j60$l0$h0").as_deref(),
            Some("1712345678")
        );
        assert_eq!(session_id("abc"), None);
    }

    #[test]
    fn a_body_is_the_head_with_its_events_spliced_in() {
        let opts = Options {
            consent: ConsentPolicy::Strict,
            engagement_time_msec: 100,
        };
        let mapping = Ga4Mapping {
            event_name: "generate_lead".into(),
            params: Default::default(),
        };
        let now: DateTime<Utc> = "2026-12-01T12:00:00Z".parse().unwrap();
        let env = |lead: &str| Envelope {
            schema_version: 1,
            event_id: format!("id-{lead}"),
            ingested_at: "2026-12-01T10:00:01Z".into(),
            event: event(lead),
        };
        let a = build(&env("L-1"), Some(&mapping), opts, now).unwrap();
        let b = build(&env("L-1"), Some(&mapping), opts, now).unwrap();
        let body: Value = serde_json::from_str(&body(&[&a, &b])).unwrap();
        assert_eq!(body["client_id"], a.head["client_id"]);
        assert_eq!(body["consent"]["ad_user_data"], "DENIED");
        assert_eq!(body["events"].as_array().unwrap().len(), 2);
        assert_eq!(body["events"][0], a.event);
    }

    #[test]
    fn long_values_are_truncated_on_a_character_boundary() {
        let long = "é".repeat(150);
        assert_eq!(truncate(&long).chars().count(), 100);
        assert_eq!(truncate("short"), "short");
    }

    #[test]
    fn redaction_keeps_hashes_and_hides_plain_address_parts() {
        let mut ev = event("L-1");
        ev.user_id = Some("U-1".into());
        ev.contact = Some(
            serde_json::from_value(json!({
                "email": "jane@example.com", "city": "New York", "postal_code": "10001",
                "country": "US"
            }))
            .unwrap(),
        );
        let u = user_data(&ev).unwrap();
        let body = json!({"user_id": "U-1", "user_data": u});
        let r = redacted(&body);
        assert_eq!(r["user_data"]["address"][0]["city"], "<redacted>");
        assert_eq!(r["user_data"]["address"][0]["country"], "US");
        assert_eq!(r["user_id"], "<redacted>");
        assert_eq!(
            r["user_data"]["sha256_email_address"][0],
            sha256_hex("jane@example.com")
        );
        let plain = plain_values(&body);
        for v in ["U-1", "new york", "10001", "US"] {
            assert_eq!(plain.contains(&v.to_owned()), v != "US", "{v}");
        }
    }

    #[test]
    fn every_value_of_a_body_is_redacted_from_a_validation_message() {
        let body = json!({
            "client_id": "1234567890.1700000000",
            "user_id": "CRM-000123",
            "events": [{"name": "generate_lead", "params": {
                "plan": "Acme Enterprise Gold",
                "page_location": "https://acme.example/pricing?email=jane@example.com",
                "value": 1499.5,
                "currency": "USD"
            }}]
        });
        let messages = [crate::client::ValidationMessage {
            field_path: "events.params.plan".into(),
            description: "Event param [plan] has value [Acme Enterprise Gold] for \
                [https://acme.example/pricing?email=jane@example.com], client \
                [1234567890.1700000000], user [CRM-000123], amount [1499.5]"
                .into(),
            validation_code: "VALUE_INVALID".into(),
        }];
        let f = crate::client::ValidationMessage::failure(&messages, &plain_values(&body));
        for secret in [
            "Acme Enterprise Gold",
            "acme.example",
            "jane@example.com",
            "1234567890.1700000000",
            "CRM-000123",
            "1499.5",
        ] {
            assert!(!f.message.contains(secret), "{secret} in {}", f.message);
        }
        assert!(
            f.message.contains("VALUE_INVALID at events.params.plan"),
            "{}",
            f.message
        );
        assert_eq!(f.code, "ga4_value_invalid");
    }
}
