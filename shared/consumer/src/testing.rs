//! What tests and benchmarks share with the destinations' fakes (feature `testing`): the
//! storms a fake strikes its requests with, and [`FakeDestination`], what the end-to-end
//! test support asks of every destination's fake so it can iterate the registry instead of
//! naming destinations.

use std::any::Any;
use std::collections::HashMap;
use std::time::Duration;

use leadpipe_bus::Destination;

/// What a struck request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strike {
    /// `503 Service Unavailable`.
    Unavailable,
    /// `429 Too Many Requests` with `Retry-After: <secs>`.
    RateLimited {
        /// The `Retry-After` value, in seconds.
        retry_after_secs: u64,
    },
    /// No answer for this long (a caller's timeout fires first), then 503.
    Hang(Duration),
}

/// A fake's storm setting and its request counter.
#[derive(Debug, Default)]
pub struct Storm {
    every: u32,
    count: u32,
    strike: Option<Strike>,
}

impl Storm {
    /// Strikes every `every`-th request (0: calm) with `strike`.
    pub fn set(&mut self, every: u32, strike: Strike) {
        self.every = every;
        self.strike = Some(strike);
    }

    /// Counts a request; whether it is struck, and how.
    pub fn count(&mut self) -> Option<Strike> {
        if self.every == 0 {
            return None;
        }
        self.count += 1;
        if self.count.is_multiple_of(self.every) {
            self.strike
        } else {
            None
        }
    }
}

/// Lives through `strike` (a hang sleeps) and returns the status and `Retry-After` (seconds)
/// to answer with.
pub async fn endure(strike: Strike) -> (u16, Option<u64>) {
    match strike {
        Strike::Unavailable => (503, None),
        Strike::RateLimited { retry_after_secs } => (429, Some(retry_after_secs)),
        Strike::Hang(d) => {
            tokio::time::sleep(d).await;
            (503, None)
        }
    }
}

/// [`endure`] of the struck request, if it is.
pub async fn weather(strike: Option<Strike>) -> Option<(u16, Option<u64>)> {
    match strike {
        Some(s) => Some(endure(s).await),
        None => None,
    }
}

/// How a destination treats an event whose `ad_user_data` consent is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdConsent {
    /// Not sent (`blocked_consent`): Meta, Google Ads, TikTok.
    Blocks,
    /// Sent without matching keys (GA4's consent signals).
    SendsWithoutUserData,
    /// Not an ad destination (the CRM).
    NotGated,
}

/// A destination's fake as the end-to-end support uses it. Each destination implements it for
/// its fake (`fake` feature of its crate); the support starts one per registered destination
/// and asks it, never naming it.
pub trait FakeDestination: Any + Send + Sync {
    /// The destination it stands in for.
    fn destination(&self) -> Destination;
    /// The variables that point the sender's binary at this fake: base URLs and working
    /// credentials.
    fn sender_env(&self) -> Vec<(&'static str, String)>;
    /// How the destination treats a consent-denied event.
    fn ad_consent(&self) -> AdConsent;
    /// Whether the fake refuses this canonical event for good (it is dead-lettered).
    fn refuses(&self, event: &serde_json::Value) -> bool;
    /// What it kept, by its dedupe key, with how many times.
    fn kept(&self) -> HashMap<String, usize>;
    /// Whether [`FakeDestination::kept`] is keyed by event_id (else by the destination's own
    /// key, e.g. Google's transaction id and value).
    fn kept_by_event_id(&self) -> bool;
    /// How many requests to its data endpoint it has seen.
    fn requests_seen(&self) -> usize;
    /// The bodies of those requests, as text (for the PII checks).
    fn bodies(&self) -> Vec<String>;
    /// The event_ids that reached it with matching keys (user data), accepted or not;
    /// empty where requests carry no event_id.
    fn event_ids_with_user_data(&self) -> Vec<String>;
    /// Every `every`-th request to the data endpoint is struck with `strike` (0: calm).
    fn set_storm_of(&self, every: u32, strike: Strike);
    /// Delay every answer.
    fn set_latency(&self, latency: Duration);
    /// Keep counts only (long benchmarks).
    fn set_lean(&self);
    /// The fake itself, to reach what only it has.
    fn as_any(&self) -> &dyn Any;
}
