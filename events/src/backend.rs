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
    /// Tasks one user may have active (queued for a worker or running) at once; the rest
    /// wait in submit order, off the queue. `None`: no limit.
    pub active_tasks_per_user: Option<u32>,
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
            active_tasks_per_user: None,
        }
    }
}

/// Refuses half-distributed setups: a shared database with an in-process queue would let
/// each process re-queue and run the others' tasks, and a shared bus with a local
/// database would carry tasks no other process can read.
pub fn check_mode(config: &BackendConfig) -> Result<()> {
    match (&config.database_url, &config.nats_url) {
        (Some(_), None) => Err(Error::Config(
            "DATABASE_URL is set but NATS_URL is not: set both to share tasks between \
             processes, or neither to run embedded"
                .into(),
        )),
        (None, Some(_)) => Err(Error::Config(
            "NATS_URL is set but DATABASE_URL is not: set both to share tasks between \
             processes, or neither to run embedded"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Makes this process the only one on the embedded data directory: two processes on one
/// SQLite file would each re-queue and run the other's tasks. The lock lasts as long as
/// the returned file is open; the OS releases it if the process dies.
pub fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File> {
    let path = data_dir.join("troupe.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Config(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Config(format!(
            "another troupe is already running on the data directory {} (it holds {}); \
             stop it, or give this one its own --data-dir",
            data_dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::Config(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
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
            let lock = lock_data_dir(&config.data_dir)?;
            let path = config.data_dir.join("troupe.db");
            let description = format!("SQLite at {}", path.display());
            let store = SqliteStore::open(&path).await?.holding(lock);
            (Arc::new(store), description)
        }
    };
    store.migrate().await?;
    Ok((store, description))
}

/// A NATS connection named for Troupe, as every process opens it.
pub async fn connect_nats(url: &str) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name("troupe")
        .connect(url)
        .await
        .map_err(Error::nats)
}

#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub queue: Arc<dyn TaskQueue>,
    /// The in-process queue forgets its jobs at exit; see [`Backends::recover`].
    pub volatile_queue: bool,
    pub description: String,
    /// See [`BackendConfig::active_tasks_per_user`].
    pub active_tasks_per_user: Option<u32>,
}

impl Backends {
    /// Connects and migrates the store. With a volatile queue, call [`Backends::recover`]
    /// once the worker is ready.
    pub async fn connect(config: &BackendConfig) -> Result<Self> {
        check_mode(config)?;
        let (store, store_desc) = connect_store(config).await?;
        let (bus, queue, volatile_queue, bus_desc): (
            Arc<dyn Bus>,
            Arc<dyn TaskQueue>,
            bool,
            String,
        ) = match &config.nats_url {
            Some(url) => {
                let client = connect_nats(url).await?;
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
            active_tasks_per_user: config.active_tasks_per_user,
        })
    }

    pub fn is_distributed(&self) -> bool {
        !self.volatile_queue
    }

    /// Whether the store, bus and queue answer now: what `/readyz` reports, on the api's
    /// port and on the worker's.
    pub async fn readiness(&self) -> Readiness {
        let (store, bus, queue) =
            tokio::join!(self.store.ping(), self.bus.ping(), self.queue.ping());
        Readiness { store, bus, queue }
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

/// The answer of each backend to a ping.
pub struct Readiness {
    pub store: Result<()>,
    pub bus: Result<()>,
    pub queue: Result<()>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.store.is_ok() && self.bus.is_ok() && self.queue.is_ok()
    }

    /// What `/readyz` answers, on the api and the worker alike; what failed is logged,
    /// never answered.
    pub fn report(&self) -> Ready {
        let check = |r: &Result<()>| match r {
            Ok(()) => Check::Ok,
            Err(e) => {
                tracing::warn!(error = %e, "readiness check failed");
                Check::Unreachable
            }
        };
        Ready {
            status: if self.is_ready() {
                ReadyStatus::Ready
            } else {
                ReadyStatus::NotReady
            },
            store: check(&self.store),
            bus: check(&self.bus),
            queue: check(&self.queue),
        }
    }
}

#[derive(Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadyStatus {
    Ready,
    NotReady,
}

/// Whether one backend answered.
#[derive(Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    Ok,
    Unreachable,
}

/// The body of `/readyz`.
#[derive(Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Ready {
    pub status: ReadyStatus,
    /// The event store (PostgreSQL or SQLite).
    pub store: Check,
    /// The live event bus (NATS or in-process).
    pub bus: Check,
    /// The work queue (JetStream or in-process).
    pub queue: Check,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_process_on_one_data_dir_is_refused_until_the_first_goes() {
        let dir = std::env::temp_dir().join(format!("troupe-lock-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = lock_data_dir(&dir).unwrap();
        let second = lock_data_dir(&dir).unwrap_err().to_string();
        assert!(
            second.contains("another troupe is already running"),
            "{second}"
        );
        drop(first);
        assert!(lock_data_dir(&dir).is_ok(), "the lock goes with its holder");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn half_distributed_settings_are_refused() {
        let only_db = BackendConfig {
            database_url: Some("postgres://x/y".into()),
            ..BackendConfig::default()
        };
        assert!(
            check_mode(&only_db)
                .unwrap_err()
                .to_string()
                .contains("NATS_URL is not")
        );
        let only_nats = BackendConfig {
            nats_url: Some("nats://x".into()),
            ..BackendConfig::default()
        };
        assert!(check_mode(&only_nats).is_err());
        assert!(check_mode(&BackendConfig::default()).is_ok());
    }
}
