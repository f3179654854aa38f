//! Canonical event → TikTok Events API 2.0 `data[]` event (contracts/tiktok-events.md §2–§6).
//!
//! Hashing differs from Meta's where it decides match quality: TikTok hashes the phone in
//! E.164 **with** its `+` (as Google does; Meta drops it), the email trimmed and lower-cased
//! with no gmail rules (as Meta; Google strips gmail dots), and `external_id` as the exact
//! string (X1). `ttclid`, `ttp`, `ip` and `user_agent` go in clear; TikTok must never see them
//! hashed.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use leadpipe_events::model::ConsentState;
use leadpipe_events::{Envelope, LeadEvent};

use crate::cfg::{ConsentPolicy, TikTokMapping};

/// TikTok dedupes a resend with the same `event` and `event_id` within 48 hours of the first
/// copy (§5); an event older than 47 hours could be counted twice, so it is `expired`.
pub const MAX_AGE: chrono::Duration = chrono::Duration::hours(47);

/// The currencies TikTok accepts (§2.5).
pub const CURRENCIES: [&str; 62] = [
    "AED", "ARS", "AUD", "BDT", "BHD", "BIF", "BOB", "BRL", "CAD", "CHF", "CLP", "CNY", "COP",
    "CRC", "CZK", "DKK", "DZD", "EGP", "EUR", "GBP", "GTQ", "HKD", "HNL", "HUF", "IDR", "ILS",
    "INR", "ISK", "JPY", "KES", "KHR", "KRW", "KWD", "KZT", "MAD", "MOP", "MXN", "MYR", "NGN",
    "NIO", "NOK", "NZD", "OMR", "PEN", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RUB", "SAR",
    "SEK", "SGD", "THB", "TRY", "TWD", "UAH", "USD", "VES", "VND", "ZAR",
];

/// Keys of `user` sent in clear; redacted from what DRY_RUN records.
pub const PLAIN_USER: [&str; 4] = ["ttclid", "ttp", "ip", "user_agent"];

pub use leadpipe_consumer::Skip;

/// TikTok's hashing of matching keys (§2.3, §7).
pub mod hash {
    use leadpipe_events::hashing::{google, meta};

    /// `user.email[]`: trimmed, lower-cased, dots and `+tags` kept (TD1, E1, E2): Meta's rule.
    pub fn email(normalized: &str) -> Option<String> {
        meta::email(normalized)
    }

    /// `user.phone[]`: E.164 with its `+` (TD2, P1–P3): Google's rule, not Meta's.
    pub fn phone(e164: &str) -> Option<String> {
        google::phone(e164)
    }

    /// `user.external_id[]`: the exact string, no case folding (TD3, X1).
    pub fn external_id(raw: &str) -> Option<String> {
        meta::external_id(raw)
    }
}

/// Builds the TikTok event for `env`, or says why it is not sent.
pub fn build(
    env: &Envelope,
    mapping: Option<&TikTokMapping>,
    consent: ConsentPolicy,
    now: DateTime<Utc>,
) -> Result<Value, Skip> {
    let ev = &env.event;
    // There is no consent field in the API: gating is ours (§6).
    if !consent.allows(ev.ad_user_data_consent()) {
        return Err(Skip::Consent);
    }
    let mapping = mapping.ok_or(Skip::Unmapped)?;
    let occurred = ev
        .occurred_at_utc()
        .ok_or_else(|| Skip::invalid("occurred_at is not a timestamp".into()))?;
    if now - occurred > MAX_AGE {
        return Err(Skip::Expired);
    }
    let user = user(ev);
    if user.is_empty() {
        return Err(Skip::invalid(
            "no customer information parameter to match on".into(),
        ));
    }
    let mut event = json!({
        "event": mapping.event,
        // Unix seconds, never ahead of now (P5).
        "event_time": occurred.min(now).timestamp(),
        // A string, always (P4): the deterministic id TikTok dedupes on with the pixel.
        "event_id": env.event_id,
        "user": Value::Object(user),
        "limited_data_use": limited_data_use(ev),
    });
    let page = page(ev);
    if !page.is_empty() {
        event["page"] = Value::Object(page);
    }
    let properties = properties(ev)?;
    if mapping.event == "Purchase"
        && !["value", "currency", "order_id"]
            .iter()
            .all(|k| properties.contains_key(*k))
    {
        return Err(Skip::invalid(
            "Purchase needs value, currency and order_id".into(),
        ));
    }
    if !properties.is_empty() {
        event["properties"] = Value::Object(properties);
    }
    Ok(event)
}

fn user(ev: &LeadEvent) -> Map<String, Value> {
    let mut u = Map::new();
    let mut list = |k: &str, v: Vec<String>| {
        if !v.is_empty() {
            u.insert(k.to_owned(), json!(v));
        }
    };
    if let Some(c) = &ev.contact {
        list(
            "email",
            c.email
                .as_deref()
                .and_then(hash::email)
                .into_iter()
                .collect(),
        );
        list(
            "phone",
            c.phone
                .as_deref()
                .and_then(hash::phone)
                .into_iter()
                .collect(),
        );
    }
    let mut external: Vec<String> = ev
        .external_ids
        .iter()
        .flatten()
        .filter_map(|id| hash::external_id(id.trim()))
        .collect();
    if let Some(uid) = ev
        .user_id
        .as_deref()
        .and_then(|u| hash::external_id(u.trim()))
        && !external.contains(&uid)
    {
        external.push(uid);
    }
    list("external_id", external);
    let mut put = |k: &str, v: Option<&String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            u.insert(k.to_owned(), json!(v));
        }
    };
    if let Some(a) = &ev.attribution {
        // Byte-exact, never hashed, never fabricated (§2.3).
        put("ttclid", a.ttclid.as_ref());
        put("ttp", a.ttp.as_ref());
    }
    if let Some(cl) = &ev.client {
        put("ip", cl.ip_address.as_ref());
        put("user_agent", cl.user_agent.as_ref());
    }
    u
}

/// `limited_data_use`: `true` when the person refused ad personalization (the opt-out of
/// "sale/sharing"), else `false` (§6).
fn limited_data_use(ev: &LeadEvent) -> bool {
    ev.consent
        .as_ref()
        .is_some_and(|c| c.ad_personalization == ConsentState::Denied)
}

/// `page.url` and `page.referrer` as scheme, host and path only: a query string may carry
/// PII, and the click id travels in `user.ttclid` (§6).
fn page(ev: &LeadEvent) -> Map<String, Value> {
    let mut p = Map::new();
    let url = ev
        .attribution
        .as_ref()
        .and_then(|a| a.landing_page_url.as_deref())
        .or_else(|| {
            ev.context
                .as_ref()
                .and_then(|c| c.entry_page_url.as_deref())
        });
    if let Some(url) = url.and_then(without_query) {
        p.insert("url".into(), json!(url));
    }
    if let Some(r) = ev
        .attribution
        .as_ref()
        .and_then(|a| a.referrer_url.as_deref())
        .and_then(without_query)
    {
        p.insert("referrer".into(), json!(r));
    }
    p
}

/// `url` cut before its query or fragment; `None` unless it is `http(s)://`.
pub fn without_query(url: &str) -> Option<String> {
    let url = url.trim();
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return None;
    }
    Some(url.split(['?', '#']).next().unwrap_or(url).to_owned())
}

fn properties(ev: &LeadEvent) -> Result<Map<String, Value>, Skip> {
    let mut p = Map::new();
    if let Some(v) = ev.value {
        if !(v.is_finite() && v >= 0.0) {
            return Err(Skip::invalid("value must be a number ≥ 0".into()));
        }
        p.insert("value".into(), json!(v));
    }
    if let Some(cur) = &ev.currency {
        let cur = cur.to_ascii_uppercase();
        if !CURRENCIES.contains(&cur.as_str()) {
            return Err(Skip::invalid(format!(
                "currency {cur} is not one TikTok accepts"
            )));
        }
        p.insert("currency".into(), json!(cur));
    }
    if let Some(o) = &ev.order_id {
        p.insert("order_id".into(), json!(o));
    }
    Ok(p)
}

/// The event as DRY_RUN records it: hashed identifiers only, anything sent in clear redacted.
pub fn redacted(event: &Value) -> Value {
    let mut e = event.clone();
    if let Some(u) = e.get_mut("user").and_then(Value::as_object_mut) {
        for k in PLAIN_USER {
            if u.contains_key(k) {
                u.insert(k.into(), json!("[redacted]"));
            }
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use leadpipe_events::identifiers::{normalize_email, normalize_phone};

    use super::*;

    /// Vectors of contracts/tiktok-events.md §7, through ingest's normalizer and TikTok's rules.
    #[test]
    fn the_contracts_normalization_vectors_hash_as_tiktok_expects() {
        let email = |raw: &str| hash::email(&normalize_email(raw).unwrap()).unwrap();
        let phone = |raw: &str, region: &str| {
            let e164 = normalize_phone(raw, Some(region))
                .unwrap_or_else(|| panic!("{raw} does not normalize"));
            hash::phone(&e164)
        };
        // TikTok's own doc examples.
        assert_eq!(
            email(" ALICE_abc@gmail.com "),
            "848a771458438fc2ec420560d769fb9b9b86851ee338ec56517baabd79d3bb4f"
        );
        // TD2's raw form `(+1)2133734253` is TikTok's formatting example; libphonenumber does
        // not take its brackets, so the vector is checked from its normalized string.
        assert_eq!(
            hash::phone("+12133734253").unwrap(),
            "9f7ec22d72092cd3c0b58726ed9c2d91b92e51a3f29837508fb2948bb22dd2fd"
        );
        assert_eq!(
            hash::external_id("user_123").unwrap(),
            "80fba0ae1c48e3978e43e4efc365e14e12ea0c830ba8ba5b9a2dafc7e3f2ab8b"
        );
        // E1 (trimmed, not E1-WRONG), E2 (gmail kept, not E2-WRONG).
        assert_eq!(
            email("  John.Doe@Example.COM  "),
            "836f82db99121b3481011f16b49dfa5fbc714a0d1b1b9f784a1ebbbf5b39577f"
        );
        assert_eq!(
            email("Jane.Doe+promo@gmail.com"),
            "5f0d1df1fc49e30424381b57b1d4c73e067772a4267dde043a19b026935602c8"
        );
        // P1 (not the Meta form P1-WRONG, not P1-WRONG2), P2, P3, C1.
        let p1 = phone("(650) 555-1234", "US").unwrap();
        assert_eq!(
            p1,
            "a2996076d3ad4af5dc818b908b3d8e354f26ededf7df0e0aa6ac354143805ee0"
        );
        assert_ne!(
            p1,
            "6069d14bf122fdfd931dc7beb58e5dfbba395b1faf05bdcd42d12358d63d8599"
        );
        assert_eq!(
            phone("020 7946 0958", "GB").unwrap(),
            "f0bf0228144d9fe2bdf1da2d8ca698f17bf1410ee688b075c27062e47b6f0b6d"
        );
        assert_eq!(
            phone("+39 06 1234 5678", "IT").unwrap(),
            "37b702607839d6dc5fc81d95b52e550e336413bf7ae2e04cafeca79f066ea44b"
        );
        // C1: libphonenumber refuses the all-zero subscriber number, so from its E.164 form.
        assert_eq!(
            hash::phone("+8613800000000").unwrap(),
            "cc0058bc7784ae0358acf0c091025c7a69d400e148d8688badfa029c9f8c686e"
        );
        // X1: the exact string, not X1-ALT.
        assert_eq!(
            hash::external_id("CRM-000123").unwrap(),
            "c4b4d9756afd66a87d001d43868ac50831a88c9ba46845fd10edb7debd865de0"
        );
        // Never the digest of "".
        assert_eq!(hash::external_id(""), None);
        assert_eq!(hash::phone(""), None);
    }

    #[test]
    fn the_phone_digest_is_googles_and_not_metas() {
        let e164 = normalize_phone("(650) 555-1234", Some("US")).unwrap();
        assert_eq!(
            hash::phone(&e164),
            leadpipe_events::hashing::google::phone(&e164)
        );
        assert_ne!(
            hash::phone(&e164),
            leadpipe_events::hashing::meta::phone(&e164)
        );
    }

    #[test]
    fn urls_lose_their_query_and_fragment() {
        assert_eq!(
            without_query("https://x.example/p/a?email=a@b.c#top").as_deref(),
            Some("https://x.example/p/a")
        );
        assert_eq!(without_query("javascript:alert(1)"), None);
    }
}
