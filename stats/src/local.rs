//! The embedded feed: the in-process bus says which tasks have new events, and their
//! events are counted from the store; a catch-up at start and every few seconds counts
//! whatever the bus did not say (it drops what a lagging receiver missed, and keeps
//! nothing across a restart).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use troupe_events::Bus;
use uuid::Uuid;

use crate::StatsConsumer;

/// How often every task is checked for what the bus did not carry.
const CATCH_UP_EVERY: Duration = Duration::from_secs(5);
/// How often the tasks the bus saw events of are counted, together.
const COUNT_EVERY: Duration = Duration::from_millis(500);
/// Events taken off the bus at once.
const BATCH: usize = 256;

/// Follows `bus` and the store until `shutdown`. The bus says which tasks have new events;
/// their events are counted from the store every [`COUNT_EVERY`], many tasks in one
/// transaction. Counting each burst as the bus carried it read a task's cursor and
/// committed on SQLite's single writer several times per task, and the tasks' own appends
/// waited for that writer: a fifth of embedded throughput.
pub async fn run(consumer: StatsConsumer, bus: Arc<dyn Bus>, shutdown: CancellationToken) {
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
    let mut catch_up = tokio::time::interval(CATCH_UP_EVERY);
    let mut count = tokio::time::interval(COUNT_EVERY);
    let mut touched: HashSet<Uuid> = HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            batch = live.next() => match batch {
                Some(batch) => touched.extend(batch.iter().map(|e| e.task_id)),
                None => return,
            },
            _ = count.tick(), if !touched.is_empty() => {
                if let Err(e) = consumer.count_tasks(touched.drain()).await {
                    tracing::warn!(error = %e, "counting events failed; the catch-up will count them");
                }
            }
            _ = catch_up.tick() => consumer.catch_up_logged().await,
        }
    }
}
