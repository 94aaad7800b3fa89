//! The two ends of provider adverts: a worker saying, while it lives, which providers it
//! serves; the api reading what the live workers serve, cached for a moment.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Advert, Directory, Offer};
use crate::error::Result;
use crate::store::Store;

/// How many refresh intervals an advert outlives its last refresh: a worker stalled for
/// a few beats (a store outage, a long pause) keeps its place.
const LIVE_FOR_BEATS: u32 = 6;

/// Says a worker's offers in the store every `every` until shutdown, then says it is
/// stopping.
pub struct Advertiser {
    store: Arc<dyn Store>,
    advert: Advert,
    every: Duration,
}

impl Advertiser {
    pub fn new(store: Arc<dyn Store>, offers: Vec<Offer>, every: Duration) -> Self {
        Advertiser {
            store,
            advert: Advert {
                worker_id: Uuid::now_v7(),
                offers,
                stopping: false,
            },
            every,
        }
    }

    /// Stores the advert once. A worker's process calls it before it serves, so that the
    /// api accepts its providers' tasks from the start.
    pub async fn advertise(&self) -> Result<()> {
        self.say(&self.advert).await
    }

    async fn say(&self, advert: &Advert) -> Result<()> {
        self.store
            .advertise(advert, self.every * LIVE_FOR_BEATS)
            .await
    }

    /// Refreshes the advert until `shutdown`, then marks it stopping: it still counts
    /// until it expires if no other worker is live, so that a restart does not turn
    /// submits away while no worker is up.
    pub async fn run(&self, shutdown: CancellationToken) {
        crate::runtime::each_tick(self.every, &shutdown, || async {
            if let Err(e) = self.advertise().await {
                tracing::warn!(error = %e, "advertising this worker's providers failed; trying again at the next beat");
            }
        })
        .await;
        let stopping = Advert {
            stopping: true,
            ..self.advert.clone()
        };
        if let Err(e) = self.say(&stopping).await {
            tracing::warn!(error = %e, "marking this worker's advert stopping failed; it expires");
        }
    }
}

/// What the live workers serve, as the api reads it: from the store at most once per
/// `max_age`, and again at once when a provider is asked for that the cached directory
/// lacks, so that a worker that has just started is served without a wait.
pub struct LiveDirectory {
    store: Arc<dyn Store>,
    max_age: Duration,
    /// The last read and when it was made: every submit looks here, so a plain lock held
    /// for a clone, never across a read.
    cached: std::sync::RwLock<Option<(Instant, Arc<Directory>)>>,
    /// Held by the one request reading the store, so that the others wait for its answer
    /// instead of each querying.
    reading: tokio::sync::Mutex<()>,
}

impl LiveDirectory {
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(1);
    const MIN_AGE: Duration = Duration::from_millis(100);

    pub fn new(store: Arc<dyn Store>, max_age: Duration) -> Self {
        LiveDirectory {
            store,
            max_age,
            cached: std::sync::RwLock::new(None),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    /// The directory, read again when the cached one is older than `max_age`.
    pub async fn current(&self) -> Result<Arc<Directory>> {
        self.read(self.max_age).await
    }

    /// A directory that serves `name` if any does now: a cached one lacking a known
    /// provider is read again, though not more than ten times a second, whatever clients
    /// ask for.
    pub async fn serving(&self, name: &str) -> Result<Arc<Directory>> {
        let directory = self.current().await?;
        if directory.serves(name) || !super::NAMES.contains(&name) {
            return Ok(directory);
        }
        self.read(Self::MIN_AGE.min(self.max_age)).await
    }

    /// The cached directory if younger than `max_age`, else a new read.
    async fn read(&self, max_age: Duration) -> Result<Arc<Directory>> {
        if let Some(directory) = self.cached_within(max_age) {
            return Ok(directory);
        }
        let _reading = self.reading.lock().await;
        // Another request may have read while this one waited.
        if let Some(directory) = self.cached_within(max_age) {
            return Ok(directory);
        }
        let read_at = Instant::now();
        let directory = Arc::new(Directory::of(&self.store.live_adverts().await?));
        *self.cached.write().unwrap_or_else(|e| e.into_inner()) =
            Some((read_at, directory.clone()));
        Ok(directory)
    }

    fn cached_within(&self, max_age: Duration) -> Option<Arc<Directory>> {
        let cached = self.cached.read().unwrap_or_else(|e| e.into_inner());
        cached
            .as_ref()
            .filter(|(read_at, _)| read_at.elapsed() < max_age)
            .map(|(_, directory)| directory.clone())
    }
}
