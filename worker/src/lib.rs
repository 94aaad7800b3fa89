//! The worker: takes tasks from the queue, runs their agents against a provider and
//! appends every step to the task's log. Any number of workers can share one queue.

pub mod artifacts;
pub mod cli;
pub mod providers;

mod appender;
mod run;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use troupe_events::{Backends, Delivery, Event, EventBody, Store, TaskView};
use uuid::Uuid;

use crate::appender::{AppendError, Appender};
use crate::providers::Providers;
use crate::run::TaskRun;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Tasks one worker process runs at once.
    pub task_concurrency: usize,
    /// Agents of parallel tasks one worker process runs at once, across its tasks.
    pub agent_concurrency: usize,
    /// Runs of one task (the first and each resume) before it is given up with `task_error`.
    pub max_runs: u64,
    /// How often streamed text is flushed as an `agent_token` event.
    pub token_flush: Duration,
    /// How often a running task tells the queue it is still being worked on; a queue with a
    /// shorter lease gets it more often.
    pub heartbeat: Duration,
    /// How long one queue poll waits for a job.
    pub poll_wait: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            task_concurrency: 8,
            agent_concurrency: 16,
            max_runs: 5,
            token_flush: Duration::from_millis(200),
            heartbeat: Duration::from_secs(10),
            poll_wait: Duration::from_secs(5),
        }
    }
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The terminal event is stored and the job acked.
    Finished { failed: bool },
    /// The task had already ended (a redelivery after the ack was lost).
    AlreadyFinished,
    /// No such task in the store: the job is dropped.
    Missing,
    /// Another worker wrote to the task; this one stepped back without acking.
    Lost,
    /// The worker is stopping: the job goes back to the queue to be resumed.
    Interrupted,
    /// The store failed; the job is retried later.
    Retry,
}

pub struct Worker {
    backends: Backends,
    providers: Providers,
    config: WorkerConfig,
    agent_slots: Arc<Semaphore>,
}

impl Worker {
    pub fn new(backends: Backends, providers: Providers, config: WorkerConfig) -> Self {
        let agent_slots = Arc::new(Semaphore::new(config.agent_concurrency.max(1)));
        Worker {
            backends,
            providers,
            config,
            agent_slots,
        }
    }

    /// Pulls and runs tasks until `shutdown`; tasks still running then are interrupted and
    /// handed back to the queue, to be resumed by whichever worker takes them next.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut slots = tokio::task::JoinSet::new();
        for _ in 0..self.config.task_concurrency.max(1) {
            let worker = self.clone();
            let shutdown = shutdown.clone();
            slots.spawn(async move { worker.slot(shutdown).await });
        }
        while slots.join_next().await.is_some() {}
    }

    async fn slot(&self, shutdown: CancellationToken) {
        let queue = self.backends.queue.clone();
        while !shutdown.is_cancelled() {
            // The poll is not cut short by shutdown: a pull request abandoned on the server
            // would still be handed a job, which would then wait out the ack timeout.
            match queue.next(self.config.poll_wait).await {
                Ok(Some(delivery)) if shutdown.is_cancelled() => {
                    if let Err(e) = delivery.retry_later(Duration::ZERO).await {
                        tracing::warn!(error = %e, "handing a job back at shutdown failed");
                    }
                }
                Ok(Some(delivery)) => {
                    self.process_one(delivery, shutdown.child_token()).await;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "polling the task queue failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Runs one delivered task to its end (or until `stop`) and settles the delivery. The
    /// work is traced as a child of the request that queued the task.
    pub async fn process_one(&self, delivery: Delivery, stop: CancellationToken) -> Outcome {
        let span = tracing::info_span!(
            "run_task",
            task_id = %delivery.job.task_id(),
            delivered = delivery.delivered
        );
        troupe_events::trace::link(&span, &delivery.trace);
        self.settle(delivery, stop).instrument(span).await
    }

    async fn settle(&self, delivery: Delivery, stop: CancellationToken) -> Outcome {
        let outcome = self.execute(&delivery, stop).await;
        let settled = match &outcome {
            Outcome::Finished { .. } | Outcome::AlreadyFinished | Outcome::Missing => {
                delivery.ack().await
            }
            Outcome::Interrupted => delivery.retry_later(Duration::ZERO).await,
            Outcome::Retry => delivery.retry_later(Duration::from_secs(5)).await,
            // The other worker settles it.
            Outcome::Lost => Ok(()),
        };
        if let Err(e) = settled {
            tracing::warn!(error = %e, "settling a delivery failed; the queue will redeliver it");
        }
        tracing::info!(?outcome, "task delivery done");
        outcome
    }

    async fn execute(&self, delivery: &Delivery, stop: CancellationToken) -> Outcome {
        let task_id = delivery.job.task_id();
        let store = self.backends.store.clone();
        let task = match store.task(task_id).await {
            Ok(Some(task)) => task,
            Ok(None) => return Outcome::Missing,
            Err(e) => {
                tracing::warn!(error = %e, "reading the task failed");
                return Outcome::Retry;
            }
        };
        if task.status.is_terminal() {
            return Outcome::AlreadyFinished;
        }
        let events = match read_log(store.as_ref(), task_id).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "reading the task's log failed");
                return Outcome::Retry;
            }
        };
        let last_seq = events.last().map_or(0, |e| e.seq);
        let view = TaskView::project(task_id, &task.spec, &events);
        let (appender, emitter) =
            Appender::start(store.clone(), self.backends.bus.clone(), task_id, last_seq);
        let heartbeat = self.heartbeat(delivery);

        // Runs are counted from the log, not from deliveries: a job handed back by a worker
        // that was stopping never ran, and must not use up the task's attempts.
        let runs_before = if events.len() > 1 {
            1 + events
                .iter()
                .filter(|e| matches!(e.body, EventBody::TaskResumed { .. }))
                .count() as u64
        } else {
            0
        };
        let resumed = runs_before > 0;
        let terminal = if runs_before >= self.config.max_runs {
            Ok(EventBody::TaskError {
                error: format!(
                    "gave up after {runs_before} attempts to run the task (workers stopped or failed while running it)"
                ),
                failed_agents: vec![],
                total_execution_time: run::elapsed_since(task.created_at),
            })
        } else {
            let provider = self.providers.get(&task.spec.provider).ok_or_else(|| {
                format!(
                    "provider {} is not configured on this worker",
                    task.spec.provider
                )
            });
            let run = Arc::new(TaskRun {
                task,
                view,
                provider,
                emitter: emitter.clone(),
                agent_slots: self.agent_slots.clone(),
                token_flush: self.config.token_flush,
                stop: stop.clone(),
            });
            let started = if resumed {
                emitter
                    .emit(EventBody::TaskResumed {
                        delivery: delivery.delivered,
                        reason: "the task was picked up again after an interruption; completed agents are kept".into(),
                    })
                    .await
            } else {
                Ok(())
            };
            match started {
                Ok(()) => tokio::select! {
                    _ = heartbeat => unreachable!("the heartbeat never ends"),
                    terminal = run.run() => terminal,
                },
                Err(stopped) => Err(stopped),
            }
        };
        let finished = match terminal {
            Ok(body) => {
                let failed = matches!(body, EventBody::TaskError { .. });
                let _ = emitter.emit(body).await;
                Some(failed)
            }
            Err(_) => None,
        };
        drop(emitter);
        match (appender.finish().await, finished) {
            (Ok(_), Some(failed)) => Outcome::Finished { failed },
            (Ok(_), None) => Outcome::Interrupted,
            (Err(AppendError::Lost(_)), _) => Outcome::Lost,
            (Err(e @ AppendError::Store { .. }), _) => {
                tracing::error!(error = %e, "the task's events could not be stored");
                Outcome::Retry
            }
        }
    }

    /// Keeps the delivery from being redelivered while its task runs.
    async fn heartbeat(&self, delivery: &Delivery) {
        // Never slower than the queue's own lease, whatever the configuration says.
        let every = match self.backends.queue.heartbeat() {
            Some(lease) => self
                .config
                .heartbeat
                .min(lease)
                .max(Duration::from_millis(50)),
            None => self.config.heartbeat,
        };
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = delivery.in_progress().await {
                tracing::warn!(error = %e, "telling the queue the task is in progress failed");
            }
        }
    }
}

/// The whole log of a task, parsed.
async fn read_log(store: &dyn Store, task_id: Uuid) -> troupe_events::Result<Vec<Event>> {
    let mut events = Vec::new();
    loop {
        let after = events.last().map_or(0, |e: &Event| e.seq);
        let page = store.events_after(task_id, after, 1000).await?;
        let full = page.len() == 1000;
        for raw in page {
            events.push(raw.parse().map_err(|e| {
                troupe_events::Error::Corrupt(format!("event {} of task {task_id}: {e}", raw.seq))
            })?);
        }
        if !full {
            return Ok(events);
        }
    }
}

/// A token cancelled on ctrl-c or SIGTERM: the root of every process's shutdown.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate => {}
        }
        tracing::info!("shutting down");
        cancel.cancel();
    });
    token
}
