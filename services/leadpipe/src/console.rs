//! `leadpipe console`: the operator console in the browser, served on `CONSOLE_ADDR`.
//!
//! Server-rendered HTML (maud escapes every value). What it shows comes from the same code as
//! the CLI: the event page is `leadpipe trace`'s rows ([`crate::trace::rows`]). The delivery
//! log holds ids, names and codes only, so no page carries personal data.
//!
//! Access: `Authorization: Bearer <CONSOLE_TOKEN>` on every request, `401` without it. With no
//! `CONSOLE_TOKEN` the console refuses to start unless `CONSOLE_ADDR` is a loopback address.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use leadpipe_config::{ConfigError, DatabaseSettings, env};

/// Where the console listens.
pub(crate) const DEFAULT_ADDR: &str = "127.0.0.1:8090";

/// The console's settings.
pub(crate) struct ConsoleSettings {
    /// `CONSOLE_ADDR`.
    pub addr: SocketAddr,
    /// `CONSOLE_TOKEN`: the bearer token every request must carry (none: loopback only, open).
    pub token: Option<SecretString>,
}

impl ConsoleSettings {
    /// Reads `CONSOLE_ADDR` and `CONSOLE_TOKEN`; refuses a non-loopback address without a token.
    pub(crate) fn from_env() -> Result<Self, ConfigError> {
        let addr: SocketAddr = env::parse_or(
            "CONSOLE_ADDR",
            DEFAULT_ADDR.parse().expect("the default address parses"),
            "a socket address such as 127.0.0.1:8090",
        )?;
        let token = env::optional("CONSOLE_TOKEN").map(SecretString::from);
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(ConfigError::invalid(
                "CONSOLE_TOKEN",
                format!(
                    "is not set, and CONSOLE_ADDR {addr} is reachable from other machines: set a \
                     token, or bind to 127.0.0.1"
                ),
            ));
        }
        Ok(Self { addr, token })
    }
}

struct Console {
    pool: PgPool,
    token: Option<SecretString>,
}

/// Runs the console until SIGINT/SIGTERM.
pub(crate) async fn run() -> anyhow::Result<ExitCode> {
    let settings = match ConsoleSettings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("leadpipe console: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let pool = leadpipe_db::connect(&DatabaseSettings::from_env().url, 4).await?;
    let console = Arc::new(Console {
        pool,
        token: settings.token,
    });
    let listener = tokio::net::TcpListener::bind(settings.addr).await?;
    println!(
        "leadpipe console on http://{}/ ({})",
        listener.local_addr()?,
        if console.token.is_some() {
            "send Authorization: Bearer $CONSOLE_TOKEN"
        } else {
            "no CONSOLE_TOKEN: open to this machine only"
        }
    );
    let shutdown = leadpipe_telemetry::shutdown::on_signal();
    axum::serve(listener, router(console))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(ExitCode::SUCCESS)
}

fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(find_event))
        .route("/events", get(find_event))
        .layer(middleware::from_fn_with_state(console.clone(), authorize))
        .with_state(console)
}

/// `401` unless the request carries the bearer token (when one is set).
async fn authorize(State(console): State<Arc<Console>>, request: Request, next: Next) -> Response {
    if let Some(token) = &console.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok =
            given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.expose_secret().as_bytes())));
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                page("Unauthorized", html! { p { "This console needs its token: Authorization: Bearer <CONSOLE_TOKEN>." } }),
            )
                .into_response();
        }
    }
    next.run(request).await
}

#[derive(serde::Deserialize)]
struct FindQuery {
    event_id: Option<String>,
}

/// Find an event: every destination's row for an event_id (`leadpipe trace`'s view).
async fn find_event(State(console): State<Arc<Console>>, Query(q): Query<FindQuery>) -> Response {
    let id = q
        .event_id
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let rows = match &id {
        Some(id) => match crate::trace::rows(&console.pool, id).await {
            Ok(rows) => Some(rows),
            Err(e) => {
                tracing::warn!(error = %e, "console: reading the delivery log failed");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    page("Find an event", html! { p.error { "The delivery log cannot be read right now; try again." } }),
                )
                    .into_response();
            }
        },
        None => None,
    };
    let body = html! {
        form method="get" action="/events" {
            label for="event_id" { "event_id" }
            input id="event_id" name="event_id" value=(id.clone().unwrap_or_default()) size="70";
            button type="submit" { "Find" }
        }
        @if let (Some(id), Some(rows)) = (&id, &rows) {
            @if rows.is_empty() {
                p.empty { "No delivery recorded for " code { (id) } ": " (crate::trace::NOT_FOUND) "." }
            } @else {
                table #deliveries {
                    thead { tr {
                        th { "destination" } th { "event" } th { "status" } th { "attempts" }
                        th { "last HTTP" } th { "error" } th { "reference" } th { "first seen" } th { "updated" }
                    } }
                    tbody {
                        @for r in rows {
                            tr data-destination=(r.destination) {
                                td { (r.destination) } td { (r.event_name) }
                                td.status { (r.status) } td { (r.attempts) }
                                td { (r.last_http_status.map(|s| s.to_string()).unwrap_or_default()) }
                                td { @if let Some(code) = &r.last_error_code {
                                    code { (code) } " " (r.last_error_message.clone().unwrap_or_default())
                                } }
                                td { (r.destination_ref.clone().unwrap_or_default()) }
                                td { (r.first_seen_at.format("%Y-%m-%d %H:%M:%S UTC")) }
                                td { (r.updated_at.format("%Y-%m-%d %H:%M:%S UTC")) }
                            }
                        }
                    }
                }
            }
        }
    };
    (StatusCode::OK, page("Find an event", body)).into_response()
}

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · leadpipe" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                header { strong { "leadpipe" } " console" }
                main { h1 { (title) } (body) }
            }
        }
    }
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:0}header{background:#223;color:#fff;padding:8px 16px}\
main{padding:16px}table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}\
.error{color:#a00}";
