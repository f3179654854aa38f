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
        // A value table (the event-name table, consent flags) translates native values; a
        // value it does not list goes through as it is, and validation names it.
        let translated = map.values.get(path).and_then(|table| {
            let key = match v {
                Value::String(s) => s.clone(),
                Value::Bool(_) | Value::Number(_) => v.to_string(),
                _ => return None,
            };
            table.get(&key).map(|c| Value::String(c.clone()))
        });
        let value = translated.unwrap_or_else(|| convert(path, v, map.timestamp_format.as_deref()));
        set(&mut event, path, value);
        origins.insert(path.clone(), pointer.clone());
    }
    (event, origins)
}

fn convert(path: &str, v: &Value, timestamp_format: Option<&str>) -> Value {
    let free_form = path.starts_with("custom.") || path.starts_with("context.qualification.");
    match v {
        Value::Number(n) if TIMESTAMPS.contains(&path) => {
            let raw = n.as_f64().unwrap_or_default();
            // Above 10^11 it can only be milliseconds (10^11 s is the year 5138), unless the
            // map says unix_ms.
            let millis = if raw > 1e11 || timestamp_format == Some("unix_ms") {
                raw
            } else {
                raw * 1000.0
            };
            DateTime::<Utc>::from_timestamp_millis(millis as i64)
                .map(|t| Value::String(t.to_rfc3339_opts(SecondsFormat::Secs, true)))
                .unwrap_or_else(|| v.clone())
        }
        Value::String(s) if TIMESTAMPS.contains(&path) => match timestamp_format {
            Some("unix" | "unix_ms") => s
                .trim()
                .parse::<f64>()
                .map(|n| convert(path, &serde_json::json!(n), timestamp_format))
                .unwrap_or_else(|_| v.clone()),
            Some(format) => parse_formatted(s.trim(), format)
                .map(|t| Value::String(t.to_rfc3339_opts(SecondsFormat::Secs, true)))
                .unwrap_or_else(|| v.clone()),
            None => v.clone(),
        },
        Value::Number(n) if !NUMERIC.contains(&path) && !free_form => Value::String(n.to_string()),
        Value::Bool(b) if !free_form && !path.starts_with("consent.") => {
            Value::String(b.to_string())
        }
        other => other.clone(),
    }
}

/// A timestamp written as `format`: with its offset when the format has `%z`, else UTC.
fn parse_formatted(s: &str, format: &str) -> Option<DateTime<Utc>> {
    if format.contains("%z") || format.contains("%:z") {
        return DateTime::parse_from_str(s, format)
            .ok()
            .map(|t| t.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(s, format)
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(s, format)
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
        .map(|t| t.and_utc())
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
    fn value_tables_translate_native_values_and_formats_read_timestamps() {
        let mut m = field_map();
        m.fields.insert("event_name".into(), "/type".into());
        m.fields
            .insert("consent.ad_user_data".into(), "/ads".into());
        m.values.insert(
            "event_name".into(),
            [("form_submitted".to_owned(), "lead".to_owned())].into(),
        );
        m.values.insert(
            "consent.ad_user_data".into(),
            [("true".to_owned(), "granted".to_owned())].into(),
        );
        m.timestamp_format = Some("%d/%m/%Y %H:%M".into());
        let native =
            json!({"type": "form_submitted", "ads": true, "created_at": "04/12/2026 10:15"});
        let (event, _) = map(&m, "acme", &native);
        assert_eq!(event["event_name"], "lead");
        assert_eq!(event["consent"]["ad_user_data"], "granted");
        assert_eq!(event["occurred_at"], "2026-12-04T10:15:00Z");
        // A value the table does not list goes through for validation to name.
        let (event, _) = map(&m, "acme", &json!({"type": "chat_closed"}));
        assert_eq!(event["event_name"], "chat_closed");
        let (event, _) = map(&m, "acme", &json!({"created_at": "04/12/2026 10:15 +0100"}));
        assert_eq!(event["occurred_at"], "04/12/2026 10:15 +0100");
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

    /// Arbitrary native payloads: nested objects and arrays of scalars under keys the map
    /// reads and others.
    fn native_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let key = prop::sample::select(vec![
            "conversation",
            "id",
            "created_at",
            "user",
            "email",
            "phone",
            "score",
            "type",
            "x",
        ])
        .prop_map(str::to_owned);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,24}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 40, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512)
        ))]

        /// Fuzzing the native-webhook mapper: any payload maps to an object without panicking,
        /// with the source set from the id and every origin one of the map's pointers.
        #[test]
        fn any_native_payload_maps_without_panicking(native in native_json()) {
            let mut m = field_map();
            m.timestamp_format = Some("%d/%m/%Y %H:%M".into());
            m.values.insert("contact.phone".into(), [("true".to_owned(), "x".to_owned())].into());
            let (event, origins) = map(&m, "acme", &native);
            proptest::prop_assert_eq!(&event["source"], "acme");
            for pointer in origins.values() {
                proptest::prop_assert!(m.fields.values().any(|p| p == pointer));
            }
        }
    }
}
