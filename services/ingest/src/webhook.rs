//! `POST /v1/sources/{id}/webhook`: a chatbot platform's native payload, turned into a
//! canonical event by the source's declarative field map (`[sources.webhook]`), then
//! validated and published like any event.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use leadpipe_config::sources::WebhookMap;

/// Fields that stay numbers; every other mapped number or boolean becomes a string (platforms
/// often send numeric ids).
const NUMERIC: [&str; 2] = ["value", "refund.remaining_value"];
/// Timestamps that may arrive as unix seconds or milliseconds.
const TIMESTAMPS: [&str; 2] = ["occurred_at", "consent.captured_at"];

/// The canonical event for `native`, and for each mapped field the pointer it came from (so
/// a validation error can say where to look in the platform's payload).
pub fn map(map: &WebhookMap, source_id: &str, native: &Value) -> (Value, HashMap<String, String>) {
    let mut event = Value::Object(Map::new());
    set(&mut event, "source", Value::String(source_id.to_owned()));
    for (path, v) in &map.set {
        set(
            &mut event,
            path,
            serde_json::to_value(v).unwrap_or(Value::Null),
        );
    }
    let mut origins = HashMap::new();
    for (path, pointer) in &map.fields {
        let Some(v) = native.pointer(pointer).filter(|v| !v.is_null()) else {
            continue;
        };
        set(&mut event, path, convert(path, v));
        origins.insert(path.clone(), pointer.clone());
    }
    (event, origins)
}

fn convert(path: &str, v: &Value) -> Value {
    let free_form = path.starts_with("custom.") || path.starts_with("context.qualification.");
    match v {
        Value::Number(n) if TIMESTAMPS.contains(&path) => {
            let raw = n.as_f64().unwrap_or_default();
            // Above 10^11 it can only be milliseconds (10^11 s is the year 5138).
            let millis = if raw > 1e11 { raw } else { raw * 1000.0 };
            DateTime::<Utc>::from_timestamp_millis(millis as i64)
                .map(|t| Value::String(t.to_rfc3339_opts(SecondsFormat::Secs, true)))
                .unwrap_or_else(|| v.clone())
        }
        Value::Number(n) if !NUMERIC.contains(&path) && !free_form => Value::String(n.to_string()),
        Value::Bool(b) if !free_form && !path.starts_with("consent.") => {
            Value::String(b.to_string())
        }
        other => other.clone(),
    }
}

fn set(root: &mut Value, path: &str, value: Value) {
    let mut node = root;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let Value::Object(obj) = node else { return };
        if parts.peek().is_none() {
            obj.insert(part.to_owned(), value);
            return;
        }
        node = obj
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field_map() -> WebhookMap {
        toml::from_str(
            r#"
[set]
event_name = "lead"
[fields]
lead_id = "/conversation/id"
occurred_at = "/created_at"
"contact.email" = "/user/email"
"contact.phone" = "/user/phone"
"custom.score" = "/score"
"#,
        )
        .unwrap()
    }

    #[test]
    fn native_fields_land_at_their_canonical_paths() {
        let native = json!({"conversation": {"id": 98765}, "created_at": 1764547200,
                            "user": {"email": "a@b.io", "phone": null}, "score": 7});
        let (event, origins) = map(&field_map(), "acme", &native);
        assert_eq!(
            event,
            json!({"source": "acme", "event_name": "lead", "lead_id": "98765",
                   "occurred_at": "2025-12-01T00:00:00Z", "contact": {"email": "a@b.io"},
                   "custom": {"score": 7}})
        );
        assert_eq!(origins["contact.email"], "/user/email");
        assert!(!origins.contains_key("contact.phone"));
    }

    #[test]
    fn millisecond_timestamps_are_recognised() {
        let (event, _) = map(
            &field_map(),
            "acme",
            &json!({"created_at": 1764547200123u64}),
        );
        assert_eq!(event["occurred_at"], "2025-12-01T00:00:00Z");
    }
}
