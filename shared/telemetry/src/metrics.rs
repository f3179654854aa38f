//! Prometheus exposition. Each service keeps its own [`prometheus::Registry`] in its state
//! (no global registry), so tests running several services in one process never collide.

use prometheus::{Encoder, Registry, TextEncoder};

/// The latency buckets of every `_seconds` histogram, in seconds (1 ms to 30 s).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric of `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    // Encoding into a Vec only fails on a metric family with no metrics, which the registry
    // never yields; an empty page is the safe answer if it ever did.
    if TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .is_err()
    {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}
