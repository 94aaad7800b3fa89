//! The api's Prometheus series: submits and event streams. `GET /metrics` renders them
//! with every other series of the process (the event log's, and the worker's when
//! embedded).

use ::metrics::{Counter, Gauge};
use troupe_events::metrics::Series;

pub const TASKS_SUBMITTED: Series = Series::counter(
    "troupe_tasks_submitted_total",
    &["mode", "provider"],
    "Tasks created by submits, by execution mode and provider (a replayed Idempotency-Key creates none).",
);
pub const SSE_STREAMS_OPEN: Series = Series::gauge(
    "troupe_sse_streams_open",
    &[],
    "Event streams (SSE) this process is serving now.",
);
pub const SSE_EVENTS_SENT: Series = Series::counter(
    "troupe_sse_events_sent_total",
    &["phase"],
    "Events written to SSE clients, by phase: replay (in the log when the stream opened) or live (appended while it was open).",
);

/// The api's series.
pub const SERIES: &[Series] = &[TASKS_SUBMITTED, SSE_STREAMS_OPEN, SSE_EVENTS_SENT];

/// Installs the process's recorder, if not yet done, with the api's series.
pub fn install() {
    troupe_events::metrics::install(&[SERIES]);
}

pub(crate) fn submitted(mode: &'static str, provider: &str) {
    ::metrics::counter!(TASKS_SUBMITTED.name, "mode" => mode, "provider" => provider.to_string())
        .increment(1);
}

/// Held by an open event stream: counts it among the open ones until dropped.
pub(crate) struct StreamOpen(Gauge);

impl StreamOpen {
    pub fn new() -> Self {
        let open = ::metrics::gauge!(SSE_STREAMS_OPEN.name);
        open.increment(1.0);
        StreamOpen(open)
    }
}

impl Drop for StreamOpen {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Counts the events one stream sends. Those the log held when the stream opened are its
/// replay, the rest live. The counters are looked up once per stream, not per event.
pub(crate) struct Sent {
    replay: Counter,
    live: Counter,
    /// The log's last seq when the stream opened.
    opened_at: u64,
}

impl Sent {
    pub fn new(opened_at: u64) -> Self {
        Sent {
            replay: ::metrics::counter!(SSE_EVENTS_SENT.name, "phase" => "replay"),
            live: ::metrics::counter!(SSE_EVENTS_SENT.name, "phase" => "live"),
            opened_at,
        }
    }

    pub fn event(&self, seq: u64) {
        if seq <= self.opened_at {
            self.replay.increment(1);
        } else {
            self.live.increment(1);
        }
    }

    pub fn replayed(&self, events: usize) {
        self.replay.increment(events as u64);
    }
}
