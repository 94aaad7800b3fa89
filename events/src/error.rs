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
}

impl Error {
    pub(crate) fn nats(e: impl std::fmt::Display) -> Self {
        Error::Nats(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
