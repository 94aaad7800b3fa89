//! Every stored event reaches the `EVENTS` stream exactly once per `(taskId, seq)`.
//!
//! The store is the truth and the stream follows it. A worker publishes each batch right
//! after committing it ([`TaskPublisher`]), waits for the stream's acks, and records how
//! far the stream has the task (`tasks.published_seq`, a second or so behind). Whatever is
//! stored past that mark once no worker holds the task (its worker died between commit and
//! publish, or NATS was away) is published again from the store by the [`Relay`]. A
//! publish may thus be repeated, never skipped; the stream drops the repeats because every
//! message carries `Nats-Msg-Id: <taskId>:<seq>` and repeats come within its duplicate
//! window (see `EventStreamLimits::duplicate_window`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bus::Bus;
use crate::error::Result;
use crate::event::RawEvent;
use crate::store::{Behind, Store};

/// Events read from the store and published in one go.
const PAGE: u32 = 256;

/// Publishes the task's stored events after `published` up to `through`, a page at a time,
/// moving `published` to the last one the stream acknowledged.
pub async fn publish_stored(
    store: &dyn Store,
    bus: &dyn Bus,
    task_id: Uuid,
    published: &mut u64,
    through: u64,
) -> Result<()> {
    while *published < through {
        let mut page = store.events_after(task_id, *published, PAGE).await?;
        page.retain(|e| e.seq <= through);
        let Some(last) = page.last().map(|e| e.seq) else {
            // The log ends before `through`: nothing more exists to publish.
            return Ok(());
        };
        bus.publish(&page).await?;
        *published = last;
    }
    Ok(())
}

/// How often the marks of many tasks are written together.
const MARKS_EVERY: Duration = Duration::from_millis(250);

/// How far the stream has each task, waiting to be written to the store: the marks of
/// all of a worker's tasks go in one statement every [`MARKS_EVERY`]. A write per task at
/// the end of each run was a round trip per task on the database the appends use.
#[derive(Clone, Default)]
pub struct Marks {
    pending: Arc<std::sync::Mutex<HashMap<Uuid, u64>>>,
}

impl Marks {
    /// The stream has the task's events up to `through`.
    pub fn record(&self, task_id: Uuid, through: u64) {
        let mut pending = self.pending.lock().expect("marks lock");
        let mark = pending.entry(task_id).or_default();
        *mark = (*mark).max(through);
    }

    /// Writes what is pending; on failure it stays pending for the next time.
    pub async fn flush(&self, store: &dyn Store) -> Result<()> {
        let marks: Vec<(Uuid, u64)> = {
            let mut pending = self.pending.lock().expect("marks lock");
            let mut marks: Vec<_> = pending.drain().collect();
            // One order for every writer: concurrent updates of the same rows never deadlock.
            marks.sort_unstable();
            marks
        };
        if marks.is_empty() {
            return Ok(());
        }
        let written = store.mark_published(&marks).await;
        if written.is_err() {
            for (task_id, through) in marks {
                self.record(task_id, through);
            }
        }
        written
    }

    /// Writes the marks every [`MARKS_EVERY`] until `shutdown`, and once more then.
    pub async fn run(self, store: Arc<dyn Store>, shutdown: CancellationToken) {
        loop {
            let stopping = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = tokio::time::sleep(MARKS_EVERY) => false,
            };
            if let Err(e) = self.flush(store.as_ref()).await {
                tracing::warn!(error = %e, "recording how far the event stream has tasks failed; retrying");
            }
            if stopping {
                return;
            }
        }
    }
}

/// Batches a [`TaskPublisher`] holds for the stream; past that it drops them and reads
/// them back from the store, so a stream that is slow or away never holds up the appender.
const QUEUED_BATCHES: usize = 64;
/// How long after an ack the published mark is written: once a second at most per task.
const MARK_EVERY: Duration = Duration::from_secs(1);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long the end of a run waits for the stream; after that the relay takes over.
const FINISH_WAIT: Duration = Duration::from_secs(5);

/// Publishes one task's events to the stream as its appender stores them, in order, and
/// records what the stream acknowledged. A batch that fails (or that it had no room for)
/// is published again from the store, before anything after it.
pub struct TaskPublisher {
    tx: mpsc::Sender<Vec<RawEvent>>,
    stored: Arc<AtomicU64>,
    join: JoinHandle<()>,
}

impl TaskPublisher {
    /// `created`: the task's `task_created` when it is all its log holds (a run's first
    /// pickup), sent from memory: the api stores it and publishes nothing, and reading it
    /// and the mark back from the store cost two round trips a task.
    pub fn start(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        marks: Marks,
        task_id: Uuid,
        created: Option<RawEvent>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUED_BATCHES);
        let stored = Arc::new(AtomicU64::new(0));
        let created = created.filter(|e| e.seq == 1 && e.task_id == task_id);
        let cursor = StreamCursor {
            store,
            bus,
            task_id,
            // A log of one event has a mark of 0, or of 1 if an earlier run published it
            // and died: publishing it again is a repeat the stream drops.
            published: created.as_ref().map(|_| 0),
            created,
            marks,
            stored: stored.clone(),
            marked: 0,
            failures: 0,
        };
        let join = tokio::spawn(tracing::Instrument::in_current_span(follow(cursor, rx)));
        TaskPublisher { tx, stored, join }
    }

    /// Hands over a batch the store has committed. Never waits.
    pub fn offer(&self, batch: Vec<RawEvent>) {
        if let Some(last) = batch.last() {
            self.stored.fetch_max(last.seq, Ordering::Relaxed);
        }
        // Full or gone: the batch is read back from the store when its turn comes.
        let _ = self.tx.try_send(batch);
    }

    /// Publishes what is left and writes the mark, for up to [`FINISH_WAIT`].
    pub async fn finish(self) {
        drop(self.tx);
        let abort = self.join.abort_handle();
        if tokio::time::timeout(FINISH_WAIT, self.join).await.is_err() {
            abort.abort();
            tracing::warn!(
                "the event stream did not take a task's last events in time; the relay will publish them"
            );
        }
    }
}

async fn follow(mut cursor: StreamCursor, mut rx: mpsc::Receiver<Vec<RawEvent>>) {
    let mut last_mark = Instant::now();
    loop {
        let wake = cursor.wake_at(last_mark);
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => cursor.take(&batch).await,
                None => break,
            },
            _ = sleep_until(wake) => cursor.catch_up().await,
        }
        if cursor.unmarked() && last_mark.elapsed() >= MARK_EVERY {
            cursor.mark();
            last_mark = Instant::now();
        }
    }
    cursor.catch_up().await;
    cursor.mark();
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How far one task is in the stream, as its publisher knows it.
struct StreamCursor {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    task_id: Uuid,
    /// The last seq the stream acknowledged, in an unbroken run from the task's start;
    /// `None` until read from the store.
    published: Option<u64>,
    /// `task_created`, to publish from memory rather than from the store.
    created: Option<RawEvent>,
    marks: Marks,
    stored: Arc<AtomicU64>,
    marked: u64,
    failures: u32,
}

impl StreamCursor {
    fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    fn behind(&self) -> bool {
        self.published.is_none_or(|p| p < self.stored())
    }

    fn unmarked(&self) -> bool {
        self.published.is_some_and(|p| p > self.marked)
    }

    fn wake_at(&self, last_mark: Instant) -> Option<Instant> {
        if self.behind() {
            let backoff = RETRY_FIRST.saturating_mul(1 << self.failures.min(5));
            Some(Instant::now() + backoff.min(RETRY_MAX))
        } else if self.unmarked() {
            Some(last_mark + MARK_EVERY)
        } else {
            None
        }
    }

    /// What the store has before the batch and the stream lacks is published from the
    /// store first (at a run's start, `task_created`; after a failure, what failed); then
    /// the batch's own events the stream lacks, straight from the batch.
    async fn take(&mut self, batch: &[RawEvent]) {
        let Some(first) = batch.first() else {
            return;
        };
        let Some(mut published) = self.known_published().await else {
            return;
        };
        let mut result = self.publish_stored(&mut published, first.seq - 1).await;
        if result.is_ok() {
            let fresh = &batch[batch.partition_point(|e| e.seq <= published)..];
            if let Some(last) = fresh.last() {
                result = self.bus.publish(fresh).await;
                if result.is_ok() {
                    published = last.seq;
                }
            }
        }
        self.settle(published, result);
    }

    async fn catch_up(&mut self) {
        if !self.behind() {
            return;
        }
        let Some(mut published) = self.known_published().await else {
            return;
        };
        let result = self.publish_stored(&mut published, self.stored()).await;
        self.settle(published, result);
    }

    /// How far the stream has the task: known since the last publish, else the store's mark.
    async fn known_published(&mut self) -> Option<u64> {
        if self.published.is_none() {
            match self.store.published_through(self.task_id).await {
                Ok(published) => self.published = Some(published),
                Err(e) => self.failed(&e),
            }
        }
        self.published
    }

    async fn publish_stored(&mut self, published: &mut u64, through: u64) -> Result<()> {
        if *published == 0
            && through >= 1
            && let Some(created) = self.created.take()
        {
            self.bus.publish(std::slice::from_ref(&created)).await?;
            *published = 1;
        }
        publish_stored(
            self.store.as_ref(),
            self.bus.as_ref(),
            self.task_id,
            published,
            through,
        )
        .await
    }

    fn settle(&mut self, published: u64, result: Result<()>) {
        self.published = Some(published);
        match result {
            Ok(()) => self.failures = 0,
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&mut self, error: &crate::Error) {
        self.failures = self.failures.saturating_add(1);
        tracing::warn!(task_id = %self.task_id, failures = self.failures, %error,
            "publishing events to the event stream failed; retrying from the store");
    }

    fn mark(&mut self) {
        if let Some(published) = self.published.filter(|p| *p > self.marked) {
            self.marks.record(self.task_id, published);
            self.marked = published;
        }
    }
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// How long a task must have been left alone before its unpublished events are
    /// published again: longer than a live publisher takes to write its mark.
    pub grace: Duration,
    /// How often the relay looks.
    pub every: Duration,
    /// Most tasks taken in one pass.
    pub batch: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            grace: Duration::from_secs(10),
            every: Duration::from_secs(5),
            batch: 100,
        }
    }
}

/// What one pass of the relay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayPass {
    pub tasks: usize,
    pub events: u64,
}

/// Publishes from the store what workers stored but the stream never acknowledged. Any
/// number may run (one in every worker): they repeat each other's publishes at worst,
/// and the stream drops the repeats.
pub struct Relay {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    config: RelayConfig,
}

impl Relay {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, config: RelayConfig) -> Self {
        Relay { store, bus, config }
    }

    /// One pass over the tasks left behind. Stops at the first failure to publish: the
    /// stream is away, and the next pass tries again.
    pub async fn relay_once(&self) -> Result<RelayPass> {
        let older_than = Utc::now() - self.config.grace;
        let behind = self
            .store
            .unpublished(older_than, self.config.batch)
            .await?;
        let mut pass = RelayPass::default();
        for task in behind {
            pass.events += self.relay_task(task).await?;
            pass.tasks += 1;
        }
        Ok(pass)
    }

    async fn relay_task(&self, task: Behind) -> Result<u64> {
        let mut published = task.through;
        let result = publish_stored(
            self.store.as_ref(),
            self.bus.as_ref(),
            task.task_id,
            &mut published,
            task.last_seq,
        )
        .await;
        if published > task.through {
            self.store
                .mark_published(&[(task.task_id, published)])
                .await?;
            crate::metrics::relayed(published - task.through);
            tracing::info!(task_id = %task.task_id, from = task.through + 1, through = published,
                "published stored events the event stream had not acknowledged");
        }
        result.map(|()| published - task.through)
    }

    /// Runs passes every `every` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        crate::runtime::each_tick(self.config.every, &shutdown, || async {
            if let Err(e) = self.relay_once().await {
                tracing::warn!(error = %e, "relaying unpublished events failed; trying again");
            }
        })
        .await;
    }
}
