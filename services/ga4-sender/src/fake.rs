//! A local stand-in for the GA4 Measurement Protocol that validates as GA4 does
//! (contracts/ga4-mp.md §8): `/debug/mp/collect` answers `validationMessages`, `/mp/collect`
//! answers 2xx even for garbage (and records whether it would have kept it), with scripted
//! statuses and latency.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// A `transaction_id` the fake refuses as `VALUE_INVALID` though it passes ga4-sender's own
/// checks: the stand-in for a payload GA4 would drop.
pub const REJECTED_TRANSACTION_ID: &str = "O-GA4-REJECT";

/// Event names GA4 reserves (the fake keeps its own list, so it can catch the sender's).
const RESERVED_EVENTS: [&str; 12] = [
    "ad_impression",
    "app_remove",
    "click",
    "error",
    "first_open",
    "first_visit",
    "page_view",
    "scroll",
    "session_start",
    "user_engagement",
    "file_download",
    "in_app_purchase",
];
const RESERVED_PREFIXES: [&str; 5] = ["_", "ga_", "google_", "firebase_", "gtag."];

/// One request GA4 received.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// `/mp/collect` or `/debug/mp/collect`.
    pub path: &'static str,
    /// The body.
    pub body: Value,
    /// The status answered.
    pub status: u16,
    /// What GA4 would say of it (empty: it would be kept).
    pub messages: Vec<Value>,
    /// Its `traceparent` header.
    pub traceparent: Option<String>,
}

#[derive(Default)]
struct Inner {
    secret: String,
    script: VecDeque<(u16, Option<u64>)>,
    latency: Duration,
    requests: Vec<Received>,
    /// Events kept by `/mp/collect` so far (a cheap count for benchmarks).
    kept: usize,
    /// Keep counts only, not every request (benchmarks: 30,000 stored bodies cost the shared
    /// CPU more than the sender under test).
    lean: bool,
    storm: leadpipe_consumer::testing::Storm,
}

/// The fake's handle.
#[derive(Clone)]
pub struct FakeGa4 {
    /// Base URL (`GA4_API_BASE_URL`).
    pub base_url: String,
    inner: Arc<Mutex<Inner>>,
}

fn message(path: &str, code: &str, description: String) -> Value {
    json!({"fieldPath": path, "description": description, "validationCode": code})
}

fn valid_name(name: &str) -> bool {
    name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn hex64(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && s != leadpipe_events::sha256_hex("")
    })
}

/// What GA4 would say of `body` (ga4-mp.md §8).
fn validate(q: &HashMap<String, String>, body: &Value, raw_len: usize) -> Vec<Value> {
    let mut m = Vec::new();
    let id_ok = q.get("measurement_id").is_some_and(|id| {
        id.len() > 2
            && id.starts_with("G-")
            && id[2..]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    });
    if !id_ok || q.get("api_secret").is_none_or(String::is_empty) {
        m.push(message(
            "measurement_id",
            "VALUE_REQUIRED",
            "measurement_id and api_secret are required".into(),
        ));
    }
    if raw_len >= 130_000 {
        m.push(message(
            "",
            "VALUE_OUT_OF_BOUNDS",
            "payload too large".into(),
        ));
    }
    if body["client_id"].as_str().is_none_or(str::is_empty) {
        m.push(message(
            "client_id",
            "VALUE_REQUIRED",
            "client_id is required".into(),
        ));
    }
    let now = chrono::Utc::now().timestamp_micros();
    let events = body["events"].as_array().cloned().unwrap_or_default();
    if events.is_empty() || events.len() > 25 {
        m.push(message(
            "events",
            "EXCEEDED_MAX_ENTITIES",
            format!("events must hold 1 to 25 entries, not {}", events.len()),
        ));
    }
    for (i, e) in events.iter().enumerate() {
        let name = e["name"].as_str().unwrap_or_default();
        if !valid_name(name) {
            m.push(message(
                "events",
                "NAME_INVALID",
                format!("Event at index: [{i}] has invalid name [{name}]."),
            ));
        } else if RESERVED_EVENTS.contains(&name) {
            m.push(message(
                "events",
                "NAME_RESERVED",
                format!("Event at index: [{i}] has reserved name [{name}]."),
            ));
        }
        if let Some(t) = e.get("timestamp_micros") {
            let ok = t.as_i64().is_some_and(|t| {
                t.to_string().len() == 16 && t <= now && t >= now - 72 * 3600 * 1_000_000
            });
            if !ok {
                m.push(message(
                    "events.timestamp_micros",
                    "VALUE_INVALID",
                    format!("Event at index: [{i}] has an invalid timestamp_micros."),
                ));
            }
        }
        let params = e["params"].as_object().cloned().unwrap_or_default();
        if params.len() > 25 {
            m.push(message(
                "events.params",
                "EXCEEDED_MAX_ENTITIES",
                format!("Event at index: [{i}] has more than 25 params."),
            ));
        }
        for (k, v) in &params {
            if !valid_name(k) {
                m.push(message(
                    "events.params",
                    "NAME_INVALID",
                    format!("Event at index: [{i}] has invalid param [{k}]."),
                ));
            } else if RESERVED_PREFIXES.iter().any(|p| k.starts_with(p)) {
                m.push(message(
                    "events.params",
                    "NAME_RESERVED",
                    format!("Event at index: [{i}] has reserved param [{k}]."),
                ));
            }
            if v.as_str().is_some_and(|s| s.chars().count() > 100) {
                m.push(message(
                    "events.params",
                    "VALUE_OUT_OF_BOUNDS",
                    format!("Event at index: [{i}] param [{k}] is longer than 100."),
                ));
            }
        }
        if params.contains_key("value") && params["currency"].as_str().is_none_or(|c| c.len() != 3)
        {
            m.push(message(
                "events.params.currency",
                "VALUE_REQUIRED",
                format!("Event at index: [{i}] has value without currency."),
            ));
        }
        if params.get("transaction_id") == Some(&json!(REJECTED_TRANSACTION_ID)) {
            m.push(message("events.params.transaction_id", "VALUE_INVALID", format!("Event at index: [{i}] has an invalid transaction_id [{REJECTED_TRANSACTION_ID}].")));
        }
    }
    if let Some(u) = body.get("user_data") {
        for k in ["sha256_email_address", "sha256_phone_number"] {
            if let Some(v) = u.get(k) {
                let list = v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]);
                if list.len() > 3 || !list.iter().all(hex64) {
                    m.push(message(
                        &format!("user_data.{k}"),
                        "VALUE_INVALID",
                        format!("{k} must be up to 3 hex SHA-256 digests"),
                    ));
                }
            }
        }
        let addresses = u["address"].as_array().cloned().unwrap_or_default();
        if addresses.len() > 2 {
            m.push(message(
                "user_data.address",
                "EXCEEDED_MAX_ENTITIES",
                "at most 2 addresses".into(),
            ));
        }
        for a in &addresses {
            for k in ["sha256_first_name", "sha256_last_name", "sha256_street"] {
                if a.get(k).is_some_and(|v| !hex64(v)) {
                    m.push(message(
                        &format!("user_data.address.{k}"),
                        "VALUE_INVALID",
                        format!("{k} must be a hex SHA-256 digest"),
                    ));
                }
            }
            if a.get("country")
                .is_some_and(|c| c.as_str().is_none_or(|c| c.len() != 2))
            {
                m.push(message(
                    "user_data.address.country",
                    "VALUE_INVALID",
                    "country must be ISO alpha-2".into(),
                ));
            }
        }
    }
    if let Some(c) = body.get("consent").and_then(Value::as_object) {
        for (k, v) in c {
            if !matches!(v.as_str(), Some("GRANTED" | "DENIED")) {
                m.push(message(
                    &format!("consent.{k}"),
                    "VALUE_INVALID",
                    format!("consent.{k} must be GRANTED or DENIED"),
                ));
            }
        }
    }
    m
}

async fn handle(
    inner: Arc<Mutex<Inner>>,
    path: &'static str,
    q: HashMap<String, String>,
    headers: HeaderMap,
    raw: String,
) -> Response {
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let strike = if path == "/mp/collect" {
        inner.lock().unwrap().storm.count()
    } else {
        None
    };
    let struck = leadpipe_consumer::testing::weather(strike).await;
    let latency = inner.lock().unwrap().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let body: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
    let messages = validate(&q, &body, raw.len());
    let mut g = inner.lock().unwrap();
    let scripted = if path == "/mp/collect" {
        g.script.pop_front().or(struck)
    } else {
        None
    };
    let (status, retry_after) =
        scripted.unwrap_or((if path == "/mp/collect" { 204 } else { 200 }, None));
    // A wrong secret is not refused: GA4 silently drops what it cannot attribute.
    let mut messages = messages;
    if q.get("api_secret") != Some(&g.secret) {
        messages.push(message(
            "api_secret",
            "VALUE_INVALID",
            "unknown api_secret".into(),
        ));
    }
    if path == "/mp/collect" && status < 300 && messages.is_empty() {
        g.kept += body["events"].as_array().map_or(0, Vec::len);
    }
    if !g.lean {
        g.requests.push(Received {
            at: Instant::now(),
            path,
            body,
            status,
            messages: messages.clone(),
            traceparent,
        });
    }
    drop(g);
    let mut headers = HeaderMap::new();
    if let Some(s) = retry_after {
        headers.insert("retry-after", HeaderValue::from(s));
    }
    let status = StatusCode::from_u16(status).unwrap();
    if path == "/debug/mp/collect" && status.is_success() {
        // The debug endpoint does not check the secret (ga4-mp.md §2).
        let shown: Vec<Value> = messages
            .into_iter()
            .filter(|m| m["fieldPath"] != "api_secret")
            .collect();
        (
            status,
            headers,
            Json(json!({ "validationMessages": shown })),
        )
            .into_response()
    } else {
        (status, headers).into_response()
    }
}

impl FakeGa4 {
    /// Starts the fake on a free port, attributing requests with `api_secret`.
    pub async fn start(api_secret: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            secret: api_secret.to_owned(),
            ..Inner::default()
        }));
        let collect = {
            let inner = inner.clone();
            move |Query(q): Query<HashMap<String, String>>, headers: HeaderMap, raw: String| {
                handle(inner.clone(), "/mp/collect", q, headers, raw)
            }
        };
        let debug = {
            let inner = inner.clone();
            move |Query(q): Query<HashMap<String, String>>, headers: HeaderMap, raw: String| {
                handle(inner.clone(), "/debug/mp/collect", q, headers, raw)
            }
        };
        let app = axum::Router::new()
            .route("/mp/collect", post(collect))
            .route("/debug/mp/collect", post(debug))
            .with_state(());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        // Like a real API's edge: no Nagle delay on small answers.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base_url, inner }
    }

    /// Every `n`-th request fails with 503 (a destination storm; 0: none).
    pub fn set_storm(&self, every: u32) {
        self.set_storm_of(every, leadpipe_consumer::testing::Strike::Unavailable);
    }

    /// Every `n`-th request to the data endpoint is struck with `strike` (0: none).
    pub fn set_storm_of(&self, every: u32, strike: leadpipe_consumer::testing::Strike) {
        self.inner.lock().unwrap().storm.set(every, strike);
    }

    /// Validate and count only; keep no request (for benchmarks).
    pub fn set_lean(&self) {
        self.inner.lock().unwrap().lean = true;
    }

    /// Answer the next `/mp/collect` requests with these statuses (and `Retry-After`), in order.
    pub fn script(&self, replies: impl IntoIterator<Item = (u16, Option<u64>)>) {
        self.inner.lock().unwrap().script.extend(replies);
    }

    /// Delay every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.inner.lock().unwrap().latency = latency;
    }

    /// How many events `/mp/collect` kept so far, repeats included.
    pub fn kept(&self) -> usize {
        self.inner.lock().unwrap().kept
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// `/mp/collect` requests answered 2xx that GA4 would have kept, as (body, event) per event.
    pub fn collected(&self) -> Vec<(Value, Value)> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == "/mp/collect" && r.status < 300 && r.messages.is_empty())
            .flat_map(|r| {
                let events = r.body["events"].as_array().cloned().unwrap_or_default();
                events.into_iter().map(move |e| (r.body.clone(), e))
            })
            .collect()
    }

    /// How many times each `event_id` param was collected.
    pub fn collected_counts(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for (_, e) in self.collected() {
            *out.entry(
                e["params"]["event_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
            .or_default() += 1;
        }
        out
    }

    /// The last collected copy of an event: (request body, event).
    pub fn event(&self, event_id: &str) -> Option<(Value, Value)> {
        self.collected()
            .into_iter()
            .rev()
            .find(|(_, e)| e["params"]["event_id"] == event_id)
    }

    /// Every `event_id` param carried by any `/mp/collect` request, with repeats.
    pub fn event_ids_sent(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| r.path == "/mp/collect")
            .flat_map(|r| {
                r.body["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| {
                        e["params"]["event_id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned()
                    })
            })
            .collect()
    }
}

/// The API secret the fake accepts when started by [`start`].
pub const API_SECRET: &str = "ga4-secret";
/// The measurement id the end-to-end senders use.
pub const MEASUREMENT_ID: &str = "G-TEST123";

/// A fake accepting [`API_SECRET`], for the end-to-end support.
pub async fn start() -> Arc<dyn leadpipe_consumer::testing::FakeDestination> {
    Arc::new(FakeGa4::start(API_SECRET).await)
}

impl leadpipe_consumer::testing::FakeDestination for FakeGa4 {
    fn destination(&self) -> leadpipe_bus::Destination {
        crate::DESTINATION
    }
    fn sender_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GA4_API_BASE_URL", self.base_url.clone()),
            ("GA4_MEASUREMENT_ID", MEASUREMENT_ID.into()),
            ("GA4_API_SECRET", API_SECRET.into()),
        ]
    }
    fn ad_consent(&self) -> leadpipe_consumer::testing::AdConsent {
        leadpipe_consumer::testing::AdConsent::SendsWithoutUserData
    }
    fn refuses(&self, event: &Value) -> bool {
        event["order_id"] == REJECTED_TRANSACTION_ID
    }
    fn kept(&self) -> HashMap<String, usize> {
        self.collected_counts()
    }
    fn kept_by_event_id(&self) -> bool {
        true
    }
    fn requests_seen(&self) -> usize {
        self.requests().len()
    }
    fn bodies(&self) -> Vec<String> {
        self.requests().iter().map(|r| r.body.to_string()).collect()
    }
    fn event_ids_with_user_data(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| r.path == "/mp/collect" && r.body.get("user_data").is_some())
            .flat_map(|r| {
                r.body["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| {
                        e["params"]["event_id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned()
                    })
            })
            .collect()
    }
    fn set_storm_of(&self, every: u32, strike: leadpipe_consumer::testing::Strike) {
        FakeGa4::set_storm_of(self, every, strike);
    }
    fn set_latency(&self, latency: Duration) {
        FakeGa4::set_latency(self, latency);
    }
    fn set_lean(&self) {
        FakeGa4::set_lean(self);
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
