//! The worker: takes tasks from the queue, runs their agents against a provider and
//! appends every step to the task's log. Any number of workers can share one queue.

pub mod artifacts;
pub mod cli;
pub mod providers;

mod appender;
pub mod metrics;
pub mod prices;
mod run;
pub mod status;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use troupe_events::providers::Advertiser;
use troupe_events::relay::{Marks, Relay, RelayConfig};
use troupe_events::sweep::{SweepConfig, Sweeper};
use troupe_events::{
    Backends, Claim, Delivery, Event, EventBody, ProviderRoute, TaskRecord, TaskStatus, TaskView,
    millis_since,
};
use uuid::Uuid;

use crate::appender::{AppendError, Appender, Emitter, LogEnd, Stopped};

/// A task as a run picks it up: its row, its view, and `task_created` when it is the log's
/// only event.
type Loaded = (TaskRecord, TaskView, Option<troupe_events::RawEvent>);
use crate::prices::Prices;
use crate::providers::Providers;
use crate::run::{Control, Route, TaskRun};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Tasks one worker process runs at once.
    pub task_concurrency: usize,
    /// Agents of parallel tasks one worker process runs at once, across its tasks.
    pub agent_concurrency: usize,
    /// Runs of one task that may crash or fail (a hand-back at shutdown does not count)
    /// before it is given up with `task_error`.
    pub max_runs: u64,
    /// Deliveries of a job that keeps failing (its log unreadable, a store error that is
    /// not an outage) before its task is given up with `task_error`.
    pub max_deliveries: u64,
    /// How often streamed text is flushed as an `agent_token` event.
    pub token_flush: Duration,
    /// How often a running task tells the queue it is still being worked on; a queue with a
    /// shorter lease gets it more often.
    pub heartbeat: Duration,
    /// How often a running task reads users' requests (cancel, pause) from the store, in
    /// case their nudge on the bus was lost.
    pub control_poll: Duration,
    /// How long one queue poll waits for a job.
    pub poll_wait: Duration,
    /// What each model costs, for `agent_usage`'s `costUsd`.
    pub prices: Arc<Prices>,
    /// The relay that gets what workers stored, but the event stream never acknowledged,
    /// into the stream; it runs in every worker when the bus keeps events.
    pub relay: RelayConfig,
    /// The sweep of deleted tasks, ended tasks past their retention and expired sessions;
    /// it runs in every worker.
    pub sweep: SweepConfig,
    /// How often the worker says again in the store which providers it serves.
    pub advert_every: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            task_concurrency: 8,
            agent_concurrency: 16,
            max_runs: 5,
            max_deliveries: 10,
            token_flush: Duration::from_millis(200),
            heartbeat: Duration::from_secs(10),
            control_poll: Duration::from_secs(2),
            poll_wait: Duration::from_secs(5),
            prices: Arc::default(),
            relay: RelayConfig::default(),
            sweep: SweepConfig::default(),
            advert_every: Duration::from_secs(10),
        }
    }
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The terminal event is stored and the job acked.
    Finished { failed: bool },
    /// A pause took effect: `task_paused` is stored and the job acked; an unpause queues
    /// the task again.
    Paused,
    /// The task had already ended or is paused (a duplicate or late job): acked.
    AlreadyFinished,
    /// No such task in the store: the job is dropped.
    Missing,
    /// Another writer (a worker holding another job of the task, or the api cancelling
    /// it) appended first: this copy stopped at once, and its job is acked so that it never
    /// comes back to take the task from its owner, unless it is the very message the owner
    /// holds (a redelivery), which is left to the owner.
    Lost,
    /// Another delivery holds the task's lease: this one is a duplicate. A re-published
    /// job is acked; a redelivery of the holder's own message is left alone, so that the
    /// queue still has it should the holder die.
    Duplicate { same_job: bool },
    /// The worker is stopping: `task_released` is stored and the job goes back to the
    /// queue, to be resumed without counting as a failed run.
    Interrupted,
    /// Something failed (the store, the log, a bug); the job is retried later, within
    /// `max_deliveries` unless the store is merely unreachable.
    Retry { reason: String, outage: bool },
    /// The job kept failing: `task_error` says why (when it could be stored) and the job is
    /// acked.
    GaveUp,
}

impl Outcome {
    /// The run's last append (its terminal event, or `task_paused`) gave the lease up.
    fn released_lease(&self) -> bool {
        matches!(self, Outcome::Finished { .. } | Outcome::Paused)
    }

    /// The task no longer holds one of its owner's active places: one of their waiting
    /// tasks may be admitted. A late or lost job counts too, as the task may have ended
    /// by another hand.
    fn frees_a_place(&self) -> bool {
        matches!(
            self,
            Outcome::Finished { .. }
                | Outcome::Paused
                | Outcome::GaveUp
                | Outcome::AlreadyFinished
                | Outcome::Lost
        )
    }

    fn retry(context: &str, error: &troupe_events::Error) -> Self {
        Outcome::Retry {
            reason: format!("{context}: {error}"),
            outage: error.is_outage(),
        }
    }
}

pub struct Worker {
    backends: Backends,
    providers: Providers,
    /// Tells the api, through the store, which providers this worker serves.
    advertiser: Advertiser,
    config: WorkerConfig,
    agent_slots: Arc<Semaphore>,
    /// How far the event stream has this worker's tasks, written a few times a second.
    marks: Marks,
}

impl Worker {
    pub fn new(backends: Backends, providers: Providers, config: WorkerConfig) -> Self {
        let agent_slots = Arc::new(Semaphore::new(config.agent_concurrency.max(1)));
        let advertiser = Advertiser::new(
            backends.store.clone(),
            providers.offers(),
            config.advert_every,
        );
        Worker {
            backends,
            providers,
            advertiser,
            config,
            agent_slots,
            marks: Marks::default(),
        }
    }

    /// Says in the store which providers this worker serves. Call it before the api takes
    /// submits (`run` says it again while it runs), so that they are accepted at once.
    pub async fn advertise(&self) -> troupe_events::Result<()> {
        self.advertiser.advertise().await
    }

    /// Pulls and runs tasks until `shutdown`; tasks still running then are interrupted and
    /// handed back to the queue, to be resumed by whichever worker takes them next.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut slots = tokio::task::JoinSet::new();
        let worker = self.clone();
        let stop = shutdown.clone();
        slots.spawn(async move { worker.advertiser.run(stop).await });
        let marks = self.write_marks();
        if self.backends.bus.keeps_events() {
            let relay = Relay::new(
                self.backends.store.clone(),
                self.backends.bus.clone(),
                self.config.relay.clone(),
            );
            slots.spawn(relay.run(shutdown.clone()));
        }
        let sweeper = Sweeper::new(&self.backends, self.config.sweep.clone());
        slots.spawn(sweeper.run(shutdown.clone()));
        for _ in 0..self.config.task_concurrency.max(1) {
            let worker = self.clone();
            let shutdown = shutdown.clone();
            slots.spawn(async move { worker.slot(shutdown).await });
        }
        while slots.join_next().await.is_some() {}
        // After the task slots, so that their last marks are written.
        if let Some((writer, stop)) = marks {
            stop.cancel();
            let _ = writer.await;
        }
    }

    /// The writer of this worker's published marks, when its bus keeps events, and what
    /// stops it.
    fn write_marks(&self) -> Option<(tokio::task::JoinHandle<()>, CancellationToken)> {
        self.backends.bus.keeps_events().then(|| {
            let stop = CancellationToken::new();
            let writer = self
                .marks
                .clone()
                .run(self.backends.store.clone(), stop.clone());
            (tokio::spawn(writer), stop)
        })
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
    /// work is traced as a child of the request that queued the task. A panic anywhere in
    /// the task becomes a failed delivery; the slot carries on.
    pub async fn process_one(&self, delivery: Delivery, stop: CancellationToken) -> Outcome {
        let span = tracing::info_span!(
            "run_task",
            task_id = %delivery.job.task_id(),
            delivered = delivery.delivered,
            trace_id = tracing::field::Empty,
        );
        troupe_events::trace::link(&span, &delivery.trace);
        troupe_events::trace::record_trace_id(&span);
        // Who holds the task's lease for this delivery: one per delivery, so that two
        // deliveries of one message in one process are told apart too.
        let holder = Uuid::now_v7();
        let _running = metrics::Running::new();
        async {
            // The heartbeat covers the whole delivery, reading the log included: a store
            // outage must not let the job's lease lapse while it waits.
            let outcome = tokio::select! {
                _ = self.heartbeat(&delivery, holder) => unreachable!("the heartbeat never ends"),
                outcome = AssertUnwindSafe(self.execute(&delivery, holder, stop)).catch_unwind() => outcome,
            };
            let outcome = outcome.unwrap_or_else(|panic| Outcome::Retry {
                reason: run::crash_message(panic.as_ref()),
                outage: false,
            });
            self.settle(&delivery, holder, outcome).await
        }
        .instrument(span)
        .await
    }

    async fn settle(&self, delivery: &Delivery, holder: Uuid, outcome: Outcome) -> Outcome {
        let task_id = delivery.job.task_id();
        let outcome = match outcome {
            Outcome::Retry { reason, outage }
                if !outage && delivery.delivered >= self.config.max_deliveries =>
            {
                self.give_up(task_id, delivery.delivered, &reason).await;
                Outcome::GaveUp
            }
            other => other,
        };
        let outcome = match outcome {
            Outcome::Lost if self.owner_holds(task_id, delivery.job_id, holder).await => {
                Outcome::Duplicate { same_job: true }
            }
            other => other,
        };
        if self.lease().is_some()
            && !outcome.released_lease()
            && let Err(e) = self.backends.store.release(task_id, holder).await
        {
            tracing::warn!(error = %e, "releasing the task's lease failed; it expires");
        }
        let settled = match &outcome {
            Outcome::Duplicate { same_job: true } => Ok(()),
            Outcome::Interrupted => delivery.retry_later(Duration::ZERO).await,
            Outcome::Retry { reason, .. } => {
                tracing::warn!(%reason, "the task will be tried again");
                delivery.retry_later(retry_delay(delivery.delivered)).await
            }
            _ => delivery.ack().await,
        };
        if let Err(e) = settled {
            tracing::warn!(error = %e, "settling a delivery failed; the queue will redeliver it");
        }
        if outcome.frees_a_place() {
            troupe_events::dispatch::admit_after(
                self.backends.store.as_ref(),
                self.backends.queue.as_ref(),
                task_id,
                self.backends.active_tasks_per_user,
            )
            .await;
        }
        tracing::info!(?outcome, "task delivery done");
        outcome
    }

    /// How long a task's lease lasts without renewal: as long as the queue waits before
    /// handing a silent job to another worker. `None` when the queue never does.
    fn lease(&self) -> Option<Duration> {
        self.backends.queue.heartbeat().map(|every| every * 3)
    }

    /// Another worker holds the task for this very message (JetStream redelivered it):
    /// settling it would take the owner's job away.
    async fn owner_holds(&self, task_id: Uuid, job_id: u64, holder: Uuid) -> bool {
        match self.backends.store.lease(task_id).await {
            Ok(Some(lease)) => lease.holder != holder && lease.job == job_id,
            Ok(None) => false,
            // Leaving it is the safe side: the owner (or a later redelivery) settles it.
            Err(_) => true,
        }
    }

    /// Takes the task's lease for this delivery, or says whose it is.
    async fn claim(&self, delivery: &Delivery, holder: Uuid) -> Result<(), Outcome> {
        let Some(lease) = self.lease() else {
            return Ok(());
        };
        let task_id = delivery.job.task_id();
        match self
            .backends
            .store
            .claim(task_id, holder, delivery.job_id, lease)
            .await
        {
            Ok(Claim::Granted) => Ok(()),
            Ok(Claim::Held(held)) => Err(Outcome::Duplicate {
                same_job: held.job == delivery.job_id,
            }),
            Err(e) => Err(Outcome::retry("claiming the task", &e)),
        }
    }

    /// Ends a task whose job keeps failing, saying why, if the store takes it.
    async fn give_up(&self, task_id: Uuid, delivered: u64, reason: &str) {
        let store = self.backends.store.as_ref();
        let task = match store.task(task_id).await {
            Ok(Some(task)) if !task.status.is_terminal() => task,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(%task_id, error = %e, "giving up a task whose job keeps failing; its task_error could not be written");
                return;
            }
        };
        let error = Event::new(
            task_id,
            task.last_seq + 1,
            EventBody::TaskError {
                usage: None,
                error: format!("gave up after {delivered} failed deliveries: {reason}"),
                failed_agents: vec![],
                total_execution_time: millis_since(task.created_at),
            },
        )
        .to_raw();
        match store.append(task_id, std::slice::from_ref(&error)).await {
            Ok(()) => {
                let _ = self.backends.bus.publish(&[error]).await;
                tracing::error!(%task_id, %reason, "gave up a task whose job keeps failing");
            }
            Err(e) => {
                tracing::error!(%task_id, error = %e, "giving up a task whose job keeps failing; its task_error could not be written")
            }
        }
    }

    async fn execute(&self, delivery: &Delivery, holder: Uuid, stop: CancellationToken) -> Outcome {
        let task_id = delivery.job.task_id();
        if let Err(duplicate) = self.claim(delivery, holder).await {
            return duplicate;
        }
        let (task, view, created) = match self.load(task_id).await {
            Ok(Some(loaded)) => loaded,
            Ok(None) => return Outcome::Missing,
            Err(e) => return Outcome::retry("reading the task's log", &e),
        };
        if task.status.is_terminal() || task.status == TaskStatus::Paused {
            return Outcome::AlreadyFinished;
        }
        let control = Arc::new(Control::default());
        match self.backends.store.controls(task_id).await {
            Ok(controls) => control.apply(&controls),
            Err(e) => return Outcome::retry("reading the task's controls", &e),
        }
        let halt = stop.child_token();
        let (appender, emitter) = Appender::start(
            self.backends.store.clone(),
            self.backends.bus.clone(),
            self.marks.clone(),
            task_id,
            LogEnd {
                last_seq: view.last_seq,
                created,
            },
            halt.clone(),
        );
        let run = TaskRun {
            provider: self.route(&task.spec.route()),
            fallback: self.fallback_for(&task),
            task,
            usage: std::sync::Mutex::new(view.usage),
            view,
            emitter: emitter.clone(),
            agent_slots: self.agent_slots.clone(),
            token_flush: self.config.token_flush,
            prices: self.config.prices.clone(),
            stop: halt,
            control,
        };
        let closing = self.run_to_close(delivery, Arc::new(run)).await;
        let closed = self.close(&emitter, closing, &stop).await;
        drop(emitter);
        match (appender.finish().await, closed) {
            (Ok(_), Some(Closed::Terminal { failed })) => Outcome::Finished { failed },
            (Ok(_), Some(Closed::Paused)) => Outcome::Paused,
            (Ok(_), None) => Outcome::Interrupted,
            (Err(AppendError::Lost(_)), _) => Outcome::Lost,
            (Err(e), _) => Outcome::Retry {
                reason: e.to_string(),
                outage: matches!(&e, AppendError::Store { source, .. } if source.is_outage()),
            },
        }
    }

    /// The task row and its view, folded from the log a page at a time, and `task_created`
    /// when it is the log's only event.
    async fn load(&self, task_id: Uuid) -> troupe_events::Result<Option<Loaded>> {
        let store = self.backends.store.as_ref();
        let Some(task) = store.task(task_id).await? else {
            return Ok(None);
        };
        let mut view = TaskView::new(task_id, &task.spec);
        let mut first = None;
        troupe_events::store::read_log(store, task_id, 0, |raw| {
            if raw.seq == 1 {
                first = Some(raw.clone());
            }
            view.apply(&raw.parse().map_err(|e| {
                troupe_events::Error::Corrupt(format!(
                    "event {} of task {task_id} cannot be read: {e}",
                    raw.seq
                ))
            })?);
            Ok(())
        })
        .await?;
        let created = first.filter(|_| view.last_seq == 1);
        Ok(Some((task, view, created)))
    }

    /// `route`'s provider on this worker, ready to call.
    fn route(&self, route: &ProviderRoute) -> Result<Route, String> {
        let provider = self.providers.get(&route.provider).ok_or_else(|| {
            format!(
                "provider {} is not configured on this worker",
                route.provider
            )
        })?;
        Ok(Route {
            name: route.provider.clone(),
            model: route.model.clone(),
            provider,
        })
    }

    /// The task's own fallback, else this worker's for the task's provider. One this worker
    /// cannot call is left out, and the log says so.
    fn fallback_for(&self, task: &TaskRecord) -> Option<Route> {
        let wanted = task
            .spec
            .fallback
            .as_ref()
            .or_else(|| self.providers.fallback(&task.spec.provider))?;
        self.route(wanted)
            .inspect_err(|e| tracing::warn!(error = %e, "the task runs without its fallback"))
            .ok()
    }

    /// The event that closes this run: the agents' outcome, or a give-up when the task has
    /// crashed too often. Heartbeats and users' requests are served meanwhile.
    async fn run_to_close(
        &self,
        delivery: &Delivery,
        run: Arc<TaskRun>,
    ) -> Result<EventBody, Stopped> {
        let crashed = run.view.runs.crashed_at_pickup();
        if crashed >= self.config.max_runs && !run.control.is_cancelled() {
            return Ok(EventBody::TaskError {
                usage: None,
                error: format!(
                    "gave up after {crashed} runs of the task ended in a crash or failure"
                ),
                failed_agents: vec![],
                total_execution_time: millis_since(run.task.created_at),
            });
        }
        if run.view.runs.interrupted() && !run.control.is_cancelled() {
            run.emitter
                .emit(EventBody::TaskResumed {
                    delivery: delivery.delivered,
                    reason: "the task was picked up again after an interruption; completed agents are kept".into(),
                })
                .await?;
        }
        let task_id = run.task.id;
        tokio::select! {
            _ = self.watch_controls(task_id, &run.control) => unreachable!("the watch never ends"),
            _ = enforce_deadline(&run.task, &run.control) => unreachable!("a deadline waits on once passed"),
            closing = run.clone().run() => closing,
        }
    }

    /// Writes the closing event, or at shutdown `task_released`, so that the next run
    /// knows this one was interrupted rather than crashed.
    async fn close(
        &self,
        emitter: &Emitter,
        closing: Result<EventBody, Stopped>,
        shutdown: &CancellationToken,
    ) -> Option<Closed> {
        match closing {
            Ok(body) => {
                let closed = match &body {
                    EventBody::TaskPaused { .. } => Closed::Paused,
                    other => Closed::Terminal {
                        failed: !matches!(other, EventBody::TaskComplete { .. }),
                    },
                };
                emitter.emit(body).await.ok().map(|()| closed)
            }
            Err(Stopped) if shutdown.is_cancelled() => {
                let _ = emitter
                    .emit(EventBody::TaskReleased {
                        reason:
                            "the worker running it is shutting down; another worker continues it"
                                .into(),
                    })
                    .await;
                None
            }
            Err(Stopped) => None,
        }
    }

    /// Keeps the delivery from being redelivered, and the task's lease, while it runs.
    /// Two loops: a store that hangs (PostgreSQL restarting) must never hold up the
    /// queue's heartbeat, or the queue would hand the task to another worker.
    async fn heartbeat(&self, delivery: &Delivery, holder: Uuid) {
        // Never slower than the queue's own lease, whatever the configuration says.
        let every = match self.backends.queue.heartbeat() {
            Some(lease) => self
                .config
                .heartbeat
                .min(lease)
                .max(Duration::from_millis(50)),
            None => self.config.heartbeat,
        };
        let queue = every_tick(every, || async {
            if let Err(e) = delivery.in_progress().await {
                tracing::warn!(error = %e, "telling the queue the task is in progress failed");
            }
        });
        let lease = every_tick(every, || async {
            let (Some(lease), task_id) = (self.lease(), delivery.job.task_id()) else {
                return;
            };
            if let Err(e) = self.backends.store.renew(task_id, holder, lease).await {
                tracing::warn!(error = %e, "renewing the task's lease failed");
            }
        });
        tokio::join!(queue, lease);
    }

    /// Carries users' requests to the running task: read from the store on every nudge
    /// from the api, and every `control_poll` in case a nudge was lost.
    async fn watch_controls(&self, task_id: Uuid, control: &Control) {
        let quiet = || futures::stream::pending().boxed();
        let mut nudges = match self.backends.bus.nudges(task_id).await {
            Ok(nudges) => nudges,
            Err(e) => {
                tracing::warn!(error = %e, "listening for control nudges failed; polling only");
                quiet()
            }
        };
        let mut poll = tokio::time::interval(self.config.control_poll);
        loop {
            tokio::select! {
                nudge = nudges.next() => if nudge.is_none() { nudges = quiet() },
                _ = poll.tick() => {}
            }
            match self.backends.store.controls(task_id).await {
                Ok(controls) => control.apply(&controls),
                Err(e) => tracing::warn!(error = %e, "reading the task's controls failed"),
            }
        }
    }
}

/// Cancels the task at its deadline (`timeoutSecs` from submit), saying why, so that the
/// run ends as a cancelled one; a task picked up past it is cancelled at once. Never ends.
async fn enforce_deadline(task: &TaskRecord, control: &Control) {
    let deadline = task.spec.timeout_secs.and_then(|secs| {
        let after = chrono::TimeDelta::try_seconds(i64::try_from(secs).ok()?)?;
        Some((secs, task.created_at.checked_add_signed(after)?))
    });
    // A deadline too far to reckon (the api allows a year at most) is none.
    if let Some((secs, deadline)) = deadline {
        let left = (deadline - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(left).await;
        control.cancel_for(format!(
            "the task ran past its deadline (timeoutSecs {secs} from submit)"
        ));
    }
    std::future::pending::<()>().await
}

/// Runs `beat` every `every`, the first time after one period, forever.
async fn every_tick<F, Fut>(every: Duration, beat: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        beat().await;
    }
}

/// How a run that ended on its own closed the log.
enum Closed {
    Terminal { failed: bool },
    Paused,
}

/// Waits before a failed job comes back: 1 s, doubling to 30 s.
fn retry_delay(delivered: u64) -> Duration {
    Duration::from_secs(1 << delivered.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}
