//! Find an event: by event_id, lead_id, order_id, or source and a time range, every
//! destination's row ([`crate::trace::find`], what `leadpipe trace` prints).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use maud::{Markup, html};

use crate::trace::{self, Lookup, TraceRow};

use super::{Console, layout};

#[derive(serde::Deserialize, Default)]
pub(super) struct FindQuery {
    #[serde(default)]
    event_id: String,
    #[serde(default)]
    lead_id: String,
    #[serde(default)]
    order_id: String,
    #[serde(default)]
    source: String,
    /// `YYYY-MM-DDTHH:MM[:SS]`, UTC (what a `datetime-local` input sends).
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

/// The form's time format (a `datetime-local` value, read as UTC).
const INPUT_TIME: &str = "%Y-%m-%dT%H:%M";

fn input_time(t: DateTime<Utc>) -> String {
    t.format(INPUT_TIME).to_string()
}

/// Reads a `datetime-local` value (minutes or seconds) as UTC, naming the field.
fn parse_time(field: &str, s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(s, INPUT_TIME))
        .map(|t| t.and_utc())
        .or_else(|_| DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)))
        .map_err(|_| format!("{field} {s:?} is not a time: use YYYY-MM-DDTHH:MM (UTC)"))
}

impl FindQuery {
    /// The lookup the form asks for (the first field filled in), or why it cannot be made.
    fn lookup(&self) -> Option<Result<Lookup, String>> {
        let filled = |s: &str| Some(s.trim()).filter(|s| !s.is_empty()).map(str::to_owned);
        if let Some(id) = filled(&self.event_id) {
            return Some(Ok(Lookup::EventId(id)));
        }
        if let Some(id) = filled(&self.lead_id) {
            return Some(Ok(Lookup::LeadId(id)));
        }
        if let Some(id) = filled(&self.order_id) {
            return Some(Ok(Lookup::OrderId(id)));
        }
        let source = filled(&self.source)?;
        let range = (|| {
            let to = match filled(&self.to) {
                Some(t) => parse_time("to", &t)?,
                None => Utc::now(),
            };
            let from = match filled(&self.from) {
                Some(t) => parse_time("from", &t)?,
                None => to - TimeDelta::hours(1),
            };
            if from >= to {
                return Err(format!(
                    "from ({}) must be before to ({})",
                    layout::time(&from),
                    layout::time(&to)
                ));
            }
            Ok((from, to))
        })();
        Some(range.map(|(from, to)| Lookup::Source { source, from, to }))
    }
}

pub(super) async fn page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<FindQuery>,
) -> Response {
    let lookup = q.lookup();
    let (status, found) = match &lookup {
        None => (StatusCode::OK, html! {}),
        Some(Err(why)) => (StatusCode::BAD_REQUEST, html! { p.error { (why) } }),
        Some(Ok(lookup)) => match trace::find(&console.pool, lookup).await {
            Ok(rows) => (StatusCode::OK, results(lookup, &rows)),
            Err(e) => return console.unavailable(&headers, "The delivery log", &e),
        },
    };
    let now = Utc::now();
    let body = html! {
        form.find method="get" action="/events" {
            label for="event_id" { "event_id" }
            input #event_id name="event_id" value=(q.event_id) placeholder="the id ingest returned";
            label for="lead_id" { "lead_id" }
            input #lead_id name="lead_id" value=(q.lead_id) placeholder="the client's id of the lead";
            label for="order_id" { "order_id" }
            input #order_id name="order_id" value=(q.order_id);
            label for="source" { "source" }
            input #source name="source" value=(q.source) placeholder="with the time range below";
            label for="from" { "from (UTC)" }
            input #from type="datetime-local" name="from"
                value=(if q.from.is_empty() { input_time(now - TimeDelta::hours(1)) } else { q.from.clone() });
            label for="to" { "to (UTC)" }
            input #to type="datetime-local" name="to"
                value=(if q.to.is_empty() { input_time(now + TimeDelta::minutes(1)) } else { q.to.clone() });
            button type="submit" { "Find" }
        }
        p.muted { "The first field filled in is used. A source is searched by when its events were first taken by a sender." }
        (found)
    };
    (
        status,
        layout::page(&console.frame(&headers), "Find an event", body),
    )
        .into_response()
}

fn results(lookup: &Lookup, rows: &[TraceRow]) -> Markup {
    let what = match lookup {
        Lookup::EventId(id) => html! { "event " code { (id) } },
        Lookup::LeadId(id) => html! { "lead_id " code { (id) } },
        Lookup::OrderId(id) => html! { "order_id " code { (id) } },
        Lookup::Source { source, from, to } => {
            html! { "source " code { (source) } " from " (layout::time(from)) " to " (layout::time(to)) }
        }
    };
    let events = {
        let mut ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
        ids.dedup();
        ids.len()
    };
    html! {
        @if rows.is_empty() {
            p.empty #not-found { "No delivery recorded for " (what) ": " (trace::NOT_FOUND) "." }
        } @else {
            p #found { (rows.len()) " row(s) of " (events) " event(s) for " (what)
                @if rows.len() as i64 >= trace::LIMIT { " (the newest " (trace::LIMIT) " rows)" } "." }
            table #deliveries {
                thead { tr {
                    th { "event" } th { "lead" } th { "order" } th { "source" }
                    th { "destination" } th { "name" } th { "status" } th.n { "attempts" }
                    th.n { "last HTTP" } th { "error" } th { "reference" } th { "first seen" } th { "updated" }
                } }
                tbody {
                    @for r in rows {
                        tr data-destination=(r.destination) data-event=(r.event_id) {
                            td { (layout::event_link(&r.event_id)) }
                            td { @if let Some(l) = &r.lead_id { a href={ "/events?lead_id=" (layout::urlencode(l)) } { (l) } } }
                            td { @if let Some(o) = &r.order_id { a href={ "/events?order_id=" (layout::urlencode(o)) } { (o) } } }
                            td { (r.source.clone().unwrap_or_default()) }
                            td { (r.destination) }
                            td { (r.event_name) }
                            td.status { (r.status) }
                            td.n { (r.attempts) }
                            td.n { (r.last_http_status.map(|s| s.to_string()).unwrap_or_default()) }
                            td.wrap { @if let Some(code) = &r.last_error_code {
                                code { (code) } " " (r.last_error_message.clone().unwrap_or_default())
                            } }
                            td { (r.destination_ref.clone().unwrap_or_default()) }
                            td { (layout::time(&r.first_seen_at)) }
                            td { (layout::time(&r.updated_at)) }
                        }
                    }
                }
            }
        }
    }
}
