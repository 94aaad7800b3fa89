//! The task queue: one job per submitted task, taken by exactly one worker at a time.
//! A JetStream work-queue stream when distributed, a bounded in-process channel when
//! embedded. Delivery is at least once; the worker makes re-running a task safe.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::AckPolicy, consumer::pull};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::{Mutex, mpsc};
use uuid::Uuid;

use crate::bus::Subjects;
use crate::error::{Error, Result};
use crate::task::TaskJob;

#[async_trait]
pub trait TaskQueue: Send + Sync + 'static {
    /// Queues a task. Enqueuing the same task twice within the dedupe window is harmless.
    async fn enqueue(&self, task_id: Uuid) -> Result<()>;

    /// The next job, or `None` when nothing arrived within `wait`.
    async fn next(&self, wait: Duration) -> Result<Option<Delivery>>;

    async fn ping(&self) -> Result<()>;
}

/// A job handed to one worker. Until it is acked, the queue may hand it to another.
pub struct Delivery {
    pub job: TaskJob,
    /// 1 on the first delivery, more on redeliveries.
    pub delivered: u64,
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

/// The embedded queue. Jobs live in memory only: at start the embedded runtime puts every
/// unfinished task back (see `Store::requeue_unfinished`).
#[derive(Clone)]
pub struct MemoryQueue {
    tx: mpsc::Sender<(TaskJob, u64)>,
    rx: Arc<Mutex<mpsc::Receiver<(TaskJob, u64)>>>,
}

impl MemoryQueue {
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        MemoryQueue {
            tx,
            rx: Arc::new(Mutex::new(rx)),
        }
    }
}

struct MemoryHandle {
    job: TaskJob,
    delivered: u64,
    tx: mpsc::Sender<(TaskJob, u64)>,
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
        let tx = self.tx.clone();
        let job = (self.job.clone(), self.delivered + 1);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // A full or closed queue drops the job; the task stays in the store unfinished
            // and is queued again at the next start.
            let _ = tx.try_send(job);
        });
        Ok(())
    }
}

#[async_trait]
impl TaskQueue for MemoryQueue {
    async fn enqueue(&self, task_id: Uuid) -> Result<()> {
        self.tx
            .try_send((TaskJob::V1 { task_id }, 1))
            .map_err(|_| Error::QueueFull)
    }

    async fn next(&self, wait: Duration) -> Result<Option<Delivery>> {
        let mut rx = self.rx.lock().await;
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some((job, delivered))) => Ok(Some(Delivery {
                job: job.clone(),
                delivered,
                handle: Box::new(MemoryHandle {
                    job,
                    delivered,
                    tx: self.tx.clone(),
                }),
            })),
            Ok(None) | Err(_) => Ok(None),
        }
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
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
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: subjects.stream_name("TASKS"),
                subjects: vec![subjects.tasks()],
                retention: jetstream::stream::RetentionPolicy::WorkQueue,
                storage: jetstream::stream::StorageType::File,
                duplicate_window: config.duplicate_window,
                ..Default::default()
            })
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
        Ok(NatsQueue {
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
    async fn enqueue(&self, task_id: Uuid) -> Result<()> {
        let payload = serde_json::to_vec(&TaskJob::V1 { task_id }).expect("a job serialises");
        self.js
            .send_publish(
                self.subjects.tasks(),
                jetstream::message::PublishMessage::build()
                    .payload(payload.into())
                    .message_id(task_id.to_string()),
            )
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
        let delivered = message.info().map_err(Error::nats)?.delivered.max(1) as u64;
        let (message, acker) = message.split();
        match serde_json::from_slice::<TaskJob>(&message.payload) {
            Ok(job) => Ok(Some(Delivery {
                job,
                delivered,
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
}
