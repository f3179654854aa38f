//! A local stand-in for the Meta Conversions API that validates payloads as Meta does
//! (contracts/meta-capi.md §9): Graph error envelopes, throttling codes, whole-batch
//! rejection, token checks, and scripted failures and latency.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// An email whose events Meta "rejects" (code 100) though they pass local validation.
pub const REJECTED_EMAIL: &str = "reject@example.com";

/// A scripted answer for the next request.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// HTTP status with an empty body.
    Status(u16),
    /// Graph error `code` with HTTP 400 and an optional `Retry-After`.
    GraphError { code: i64, retry_after: Option<u64> },
}

/// One request Meta received.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// The body.
    pub body: Value,
    /// The status answered.
    pub status: u16,
    /// Its `traceparent` header.
    pub traceparent: Option<String>,
}

/// Ids a lean fake has room for before its map grows (a 10-minute soak sends 1.2 million).
const LEAN_CAPACITY: usize = 2_000_000;

#[derive(Default)]
struct Inner {
    token: String,
    /// Whether events with [`REJECTED_EMAIL`] are refused (the default).
    accept_rejected: bool,
    script: VecDeque<Scripted>,
    latency: Duration,
    requests: Vec<Received>,
    /// event_id → times accepted.
    accepted: HashMap<String, usize>,
    /// Accepted events, by event_id (last copy).
    events: HashMap<String, Value>,
    /// `GET /{version}/{pixel}` reads: (fields asked, status answered).
    reads: Vec<(String, u16)>,
    storm: leadpipe_consumer::testing::Storm,
    /// Keep counts only (benchmarks): no request bodies, no event copies.
    lean: bool,
}

/// The fake's handle.
#[derive(Clone)]
pub struct FakeMeta {
    /// Base URL (`META_API_BASE_URL`).
    pub base_url: String,
    inner: Arc<Mutex<Inner>>,
}

fn hex64(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn graph_error(code: i64, message: &str) -> Value {
    json!({"error": {"message": message, "type": "OAuthException", "code": code,
                     "fbtrace_id": format!("F{}", uuid::Uuid::new_v4().simple())}})
}

/// Checks one event as Meta does; `Err` names the problem.
fn check_event(e: &Value, now: i64, accept_rejected: bool) -> Result<(), String> {
    if e["event_name"].as_str().is_none_or(str::is_empty) {
        return Err("event_name".into());
    }
    let t = e["event_time"].as_i64().ok_or("event_time")?;
    if t < now - 7 * 86400 || t > now + 60 {
        return Err("event_time out of window".into());
    }
    let sources = [
        "email",
        "website",
        "app",
        "phone_call",
        "chat",
        "physical_store",
        "system_generated",
        "business_messaging",
        "other",
    ];
    let source = e["action_source"].as_str().unwrap_or("");
    if !sources.contains(&source) {
        return Err("action_source".into());
    }
    let u = e["user_data"].as_object().ok_or("user_data")?;
    if u.is_empty() {
        return Err("user_data empty".into());
    }
    for k in [
        "em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country",
    ] {
        if let Some(v) = u.get(k) {
            let ok = match v {
                Value::Array(a) => a.iter().all(hex64),
                other => hex64(other),
            };
            if !ok {
                return Err(format!("{k} not hashed"));
            }
        }
    }
    for k in ["client_ip_address", "client_user_agent", "fbc", "fbp"] {
        if u.get(k).is_some_and(hex64) {
            return Err(format!("{k} must not be hashed"));
        }
    }
    if source == "website"
        && (e["event_source_url"].as_str().is_none() || !u.contains_key("client_user_agent"))
    {
        return Err("website needs event_source_url and client_user_agent".into());
    }
    if e["event_name"] == "Purchase"
        && (!e["custom_data"]["value"].is_number()
            || e["custom_data"]["currency"].as_str().is_none())
    {
        return Err("Purchase needs value and currency".into());
    }
    if !accept_rejected && u.get("em") == Some(&json!(leadpipe_events::sha256_hex(REJECTED_EMAIL)))
    {
        return Err("em rejected".into());
    }
    Ok(())
}

async fn events(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((version, _pixel)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let strike = inner.lock().unwrap().storm.count();
    let struck = leadpipe_consumer::testing::weather(strike).await;
    let latency = inner.lock().unwrap().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut g = inner.lock().unwrap();
    let now = chrono::Utc::now().timestamp();
    let (status, reply, retry_after): (u16, Value, Option<u64>) = (|| {
        if !version.starts_with('v') {
            return (400, graph_error(100, "Unknown path components"), None);
        }
        if q.get("access_token") != Some(&g.token) {
            return (400, graph_error(190, "Invalid OAuth access token."), None);
        }
        if let Some((status, retry_after)) = struck {
            return (status, Value::Null, retry_after);
        }
        if let Some(s) = g.script.pop_front() {
            return match s {
                Scripted::Status(code) => (code, Value::Null, None),
                Scripted::GraphError { code, retry_after } => {
                    (400, graph_error(code, "scripted error"), retry_after)
                }
            };
        }
        let Some(data) = body["data"].as_array() else {
            return (400, graph_error(100, "data is required"), None);
        };
        if data.is_empty() || data.len() > 1000 {
            return (
                400,
                graph_error(100, "data must hold 1 to 1000 events"),
                None,
            );
        }
        if body
            .as_object()
            .is_some_and(|o| o.keys().any(|k| k != "data" && k != "test_event_code"))
        {
            return (400, graph_error(100, "unknown top-level field"), None);
        }
        for e in data {
            if let Err(why) = check_event(e, now, g.accept_rejected) {
                return (
                    400,
                    graph_error(100, &format!("Invalid parameter: {why}")),
                    None,
                );
            }
        }
        for e in data {
            let id = e["event_id"].as_str().unwrap_or_default().to_owned();
            *g.accepted.entry(id.clone()).or_default() += 1;
            if !g.lean {
                g.events.insert(id, e.clone());
            }
        }
        (
            200,
            json!({"events_received": data.len(), "messages": [], "fbtrace_id": "Ftrace"}),
            None,
        )
    })();
    if !g.lean {
        g.requests.push(Received {
            at: Instant::now(),
            body,
            status,
            traceparent,
        });
    }
    drop(g);
    let mut headers = HeaderMap::new();
    if let Some(s) = retry_after {
        headers.insert("retry-after", HeaderValue::from(s));
    }
    (StatusCode::from_u16(status).unwrap(), headers, Json(reply)).into_response()
}

/// `GET /{version}/{pixel_id}?fields=id`: the Graph read of the pixel node, answered `{"id"}`
/// with a valid token and Graph error 190 otherwise.
async fn pixel(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((version, pixel)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut g = inner.lock().unwrap();
    let (status, reply) = if !version.starts_with('v') {
        (400, graph_error(100, "Unknown path components"))
    } else if q.get("access_token") != Some(&g.token) {
        (400, graph_error(190, "Invalid OAuth access token."))
    } else {
        (200, json!({ "id": pixel }))
    };
    let fields = q.get("fields").cloned().unwrap_or_default();
    g.reads.push((fields, status));
    (StatusCode::from_u16(status).unwrap(), Json(reply)).into_response()
}

impl FakeMeta {
    /// Starts the fake on a free port, accepting `token`.
    pub async fn start(token: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            token: token.to_owned(),
            ..Inner::default()
        }));
        let app = axum::Router::new()
            .route("/{version}/{pixel}/events", post(events))
            .route("/{version}/{pixel}", get(pixel))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        // Like a real API's edge: no Nagle delay on small answers.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base_url, inner }
    }

    /// Stop refusing [`REJECTED_EMAIL`] (the "fix" before a DLQ replay).
    pub fn accept_rejected(&self) {
        self.inner.lock().unwrap().accept_rejected = true;
    }

    /// Accept only `token` from now on.
    pub fn set_token(&self, token: &str) {
        self.inner.lock().unwrap().token = token.to_owned();
    }

    /// Keep counts only, not request bodies (a long benchmark's memory).
    pub fn set_lean(&self) {
        let mut g = self.inner.lock().unwrap();
        g.lean = true;
        // Room for a long run's ids up front: growing a map of a million ids pauses every
        // request for tens of milliseconds, which is the fake's latency, not the pipeline's.
        g.accepted.reserve(LEAN_CAPACITY);
    }

    /// Every `n`-th request fails with 503 (a destination storm; 0: none).
    pub fn set_storm(&self, every: u32) {
        self.set_storm_of(every, leadpipe_consumer::testing::Strike::Unavailable);
    }

    /// Every `n`-th request to the data endpoint is struck with `strike` (0: none).
    pub fn set_storm_of(&self, every: u32, strike: leadpipe_consumer::testing::Strike) {
        self.inner.lock().unwrap().storm.set(every, strike);
    }

    /// Answer the next requests as scripted, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Scripted>) {
        self.inner.lock().unwrap().script.extend(replies);
    }

    /// Delay every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.inner.lock().unwrap().latency = latency;
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// Every read of the pixel node: (`fields` asked, status answered).
    pub fn reads(&self) -> Vec<(String, u16)> {
        self.inner.lock().unwrap().reads.clone()
    }

    /// How many times each event_id was accepted.
    pub fn accepted(&self) -> HashMap<String, usize> {
        self.inner.lock().unwrap().accepted.clone()
    }

    /// The accepted copy of an event.
    pub fn event(&self, event_id: &str) -> Option<Value> {
        self.inner.lock().unwrap().events.get(event_id).cloned()
    }

    /// Every event_id carried by any request (accepted or not), with repeats.
    pub fn event_ids_seen(&self) -> Vec<String> {
        self.requests()
            .iter()
            .flat_map(|r| {
                r.body["data"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| e["event_id"].as_str().unwrap_or_default().to_owned())
            })
            .collect()
    }
}

/// The token the fake accepts when started by [`start`].
pub const TOKEN: &str = "good-token";
/// The pixel the end-to-end senders post to.
pub const PIXEL_ID: &str = "1234567890";

/// A fake accepting [`TOKEN`], for the end-to-end support.
pub async fn start() -> Arc<dyn leadpipe_consumer::testing::FakeDestination> {
    Arc::new(FakeMeta::start(TOKEN).await)
}

impl leadpipe_consumer::testing::FakeDestination for FakeMeta {
    fn destination(&self) -> leadpipe_bus::Destination {
        crate::DESTINATION
    }
    fn sender_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("META_API_BASE_URL", self.base_url.clone()),
            ("META_PIXEL_ID", PIXEL_ID.into()),
            ("META_ACCESS_TOKEN", TOKEN.into()),
        ]
    }
    fn ad_consent(&self) -> leadpipe_consumer::testing::AdConsent {
        leadpipe_consumer::testing::AdConsent::Blocks
    }
    fn refuses(&self, event: &Value) -> bool {
        event["contact"]["email"] == REJECTED_EMAIL
    }
    fn kept(&self) -> HashMap<String, usize> {
        self.accepted()
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
        // Every Meta event carries user_data.
        self.event_ids_seen()
    }
    fn set_storm_of(&self, every: u32, strike: leadpipe_consumer::testing::Strike) {
        FakeMeta::set_storm_of(self, every, strike);
    }
    fn set_latency(&self, latency: Duration) {
        FakeMeta::set_latency(self, latency);
    }
    fn set_lean(&self) {
        FakeMeta::set_lean(self);
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
