//! The frame of every page, and the console's two static assets (served from the binary: no
//! download at build or run time).

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

/// The console's style sheet (`/assets/console.css`).
pub(super) const CSS: &str = include_str!("console.css");

/// The console's script (`/assets/console.js`): a running replay updates in place, a form's
/// button says it is working. Every page works without it.
pub(super) const JS: &str = include_str!("console.js");

/// What the frame needs to know about the request.
pub(super) struct Frame<'a> {
    /// The CSRF token for the logout form (`None`: no session to end).
    pub logout_csrf: Option<&'a str>,
}

/// A page: the title, the navigation and the body.
pub(super) fn page(frame: &Frame<'_>, title: &str, body: Markup) -> Markup {
    page_with(frame, title, None, body)
}

/// A page that reloads itself every `refresh` seconds when scripts are off.
pub(super) fn page_with(
    frame: &Frame<'_>,
    title: &str,
    refresh: Option<u32>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · leadpipe console" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
                @if let Some(secs) = refresh {
                    noscript { meta http-equiv="refresh" content=(secs); }
                }
            }
            body {
                header {
                    a.brand href="/" { strong { "leadpipe" } " console" }
                    nav {
                        a href="/" { "Overview" }
                        a href="/events" { "Find an event" }
                        a href="/dead-letters" { "Dead letters" }
                    }
                    @if let Some(csrf) = frame.logout_csrf {
                        form.logout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// A time as the console shows it (UTC, to the second).
pub(super) fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An optional time, or a dash.
pub(super) fn maybe_time(t: Option<&DateTime<Utc>>) -> String {
    t.map(time).unwrap_or_else(|| "-".into())
}

/// A link to an event's page, showing the id's first 16 characters (all of it on hover).
pub(super) fn event_link(id: &str) -> Markup {
    let short: String = id.chars().take(16).collect();
    html! {
        a.event href={ "/events?event_id=" (urlencode(id)) } title=(id) {
            code { (short) @if short.len() < id.len() { "…" } }
        }
    }
}

/// Percent-encodes a query value.
pub(super) fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
