//! The task queue: one job per submitted task, taken by exactly one worker at a time.
//! A JetStream work-queue stream when distributed, a bounded in-process channel when
//! embedded. Delivery is at least once; the worker makes re-running a task safe.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::AckPolicy, consumer::pull};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::{Mutex, mpsc};
use uuid::Uuid;

use crate::bus::Subjects;
use crate::error::{Error, Result};
use crate::store::Dispatch;
use crate::task::TaskJob;
use crate::trace::{self, TraceHeaders};

#[async_trait]
pub trait TaskQueue: Send + Sync + 'static {
    /// Queues a task. Queuing the same dispatch twice within the dedupe window is
    /// harmless; a later dispatch of the same task (a retry) is a new job.
    async fn enqueue(&self, dispatch: Dispatch) -> Result<()>;

    /// The next job, or `None` when nothing arrived within `wait`.
    async fn next(&self, wait: Duration) -> Result<Option<Delivery>>;

    async fn ping(&self) -> Result<()>;

    /// How often a worker must report progress on a job to keep it: `None` when the queue
    /// never takes a job back on its own.
    fn heartbeat(&self) -> Option<Duration>;
}

/// A job handed to one worker. Until it is acked, the queue may hand it to another.
pub struct Delivery {
    pub job: TaskJob,
    /// 1 on the first delivery, more on redeliveries.
    pub delivered: u64,
    /// Which queue message this is (its JetStream stream sequence): a redelivery of the
    /// same message has the same id, a re-publish of the task another.
    pub job_id: u64,
    /// The trace context of whoever queued the job.
    pub trace: TraceHeaders,
    handle: Box<dyn DeliveryHandle>,
}

impl Delivery {
    /// The job is done: its task's terminal event is stored.
    pub async fn ack(&self) -> Result<()> {
        self.handle.ack().await
    }

    /// Still working: resets the queue's redelivery timer.
    pub async fn in_progress(&self) -> Result<()> {
        self.handle.in_progress().await
    }

    /// Not done, hand it out again after `delay`.
    pub async fn retry_later(&self, delay: Duration) -> Result<()> {
        self.handle.retry_later(delay).await
    }
}

#[async_trait]
trait DeliveryHandle: Send + Sync {
    async fn ack(&self) -> Result<()>;
    async fn in_progress(&self) -> Result<()>;
    async fn retry_later(&self, delay: Duration) -> Result<()>;
}

/// A job in the in-process queue: the job, its delivery count, its trace context.
type QueuedJob = (TaskJob, u64, TraceHeaders);

/// The embedded queue. Jobs live in memory only: at start the embedded runtime puts every
/// unfinished task back (see `Store::requeue_unfinished`). A task is in it at most once,
/// queued or running, as JetStream's dedupe window gives the distributed queue.
#[derive(Clone)]
pub struct MemoryQueue {
    tx: mpsc::Sender<QueuedJob>,
    rx: Arc<Mutex<mpsc::Receiver<QueuedJob>>>,
    held: Arc<std::sync::Mutex<HashSet<Uuid>>>,
}

impl MemoryQueue {
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        MemoryQueue {
            tx,
            rx: Arc::new(Mutex::new(rx)),
            held: Arc::default(),
        }
    }
}

struct MemoryHandle {
    job: TaskJob,
    delivered: u64,
    trace: TraceHeaders,
    tx: mpsc::Sender<QueuedJob>,
    held: Arc<std::sync::Mutex<HashSet<Uuid>>>,
    requeued: std::sync::atomic::AtomicBool,
}

impl Drop for MemoryHandle {
    fn drop(&mut self) {
        if !self.requeued.load(std::sync::atomic::Ordering::SeqCst) {
            release(&self.held, self.job.task_id());
        }
    }
}

fn release(held: &std::sync::Mutex<HashSet<Uuid>>, task_id: Uuid) {
    held.lock().expect("queue lock").remove(&task_id);
}

#[async_trait]
impl DeliveryHandle for MemoryHandle {
    async fn ack(&self) -> Result<()> {
        Ok(())
    }

    async fn in_progress(&self) -> Result<()> {
        Ok(())
    }

    async fn retry_later(&self, delay: Duration) -> Result<()> {
        self.requeued
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let tx = self.tx.clone();
        let held = self.held.clone();
        let job = (self.job.clone(), self.delivered + 1, self.trace.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let task_id = job.0.task_id();
            // A full or closed queue drops the job; the task stays in the store unfinished
            // and is queued again at the next start.
            if tx.try_send(job).is_err() {
                release(&held, task_id);
            }
        });
        Ok(())
    }
}

#[async_trait]
impl TaskQueue for MemoryQueue {
    async fn enqueue(&self, dispatch: Dispatch) -> Result<()> {
        let task_id = dispatch.task_id;
        if !self.held.lock().expect("queue lock").insert(task_id) {
            return Ok(());
        }
        self.tx
            .try_send((TaskJob::V1 { task_id }, 1, trace::current()))
            .map_err(|_| {
                release(&self.held, task_id);
                Error::QueueFull
            })
    }

    async fn next(&self, wait: Duration) -> Result<Option<Delivery>> {
        // The wait covers queueing for the receiver too, so no poll outlasts `wait`.
        let received = tokio::time::timeout(wait, async {
            let mut rx = self.rx.lock().await;
            rx.recv().await
        });
        let Ok(Some((job, delivered, trace))) = received.await else {
            return Ok(None);
        };
        crate::metrics::delivered(delivered);
        Ok(Some(Delivery {
            job: job.clone(),
            delivered,
            // The in-process queue holds a task once: there are never two messages.
            job_id: 0,
            trace: trace.clone(),
            handle: Box::new(MemoryHandle {
                job,
                delivered,
                trace,
                tx: self.tx.clone(),
                held: self.held.clone(),
                requeued: false.into(),
            }),
        }))
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    fn heartbeat(&self) -> Option<Duration> {
        None
    }
}

#[derive(Debug, Clone)]
pub struct NatsQueueConfig {
    /// How long a delivery may go without an ack or progress before it is redelivered.
    pub ack_wait: Duration,
    /// The window in which a re-publish of the same task id is dropped by the server.
    pub duplicate_window: Duration,
}

impl Default for NatsQueueConfig {
    fn default() -> Self {
        NatsQueueConfig {
            ack_wait: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(120),
        }
    }
}

#[derive(Clone)]
pub struct NatsQueue {
    heartbeat: Duration,
    js: jetstream::Context,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    subjects: Subjects,
}

impl NatsQueue {
    /// Creates (or reuses) the TASKS work-queue stream and the workers' durable consumer.
    pub async fn new(
        client: async_nats::Client,
        subjects: Subjects,
        config: NatsQueueConfig,
    ) -> Result<Self> {
        let js = jetstream::new(client);
        js.create_or_update_stream(jetstream::stream::Config {
            name: subjects.stream_name("TASKS"),
            subjects: vec![subjects.tasks()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            storage: jetstream::stream::StorageType::File,
            duplicate_window: config.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(Error::nats)?;
        let stream = js
            .get_stream(subjects.stream_name("TASKS"))
            .await
            .map_err(Error::nats)?;
        let consumer = stream
            .get_or_create_consumer(
                "workers",
                pull::Config {
                    durable_name: Some("workers".into()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    // Unbounded here; the worker bounds attempts itself so that the last one
                    // still writes a terminal event instead of the job silently vanishing.
                    max_deliver: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(Error::nats)?;
        let existing_ack_wait = consumer.cached_info().config.ack_wait;
        if existing_ack_wait != config.ack_wait {
            // A durable consumer keeps the settings it was created with; changing them
            // under running workers is an operator's decision, not a side effect of a start.
            tracing::warn!(
                configured = ?config.ack_wait,
                existing = ?existing_ack_wait,
                "the workers' queue consumer keeps its existing ack wait; delete the consumer to apply the new one"
            );
        }
        Ok(NatsQueue {
            heartbeat: existing_ack_wait / 3,
            js,
            consumer,
            subjects,
        })
    }
}

struct NatsHandle {
    acker: jetstream::message::Acker,
}

#[async_trait]
impl DeliveryHandle for NatsHandle {
    // Acks and naks wait for the server's confirmation: a worker that settles a job and
    // then exits would otherwise drop the settlement with its connection, and the job
    // would sit out the whole ack wait.
    async fn ack(&self) -> Result<()> {
        self.acker.double_ack().await.map_err(Error::nats)
    }

    async fn in_progress(&self) -> Result<()> {
        self.acker
            .ack_with(AckKind::Progress)
            .await
            .map_err(Error::nats)
    }

    async fn retry_later(&self, delay: Duration) -> Result<()> {
        let delay = (!delay.is_zero()).then_some(delay);
        self.acker
            .double_ack_with(AckKind::Nak(delay))
            .await
            .map_err(Error::nats)
    }
}

#[async_trait]
impl TaskQueue for NatsQueue {
    async fn enqueue(&self, dispatch: Dispatch) -> Result<()> {
        let Dispatch { task_id, seq } = dispatch;
        let payload = serde_json::to_vec(&TaskJob::V1 { task_id }).expect("a job serialises");
        // The seq tells a retry's job from the submit's, which the duplicate window would
        // otherwise drop as a re-publish.
        let mut message = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(format!("{task_id}:{seq}"));
        for (name, value) in trace::current() {
            message = message.header(name.as_str(), value.as_str());
        }
        self.js
            .send_publish(self.subjects.tasks(), message)
            .await
            .map_err(Error::nats)?
            .await
            .map_err(Error::nats)?;
        Ok(())
    }

    async fn next(&self, wait: Duration) -> Result<Option<Delivery>> {
        // One message per fetch: a worker takes only what it is about to run, so idle
        // workers elsewhere get the rest.
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(1)
            .expires(wait)
            .messages()
            .await
            .map_err(Error::nats)?;
        let Some(message) = batch.next().await else {
            return Ok(None);
        };
        let message = message.map_err(Error::nats)?;
        let info = message.info().map_err(Error::nats)?;
        let (delivered, job_id) = (info.delivered.max(1) as u64, info.stream_sequence);
        crate::metrics::delivered(delivered);
        let (message, acker) = message.split();
        let trace: TraceHeaders = ["traceparent", "tracestate"]
            .into_iter()
            .filter_map(|name| {
                let value = message.headers.as_ref()?.get(name)?;
                Some((name.to_string(), value.as_str().to_string()))
            })
            .collect();
        match serde_json::from_slice::<TaskJob>(&message.payload) {
            Ok(job) => Ok(Some(Delivery {
                job,
                delivered,
                job_id,
                trace,
                handle: Box::new(NatsHandle { acker }),
            })),
            Err(e) => {
                // A job no worker of this version understands would be redelivered forever.
                tracing::error!(error = %e, "dropping a malformed job from the task queue");
                acker.ack_with(AckKind::Term).await.map_err(Error::nats)?;
                Ok(None)
            }
        }
    }

    async fn ping(&self) -> Result<()> {
        // Stream info rather than account info: account info fails against NATS 2.9.
        self.js
            .get_stream(self.subjects.stream_name("TASKS"))
            .await
            .map(|_| ())
            .map_err(Error::nats)
    }

    fn heartbeat(&self) -> Option<Duration> {
        Some(self.heartbeat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(task_id: Uuid) -> Dispatch {
        Dispatch { task_id, seq: 1 }
    }

    #[tokio::test]
    async fn a_task_is_in_the_memory_queue_once_until_its_delivery_is_done() {
        let queue = MemoryQueue::new(8);
        let task_id = Uuid::now_v7();
        queue.enqueue(job(task_id)).await.unwrap();
        queue.enqueue(job(task_id)).await.unwrap();
        let delivery = queue
            .next(Duration::from_millis(10))
            .await
            .unwrap()
            .unwrap();
        // Running: a re-dispatch of the same task does not queue a second run.
        queue.enqueue(job(task_id)).await.unwrap();
        assert!(
            queue
                .next(Duration::from_millis(10))
                .await
                .unwrap()
                .is_none()
        );

        delivery.retry_later(Duration::ZERO).await.unwrap();
        drop(delivery);
        let again = queue
            .next(Duration::from_millis(200))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((again.job.task_id(), again.delivered), (task_id, 2));
        again.ack().await.unwrap();
        drop(again);
        // Done: the task may be queued again (a later resume).
        queue.enqueue(job(task_id)).await.unwrap();
        assert!(
            queue
                .next(Duration::from_millis(10))
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn a_full_memory_queue_refuses_and_forgets_the_job() {
        let queue = MemoryQueue::new(1);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        queue.enqueue(job(a)).await.unwrap();
        assert!(matches!(queue.enqueue(job(b)).await, Err(Error::QueueFull)));
        let first = queue
            .next(Duration::from_millis(10))
            .await
            .unwrap()
            .unwrap();
        drop(first);
        queue.enqueue(job(b)).await.unwrap();
        assert_eq!(
            queue
                .next(Duration::from_millis(10))
                .await
                .unwrap()
                .unwrap()
                .job
                .task_id(),
            b
        );
    }
}
