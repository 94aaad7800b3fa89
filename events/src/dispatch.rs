//! The outbox dispatcher: gets committed tasks onto the work queue. The api queues a task
//! right after committing it; this loop catches the ones whose publish never happened
//! (a crash between commit and publish, a queue that was down or full).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::Result;
use crate::queue::TaskQueue;
use crate::store::{Dispatch, Store};
use uuid::Uuid;

/// Rows cleared per statement.
const CLEAR_BATCH: usize = 256;
/// Rows waiting to be cleared; past that, a dispatch clears its own row.
const CLEAR_QUEUE: usize = 4096;
/// Rows one dispatcher round takes.
const ROUND: u32 = 100;

/// Gets committed tasks onto the queue and clears their outbox rows. Rows are cleared in
/// the background, many per statement, so that a submit waits for one write, not two; a
/// row a crash leaves behind only gets its task queued twice, which workers expect (the
/// queue's message id and the task's lease tell the copies apart).
#[derive(Clone)]
pub struct Outbox {
    store: Arc<dyn Store>,
    queue: Arc<dyn TaskQueue>,
    cleared: mpsc::Sender<Dispatch>,
}

impl Outbox {
    pub fn start(store: Arc<dyn Store>, queue: Arc<dyn TaskQueue>) -> Outbox {
        let (cleared, rows) = mpsc::channel(CLEAR_QUEUE);
        tokio::spawn(clear(store.clone(), rows));
        Outbox {
            store,
            queue,
            cleared,
        }
    }

    /// Queues the task now; if that fails, the dispatcher queues it from its row. The
    /// `enqueue` span's context travels with the job: the worker's run is its child.
    pub async fn dispatch(&self, dispatch: Dispatch) -> Result<()> {
        let span = tracing::info_span!("enqueue", task_id = %dispatch.task_id, seq = dispatch.seq);
        self.queue.enqueue(dispatch).instrument(span).await?;
        if self.cleared.try_send(dispatch).is_err() {
            self.store.mark_dispatched(&[dispatch]).await?;
        }
        Ok(())
    }

    /// Re-dispatches outbox rows older than `grace` every `every`, until `shutdown`.
    pub async fn run_dispatcher(
        self,
        every: Duration,
        grace: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let older_than = Utc::now() - chrono::Duration::from_std(grace).unwrap_or_default();
            let pending = match self.store.undispatched(older_than, ROUND).await {
                Ok(pending) => pending,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the outbox failed");
                    continue;
                }
            };
            // A round short of its limit has seen the whole backlog; only a full one counts.
            let backlog = match pending.len() as u64 {
                seen if seen < u64::from(ROUND) => Ok(seen),
                _ => self.store.count_undispatched(older_than).await,
            };
            match backlog {
                Ok(rows) => crate::metrics::outbox_backlog(rows),
                Err(e) => tracing::warn!(error = %e, "counting the outbox failed"),
            }
            for pending in pending {
                let task_id = pending.task_id;
                match self.dispatch(pending).await {
                    Ok(()) => tracing::info!(%task_id, "dispatched a task from the outbox"),
                    Err(e) => {
                        tracing::warn!(%task_id, error = %e, "dispatching from the outbox failed");
                        break;
                    }
                }
            }
        }
    }
}

/// Clears dispatched rows as they come, a batch per statement, until every [`Outbox`]
/// is gone. A failure leaves rows for the dispatcher, which queues their tasks again.
async fn clear(store: Arc<dyn Store>, mut rows: mpsc::Receiver<Dispatch>) {
    let mut batch = Vec::with_capacity(CLEAR_BATCH);
    while rows.recv_many(&mut batch, CLEAR_BATCH).await > 0 {
        if let Err(e) = store.mark_dispatched(&batch).await {
            tracing::warn!(error = %e, rows = batch.len(), "clearing dispatched outbox rows failed; their tasks will be queued again");
        }
        batch.clear();
    }
}

/// Admits what the owner's limit of active tasks allows now, and queues it. Best effort:
/// a task the queue refuses keeps its outbox row for the dispatcher, and an admission a
/// crash lost is made by the sweep.
pub async fn admit(store: &dyn Store, queue: &dyn TaskQueue, owner_id: Uuid, limit: u32) {
    let dispatches = match store.admit(owner_id, limit).await {
        Ok(dispatches) => dispatches,
        Err(e) => {
            tracing::warn!(%owner_id, error = %e, "admitting waiting tasks failed; the sweep will");
            return;
        }
    };
    let mut queued = Vec::with_capacity(dispatches.len());
    for dispatch in dispatches {
        let span = tracing::info_span!("enqueue", task_id = %dispatch.task_id, seq = dispatch.seq);
        match queue.enqueue(dispatch).instrument(span).await {
            Ok(()) => queued.push(dispatch),
            Err(e) => {
                tracing::warn!(task_id = %dispatch.task_id, error = %e, "queueing an admitted task failed; the outbox will retry")
            }
        }
    }
    if !queued.is_empty()
        && let Err(e) = store.mark_dispatched(&queued).await
    {
        tracing::warn!(error = %e, "clearing admitted tasks' outbox rows failed; they will be queued again");
    }
}

/// [`admit`] for the owner of a task that has just ended or paused, when they have tasks
/// waiting and a limit.
pub async fn admit_after(
    store: &dyn Store,
    queue: &dyn TaskQueue,
    task_id: Uuid,
    limit: Option<u32>,
) {
    let Some(limit) = limit else {
        return;
    };
    match store.waiting_owner(task_id).await {
        Ok(Some(owner_id)) => admit(store, queue, owner_id, limit).await,
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(%task_id, error = %e, "looking for its owner's waiting tasks failed; the sweep will")
        }
    }
}
