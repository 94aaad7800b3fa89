//! The embedded feed: events as the in-process bus carries them, and a catch-up from the
//! store at start and every few seconds for whatever the bus did not carry (it carries no
//! `task_created`, drops what a lagging receiver missed, and keeps nothing across a
//! restart).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use troupe_events::{Bus, Store};

use crate::{Applied, StatsConsumer};

/// How often the store is checked for what the bus did not carry.
const CATCH_UP_EVERY: Duration = Duration::from_secs(5);
/// Most events counted in one transaction.
const BATCH: usize = 256;
/// Tasks read per round of the catch-up.
const BEHIND_PAGE: u32 = 100;

/// Counts every task's log up to its end as the store has it now.
pub async fn catch_up_all(consumer: &StatsConsumer, store: &dyn Store) -> anyhow::Result<Applied> {
    let mut total = Applied::default();
    loop {
        let behind = store.stats_behind(BEHIND_PAGE).await?;
        let mut round = Applied::default();
        for task in &behind {
            let done = consumer.catch_up(task.task_id, task.last_seq).await?;
            round.tasks += done.tasks;
            round.events += done.events;
        }
        total.tasks += round.tasks;
        total.events += round.events;
        // A round that moved nothing would find the same tasks again.
        if behind.len() < BEHIND_PAGE as usize || round.events == 0 {
            return Ok(total);
        }
    }
}

/// Follows `bus` and the store until `shutdown`.
pub async fn run(
    consumer: StatsConsumer,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
) {
    let mut live = loop {
        match bus.subscribe_all().await {
            Ok(live) => break live.ready_chunks(BATCH),
            Err(e) => {
                tracing::warn!(error = %e, "the stats consumer cannot follow the bus; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CATCH_UP_EVERY) => {}
        }
    };
    let mut tick = tokio::time::interval(CATCH_UP_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            batch = live.next() => match batch {
                Some(batch) => {
                    if let Err(e) = consumer.apply(&batch).await {
                        tracing::warn!(error = %e, "counting events failed; the catch-up will count them");
                    }
                }
                None => return,
            },
            _ = tick.tick() => {
                if let Err(e) = catch_up_all(&consumer, store.as_ref()).await {
                    tracing::warn!(error = %e, "the stats consumer's catch-up failed");
                }
            }
        }
    }
}
