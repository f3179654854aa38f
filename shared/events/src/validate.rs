//! Validation and normalization of a posted event, collecting every field error in one pass.
//!
//! Three passes over one body, each adding to the same error list:
//! 1. **structure** — keys the schema (generated from [`LeadEvent`]) does not know are
//!    `unknown_field` errors and are set aside;
//! 2. **types** — the rest is deserialized into [`LeadEvent`]; a value of the wrong type is an
//!    `invalid_type` error at its path, removed, and deserialization resumes;
//! 3. **rules** — required fields, formats and per-event rules, normalizing as it goes.
//!
//! The result is the normalized event and its `event_id`, or the full list of errors.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::OnceLock;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{FieldError, codes};
use crate::event_id::derive_event_id;
use crate::identifiers::{
    clean, is_http_url, normalize_country, normalize_currency, normalize_date_of_birth,
    normalize_email, normalize_gender, normalize_phone,
};
use crate::model::{
    BUILTIN_EVENT_NAMES, LeadEvent, MAX_EXTERNAL_IDS, MAX_FIELD_CHARS, MAX_MAP_KEYS,
    MAX_TRANSCRIPT_BYTES, MAX_URL_CHARS, MAX_USER_AGENT_CHARS, RefundKind, Scalar,
};

/// How far in the future `occurred_at` may lie (clock skew between chatbot and ingest).
pub const MAX_FUTURE_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// What validation needs to know beyond the body itself.
#[derive(Debug, Clone)]
pub struct ValidationContext<'a> {
    /// The authenticated source; `source` must equal it.
    pub source_id: &'a str,
    /// The source's phone region, used when the lead has no country.
    pub default_region: Option<&'a str>,
    /// Custom event names declared in the mapping config.
    pub custom_events: &'a HashSet<String>,
    /// The current time (a parameter so tests are deterministic).
    pub now: DateTime<Utc>,
}

/// A valid, normalized event and its id.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedEvent {
    /// The client's `event_id`, or the derived one.
    pub event_id: String,
    /// The normalized event; its `event_id` field is set to the same id.
    pub event: LeadEvent,
}

/// Why a raw body is not a valid event.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyError {
    /// The bytes are not JSON (the parser's message, which names line and column).
    InvalidJson(String),
    /// The JSON is not a valid event: every field error.
    Invalid(Vec<FieldError>),
}

/// Validates and normalizes a raw JSON body. A well-formed event is deserialized straight from
/// the bytes; anything else goes through [`validate_event`] to collect every error.
pub fn validate_body(
    bytes: &[u8],
    ctx: &ValidationContext<'_>,
) -> Result<ValidatedEvent, BodyError> {
    if let Ok(event) = serde_json::from_slice::<LeadEvent>(bytes) {
        let mut errors = Vec::new();
        let (event, event_id) = normalize(event, ctx, &mut errors);
        return if errors.is_empty() {
            Ok(ValidatedEvent { event_id, event })
        } else {
            Err(BodyError::Invalid(errors))
        };
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| BodyError::InvalidJson(e.to_string()))?;
    validate_event(&value, ctx).map_err(BodyError::Invalid)
}

/// Validates and normalizes one JSON value as a canonical event.
pub fn validate_event(
    body: &Value,
    ctx: &ValidationContext<'_>,
) -> Result<ValidatedEvent, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Value::Object(_) = body else {
        return Err(vec![FieldError::new(
            "",
            codes::INVALID_TYPE,
            "expected a JSON object",
        )]);
    };
    // Fast path: a well-formed body deserializes in one go (unknown fields are denied by the
    // types). Only a body that fails takes the slower passes that find every error.
    let event = match LeadEvent::deserialize(body) {
        Ok(event) => event,
        Err(_) => {
            let mut body = body.clone();
            strip_unknown_fields(&mut body, schema(), "", &mut errors);
            match deserialize_collecting(body, &mut errors) {
                Some(event) => event,
                None => return Err(errors),
            }
        }
    };
    let (event, event_id) = normalize(event, ctx, &mut errors);
    if errors.is_empty() {
        Ok(ValidatedEvent { event_id, event })
    } else {
        Err(errors)
    }
}

/// The event schema as a JSON value, generated once from [`LeadEvent`].
pub fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(crate::model::json_schema)
}

/// Pass 1: removes (and reports) object keys the schema does not declare.
fn strip_unknown_fields(value: &mut Value, node: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(node) = resolve(node, value) else {
        return;
    };
    match value {
        Value::Object(map) => {
            let Some(props) = node.get("properties").and_then(Value::as_object) else {
                return;
            };
            let closed = node.get("additionalProperties") == Some(&Value::Bool(false));
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child_path = join(path, &key);
                match props.get(&key) {
                    Some(child) => {
                        if let Some(v) = map.get_mut(&key) {
                            strip_unknown_fields(v, child, &child_path, errors);
                        }
                    }
                    None if closed => {
                        errors.push(FieldError::new(
                            child_path,
                            codes::UNKNOWN_FIELD,
                            "is not a field of the canonical event",
                        ));
                        map.remove(&key);
                    }
                    None => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_node) = node.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    strip_unknown_fields(item, item_node, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

/// Follows `$ref` and picks the `anyOf`/`oneOf` branch that describes `value`'s JSON type.
fn resolve<'s>(node: &'s Value, value: &Value) -> Option<&'s Value> {
    if let Some(reference) = node.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next()?;
        let target = schema().get("$defs")?.get(name)?;
        return resolve(target, value);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = node.get(key).and_then(Value::as_array) {
            let wanted = if value.is_object() {
                "properties"
            } else {
                "items"
            };
            return branches
                .iter()
                .filter_map(|b| resolve(b, value))
                .find(|b| b.get(wanted).is_some());
        }
    }
    Some(node)
}

/// Pass 2: deserializes into [`LeadEvent`], turning each type error into a field error and
/// removing the offending value until the rest deserializes.
fn deserialize_collecting(mut body: Value, errors: &mut Vec<FieldError>) -> Option<LeadEvent> {
    // Each round removes one value, so the loop is bounded by the number of values.
    for _ in 0..256 {
        match serde_path_to_error::deserialize::<_, LeadEvent>(&body) {
            Ok(event) => return Some(event),
            Err(err) => {
                let segments: Vec<Segment> = err
                    .path()
                    .iter()
                    .map(|s| match s {
                        serde_path_to_error::Segment::Seq { index } => Segment::Index(*index),
                        serde_path_to_error::Segment::Map { key } => Segment::Key(key.clone()),
                        serde_path_to_error::Segment::Enum { variant } => {
                            Segment::Key(variant.clone())
                        }
                        serde_path_to_error::Segment::Unknown => Segment::Key(String::new()),
                    })
                    .collect();
                let field = render_path(&segments);
                errors.push(FieldError::new(
                    field,
                    codes::INVALID_TYPE,
                    describe_serde_error(&err.inner().to_string()),
                ));
                if segments.is_empty() || !remove_at(&mut body, &segments) {
                    return None;
                }
            }
        }
    }
    None
}

enum Segment {
    Key(String),
    Index(usize),
}

fn render_path(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn remove_at(value: &mut Value, segments: &[Segment]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut cur = value;
    for s in parents {
        let next = match (s, cur) {
            (Segment::Key(k), Value::Object(m)) => m.get_mut(k),
            (Segment::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match (last, cur) {
        (Segment::Key(k), Value::Object(m)) => m.remove(k).is_some(),
        (Segment::Index(i), Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

/// Rewrites serde's message so it states the expectation without echoing the value.
fn describe_serde_error(msg: &str) -> String {
    if let Some(idx) = msg.find(", expected ") {
        return format!("expected {}", &msg[idx + ", expected ".len()..]);
    }
    if msg.contains("did not match any variant") {
        return "expected a string, number, boolean or null".to_owned();
    }
    "has the wrong type".to_owned()
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Collects errors for one event while normalizing its fields.
struct Checker<'e> {
    errors: &'e mut Vec<FieldError>,
}

impl Checker<'_> {
    fn push(&mut self, field: &str, code: &'static str, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, code, message));
    }

    /// Trims, drops empty, and bounds a string field to `max` characters.
    fn text(&mut self, field: &str, value: &mut Option<String>, max: usize) {
        if let Some(v) = value.take() {
            let v = clean(&v);
            if v.chars().count() > max {
                self.push(
                    field,
                    codes::TOO_LONG,
                    format!("is longer than {max} characters"),
                );
            } else if !v.is_empty() {
                *value = Some(v);
            }
        }
    }

    /// Like [`Checker::text`], and reports `required` when nothing is left.
    fn required_text(&mut self, field: &str, value: &mut Option<String>, max: usize) {
        let before = self.errors.len();
        self.text(field, value, max);
        if value.is_none() && self.errors.len() == before {
            self.push(field, codes::REQUIRED, "is required");
        }
    }

    /// Trims an http(s) URL and checks its scheme.
    fn url(&mut self, field: &str, value: &mut Option<String>) {
        self.text(field, value, MAX_URL_CHARS);
        if value.as_deref().is_some_and(|v| !is_http_url(v)) {
            self.push(field, codes::INVALID_URL, "must be an http or https URL");
            *value = None;
        }
    }

    /// Applies `f` to a trimmed, non-empty value; reports `code` when it returns `None`.
    fn with(
        &mut self,
        field: &str,
        value: &mut Option<String>,
        max: usize,
        code: &'static str,
        message: &str,
        f: impl FnOnce(&str) -> Option<String>,
    ) {
        self.text(field, value, max);
        if let Some(v) = value.take() {
            match f(&v) {
                Some(n) => *value = Some(n),
                None => self.push(field, code, message),
            }
        }
    }

    fn timestamp(&mut self, field: &str, value: &mut Option<String>) -> Option<DateTime<Utc>> {
        self.text(field, value, 64);
        let raw = value.take()?;
        match DateTime::parse_from_rfc3339(&raw) {
            Ok(t) => {
                let utc = t.with_timezone(&Utc);
                *value = Some(utc.to_rfc3339_opts(SecondsFormat::AutoSi, true));
                Some(utc)
            }
            Err(_) => {
                self.push(
                    field,
                    codes::INVALID_TIMESTAMP,
                    "must be an RFC 3339 timestamp with an offset, e.g. 2026-11-21T10:00:00+01:00",
                );
                None
            }
        }
    }

    fn amount(&mut self, field: &str, value: Option<f64>) {
        if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
            self.push(field, codes::INVALID_VALUE, "must be a number ≥ 0");
        }
    }

    fn scalars(&mut self, field: &str, map: &mut Option<BTreeMap<String, Scalar>>) {
        let Some(m) = map.as_mut() else { return };
        if m.len() > MAX_MAP_KEYS {
            self.push(
                field,
                codes::TOO_MANY,
                format!("has more than {MAX_MAP_KEYS} keys"),
            );
            return;
        }
        for (key, v) in m.iter_mut() {
            let path = join(field, key);
            if key.chars().count() > 128 {
                self.push(
                    field,
                    codes::TOO_LONG,
                    "has a key longer than 128 characters",
                );
            }
            if let Scalar::String(s) = v {
                let trimmed = clean(s);
                if trimmed.chars().count() > MAX_FIELD_CHARS {
                    self.push(
                        &path,
                        codes::TOO_LONG,
                        format!("is longer than {MAX_FIELD_CHARS} characters"),
                    );
                }
                *s = trimmed;
            }
        }
        if m.is_empty() {
            *map = None;
        }
    }
}

/// Pass 3: field rules and normalization. Returns the normalized event and its id.
fn normalize(
    mut ev: LeadEvent,
    ctx: &ValidationContext<'_>,
    errors: &mut Vec<FieldError>,
) -> (LeadEvent, String) {
    let mut c = Checker { errors };

    c.required_text("source", &mut ev.source, 128);
    if ev.source.as_deref().is_some_and(|s| s != ctx.source_id) {
        c.push(
            "source",
            codes::SOURCE_MISMATCH,
            "must equal the authenticated source (X-Leadpipe-Source)",
        );
    }

    c.required_text("event_name", &mut ev.event_name, 40);
    if let Some(name) = ev.event_name.as_deref()
        && !BUILTIN_EVENT_NAMES.contains(&name)
        && !(is_custom_name(name) && ctx.custom_events.contains(name))
    {
        c.push(
            "event_name",
            codes::UNKNOWN_EVENT_NAME,
            format!(
                "must be one of {} or a custom name declared in the mapping config",
                BUILTIN_EVENT_NAMES.join(", ")
            ),
        );
    }

    if let Some(id) = ev.event_id.as_mut() {
        *id = id.trim().to_owned();
        if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            c.push(
                "event_id",
                codes::INVALID_EVENT_ID,
                "must be 1–128 printable ASCII characters",
            );
        }
    }

    let occurred = c.timestamp("occurred_at", &mut ev.occurred_at);
    if ev.occurred_at.is_none() && !c.errors.iter().any(|e| e.field == "occurred_at") {
        c.push("occurred_at", codes::REQUIRED, "is required");
    }
    if occurred.is_some_and(|t| t > ctx.now + MAX_FUTURE_SKEW) {
        c.push(
            "occurred_at",
            codes::IN_FUTURE,
            "is more than 5 minutes in the future",
        );
    }

    c.required_text("lead_id", &mut ev.lead_id, MAX_FIELD_CHARS);
    c.text("user_id", &mut ev.user_id, MAX_FIELD_CHARS);
    c.text("order_id", &mut ev.order_id, MAX_FIELD_CHARS);
    c.amount("value", ev.value);
    c.with(
        "currency",
        &mut ev.currency,
        8,
        codes::INVALID_CURRENCY,
        "must be an ISO 4217 code such as USD",
        normalize_currency,
    );

    let name = ev.event_name.clone().unwrap_or_default();
    let monetary = name == "won" || name == "refund";
    if monetary {
        for (field, present) in [
            ("order_id", ev.order_id.is_some()),
            ("value", ev.value.is_some()),
            ("currency", ev.currency.is_some()),
        ] {
            if !present && !c.errors.iter().any(|e| e.field == field) {
                c.push(field, codes::REQUIRED, format!("is required for {name}"));
            }
        }
    }

    match (&ev.refund, name == "refund") {
        (Some(_), false) => {
            c.push(
                "refund",
                codes::NOT_ALLOWED,
                "only applies to refund events",
            );
        }
        (None, true) => c.push("refund", codes::REQUIRED, "is required for refund"),
        (Some(r), true) => {
            c.amount("refund.remaining_value", r.remaining_value);
            match r.kind {
                None => c.push("refund.kind", codes::REQUIRED, "is required"),
                Some(RefundKind::Partial) if r.remaining_value.is_none() => c.push(
                    "refund.remaining_value",
                    codes::REQUIRED,
                    "is required for a partial refund",
                ),
                // `value` is the amount refunded and `remaining_value` what the order is worth
                // afterwards: either may be the larger (SPEC §2), so they are not compared.
                Some(RefundKind::Partial | RefundKind::Full) => {}
            }
        }
        (None, false) => {}
    }

    let mut had_identifier_input = false;
    if let Some(contact) = ev.contact.as_mut() {
        had_identifier_input = contact
            .email
            .as_deref()
            .is_some_and(|e| !e.trim().is_empty())
            || contact
                .phone
                .as_deref()
                .is_some_and(|p| !p.trim().is_empty());
        c.with(
            "contact.country",
            &mut contact.country,
            64,
            codes::INVALID_COUNTRY,
            "must be an ISO 3166-1 code or an English country name",
            normalize_country,
        );
        c.with(
            "contact.email",
            &mut contact.email,
            crate::identifiers::MAX_EMAIL_CHARS,
            codes::INVALID_EMAIL,
            "is not a valid email address",
            normalize_email,
        );
        let region = contact
            .country
            .clone()
            .or(ctx.default_region.map(str::to_owned));
        c.with(
            "contact.phone",
            &mut contact.phone,
            crate::model::MAX_PHONE_INPUT_CHARS,
            codes::INVALID_PHONE,
            if region.is_some() {
                "is not a valid phone number for its country"
            } else {
                "is not a valid international phone number (no country to complete it)"
            },
            |p| normalize_phone(p, region.as_deref()),
        );
        let today = ctx.now.date_naive();
        c.with(
            "contact.date_of_birth",
            &mut contact.date_of_birth,
            10,
            codes::INVALID_DATE,
            "must be a YYYY-MM-DD date between 1900 and today",
            |d| normalize_date_of_birth(d, today),
        );
        c.text("contact.gender", &mut contact.gender, 32);
        contact.gender = contact.gender.as_deref().and_then(normalize_gender);
        for (field, value) in [
            ("contact.first_name", &mut contact.first_name),
            ("contact.last_name", &mut contact.last_name),
            ("contact.city", &mut contact.city),
            ("contact.region", &mut contact.region),
            ("contact.postal_code", &mut contact.postal_code),
            ("contact.company", &mut contact.company),
            ("contact.job_title", &mut contact.job_title),
        ] {
            c.text(field, value, MAX_FIELD_CHARS);
        }
        if *contact == Default::default() {
            ev.contact = None;
        }
    }
    let has_identifier = ev
        .contact
        .as_ref()
        .is_some_and(|ct| ct.email.is_some() || ct.phone.is_some());
    if name == "lead" && !has_identifier && !had_identifier_input {
        c.push(
            "contact",
            codes::MISSING_IDENTIFIER,
            "a lead needs contact.email or contact.phone",
        );
    }

    if let Some(a) = ev.attribution.as_mut() {
        for (field, value) in [
            ("attribution.fbp", &mut a.fbp),
            ("attribution.fbc", &mut a.fbc),
            ("attribution.fbclid", &mut a.fbclid),
            ("attribution.gclid", &mut a.gclid),
            ("attribution.gbraid", &mut a.gbraid),
            ("attribution.wbraid", &mut a.wbraid),
            ("attribution.ttclid", &mut a.ttclid),
            ("attribution.ttp", &mut a.ttp),
            ("attribution.ga_client_id", &mut a.ga_client_id),
            ("attribution.ga_session_id", &mut a.ga_session_id),
            ("attribution.utm_source", &mut a.utm_source),
            ("attribution.utm_medium", &mut a.utm_medium),
            ("attribution.utm_campaign", &mut a.utm_campaign),
            ("attribution.utm_content", &mut a.utm_content),
            ("attribution.utm_term", &mut a.utm_term),
            ("attribution.ad_id", &mut a.ad_id),
            ("attribution.adset_id", &mut a.adset_id),
            ("attribution.campaign_id", &mut a.campaign_id),
        ] {
            c.text(field, value, MAX_FIELD_CHARS);
        }
        c.url("attribution.landing_page_url", &mut a.landing_page_url);
        c.url("attribution.referrer_url", &mut a.referrer_url);
        if *a == Default::default() {
            ev.attribution = None;
        }
    }

    if let Some(cl) = ev.client.as_mut() {
        c.with(
            "client.ip_address",
            &mut cl.ip_address,
            64,
            codes::INVALID_IP_ADDRESS,
            "must be an IPv4 or IPv6 address",
            |ip| ip.parse::<IpAddr>().ok().map(|ip| ip.to_string()),
        );
        c.text(
            "client.user_agent",
            &mut cl.user_agent,
            MAX_USER_AGENT_CHARS,
        );
        if *cl == Default::default() {
            ev.client = None;
        }
    }

    if let Some(consent) = ev.consent.as_mut() {
        c.text("consent.basis", &mut consent.basis, MAX_FIELD_CHARS);
        c.timestamp("consent.captured_at", &mut consent.captured_at);
    }

    if let Some(ids) = ev.external_ids.take() {
        if ids.len() > MAX_EXTERNAL_IDS {
            c.push(
                "external_ids",
                codes::TOO_MANY,
                format!("has more than {MAX_EXTERNAL_IDS} entries"),
            );
        }
        let mut seen = HashSet::new();
        let mut kept = Vec::new();
        for (i, id) in ids.into_iter().enumerate() {
            let mut v = Some(id);
            c.text(&format!("external_ids[{i}]"), &mut v, MAX_FIELD_CHARS);
            if let Some(v) = v
                && seen.insert(v.clone())
            {
                kept.push(v);
            }
        }
        if !kept.is_empty() {
            ev.external_ids = Some(kept);
        }
    }

    if let Some(cx) = ev.context.as_mut() {
        if let Some(t) = cx.transcript.as_mut() {
            if t.len() > MAX_TRANSCRIPT_BYTES {
                c.push(
                    "context.transcript",
                    codes::TOO_LONG,
                    "is longer than 64 KiB",
                );
            }
            let trimmed = t.trim();
            if trimmed.len() != t.len() {
                *t = trimmed.to_owned();
            }
            if t.is_empty() {
                cx.transcript = None;
            }
        }
        c.url("context.entry_page_url", &mut cx.entry_page_url);
        c.text("context.chatbot", &mut cx.chatbot, MAX_FIELD_CHARS);
        c.text(
            "context.lifecycle_stage",
            &mut cx.lifecycle_stage,
            MAX_FIELD_CHARS,
        );
        c.scalars("context.qualification", &mut cx.qualification);
        if *cx == Default::default() {
            ev.context = None;
        }
    }
    c.scalars("custom", &mut ev.custom);

    let event_id = match &ev.event_id {
        Some(id) => id.clone(),
        None => derive_event_id(
            ev.source.as_deref().unwrap_or_default(),
            ev.event_name.as_deref().unwrap_or_default(),
            ev.lead_id.as_deref().unwrap_or_default(),
            ev.occurred_at.as_deref().unwrap_or_default(),
            ev.order_id.as_deref().unwrap_or_default(),
        ),
    };
    ev.event_id = Some(event_id.clone());
    (ev, event_id)
}

/// Whether `path` (dotted, e.g. `contact.email`) names a field of the canonical event.
pub fn is_field_path(path: &str) -> bool {
    let mut node = schema();
    for part in path.split('.') {
        let Some(resolved) = resolve(node, &Value::Object(Default::default())) else {
            return false;
        };
        match resolved.get("properties").and_then(|p| p.get(part)) {
            Some(child) => node = child,
            None => return false,
        }
    }
    true
}

/// Whether a field map may write or read `path`: a field of the canonical event, or a key of
/// its free-form maps (`custom.<key>`, `context.qualification.<key>`).
pub fn is_mappable_path(path: &str) -> bool {
    let free = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|k| !k.is_empty() && !k.contains('.'))
    };
    free("custom.") || free("context.qualification.") || is_field_path(path)
}

/// Whether `name` has the shape of a custom event name: `[a-z][a-z0-9_]{0,39}`.
pub fn is_custom_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 40
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}
