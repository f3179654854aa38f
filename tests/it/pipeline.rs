//! The whole pipeline: the real `ingest` binary and the four senders' real binaries on the
//! real broker and database, with fakes of every destination, fed the mixed stream of
//! `stream` over HTTP, then checked by `stream::check` (exactly once or the DLQ with a
//! reason, nothing else dead-lettered, consent and PII). `E2E_EVENTS` sets the size
//! (`make e2e`: 20,000). The same stream under faults is in `faults`; the trace test runs
//! the services in this process to read their spans' ids.

use std::time::Duration;

use serde_json::Value;

use leadpipe_tests::stream::{Processes, Repeats, Stream, check};
use leadpipe_tests::{IngestOptions, Pipeline, SenderOptions, spawn_ingest};

#[tokio::test]
async fn a_mixed_stream_reaches_every_destination_exactly_once_or_its_dlq_with_a_reason() {
    let n: usize = std::env::var("E2E_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    // Arrange: ingest and the four senders, each its real binary, on one namespace.
    let run = Processes::start(Pipeline::new().await, None, 1, vec![]).await;
    let stream = Stream::new(n);
    let mut driver = run.driver();

    // Act: everything else first, then the refunds, in batches of 100.
    let started = std::time::Instant::now();
    driver.post(&stream, 0..stream.batches.len()).await;

    // Assert
    let wait = Duration::from_secs(60 + n as u64 / 50);
    let rows = check(&run.p, &stream, &driver, Repeats::Never, wait).await;
    eprintln!(
        "e2e: {} accepted, {} refused, {rows} delivery rows decided in {:.1} s",
        driver.accepted.len(),
        driver.refused,
        started.elapsed().as_secs_f64()
    );
    run.stop().await;
}

#[tokio::test]
async fn the_ingest_requests_trace_reaches_each_destination_call() {
    // Arrange: ingest and three senders; a lead posted with its caller's traceparent.
    let p = Pipeline::new().await;
    let ingest = spawn_ingest(IngestOptions {
        namespace: Some(p.names.namespace().to_owned()),
        ..IngestOptions::default()
    })
    .await;
    let senders = vec![
        p.start_meta(SenderOptions::default()).await,
        p.start_ga4(SenderOptions::default()).await,
        p.start_crm(SenderOptions::default()).await,
    ];
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let body = serde_json::to_vec(&leadpipe_tests::recent_lead("L-trace")).unwrap();

    // Act
    let request = ingest
        .http
        .post(format!("{}/v1/events", ingest.base))
        .header("traceparent", &caller);
    let response = leadpipe_tests::signed(request, body).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for d in [
        leadpipe_meta_sender::DESTINATION,
        leadpipe_ga4_sender::DESTINATION,
        leadpipe_crm_writer::DESTINATION,
    ] {
        p.wait_status_in(d, &id, "sent", Duration::from_secs(30))
            .await;
    }

    // Assert: every destination call carries the same trace, under a span id of its own.
    let seen = [
        p.meta.requests()[0].traceparent.clone(),
        p.ga4.requests()[0].traceparent.clone(),
        p.crm.deliveries()[0].traceparent.clone(),
    ];
    for tp in seen {
        let tp = tp.expect("a destination call without traceparent");
        let parsed = leadpipe_telemetry::traceparent::TraceParent::parse(&tp).unwrap();
        assert_eq!(parsed.trace_id, trace_id, "{tp}");
        assert_ne!(tp, caller, "no span of its own");
    }
    for s in senders {
        s.stop().await;
    }
    ingest.stop().await;
    p.cleanup().await;
}
