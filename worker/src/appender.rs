//! One appender per running task: the only path by which a worker writes the task's log.
//! Agents hand it event bodies; it numbers them, stores them in batches and publishes each
//! batch after commit: on a bus that keeps events, through the task's
//! [`TaskPublisher`], which waits for the stream's acks without holding up the next batch.
//! A seq conflict means another worker holds the task: we stop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use troupe_events::relay::{Marks, TaskPublisher};
use troupe_events::{Bus, Event, EventBody, RawEvent, Store};
use uuid::Uuid;

/// Events waiting for the appender. Agents wait when it is full, so a slow store slows
/// the agents instead of growing memory.
const QUEUE: usize = 512;
/// Most events stored in one transaction.
const BATCH: usize = 256;
const STORE_ATTEMPTS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("another worker is writing task {0}")]
    Lost(Uuid),
    #[error("cannot store events of task {task_id}: {source}")]
    Store {
        task_id: Uuid,
        source: troupe_events::Error,
    },
    #[error("the appender of task {0} stopped unexpectedly")]
    Crashed(Uuid),
}

#[derive(Clone)]
pub struct Emitter {
    tx: mpsc::Sender<EventBody>,
}

impl Emitter {
    /// Queues an event. Fails once the appender has stopped (the task was lost or the
    /// store is down), which tells the caller to stop working on the task.
    pub async fn emit(&self, body: EventBody) -> Result<(), Stopped> {
        self.tx.send(body).await.map_err(|_| Stopped)
    }
}

#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the task's appender has stopped")]
pub struct Stopped;

pub struct Appender {
    task_id: Uuid,
    join: JoinHandle<Result<u64, AppendError>>,
}

impl Appender {
    /// `halt` is cancelled the moment the appender stops for good (the task was lost or
    /// the store keeps failing), so that agents stop their provider calls at once.
    /// `log` is where the task's log ends at pickup.
    pub fn start(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        marks: Marks,
        task_id: Uuid,
        log: LogEnd,
        halt: CancellationToken,
    ) -> (Appender, Emitter) {
        let (tx, rx) = mpsc::channel(QUEUE);
        // In the task's span: its appends are children of the run.
        let join = tokio::spawn(Instrument::in_current_span(async move {
            let result = run(store, bus, marks, task_id, log, rx, &halt).await;
            if result.is_err() {
                halt.cancel();
            }
            result
        }));
        (Appender { task_id, join }, Emitter { tx })
    }

    /// Waits until everything emitted is stored, once every [`Emitter`] is dropped.
    /// Returns the last seq written.
    pub async fn finish(self) -> Result<u64, AppendError> {
        self.join
            .await
            .unwrap_or(Err(AppendError::Crashed(self.task_id)))
    }
}

/// Where a task's log ends when a run picks it up.
#[derive(Debug, Clone)]
pub struct LogEnd {
    pub last_seq: u64,
    /// `task_created`, when it is the log's only event: the stream is sent it from memory.
    pub created: Option<RawEvent>,
}

async fn run(
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    marks: Marks,
    task_id: Uuid,
    log: LogEnd,
    rx: mpsc::Receiver<EventBody>,
    halt: &CancellationToken,
) -> Result<u64, AppendError> {
    let stream = bus
        .keeps_events()
        .then(|| TaskPublisher::start(store.clone(), bus.clone(), marks, task_id, log.created));
    let stored = store_all(
        &store,
        &bus,
        stream.as_ref(),
        task_id,
        log.last_seq,
        rx,
        halt,
    )
    .await;
    if let Some(stream) = stream {
        stream.finish().await;
    }
    stored
}

async fn store_all(
    store: &Arc<dyn Store>,
    bus: &Arc<dyn Bus>,
    stream: Option<&TaskPublisher>,
    task_id: Uuid,
    mut last_seq: u64,
    mut rx: mpsc::Receiver<EventBody>,
    halt: &CancellationToken,
) -> Result<u64, AppendError> {
    let mut bodies = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut bodies, BATCH).await > 0 {
        let events: Vec<RawEvent> = bodies
            .drain(..)
            .enumerate()
            .map(|(i, body)| Event::new(task_id, last_seq + 1 + i as u64, body).to_raw())
            .collect();
        let append =
            tracing::info_span!("append", %task_id, from_seq = last_seq + 1, events = events.len());
        store_batch(store.as_ref(), task_id, last_seq, &events, halt)
            .instrument(append.clone())
            .await?;
        last_seq += events.len() as u64;
        match stream {
            Some(stream) => stream.offer(events),
            None => {
                if let Err(e) = bus.publish(&events).instrument(append).await {
                    // Followers fill the gap from the store; the log is what counts.
                    tracing::warn!(%task_id, error = %e, "publishing events failed");
                }
            }
        }
    }
    Ok(last_seq)
}

/// Stores one batch. An outage (the store unreachable, e.g. while PostgreSQL restarts) is
/// waited out for as long as it lasts, with backoff: the task is fine, and its agents wait
/// on the full queue meanwhile. Other errors are tried `STORE_ATTEMPTS` times.
async fn store_batch(
    store: &dyn Store,
    task_id: Uuid,
    expected: u64,
    events: &[RawEvent],
    halt: &CancellationToken,
) -> Result<(), AppendError> {
    let mut delay = Duration::from_millis(100);
    let mut failures = 0;
    loop {
        match store.append(task_id, events).await {
            Ok(()) => return Ok(()),
            Err(troupe_events::Error::SeqConflict { .. }) => {
                // After a failed attempt the commit may have landed anyway (the connection
                // died after COMMIT): if the log holds exactly our batch, it is ours.
                if failures > 0 && already_stored(store, task_id, expected, events).await {
                    return Ok(());
                }
                return Err(AppendError::Lost(task_id));
            }
            Err(source) if !source.is_outage() && failures + 1 >= STORE_ATTEMPTS => {
                return Err(AppendError::Store { task_id, source });
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(%task_id, failures, error = %e, "storing events failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = halt.cancelled() => return Err(AppendError::Store { task_id, source: e }),
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn already_stored(store: &dyn Store, task_id: Uuid, after: u64, events: &[RawEvent]) -> bool {
    let mut compared = 0;
    while compared < events.len() {
        let rest = &events[compared..];
        let from = after + compared as u64;
        match store.events_after(task_id, from, rest.len() as u32).await {
            Ok(stored) if !stored.is_empty() => {
                if !stored.iter().zip(rest).all(|(s, e)| s.json == e.json) {
                    return false;
                }
                compared += stored.len();
            }
            _ => return false,
        }
    }
    true
}
