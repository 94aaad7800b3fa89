//! Prometheus metrics: the process-wide recorder every crate records into, and the series
//! of the event log itself (commits, publishes, the queue's deliveries, the outbox).
//!
//! Each crate lists its series in one place (a `SERIES` table of [`Series`]), records them
//! where the thing they count happens, and the api and the worker render the recorder's
//! text on `/metrics`. Label values are low-cardinality by construction: outcomes, kinds,
//! provider names, roles of the catalogue; never task or user ids.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::event::RawEvent;
use crate::task::TaskStatus;

/// What a series is, as Prometheus types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported series: its name (the `troupe_` prefix, units in the name), type, labels
/// and meaning. `scripts/check-deploy` reads these tables to check the Grafana dashboard.
#[derive(Debug, Clone, Copy)]
pub struct Series {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

impl Series {
    pub const fn counter(
        name: &'static str,
        labels: &'static [&'static str],
        help: &'static str,
    ) -> Series {
        Series {
            name,
            kind: Kind::Counter,
            labels,
            help,
        }
    }

    pub const fn gauge(
        name: &'static str,
        labels: &'static [&'static str],
        help: &'static str,
    ) -> Series {
        Series {
            name,
            kind: Kind::Gauge,
            labels,
            help,
        }
    }

    pub const fn histogram(
        name: &'static str,
        labels: &'static [&'static str],
        help: &'static str,
    ) -> Series {
        Series {
            name,
            kind: Kind::Histogram,
            labels,
            help,
        }
    }
}

pub const EVENTS_APPENDED: Series = Series::counter(
    "troupe_events_appended_total",
    &[],
    "Events committed to task logs by this process (a worker's appends, the api's submits and control changes).",
);
pub const APPEND_BATCH_SIZE: Series = Series::histogram(
    "troupe_events_append_batch_size",
    &[],
    "Events per append transaction of a task's writer.",
);
pub const EVENTS_PUBLISHED: Series = Series::counter(
    "troupe_events_published_total",
    &[],
    "Committed events published on the bus: when distributed, those the EVENTS stream acknowledged (repeats the stream dropped included).",
);
pub const EVENTS_RELAYED: Series = Series::counter(
    "troupe_events_relayed_total",
    &[],
    "Stored events the relay published again because the EVENTS stream had not acknowledged them when no worker held their task any more.",
);
pub const TASKS_FINISHED: Series = Series::counter(
    "troupe_tasks_finished_total",
    &["outcome"],
    "Terminal events committed by this process, by outcome: completed, failed or cancelled. A retried task can finish again.",
);
pub const QUEUE_DELIVERIES: Series = Series::counter(
    "troupe_queue_deliveries_total",
    &[],
    "Jobs the task queue handed to this process's worker.",
);
pub const QUEUE_REDELIVERIES: Series = Series::counter(
    "troupe_queue_redeliveries_total",
    &[],
    "Deliveries of a job that had been delivered before (a worker crashed, handed it back or failed it).",
);
pub const OUTBOX_BACKLOG: Series = Series::gauge(
    "troupe_outbox_backlog",
    &[],
    "Committed tasks not yet on the work queue after the dispatcher's 5 s grace, at its last round (every 2 s).",
);

/// The event log's series.
pub const SERIES: &[Series] = &[
    EVENTS_APPENDED,
    APPEND_BATCH_SIZE,
    EVENTS_PUBLISHED,
    EVENTS_RELAYED,
    TASKS_FINISHED,
    QUEUE_DELIVERIES,
    QUEUE_REDELIVERIES,
    OUTBOX_BACKLOG,
];

/// Buckets of every `_seconds` histogram: from a fast first token to a slow agent.
const SECONDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Buckets of the append batch size: powers of two up to the appender's batch of 256.
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// How often histogram samples are folded into their buckets between scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder the first time (later calls return the
/// same one) and describes `series` in it, the event log's own always included.
///
/// Until this runs, recording costs nothing and nothing is kept: a process that serves no
/// `/metrics` never calls it. Histograms are rendered as Prometheus histograms (buckets),
/// never summaries; every histogram name ends in `_seconds` or is the batch size.
pub fn install(series: &[&[Series]]) -> &'static PrometheusHandle {
    let handle = HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(APPEND_BATCH_SIZE.name.into()), BATCH)
            })
            .expect("bucket lists are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed in this process");
        // Histogram samples wait in per-metric queues until upkeep (or a scrape) folds them
        // in: without it an unscraped process would grow without bound.
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP);
                    upkeep.run_upkeep();
                }
            })
            .expect("spawning the metrics upkeep thread");
        handle
    });
    for table in std::iter::once(SERIES).chain(series.iter().copied()) {
        describe(table);
    }
    handle
}

/// The recorder's current text, or nothing when no recorder was installed.
pub fn render() -> String {
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// Gives each series its help text, and each series without labels its zero value, so
/// that a dashboard shows 0 rather than no data before the first occurrence.
fn describe(series: &[Series]) {
    for s in series {
        match s.kind {
            Kind::Counter => {
                ::metrics::describe_counter!(s.name, s.help);
                if s.labels.is_empty() {
                    ::metrics::counter!(s.name).increment(0);
                }
            }
            Kind::Gauge => {
                ::metrics::describe_gauge!(s.name, s.help);
                if s.labels.is_empty() {
                    ::metrics::gauge!(s.name).increment(0.0);
                }
            }
            Kind::Histogram => ::metrics::describe_histogram!(s.name, s.help),
        }
    }
}

/// Events a store committed: counted, and a terminal one counts its task as finished.
pub(crate) fn committed(events: &[RawEvent]) {
    ::metrics::counter!(EVENTS_APPENDED.name).increment(events.len() as u64);
    for event in events {
        if let Some(status) = TaskStatus::after_kind(&event.kind).filter(|s| s.is_terminal()) {
            ::metrics::counter!(TASKS_FINISHED.name, "outcome" => status.as_str()).increment(1);
        }
    }
}

/// A writer's append transaction committed `events`.
pub(crate) fn appended(events: &[RawEvent]) {
    ::metrics::histogram!(APPEND_BATCH_SIZE.name).record(events.len() as f64);
    committed(events);
}

pub(crate) fn published(events: usize) {
    ::metrics::counter!(EVENTS_PUBLISHED.name).increment(events as u64);
}

pub(crate) fn relayed(events: u64) {
    ::metrics::counter!(EVENTS_RELAYED.name).increment(events);
}

/// The queue handed out a job for the `delivered`th time.
pub(crate) fn delivered(delivered: u64) {
    ::metrics::counter!(QUEUE_DELIVERIES.name).increment(1);
    if delivered > 1 {
        ::metrics::counter!(QUEUE_REDELIVERIES.name).increment(1);
    }
}

pub(crate) fn outbox_backlog(rows: u64) {
    ::metrics::gauge!(OUTBOX_BACKLOG.name).set(rows as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_names_follow_the_conventions() {
        for s in SERIES {
            assert!(s.name.starts_with("troupe_"), "{}", s.name);
            match s.kind {
                Kind::Counter => assert!(s.name.ends_with("_total"), "{}", s.name),
                Kind::Gauge => assert!(!s.name.ends_with("_total"), "{}", s.name),
                Kind::Histogram => assert!(
                    s.name.ends_with("_seconds") || s.name == APPEND_BATCH_SIZE.name,
                    "{} would be rendered without buckets",
                    s.name
                ),
            }
        }
    }
}
