//! OTLP export: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, the real binaries export the spans of
//! an event's journey — the ingest request, its publish, a sender's consume and its
//! destination call — in the caller's trace, each the parent of the next, and the request
//! the destination receives names the call span.

use std::time::Duration;

use leadpipe_tests::otlp::{OtlpReceiver, ReceivedSpan};
use leadpipe_tests::stream::Processes;
use leadpipe_tests::{Pipeline, eventually, recent_lead, signed};

#[tokio::test]
async fn one_trace_spans_the_ingest_request_the_sender_and_the_destination_request() {
    // Arrange: the pipeline as processes, exporting to an OTLP receiver.
    let receiver = OtlpReceiver::start().await;
    let env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    let run = Processes::start(Pipeline::new().await, None, 1, env).await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let body = serde_json::to_vec(&recent_lead("L-otlp")).unwrap();

    // Act: a lead posted with its caller's traceparent.
    let request = reqwest::Client::new()
        .post(format!("{}/v1/events", run.ingest.base))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"));
    let response = signed(request, body).send().await.unwrap();
    assert_eq!(response.status(), 202);
    assert!(
        eventually(Duration::from_secs(30), || async {
            !run.p.meta.requests().is_empty()
        })
        .await
    );
    let at_meta = run.p.meta.requests()[0]
        .traceparent
        .clone()
        .expect("Meta's request carries a traceparent");
    let at_meta = leadpipe_telemetry::traceparent::TraceParent::parse(&at_meta).unwrap();

    // Assert: request → publish → consume → call, one trace, each the parent of the next.
    let in_trace = || -> Vec<ReceivedSpan> {
        receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    };
    let find = |spans: &[ReceivedSpan], service: &str, kind: i32| -> Option<ReceivedSpan> {
        spans
            .iter()
            .find(|s| s.service == service && s.kind == kind)
            .cloned()
    };
    let complete = eventually(Duration::from_secs(30), || async {
        let spans = in_trace();
        find(&spans, "ingest", 2).is_some()
            && find(&spans, "ingest", 4).is_some()
            && find(&spans, "meta-sender", 5).is_some()
            && find(&spans, "meta-sender", 3).is_some()
    })
    .await;
    let spans = in_trace();
    assert!(complete, "spans of the trace: {spans:#?}");
    let request = find(&spans, "ingest", 2).unwrap();
    let publish = find(&spans, "ingest", 4).unwrap();
    let consume = find(&spans, "meta-sender", 5).unwrap();
    let call = find(&spans, "meta-sender", 3).unwrap();
    assert_eq!(request.name, "POST /v1/events");
    assert_eq!(request.parent_span_id, caller_span);
    assert_eq!(publish.parent_span_id, request.span_id);
    assert_eq!(consume.parent_span_id, publish.span_id);
    assert_eq!(call.parent_span_id, consume.span_id);
    assert_eq!(at_meta.trace_id, trace_id);
    assert_eq!(
        at_meta.parent_id, call.span_id,
        "Meta's request names the call span"
    );
    // The other senders continue the same publish in the same trace.
    for service in ["ga4-sender", "crm-writer"] {
        let ok = eventually(Duration::from_secs(30), || async {
            find(&in_trace(), service, 5).is_some_and(|c| c.parent_span_id == publish.span_id)
        })
        .await;
        assert!(ok, "{service} did not continue the trace");
    }
    // Spans leave the system: no personal value in them.
    for s in receiver.spans() {
        for (k, v) in &s.attributes {
            assert!(
                !v.contains('@') && !v.contains("555"),
                "{}: {k}={v}",
                s.name
            );
        }
    }
    run.stop().await;
}
