//! Ingest metrics (SPEC §7), in the service's own registry.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

use leadpipe_telemetry::metrics::LATENCY_BUCKETS;

/// The ingest metric families.
#[derive(Clone)]
pub struct Metrics {
    /// The registry served on `/metrics`.
    pub registry: Registry,
    /// `leadpipe_ingest_requests_total{source, status}`.
    pub requests: IntCounterVec,
    /// `leadpipe_ingest_request_duration_seconds{endpoint}`.
    pub latency: HistogramVec,
    /// `leadpipe_events_published_total{source, event_name}`.
    pub published: IntCounterVec,
    /// `leadpipe_ingest_events_rejected_total{source, code}`: per field-error code.
    pub rejected: IntCounterVec,
    /// `leadpipe_ingest_broker_ready`: 1 when a confirm channel is open.
    pub broker_ready: IntGauge,
}

impl Metrics {
    /// Registers every family in a new registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "leadpipe_ingest_requests_total",
                "Ingest requests by source and HTTP status.",
            ),
            &["source", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "leadpipe_ingest_request_duration_seconds",
                "Ingest request latency, from the first byte to the response, confirm included.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["endpoint"],
        )
        .expect("valid metric");
        let published = IntCounterVec::new(
            Opts::new(
                "leadpipe_events_published_total",
                "Events confirmed by the broker.",
            ),
            &["source", "event_name"],
        )
        .expect("valid metric");
        let rejected = IntCounterVec::new(
            Opts::new(
                "leadpipe_ingest_events_rejected_total",
                "Field errors of rejected events, by code.",
            ),
            &["source", "code"],
        )
        .expect("valid metric");
        let broker_ready = IntGauge::new(
            "leadpipe_ingest_broker_ready",
            "1 when ingest holds an open publisher-confirm channel.",
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(published.clone()),
            Box::new(rejected.clone()),
            Box::new(broker_ready.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            latency,
            published,
            rejected,
            broker_ready,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
