use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    #[error("the idempotency key was already used for a different request")]
    IdempotencyMismatch,
    /// Another writer appended to the task first: whoever gets this has lost the task.
    #[error("task {task_id} was appended to by another writer (expected last seq {expected})")]
    SeqConflict { task_id: Uuid, expected: u64 },
    #[error("{0} no longer exists")]
    NotFound(&'static str),
    #[error("task {0} not found")]
    TaskNotFound(Uuid),
    #[error("the task queue is full")]
    QueueFull,
    #[error("the live event feed closed")]
    FeedClosed,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("NATS error: {0}")]
    Nats(String),
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// The store or the bus could not be reached: nothing is wrong with the task itself,
    /// so trying again later is right however long it takes.
    pub fn is_outage(&self) -> bool {
        match self {
            Error::Database(e) => matches!(
                e,
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            ),
            Error::Nats(_) => true,
            _ => false,
        }
    }

    pub(crate) fn nats(e: impl std::fmt::Display) -> Self {
        Error::Nats(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
