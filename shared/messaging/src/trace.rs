//! Spans for events, exported when the process installed an OpenTelemetry tracer (see
//! `runtime::telemetry`); without one every call here is a no-op.
//!
//! An event's envelope carries a W3C `traceparent`. When the event is written to the
//! outbox a `publish <event type>` span (kind producer) is started under the span that
//! wrote it, and the envelope's `traceparent` becomes that span's context; the consumer
//! that handles the event runs under a `consume` span whose parent is that context, so a
//! trace shows the request, each publish and each consumer, module after module, whatever
//! bus carried the event. A batch of events of several traces is handled under one span:
//! its parent is the first event's context, and it links to the others'.
//!
//! Work done outside a request or a consumer (checkout's payment worker) runs under a span
//! of its own adopted from the context it stored ([`adopt`]), and publishes under that
//! span ([`traceparent_of`]): a `publish` span's parent is always a span of the trace,
//! never the long-lived span of a background task, which is never exported.

use contracts::{Envelope, Traceparent};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer,
};
use opentelemetry::{Context, KeyValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The remote span context a `traceparent` stands for.
pub fn span_context(traceparent: &Traceparent) -> SpanContext {
    SpanContext::new(
        TraceId::from(traceparent.trace_id),
        SpanId::from(traceparent.span_id),
        if traceparent.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        true,
        TraceState::default(),
    )
}

/// An OpenTelemetry context whose parent is the span `traceparent` names.
pub fn remote_context(traceparent: &Traceparent) -> Context {
    Context::new().with_remote_span_context(span_context(traceparent))
}

/// Makes `span` a child of `traceparent`'s span and records the trace and span ids on it,
/// so that every log line under it carries them.
pub fn adopt(span: &tracing::Span, traceparent: &Traceparent) {
    // Fails only when the span was already entered or is disabled: it then keeps its own.
    let _ = span.set_parent(remote_context(traceparent));
    span.record("trace_id", traceparent.trace_id_hex());
    let own = span.context().span().span_context().clone();
    if own.is_valid() {
        span.record("span_id", own.span_id().to_string());
    }
}

/// The `traceparent` of `span` itself, for events published under it; `None` when no
/// tracer is installed (the span has no context of its own).
pub fn traceparent_of(span: &tracing::Span) -> Option<Traceparent> {
    let own = span.context().span().span_context().clone();
    own.is_valid().then(|| Traceparent {
        trace_id: u128::from_be_bytes(own.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(own.span_id().to_bytes()),
        sampled: own.is_sampled(),
    })
}

/// The current span's `traceparent` when it is of `traceparent`'s trace (a consumer's
/// span, say), else `traceparent`: the context to store for work that continues the trace
/// later, outside this span.
pub fn within(traceparent: Traceparent) -> Traceparent {
    traceparent_of(&tracing::Span::current())
        .filter(|own| own.trace_id == traceparent.trace_id)
        .unwrap_or(traceparent)
}

/// Starts and ends the `publish` span of each event and points the event's `traceparent`
/// at it, in place. Leaves events as they are when no tracer is installed.
pub(crate) fn published(events: &mut [Envelope]) {
    let tracer = opentelemetry::global::tracer("messaging");
    let current = tracing::Span::current().context();
    for event in events {
        let Some(tp) = event.traceparent.as_deref().and_then(Traceparent::parse) else {
            continue;
        };
        // Under the span that wrote the event when it is of the same trace; else under
        // the context the event already names: its cause's span (see `Cause`), which
        // the trace shows.
        let parent = if current.span().span_context().trace_id() == TraceId::from(tp.trace_id) {
            current.clone()
        } else {
            remote_context(&tp)
        };
        let mut span = tracer
            .span_builder(format!("publish {}", event.event_type))
            .with_kind(SpanKind::Producer)
            .with_attributes(vec![
                KeyValue::new("messaging.destination.name", event.event_type.clone()),
                KeyValue::new("messaging.message.id", event.id.to_string()),
                KeyValue::new("module", event.source.clone()),
            ])
            .start_with_context(&tracer, &parent);
        let own = span.span_context().clone();
        span.end();
        if !own.is_valid() {
            continue;
        }
        event.traceparent = Some(
            Traceparent {
                trace_id: tp.trace_id,
                span_id: u64::from_be_bytes(own.span_id().to_bytes()),
                sampled: tp.sampled,
            }
            .to_string(),
        );
    }
}

/// The span a consumer handles a batch under (see the module's documentation).
pub(crate) fn consume_span(module: &'static str, events: &[&Envelope]) -> tracing::Span {
    let span = tracing::info_span!(
        "consume",
        module,
        otel.kind = "consumer",
        events = events.len(),
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let mut contexts = events
        .iter()
        .filter_map(|e| e.traceparent.as_deref().and_then(Traceparent::parse));
    if let Some(first) = contexts.next() {
        adopt(&span, &first);
        for other in contexts {
            span.add_link(span_context(&other));
        }
    }
    span
}
