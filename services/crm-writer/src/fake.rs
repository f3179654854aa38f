//! Local stand-ins for the CRM: a webhook receiver that verifies Standard Webhooks signatures
//! and dedupes by `webhook-id` (409 on a repeat), and a HubSpot-like contacts API (batch
//! upsert validated per contracts/hubspot.md §5, 207 for refused inputs, scripted 429s with
//! HubSpot's rate-limit headers).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde_json::{Value, json};

/// The webhook receiver's secret (`CRM_WEBHOOK_SECRET`).
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The HubSpot token the fake accepts.
pub const HUBSPOT_TOKEN: &str = "pat-na1-test";
/// An email HubSpot refuses (a per-input error in a 207).
pub const HUBSPOT_REJECTED_EMAIL: &str = "refused@example.com";

/// One webhook delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `webhook-id`.
    pub id: String,
    /// The body.
    pub body: Value,
    /// Whether the signature verified.
    pub verified: bool,
    /// The status answered.
    pub status: u16,
    /// Its `traceparent` header.
    pub traceparent: Option<String>,
}

/// One HubSpot batch request.
#[derive(Debug, Clone)]
pub struct Batch {
    /// When it arrived.
    pub at: Instant,
    /// The body.
    pub body: Value,
    /// The status answered.
    pub status: u16,
}

/// Ids a lean fake has room for before its map grows (a 10-minute soak sends 1.2 million).
const LEAN_CAPACITY: usize = 2_000_000;

#[derive(Default)]
struct Inner {
    deliveries: Vec<Delivery>,
    seen: HashMap<String, usize>,
    script: VecDeque<u16>,
    batches: Vec<Batch>,
    hubspot_script: VecDeque<u16>,
    /// (idProperty, id) → properties of the contact.
    contacts: HashMap<(String, String), Value>,
    next_id: u64,
    latency: std::time::Duration,
    /// Verified webhook writes kept (a cheap count for benchmarks).
    written: usize,
    /// Keep counts only, not every delivery (benchmarks).
    lean: bool,
    storm: leadpipe_consumer::testing::Storm,
}

/// The fakes' handle (both served on one port).
#[derive(Clone)]
pub struct FakeCrm {
    /// Base URL: the webhook is `{base}/hooks/leads`, HubSpot is `{base}`.
    pub base_url: String,
    inner: Arc<Mutex<Inner>>,
}

fn verify(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let id = get("webhook-id")?;
    let ts: i64 = get("webhook-timestamp")?.parse().ok()?;
    if (chrono::Utc::now().timestamp() - ts).abs() > 300 {
        return None;
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(WEBHOOK_SECRET.trim_start_matches("whsec_"))
        .ok()?;
    let want = crate::webhook::sign(&key, id, ts, body);
    get("webhook-signature")?
        .split(' ')
        .any(|s| s == want)
        .then(|| id.to_owned())
}

async fn webhook(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let strike = inner.lock().unwrap().storm.count();
    let struck = leadpipe_consumer::testing::weather(strike).await;
    let latency = inner.lock().unwrap().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut g = inner.lock().unwrap();
    let verified = verify(&headers, &body);
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let status = if verified.is_none() {
        401
    } else if let Some(s) = g
        .script
        .pop_front()
        .or_else(|| struck.map(|(status, _)| status))
    {
        s
    } else if g.seen.contains_key(&id) {
        409
    } else {
        200
    };
    if status == 200 {
        *g.seen.entry(id.clone()).or_default() += 1;
        g.written += 1;
    }
    if !g.lean {
        g.deliveries.push(Delivery {
            id,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            verified: verified.is_some(),
            status,
            traceparent: headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        });
    }
    let mut response = StatusCode::from_u16(status).unwrap().into_response();
    if let Some(secs) = struck
        .and_then(|(s, ra)| (s == status).then_some(ra))
        .flatten()
    {
        response
            .headers_mut()
            .insert("retry-after", secs.to_string().parse().unwrap());
    }
    response
}

fn hubspot_error(status: u16, category: &str, extra: Value) -> Response {
    let mut body = json!({"status": "error", "message": "refused", "category": category,
                          "correlationId": "c0ffee00-0000-0000-0000-000000000000"});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
}

async fn upsert(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut g = inner.lock().unwrap();
    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {HUBSPOT_TOKEN}"));
    let record = |g: &mut Inner, status: u16, body: Value| {
        g.batches.push(Batch {
            at: Instant::now(),
            body,
            status,
        });
    };
    if !authorized {
        record(&mut g, 401, body);
        return hubspot_error(401, "INVALID_AUTHENTICATION", json!({}));
    }
    if let Some(status) = g.hubspot_script.pop_front() {
        record(&mut g, status, body);
        let mut response = hubspot_error(
            status,
            "RATE_LIMITS",
            json!({"policyName": "TEN_SECONDLY_ROLLING"}),
        );
        let h = response.headers_mut();
        h.insert("x-hubspot-ratelimit-max", HeaderValue::from_static("100"));
        h.insert(
            "x-hubspot-ratelimit-remaining",
            HeaderValue::from_static("0"),
        );
        h.insert(
            "x-hubspot-ratelimit-interval-milliseconds",
            HeaderValue::from_static("2000"),
        );
        return response;
    }
    let inputs = body["inputs"].as_array().cloned().unwrap_or_default();
    let mut ids = std::collections::HashSet::new();
    let whole_ok = !inputs.is_empty()
        && inputs.len() <= 100
        && inputs.iter().all(|i| {
            i["id"].as_str().is_some_and(|s| !s.is_empty())
                && i["idProperty"].as_str().is_some_and(|s| !s.is_empty())
                && i["properties"]
                    .as_object()
                    .is_some_and(|p| p.values().all(Value::is_string))
                && ids.insert((i["idProperty"].to_string(), i["id"].to_string()))
        });
    if !whole_ok {
        record(&mut g, 400, body);
        return hubspot_error(400, "VALIDATION_ERROR", json!({}));
    }
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for i in &inputs {
        let trace = i["objectWriteTraceId"].clone();
        let email_key = i["idProperty"] == "email";
        let email = i["properties"]["email"].as_str();
        let mismatch = email_key && email.is_some_and(|e| Some(e) != i["id"].as_str());
        if i["id"] == HUBSPOT_REJECTED_EMAIL || mismatch {
            errors.push(json!({"status": "error", "category": "VALIDATION_ERROR",
                "message": format!("Property values were not valid: {}", i["id"]),
                "context": {"objectWriteTraceId": [trace]},
                "errors": [{"message": "invalid", "code": "INVALID_EMAIL", "in": "email"}]}));
            continue;
        }
        let key = (
            i["idProperty"].as_str().unwrap().to_owned(),
            i["id"].as_str().unwrap().to_owned(),
        );
        let new = !g.contacts.contains_key(&key);
        g.next_id += 1;
        let id = g.next_id;
        let contact = g.contacts.entry(key).or_insert_with(|| json!({}));
        if let (Some(c), Some(p)) = (contact.as_object_mut(), i["properties"].as_object()) {
            c.extend(p.clone());
        }
        results.push(
            json!({"id": id.to_string(), "new": new, "objectWriteTraceId": trace,
                            "properties": {}}),
        );
    }
    let status = if errors.is_empty() { 200 } else { 207 };
    record(&mut g, status, body);
    (
        StatusCode::from_u16(status).unwrap(),
        Json(
            json!({"status": "COMPLETE", "results": results, "errors": errors,
                    "numErrors": errors.len()}),
        ),
    )
        .into_response()
}

impl FakeCrm {
    /// Starts both fakes on a free port.
    pub async fn start() -> Self {
        let inner: Arc<Mutex<Inner>> = Arc::default();
        let app = axum::Router::new()
            .route(
                "/hooks/leads",
                post(webhook).get(|| async { StatusCode::METHOD_NOT_ALLOWED }),
            )
            .route("/crm/v3/objects/contacts/batch/upsert", post(upsert))
            .route(
                "/crm/v3/objects/contacts",
                axum::routing::get(|h: HeaderMap| async move {
                    let ok = h.get("authorization").and_then(|v| v.to_str().ok())
                        == Some(&format!("Bearer {HUBSPOT_TOKEN}"));
                    if ok {
                        StatusCode::OK
                    } else {
                        StatusCode::UNAUTHORIZED
                    }
                }),
            )
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base_url, inner }
    }

    /// `CRM_WEBHOOK_URL`.
    pub fn webhook_url(&self) -> String {
        format!("{}/hooks/leads", self.base_url)
    }

    /// Answer the next webhook posts with these statuses.
    pub fn script_webhook(&self, statuses: impl IntoIterator<Item = u16>) {
        self.inner.lock().unwrap().script.extend(statuses);
    }

    /// Answer the next HubSpot batches with these statuses (429 carries HubSpot's headers).
    pub fn script_hubspot(&self, statuses: impl IntoIterator<Item = u16>) {
        self.inner.lock().unwrap().hubspot_script.extend(statuses);
    }

    /// Every `n`-th request fails with 503 (a destination storm; 0: none).
    pub fn set_storm(&self, every: u32) {
        self.set_storm_of(every, leadpipe_consumer::testing::Strike::Unavailable);
    }

    /// Every `n`-th request to the data endpoint is struck with `strike` (0: none).
    pub fn set_storm_of(&self, every: u32, strike: leadpipe_consumer::testing::Strike) {
        self.inner.lock().unwrap().storm.set(every, strike);
    }

    /// Verify and count only; keep no delivery (for benchmarks).
    pub fn set_lean(&self) {
        let mut g = self.inner.lock().unwrap();
        g.lean = true;
        // Room for a long run's ids up front: growing a map of a million ids pauses every
        // request for tens of milliseconds, which is the fake's latency, not the pipeline's.
        g.seen.reserve(LEAN_CAPACITY);
    }

    /// Delay every webhook answer.
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.inner.lock().unwrap().latency = latency;
    }

    /// How many verified webhook writes were kept.
    pub fn written_count(&self) -> usize {
        self.inner.lock().unwrap().written
    }

    /// Every webhook delivery so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inner.lock().unwrap().deliveries.clone()
    }

    /// Writes the receiver kept (verified, 200), by `webhook-id`.
    pub fn written(&self) -> HashMap<String, usize> {
        self.inner.lock().unwrap().seen.clone()
    }

    /// Every HubSpot batch so far.
    pub fn batches(&self) -> Vec<Batch> {
        self.inner.lock().unwrap().batches.clone()
    }

    /// A HubSpot contact's properties, by its key.
    pub fn contact(&self, id_property: &str, id: &str) -> Option<Value> {
        self.inner
            .lock()
            .unwrap()
            .contacts
            .get(&(id_property.to_owned(), id.to_owned()))
            .cloned()
    }
}

/// A fake, for the end-to-end support (the signed-webhook receiver).
pub async fn start() -> Arc<dyn leadpipe_consumer::testing::FakeDestination> {
    Arc::new(FakeCrm::start().await)
}

impl leadpipe_consumer::testing::FakeDestination for FakeCrm {
    fn destination(&self) -> leadpipe_bus::Destination {
        crate::DESTINATION
    }
    fn sender_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CRM_KIND", "webhook".into()),
            ("CRM_WEBHOOK_URL", self.webhook_url()),
            ("CRM_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
        ]
    }
    fn ad_consent(&self) -> leadpipe_consumer::testing::AdConsent {
        leadpipe_consumer::testing::AdConsent::NotGated
    }
    fn refuses(&self, _: &Value) -> bool {
        false
    }
    fn kept(&self) -> HashMap<String, usize> {
        self.written()
    }
    fn kept_by_event_id(&self) -> bool {
        true
    }
    fn requests_seen(&self) -> usize {
        self.deliveries().len()
    }
    fn bodies(&self) -> Vec<String> {
        // The CRM is the system of record: its requests carry the contact in clear by design,
        // so there is nothing for the ad destinations' PII check here.
        Vec::new()
    }
    fn event_ids_with_user_data(&self) -> Vec<String> {
        Vec::new()
    }
    fn set_storm_of(&self, every: u32, strike: leadpipe_consumer::testing::Strike) {
        FakeCrm::set_storm_of(self, every, strike);
    }
    fn set_latency(&self, latency: std::time::Duration) {
        FakeCrm::set_latency(self, latency);
    }
    fn set_lean(&self) {
        FakeCrm::set_lean(self);
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
