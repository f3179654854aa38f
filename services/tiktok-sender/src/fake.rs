//! A local stand-in for the TikTok Events API that validates requests as the contract's
//! checklist says (contracts/tiktok-events.md §9): the `Access-Token` header, the top-level
//! `event_source`/`event_source_id`, 1–1,000 events, hashed matching keys and clear click ids,
//! `Purchase` properties, and TikTok's error model (HTTP 200 with a non-zero `code`, the whole
//! request refused for one bad event). Scripted codes, storms and latency for the fault tests.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use leadpipe_consumer::testing::{AdConsent, FakeDestination, Storm, Strike, weather};

use crate::cfg::TRACK_PATH;
use crate::payload::CURRENCIES;

/// The token the fake accepts when started by [`start`].
pub const TOKEN: &str = "tt-good-token";
/// The pixel code (`event_source_id`) the fake knows.
pub const PIXEL_CODE: &str = "CTESTPIXEL0001";
/// An email whose events TikTok "rejects" (code 40002) though they pass local validation.
pub const REJECTED_EMAIL: &str = "tiktok-reject@example.com";

/// SHA-256 of the empty string: never a valid hashed key.
const EMPTY_DIGEST: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A scripted answer for the next request.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// HTTP status with a non-JSON body (a gateway page).
    Status(u16),
    /// HTTP 200 with this TikTok `code`.
    Code(i64),
}

/// One request TikTok received.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// The body.
    pub body: Value,
    /// The HTTP status answered.
    pub status: u16,
    /// The TikTok `code` answered (`None` for a non-JSON answer).
    pub code: Option<i64>,
    /// Its `Access-Token` header.
    pub token: Option<String>,
    /// Its `traceparent` header.
    pub traceparent: Option<String>,
}

#[derive(Default)]
struct Inner {
    token: String,
    accept_rejected: bool,
    script: VecDeque<Scripted>,
    latency: Duration,
    requests: Vec<Received>,
    /// event_id → times accepted.
    accepted: HashMap<String, usize>,
    /// Accepted events, by event_id (last copy).
    events: HashMap<String, Value>,
    storm: Storm,
    lean: bool,
}

/// The fake's handle.
#[derive(Clone)]
pub struct FakeTikTok {
    /// Base URL (`TIKTOK_API_BASE_URL`).
    pub base_url: String,
    inner: Arc<Mutex<Inner>>,
}

fn hex64(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 64
            && s != EMPTY_DIGEST
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn envelope(code: i64, message: &str) -> Value {
    json!({"code": code, "message": message,
           "request_id": format!("{}", uuid::Uuid::new_v4().simple()), "data": {}})
}

/// Checks one event as the contract's checklist says; `Err` names the problem.
fn check_event(e: &Value, now: i64, accept_rejected: bool) -> Result<(), String> {
    if e["event"].as_str().is_none_or(str::is_empty) {
        return Err("event: required".into());
    }
    let t = e["event_time"]
        .as_i64()
        .ok_or("event_time: not an integer")?;
    if !(1_000_000_000..10_000_000_000).contains(&t) {
        return Err("event_time: not unix seconds".into());
    }
    if t < now - 28 * 86_400 || t > now + 60 {
        return Err("event_time: out of window".into());
    }
    if !e["event_id"].is_string() {
        return Err("event_id: not a valid string".into());
    }
    let user = e["user"].as_object().ok_or("user: required")?;
    for k in ["email", "phone", "external_id"] {
        if let Some(v) = user.get(k) {
            let ok = v
                .as_array()
                .is_some_and(|a| !a.is_empty() && a.iter().all(hex64));
            if !ok {
                return Err(format!("user.{k}: must be SHA-256 hashed"));
            }
        }
    }
    for k in ["ttclid", "ttp", "ip", "user_agent", "locale"] {
        if let Some(v) = user.get(k)
            && (!v.is_string() || hex64(v))
        {
            return Err(format!("user.{k}: must not be hashed"));
        }
    }
    if let Some(ip) = user.get("ip")
        && ip
            .as_str()
            .and_then(|s| s.parse::<std::net::IpAddr>().ok())
            .is_none()
    {
        return Err("user.ip: not an IP address".into());
    }
    for k in ["phone_number", "em", "ph", "client_ip_address"] {
        if user.contains_key(k) {
            return Err(format!("user.{k}: not a field"));
        }
    }
    for k in ["url", "referrer"] {
        if let Some(u) = e["page"].get(k) {
            let u = u.as_str().unwrap_or_default();
            if !(u.starts_with("https://") || u.starts_with("http://")) || u.contains('?') {
                return Err(format!("page.{k}: not a plain http(s) URL"));
            }
        }
    }
    if e["event"] == "Purchase" {
        let p = &e["properties"];
        if !p["value"].as_f64().is_some_and(|v| v >= 0.0) {
            return Err("properties.value: must be a number".into());
        }
        if !p["currency"]
            .as_str()
            .is_some_and(|c| CURRENCIES.contains(&c))
        {
            return Err("properties.currency: not supported".into());
        }
        if p["order_id"].as_str().is_none_or(str::is_empty) {
            return Err("properties.order_id: required".into());
        }
    }
    if let Some(l) = e.get("limited_data_use")
        && !l.is_boolean()
    {
        return Err("limited_data_use: not a boolean".into());
    }
    if e.get("event_source").is_some() || e.get("test_event_code").is_some() {
        return Err("event_source: must be web, app or offline.".into());
    }
    if !accept_rejected
        && user.get("email").and_then(|v| v.get(0))
            == Some(&json!(leadpipe_events::sha256_hex(REJECTED_EMAIL)))
    {
        return Err("user.email: rejected".into());
    }
    Ok(())
}

/// The answer to a request whose token was checked: `(code, message)`.
fn judge(body: &Value, now: i64, accept_rejected: bool) -> (i64, String) {
    let Some(top) = body.as_object() else {
        return (40002, "body: not an object".into());
    };
    for k in top.keys() {
        if ![
            "event_source",
            "event_source_id",
            "data",
            "test_event_code",
            "partner_name",
        ]
        .contains(&k.as_str())
        {
            return (40002, format!("{k}: unknown field"));
        }
    }
    if !["web", "app", "offline", "crm"].contains(&body["event_source"].as_str().unwrap_or("")) {
        return (40002, "event_source: must be web, app or offline.".into());
    }
    if body["event_source_id"] != PIXEL_CODE {
        return (
            40001,
            "No permission to operate pixel code. You must be an admin or operator of this advertiser account.".into(),
        );
    }
    let Some(data) = body["data"].as_array() else {
        return (40002, "data: required".into());
    };
    if data.is_empty() {
        return (40002, "data: must hold at least one event".into());
    }
    if data.len() > 1000 {
        return (40061, "data: more than 1000 events".into());
    }
    for (i, e) in data.iter().enumerate() {
        if let Err(why) = check_event(e, now, accept_rejected) {
            return (40002, format!("data.{i}.{why}"));
        }
    }
    (0, "OK".into())
}

async fn track(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let token = header("access-token");
    let traceparent = header("traceparent");
    let strike = inner.lock().unwrap().storm.count();
    let struck = weather(strike).await;
    let latency = inner.lock().unwrap().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut g = inner.lock().unwrap();
    let now = chrono::Utc::now().timestamp();
    let (status, code, message, retry_after): (u16, Option<i64>, String, Option<u64>) = (|| {
        match token.as_deref() {
            None | Some("") => return (200, Some(40104), "Access token is empty".into(), None),
            Some(t) if t != g.token => {
                return (
                    200,
                    Some(40105),
                    "Access token is incorrect or has been revoked.".into(),
                    None,
                );
            }
            Some(_) => {}
        }
        if let Some((status, retry_after)) = struck {
            return (status, None, String::new(), retry_after);
        }
        if let Some(s) = g.script.pop_front() {
            return match s {
                Scripted::Status(status) => (status, None, String::new(), None),
                Scripted::Code(code) => (200, Some(code), "scripted".into(), None),
            };
        }
        let (code, message) = judge(&body, now, g.accept_rejected);
        (200, Some(code), message, None)
    })();
    if code == Some(0) {
        for e in body["data"].as_array().into_iter().flatten() {
            let id = e["event_id"].as_str().unwrap_or_default().to_owned();
            *g.accepted.entry(id.clone()).or_default() += 1;
            if !g.lean {
                g.events.insert(id, e.clone());
            }
        }
    }
    if !g.lean {
        g.requests.push(Received {
            at: Instant::now(),
            body,
            status,
            code,
            token,
            traceparent,
        });
    }
    drop(g);
    let mut headers = HeaderMap::new();
    if let Some(s) = retry_after {
        headers.insert("retry-after", HeaderValue::from(s));
    }
    let status = StatusCode::from_u16(status).unwrap();
    match code {
        Some(code) => (status, headers, Json(envelope(code, &message))).into_response(),
        None => (status, headers, "<html><body>502 Bad Gateway</body></html>").into_response(),
    }
}

impl FakeTikTok {
    /// Starts the fake on a free port, accepting `token`.
    pub async fn start(token: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            token: token.to_owned(),
            ..Inner::default()
        }));
        let app = axum::Router::new()
            .route(TRACK_PATH, post(track))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
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

    /// Answer the next requests (with a good token) as scripted, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Scripted>) {
        self.inner.lock().unwrap().script.extend(replies);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.inner.lock().unwrap().requests.clone()
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

/// A fake accepting [`TOKEN`], for the end-to-end support.
pub async fn start() -> Arc<dyn FakeDestination> {
    Arc::new(FakeTikTok::start(TOKEN).await)
}

impl FakeDestination for FakeTikTok {
    fn destination(&self) -> leadpipe_bus::Destination {
        crate::DESTINATION
    }
    fn sender_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TIKTOK_API_BASE_URL", self.base_url.clone()),
            ("TIKTOK_PIXEL_CODE", PIXEL_CODE.into()),
            ("TIKTOK_ACCESS_TOKEN", TOKEN.into()),
        ]
    }
    fn ad_consent(&self) -> AdConsent {
        AdConsent::Blocks
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
        // Every TikTok event carries user.
        self.event_ids_seen()
    }
    fn set_storm_of(&self, every: u32, strike: Strike) {
        self.inner.lock().unwrap().storm.set(every, strike);
    }
    fn set_latency(&self, latency: Duration) {
        self.inner.lock().unwrap().latency = latency;
    }
    fn set_lean(&self) {
        let mut g = self.inner.lock().unwrap();
        g.lean = true;
        g.accepted.reserve(2_000_000);
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
