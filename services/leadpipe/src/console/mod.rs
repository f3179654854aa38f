//! `leadpipe console`: the operator console in the browser, served on `CONSOLE_ADDR`.
//!
//! - [`overview`]: per destination, its queues, its sender's state and its rows of the last
//!   hour and day.
//! - [`events`]: find an event by event_id, lead_id, order_id or source and time range; every
//!   destination's row (`leadpipe trace`'s view, [`crate::trace::find`]).
//! - [`dead_letters`]: each destination's DLQ by error code, and its replay (the same
//!   [`crate::dlq::Dlq`] as `leadpipe dlq`).
//!
//! Server-rendered HTML: maud escapes every value. The delivery log and the DLQ headers hold
//! ids, names and codes only, and no page shows a message body, so no page carries personal
//! data.
//!
//! Access: `Authorization: Bearer <CONSOLE_TOKEN>`, or the session cookie the login form sets
//! for the same token; `401` without either. With no `CONSOLE_TOKEN` the console refuses to
//! start unless `CONSOLE_ADDR` is a loopback address, and answers only requests whose `Host` is
//! one (a page of another site cannot reach it through DNS rebinding). Every form carries a
//! CSRF token; replay needs `CONSOLE_ALLOW_REPLAY=true`.

mod dead_letters;
mod events;
mod layout;
mod overview;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use leadpipe_bus::Destination;
use leadpipe_config::{AmqpSettings, ConfigError, DatabaseSettings, env};
use leadpipe_consumer::Registration;

use layout::Frame;

/// Where the console listens.
pub(crate) const DEFAULT_ADDR: &str = "127.0.0.1:8090";

/// Where the console reads each sender's `/readyz`: `{service}` and `{port}` are the
/// destination's service name and metrics port.
pub(crate) const DEFAULT_SENDER_URL: &str = "http://127.0.0.1:{port}";

/// The session cookie the login form sets.
const COOKIE: &str = "leadpipe_console";

/// The console's settings.
pub(crate) struct ConsoleSettings {
    /// `CONSOLE_ADDR`.
    pub addr: SocketAddr,
    /// `CONSOLE_TOKEN`: the bearer token every request must carry (none: loopback only, open).
    pub token: Option<SecretString>,
    /// `CONSOLE_ALLOW_REPLAY`: whether the dead letters page may replay.
    pub allow_replay: bool,
    /// `CONSOLE_SENDER_URL`: where each sender's `/readyz` is.
    pub sender_url: String,
    /// `CONSOLE_SENDERS`: destinations whose sender is elsewhere (`meta=http://host:9101,…`).
    pub senders: HashMap<Destination, String>,
    /// `RABBITMQ_MANAGEMENT_URL`: the broker's management API, for the queues' rates.
    pub management: Option<String>,
}

impl ConsoleSettings {
    /// Reads the `CONSOLE_*` variables; refuses a non-loopback address without a token.
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
        let allow_replay = env::flag("CONSOLE_ALLOW_REPLAY", false)?;
        let sender_url = env::string_or("CONSOLE_SENDER_URL", DEFAULT_SENDER_URL);
        let probe = sender_url
            .replace("{service}", "sender")
            .replace("{port}", "9101");
        env::check_base_url("CONSOLE_SENDER_URL", &probe)?;
        let mut senders = HashMap::new();
        for entry in env::optional("CONSOLE_SENDERS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let Some((name, url)) = entry.split_once('=') else {
                return Err(ConfigError::invalid(
                    "CONSOLE_SENDERS",
                    format!("entry {entry:?} is not destination=url"),
                ));
            };
            let d = leadpipe_registry::REGISTRY
                .parse_named("CONSOLE_SENDERS", name.trim())?
                .destination;
            senders.insert(d, env::check_base_url("CONSOLE_SENDERS", url.trim())?);
        }
        let management = env::optional("RABBITMQ_MANAGEMENT_URL")
            .map(|u| env::check_base_url("RABBITMQ_MANAGEMENT_URL", &u))
            .transpose()?;
        Ok(Self {
            addr,
            token,
            allow_replay,
            sender_url,
            senders,
            management,
        })
    }
}

/// What every handler shares.
pub(super) struct Console {
    pool: PgPool,
    token: Option<SecretString>,
    /// The session cookie's value for the token (a hash of it, never the token itself).
    session: Option<String>,
    /// The CSRF token every form carries (random per process).
    csrf: String,
    allow_replay: bool,
    sender_url: String,
    senders: HashMap<Destination, String>,
    management: Option<String>,
    amqp: AmqpSettings,
    http: reqwest::Client,
    /// The enabled destinations.
    destinations: Vec<&'static Registration>,
    /// Dead letters and replays.
    dead_letters: dead_letters::State,
    /// The last count of the last 24 hours, reused while counting it is slow.
    day_counts: overview::DayCounts,
}

impl Console {
    /// The frame of a page for this request.
    fn frame(&self, headers: &HeaderMap) -> Frame<'_> {
        Frame {
            logout_csrf: session_cookie(headers)
                .is_some()
                .then_some(self.csrf.as_str()),
        }
    }

    /// The registration of an enabled destination, by any of its names.
    fn destination(&self, name: &str) -> Option<&'static Registration> {
        let d = crate::dlq::destination(name).ok()?;
        self.destinations
            .iter()
            .copied()
            .find(|r| r.destination == d)
    }

    /// `403` unless `given` is this process's CSRF token.
    #[allow(clippy::result_large_err)]
    fn check_csrf(&self, headers: &HeaderMap, given: &str) -> Result<(), Response> {
        if bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes())) {
            return Ok(());
        }
        Err(self.refuse(
            headers,
            StatusCode::FORBIDDEN,
            "The form's CSRF token is missing or stale (the console restarted?): reload the page and submit again.",
        ))
    }

    /// An error page.
    fn refuse(&self, headers: &HeaderMap, status: StatusCode, why: &str) -> Response {
        (
            status,
            layout::page(
                &self.frame(headers),
                status.canonical_reason().unwrap_or("Error"),
                html! { p.error { (why) } },
            ),
        )
            .into_response()
    }

    /// `503`: the delivery log or the broker cannot be read.
    fn unavailable(
        &self,
        headers: &HeaderMap,
        what: &str,
        error: &dyn std::fmt::Display,
    ) -> Response {
        tracing::warn!(error = %error, "console: reading {what} failed");
        self.refuse(
            headers,
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("{what} cannot be read right now; try again. ({error})"),
        )
    }
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
    let (amqp, destinations) = match (AmqpSettings::from_env(), leadpipe_registry::enabled()) {
        (Ok(a), Ok(d)) => (a, d),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("leadpipe console: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let db = DatabaseSettings::from_env();
    // Enough connections for the overview's queries at once.
    let pool = match leadpipe_db::connect(&db.url, 8).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "leadpipe console: cannot reach the delivery log at DATABASE_URL ({}): {e}",
                leadpipe_config::redacted_url(&db.url)
            );
            return Ok(ExitCode::from(1));
        }
    };
    let session = settings
        .token
        .as_ref()
        .map(|t| session_value(t.expose_secret()));
    let console = Arc::new(Console {
        pool,
        token: settings.token,
        session,
        csrf: hex::encode(rand::rng().random::<[u8; 32]>()),
        allow_replay: settings.allow_replay,
        sender_url: settings.sender_url,
        senders: settings.senders,
        management: settings.management,
        amqp,
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(2))
            .build()?,
        dead_letters: dead_letters::State::new(&destinations),
        day_counts: overview::DayCounts::default(),
        destinations,
    });
    let listener = tokio::net::TcpListener::bind(settings.addr).await?;
    println!(
        "leadpipe console on http://{}/ ({}; replay {})",
        listener.local_addr()?,
        if console.token.is_some() {
            "log in with CONSOLE_TOKEN, or send Authorization: Bearer $CONSOLE_TOKEN"
        } else {
            "no CONSOLE_TOKEN: open to this machine only"
        },
        if console.allow_replay {
            "allowed"
        } else {
            "off: CONSOLE_ALLOW_REPLAY=true to allow it"
        }
    );
    let shutdown = leadpipe_telemetry::shutdown::on_signal();
    axum::serve(listener, router(console))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(ExitCode::SUCCESS)
}

fn router(console: Arc<Console>) -> Router {
    let pages = Router::new()
        .route("/", get(overview::page))
        .route("/events", get(events::page))
        .route("/dead-letters", get(dead_letters::index))
        .route("/dead-letters/{destination}", get(dead_letters::page))
        .route("/dead-letters/{destination}/plan", post(dead_letters::plan))
        .route(
            "/dead-letters/{destination}/replay",
            post(dead_letters::replay),
        )
        .route("/replays/{id}", get(dead_letters::progress))
        .route("/logout", post(logout))
        .layer(middleware::from_fn_with_state(console.clone(), authorize));
    Router::new()
        .merge(pages)
        .route("/login", get(login_page).post(login))
        .route(
            "/assets/console.css",
            get(|| async { asset("text/css", layout::CSS) }),
        )
        .route(
            "/assets/console.js",
            get(|| async { asset("text/javascript", layout::JS) }),
        )
        .layer(middleware::from_fn_with_state(console.clone(), guard))
        .with_state(console)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The session cookie's value for `token`.
fn session_value(token: &str) -> String {
    hex::encode(Sha256::digest(format!("leadpipe-console-session\n{token}")))
}

/// The session cookie the request carries, if any.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// Whether a `Host` header names this machine (`localhost`, 127.0.0.0/8, `::1`).
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// On every request: an open console (no token) answers only a loopback `Host`; a form post
/// from another origin is refused; every response says not to cache, frame or sniff it.
async fn guard(State(console): State<Arc<Console>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if console.token.is_none() && !loopback_host(&host) {
        return console.refuse(
            headers,
            StatusCode::FORBIDDEN,
            "Without CONSOLE_TOKEN this console answers only requests addressed to this machine (Host: localhost or 127.0.0.1).",
        );
    }
    if request.method() == Method::POST
        && let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && origin.split_once("://").map(|(_, h)| h) != Some(host.as_str())
    {
        return console.refuse(
            headers,
            StatusCode::FORBIDDEN,
            "A form of another site cannot post to this console.",
        );
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// `401` unless the request carries the bearer token or the session cookie (when a token is
/// set). A browser gets the login form with it.
async fn authorize(State(console): State<Arc<Console>>, request: Request, next: Next) -> Response {
    let (Some(token), Some(session)) = (&console.token, &console.session) else {
        return next.run(request).await;
    };
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.expose_secret().as_bytes())));
    let cookie =
        session_cookie(headers).is_some_and(|c| bool::from(c.as_bytes().ct_eq(session.as_bytes())));
    if bearer || cookie {
        return next.run(request).await;
    }
    let wanted = request.uri().path_and_query().map(|p| p.to_string());
    let mut response = login_form(&console, wanted.as_deref(), None);
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn login_form(console: &Console, next: Option<&str>, error: Option<&str>) -> Response {
    let body = html! {
        p { "This console needs its token: log in with " code { "CONSOLE_TOKEN" } ", or send "
            code { "Authorization: Bearer <CONSOLE_TOKEN>" } "." }
        @if let Some(e) = error { p.error { (e) } }
        form.find method="post" action="/login" {
            input type="hidden" name="csrf" value=(console.csrf);
            input type="hidden" name="next" value=(next.unwrap_or("/"));
            label for="token" { "token" }
            input #token type="password" name="token" autocomplete="current-password" autofocus;
            button type="submit" { "Log in" }
        }
    };
    (
        StatusCode::OK,
        layout::page(&Frame { logout_csrf: None }, "Log in", body),
    )
        .into_response()
}

async fn login_page(State(console): State<Arc<Console>>) -> Response {
    if console.token.is_none() {
        return Redirect::to("/").into_response();
    }
    login_form(&console, None, None)
}

#[derive(serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

/// Sets the session cookie when the token is right.
async fn login(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let (Some(token), Some(session)) = (&console.token, &console.session) else {
        return Redirect::to("/").into_response();
    };
    if let Err(refused) = console.check_csrf(&headers, &form.csrf) {
        return refused;
    }
    if !bool::from(
        form.token
            .as_bytes()
            .ct_eq(token.expose_secret().as_bytes()),
    ) {
        let mut r = login_form(
            &console,
            Some(&form.next),
            Some("That is not the console's token."),
        );
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    }
    // Only a path of this console, never another site.
    let next = if form.next.starts_with('/') && !form.next.starts_with("//") {
        form.next.as_str()
    } else {
        "/"
    };
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict"),
        )],
        Redirect::to(next),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = console.check_csrf(&headers, &form.csrf) {
        return refused;
    }
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Redirect::to("/login"),
    )
        .into_response()
}

/// Rows of a status table: each status the delivery log knows, in the order the pages show
/// them, with the heading it gets.
pub(super) const STATUSES: &[(&str, &str)] = &[
    ("sent", "sent"),
    ("accepted", "accepted (verdict pending)"),
    ("in_flight", "in flight"),
    ("retrying", "retrying"),
    ("dead_lettered", "dead-lettered"),
    ("blocked_consent", "blocked by consent"),
    ("skipped_unmapped", "skipped"),
    ("expired", "expired"),
    ("dry_run", "dry run"),
];

/// Counts by destination and status.
pub(super) type Counts = HashMap<(String, String), i64>;

/// Renders a count table: one row per destination, one column per status.
pub(super) fn count_table(
    id: &str,
    destinations: &[&'static Registration],
    counts: &Counts,
) -> Markup {
    html! {
        table id=(id) {
            thead { tr {
                th { "destination" }
                @for (_, heading) in STATUSES { th.n { (heading) } }
            } }
            tbody {
                @for r in destinations {
                    tr data-destination=(r.name()) {
                        td { (r.name()) }
                        @for (status, _) in STATUSES {
                            td.n data-status=(status) {
                                (counts.get(&(r.name().to_owned(), (*status).to_owned())).copied().unwrap_or(0))
                            }
                        }
                    }
                }
            }
        }
    }
}
