//! The worker's flags and environment variables; the all-in-one binary uses them too.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

use crate::WorkerConfig;
use crate::prices::Prices;
use crate::providers::ProviderSettings;

/// LLM providers. With no key and no base URL set, only `simulated` is available.
#[derive(Clone, Args)]
pub struct ProviderArgs {
    /// Key for the OpenAI-compatible provider.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<String>,
    /// Base URL of an OpenAI-compatible server (Ollama: http://localhost:11434/v1).
    #[arg(long, env = "OPENAI_BASE_URL")]
    pub openai_base_url: Option<String>,
    /// Model used when a task names none.
    #[arg(long, env = "OPENAI_MODEL")]
    pub openai_model: Option<String>,
    /// Key for Anthropic's Messages API.
    #[arg(long, env = "ANTHROPIC_API_KEY", hide_env_values = true)]
    pub anthropic_api_key: Option<String>,
    #[arg(long, env = "ANTHROPIC_BASE_URL")]
    pub anthropic_base_url: Option<String>,
    #[arg(long, env = "ANTHROPIC_MODEL")]
    pub anthropic_model: Option<String>,
    /// Seconds to wait for a provider to connect or to send the next chunk.
    #[arg(long, env = "TROUPE_PROVIDER_TIMEOUT_SECS", default_value_t = 60)]
    pub provider_timeout_secs: u64,
    /// Attempts per agent call on rate limits, 5xx and timeouts.
    #[arg(long, env = "TROUPE_PROVIDER_MAX_ATTEMPTS", default_value_t = 4)]
    pub provider_max_attempts: u32,
}

impl ProviderArgs {
    pub fn settings(&self) -> ProviderSettings {
        let some = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
        let defaults = ProviderSettings::default();
        ProviderSettings {
            openai_api_key: some(&self.openai_api_key).map(SecretString::from),
            openai_base_url: some(&self.openai_base_url),
            openai_model: some(&self.openai_model).unwrap_or(defaults.openai_model.clone()),
            anthropic_api_key: some(&self.anthropic_api_key).map(SecretString::from),
            anthropic_base_url: some(&self.anthropic_base_url)
                .unwrap_or(defaults.anthropic_base_url.clone()),
            anthropic_model: some(&self.anthropic_model)
                .unwrap_or(defaults.anthropic_model.clone()),
            request_timeout: Duration::from_secs(self.provider_timeout_secs.max(1)),
            max_attempts: self.provider_max_attempts.max(1),
            ..defaults
        }
    }
}

#[derive(Clone, Args)]
pub struct WorkerArgs {
    /// Tasks this process runs at once.
    #[arg(long, env = "TROUPE_WORKER_TASKS", default_value_t = 8)]
    pub worker_tasks: usize,
    /// Agents of parallel tasks this process runs at once, across its tasks.
    #[arg(long, env = "TROUPE_WORKER_AGENTS", default_value_t = 16)]
    pub worker_agents: usize,
    /// Runs of one task that may end in a crash or failure (a hand-back at shutdown does
    /// not count) before it is given up with task_error.
    #[arg(long, env = "TROUPE_MAX_TASK_RUNS", default_value_t = 5)]
    pub max_task_runs: u64,
    /// Deliveries of a job that keeps failing (unreadable log, persistent store error)
    /// before its task is given up with task_error. Store outages do not count.
    #[arg(long, env = "TROUPE_MAX_DELIVERIES", default_value_t = 10)]
    pub max_deliveries: u64,
    /// Milliseconds between agent_token events while an agent streams.
    #[arg(long, env = "TROUPE_TOKEN_FLUSH_MS", default_value_t = 200)]
    pub token_flush_ms: u64,
    /// Prices per million tokens by model, as JSON:
    /// {"gpt-4o-mini": {"inputPerMillion": 0.15, "outputPerMillion": 0.6}}.
    #[arg(long, env = "TROUPE_PRICES", value_parser = Prices::parse)]
    pub prices: Option<Prices>,
}

impl WorkerArgs {
    pub fn config(&self) -> WorkerConfig {
        WorkerConfig {
            task_concurrency: self.worker_tasks.max(1),
            agent_concurrency: self.worker_agents.max(1),
            max_runs: self.max_task_runs.max(1),
            max_deliveries: self.max_deliveries.max(1),
            token_flush: Duration::from_millis(self.token_flush_ms.max(10)),
            prices: Arc::new(self.prices.clone().unwrap_or_default()),
            ..WorkerConfig::default()
        }
    }
}
