//! The worker's flags and environment variables; the all-in-one binary uses them too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

use crate::WorkerConfig;
use crate::prices::Prices;
use crate::providers::ProviderSettings;
use troupe_events::ProviderRoute;
use troupe_events::providers::NAMES;
use troupe_events::sweep::SweepConfig;

/// `TROUPE_FALLBACK_OPENAI=anthropic:claude-haiku-4-5` gives `openai` a fallback.
const FALLBACK_ENV_PREFIX: &str = "TROUPE_FALLBACK_";

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
    /// PROVIDER=FALLBACK[:MODEL], repeatable: where PROVIDER's calls go once its retries
    /// on rate limits, 5xx and timeouts are spent. Also TROUPE_FALLBACK_<PROVIDER>.
    #[arg(long = "fallback", value_name = "PROVIDER=FALLBACK[:MODEL]")]
    pub fallbacks: Vec<String>,
    /// `off`: no task runs on the simulated provider (a submit naming it is refused).
    #[arg(long, env = "TROUPE_SIMULATED", value_enum, default_value_t = Switch::On)]
    pub simulated: Switch,
}

/// A setting that is on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl ProviderArgs {
    /// The settings these flags and the environment give; an unusable fallback is an
    /// error at startup rather than a surprise during an outage.
    pub fn settings(&self) -> anyhow::Result<ProviderSettings> {
        Ok(ProviderSettings {
            fallbacks: fallbacks(&self.fallbacks, std::env::vars())?,
            ..self.connections()
        })
    }

    fn connections(&self) -> ProviderSettings {
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
            simulated: self.simulated == Switch::On,
            ..defaults
        }
    }
}

/// Fallbacks from `--fallback` flags, then `TROUPE_FALLBACK_<PROVIDER>` variables (a flag
/// wins over a variable for the same provider).
fn fallbacks(
    flags: &[String],
    env: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<BTreeMap<String, ProviderRoute>> {
    let from_env = env.filter_map(|(name, value)| {
        let provider = name.strip_prefix(FALLBACK_ENV_PREFIX)?.to_ascii_lowercase();
        Some((provider, value, name))
    });
    let from_flags = flags.iter().map(|flag| {
        let (provider, route) = flag.split_once('=').unwrap_or((flag, ""));
        (
            provider.trim().to_string(),
            route.to_string(),
            format!("--fallback {flag}"),
        )
    });
    let mut fallbacks = BTreeMap::new();
    for (provider, route, source) in from_env.chain(from_flags) {
        let route = fallback(&provider, &route).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
        fallbacks.insert(provider, route);
    }
    Ok(fallbacks)
}

fn fallback(provider: &str, route: &str) -> Result<ProviderRoute, String> {
    let known = |name: &str| NAMES.contains(&name);
    if !known(provider) {
        return Err(format!(
            "unknown provider {provider:?}; providers: {}",
            NAMES.join(", ")
        ));
    }
    let route: ProviderRoute = route.parse()?;
    if !known(&route.provider) {
        return Err(format!(
            "unknown fallback provider {:?}; providers: {}",
            route.provider,
            NAMES.join(", ")
        ));
    }
    if route.provider == provider && route.model.is_none() {
        return Err(format!("{provider} would fall back to itself"));
    }
    Ok(route)
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
    /// Days an ended task is kept, counted from its last event; then it and its log are
    /// deleted. 0 keeps every task.
    #[arg(long, env = "TROUPE_RETENTION_DAYS", default_value_t = 0)]
    pub retention_days: u32,
    /// Seconds between sweeps of deleted tasks, tasks past retention and expired sessions.
    #[arg(long, env = "TROUPE_SWEEP_SECS", default_value_t = 30)]
    pub sweep_secs: u64,
    /// Seconds between this worker's adverts of the providers it serves; the api counts
    /// a worker live for six of them after its last.
    #[arg(long, env = "TROUPE_ADVERT_SECS", default_value_t = 10)]
    pub advert_secs: u64,
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
            sweep: SweepConfig {
                every: Duration::from_secs(self.sweep_secs.max(1)),
                retain_ended: (self.retention_days > 0)
                    .then(|| Duration::from_secs(u64::from(self.retention_days) * 86_400)),
            },
            advert_every: Duration::from_secs(self.advert_secs.max(1)),
            ..WorkerConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn fallbacks_come_from_variables_and_flags_and_flags_win() {
        let env = vars(&[
            ("TROUPE_FALLBACK_OPENAI", "anthropic"),
            ("TROUPE_FALLBACK_ANTHROPIC", "openai:llama3.2:3b"),
            ("PATH", "/usr/bin"),
        ]);
        let flags = ["openai=anthropic:claude-haiku-4-5".to_string()];
        let fallbacks = fallbacks(&flags, env).unwrap();
        assert_eq!(fallbacks.len(), 2);
        assert_eq!(
            fallbacks["openai"],
            ProviderRoute {
                provider: "anthropic".into(),
                model: Some("claude-haiku-4-5".into())
            }
        );
        // The model keeps its own colon.
        assert_eq!(fallbacks["anthropic"].model.as_deref(), Some("llama3.2:3b"));
    }

    #[test]
    fn an_unusable_fallback_stops_startup_naming_its_source() {
        for (env, flag, expected) in [
            (
                ("TROUPE_FALLBACK_GPT", "anthropic"),
                None,
                "TROUPE_FALLBACK_GPT: unknown provider",
            ),
            (
                ("TROUPE_FALLBACK_OPENAI", "claude"),
                None,
                "unknown fallback provider \"claude\"",
            ),
            (
                ("TROUPE_FALLBACK_OPENAI", ""),
                None,
                "is not provider[:model]",
            ),
            (
                ("X", ""),
                Some("openai=openai"),
                "--fallback openai=openai: openai would fall back to itself",
            ),
            (("X", ""), Some("openai"), "--fallback openai: "),
        ] {
            let flags: Vec<String> = flag.into_iter().map(String::from).collect();
            let error = fallbacks(&flags, vars(&[env])).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn a_provider_may_fall_back_to_another_model_of_its_own() {
        let fallbacks = fallbacks(&["openai=openai:gpt-4o-mini".into()], vars(&[])).unwrap();
        assert_eq!(fallbacks["openai"].provider, "openai");
    }
}
