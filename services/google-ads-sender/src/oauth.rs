//! OAuth 2.0 refresh-token flow (RFC 6749 §6) for both Google APIs: one access token, cached
//! and refreshed a minute before it expires, or at once after a 401. A token endpoint that
//! refuses the refresh token (`invalid_grant`, a revoked or expired grant) is systemic: the
//! sender pauses instead of dead-lettering.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;

use leadpipe_consumer::{Failure, Outcome, http};

/// Refresh this long before the token's stated expiry.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// A cached access token.
#[derive(Clone)]
struct Token {
    value: SecretString,
    expires_at: Instant,
}

/// Mints access tokens from the refresh token.
pub struct TokenSource {
    http: reqwest::Client,
    url: String,
    form: SecretString,
    cached: Mutex<Option<Token>>,
}

impl TokenSource {
    /// A source for `client_id`/`client_secret`/`refresh_token` at the token endpoint `url`.
    pub fn new(
        http: reqwest::Client,
        url: &str,
        client_id: &str,
        client_secret: &SecretString,
        refresh_token: &SecretString,
    ) -> Self {
        let form = format!(
            "grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
            http::query_escape(client_id),
            http::query_escape(client_secret.expose_secret()),
            http::query_escape(refresh_token.expose_secret()),
        );
        Self {
            http,
            url: url.to_owned(),
            form: SecretString::from(form),
            cached: Mutex::new(None),
        }
    }

    /// A valid access token: the cached one, or a fresh one.
    pub async fn token(&self) -> Result<SecretString, Outcome> {
        let mut cached = self.cached.lock().await;
        if let Some(t) = cached.as_ref()
            && t.expires_at > Instant::now() + REFRESH_MARGIN
        {
            return Ok(t.value.clone());
        }
        let fresh = self.refresh().await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    /// Forgets the cached token (the API answered 401 with it).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn refresh(&self) -> Result<Token, Outcome> {
        #[derive(Deserialize)]
        struct Answer {
            access_token: Option<String>,
            expires_in: Option<u64>,
            error: Option<String>,
        }
        let response = self
            .http
            .post(&self.url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(self.form.expose_secret().to_owned())
            .send()
            .await
            .map_err(|e| http::transport_failure("Google's token endpoint", &e))?;
        let status = response.status();
        let retry_after = http::retry_after(response.headers());
        let answer: Option<Answer> = response.json().await.ok();
        let error = answer.as_ref().and_then(|a| a.error.clone());
        match answer {
            Some(Answer {
                access_token: Some(token),
                expires_in,
                ..
            }) if status.is_success() => Ok(Token {
                value: SecretString::from(token),
                expires_at: Instant::now() + Duration::from_secs(expires_in.unwrap_or(3600)),
            }),
            _ if status.as_u16() == 429 || status.is_server_error() => Err(Outcome::Retry {
                failure: Failure::new(
                    format!("oauth_http_{}", status.as_u16()),
                    "Google's token endpoint is unavailable",
                )
                .with_status(status.as_u16()),
                retry_after,
            }),
            _ => {
                // invalid_grant (revoked or expired refresh token), invalid_client, …: nothing
                // will be accepted until an operator issues new credentials.
                let code = error.unwrap_or_else(|| format!("http_{}", status.as_u16()));
                Err(Outcome::Systemic(
                    Failure::new(
                        format!("oauth_{code}"),
                        format!(
                            "Google's token endpoint refused the refresh token ({code}): issue a new GOOGLE_ADS_REFRESH_TOKEN"
                        ),
                    )
                    .with_status(status.as_u16()),
                ))
            }
        }
    }
}
