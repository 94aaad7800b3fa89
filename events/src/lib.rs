//! Troupe's event-sourced core: the event types, the store that keeps each task's log,
//! the bus that carries events live, the queue that hands tasks to workers, and the
//! catch-up subscription that joins store and bus for readers.

pub mod backend;
pub mod bus;
pub mod catalogue;
pub mod dispatch;
pub mod error;
pub mod event;
pub mod follow;
pub mod metrics;
pub mod providers;
pub mod queue;
pub mod relay;
pub mod runtime;
pub mod stats;
pub mod store;
pub mod sweep;
pub mod task;
pub mod trace;
pub mod usage;

pub use backend::{BackendConfig, Backends, Readiness};
pub use bus::{Bus, MemoryBus, NatsBus, Subjects};
pub use catalogue::Catalogue;
pub use error::{Error, Result};
pub use event::{Artifact, Event, EventBody, RawEvent, millis_since};
pub use follow::{Encode, FeedConfig, Feeds, Followed};
pub use queue::{Delivery, MemoryQueue, NatsQueue, TaskQueue};
pub use store::{
    Behind, Claim, Deletion, Dispatch, Lease, PgStore, Session, SqliteStore, Store, Submitted,
    Swept, Transition, Transitioned, User,
};
pub use task::{
    AgentDef, ControlRequest, Controls, ExecutionMode, NewTask, ProviderRoute, RunLedger, TaskJob,
    TaskRecord, TaskSpec, TaskStatus, TaskView,
};
pub use usage::{
    AttemptUsage, Budget, DailyUsage, Percentiles, Price, RoleStats, TokenCounts, UsageReport,
    UsageSource, UsageTotals,
};
