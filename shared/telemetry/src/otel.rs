//! OTLP export of the spans of an event's journey, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: the ingest request, its publish, a sender's
//! consume and its destination call, each under the ids its `traceparent` carries on the
//! wire, so the trace a collector shows is the one a destination's request names.
//!
//! The exporter is `opentelemetry-otlp` over HTTP (`http/protobuf` by default,
//! `OTEL_EXPORTER_OTLP_PROTOCOL=http/json` for JSON), batched off the request path; the
//! standard `OTEL_*` variables (headers, timeout, `OTEL_BSP_*`) apply, `OTEL_SERVICE_NAME`
//! overrides the service's name. Unset, [`Span::end`] costs nothing.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::trace::{
    SpanBuilder, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};

use crate::traceparent::TraceParent;

/// The installed provider and its tracer, when export is on.
static EXPORT: OnceLock<(SdkTracerProvider, SdkTracer)> = OnceLock::new();

thread_local! {
    /// The ids the next span built on this thread takes (see [`GivenIds`]).
    static NEXT_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Gives the SDK the ids leadpipe already chose and sent on the wire (the SDK would draw
/// new ones), falling back to random ids.
#[derive(Debug, Default)]
struct GivenIds(RandomIdGenerator);

impl IdGenerator for GivenIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_IDS
            .with(Cell::get)
            .map(|(t, _)| t)
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_IDS
            .with(Cell::get)
            .map(|(_, s)| s)
            .unwrap_or_else(|| self.0.new_span_id())
    }
}

/// Whether spans are exported (callers skip building them otherwise).
pub fn enabled() -> bool {
    EXPORT.get().is_some()
}

/// Whether an OTLP endpoint is configured.
pub fn configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
}

/// Installs the exporter when an endpoint is configured; returns whether export is on.
/// An exporter that cannot be built is an error naming the variables to check.
pub fn init(service: &'static str) -> Result<bool, String> {
    if !configured() || EXPORT.get().is_some() {
        return Ok(EXPORT.get().is_some());
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol_from_env()?)
        .build()
        .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?;
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(GivenIds::default())
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(name)
                .build(),
        )
        .build();
    let tracer = provider.tracer("leadpipe");
    let _ = EXPORT.set((provider, tracer));
    Ok(true)
}

/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`, else
/// `http/protobuf`; gRPC is not built in.
fn protocol_from_env() -> Result<Protocol, String> {
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        match std::env::var(var).as_deref().map(str::trim) {
            Ok("http/protobuf") => return Ok(Protocol::HttpBinary),
            Ok("http/json") => return Ok(Protocol::HttpJson),
            Ok("") | Err(_) => {}
            Ok(other) => {
                return Err(format!(
                    "{var}: {other:?} is not supported (http/protobuf or http/json)"
                ));
            }
        }
    }
    Ok(Protocol::HttpBinary)
}

/// Exports what is still buffered and stops the exporter (at the end of `main`).
pub fn shutdown() {
    if let Some((provider, _)) = EXPORT.get() {
        let _ = provider.shutdown();
    }
}

/// What a span is, in OpenTelemetry's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Handles a request (the ingest request).
    Server,
    /// Publishes a message (ingest's publish).
    Producer,
    /// Handles a message (a sender's consume).
    Consumer,
    /// Makes a request (the destination call).
    Client,
}

/// A span being timed: its own ids are those of `context` (the `traceparent` it sends on),
/// its parent the span id it continues, if any.
#[derive(Debug)]
pub struct Span {
    name: String,
    kind: Kind,
    context: TraceParent,
    parent: Option<String>,
    start: SystemTime,
    attributes: Vec<KeyValue>,
}

impl Span {
    /// Starts timing a span now.
    pub fn start(
        name: impl Into<String>,
        kind: Kind,
        context: &TraceParent,
        parent: Option<&str>,
    ) -> Self {
        Self::start_at(name, kind, context, parent, SystemTime::now())
    }

    /// Starts a span at `start`.
    pub fn start_at(
        name: impl Into<String>,
        kind: Kind,
        context: &TraceParent,
        parent: Option<&str>,
        start: SystemTime,
    ) -> Self {
        Self {
            name: name.into(),
            kind,
            context: context.clone(),
            parent: parent.map(str::to_owned),
            start,
            attributes: Vec::new(),
        }
    }

    /// Adds an attribute (never a personal value: spans leave the system).
    pub fn attribute(mut self, key: &'static str, value: impl Into<String>) -> Self {
        if EXPORT.get().is_some() {
            self.attributes.push(KeyValue::new(key, value.into()));
        }
        self
    }

    /// Ends the span now and hands it to the exporter (a no-op when export is off).
    pub fn end(self) {
        self.end_at(SystemTime::now());
    }

    /// Ends the span at `end`.
    pub fn end_at(self, end: SystemTime) {
        let Some((_, tracer)) = EXPORT.get() else {
            return;
        };
        let (Ok(trace_id), Ok(span_id)) = (
            TraceId::from_hex(&self.context.trace_id),
            SpanId::from_hex(&self.context.parent_id),
        ) else {
            return;
        };
        let flags = if self.context.flags & 1 == 1 {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let parent = match self.parent.as_deref().map(SpanId::from_hex) {
            Some(Ok(parent_id)) => Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                parent_id,
                flags,
                true,
                TraceState::default(),
            )),
            _ => Context::new(),
        };
        let builder = SpanBuilder::from_name(self.name)
            .with_kind(match self.kind {
                Kind::Server => SpanKind::Server,
                Kind::Producer => SpanKind::Producer,
                Kind::Consumer => SpanKind::Consumer,
                Kind::Client => SpanKind::Client,
            })
            .with_start_time(self.start)
            .with_attributes(self.attributes);
        NEXT_IDS.with(|n| n.set(Some((trace_id, span_id))));
        let mut span = tracer.build_with_context(builder, &parent);
        NEXT_IDS.with(|n| n.set(None));
        opentelemetry::trace::Span::end_with_timestamp(&mut span, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_ids_are_used_once_then_random_ids_again() {
        let ids = GivenIds::default();
        let t = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let s = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        NEXT_IDS.with(|n| n.set(Some((t, s))));
        assert_eq!(ids.new_trace_id(), t);
        assert_eq!(ids.new_span_id(), s);
        NEXT_IDS.with(|n| n.set(None));
        assert_ne!(ids.new_span_id(), s);
    }

    #[test]
    fn without_an_endpoint_nothing_is_installed_and_spans_cost_nothing() {
        if configured() {
            return;
        }
        assert_eq!(init("test"), Ok(false));
        let tp = TraceParent::new_root();
        Span::start("x", Kind::Client, &tp, None)
            .attribute("k", "v")
            .end();
    }
}
