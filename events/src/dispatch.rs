//! The outbox dispatcher: gets committed tasks onto the work queue. The api queues a task
//! right after committing it; this loop catches the ones whose publish never happened
//! (a crash between commit and publish, a queue that was down or full).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::queue::TaskQueue;
use crate::store::{Dispatch, Store};

/// Queues the task and clears its outbox row.
pub async fn dispatch(store: &dyn Store, queue: &dyn TaskQueue, dispatch: Dispatch) -> Result<()> {
    queue.enqueue(dispatch).await?;
    store.mark_dispatched(dispatch).await
}

/// Re-dispatches outbox rows older than `grace` every `every`, until `shutdown`.
pub async fn run_dispatcher(
    store: Arc<dyn Store>,
    queue: Arc<dyn TaskQueue>,
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
        let pending = match store.undispatched(older_than, 100).await {
            Ok(pending) => pending,
            Err(e) => {
                tracing::warn!(error = %e, "reading the outbox failed");
                continue;
            }
        };
        for pending in pending {
            let task_id = pending.task_id;
            match dispatch(store.as_ref(), queue.as_ref(), pending).await {
                Ok(()) => tracing::info!(%task_id, "dispatched a task from the outbox"),
                Err(e) => {
                    tracing::warn!(%task_id, error = %e, "dispatching from the outbox failed");
                    break;
                }
            }
        }
    }
}
