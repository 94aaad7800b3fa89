//! Picks the store, bus and queue from configuration: PostgreSQL and NATS when their URLs
//! are given, SQLite and in-process channels otherwise. Nothing above this knows which.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::bus::{Bus, EventStreamLimits, MemoryBus, NatsBus, Subjects};
use crate::error::{Error, Result};
use crate::queue::{MemoryQueue, NatsQueue, NatsQueueConfig, TaskQueue};
use crate::store::{PgStore, SqliteStore, Store};

/// No `Debug`: the database URL may carry a password.
#[derive(Clone)]
pub struct BackendConfig {
    pub database_url: Option<String>,
    pub nats_url: Option<String>,
    /// Where the embedded SQLite file lives.
    pub data_dir: PathBuf,
    /// Embedded store in memory: nothing survives the process.
    pub ephemeral: bool,
    pub nats_prefix: String,
    pub db_max_connections: u32,
    pub queue: NatsQueueConfig,
    pub event_stream: EventStreamLimits,
    /// Jobs the in-process queue holds; past that, new tasks wait in the outbox.
    pub memory_queue_capacity: usize,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            database_url: None,
            nats_url: None,
            data_dir: PathBuf::from("./data"),
            ephemeral: false,
            nats_prefix: "troupe".into(),
            db_max_connections: 20,
            queue: NatsQueueConfig::default(),
            event_stream: EventStreamLimits::default(),
            memory_queue_capacity: 10_000,
        }
    }
}

/// Connects to the configured store and applies its migrations; what `migrate` runs.
pub async fn connect_store(config: &BackendConfig) -> Result<(Arc<dyn Store>, String)> {
    let (store, description): (Arc<dyn Store>, String) = match &config.database_url {
        Some(url) => {
            let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
            (
                Arc::new(PgStore::connect(options, config.db_max_connections).await?),
                "PostgreSQL".into(),
            )
        }
        None if config.ephemeral => (
            Arc::new(SqliteStore::in_memory().await?),
            "SQLite in memory".into(),
        ),
        None => {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                Error::Corrupt(format!(
                    "cannot create data dir {}: {e}",
                    config.data_dir.display()
                ))
            })?;
            let path = config.data_dir.join("troupe.db");
            let description = format!("SQLite at {}", path.display());
            (Arc::new(SqliteStore::open(&path).await?), description)
        }
    };
    store.migrate().await?;
    Ok((store, description))
}

#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub queue: Arc<dyn TaskQueue>,
    /// The in-process queue forgets its jobs at exit; see [`Backends::recover`].
    pub volatile_queue: bool,
    pub description: String,
}

impl Backends {
    /// Connects and migrates the store. With a volatile queue, call [`Backends::recover`]
    /// once the worker is ready.
    pub async fn connect(config: &BackendConfig) -> Result<Self> {
        let (store, store_desc) = connect_store(config).await?;
        let (bus, queue, volatile_queue, bus_desc): (
            Arc<dyn Bus>,
            Arc<dyn TaskQueue>,
            bool,
            String,
        ) = match &config.nats_url {
            Some(url) => {
                let client = async_nats::ConnectOptions::new()
                    .name("troupe")
                    .connect(url.as_str())
                    .await
                    .map_err(Error::nats)?;
                let subjects = Subjects::new(&config.nats_prefix);
                let bus = NatsBus::new(
                    client.clone(),
                    subjects.clone(),
                    config.event_stream.clone(),
                )
                .await?;
                let queue = NatsQueue::new(client, subjects, config.queue.clone()).await?;
                (
                    Arc::new(bus),
                    Arc::new(queue),
                    false,
                    "NATS JetStream".into(),
                )
            }
            None => (
                Arc::new(MemoryBus::default()),
                Arc::new(MemoryQueue::new(config.memory_queue_capacity)),
                true,
                "in-process bus and queue".into(),
            ),
        };
        Ok(Backends {
            store,
            bus,
            queue,
            volatile_queue,
            description: format!("{store_desc}, {bus_desc}"),
        })
    }

    pub fn is_distributed(&self) -> bool {
        !self.volatile_queue
    }

    /// After a restart with the in-process queue, every unfinished task goes back to the
    /// outbox so that the dispatcher queues it again and a worker resumes it.
    pub async fn recover(&self) -> Result<u64> {
        if self.volatile_queue {
            self.store.requeue_unfinished().await
        } else {
            Ok(0)
        }
    }
}
