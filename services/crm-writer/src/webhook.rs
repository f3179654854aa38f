//! The signed webhook kind: one POST per event, signed with the Standard Webhooks scheme
//! (`contracts/hubspot.md` §6): `webhook-id` = the event id (the receiver's dedupe key, the
//! same on every retry), `webhook-timestamp` of this attempt, `webhook-signature` =
//! `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use leadpipe_consumer::{Failure, Outcome, http};

/// The HMAC key of a `CRM_WEBHOOK_SECRET`: the base64 after `whsec_`, decoded; a secret
/// without the prefix is used as its bytes.
pub fn signing_key(secret: &SecretString) -> Result<Vec<u8>, String> {
    let s = secret.expose_secret().trim();
    let key = match s.strip_prefix("whsec_") {
        Some(b64) => STANDARD
            .decode(b64)
            .map_err(|_| "the part after whsec_ must be base64".to_owned())?,
        None => s.as_bytes().to_vec(),
    };
    if key.len() < 16 {
        return Err("must hold at least 16 bytes of key".into());
    }
    Ok(key)
}

/// `v1,<signature>` of `body` for message `id` at `timestamp`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-id` of an event: its id, unless that holds a `.` (which the scheme reserves
/// as the delimiter), then a stable digest of it.
pub fn message_id(event_id: &str) -> String {
    if event_id.is_empty() || event_id.contains('.') {
        format!("evt_{}", &leadpipe_events::sha256_hex(event_id)[..32])
    } else {
        event_id.to_owned()
    }
}

/// Posts signed events to one URL.
pub struct WebhookClient {
    http: reqwest::Client,
    url: String,
    key: Vec<u8>,
}

impl WebhookClient {
    /// A client for `url` signing with `key`.
    pub fn new(timeout: std::time::Duration, url: &str, key: Vec<u8>) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                // A redirect is a wrong URL, not something to follow with a signed body.
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(32)
                .build()
                .expect("an HTTP client builds"),
            url: url.to_owned(),
            key,
        }
    }

    /// Posts `body` for `event_id`: 2xx and 409 ("already exists") are delivered.
    pub async fn post(&self, event_id: &str, body: Vec<u8>, traceparent: Option<&str>) -> Outcome {
        let id = message_id(event_id);
        let ts = chrono::Utc::now().timestamp();
        let signature = sign(&self.key, &id, ts, &body);
        let mut request = self.http.post(&self.url);
        if let Some(t) = traceparent {
            request = request.header("traceparent", t);
        }
        let response = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return http::transport_failure("the CRM webhook", &e),
        };
        let status = response.status();
        let code = status.as_u16();
        if status.is_success() || code == 409 {
            return Outcome::Sent {
                reference: Some(id),
                http_status: Some(code),
            };
        }
        if status.is_redirection() || code == 410 {
            // A moved or retired endpoint refuses everything alike: pause, don't dead-letter.
            return Outcome::Systemic(
                Failure::new(
                    format!("http_{code}"),
                    "the CRM webhook endpoint moved or was retired (check CRM_WEBHOOK_URL)",
                )
                .with_status(code),
            );
        }
        let retry_after = http::retry_after(response.headers());
        http::status_outcome("the CRM webhook", status, retry_after).unwrap_or(Outcome::Sent {
            reference: Some(id),
            http_status: Some(code),
        })
    }

    /// Whether the endpoint answers at all (a GET, which a webhook receiver does not act on).
    pub async fn probe(&self) -> bool {
        match self.http.get(&self.url).send().await {
            Ok(r) => {
                !r.status().is_server_error()
                    && r.status().as_u16() != 401
                    && r.status().as_u16() != 403
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_test_vector_signs_alike() {
        // contracts/hubspot.md §6 (the reference library's own vector).
        let key = signing_key(&SecretString::from(
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        ))
        .unwrap();
        let sig = sign(
            &key,
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    #[test]
    fn bad_secrets_are_refused_and_ids_never_hold_the_delimiter() {
        assert!(signing_key(&SecretString::from("whsec_***")).is_err());
        assert!(signing_key(&SecretString::from("short")).is_err());
        assert_eq!(message_id("abc123"), "abc123");
        let dotted = message_id("fb.1.123");
        assert!(dotted.starts_with("evt_") && !dotted.contains('.'));
        assert_eq!(dotted, message_id("fb.1.123"));
    }
}
