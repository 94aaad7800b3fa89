//! The catch-up subscription: every event of a task after a cursor, exactly once and in
//! order, first from the store and then live from the bus, ending after the terminal
//! event. Shared by the SSE endpoint and any in-process consumer.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bus::Bus;
use crate::error::{Error, Result};
use crate::event::RawEvent;
use crate::store::Store;

/// What a feed passes to its followers: small events themselves, and for a large one only
/// its seq, so that the buffer shared by a task's followers holds little however large
/// events are; a follower reads a large event from the store, a byte-capped page at a time.
#[derive(Debug, Clone)]
enum Live {
    Event(RawEvent),
    Large { seq: u64 },
}

impl Live {
    fn of(event: RawEvent, inline_max: usize) -> Live {
        if event.json.len() > inline_max {
            Live::Large { seq: event.seq }
        } else {
            Live::Event(event)
        }
    }

    fn seq(&self) -> u64 {
        match self {
            Live::Event(event) => event.seq,
            Live::Large { seq } => *seq,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// Live events buffered per task for its slowest follower; past that, the follower
    /// falls back to the store and rejoins.
    pub buffer: usize,
    /// Events read from the store per query while catching up.
    pub page: u32,
    /// With no live event for this long, a feed checks the store itself, so an event whose
    /// publish was lost (a worker died between commit and publish) still arrives.
    pub idle_check: Duration,
    /// Events larger than this (whole agent answers) are not buffered live: followers read
    /// them from the store. With `buffer` it bounds a followed task's live memory in bytes.
    pub inline_max: usize,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            buffer: 1024,
            page: 1000,
            idle_check: Duration::from_secs(2),
            inline_max: 16 * 1024,
        }
    }
}

/// One bus subscription per followed task per process, however many clients follow it.
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

struct Feed {
    task_id: Uuid,
    tx: broadcast::Sender<Live>,
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

    /// How many tasks this process follows on the bus right now.
    pub fn active(&self) -> usize {
        self.inner.live.lock().expect("feeds lock").len()
    }

    /// Every event of the task with `seq > after`, in order, ending after the terminal one.
    /// The live subscription is in place before the store is read, so nothing falls between.
    pub async fn follow(
        &self,
        task_id: Uuid,
        after: u64,
    ) -> Result<impl Stream<Item = Result<RawEvent>> + Send + 'static> {
        let feed = self.feed(task_id).await?;
        let rx = feed.tx.subscribe();
        let state = Follower {
            store: self.inner.store.clone(),
            page: self.inner.config.page,
            _feed: feed,
            rx,
            task_id,
            last: after,
            pending: VecDeque::new(),
            catching_up: true,
            done: false,
        };
        Ok(futures::stream::unfold(state, Follower::next))
    }

    async fn feed(&self, task_id: Uuid) -> Result<Arc<Feed>> {
        if let Some(feed) = self.existing(task_id) {
            return Ok(feed);
        }
        let inner = &self.inner;
        let subscription = inner.bus.subscribe(task_id).await?;
        let start = inner.store.task(task_id).await?.map_or(0, |t| t.last_seq);
        let mut live = inner.live.lock().expect("feeds lock");
        // Someone may have made the feed while we subscribed; theirs wins, ours is dropped.
        if let Some(feed) = live.get(&task_id).and_then(Weak::upgrade) {
            return Ok(feed);
        }
        let (tx, _) = broadcast::channel(inner.config.buffer);
        let stop = CancellationToken::new();
        let feed = Arc::new(Feed {
            task_id,
            tx: tx.clone(),
            stop: stop.clone(),
            feeds: Arc::downgrade(inner),
        });
        live.insert(task_id, Arc::downgrade(&feed));
        let context = PumpContext {
            store: inner.store.clone(),
            bus: inner.bus.clone(),
            tx,
            stop,
            task_id,
            idle_check: inner.config.idle_check,
            inline_max: inner.config.inline_max,
        };
        tokio::spawn(pump(context, subscription, start));
        Ok(feed)
    }

    fn existing(&self, task_id: Uuid) -> Option<Arc<Feed>> {
        self.inner
            .live
            .lock()
            .expect("feeds lock")
            .get(&task_id)
            .and_then(Weak::upgrade)
    }
}

/// Moves a task's bus messages into its broadcast channel until the last follower leaves.
/// The store is checked after `idle_check` without a live message, so that nothing is
/// missed when a publish was lost or the subscription itself has ended; a subscription
/// that ended is renewed at those checks.
async fn pump(
    feed: PumpContext,
    subscription: futures::stream::BoxStream<'static, RawEvent>,
    mut last_seen: u64,
) {
    let PumpContext {
        store,
        bus,
        tx,
        stop,
        task_id,
        idle_check,
        inline_max,
    } = feed;
    let mut subscription = Some(subscription);
    let mut idle_at = tokio::time::Instant::now() + idle_check;
    loop {
        let live = async {
            match subscription.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            message = live => match message {
                Some(event) => {
                    last_seen = last_seen.max(event.seq);
                    idle_at = tokio::time::Instant::now() + idle_check;
                    let _ = tx.send(Live::of(event, inline_max));
                }
                None => {
                    tracing::warn!(%task_id, "the live subscription of a followed task ended; following from the store until it is renewed");
                    subscription = None;
                }
            },
            _ = tokio::time::sleep_until(idle_at) => {
                if subscription.is_none() {
                    subscription = renew(bus.as_ref(), task_id).await;
                }
                idle_at = tokio::time::Instant::now() + idle_check;
                match store.events_after(task_id, last_seen, 100).await {
                    Ok(events) => for event in events {
                        last_seen = event.seq;
                        let _ = tx.send(Live::of(event, inline_max));
                    },
                    Err(e) => tracing::warn!(%task_id, error = %e, "idle check of a followed task failed"),
                }
            }
        }
    }
}

/// What a feed's pump needs besides its subscription.
struct PumpContext {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    tx: broadcast::Sender<Live>,
    stop: CancellationToken,
    task_id: Uuid,
    idle_check: Duration,
    inline_max: usize,
}

async fn renew(
    bus: &dyn Bus,
    task_id: Uuid,
) -> Option<futures::stream::BoxStream<'static, RawEvent>> {
    match bus.subscribe(task_id).await {
        Ok(subscription) => {
            tracing::info!(%task_id, "the live subscription of a followed task is renewed");
            Some(subscription)
        }
        Err(e) => {
            tracing::warn!(%task_id, error = %e, "renewing a live subscription failed");
            None
        }
    }
}

struct Follower {
    store: Arc<dyn Store>,
    page: u32,
    _feed: Arc<Feed>,
    rx: broadcast::Receiver<Live>,
    task_id: Uuid,
    last: u64,
    /// At most one page of events read from the store and not yet sent.
    pending: VecDeque<RawEvent>,
    catching_up: bool,
    done: bool,
}

impl Follower {
    async fn next(mut self) -> Option<(Result<RawEvent>, Self)> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.pending.pop_front() {
                if event.seq <= self.last {
                    continue;
                }
                self.last = event.seq;
                self.done = event.is_terminal();
                return Some((Ok(event), self));
            }
            if self.catching_up {
                match self
                    .store
                    .events_after(self.task_id, self.last, self.page)
                    .await
                {
                    Ok(events) => {
                        // A short page may only mean a byte-capped one: read on until
                        // the store has nothing more.
                        self.catching_up = !events.is_empty();
                        self.pending.extend(events);
                        continue;
                    }
                    Err(e) => {
                        self.done = true;
                        return Some((Err(e), self));
                    }
                }
            }
            match self.rx.recv().await {
                Ok(live) if live.seq() <= self.last => {}
                Ok(Live::Event(event)) if event.seq == self.last + 1 => {
                    self.pending.push_back(event)
                }
                // A large event, a gap (a lost message) or a lag (this follower fell behind
                // its buffer): the store has everything that was published, so read it.
                Ok(_) | Err(RecvError::Lagged(_)) => self.catching_up = true,
                Err(RecvError::Closed) => {
                    self.done = true;
                    return Some((Err(Error::FeedClosed), self));
                }
            }
        }
    }
}
