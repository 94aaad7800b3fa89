//! Trace context across the queue: the api's request span becomes the parent of the
//! worker's task span, so one trace shows a task from submit to its last event. W3C
//! `traceparent`/`tracestate`, carried in NATS headers (or beside the in-process job).

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// W3C trace headers, lower-case names. Empty when no trace is being recorded.
pub type TraceHeaders = HashMap<String, String>;

/// The current span's trace context, to send along with a job.
pub fn current() -> TraceHeaders {
    let mut headers = TraceHeaders::new();
    let context = tracing::Span::current().context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut headers);
    }
    headers
}

/// Makes `span` a child of the trace the headers carry, if they carry one.
pub fn link(span: &tracing::Span, headers: &TraceHeaders) {
    let parent = TraceContextPropagator::new().extract(headers);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Records `span`'s trace id in its `trace_id` field (declared `Empty`), so that every log
/// line inside the span names its trace. Call it after [`link`]: reading the id settles the
/// span's parent. Nothing is recorded when no trace is being recorded.
pub fn record_trace_id(span: &tracing::Span) {
    let context = span.context();
    let trace_id = context.span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn a_linked_span_joins_the_senders_trace() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!("request");
            let sent = request.in_scope(current);
            let trace_id = request.context().span().span_context().trace_id();
            assert!(sent["traceparent"].contains(&trace_id.to_string()));

            let task = tracing::info_span!("task", trace_id = tracing::field::Empty);
            link(&task, &sent);
            record_trace_id(&task);
            assert_eq!(task.context().span().span_context().trace_id(), trace_id);
        });
    }

    #[test]
    fn without_a_recorded_trace_nothing_is_sent_or_linked() {
        assert!(current().is_empty());
        let span = tracing::info_span!("task");
        link(&span, &TraceHeaders::new());
    }
}
