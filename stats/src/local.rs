//! The embedded feed: events as the in-process bus carries them, and a catch-up from the
//! store at start and every few seconds for whatever the bus did not carry (it carries no
//! `task_created`, drops what a lagging receiver missed, and keeps nothing across a
//! restart).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use troupe_events::Bus;

use crate::StatsConsumer;

/// How often the store is checked for what the bus did not carry.
const CATCH_UP_EVERY: Duration = Duration::from_secs(5);
/// Most events counted in one transaction.
const BATCH: usize = 256;

/// Follows `bus` and the store until `shutdown`.
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
                consumer.catch_up_logged().await;
            }
        }
    }
}
