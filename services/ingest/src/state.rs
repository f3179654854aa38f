//! What every handler shares.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::DefaultClock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use leadpipe_bus::Publisher;
use leadpipe_config::sources::Source;

use crate::metrics::Metrics;

/// Cheap to clone: everything heavy is behind an `Arc`.
#[derive(Clone)]
pub struct AppState {
    /// Authenticated sources.
    pub sources: Arc<[Source]>,
    /// One token bucket per source, holding one second's worth of events.
    pub limiters: Arc<HashMap<String, DefaultDirectRateLimiter>>,
    /// The limiters' clock.
    pub clock: DefaultClock,
    /// Custom event names declared in the mapping config.
    pub custom_events: Arc<HashSet<String>>,
    /// Bodies above this many bytes get `413`.
    pub max_body_bytes: usize,
    /// A body must have arrived within this, else `408`.
    pub body_timeout: std::time::Duration,
    /// The confirmed publisher.
    pub publisher: Publisher,
    /// Metric families.
    pub metrics: Metrics,
}

impl AppState {
    /// Builds the state for `sources`.
    pub fn new(
        sources: Vec<Source>,
        custom_events: HashSet<String>,
        max_body_bytes: usize,
        body_timeout: std::time::Duration,
        publisher: Publisher,
    ) -> Self {
        let limiters = sources
            .iter()
            .map(|s| {
                let rate = NonZeroU32::new(s.rate_limit_per_second).unwrap_or(NonZeroU32::MIN);
                (s.id.clone(), RateLimiter::direct(Quota::per_second(rate)))
            })
            .collect();
        Self {
            sources: sources.into(),
            limiters: Arc::new(limiters),
            clock: DefaultClock::default(),
            custom_events: Arc::new(custom_events),
            max_body_bytes,
            body_timeout,
            publisher,
            metrics: Metrics::new(),
        }
    }
}
