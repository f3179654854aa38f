//! Every RabbitMQ name leadpipe uses, derived from `LEADPIPE_NAMESPACE` (SPEC §4), so two
//! installations or test runs can share one broker.

use std::fmt;
use std::time::Duration;

/// A delivery destination, each with its own work queue and dead-letter queue: the name used in
/// queue names, metrics labels and the delivery log (`meta`, `google_ads`, `tiktok`).
///
/// A destination is declared once, in its own crate, and registered in `leadpipe-registry`;
/// that registry is what parses a name an operator typed and lists the destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination(&'static str);

impl Destination {
    /// The destination named `name` (lowercase letters, digits and `_`; the registry's tests
    /// check every registered name).
    pub const fn new(name: &'static str) -> Self {
        Self(name)
    }

    /// The name used in queue names, metrics labels and the delivery log.
    pub const fn as_str(self) -> &'static str {
        self.0
    }

    /// Whether `name` is a well-formed destination name: `[a-z][a-z0-9_]{0,31}`.
    pub fn is_valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && name.len() <= 32
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The retry delay tiers. A retry waits in the smallest tier at least as long as its computed
/// delay (per-message TTL inside the tier), then returns to its work queue. Fixed tiers keep
/// the number of queues small and let a long delay never hold up a short one for longer than
/// its own tier.
pub const DELAY_TIERS: [Duration; 6] = [
    Duration::from_secs(1),
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(600),
    Duration::from_secs(3600),
    Duration::from_secs(6 * 3600),
];

/// Short label of a delay tier, used in queue names and routing keys (`10s`, `1h`).
pub fn tier_label(tier: Duration) -> String {
    let s = tier.as_secs();
    if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The names of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    ns: String,
}

impl Names {
    /// Names under namespace `ns` (`leadpipe` by default).
    pub fn new(ns: impl Into<String>) -> Self {
        Self { ns: ns.into() }
    }

    /// The namespace itself.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// `<ns>.events`: the topic exchange ingest publishes to.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.ns)
    }

    /// `<ns>.dlx`: the direct exchange dead letters go through, keyed by destination.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.ns)
    }

    /// `<ns>.delay`: the topic exchange retries are published to (`<tier>.<destination>`).
    pub fn delay_exchange(&self) -> String {
        format!("{}.delay", self.ns)
    }

    /// `<ns>.redeliver`: where expired retries go back to their work queue (`*.<destination>`).
    pub fn redeliver_exchange(&self) -> String {
        format!("{}.redeliver", self.ns)
    }

    /// `<ns>.<destination>`: a work queue.
    pub fn work_queue(&self, d: Destination) -> String {
        format!("{}.{}", self.ns, d.as_str())
    }

    /// `<ns>.<destination>.dlq`: a dead-letter queue.
    pub fn dead_letter_queue(&self, d: Destination) -> String {
        format!("{}.{}.dlq", self.ns, d.as_str())
    }

    /// `<ns>.delay.<tier>`: a delay queue shared by all destinations.
    pub fn delay_queue(&self, tier: Duration) -> String {
        format!("{}.delay.{}", self.ns, tier_label(tier))
    }

    /// Routing key on `<ns>.events`: `<event_name>.<source>` (SPEC §4).
    pub fn event_routing_key(event_name: &str, source: &str) -> String {
        format!("{event_name}.{source}")
    }

    /// Routing key of a retry: `<tier>.<destination>`.
    pub fn delay_routing_key(tier: Duration, d: Destination) -> String {
        format!("{}.{}", tier_label(tier), d.as_str())
    }

    /// Every queue of the namespace for `destinations` (work, dead-letter, delay).
    pub fn all_queues(&self, destinations: &[Destination]) -> Vec<String> {
        let mut q: Vec<String> = destinations
            .iter()
            .flat_map(|d| [self.work_queue(*d), self.dead_letter_queue(*d)])
            .collect();
        q.extend(DELAY_TIERS.iter().map(|t| self.delay_queue(*t)));
        q
    }

    /// Every exchange of the namespace.
    pub fn all_exchanges(&self) -> Vec<String> {
        vec![
            self.events_exchange(),
            self.dead_letter_exchange(),
            self.delay_exchange(),
            self.redeliver_exchange(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: Destination = Destination::new("meta");
    const GOOGLE_ADS: Destination = Destination::new("google_ads");
    const CRM: Destination = Destination::new("crm");

    #[test]
    fn names_follow_the_spec() {
        let n = Names::new("leadpipe");
        assert_eq!(n.events_exchange(), "leadpipe.events");
        assert_eq!(n.dead_letter_exchange(), "leadpipe.dlx");
        assert_eq!(n.work_queue(GOOGLE_ADS), "leadpipe.google_ads");
        assert_eq!(n.dead_letter_queue(META), "leadpipe.meta.dlq");
        assert_eq!(
            n.delay_queue(Duration::from_secs(600)),
            "leadpipe.delay.10m"
        );
        assert_eq!(
            Names::event_routing_key("lead", "site-widget"),
            "lead.site-widget"
        );
        assert_eq!(
            Names::delay_routing_key(Duration::from_secs(3600), CRM),
            "1h.crm"
        );
        assert_eq!(n.all_queues(&[META, CRM]).len(), 2 * 2 + DELAY_TIERS.len());
    }

    #[test]
    fn destination_names_are_checked() {
        for good in ["meta", "google_ads", "ga4", "tiktok"] {
            assert!(Destination::is_valid_name(good), "{good}");
        }
        for bad in ["", "Meta", "google-ads", "4ga", "a.b", &"x".repeat(33)] {
            assert!(!Destination::is_valid_name(bad), "{bad}");
        }
    }
}
