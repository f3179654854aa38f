//! The API's error responses (SPEC §3): `{"error", "message", "errors"}` with the right status.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use leadpipe_events::FieldError;

use crate::auth::AuthError;

/// Seconds a client should wait before retrying after a `503`.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;
/// Seconds a client should wait before retrying after `503 overloaded`.
pub const OVERLOADED_RETRY_AFTER_SECS: u64 = 1;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// `400 invalid_json`.
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    /// `401 unauthorized`.
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    /// `404 not_found`: e.g. a source without a webhook field map.
    #[error("{0}")]
    NotFound(String),
    /// `413 payload_too_large`.
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// `415 unsupported_media_type`.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// `422 validation_failed`, with every field error.
    #[error("the event is not valid: {} field error(s)", .0.len())]
    Validation(Vec<FieldError>),
    /// `408 request_timeout`: the body did not arrive within `INGEST_BODY_TIMEOUT_MS`.
    #[error("the body did not arrive within {0} ms (INGEST_BODY_TIMEOUT_MS)")]
    BodyTimeout(u128),
    /// `429 rate_limited` with `Retry-After`.
    #[error("rate limit of this source exceeded")]
    RateLimited {
        /// Seconds until enough tokens are back.
        retry_after_secs: u64,
    },
    /// `429 batch_over_rate_limit`, without `Retry-After`: the batch holds more events than
    /// the source may send in a second, so it would never pass as it is.
    #[error(
        "a batch of {events} events is more than source {source_id:?} may send in a second \
         ({limit} events, rate_limit_per_second): send smaller batches"
    )]
    BatchOverRateLimit {
        /// The source.
        source_id: String,
        /// Events in the batch.
        events: usize,
        /// The source's limit per second.
        limit: u32,
    },
    /// `503 overloaded` with `Retry-After`: more requests in flight than
    /// `INGEST_MAX_IN_FLIGHT`.
    #[error("too many requests in flight (INGEST_MAX_IN_FLIGHT); try again shortly")]
    Overloaded,
    /// `503 unavailable` with `Retry-After`: the broker did not confirm. For a batch, the
    /// per-item results say which events were accepted anyway.
    #[error("the event could not be stored: {reason}")]
    Unavailable {
        /// Why (not connected, confirm deadline, nack), without event data.
        reason: String,
        /// Per-item results of a batch.
        results: Option<Value>,
    },
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'static str,
    message: String,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
    #[serde(skip_serializing_if = "Option::is_none")]
    results: Option<&'a Value>,
}

impl ApiError {
    /// The HTTP status and the error code of the body.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            Self::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::BatchOverRateLimit { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "batch_over_rate_limit")
            }
            Self::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Self::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let retry_after = match &self {
            Self::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            Self::Unavailable { .. } => Some(UNAVAILABLE_RETRY_AFTER_SECS),
            Self::Overloaded => Some(OVERLOADED_RETRY_AFTER_SECS),
            _ => None,
        };
        let (errors, results) = match &self {
            Self::Validation(e) => (e.as_slice(), None),
            Self::Unavailable { results, .. } => (&[][..], results.as_ref()),
            _ => (&[][..], None),
        };
        let body = Body {
            error: code,
            message: self.to_string(),
            errors,
            results,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
