//! The catch-up subscription: every event of a task after a cursor, exactly once and in
//! order, ending after the terminal event. Shared by the SSE endpoint and any in-process
//! consumer.
//!
//! A process follows each task it serves once, however many clients follow it: one bus
//! subscription and the tail of the task's log in memory (the feed). Clients read the
//! tail from memory, so thousands joining at once cost the store one read, and each event
//! is encoded for the wire once and its bytes shared by every client. Only a client that
//! wants older events than the tail holds, or an event too large to keep, reads the store.

use std::collections::{HashMap, VecDeque};
use std::ops::Deref;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bus::Bus;
use crate::error::{Error, Result};
use crate::event::RawEvent;
use crate::store::{Store, is_last_page};

/// Makes an event's wire form, once per event, for every follower of the process.
pub type Encode = fn(&RawEvent) -> Bytes;

/// An event as its followers get it: the stored event and its wire form.
#[derive(Debug)]
pub struct Followed {
    event: RawEvent,
    frame: Bytes,
}

impl Followed {
    fn new(event: RawEvent, encode: Encode) -> Arc<Followed> {
        let frame = encode(&event);
        Arc::new(Followed { event, frame })
    }

    /// The event as the feed's [`Encode`] put it on the wire.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    pub fn event(&self) -> &RawEvent {
        &self.event
    }

    /// What it costs the feed's memory.
    fn weight(&self) -> usize {
        self.event.json.len() + self.frame.len() + std::mem::size_of::<Followed>()
    }
}

impl Deref for Followed {
    type Target = RawEvent;

    fn deref(&self) -> &RawEvent {
        &self.event
    }
}

#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// Events of a followed task's log kept in memory: the tail that joining and lagging
    /// followers read without the store.
    pub buffer: usize,
    /// Bytes the kept tail may take (JSON and wire form); the older events go first.
    pub buffer_bytes: usize,
    /// Events a follower reads from the store per query when it wants older events than
    /// the tail holds. Dropped once sent, so an idle follower holds none.
    pub page: u32,
    /// With no live event for this long, a feed checks the store itself, so an event whose
    /// publish was lost (a worker died between commit and publish) still arrives.
    pub idle_check: Duration,
    /// Events larger than this (whole agent answers) are not kept in the tail: followers
    /// read them from the store, a byte-capped page at a time.
    pub inline_max: usize,
    /// The wire form kept with each event.
    pub encode: Encode,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            buffer: 1024,
            buffer_bytes: 4 << 20,
            page: 1000,
            idle_check: Duration::from_secs(2),
            inline_max: 16 * 1024,
            encode: |_| Bytes::new(),
        }
    }
}

/// One feed per followed task per process, however many clients follow it.
#[derive(Clone)]
pub struct Feeds {
    inner: Arc<FeedsInner>,
}

struct FeedsInner {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    config: FeedConfig,
    live: Mutex<HashMap<Uuid, Weak<Feed>>>,
}

/// Held by a task's followers; the last one to go stops the pump.
struct Feed {
    task_id: Uuid,
    tail: Arc<Tail>,
    stop: CancellationToken,
    feeds: Weak<FeedsInner>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(feeds) = self.feeds.upgrade() {
            let mut live = feeds.live.lock().expect("feeds lock");
            // Only forget the entry if it is still ours: a new feed may have replaced it.
            if live
                .get(&self.task_id)
                .is_some_and(|weak| weak.strong_count() == 0)
            {
                live.remove(&self.task_id);
            }
        }
    }
}

impl Feeds {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, config: FeedConfig) -> Self {
        Feeds {
            inner: Arc::new(FeedsInner {
                store,
                bus,
                config,
                live: Mutex::default(),
            }),
        }
    }

    /// How many tasks this process follows right now.
    pub fn active(&self) -> usize {
        self.inner.live.lock().expect("feeds lock").len()
    }

    /// Every event of the task with `seq > after`, in order, ending after the terminal one.
    pub async fn follow(
        &self,
        task_id: Uuid,
        after: u64,
    ) -> Result<impl Stream<Item = Result<Arc<Followed>>> + Send + 'static> {
        let feed = self.feed(task_id);
        let config = &self.inner.config;
        let state = Follower {
            store: self.inner.store.clone(),
            page: config.page,
            encode: config.encode,
            changed: feed.tail.changed.subscribe(),
            feed,
            last: after,
            pending: VecDeque::new(),
            done: false,
        };
        Ok(futures::stream::unfold(state, Follower::next))
    }

    /// The task's feed, started if there is none: never waits, so that many followers
    /// joining at once make one feed and wait for its tail together.
    fn feed(&self, task_id: Uuid) -> Arc<Feed> {
        let inner = &self.inner;
        let mut live = inner.live.lock().expect("feeds lock");
        if let Some(feed) = live.get(&task_id).and_then(Weak::upgrade) {
            return feed;
        }
        let tail = Arc::new(Tail::new(&inner.config));
        let stop = CancellationToken::new();
        let feed = Arc::new(Feed {
            task_id,
            tail: tail.clone(),
            stop: stop.clone(),
            feeds: Arc::downgrade(inner),
        });
        live.insert(task_id, Arc::downgrade(&feed));
        let pump = Pump {
            store: inner.store.clone(),
            bus: inner.bus.clone(),
            tail,
            task_id,
            config: inner.config.clone(),
        };
        tokio::spawn(pump.run(stop));
        feed
    }
}

/// The end of a task's log as this process has seen it, shared by its followers.
struct Tail {
    log: Mutex<Kept>,
    /// Bumped whenever the tail grows (or is first loaded).
    changed: watch::Sender<u64>,
    limits: (usize, usize),
}

/// A tail entry: an event, or only the seq of one too large to keep.
enum Slot {
    Event(Arc<Followed>),
    Large(u64),
}

impl Slot {
    fn weight(&self) -> usize {
        match self {
            Slot::Event(followed) => followed.weight(),
            Slot::Large(_) => std::mem::size_of::<Slot>(),
        }
    }
}

struct Kept {
    loaded: bool,
    /// The seq of `slots[0]`; when `slots` is empty, the seq the next event will have.
    first: u64,
    slots: VecDeque<Slot>,
    bytes: usize,
}

/// What a follower at some seq finds in the tail.
enum Next {
    Ready(Arc<Followed>),
    /// The next event is older than the tail, or too large to keep: in the store.
    InStore,
    /// Not loaded yet, or the follower is at the end.
    Wait,
}

impl Tail {
    fn new(config: &FeedConfig) -> Tail {
        Tail {
            log: Mutex::new(Kept {
                loaded: false,
                first: 1,
                slots: VecDeque::new(),
                bytes: 0,
            }),
            changed: watch::channel(0).0,
            limits: (config.buffer.max(1), config.buffer_bytes),
        }
    }

    fn next_after(&self, seq: u64) -> Next {
        let kept = self.log.lock().expect("tail lock");
        if !kept.loaded {
            return Next::Wait;
        }
        if seq + 1 < kept.first {
            return Next::InStore;
        }
        match kept.slots.get((seq + 1 - kept.first) as usize) {
            Some(Slot::Event(followed)) => Next::Ready(followed.clone()),
            Some(Slot::Large(_)) => Next::InStore,
            None => Next::Wait,
        }
    }

    /// The seq of the last event in the tail (0 before the first).
    fn last(&self) -> u64 {
        let kept = self.log.lock().expect("tail lock");
        kept.first + kept.slots.len() as u64 - 1
    }

    /// Adds the events that follow on from the tail (others are ignored) and wakes the
    /// followers, only if there is something new for them: an idle check that finds
    /// nothing must not wake every client of the task.
    fn extend(&self, events: impl IntoIterator<Item = Slot>) {
        let mut kept = self.log.lock().expect("tail lock");
        let before = (kept.loaded, kept.first + kept.slots.len() as u64);
        for slot in events {
            let seq = match &slot {
                Slot::Event(followed) => followed.seq,
                Slot::Large(seq) => *seq,
            };
            if seq != kept.first + kept.slots.len() as u64 {
                continue;
            }
            kept.bytes += slot.weight();
            kept.slots.push_back(slot);
            let (events, bytes) = self.limits;
            while kept.slots.len() > events || (kept.bytes > bytes && kept.slots.len() > 1) {
                let old = kept.slots.pop_front().expect("not empty");
                kept.bytes -= old.weight();
                kept.first += 1;
            }
        }
        kept.loaded = true;
        let next = kept.first + kept.slots.len() as u64;
        drop(kept);
        if before != (true, next) {
            self.changed.send_replace(next - 1);
        }
    }

    /// Starts an empty tail after `seq`: the log is longer than the tail keeps.
    fn start_after(&self, seq: u64) {
        let mut kept = self.log.lock().expect("tail lock");
        kept.first = seq + 1;
        drop(kept);
    }
}

/// Keeps a task's tail up to date from its bus subscription until the last follower
/// leaves. The store is checked after `idle_check` without a live message, so nothing is
/// missed when a publish was lost or the subscription itself has ended; a subscription
/// that ended is renewed at those checks.
struct Pump {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    tail: Arc<Tail>,
    task_id: Uuid,
    config: FeedConfig,
}

type Subscription = futures::stream::BoxStream<'static, RawEvent>;

impl Pump {
    async fn run(self, stop: CancellationToken) {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = self.pump() => {}
        }
    }

    async fn pump(&self) {
        // Subscribed before the store is read, so that nothing falls between.
        let mut subscription = self.subscribe().await;
        self.load().await;
        let idle_check = self.config.idle_check;
        let mut idle_at = tokio::time::Instant::now() + idle_check;
        loop {
            let live = async {
                match subscription.as_mut() {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = live => match message {
                    Some(event) => {
                        idle_at = tokio::time::Instant::now() + idle_check;
                        self.take(event).await;
                    }
                    None => {
                        tracing::warn!(task_id = %self.task_id, "the live subscription of a followed task ended; following from the store until it is renewed");
                        subscription = None;
                    }
                },
                _ = tokio::time::sleep_until(idle_at) => {
                    if subscription.is_none() {
                        subscription = self.subscribe().await;
                    }
                    idle_at = tokio::time::Instant::now() + idle_check;
                    if let Err(e) = self.catch_up(u64::MAX).await {
                        tracing::warn!(task_id = %self.task_id, error = %e, "idle check of a followed task failed");
                    }
                }
            }
        }
    }

    async fn subscribe(&self) -> Option<Subscription> {
        match self.bus.subscribe(self.task_id).await {
            Ok(subscription) => Some(subscription),
            Err(e) => {
                tracing::warn!(task_id = %self.task_id, error = %e, "subscribing to a followed task failed; following from the store until it works");
                None
            }
        }
    }

    /// The log's tail, read until the store answers: followers wait for it meanwhile.
    async fn load(&self) {
        let mut delay = Duration::from_millis(100);
        while let Err(e) = self.try_load().await {
            tracing::warn!(task_id = %self.task_id, error = %e, "reading a followed task's log failed; trying again");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn try_load(&self) -> Result<()> {
        let limit = self.config.buffer as u32;
        let page = self.store.events_after(self.task_id, 0, limit).await?;
        if is_last_page(&page, limit) {
            self.keep(page);
            return Ok(());
        }
        // A long log: keep its end, where joining followers mostly are.
        let last = self
            .store
            .task(self.task_id)
            .await?
            .map_or(0, |t| t.last_seq);
        let from = last.saturating_sub(limit as u64 / 2);
        self.tail.start_after(from);
        let page = self.store.events_after(self.task_id, from, limit).await?;
        self.keep(page);
        Ok(())
    }

    /// A live event: kept if it follows on from the tail; after a gap (a lost message),
    /// the store fills the gap first.
    async fn take(&self, event: RawEvent) {
        let last = self.tail.last();
        if event.seq <= last {
            return;
        }
        if event.seq > last + 1
            && let Err(e) = self.catch_up(event.seq - 1).await
        {
            tracing::warn!(task_id = %self.task_id, error = %e, "reading events a followed task's bus missed failed");
            return;
        }
        self.keep(vec![event]);
    }

    /// Reads the store from the end of the tail up to `until` (or the end of the log).
    async fn catch_up(&self, until: u64) -> Result<()> {
        let page = self.config.page;
        loop {
            let after = self.tail.last();
            if after >= until {
                return Ok(());
            }
            let events = self.store.events_after(self.task_id, after, page).await?;
            let last = is_last_page(&events, page);
            self.keep(events);
            if last {
                return Ok(());
            }
        }
    }

    fn keep(&self, events: Vec<RawEvent>) {
        let FeedConfig {
            inline_max, encode, ..
        } = self.config;
        self.tail.extend(events.into_iter().map(|event| {
            if event.json.len() > inline_max {
                Slot::Large(event.seq)
            } else {
                Slot::Event(Followed::new(event, encode))
            }
        }));
    }
}

struct Follower {
    store: Arc<dyn Store>,
    page: u32,
    encode: Encode,
    feed: Arc<Feed>,
    changed: watch::Receiver<u64>,
    last: u64,
    /// Events read from the store and not yet sent: at most one page, and only while the
    /// follower is behind the tail.
    pending: VecDeque<RawEvent>,
    done: bool,
}

impl Follower {
    async fn next(mut self) -> Option<(Result<Arc<Followed>>, Self)> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.pending.pop_front() {
                if self.pending.is_empty() {
                    // A page's worth of memory is not kept by a follower that caught up.
                    self.pending = VecDeque::new();
                }
                if event.seq <= self.last {
                    continue;
                }
                let followed = Followed::new(event, self.encode);
                return Some((Ok(self.deliver(followed)), self));
            }
            // Seen before looking, so that an event added after the look wakes us.
            self.changed.borrow_and_update();
            match self.feed.tail.next_after(self.last) {
                Next::Ready(followed) => return Some((Ok(self.deliver(followed)), self)),
                Next::InStore => {
                    if let Err(e) = self.read_store().await {
                        self.done = true;
                        return Some((Err(e), self));
                    }
                }
                Next::Wait => {
                    if self.changed.changed().await.is_err() {
                        self.done = true;
                        return Some((Err(Error::FeedClosed), self));
                    }
                }
            }
        }
    }

    fn deliver(&mut self, followed: Arc<Followed>) -> Arc<Followed> {
        self.last = followed.seq;
        self.done = followed.is_terminal();
        followed
    }

    async fn read_store(&mut self) -> Result<()> {
        let task_id = self.feed.task_id;
        let events = self
            .store
            .events_after(task_id, self.last, self.page)
            .await?;
        if events.is_empty() {
            // Nothing the tail lacks is missing from the store, so this does not happen;
            // should it, look again once the tail has grown.
            let _ = self.changed.changed().await;
        }
        self.pending.extend(events);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventBody};

    fn slot(task_id: Uuid, seq: u64) -> Slot {
        let body = EventBody::AgentProgress {
            agent_role: "qa".into(),
            message: "m".into(),
        };
        Slot::Event(Followed::new(
            Event::new(task_id, seq, body).to_raw(),
            |_| Bytes::new(),
        ))
    }

    #[test]
    fn followers_are_woken_only_when_the_tail_grows() {
        let task_id = Uuid::now_v7();
        let tail = Tail::new(&FeedConfig::default());
        let mut changed = tail.changed.subscribe();

        tail.extend([slot(task_id, 1)]);
        assert!(changed.has_changed().unwrap(), "loaded");
        changed.borrow_and_update();

        // An idle check that found nothing, and a duplicate.
        tail.extend([]);
        tail.extend([slot(task_id, 1)]);
        assert!(!changed.has_changed().unwrap());

        tail.extend([slot(task_id, 2)]);
        assert!(changed.has_changed().unwrap());
        assert!(matches!(tail.next_after(1), Next::Ready(f) if f.seq == 2));
    }
}
