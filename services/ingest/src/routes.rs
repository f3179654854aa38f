//! The HTTP API (SPEC §3).
//!
//! Each `/v1` request goes through the same steps, in this order, so that the cheapest
//! refusal comes first: requests in flight (503 overloaded) → media type (415) → what the
//! headers decide, before any body is read: source, timestamp, signature format (401) and a
//! declared length (413) → the body, within `INGEST_BODY_TIMEOUT_MS` (408) and the size limit
//! (413) → signature (401) → rate limit (429) → JSON (400) → validation (422) → publish and
//! confirm (503 or 202). A batch is parsed before its rate check, which counts its events.

use std::num::NonZeroU32;
use std::time::Instant;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use leadpipe_bus::headers::TRACEPARENT;
use leadpipe_bus::publisher::string_headers;
use leadpipe_bus::{Names, OutgoingMessage};
use leadpipe_config::sources::Source;
use leadpipe_events::{
    BodyError, Envelope, FieldError, SCHEMA_VERSION, ValidatedEvent, ValidationContext, codes,
};
use leadpipe_telemetry::otel;
use leadpipe_telemetry::traceparent::TraceParent;

use crate::auth;
use crate::cfg::MAX_BATCH_EVENTS;
use crate::error::ApiError;
use crate::state::AppState;

/// `POST /v1/events`.
pub async fn post_event(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let result = accept_one(&app, &headers, body).await;
    finish(&app, &headers, "event", started, result)
}

/// `POST /v1/events/batch`.
pub async fn post_batch(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let result = accept_batch(&app, &headers, body).await;
    finish(&app, &headers, "batch", started, result)
}

/// `POST /v1/sources/{id}/webhook`.
pub async fn post_webhook(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let result = accept_webhook(&app, &id, &headers, body).await;
    finish(&app, &headers, "webhook", started, result)
}

/// `GET /v1/schema`: the JSON Schema generated from the event types.
pub async fn schema() -> Json<Value> {
    Json(leadpipe_events::validate::schema().clone())
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> StatusCode {
    StatusCode::OK
}

/// `GET /readyz`: a confirm channel to the broker is open.
pub async fn readyz(State(app): State<AppState>) -> Response {
    if app.publisher.is_ready() {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": "no confirmed channel to RabbitMQ"})),
        )
            .into_response()
    }
}

/// `GET /metrics`.
pub async fn metrics(State(app): State<AppState>) -> Response {
    app.metrics
        .broker_ready
        .set(i64::from(app.publisher.is_ready()));
    (
        [(
            header::CONTENT_TYPE,
            leadpipe_telemetry::metrics::CONTENT_TYPE,
        )],
        leadpipe_telemetry::metrics::render(&app.metrics.registry),
    )
        .into_response()
}

fn finish(
    app: &AppState,
    headers: &HeaderMap,
    endpoint: &str,
    started: Instant,
    result: Result<Response, ApiError>,
) -> Response {
    let response = result.unwrap_or_else(|e| {
        match &e {
            ApiError::Unavailable { reason, .. } => {
                tracing::warn!(endpoint, %reason, "event not accepted: broker unavailable");
            }
            other => tracing::info!(endpoint, error = %other, "request refused"),
        }
        e.into_response()
    });
    // Only configured source ids become label values, so a caller cannot grow the series.
    let source = auth::claimed_source(headers)
        .filter(|id| app.sources.iter().any(|s| s.id == *id))
        .unwrap_or("unknown");
    app.metrics
        .requests
        .with_label_values(&[source, response.status().as_str()])
        .inc();
    app.metrics
        .latency
        .with_label_values(&[endpoint])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Steps shared by both endpoints, up to the authenticated raw body.
async fn authenticate<'a>(
    app: &'a AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(&'a Source, Bytes), ApiError> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false);
    if !json_type {
        return Err(ApiError::UnsupportedMediaType);
    }
    // Everything the headers decide, before a byte of the body is read.
    let claimed = auth::precheck(&app.sources, headers, Utc::now().timestamp())?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.max_body_bytes as u64) {
        return Err(ApiError::PayloadTooLarge(app.max_body_bytes));
    }
    let bytes = tokio::time::timeout(app.body_timeout, read_limited(body, app.max_body_bytes))
        .await
        .map_err(|_| ApiError::BodyTimeout(app.body_timeout.as_millis()))??;
    let source = claimed.verify(&bytes)?;
    Ok((source, bytes))
}

async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::PayloadTooLarge(limit))
        }
        Err(e) => Err(ApiError::InvalidJson(format!(
            "the body could not be read: {e}"
        ))),
    }
}

fn rate_limit(app: &AppState, source: &Source, events: usize) -> Result<(), ApiError> {
    let Some(limiter) = app.limiters.get(&source.id) else {
        return Ok(());
    };
    // A batch costs its number of events. One larger than a second's worth never fits.
    let n = u32::try_from(events.max(1)).unwrap_or(u32::MAX);
    let over = || ApiError::BatchOverRateLimit {
        source_id: source.id.clone(),
        events,
        limit: source.rate_limit_per_second,
    };
    if n > source.rate_limit_per_second.max(1) {
        return Err(over());
    }
    let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    match limiter.check_n(n) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(not_until)) => {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&app.clock));
            Err(ApiError::RateLimited {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            })
        }
        // n is at most the bucket size, so this is not reached.
        Err(_) => Err(over()),
    }
}

/// A validated event, ready to publish.
struct Accepted {
    event_id: String,
    event_name: String,
    body: Vec<u8>,
}

fn context<'a>(app: &'a AppState, source: &'a Source) -> ValidationContext<'a> {
    ValidationContext {
        source_id: &source.id,
        default_region: source.default_region.as_deref(),
        custom_events: &app.custom_events,
        now: Utc::now(),
    }
}

fn count_rejections(app: &AppState, source: &Source, errors: &[FieldError]) {
    for e in errors {
        app.metrics
            .rejected
            .with_label_values(&[source.id.as_str(), e.code])
            .inc();
    }
}

fn envelope(valid: ValidatedEvent) -> Accepted {
    let event_name = valid.event.name().to_owned();
    let envelope = Envelope {
        schema_version: SCHEMA_VERSION,
        event_id: valid.event_id.clone(),
        ingested_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        event: valid.event,
    };
    let body = serde_json::to_vec(&envelope).expect("an envelope always serializes");
    Accepted {
        event_id: valid.event_id,
        event_name,
        body,
    }
}

fn validate(app: &AppState, source: &Source, value: &Value) -> Result<Accepted, Vec<FieldError>> {
    leadpipe_events::validate_event(value, &context(app, source))
        .inspect_err(|errors| count_rejections(app, source, errors))
        .map(envelope)
}

async fn publish(
    app: &AppState,
    source: &Source,
    event: &Accepted,
    trace: &TraceParent,
) -> Result<(), String> {
    let names: &Names = app.publisher.names();
    let exchange = names.events_exchange();
    // The publish's own span: its id is what the message carries on.
    let publish_trace = trace.child();
    let routing_key = Names::event_routing_key(&event.event_name, &source.id);
    let msg = OutgoingMessage {
        exchange: &exchange,
        routing_key: &routing_key,
        body: &event.body,
        message_id: &event.event_id,
        headers: string_headers([(TRACEPARENT, publish_trace.to_string())]),
        expiration_ms: None,
    };
    let started = std::time::SystemTime::now();
    let published = app.publisher.publish(&msg).await;
    if otel::enabled() {
        otel::Span::start_at(
            format!("publish {exchange}"),
            otel::Kind::Producer,
            &publish_trace,
            Some(&trace.parent_id),
            started,
        )
        .attribute("messaging.message.id", event.event_id.clone())
        .attribute("leadpipe.event_name", event.event_name.clone())
        .attribute("leadpipe.source", source.id.clone())
        .attribute("leadpipe.published", published.is_ok().to_string())
        .end();
    }
    match published {
        Ok(()) => {
            app.metrics
                .published
                .with_label_values(&[source.id.as_str(), event.event_name.as_str()])
                .inc();
            // Debug, not info: one line per event costs a measurable share of ingest's CPU at
            // thousands of events per second; the delivery log is where an event is traced.
            tracing::debug!(
                event_id = %event.event_id,
                source = %source.id,
                event_name = %event.event_name,
                traceparent = %trace,
                "event accepted"
            );
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The trace of one request: its own span, continuing the caller's when it sent a valid
/// `traceparent`.
struct RequestTrace {
    /// The request span's ids (what the publishes continue).
    context: TraceParent,
    /// The caller's span id.
    caller: Option<String>,
    start: std::time::SystemTime,
}

impl RequestTrace {
    /// Exports the request's span (when export is on).
    fn end(&self, route: &str, status: StatusCode) {
        if otel::enabled() {
            otel::Span::start_at(
                format!("POST {route}"),
                otel::Kind::Server,
                &self.context,
                self.caller.as_deref(),
                self.start,
            )
            .attribute("http.route", route.to_owned())
            .attribute("http.response.status_code", status.as_u16().to_string())
            .end();
        }
    }
}

fn trace_of(headers: &HeaderMap) -> RequestTrace {
    let incoming = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    RequestTrace {
        context: incoming
            .as_ref()
            .map(TraceParent::child)
            .unwrap_or_else(TraceParent::new_root),
        caller: incoming.map(|t| t.parent_id),
        start: std::time::SystemTime::now(),
    }
}

async fn accept_one(app: &AppState, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let (source, bytes) = authenticate(app, headers, body).await?;
    rate_limit(app, source, 1)?;
    let event = match leadpipe_events::validate_body(&bytes, &context(app, source)) {
        Ok(valid) => envelope(valid),
        Err(BodyError::InvalidJson(e)) => return Err(ApiError::InvalidJson(e)),
        Err(BodyError::Invalid(errors)) => {
            count_rejections(app, source, &errors);
            return Err(ApiError::Validation(errors));
        }
    };
    publish_one(app, source, headers, event, "/v1/events").await
}

/// Publishes one accepted event and answers `202`, or `503`.
async fn publish_one(
    app: &AppState,
    source: &Source,
    headers: &HeaderMap,
    event: Accepted,
    route: &str,
) -> Result<Response, ApiError> {
    let trace = trace_of(headers);
    let published = publish(app, source, &event, &trace.context).await;
    if let Err(reason) = published {
        trace.end(route, StatusCode::SERVICE_UNAVAILABLE);
        return Err(ApiError::Unavailable {
            reason,
            results: None,
        });
    }
    trace.end(route, StatusCode::ACCEPTED);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"event_id": event.event_id, "status": "accepted"})),
    )
        .into_response())
}

async fn accept_webhook(
    app: &AppState,
    path_id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (source, bytes) = authenticate(app, headers, body).await?;
    if source.id != path_id {
        return Err(auth::AuthError::PathMismatch.into());
    }
    let Some(field_map) = &source.webhook else {
        return Err(ApiError::NotFound(format!(
            "source {:?} has no webhook field map ([sources.webhook] in the sources file)",
            source.id
        )));
    };
    rate_limit(app, source, 1)?;
    let native: Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let (mapped, origins) = crate::webhook::map(field_map, &source.id, &native);
    let valid =
        leadpipe_events::validate_event(&mapped, &context(app, source)).map_err(|mut errors| {
            count_rejections(app, source, &errors);
            for e in &mut errors {
                if let Some(pointer) = origins.get(&e.field) {
                    e.message = format!("{} (mapped from {pointer})", e.message);
                }
            }
            ApiError::Validation(errors)
        })?;
    publish_one(
        app,
        source,
        headers,
        envelope(valid),
        "/v1/sources/{source_id}/webhook",
    )
    .await
}

async fn accept_batch(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (source, bytes) = authenticate(app, headers, body).await?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let Value::Array(items) = value else {
        return Err(ApiError::Validation(vec![FieldError::new(
            "",
            codes::INVALID_TYPE,
            "a batch is a JSON array of events",
        )]));
    };
    if items.is_empty() || items.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::Validation(vec![FieldError::new(
            "",
            codes::TOO_MANY,
            format!(
                "a batch holds 1 to {MAX_BATCH_EVENTS} events, not {}",
                items.len()
            ),
        )]));
    }
    rate_limit(app, source, items.len())?;
    let trace = trace_of(headers);
    let checked: Vec<_> = items.iter().map(|v| validate(app, source, v)).collect();
    let outcomes = futures::future::join_all(checked.iter().map(|c| async {
        match c {
            Ok(event) => Some(publish(app, source, event, &trace.context).await),
            Err(_) => None,
        }
    }))
    .await;
    let mut failure = None;
    let results: Vec<Value> = checked
        .iter()
        .zip(outcomes)
        .enumerate()
        .map(|(index, (checked, outcome))| match (checked, outcome) {
            (Ok(e), Some(Ok(()))) => {
                json!({"index": index, "status": "accepted", "event_id": e.event_id})
            }
            (Ok(e), Some(Err(reason))) => {
                failure.get_or_insert(reason);
                json!({"index": index, "status": "unavailable", "event_id": e.event_id})
            }
            (Ok(e), None) => {
                failure.get_or_insert_with(|| "not published".to_owned());
                json!({"index": index, "status": "unavailable", "event_id": e.event_id})
            }
            (Err(errors), _) => json!({"index": index, "status": "rejected", "errors": errors}),
        })
        .collect();
    if let Some(reason) = failure {
        trace.end("/v1/events/batch", StatusCode::SERVICE_UNAVAILABLE);
        return Err(ApiError::Unavailable {
            reason,
            results: Some(Value::Array(results)),
        });
    }
    trace.end("/v1/events/batch", StatusCode::OK);
    Ok((StatusCode::OK, Json(json!({"results": results}))).into_response())
}
