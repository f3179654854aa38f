//! Dead letters: each destination's DLQ grouped by error code, and its replay: a dry run that
//! says what would move, then the replay itself on confirmation, with its progress. Both are
//! [`crate::dlq::Dlq`], what `leadpipe dlq` runs.
//!
//! One DLQ is read or replayed by one request at a time: a page asked for while a replay of
//! the same DLQ runs links to the replay instead of reading.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Path, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use maud::{Markup, html};

use leadpipe_bus::Destination;
use leadpipe_consumer::Registration;

use crate::dlq::{self, Dlq, Letter, Progress, ReplayFilter};

use super::{Console, layout};

/// The replays kept for their progress pages.
const KEPT_REPLAYS: usize = 50;

/// How many ids a dry run lists of each kind.
const LISTED: usize = 20;

/// Per destination, its DLQ's lock; the replays started here.
pub(super) struct State {
    locks: HashMap<Destination, Arc<tokio::sync::Mutex<()>>>,
    /// The running replay of each destination, by id.
    running: Mutex<HashMap<Destination, u64>>,
    replays: Mutex<BTreeMap<u64, Arc<Mutex<Replay>>>>,
    next: AtomicU64,
}

impl State {
    pub(super) fn new(destinations: &[&'static Registration]) -> Self {
        Self {
            locks: destinations
                .iter()
                .map(|r| (r.destination, Arc::default()))
                .collect(),
            running: Mutex::default(),
            replays: Mutex::default(),
            next: AtomicU64::new(1),
        }
    }

    fn running(&self, d: Destination) -> Option<u64> {
        self.running.lock().expect("replays lock").get(&d).copied()
    }
}

/// One replay started from the console.
struct Replay {
    destination: Destination,
    error_code: Option<String>,
    started: DateTime<Utc>,
    progress: Progress,
    outcome: Option<Result<(), String>>,
}

#[derive(serde::Deserialize)]
pub(super) struct ReplayForm {
    #[serde(default)]
    csrf: String,
    /// Only this error code (empty: every dead letter).
    #[serde(default)]
    error_code: String,
}

impl ReplayForm {
    fn code(&self) -> Option<&str> {
        Some(self.error_code.trim()).filter(|c| !c.is_empty())
    }
}

/// `/dead-letters`: the destinations, each linking to its DLQ.
pub(super) async fn index(
    AxumState(console): AxumState<Arc<Console>>,
    headers: HeaderMap,
) -> Response {
    let body = html! {
        ul #destinations {
            @for r in &console.destinations {
                li { a href={ "/dead-letters/" (r.name()) } { (r.name()) } " " span.muted { (r.title) } }
            }
        }
        p.muted { "The overview shows how many dead letters each destination holds." }
    };
    layout::page(&console.frame(&headers), "Dead letters", body).into_response()
}

/// The registration of the path's destination, or `404` naming the enabled ones.
#[allow(clippy::result_large_err)]
fn registration(
    console: &Console,
    headers: &HeaderMap,
    name: &str,
) -> Result<&'static Registration, Response> {
    console.destination(name).ok_or_else(|| {
        let known: Vec<&str> = console.destinations.iter().map(|r| r.name()).collect();
        console.refuse(
            headers,
            StatusCode::NOT_FOUND,
            &format!(
                "No enabled destination {name:?}: the enabled ones are {}.",
                known.join(", ")
            ),
        )
    })
}

/// `/dead-letters/{destination}`: the DLQ by error code, with the replay buttons.
pub(super) async fn page(
    AxumState(console): AxumState<Arc<Console>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let r = match registration(&console, &headers, &name) {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let title = format!("Dead letters of {}", r.name());
    let Ok(_reading) = console.dead_letters.locks[&r.destination].try_lock() else {
        return busy(&console, &headers, r, &title);
    };
    let letters = match read(r.destination).await {
        Ok(l) => l,
        Err(e) => return console.unavailable(&headers, "The broker's dead-letter queue", &e),
    };
    let groups = dlq::group(&letters);
    let queue =
        leadpipe_bus::Names::new(console.amqp.namespace.clone()).dead_letter_queue(r.destination);
    let body = html! {
        p #held { (letters.len()) " message(s) in " code { (queue) } "." }
        @if !groups.is_empty() {
            table #groups {
                thead { tr {
                    th { "error code" } th.n { "messages" } th { "first failed" } th { "last failed" }
                    th { "sample" } @if console.allow_replay { th {} }
                } }
                tbody {
                    @for g in &groups {
                        tr data-code=(g.code) {
                            td { code { (g.code) } }
                            td.n.count { (g.count) }
                            td { (layout::maybe_time(g.first_failed.as_ref())) }
                            td { (layout::maybe_time(g.last_failed.as_ref())) }
                            td { @for id in &g.samples { (layout::event_link(id)) " " }
                                 @if g.count > g.samples.len() { span.muted { "…" } } }
                            @if console.allow_replay {
                                td { (plan_button(&console, r, Some(&g.code), &format!("Replay {}…", g.count))) }
                            }
                        }
                    }
                }
            }
            h2 { "Latest messages" }
            table #letters {
                thead { tr { th { "event" } th { "error code" } th.n { "HTTP" } th.n { "attempts" } th { "failed" } th { "message" } } }
                tbody {
                    @for l in letters.iter().rev().take(LISTED) {
                        tr { td { (layout::event_link(&l.id)) } td { code { (l.code) } }
                             td.n { (l.http_status.clone().unwrap_or_default()) }
                             td.n { (l.attempts.clone().unwrap_or_default()) }
                             td { (layout::maybe_time(l.failed_at.as_ref())) }
                             td.wrap { (l.message.clone().unwrap_or_default()) } }
                    }
                }
            }
        }
        @if console.allow_replay {
            @if !letters.is_empty() { p { (plan_button(&console, r, None, "Replay all…")) } }
            p.muted { "Replay first shows what it would move; nothing moves until you confirm." }
        } @else {
            p.muted #replay-off { "Replay is off: start the console with " code { "CONSOLE_ALLOW_REPLAY=true" } " to replay from here, or run " code { "leadpipe dlq replay " (r.name()) } "." }
        }
    };
    layout::page(&console.frame(&headers), &title, body).into_response()
}

fn plan_button(console: &Console, r: &Registration, code: Option<&str>, label: &str) -> Markup {
    html! {
        form.inline method="post" action={ "/dead-letters/" (r.name()) "/plan" } data-once {
            input type="hidden" name="csrf" value=(console.csrf);
            input type="hidden" name="error_code" value=(code.unwrap_or_default());
            button type="submit" data-busy="Reading…" { (label) }
        }
    }
}

/// What a page says while a replay of its DLQ runs.
fn busy(console: &Console, headers: &HeaderMap, r: &Registration, title: &str) -> Response {
    let running = console.dead_letters.running(r.destination);
    let body = html! {
        p #busy { "A replay of this dead-letter queue is running; its messages are in motion." }
        @if let Some(id) = running { p { a href={ "/replays/" (id) } { "Follow the replay" } } }
    };
    layout::page(&console.frame(headers), title, body).into_response()
}

async fn read(d: Destination) -> anyhow::Result<Vec<Letter>> {
    let dlq = Dlq::connect().await?;
    let letters = dlq.letters(d).await;
    dlq.close().await;
    letters
}

/// The destination a replay form is for, or the refusal: replay not allowed, a wrong CSRF
/// token, or no such destination.
#[allow(clippy::result_large_err)]
fn replay_target(
    console: &Console,
    headers: &HeaderMap,
    name: &str,
    form: &ReplayForm,
) -> Result<&'static Registration, Response> {
    if !console.allow_replay {
        return Err(console.refuse(
            headers,
            StatusCode::FORBIDDEN,
            "Replay is off: start the console with CONSOLE_ALLOW_REPLAY=true.",
        ));
    }
    console.check_csrf(headers, &form.csrf)?;
    registration(console, headers, name)
}

/// `POST /dead-letters/{destination}/plan`: the dry run, and the confirmation form.
pub(super) async fn plan(
    AxumState(console): AxumState<Arc<Console>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<ReplayForm>,
) -> Response {
    let r = match replay_target(&console, &headers, &name, &form) {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let title = format!("Replay dead letters of {}", r.name());
    let Ok(_reading) = console.dead_letters.locks[&r.destination].try_lock() else {
        return busy(&console, &headers, r, &title);
    };
    let filter = ReplayFilter {
        error_code: form.code(),
        since: None,
        limit: None,
    };
    let plan = async {
        let dlq = Dlq::connect().await?;
        let plan = dlq.plan(r.destination, &filter).await;
        dlq.close().await;
        plan
    }
    .await;
    let plan = match plan {
        Ok(p) => p,
        Err(e) => return console.unavailable(&headers, "The broker's dead-letter queue", &e),
    };
    let names = leadpipe_bus::Names::new(console.amqp.namespace.clone());
    let body = html! {
        p #plan {
            strong.replay { (plan.replay.len()) } " of " (plan.total) " message(s)"
            @if let Some(code) = form.code() { " with error code " code { (code) } }
            " would be replayed to " code { (names.work_queue(r.destination)) } "; "
            strong.too-old { (plan.too_old.len()) } " too old for " (r.name()) " now would stay in the dead-letter queue."
        }
        @if !plan.replay.is_empty() {
            h2 { "Would be replayed" }
            p { @for l in plan.replay.iter().take(LISTED) { (layout::event_link(&l.id)) " " }
                @if plan.replay.len() > LISTED { span.muted { "and " (plan.replay.len() - LISTED) " more" } } }
        }
        @if !plan.too_old.is_empty() {
            h2 { "Too old: would stay" }
            p { @for l in plan.too_old.iter().take(LISTED) { (layout::event_link(&l.id)) " " } }
        }
        @if plan.replay.is_empty() {
            p { "Nothing to replay. " a href={ "/dead-letters/" (r.name()) } { "Back to the dead letters" } }
        } @else {
            form method="post" action={ "/dead-letters/" (r.name()) "/replay" } data-once {
                input type="hidden" name="csrf" value=(console.csrf);
                input type="hidden" name="error_code" value=(form.code().unwrap_or_default());
                button.danger type="submit" data-busy="Starting…" { "Replay " (plan.replay.len()) " message(s)" }
                " "
                a href={ "/dead-letters/" (r.name()) } { "Cancel" }
            }
            p.muted { "The replay reads the queue again: dead letters that arrive meanwhile and match are replayed too." }
        }
    };
    layout::page(&console.frame(&headers), &title, body).into_response()
}

/// `POST /dead-letters/{destination}/replay`: starts the replay and shows its progress.
pub(super) async fn replay(
    AxumState(console): AxumState<Arc<Console>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<ReplayForm>,
) -> Response {
    let r = match replay_target(&console, &headers, &name, &form) {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let Ok(guard) = console.dead_letters.locks[&r.destination]
        .clone()
        .try_lock_owned()
    else {
        return busy(
            &console,
            &headers,
            r,
            &format!("Replay dead letters of {}", r.name()),
        );
    };
    let state = &console.dead_letters;
    let id = state.next.fetch_add(1, Ordering::Relaxed);
    let job = Arc::new(Mutex::new(Replay {
        destination: r.destination,
        error_code: form.code().map(str::to_owned),
        started: Utc::now(),
        progress: Progress::default(),
        outcome: None,
    }));
    {
        let mut replays = state.replays.lock().expect("replays lock");
        replays.insert(id, job.clone());
        while replays.len() > KEPT_REPLAYS {
            replays.pop_first();
        }
    }
    state
        .running
        .lock()
        .expect("replays lock")
        .insert(r.destination, id);
    let console2 = console.clone();
    let destination = r.destination;
    tokio::spawn(async move {
        let code = job.lock().expect("replay lock").error_code.clone();
        let filter = ReplayFilter {
            error_code: code.as_deref(),
            since: None,
            limit: None,
        };
        let outcome = async {
            let dlq = Dlq::connect().await?;
            let done = dlq
                .replay(&console2.pool, destination, &filter, |p| {
                    job.lock().expect("replay lock").progress = *p;
                })
                .await;
            dlq.close().await;
            done
        }
        .await;
        let mut j = job.lock().expect("replay lock");
        match outcome {
            Ok(p) => {
                j.progress = p;
                j.outcome = Some(Ok(()));
                tracing::info!(
                    destination = destination.as_str(),
                    replayed = p.replayed,
                    kept = p.kept,
                    "console: replay done"
                );
            }
            Err(e) => {
                tracing::warn!(destination = destination.as_str(), error = %e, "console: replay failed");
                j.outcome = Some(Err(format!("{e:#}")));
            }
        }
        console2
            .dead_letters
            .running
            .lock()
            .expect("replays lock")
            .remove(&destination);
        drop(guard);
    });
    Redirect::to(&format!("/replays/{id}")).into_response()
}

/// `/replays/{id}`: a replay's progress, then its outcome.
pub(super) async fn progress(
    AxumState(console): AxumState<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    let job = console
        .dead_letters
        .replays
        .lock()
        .expect("replays lock")
        .get(&id)
        .cloned();
    let Some(job) = job else {
        return console.refuse(
            &headers,
            StatusCode::NOT_FOUND,
            "No such replay (the console keeps the latest 50, and forgets them when it restarts).",
        );
    };
    let j = job.lock().expect("replay lock");
    let p = j.progress;
    let d = j.destination.as_str();
    let running = j.outcome.is_none();
    let body = html! {
        p { "Dead letters of " strong { (d) } @if let Some(c) = &j.error_code { " with error code " code { (c) } }
            ", started " (layout::time(&j.started)) "." }
        div #progress data-poll=[running.then(|| format!("/replays/{id}"))] data-state=(match &j.outcome { None => "running", Some(Ok(())) => "done", Some(Err(_)) => "failed" }) {
            @match &j.outcome {
                None => {
                    p { progress value=(p.done()) max=(p.total.max(1)) {} " " (p.done()) " of " (p.total) " read, " (p.replayed) " replayed" }
                }
                Some(Ok(())) => {
                    p.done { "Done: " strong.replayed { (p.replayed) } " message(s) replayed to the work queue; "
                        strong.kept { (p.kept) } " left in the dead-letter queue"
                        @if p.refused > 0 { ", " (p.refused) " of them too old for " (d) " now" } "." }
                    p { a href={ "/dead-letters/" (d) } { "Back to the dead letters" } " · " a href="/" { "Overview" } }
                }
                Some(Err(e)) => {
                    p.error { "The replay stopped: " (e) ". " (p.replayed) " message(s) were replayed before it stopped; every other one is still in the dead-letter queue." }
                    p { a href={ "/dead-letters/" (d) } { "Back to the dead letters" } }
                }
            }
        }
    };
    layout::page_with(
        &console.frame(&headers),
        "Replay",
        running.then_some(2),
        body,
    )
    .into_response()
}
