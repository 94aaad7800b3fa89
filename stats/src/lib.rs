//! `troupe stats`: the reference analytics consumer of the event stream. It keeps, per
//! owner, hour, agent role and model, attempts and how they ended, their durations (for
//! percentiles), calls, tokens and cost, in the store's `stats_*` tables, which
//! `GET /api/stats` reads.
//!
//! Each event is counted once, however often it arrives: the store keeps a cursor per task
//! (the seq its log is counted up to) and moves it in the same transaction as the counts,
//! and a message is acknowledged only after that transaction commits. A repeat (a
//! redelivery, a replay of the stream) is at or below the cursor and counts nothing; a gap
//! (events the stream no longer has, or never had) is read from the store, the log being
//! the truth the stream follows.
//!
//! Distributed, it reads the EVENTS JetStream stream with a durable pull consumer of its
//! own ([`stream`]); embedded, it follows the in-process bus and catches up from the store
//! ([`local`]).

mod fold;
pub mod local;
pub mod stream;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use troupe_events::stats::{CursorMove, StatsCursor, StatsDelta};
use troupe_events::store::LOG_PAGE;
use troupe_events::{Behind, RawEvent, Store};
use uuid::Uuid;

pub use fold::fold;

/// Times a batch is counted again when another consumer moved one of its cursors first.
const CONFLICT_RETRIES: u32 = 5;
/// Tasks read per round of the catch-up.
const BEHIND_PAGE: u32 = 100;
/// Event bytes a catch-up counts in one transaction.
const GATHERED_BYTES: usize = 4 << 20;

fn add(total: &mut Applied, more: Applied) {
    total.tasks += more.tasks;
    total.events += more.events;
}

/// Cursors read a moment ago, by task (`None`: the task has none yet), so that counting
/// the events read after them does not read them again. Each is used once: a batch
/// counted again after a conflict reads the cursors afresh.
type KnownCursors = HashMap<Uuid, Option<StatsCursor>>;

/// What one batch changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Tasks whose cursor moved.
    pub tasks: usize,
    /// Events counted, read from the store to fill gaps included.
    pub events: u64,
}

#[derive(Clone)]
pub struct StatsConsumer {
    store: Arc<dyn Store>,
}

impl StatsConsumer {
    pub fn new(store: Arc<dyn Store>) -> Self {
        StatsConsumer { store }
    }

    /// Counts every event of `batch` not counted yet, and those the store has before it
    /// that were never counted, in one transaction.
    pub async fn apply(&self, batch: &[RawEvent]) -> anyhow::Result<Applied> {
        self.apply_after(batch, &mut KnownCursors::new()).await
    }

    /// [`Self::apply`], taking from `known` the cursors of tasks it has.
    async fn apply_after(
        &self,
        batch: &[RawEvent],
        known: &mut KnownCursors,
    ) -> anyhow::Result<Applied> {
        for _ in 0..CONFLICT_RETRIES {
            let (delta, applied) = self.delta_for(batch, known).await?;
            if delta.is_empty() || self.store.apply_stats(&delta).await? {
                return Ok(applied);
            }
            tracing::debug!("another stats consumer counted part of this batch; counting it again");
        }
        anyhow::bail!(
            "other stats consumers counted the same tasks first {CONFLICT_RETRIES} times in a row; \
             this batch is left to come again"
        )
    }

    /// Counts every task's log up to its end as the store has it now: what a feed did not
    /// carry (the stream drops what is past its retention), or, embedded, everything.
    /// Many tasks' events go in one transaction, up to [`GATHERED_BYTES`] at a time. Scans
    /// every task, so it runs every few seconds at most.
    pub async fn catch_up_all(&self) -> anyhow::Result<Applied> {
        let mut total = Applied::default();
        loop {
            let behind = self.store.stats_behind(BEHIND_PAGE).await?;
            let round = self.count_behind(&behind, &mut KnownCursors::new()).await?;
            total.tasks += round.tasks;
            total.events += round.events;
            // A round that moved nothing would find the same tasks again.
            if behind.len() < BEHIND_PAGE as usize || round.events == 0 {
                return Ok(total);
            }
        }
    }

    /// Counts a page of each task's events past its cursor, gathered into as few
    /// transactions as their size allows.
    async fn count_behind(
        &self,
        behind: &[Behind],
        known: &mut KnownCursors,
    ) -> anyhow::Result<Applied> {
        let mut applied = Applied::default();
        let mut gathered: Vec<RawEvent> = vec![];
        let mut bytes = 0;
        for task in behind {
            let page = self
                .store
                .events_after(task.task_id, task.through, LOG_PAGE)
                .await?;
            bytes += page.iter().map(|e| e.json.len()).sum::<usize>();
            gathered.extend(page);
            if bytes >= GATHERED_BYTES {
                add(&mut applied, self.apply_after(&gathered, known).await?);
                gathered.clear();
                bytes = 0;
            }
        }
        if !gathered.is_empty() {
            add(&mut applied, self.apply_after(&gathered, known).await?);
        }
        Ok(applied)
    }

    /// [`Self::catch_up_all`] for a feed's loop, which goes on whatever happens.
    pub async fn catch_up_logged(&self) {
        match self.catch_up_all().await {
            Ok(applied) if applied.events > 0 => tracing::info!(
                tasks = applied.tasks,
                events = applied.events,
                "the stats consumer counted from the store what its feed had not carried"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "the stats consumer's catch-up failed"),
        }
    }

    /// Counts `tasks`' logs past their cursors as the store has them now, a page each:
    /// the embedded feed's tasks that the bus said have new events.
    pub async fn count_tasks(
        &self,
        tasks: impl IntoIterator<Item = Uuid>,
    ) -> anyhow::Result<Applied> {
        let mut behind = vec![];
        let mut known = KnownCursors::new();
        for task_id in tasks {
            let cursor = self.store.stats_cursor(task_id).await?;
            behind.push(Behind {
                task_id,
                through: cursor.as_ref().map_or(0, |c| c.seq),
                last_seq: u64::MAX,
            });
            known.insert(task_id, cursor);
        }
        self.count_behind(&behind, &mut known).await
    }

    async fn delta_for(
        &self,
        batch: &[RawEvent],
        known: &mut KnownCursors,
    ) -> troupe_events::Result<(StatsDelta, Applied)> {
        let mut by_task: BTreeMap<Uuid, Vec<&RawEvent>> = BTreeMap::new();
        for event in batch {
            by_task.entry(event.task_id).or_default().push(event);
        }
        let mut delta = StatsDelta::default();
        let mut applied = Applied::default();
        for (task_id, mut events) in by_task {
            events.sort_by_key(|e| e.seq);
            let cursor = match known.remove(&task_id) {
                Some(cursor) => cursor,
                None => self.store.stats_cursor(task_id).await?,
            };
            if let Some(counted) = self
                .count_task(cursor, task_id, &events, &mut delta)
                .await?
            {
                applied.tasks += 1;
                applied.events += counted;
            }
        }
        Ok((delta, applied))
    }

    /// Folds the task's events past `found`, its cursor, into `delta`, reading from the
    /// store what the batch lacks; `None` when there is nothing new (or the task is gone).
    async fn count_task(
        &self,
        found: Option<StatsCursor>,
        task_id: Uuid,
        events: &[&RawEvent],
        delta: &mut StatsDelta,
    ) -> troupe_events::Result<Option<u64>> {
        let last = events.last().map_or(0, |e| e.seq);
        let from = found.as_ref().map(|c| c.seq);
        let counted = from.unwrap_or(0);
        if last <= counted {
            return Ok(None);
        }
        let Some(mut cursor) = found.or(self.new_cursor(task_id).await?) else {
            return Ok(None);
        };
        let new = self.events_between(task_id, counted, last, events).await?;
        for raw in &new {
            match raw.parse() {
                Ok(event) => fold(&cursor, &event, delta),
                Err(e) => tracing::warn!(%task_id, seq = raw.seq, error = %e,
                    "an event the stats consumer cannot read is not counted"),
            }
        }
        cursor.seq = last;
        delta.cursors.push(CursorMove { from, to: cursor });
        Ok(Some(new.len() as u64))
    }

    /// A cursor at the start of a task never counted, with its owner and requested route.
    async fn new_cursor(&self, task_id: Uuid) -> troupe_events::Result<Option<StatsCursor>> {
        Ok(self.store.task(task_id).await?.map(|task| StatsCursor {
            task_id,
            owner_id: task.owner_id,
            provider: task.spec.provider.clone(),
            model: task.spec.model.clone().unwrap_or_default(),
            seq: 0,
        }))
    }

    /// The events `(after, through]`: the batch's own when it has them all, else the store's.
    async fn events_between(
        &self,
        task_id: Uuid,
        after: u64,
        through: u64,
        batch: &[&RawEvent],
    ) -> troupe_events::Result<Vec<RawEvent>> {
        let mut wanted = after + 1;
        let mut from_batch = vec![];
        for event in batch.iter().filter(|e| e.seq > after) {
            if event.seq != wanted {
                break;
            }
            from_batch.push((*event).clone());
            wanted += 1;
        }
        if wanted > through {
            return Ok(from_batch);
        }
        let mut events = vec![];
        let mut read = after;
        while read < through {
            let page = self.store.events_after(task_id, read, LOG_PAGE).await?;
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            events.extend(page.into_iter().filter(|e| e.seq <= through));
            read = last;
        }
        Ok(events)
    }
}
