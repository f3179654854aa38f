//! Canonical event → Meta server event (contracts/meta-capi.md §3–§6), hashed per
//! `normalization.md`.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use leadpipe_events::hashing::meta as h;
use leadpipe_events::{Envelope, LeadEvent};

use crate::cfg::{ConsentPolicy, MetaMapping};

/// Meta refuses events older than 7 days; keep a minute of margin for the time in flight.
pub const MAX_AGE: chrono::Duration = chrono::Duration::minutes(7 * 24 * 60 - 1);

/// Keys of `user_data` sent in clear; redacted from what DRY_RUN records.
pub const PLAIN_USER_DATA: [&str; 4] = ["client_ip_address", "client_user_agent", "fbc", "fbp"];

pub use leadpipe_consumer::Skip;

/// Builds the Meta event for `env`, or says why it is not sent.
pub fn build(
    env: &Envelope,
    mapping: Option<&MetaMapping>,
    consent: ConsentPolicy,
    now: DateTime<Utc>,
) -> Result<Value, Skip> {
    let ev = &env.event;
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
    // Meta documents no future window; never send a time ahead of now.
    let event_time = occurred.min(now).timestamp();

    let user_data = user_data(ev, occurred);
    if user_data.is_empty() {
        return Err(Skip::invalid(
            "no customer information parameter to match on".into(),
        ));
    }
    let source_url = ev
        .attribution
        .as_ref()
        .and_then(|a| a.landing_page_url.clone())
        .or_else(|| ev.context.as_ref().and_then(|c| c.entry_page_url.clone()));
    if mapping.action_source == "website"
        && (source_url.is_none() || !user_data.contains_key("client_user_agent"))
    {
        return Err(Skip::invalid(
            "action_source website needs event_source_url and client_user_agent".into(),
        ));
    }
    let mut event = json!({
        "event_name": mapping.event_name,
        "event_time": event_time,
        "event_id": env.event_id,
        "action_source": mapping.action_source,
        "user_data": Value::Object(user_data),
    });
    if let Some(url) = source_url {
        event["event_source_url"] = json!(url);
    }
    if let Some(r) = ev.attribution.as_ref().and_then(|a| a.referrer_url.clone()) {
        event["referrer_url"] = json!(r);
    }
    let custom = custom_data(ev, mapping);
    if mapping.event_name == "Purchase"
        && !(custom.contains_key("value") && custom.contains_key("currency"))
    {
        return Err(Skip::invalid("Purchase needs value and currency".into()));
    }
    if !custom.is_empty() {
        event["custom_data"] = Value::Object(custom);
    }
    Ok(event)
}

fn user_data(ev: &LeadEvent, occurred: DateTime<Utc>) -> Map<String, Value> {
    let mut u = Map::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            u.insert(k.to_owned(), Value::String(v));
        }
    };
    if let Some(c) = &ev.contact {
        let country = c.country.as_deref();
        put("em", c.email.as_deref().and_then(h::email));
        put("ph", c.phone.as_deref().and_then(h::phone));
        put("fn", c.first_name.as_deref().and_then(h::name));
        put("ln", c.last_name.as_deref().and_then(h::name));
        put("ct", c.city.as_deref().and_then(h::city));
        put("st", c.region.as_deref().and_then(|r| h::state(r, country)));
        put(
            "zp",
            c.postal_code.as_deref().and_then(|z| h::zip(z, country)),
        );
        put("country", country.and_then(h::country));
        put("db", c.date_of_birth.as_deref().and_then(h::date_of_birth));
        put("ge", c.gender.as_deref().and_then(h::gender));
    }
    if let Some(cl) = &ev.client {
        put("client_ip_address", cl.ip_address.clone());
        put("client_user_agent", cl.user_agent.clone());
    }
    if let Some(a) = &ev.attribution {
        put("fbp", a.fbp.clone());
        // Built server-side from the click id when the cookie is absent: subdomain index 1,
        // creation time = when we first saw the click (the event), fbclid unchanged (§6).
        let fbc = a.fbc.clone().or_else(|| {
            a.fbclid
                .as_ref()
                .map(|id| format!("fb.1.{}.{id}", occurred.timestamp_millis()))
        });
        put("fbc", fbc);
    }
    let mut external: Vec<Value> = ev
        .external_ids
        .iter()
        .flatten()
        .filter_map(|id| h::external_id(id))
        .map(Value::String)
        .collect();
    if let Some(uid) = ev.user_id.as_deref().and_then(h::external_id)
        && !external.contains(&Value::String(uid.clone()))
    {
        external.push(Value::String(uid));
    }
    if !external.is_empty() {
        u.insert("external_id".into(), Value::Array(external));
    }
    u
}

fn custom_data(ev: &LeadEvent, mapping: &MetaMapping) -> Map<String, Value> {
    let mut c = Map::new();
    if let Some(v) = ev.value {
        c.insert("value".into(), json!(v));
    }
    if let Some(cur) = &ev.currency {
        c.insert("currency".into(), json!(cur));
    }
    if let Some(o) = &ev.order_id {
        c.insert("order_id".into(), json!(o));
    }
    if let Some(n) = &mapping.content_name {
        c.insert("content_name".into(), json!(n));
    }
    if let Some(n) = &mapping.content_category {
        c.insert("content_category".into(), json!(n));
    }
    if let Some(a) = &ev.attribution {
        if let Some(s) = &a.utm_source {
            c.insert("lead_source".into(), json!(s));
        }
        for (k, v) in [
            ("utm_source", &a.utm_source),
            ("utm_medium", &a.utm_medium),
            ("utm_campaign", &a.utm_campaign),
        ] {
            if let Some(v) = v {
                c.insert(k.into(), json!(v));
            }
        }
    }
    c
}

/// The event as DRY_RUN records it: hashed identifiers only, anything sent in clear redacted.
pub fn redacted(event: &Value) -> Value {
    let mut e = event.clone();
    if let Some(u) = e.get_mut("user_data").and_then(Value::as_object_mut) {
        for k in PLAIN_USER_DATA {
            if u.contains_key(k) {
                u.insert(k.into(), json!("[redacted]"));
            }
        }
    }
    e
}
