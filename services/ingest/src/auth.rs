//! Request authentication (SPEC §3): HMAC-SHA256 over `"<timestamp>.<raw body>"` with the
//! source's secret, compared in constant time, and a timestamp within 300 s of now.

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;

use leadpipe_config::sources::Source;

use crate::cfg::SIGNATURE_TOLERANCE_SECS;

/// Header naming the source.
pub const SOURCE_HEADER: &str = "x-leadpipe-source";
/// Header carrying the unix timestamp (seconds) that was signed.
pub const TIMESTAMP_HEADER: &str = "x-leadpipe-timestamp";
/// Header carrying `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-leadpipe-signature";

/// Why a request is not authenticated. Each maps to `401 unauthorized` with its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A required header is absent or not text.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// The source id is not in the sources file.
    #[error("unknown source")]
    UnknownSource,
    /// The timestamp is not an integer.
    #[error("X-Leadpipe-Timestamp must be unix seconds")]
    BadTimestamp,
    /// The timestamp is more than 300 s from now.
    #[error("X-Leadpipe-Timestamp is more than 300 seconds from the server's clock")]
    StaleTimestamp,
    /// The signature is not `sha256=<64 hex>`.
    #[error("X-Leadpipe-Signature must be sha256=<lowercase hex HMAC-SHA256>")]
    MalformedSignature,
    /// The signature does not match.
    #[error("signature does not match")]
    BadSignature,
    /// The source in the URL is not the authenticated one.
    #[error("X-Leadpipe-Source does not match the source in the path")]
    PathMismatch,
}

fn header<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, AuthError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(AuthError::MissingHeader(name))
}

/// The source id a request claims, before it is verified (used to label metrics).
pub fn claimed_source(headers: &HeaderMap) -> Option<&str> {
    header(headers, SOURCE_HEADER).ok()
}

/// What the headers alone say of a request, checked before its body is read: a known
/// source, a fresh timestamp and a well-formed signature. Only the HMAC needs the body.
#[derive(Debug)]
pub struct Claimed<'s, 'h> {
    /// The source the request names.
    pub source: &'s Source,
    timestamp: &'h str,
    signature: Vec<u8>,
}

/// Checks everything the headers decide (SPEC §3), before the body is read: an unknown
/// source, a stale timestamp or a malformed signature costs no body.
pub fn precheck<'s, 'h>(
    sources: &'s [Source],
    headers: &'h HeaderMap,
    now_unix: i64,
) -> Result<Claimed<'s, 'h>, AuthError> {
    let source_id = header(headers, SOURCE_HEADER)?;
    let timestamp = header(headers, TIMESTAMP_HEADER)?;
    let signature = header(headers, SIGNATURE_HEADER)?;
    let source = sources
        .iter()
        .find(|s| s.id == source_id)
        .ok_or(AuthError::UnknownSource)?;
    let ts: i64 = timestamp.parse().map_err(|_| AuthError::BadTimestamp)?;
    // abs_diff: no overflow for a timestamp near i64::MIN or MAX.
    if now_unix.abs_diff(ts) > SIGNATURE_TOLERANCE_SECS {
        return Err(AuthError::StaleTimestamp);
    }
    let signature = signature
        .strip_prefix("sha256=")
        .filter(|h| h.len() == 64)
        .and_then(|h| hex::decode(h).ok())
        .ok_or(AuthError::MalformedSignature)?;
    Ok(Claimed {
        source,
        timestamp,
        signature,
    })
}

impl<'s> Claimed<'s, '_> {
    /// Checks the HMAC of `"<timestamp>.<body>"` in constant time; returns the source.
    pub fn verify(self, body: &[u8]) -> Result<&'s Source, AuthError> {
        let mut mac = mac_for(self.source.secret.expose_secret().as_bytes());
        mac.update(self.timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&self.signature)
            .map_err(|_| AuthError::BadSignature)?;
        Ok(self.source)
    }
}

/// Verifies the request's signature against the source it names; returns that source
/// ([`precheck`], then [`Claimed::verify`]).
pub fn verify<'s>(
    sources: &'s [Source],
    headers: &HeaderMap,
    body: &[u8],
    now_unix: i64,
) -> Result<&'s Source, AuthError> {
    precheck(sources, headers, now_unix)?.verify(body)
}

/// `sha256=<hex>` for `body` signed at `timestamp` with `secret` (clients, the CLI and tests).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = mac_for(secret);
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn mac_for(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this cannot fail.
    <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length")
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use secrecy::SecretString;

    use super::*;

    fn sources() -> Vec<Source> {
        vec![Source {
            id: "site-widget".into(),
            secret: SecretString::from("s3cret"),
            default_region: None,
            rate_limit_per_second: 10,
            webhook: None,
        }]
    }

    fn headers(source: &str, ts: i64, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SOURCE_HEADER, HeaderValue::from_str(source).unwrap());
        h.insert(
            TIMESTAMP_HEADER,
            HeaderValue::from_str(&ts.to_string()).unwrap(),
        );
        h.insert(SIGNATURE_HEADER, HeaderValue::from_str(sig).unwrap());
        h
    }

    #[test]
    fn a_correct_signature_within_the_window_is_accepted() {
        let body = br#"{"a":1}"#;
        let sig = sign(b"s3cret", 1_000_000, body);
        let h = headers("site-widget", 1_000_000, &sig);
        assert_eq!(
            verify(&sources(), &h, body, 1_000_299).unwrap().id,
            "site-widget"
        );
    }

    #[test]
    fn the_signature_matches_an_independent_hmac_vector() {
        // HMAC-SHA256(key = "key", message = "1.body"), computed with Python's hmac module.
        assert_eq!(
            sign(b"key", 1, b"body"),
            "sha256=91b5374b153842ad05b2c4eab9349b8321b14703165bd3fb8b034dfb8be98ae5"
        );
    }

    #[test]
    fn every_failure_has_its_own_reason() {
        let body = b"{}";
        let now = 1_000_000;
        let good = sign(b"s3cret", now, body);
        let cases = [
            (headers("other", now, &good), AuthError::UnknownSource),
            (
                headers("site-widget", now - 301, &sign(b"s3cret", now - 301, body)),
                AuthError::StaleTimestamp,
            ),
            (
                headers("site-widget", now + 301, &sign(b"s3cret", now + 301, body)),
                AuthError::StaleTimestamp,
            ),
            (
                headers("site-widget", now, "sha256=abc"),
                AuthError::MalformedSignature,
            ),
            (
                headers("site-widget", now, &good.replace("sha256=", "sha1=")),
                AuthError::MalformedSignature,
            ),
            (
                headers("site-widget", now, &sign(b"wrong", now, body)),
                AuthError::BadSignature,
            ),
            (
                headers("site-widget", now, &sign(b"s3cret", now, b"{ }")),
                AuthError::BadSignature,
            ),
        ];
        for (h, want) in cases {
            assert_eq!(verify(&sources(), &h, body, now).unwrap_err(), want);
        }
        assert_eq!(
            verify(&sources(), &HeaderMap::new(), body, now).unwrap_err(),
            AuthError::MissingHeader(SOURCE_HEADER)
        );
    }
}
