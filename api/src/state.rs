use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use troupe_events::dispatch::Outbox;
use troupe_events::providers::LiveDirectory;
use troupe_events::{Backends, Catalogue, Feeds};

use crate::auth::{SecureCookies, Tokens};
use crate::guard::{Guard, RequestLimits};

/// Limits and choices of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Event streams this process serves at once; past that, new ones get 503.
    pub max_streams: usize,
    /// The account and submit endpoints' limits.
    pub limits: RequestLimits,
    /// The longest a task may take from submit, in seconds: `timeoutSecs`' ceiling and
    /// default.
    pub max_task_secs: u64,
    /// Agents one task may have: at most the API's ceiling of 20.
    pub max_agents_per_task: usize,
    /// The longest a simulated answer may take (`latencyMs` × `tokens`), at most 5 minutes.
    pub simulated_max_answer_ms: i64,
    /// When the web UI's session cookies are marked `Secure`.
    pub secure_cookies: SecureCookies,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 64 * 1024,
            max_streams: 10_000,
            limits: RequestLimits::default(),
            max_task_secs: 3600,
            max_agents_per_task: crate::routes::tasks::MAX_AGENTS,
            simulated_max_answer_ms: troupe_events::providers::simulated::MAX_ANSWER_MS,
            secure_cookies: SecureCookies::Auto,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub backends: Backends,
    /// Queues what this process commits.
    pub outbox: Outbox,
    pub feeds: Feeds,
    pub catalogue: Arc<Catalogue>,
    /// What the live workers serve, from their adverts in the store.
    pub providers: Arc<LiveDirectory>,
    pub tokens: Tokens,
    pub http: HttpConfig,
    /// Cancelled when the server starts shutting down: open event streams end then, so
    /// that shutdown does not wait for tasks to finish and clients reconnect elsewhere.
    pub closing: CancellationToken,
    /// One permit per open event stream.
    pub streams: Arc<Semaphore>,
    /// Rate limits of the account and submit endpoints, and the password hashers.
    pub guard: Arc<Guard>,
}
