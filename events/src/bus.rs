//! The bus carries each event, after it is stored, to whoever follows the task live:
//! NATS subjects `<prefix>.events.<task_id>.<type>` when distributed, a broadcast
//! channel per task when embedded. Live followers may miss messages and fill gaps from the
//! store. When distributed the subjects are also kept in the `EVENTS` JetStream stream for
//! analytics consumers, exactly once per `(taskId, seq)`: every publish carries
//! `Nats-Msg-Id: <taskId>:<seq>` and waits for the stream's ack, and what was stored but
//! never acknowledged is published again from the store (`relay.rs`), the duplicates
//! dropped by the stream within its duplicate window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::RawEvent;

/// Headers carrying the seq and time, so that followers dedupe without parsing the payload.
pub const SEQ_HEADER: &str = "Troupe-Seq";
pub const AT_HEADER: &str = "Troupe-At";

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes events already committed to the store, in order. On a bus that keeps
    /// events ([`Bus::keeps_events`]), `Ok` means the stream acknowledged every one.
    async fn publish(&self, events: &[RawEvent]) -> Result<()>;

    /// Whether published events are kept for durable consumers, so that what was stored
    /// but never acknowledged must be published again (see `relay.rs`).
    fn keeps_events(&self) -> bool;

    /// Live events of one task from now on. Best effort: gaps are possible.
    async fn subscribe(&self, task_id: Uuid) -> Result<BoxStream<'static, RawEvent>>;

    /// Live events of every task from now on, in order within a task. Best effort: a
    /// consumer that must see everything fills gaps from the store (or, distributed,
    /// reads the EVENTS stream instead).
    async fn subscribe_all(&self) -> Result<BoxStream<'static, RawEvent>>;

    /// Tells the worker running the task that users asked something of it; what they
    /// asked is in the store (see `Store::controls`). Best effort: workers also poll.
    async fn nudge(&self, task_id: Uuid) -> Result<()>;

    /// Nudges for one task from now on.
    async fn nudges(&self, task_id: Uuid) -> Result<BoxStream<'static, ()>>;

    async fn ping(&self) -> Result<()>;

    /// Removes the task's events from what the bus keeps for consumers (its owner deleted
    /// it). Nothing to do on a bus that keeps none.
    async fn forget(&self, task_id: Uuid) -> Result<()>;
}

/// Subject names under one prefix, so that several deployments (or test runs) can share
/// one NATS server without seeing each other.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Subjects {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn event(&self, task_id: Uuid, kind: &str) -> String {
        format!("{}.events.{task_id}.{kind}", self.prefix)
    }

    pub fn task_events(&self, task_id: Uuid) -> String {
        format!("{}.events.{task_id}.>", self.prefix)
    }

    pub fn control(&self, task_id: Uuid) -> String {
        format!("{}.control.{task_id}", self.prefix)
    }

    pub fn all_events(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    pub fn tasks(&self) -> String {
        format!("{}.tasks", self.prefix)
    }

    /// JetStream names allow no dots: `troupe.dev` becomes `TROUPE_DEV_<suffix>`.
    pub fn stream_name(&self, suffix: &str) -> String {
        let base: String = self
            .prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("{base}_{suffix}")
    }
}

/// Broadcast channels by task, each removed when its last subscriber goes, so an idle bus
/// holds nothing.
struct Channels<T> {
    senders: Arc<Mutex<HashMap<Uuid, broadcast::Sender<T>>>>,
    capacity: usize,
}

impl<T: Clone + Send + 'static> Channels<T> {
    fn new(capacity: usize) -> Self {
        Channels {
            senders: Arc::default(),
            capacity,
        }
    }

    fn len(&self) -> usize {
        self.senders.lock().expect("bus lock").len()
    }

    fn send(&self, task_id: Uuid, message: T) {
        if let Some(tx) = self.senders.lock().expect("bus lock").get(&task_id) {
            // No receiver is not an error: nobody is following this task right now.
            let _ = tx.send(message);
        }
    }

    fn subscribe(&self, task_id: Uuid) -> BoxStream<'static, T> {
        let rx = self
            .senders
            .lock()
            .expect("bus lock")
            .entry(task_id)
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe();
        MemorySubscription {
            stream: Some(BroadcastStream::new(rx)),
            task_id,
            senders: self.senders.clone(),
        }
        .boxed()
    }

    /// Ends every subscription of the task, as a broken connection would.
    fn close(&self, task_id: Uuid) {
        self.senders.lock().expect("bus lock").remove(&task_id);
    }
}

/// The embedded bus: a bounded broadcast channel per followed task, and one per task
/// whose worker listens for nudges.
#[derive(Clone)]
pub struct MemoryBus {
    events: Arc<Channels<RawEvent>>,
    /// Every task's events, for the embedded stats consumer.
    all: broadcast::Sender<RawEvent>,
    nudges: Arc<Channels<()>>,
}

impl MemoryBus {
    pub fn new(capacity: usize) -> Self {
        MemoryBus {
            events: Arc::new(Channels::new(capacity)),
            all: broadcast::channel(capacity).0,
            nudges: Arc::new(Channels::new(16)),
        }
    }

    /// How many tasks have a live channel; for tests that check nothing leaks.
    pub fn channel_count(&self) -> usize {
        self.events.len() + self.nudges.len()
    }

    /// Ends every live subscription to the task's events, as a connection lost for good
    /// would; followers must notice and carry on from the store.
    pub fn end_subscriptions(&self, task_id: Uuid) {
        self.events.close(task_id);
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus::new(1024)
    }
}

struct MemorySubscription<T: Clone + Send + 'static> {
    stream: Option<BroadcastStream<T>>,
    task_id: Uuid,
    senders: Arc<Mutex<HashMap<Uuid, broadcast::Sender<T>>>>,
}

impl<T: Clone + Send + 'static> Drop for MemorySubscription<T> {
    fn drop(&mut self) {
        drop(self.stream.take());
        let mut senders = self.senders.lock().expect("bus lock");
        if senders
            .get(&self.task_id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            senders.remove(&self.task_id);
        }
    }
}

impl<T: Clone + Send + 'static> futures::Stream for MemorySubscription<T> {
    type Item = T;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        let Some(stream) = self.stream.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        loop {
            match futures::ready!(stream.poll_next_unpin(cx)) {
                Some(Ok(message)) => return std::task::Poll::Ready(Some(message)),
                // Lagging behind is a gap like any other: the follower fills it from the store.
                Some(Err(_lagged)) => continue,
                None => return std::task::Poll::Ready(None),
            }
        }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, events: &[RawEvent]) -> Result<()> {
        let everyone = self.all.receiver_count() > 0;
        for event in events {
            self.events.send(event.task_id, event.clone());
            if everyone {
                // No receiver is not an error: the consumer may be catching up.
                let _ = self.all.send(event.clone());
            }
        }
        crate::metrics::published(events.len());
        Ok(())
    }

    fn keeps_events(&self) -> bool {
        false
    }

    async fn subscribe(&self, task_id: Uuid) -> Result<BoxStream<'static, RawEvent>> {
        Ok(self.events.subscribe(task_id))
    }

    async fn subscribe_all(&self) -> Result<BoxStream<'static, RawEvent>> {
        // A lagging receiver skips what it missed; the consumer's catch-up reads it back.
        Ok(BroadcastStream::new(self.all.subscribe())
            .filter_map(|event| async move { event.ok() })
            .boxed())
    }

    async fn nudge(&self, task_id: Uuid) -> Result<()> {
        self.nudges.send(task_id, ());
        Ok(())
    }

    async fn nudges(&self, task_id: Uuid) -> Result<BoxStream<'static, ()>> {
        Ok(self.nudges.subscribe(task_id))
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn forget(&self, _task_id: Uuid) -> Result<()> {
        Ok(())
    }
}

/// Retention of the EVENTS stream that analytics consumers read from.
#[derive(Debug, Clone)]
pub struct EventStreamLimits {
    pub max_age: Duration,
    pub max_bytes: i64,
    /// How long the stream remembers a `Nats-Msg-Id` to drop a second publish of it: it
    /// must outlast the time from a publish that was never acknowledged to the relay's
    /// republish of the same event (`RelayConfig::grace` plus a pass).
    pub duplicate_window: Duration,
}

impl Default for EventStreamLimits {
    fn default() -> Self {
        EventStreamLimits {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 1 << 30,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// The `Nats-Msg-Id` of an event: what the stream deduplicates by.
pub fn message_id(task_id: Uuid, seq: u64) -> String {
    format!("{task_id}:{seq}")
}

#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    subjects: Subjects,
}

impl NatsBus {
    /// Also makes sure the EVENTS stream exists, so that every published event is kept for
    /// durable consumers (analytics) within `limits`.
    pub async fn new(
        client: async_nats::Client,
        subjects: Subjects,
        limits: EventStreamLimits,
    ) -> Result<Self> {
        let jetstream = jetstream::new(client.clone());
        // Create or update: changed retention limits apply at the next start.
        jetstream
            .create_or_update_stream(jetstream::stream::Config {
                name: subjects.stream_name("EVENTS"),
                subjects: vec![subjects.all_events()],
                max_age: limits.max_age,
                max_bytes: limits.max_bytes,
                duplicate_window: limits.duplicate_window.min(limits.max_age),
                storage: jetstream::stream::StorageType::File,
                discard: jetstream::stream::DiscardPolicy::Old,
                ..Default::default()
            })
            .await
            .map_err(Error::nats)?;
        Ok(NatsBus {
            client,
            jetstream,
            subjects,
        })
    }
}

/// What a consumer reads besides the payload: the seq and time (so that live followers
/// dedupe without parsing), the message id, and the trace context of the append.
fn event_headers(event: &RawEvent, trace: &HashMap<String, String>) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        message_id(event.task_id, event.seq).as_str(),
    );
    headers.insert(SEQ_HEADER, event.seq.to_string().as_str());
    headers.insert(AT_HEADER, event.at.to_rfc3339().as_str());
    for (name, value) in trace {
        headers.insert(name.as_str(), value.as_str());
    }
    headers
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, events: &[RawEvent]) -> Result<()> {
        // The append's trace context, so that a consumer of the events can join the task's trace.
        let trace = crate::trace::current();
        // Every message goes out before the first ack is awaited: one round trip a batch.
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let sent = self
                .jetstream
                .publish_with_headers(
                    self.subjects.event(event.task_id, &event.kind),
                    event_headers(event, &trace),
                    event.json.clone(),
                )
                .await;
            match sent {
                Ok(ack) => acks.push(ack),
                Err(e) => return Err(Error::nats(e)),
            }
        }
        let mut acknowledged = 0;
        for ack in acks {
            if let Err(e) = ack.await {
                crate::metrics::published(acknowledged);
                return Err(Error::nats(e));
            }
            acknowledged += 1;
        }
        crate::metrics::published(acknowledged);
        Ok(())
    }

    fn keeps_events(&self) -> bool {
        true
    }

    async fn subscribe(&self, task_id: Uuid) -> Result<BoxStream<'static, RawEvent>> {
        let subscriber = self
            .client
            .subscribe(self.subjects.task_events(task_id))
            .await
            .map_err(Error::nats)?;
        // The subscription is live once the server has seen it; without this round trip an
        // event published right after could still miss it.
        self.client.flush().await.map_err(Error::nats)?;
        Ok(subscriber
            .filter_map(move |msg| async move {
                event_from_message(&msg).filter(|e| e.task_id == task_id)
            })
            .boxed())
    }

    async fn subscribe_all(&self) -> Result<BoxStream<'static, RawEvent>> {
        let subscriber = self
            .client
            .subscribe(self.subjects.all_events())
            .await
            .map_err(Error::nats)?;
        self.client.flush().await.map_err(Error::nats)?;
        Ok(subscriber
            .filter_map(|msg| async move { event_from_message(&msg) })
            .boxed())
    }

    async fn nudge(&self, task_id: Uuid) -> Result<()> {
        self.client
            .publish(self.subjects.control(task_id), bytes::Bytes::new())
            .await
            .map_err(Error::nats)
    }

    async fn nudges(&self, task_id: Uuid) -> Result<BoxStream<'static, ()>> {
        let subscriber = self
            .client
            .subscribe(self.subjects.control(task_id))
            .await
            .map_err(Error::nats)?;
        self.client.flush().await.map_err(Error::nats)?;
        Ok(subscriber.map(|_| ()).boxed())
    }

    async fn ping(&self) -> Result<()> {
        self.client.flush().await.map_err(Error::nats)
    }

    async fn forget(&self, task_id: Uuid) -> Result<()> {
        let stream = self
            .jetstream
            .get_stream_no_info(self.subjects.stream_name("EVENTS"))
            .await
            .map_err(Error::nats)?;
        stream
            .purge()
            .filter(self.subjects.task_events(task_id))
            .await
            .map_err(Error::nats)?;
        Ok(())
    }
}

/// An event subject's message back into the event (`<prefix>.events.<taskId>.<type>`, the
/// seq and time from the headers): what live followers and stream consumers read. One
/// without our headers is not ours: `None`.
pub fn event_from_message(msg: &async_nats::Message) -> Option<RawEvent> {
    let headers = msg.headers.as_ref()?;
    let seq = headers.get(SEQ_HEADER)?.as_str().parse().ok()?;
    let at = chrono::DateTime::parse_from_rfc3339(headers.get(AT_HEADER)?.as_str()).ok()?;
    let mut tokens = msg.subject.as_str().rsplit('.');
    let kind = tokens.next()?.to_string();
    let task_id = tokens.next()?.parse().ok()?;
    Some(RawEvent {
        task_id,
        seq,
        kind,
        at: at.to_utc(),
        json: msg.payload.clone(),
    })
}
