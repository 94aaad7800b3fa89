//! Removes what nobody may read any more: tasks their owners deleted before they ended
//! (once their logs end), ended tasks past the operator's retention period, expired
//! sessions; and admits tasks waiting behind their owner's limit whose admission a crash
//! lost. Every worker sweeps; a sweep skips rows another holds, so they share the work.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backend::Backends;
use crate::bus::Bus;
use crate::error::Result;
use crate::queue::TaskQueue;
use crate::store::{Store, Swept};

/// Tasks removed per transaction: a log of thousands of events each, so kept small.
const SWEEP_BATCH: u32 = 50;

#[derive(Debug, Clone)]
pub struct SweepConfig {
    pub every: Duration,
    /// Ended tasks last changed longer ago than this are deleted; `None` keeps them.
    pub retain_ended: Option<Duration>,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            every: Duration::from_secs(30),
            retain_ended: None,
        }
    }
}

/// Owners admitted for per sweep.
const ADMIT_OWNERS: u32 = 100;

pub struct Sweeper {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    queue: Arc<dyn TaskQueue>,
    active_tasks_per_user: Option<u32>,
    config: SweepConfig,
}

impl Sweeper {
    pub fn new(backends: &Backends, config: SweepConfig) -> Self {
        Sweeper {
            store: backends.store.clone(),
            bus: backends.bus.clone(),
            queue: backends.queue.clone(),
            active_tasks_per_user: backends.active_tasks_per_user,
            config,
        }
    }

    /// Admits, for up to [`ADMIT_OWNERS`] owners with waiting tasks, what their limit
    /// allows: an admission is otherwise made when an active task ends, and a crash there
    /// loses it.
    pub async fn admit_waiting(&self) -> Result<()> {
        let Some(limit) = self.active_tasks_per_user else {
            return Ok(());
        };
        for owner_id in self.store.owners_waiting(ADMIT_OWNERS).await? {
            crate::dispatch::admit(self.store.as_ref(), self.queue.as_ref(), owner_id, limit).await;
        }
        Ok(())
    }

    /// Sweeps until nothing is left to remove.
    pub async fn sweep_once(&self) -> Result<Swept> {
        let ended_before = self.config.retain_ended.and_then(|keep| {
            chrono::Duration::from_std(keep)
                .ok()
                .and_then(|keep| chrono::Utc::now().checked_sub_signed(keep))
        });
        let mut total = Swept::default();
        loop {
            let swept = self.store.sweep(ended_before, SWEEP_BATCH).await?;
            for task_id in &swept.tasks {
                forget(self.bus.as_ref(), *task_id).await;
            }
            let done = swept.tasks.len() < SWEEP_BATCH as usize;
            total.tasks.extend(swept.tasks);
            total.sessions += swept.sessions;
            total.accounts += swept.accounts;
            if done {
                return Ok(total);
            }
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        crate::runtime::each_tick(self.config.every, &shutdown, || self.sweep_logged()).await;
    }

    /// One sweep, for the loop: what fails is logged and tried again at the next tick.
    async fn sweep_logged(&self) {
        if let Err(e) = self.admit_waiting().await {
            tracing::warn!(error = %e, "looking for waiting tasks failed; the sweep looks again at its next tick");
        }
        match self.sweep_once().await {
            Ok(swept) if !swept.tasks.is_empty() || swept.sessions > 0 || swept.accounts > 0 => {
                tracing::info!(
                    tasks = swept.tasks.len(),
                    sessions = swept.sessions,
                    accounts = swept.accounts,
                    "swept deleted and expired tasks, sessions and accounts"
                )
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the sweep failed; it runs again at its next tick")
            }
        }
    }
}

/// Drops a deleted task's events from the bus's stream. Best effort: the stream's own
/// retention removes what a failed purge left.
pub async fn forget(bus: &dyn Bus, task_id: Uuid) {
    if let Err(e) = bus.forget(task_id).await {
        tracing::warn!(%task_id, error = %e, "removing a deleted task's events from the event stream failed; the stream's retention will");
    }
}
