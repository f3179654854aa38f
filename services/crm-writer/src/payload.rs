//! Canonical event → CRM fields through the field map: the raw (normalized, unhashed)
//! contact and the conversation context sales needs, each cut to its field's length limit.
//! The CRM is the system of record, so consent does not block the write; it is written too.

use serde_json::{Map, Value, json};

use leadpipe_events::Envelope;

use crate::cfg::CrmField;

/// One event ready for the CRM.
#[derive(Debug, Clone, PartialEq)]
pub struct CrmRecord {
    /// CRM field name → value, in map order.
    pub fields: Vec<(String, String)>,
    /// The lifecycle stage the event moves the contact to, if any.
    pub lifecycle_stage: Option<String>,
    /// The normalized email, the contact's key when present.
    pub email: Option<String>,
    /// The chatbot's or CRM's lead id, the key of a contact without email.
    pub lead_id: String,
    /// `leadpipe.<event_name>`.
    pub kind: String,
    /// When it happened (RFC 3339 UTC).
    pub occurred_at: String,
}

/// The CRM record of `env`.
pub fn build(env: &Envelope, fields: &[CrmField], lifecycle_stage: Option<&str>) -> CrmRecord {
    let doc = serde_json::to_value(&env.event).unwrap_or(Value::Null);
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        let value = match f.path.as_str() {
            "event_id" => Some(env.event_id.clone()),
            "ingested_at" => Some(env.ingested_at.clone()),
            path => doc
                .pointer(&format!("/{}", path.replace('.', "/")))
                .and_then(render),
        };
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            out.push((f.name.clone(), v.chars().take(f.max_chars).collect()));
        }
    }
    let ev = &env.event;
    CrmRecord {
        fields: out,
        lifecycle_stage: lifecycle_stage
            .map(str::to_owned)
            .or_else(|| ev.context.as_ref().and_then(|c| c.lifecycle_stage.clone())),
        email: ev.contact.as_ref().and_then(|c| c.email.clone()),
        lead_id: ev.lead_id.clone().unwrap_or_default(),
        kind: format!("leadpipe.{}", ev.name()),
        occurred_at: ev.occurred_at.clone().unwrap_or_default(),
    }
}

/// A value as CRM text: scalars as they are, an object (qualification answers) as
/// `key: value` lines, a list as comma-separated items.
fn render(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        // Numbers arrive as f64 (`12.0`): a whole number is written without its fraction.
        Value::Number(n) => Some(match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        }),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(render)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Value::Object(o) => Some(
            o.iter()
                .filter_map(|(k, v)| render(v).map(|v| format!("{k}: {v}")))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    }
}

/// The webhook body (Standard Webhooks' recommended shape, with the event id inside).
pub fn webhook_body(event_id: &str, r: &CrmRecord) -> Value {
    let mut data = Map::new();
    for (k, v) in &r.fields {
        data.insert(k.clone(), json!(v));
    }
    if let Some(stage) = &r.lifecycle_stage {
        data.insert("lifecycle_stage".into(), json!(stage));
    }
    json!({"type": r.kind, "timestamp": r.occurred_at, "event_id": event_id, "data": data})
}

/// What DRY_RUN records: field names and value lengths, never the values (the delivery log
/// holds no PII).
pub fn redacted(r: &CrmRecord) -> Value {
    let fields: Map<String, Value> = r
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), json!(format!("<{} chars>", v.chars().count()))))
        .collect();
    json!({"type": r.kind, "lifecycle_stage": r.lifecycle_stage, "fields": fields})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Envelope {
        Envelope {
            schema_version: 1,
            event_id: "evt-1".into(),
            ingested_at: "2026-12-01T10:00:01Z".into(),
            event: serde_json::from_value(json!({
                "source": "site-widget", "event_name": "lead", "lead_id": "L-1",
                "occurred_at": "2026-12-01T10:00:00Z",
                "contact": {"email": "jane@example.com", "phone": "+16505551234"},
                "attribution": {"utm_source": "google", "gclid": "Cj0"},
                "context": {"transcript": "Hi! I need a quote.", "chatbot": "acme-bot",
                            "qualification": {"budget": "10k", "seats": 12}},
                "consent": {"ad_user_data": "denied"},
                "custom": {"plan": "pro"}
            }))
            .unwrap(),
        }
    }

    fn field(path: &str, name: &str, max: usize) -> CrmField {
        CrmField {
            path: path.into(),
            name: name.into(),
            max_chars: max,
        }
    }

    #[test]
    fn fields_carry_the_raw_contact_the_context_and_consent_cut_to_their_limits() {
        let r = build(
            &env(),
            &[
                field("contact.email", "emailaddress1", 100),
                field("context.transcript", "transcript", 5),
                field("context.qualification", "answers", 100),
                field("consent.ad_user_data", "ad_consent", 100),
                field("custom.plan", "plan", 100),
                field("event_id", "leadpipe_event_id", 100),
                field("contact.city", "city", 100),
            ],
            Some("lead"),
        );
        assert_eq!(
            r.fields,
            [
                ("emailaddress1".to_owned(), "jane@example.com".to_owned()),
                ("transcript".into(), "Hi! I".into()),
                ("answers".into(), "budget: 10k\nseats: 12".into()),
                ("ad_consent".into(), "denied".into()),
                ("plan".into(), "pro".into()),
                ("leadpipe_event_id".into(), "evt-1".into()),
            ]
        );
        assert_eq!(r.lifecycle_stage.as_deref(), Some("lead"));
        let body = webhook_body("evt-1", &r);
        assert_eq!(body["event_id"], "evt-1");
        assert_eq!(body["data"]["lifecycle_stage"], "lead");
        let red = redacted(&r).to_string();
        assert!(!red.contains("jane") && red.contains("<16 chars>"), "{red}");
    }
}
