//! A local stand-in for Google: the OAuth token endpoint, the Data Manager API
//! (`events:ingest` with fast-fail validation, `requestStatus:retrieve` with per-record
//! outcomes) and the Google Ads API uploads (partial failures by row index), validating as
//! the contracts describe (google-data-manager.md §3–§7, google-ads.md §3–§9).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// The refresh token the fake accepts.
pub const REFRESH_TOKEN: &str = "refresh-ok";
/// A gclid whose conversion Google cannot attribute (processing error / row error).
pub const CLICK_NOT_FOUND: &str = "CLICK-NOT-FOUND";
/// A transactionId Data Manager refuses at once (fast-fail, `INVALID_FORMAT`).
pub const DM_INVALID_TRANSACTION: &str = "O-DM-INVALID";
/// An order id the Google Ads API finds no conversion for (adjustments).
pub const ADS_UNKNOWN_ORDER: &str = "O-ADS-NOTFOUND";

/// One `events:ingest` request.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// When it arrived.
    pub at: Instant,
    /// The body.
    pub body: Value,
    /// The status answered.
    pub status: u16,
    /// The request id given, when accepted.
    pub request_id: Option<String>,
}

/// One Google Ads API upload.
#[derive(Debug, Clone)]
pub struct Upload {
    /// `uploadClickConversions` or `uploadConversionAdjustments`.
    pub method: String,
    /// The body.
    pub body: Value,
    /// Request headers (`developer-token`, `login-customer-id`).
    pub headers: HashMap<String, String>,
    /// Row indexes answered with an error.
    pub failed_rows: Vec<usize>,
}

struct Status {
    events: usize,
    polls: usize,
    failed: Vec<(usize, &'static str)>,
}

#[derive(Default)]
struct Inner {
    revoked: bool,
    token_ttl: u64,
    tokens: HashMap<String, Instant>,
    grants: usize,
    script: VecDeque<(u16, Option<u64>)>,
    pending_polls: usize,
    ingests: Vec<Ingest>,
    /// Events in accepted `events:ingest` requests, repeats included.
    accepted: usize,
    statuses: HashMap<String, Status>,
    polls: Vec<(String, Instant)>,
    uploads: Vec<Upload>,
    latency: Duration,
    storm: leadpipe_consumer::testing::Storm,
}

/// The fake's handle.
#[derive(Clone)]
pub struct FakeGoogle {
    /// Base URL of every API and of the token endpoint (`{base}/token`).
    pub base_url: String,
    inner: Arc<Mutex<Inner>>,
}

type Shared = Arc<Mutex<Inner>>;

fn google_error(code: u16, status: &str, violations: Vec<Value>) -> Response {
    let mut details = vec![json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                  "reason": status, "domain": "datamanager.googleapis.com"})];
    if !violations.is_empty() {
        details.push(json!({"@type": "type.googleapis.com/google.rpc.BadRequest",
                            "fieldViolations": violations}));
    }
    (
        StatusCode::from_u16(code).unwrap(),
        Json(
            json!({"error": {"code": code, "message": "There was a problem with the request.",
                              "status": status, "details": details}}),
        ),
    )
        .into_response()
}

fn authorized(g: &Inner, headers: &HeaderMap) -> bool {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    token
        .and_then(|t| g.tokens.get(t))
        .is_some_and(|exp| *exp > Instant::now())
}

fn hex64(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 64
            && s.bytes().all(|b| b.is_ascii_hexdigit())
            && s != leadpipe_events::sha256_hex("")
    })
}

fn digits(v: &Value, len: Option<usize>) -> bool {
    v.as_str().is_some_and(|s| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && len.is_none_or(|l| s.len() == l)
    })
}

async fn token(State(inner): State<Shared>, body: String) -> Response {
    let form: HashMap<String, String> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%2D", "-")))
        .collect();
    let mut g = inner.lock().unwrap();
    let ok = form.get("grant_type").map(String::as_str) == Some("refresh_token")
        && form.get("refresh_token").map(String::as_str) == Some(REFRESH_TOKEN)
        && form.contains_key("client_id")
        && form.contains_key("client_secret");
    if !ok || g.revoked {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."})),
        )
            .into_response();
    }
    g.grants += 1;
    let token = format!("ya29.fake-{}", g.grants);
    let ttl = if g.token_ttl == 0 { 3600 } else { g.token_ttl };
    g.tokens
        .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    Json(json!({"access_token": token, "expires_in": ttl, "token_type": "Bearer"})).into_response()
}

/// Fast-fail validation of an `IngestEventsRequest`: violations with their field paths.
fn ingest_violations(body: &Value) -> Vec<Value> {
    let mut v = Vec::new();
    let mut push = |field: String, reason: &str| {
        v.push(json!({"field": field, "description": "Invalid value.", "reason": reason}));
    };
    let destinations = body["destinations"].as_array().cloned().unwrap_or_default();
    if destinations.is_empty() || destinations.len() > 10 {
        push("destinations".into(), "TOO_MANY_DESTINATIONS");
    }
    for (d, dest) in destinations.iter().enumerate() {
        for account in ["operatingAccount", "loginAccount"] {
            let a = &dest[account];
            if a.is_null() && account == "loginAccount" {
                continue;
            }
            if a["accountType"] != "GOOGLE_ADS" || !digits(&a["accountId"], Some(10)) {
                push(format!("destinations[{d}].{account}"), "INVALID_FORMAT");
            }
        }
        if !digits(&dest["productDestinationId"], None) {
            push(
                format!("destinations[{d}].product_destination_id"),
                "INVALID_CONVERSION_ACTION_ID",
            );
        }
    }
    let events = body["events"].as_array().cloned().unwrap_or_default();
    if events.is_empty() || events.len() > 2000 {
        push("events".into(), "TOO_MANY_EVENTS");
    }
    if events.iter().any(|e| e.get("userData").is_some()) && body["encoding"] != "HEX" {
        push("encoding".into(), "REQUIRED_FIELD_MISSING");
    }
    for (i, e) in events.iter().enumerate() {
        let at = |f: &str| format!("events.events[{i}].{f}");
        match e["transactionId"].as_str() {
            None | Some("") => push(at("transaction_id"), "REQUIRED_FIELD_MISSING"),
            Some(DM_INVALID_TRANSACTION) => push(at("transaction_id"), "INVALID_FORMAT"),
            _ => {}
        }
        if e["eventTimestamp"]
            .as_str()
            .is_none_or(|t| chrono::DateTime::parse_from_rfc3339(t).is_err())
        {
            push(at("event_timestamp"), "INVALID_FORMAT");
        }
        if !["WEB", "APP", "IN_STORE", "PHONE", "MESSAGE", "OTHER"]
            .contains(&e["eventSource"].as_str().unwrap_or(""))
        {
            push(at("event_source"), "REQUIRED_FIELD_MISSING");
        }
        let ids = e["userData"]["userIdentifiers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if ids.len() > 10 {
            push(
                at("user_data.user_identifiers"),
                "TOO_MANY_USER_IDENTIFIERS",
            );
        }
        for (k, id) in ids.iter().enumerate() {
            let obj = id.as_object().cloned().unwrap_or_default();
            let field = at(&format!("user_data.user_identifiers[{k}]"));
            if obj.len() != 1 {
                push(field.clone(), "INVALID_FORMAT");
                continue;
            }
            let ok = match obj.iter().next().unwrap() {
                (key, v) if key == "emailAddress" || key == "phoneNumber" => hex64(v),
                (key, a) if key == "address" => {
                    hex64(&a["givenName"])
                        && hex64(&a["familyName"])
                        && a["regionCode"].as_str().is_some_and(|r| r.len() == 2)
                        && a["postalCode"].as_str().is_some_and(|p| !p.is_empty())
                }
                _ => false,
            };
            if !ok {
                push(field, "INVALID_HEX_ENCODING");
            }
        }
        let ad = &e["adIdentifiers"];
        if ids.is_empty() && ad.as_object().is_none_or(|o| o.is_empty()) {
            push(at("user_data"), "NO_IDENTIFIERS_PROVIDED");
        }
        if ad.get("gbraid").is_some() && ad.get("wbraid").is_some() {
            push(at("ad_identifiers"), "INVALID_FORMAT");
        }
        if e.get("currency").is_some_and(|c| {
            c.as_str()
                .is_none_or(|c| c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()))
        }) {
            push(at("currency"), "INVALID_CURRENCY_CODE");
        }
        if e.get("conversionValue").is_some_and(|v| !v.is_number()) {
            push(at("conversion_value"), "INVALID_NUMBER_FORMAT");
        }
        if let Some(c) = e["consent"].as_object()
            && c.values()
                .any(|v| !matches!(v.as_str(), Some("CONSENT_GRANTED" | "CONSENT_DENIED")))
        {
            push(at("consent"), "INVALID_ENUM_VALUE");
        }
    }
    v
}

async fn ingest(
    State(inner): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let strike = inner.lock().unwrap().storm.count();
    let struck = leadpipe_consumer::testing::weather(strike).await;
    let latency = inner.lock().unwrap().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut g = inner.lock().unwrap();
    if !authorized(&g, &headers) {
        return google_error(401, "UNAUTHENTICATED", vec![]);
    }
    if let Some((status, retry_after)) = g.script.pop_front().or(struck) {
        g.ingests.push(Ingest {
            at: Instant::now(),
            body,
            status,
            request_id: None,
        });
        let mut response = google_error(
            status,
            match status {
                429 => "RESOURCE_EXHAUSTED",
                503 => "UNAVAILABLE",
                _ => "INTERNAL",
            },
            vec![],
        );
        if let Some(s) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(s));
        }
        return response;
    }
    let violations = ingest_violations(&body);
    if !violations.is_empty() {
        g.ingests.push(Ingest {
            at: Instant::now(),
            body,
            status: 400,
            request_id: None,
        });
        return google_error(400, "INVALID_ARGUMENT", violations);
    }
    let request_id = format!("req-{}", g.ingests.len() + 1);
    let events = body["events"].as_array().cloned().unwrap_or_default();
    let failed = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["adIdentifiers"]["gclid"] == CLICK_NOT_FOUND)
        .map(|(i, _)| (i, "PROCESSING_ERROR_REASON_CLICK_NOT_FOUND"))
        .collect();
    g.statuses.insert(
        request_id.clone(),
        Status {
            events: events.len(),
            polls: 0,
            failed,
        },
    );
    g.accepted += events.len();
    g.ingests.push(Ingest {
        at: Instant::now(),
        body,
        status: 200,
        request_id: Some(request_id.clone()),
    });
    Json(json!({ "requestId": request_id })).into_response()
}

async fn status(
    State(inner): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut g = inner.lock().unwrap();
    if !authorized(&g, &headers) {
        return google_error(401, "UNAUTHENTICATED", vec![]);
    }
    let id = q.get("requestId").cloned().unwrap_or_default();
    g.polls.push((id.clone(), Instant::now()));
    let pending = g.pending_polls;
    let Some(s) = g.statuses.get_mut(&id) else {
        return google_error(
            400,
            "INVALID_ARGUMENT",
            vec![json!({"field": "request_id", "reason": "INVALID_REQUEST_ID"})],
        );
    };
    s.polls += 1;
    let destination = json!({"operatingAccount": {"accountType": "GOOGLE_ADS"}});
    if s.polls <= pending {
        return Json(json!({"requestStatusPerDestination": [
            {"destination": destination, "requestStatus": "PROCESSING"}]}))
        .into_response();
    }
    let mut by_reason: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, reason) in &s.failed {
        by_reason.entry(reason).or_default().push(*i);
    }
    let request_status = if s.failed.is_empty() {
        "SUCCESS"
    } else if s.failed.len() == s.events {
        "FAILED"
    } else {
        "PARTIAL_SUCCESS"
    };
    let counts: Vec<Value> = by_reason
        .into_iter()
        .map(|(reason, idx)| {
            json!({"recordCount": idx.len().to_string(), "reason": reason,
                                    "recordIndices": idx})
        })
        .collect();
    let mut d = json!({"destination": destination, "requestStatus": request_status,
                       "eventsIngestionStatus": {"recordCount": s.events.to_string()}});
    if !counts.is_empty() {
        d["errorInfo"] = json!({ "errorCounts": counts });
    }
    Json(json!({ "requestStatusPerDestination": [d] })).into_response()
}

fn ads_datetime(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        let b = s.as_bytes();
        s.len() == 25
            && b[4] == b'-'
            && b[10] == b' '
            && (b[19] == b'+' || b[19] == b'-')
            && chrono::DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%:z").is_ok()
    })
}

/// One row's error code (family, code), if the Google Ads API refuses it.
fn ads_row_error(method: &str, row: &Value) -> Option<(&'static str, &'static str)> {
    let action_ok = row["conversionAction"].as_str().is_some_and(|a| {
        let parts: Vec<&str> = a.split('/').collect();
        parts.len() == 4
            && parts[0] == "customers"
            && parts[2] == "conversionActions"
            && digits(&json!(parts[1]), None)
            && digits(&json!(parts[3]), None)
    });
    if !action_ok {
        return Some(("requestError", "INVALID_RESOURCE_NAME"));
    }
    if method == "uploadClickConversions" {
        if !ads_datetime(&row["conversionDateTime"]) {
            return Some(("dateError", "INVALID_FIELD_FORMAT"));
        }
        if row.get("gbraid").is_some() && row.get("wbraid").is_some() {
            return Some(("conversionUploadError", "GBRAID_WBRAID_BOTH_SET"));
        }
        let ids = row["userIdentifiers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if ids.len() > 5 {
            return Some(("collectionSizeError", "TOO_MANY"));
        }
        for id in &ids {
            let keys: Vec<&String> = id
                .as_object()
                .map(|o| o.keys().filter(|k| *k != "userIdentifierSource").collect())
                .unwrap_or_default();
            let ok = keys.len() == 1
                && ["hashedEmail", "hashedPhoneNumber"].contains(&keys[0].as_str())
                && hex64(&id[keys[0].as_str()]);
            if !ok {
                return Some(("conversionUploadError", "UNSUPPORTED_USER_IDENTIFIER"));
            }
        }
        if ids.is_empty()
            && ["gclid", "gbraid", "wbraid"]
                .iter()
                .all(|k| row.get(*k).is_none())
        {
            return Some(("conversionUploadError", "INVALID_USER_IDENTIFIER"));
        }
        if row["gclid"] == CLICK_NOT_FOUND {
            return Some(("conversionUploadError", "CLICK_NOT_FOUND"));
        }
    } else {
        let kind = row["adjustmentType"].as_str().unwrap_or("");
        if !["RETRACTION", "RESTATEMENT", "ENHANCEMENT"].contains(&kind) {
            return Some(("conversionAdjustmentUploadError", "INVALID_ADJUSTMENT_TYPE"));
        }
        if !ads_datetime(&row["adjustmentDateTime"]) {
            return Some(("dateError", "INVALID_FIELD_FORMAT"));
        }
        if kind == "RETRACTION" && row.get("restatementValue").is_some() {
            return Some((
                "conversionAdjustmentUploadError",
                "RESTATEMENT_VALUE_NOT_ALLOWED_FOR_RETRACTION",
            ));
        }
        if kind == "RESTATEMENT" && row["restatementValue"]["adjustedValue"].as_f64().is_none() {
            return Some((
                "conversionAdjustmentUploadError",
                "MISSING_RESTATEMENT_VALUE",
            ));
        }
        if row.get("orderId").is_some() && row.get("gclidDateTimePair").is_some() {
            return Some((
                "conversionAdjustmentUploadError",
                "GCLID_DATE_TIME_PAIR_AND_ORDER_ID_BOTH_SET",
            ));
        }
        if row["orderId"] == ADS_UNKNOWN_ORDER {
            return Some(("conversionAdjustmentUploadError", "CONVERSION_NOT_FOUND"));
        }
    }
    None
}

async fn ads_upload(
    State(inner): State<Shared>,
    Path((version, op)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut g = inner.lock().unwrap();
    if !authorized(&g, &headers) {
        return google_error(401, "UNAUTHENTICATED", vec![]);
    }
    let Some((customer, method)) = op.split_once(':') else {
        return google_error(404, "NOT_FOUND", vec![]);
    };
    let field = match method {
        "uploadClickConversions" => "conversions",
        "uploadConversionAdjustments" => "conversionAdjustments",
        _ => return google_error(404, "NOT_FOUND", vec![]),
    };
    let login_ok = headers
        .get("login-customer-id")
        .is_none_or(|v| digits(&json!(v.to_str().unwrap_or("")), Some(10)));
    if !version.starts_with('v') || !digits(&json!(customer), Some(10)) || !login_ok {
        return google_error(400, "INVALID_ARGUMENT", vec![]);
    }
    if body["partialFailure"] != true || body.get("debugEnabled").is_some() {
        return google_error(400, "INVALID_ARGUMENT", vec![]);
    }
    let rows = body[field].as_array().cloned().unwrap_or_default();
    if rows.is_empty() || rows.len() > 2000 {
        return google_error(400, "INVALID_ARGUMENT", vec![]);
    }
    let mut errors = Vec::new();
    let mut results = Vec::new();
    let mut failed_rows = Vec::new();
    let path_name = if field == "conversions" {
        "conversions"
    } else {
        "conversion_adjustments"
    };
    for (i, row) in rows.iter().enumerate() {
        match ads_row_error(method, row) {
            Some((family, code)) => {
                failed_rows.push(i);
                results.push(json!({}));
                errors.push(
                    json!({"errorCode": { family: code }, "message": "row refused",
                    "location": {"fieldPathElements": [{"fieldName": path_name, "index": i}]}}),
                );
            }
            None => results.push(json!({"conversionAction": row["conversionAction"]})),
        }
    }
    g.uploads.push(Upload {
        method: method.to_owned(),
        body,
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        failed_rows,
    });
    let mut answer = json!({"results": results, "jobId": "2147483999"});
    if !errors.is_empty() {
        answer["partialFailureError"] = json!({"code": 3, "message": "partial failure",
            "details": [{"@type": "type.googleapis.com/google.ads.googleads.v23.errors.GoogleAdsFailure",
                         "errors": errors, "requestId": "ads-req-1"}]});
    }
    let mut response = Json(answer).into_response();
    response
        .headers_mut()
        .insert("request-id", HeaderValue::from_static("ads-req-1"));
    response
}

impl FakeGoogle {
    /// Starts the fake on a free port.
    pub async fn start() -> Self {
        let inner: Shared = Arc::default();
        let app = axum::Router::new()
            .route("/token", post(token))
            .route("/v1/events:ingest", post(ingest))
            .route("/v1/requestStatus:retrieve", get(status))
            .route("/{version}/customers/{op}", post(ads_upload))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base_url, inner }
    }

    /// The token endpoint's URL.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.base_url)
    }

    /// Access tokens live `secs` seconds from now on.
    pub fn set_token_ttl(&self, secs: u64) {
        self.inner.lock().unwrap().token_ttl = secs;
    }

    /// Refuse the refresh token (`invalid_grant`) and every access token issued so far, or
    /// accept it again.
    pub fn set_revoked(&self, revoked: bool) {
        let mut g = self.inner.lock().unwrap();
        g.revoked = revoked;
        if revoked {
            g.tokens.clear();
        }
    }

    /// Forget every access token issued so far (the API answers 401 to them) without
    /// touching the refresh token.
    pub fn expire_access_tokens(&self) {
        self.inner.lock().unwrap().tokens.clear();
    }

    /// Access tokens granted so far.
    pub fn grants(&self) -> usize {
        self.inner.lock().unwrap().grants
    }

    /// Answer the next `events:ingest` requests with these statuses (and `Retry-After`).
    pub fn script(&self, replies: impl IntoIterator<Item = (u16, Option<u64>)>) {
        self.inner.lock().unwrap().script.extend(replies);
    }

    /// Report `PROCESSING` for the first `n` status requests of every request.
    pub fn set_pending_polls(&self, n: usize) {
        self.inner.lock().unwrap().pending_polls = n;
    }

    /// Every `n`-th request fails with 503 (a destination storm; 0: none).
    pub fn set_storm(&self, every: u32) {
        self.set_storm_of(every, leadpipe_consumer::testing::Strike::Unavailable);
    }

    /// Every `n`-th request to the data endpoint is struck with `strike` (0: none).
    pub fn set_storm_of(&self, every: u32, strike: leadpipe_consumer::testing::Strike) {
        self.inner.lock().unwrap().storm.set(every, strike);
    }

    /// Delay every `events:ingest` answer.
    pub fn set_latency(&self, latency: Duration) {
        self.inner.lock().unwrap().latency = latency;
    }

    /// Every `events:ingest` request so far.
    pub fn ingests(&self) -> Vec<Ingest> {
        self.inner.lock().unwrap().ingests.clone()
    }

    /// How many events accepted `events:ingest` requests carried, repeats included.
    pub fn accepted_count(&self) -> usize {
        self.inner.lock().unwrap().accepted
    }

    /// Every status request so far: (request id, when).
    pub fn polls(&self) -> Vec<(String, Instant)> {
        self.inner.lock().unwrap().polls.clone()
    }

    /// Every Google Ads API upload so far.
    pub fn uploads(&self) -> Vec<Upload> {
        self.inner.lock().unwrap().uploads.clone()
    }

    /// Events of accepted `events:ingest` requests, with repeats: (request id, event).
    pub fn accepted_events(&self) -> Vec<(String, Value)> {
        self.ingests()
            .into_iter()
            .filter_map(|i| Some((i.request_id?, i.body)))
            .flat_map(|(id, body)| {
                body["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |e| (id.clone(), e))
            })
            .collect()
    }

    /// Every transactionId carried by any `events:ingest` request, with repeats.
    pub fn transaction_ids_sent(&self) -> Vec<String> {
        self.ingests()
            .iter()
            .flat_map(|i| {
                i.body["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| e["transactionId"].as_str().unwrap_or_default().to_owned())
            })
            .collect()
    }
}

/// The customer the end-to-end senders upload to.
pub const CUSTOMER_ID: &str = "1234567890";
/// The conversion action the end-to-end senders use.
pub const CONVERSION_ACTION_ID: &str = "555000111";

/// A fake, for the end-to-end support.
pub async fn start() -> Arc<dyn leadpipe_consumer::testing::FakeDestination> {
    Arc::new(FakeGoogle::start().await)
}

impl leadpipe_consumer::testing::FakeDestination for FakeGoogle {
    fn destination(&self) -> leadpipe_bus::Destination {
        crate::DESTINATION
    }
    fn sender_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GOOGLE_DATA_MANAGER_BASE_URL", self.base_url.clone()),
            ("GOOGLE_ADS_API_BASE_URL", self.base_url.clone()),
            ("GOOGLE_OAUTH_TOKEN_URL", self.token_url()),
            ("GOOGLE_ADS_CUSTOMER_ID", CUSTOMER_ID.into()),
            (
                "GOOGLE_ADS_CONVERSION_ACTION_ID",
                CONVERSION_ACTION_ID.into(),
            ),
            ("GOOGLE_ADS_CLIENT_ID", "client-id".into()),
            ("GOOGLE_ADS_CLIENT_SECRET", "client-secret".into()),
            ("GOOGLE_ADS_REFRESH_TOKEN", REFRESH_TOKEN.into()),
            ("GOOGLE_DM_STATUS_DELAY_SECS", "1".into()),
            ("GOOGLE_DM_STATUS_DELAY_MAX_SECS", "2".into()),
        ]
    }
    fn ad_consent(&self) -> leadpipe_consumer::testing::AdConsent {
        leadpipe_consumer::testing::AdConsent::Blocks
    }
    fn refuses(&self, event: &Value) -> bool {
        event["attribution"]["gclid"] == CLICK_NOT_FOUND
    }
    fn kept(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for (_, e) in self.accepted_events() {
            *counts
                .entry(format!("{}/{}", e["transactionId"], e["conversionValue"]))
                .or_default() += 1;
        }
        counts
    }
    fn kept_by_event_id(&self) -> bool {
        false
    }
    fn requests_seen(&self) -> usize {
        self.ingests().len()
    }
    fn bodies(&self) -> Vec<String> {
        self.ingests().iter().map(|r| r.body.to_string()).collect()
    }
    fn event_ids_with_user_data(&self) -> Vec<String> {
        // Google's requests carry transaction ids, not event ids.
        Vec::new()
    }
    fn set_storm_of(&self, every: u32, strike: leadpipe_consumer::testing::Strike) {
        FakeGoogle::set_storm_of(self, every, strike);
    }
    fn set_latency(&self, latency: Duration) {
        FakeGoogle::set_latency(self, latency);
    }
    fn set_lean(&self) {}
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
