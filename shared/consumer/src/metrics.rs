//! Sender metrics (SPEC §7), labelled by destination.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use leadpipe_telemetry::metrics::LATENCY_BUCKETS;

/// Queue lag buckets, in seconds (10 ms to 6 h: retries wait in delay queues for hours).
const LAG_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 10800.0, 21600.0,
];

/// The metric families of one sender.
#[derive(Clone)]
pub struct Metrics {
    /// The registry served on `/metrics`.
    pub registry: Registry,
    /// `leadpipe_deliveries_total{destination, result}`.
    pub deliveries: IntCounterVec,
    /// `leadpipe_destination_request_seconds{destination}`.
    pub request_seconds: Histogram,
    /// `leadpipe_retries_total{destination}` (by error code).
    pub retries: IntCounterVec,
    /// `leadpipe_queue_lag_seconds{destination}`: now − `ingested_at` at consume time.
    pub lag: Histogram,
    /// `leadpipe_queue_depth{destination, queue}` (`work`, `dlq`).
    pub depth: IntGaugeVec,
    /// `leadpipe_in_flight{destination}`: events claimed and not yet decided.
    pub in_flight: IntGauge,
    /// `leadpipe_destination_paused{destination}`: 1 while paused on a systemic failure.
    pub paused: IntGauge,
    /// `leadpipe_destination_ready{destination}`: 1 when consuming.
    pub ready: IntGauge,
    /// `leadpipe_destination_pauses_total{destination}`: pauses on a systemic failure
    /// (a failed half-open trial pauses again and counts).
    pub pauses: IntCounter,
    /// `leadpipe_lost_leases_total{destination}`: outcomes not written because another worker
    /// had taken the event's lease over.
    pub lost_leases: IntCounter,
    /// `leadpipe_publish_holds_total{destination}`: times a batch was held because its
    /// retries, verdict waits or dead letters could not be routed (broker blocked or away).
    pub publish_holds: IntCounter,
    /// `leadpipe_dry_run{destination}`: 1 when the sender runs in `DRY_RUN`.
    pub dry_run: IntGauge,
    /// `leadpipe_delivery_log_partitions_dropped_total{destination}`: time partitions of the
    /// delivery log dropped past the retention.
    pub partitions_dropped: IntCounter,
    /// `leadpipe_delivery_log_maintenance_failures_total{destination}`: rounds of partition
    /// maintenance that failed (the log grows until one succeeds).
    pub maintenance_failures: IntCounter,
}

impl Metrics {
    /// Registers every family, with `destination` as a constant label.
    pub fn new(destination: &str) -> Self {
        let registry = Registry::new();
        let c = |o: Opts| o.const_label("destination", destination);
        let h = |o: HistogramOpts| o.const_label("destination", destination);
        let deliveries = IntCounterVec::new(
            c(Opts::new(
                "leadpipe_deliveries_total",
                "Events decided, by result.",
            )),
            &["result"],
        )
        .expect("valid metric");
        let request_seconds = Histogram::with_opts(
            h(HistogramOpts::new(
                "leadpipe_destination_request_seconds",
                "Latency of requests to the destination.",
            ))
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let retries = IntCounterVec::new(
            c(Opts::new(
                "leadpipe_retries_total",
                "Events sent to a delay queue, by error code.",
            )),
            &["code"],
        )
        .expect("valid metric");
        let lag = Histogram::with_opts(
            h(HistogramOpts::new(
                "leadpipe_queue_lag_seconds",
                "Time from ingest to consumption.",
            ))
            .buckets(LAG_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let depth = IntGaugeVec::new(
            c(Opts::new(
                "leadpipe_queue_depth",
                "Ready messages in the work queue and DLQ.",
            )),
            &["queue"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::with_opts(c(Opts::new(
            "leadpipe_in_flight",
            "Events claimed and not yet decided.",
        )))
        .expect("valid metric");
        let paused = IntGauge::with_opts(c(Opts::new(
            "leadpipe_destination_paused",
            "1 while consumption is paused on a systemic failure.",
        )))
        .expect("valid metric");
        let ready = IntGauge::with_opts(c(Opts::new(
            "leadpipe_destination_ready",
            "1 while the sender consumes.",
        )))
        .expect("valid metric");
        let counter = |name: &str, help: &str| {
            IntCounter::with_opts(c(Opts::new(name, help))).expect("valid metric")
        };
        let pauses = counter(
            "leadpipe_destination_pauses_total",
            "Pauses on a systemic failure (a failed half-open trial counts again).",
        );
        let lost_leases = counter(
            "leadpipe_lost_leases_total",
            "Outcomes not written because another worker had taken the event's lease over.",
        );
        let publish_holds = counter(
            "leadpipe_publish_holds_total",
            "Batches held because their retries or dead letters could not be routed.",
        );
        let partitions_dropped = counter(
            "leadpipe_delivery_log_partitions_dropped_total",
            "Time partitions of the delivery log dropped past the destination's retention.",
        );
        let maintenance_failures = counter(
            "leadpipe_delivery_log_maintenance_failures_total",
            "Rounds of delivery-log partition maintenance that failed.",
        );
        let dry_run = IntGauge::with_opts(c(Opts::new(
            "leadpipe_dry_run",
            "1 while the sender runs in DRY_RUN: nothing is sent to the destination.",
        )))
        .expect("valid metric");
        for m in [
            Box::new(deliveries.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_seconds.clone()),
            Box::new(retries.clone()),
            Box::new(lag.clone()),
            Box::new(depth.clone()),
            Box::new(in_flight.clone()),
            Box::new(paused.clone()),
            Box::new(ready.clone()),
            Box::new(pauses.clone()),
            Box::new(lost_leases.clone()),
            Box::new(publish_holds.clone()),
            Box::new(dry_run.clone()),
            Box::new(partitions_dropped.clone()),
            Box::new(maintenance_failures.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Self {
            registry,
            deliveries,
            request_seconds,
            retries,
            lag,
            depth,
            in_flight,
            paused,
            ready,
            pauses,
            lost_leases,
            publish_holds,
            dry_run,
            partitions_dropped,
            maintenance_failures,
        }
    }
}
