//! Which providers this worker can use, built once from settings: a task names one
//! ("openai", "anthropic", "simulated") and the api shows the catalogue to users.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use troupe_events::ProviderRoute;

use super::SharedProvider;
use super::anthropic::AnthropicProvider;
use super::http::Endpoint;
use super::openai::OpenAiProvider;
use super::retry::{RetryPolicy, Retrying};
use super::simulated::SimulatedProvider;

/// Everything the providers need from configuration. `Debug` shows no key.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub openai_api_key: Option<SecretString>,
    /// `None` with a key: OpenAI itself. Set without a key for Ollama, vLLM or llama.cpp.
    pub openai_base_url: Option<String>,
    pub openai_model: String,
    pub anthropic_api_key: Option<SecretString>,
    pub anthropic_base_url: String,
    pub anthropic_model: String,
    /// Bounds connecting, and each silence while an answer streams.
    pub request_timeout: Duration,
    /// Calls per completion, the first included.
    pub max_attempts: u32,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// Where each provider's calls go when it keeps failing, by provider name.
    pub fallbacks: BTreeMap<String, ProviderRoute>,
    /// Whether tasks may run on the simulated provider (`TROUPE_SIMULATED=off` turns it
    /// off, for a server whose users must get real answers or none).
    pub simulated: bool,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        let retry = RetryPolicy::default();
        ProviderSettings {
            openai_api_key: None,
            openai_base_url: None,
            openai_model: "gpt-4o-mini".into(),
            anthropic_api_key: None,
            anthropic_base_url: AnthropicProvider::DEFAULT_BASE_URL.into(),
            anthropic_model: "claude-sonnet-4-5".into(),
            request_timeout: Endpoint::DEFAULT_TIMEOUT,
            max_attempts: retry.max_attempts,
            retry_base_delay: retry.base_delay,
            retry_max_delay: retry.max_delay,
            fallbacks: BTreeMap::new(),
            simulated: true,
        }
    }
}

/// One line of the provider catalogue, as the api serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderInfo {
    /// What a task's `provider` names: `openai`, `anthropic` or `simulated`.
    pub name: String,
    pub label: String,
    /// Calls no LLM: its answers are made up, and say so.
    pub simulated: bool,
    /// Can run tasks on this server (a key or base URL is set).
    pub configured: bool,
    /// The model a task that names none gets.
    pub default_model: Option<String>,
}

#[derive(Clone)]
pub struct Providers {
    openai: Option<SharedProvider>,
    anthropic: Option<SharedProvider>,
    simulated: Option<SharedProvider>,
    openai_model: String,
    anthropic_model: String,
    fallbacks: BTreeMap<String, ProviderRoute>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("openai", &self.openai.is_some())
            .field("anthropic", &self.anthropic.is_some())
            .field("openai_model", &self.openai_model)
            .field("anthropic_model", &self.anthropic_model)
            .field("fallbacks", &self.fallbacks)
            .finish_non_exhaustive()
    }
}

impl Providers {
    pub fn from_settings(settings: &ProviderSettings) -> Providers {
        let policy = RetryPolicy {
            max_attempts: settings.max_attempts.max(1),
            base_delay: settings.retry_base_delay,
            max_delay: settings.retry_max_delay,
        };
        let nonblank = |s: &Option<String>| {
            s.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let openai_key = settings.openai_api_key.clone();
        let openai_base_url = nonblank(&settings.openai_base_url);
        let openai = (openai_key.is_some() || openai_base_url.is_some()).then(|| {
            let mut endpoint = Endpoint::new(
                openai_base_url.unwrap_or_else(|| OpenAiProvider::DEFAULT_BASE_URL.into()),
                settings.openai_model.clone(),
            )
            .with_request_timeout(settings.request_timeout);
            endpoint.api_key = openai_key;
            Arc::new(Retrying::new(OpenAiProvider::new(endpoint), policy.clone())) as SharedProvider
        });
        let anthropic = settings.anthropic_api_key.clone().map(|key| {
            let endpoint = Endpoint::new(
                settings.anthropic_base_url.clone(),
                settings.anthropic_model.clone(),
            )
            .with_api_key(key)
            .with_request_timeout(settings.request_timeout);
            Arc::new(Retrying::new(
                AnthropicProvider::new(endpoint),
                policy.clone(),
            )) as SharedProvider
        });
        Providers {
            openai,
            anthropic,
            simulated: settings
                .simulated
                .then(|| Arc::new(SimulatedProvider) as SharedProvider),
            openai_model: settings.openai_model.clone(),
            anthropic_model: settings.anthropic_model.clone(),
            fallbacks: settings.fallbacks.clone(),
        }
    }

    /// The operator's fallback for `name`'s calls, if one is set.
    pub fn fallback(&self, name: &str) -> Option<&ProviderRoute> {
        self.fallbacks.get(name)
    }

    /// Provider names this build knows, for messages that list them.
    pub const NAMES: [&'static str; 3] = ["openai", "anthropic", "simulated"];

    /// These providers with `name` served by `provider` instead: for embedding Troupe with
    /// a provider of one's own, and for tests.
    pub fn replacing(mut self, name: &str, provider: SharedProvider) -> Self {
        match name {
            "openai" => self.openai = Some(provider),
            "anthropic" => self.anthropic = Some(provider),
            _ => self.simulated = Some(provider),
        }
        self
    }

    /// `None` for an unknown name and for a known provider that is not configured.
    pub fn get(&self, name: &str) -> Option<SharedProvider> {
        match name {
            "openai" => self.openai.clone(),
            "anthropic" => self.anthropic.clone(),
            "simulated" => self.simulated.clone(),
            _ => None,
        }
    }

    /// Every provider this build knows, configured or not, so a client can say why one is
    /// unavailable.
    pub fn catalogue(&self) -> Vec<ProviderInfo> {
        vec![
            ProviderInfo {
                name: "openai".into(),
                label: "OpenAI-compatible".into(),
                simulated: false,
                configured: self.openai.is_some(),
                default_model: Some(self.openai_model.clone()),
            },
            ProviderInfo {
                name: "anthropic".into(),
                label: "Anthropic".into(),
                simulated: false,
                configured: self.anthropic.is_some(),
                default_model: Some(self.anthropic_model.clone()),
            },
            ProviderInfo {
                name: "simulated".into(),
                label: "Simulated (offline)".into(),
                simulated: true,
                configured: self.simulated.is_some(),
                default_model: None,
            },
        ]
    }

    /// The provider a task gets when it names none: a real one when there is one (it may
    /// be the simulated one turned off: a submit then says so).
    pub fn default_name(&self) -> &'static str {
        if self.openai.is_some() {
            "openai"
        } else if self.anthropic.is_some() {
            "anthropic"
        } else {
            "simulated"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Option<SecretString> {
        Some(SecretString::from(s.to_string()))
    }

    #[test]
    fn the_simulated_provider_can_be_turned_off() {
        let providers = Providers::from_settings(&ProviderSettings {
            simulated: false,
            ..ProviderSettings::default()
        });
        assert!(providers.get("simulated").is_none());
        let simulated = providers
            .catalogue()
            .into_iter()
            .find(|p| p.simulated)
            .unwrap();
        assert!(!simulated.configured);
    }

    #[test]
    fn nothing_configured_means_simulated_only() {
        let providers = Providers::from_settings(&ProviderSettings::default());
        assert!(providers.get("openai").is_none());
        assert!(providers.get("anthropic").is_none());
        assert!(providers.get("simulated").is_some());
        assert!(providers.get("gpt").is_none());
        assert_eq!(providers.default_name(), "simulated");
        let configured: Vec<_> = providers
            .catalogue()
            .into_iter()
            .map(|p| (p.name, p.configured))
            .collect();
        assert_eq!(
            configured,
            vec![
                ("openai".to_string(), false),
                ("anthropic".to_string(), false),
                ("simulated".to_string(), true)
            ]
        );
    }

    #[test]
    fn a_base_url_alone_configures_openai_for_local_servers() {
        let providers = Providers::from_settings(&ProviderSettings {
            openai_base_url: Some("http://localhost:11434/v1".into()),
            openai_model: "llama3.2".into(),
            ..Default::default()
        });
        assert!(providers.get("openai").is_some());
        assert_eq!(providers.default_name(), "openai");
        assert_eq!(
            providers.catalogue()[0].default_model.as_deref(),
            Some("llama3.2")
        );
    }

    #[test]
    fn a_blank_base_url_does_not_count() {
        let providers = Providers::from_settings(&ProviderSettings {
            openai_base_url: Some("  ".into()),
            ..Default::default()
        });
        assert!(providers.get("openai").is_none());
    }

    #[test]
    fn anthropic_needs_a_key_and_openai_wins_the_default() {
        let only_anthropic = Providers::from_settings(&ProviderSettings {
            anthropic_api_key: key("sk-ant-1"),
            ..Default::default()
        });
        assert!(only_anthropic.get("anthropic").is_some());
        assert_eq!(only_anthropic.default_name(), "anthropic");
        let both = Providers::from_settings(&ProviderSettings {
            anthropic_api_key: key("sk-ant-1"),
            openai_api_key: key("sk-oai-1"),
            ..Default::default()
        });
        assert_eq!(both.default_name(), "openai");
    }

    #[test]
    fn keys_do_not_show_in_debug_output() {
        let settings = ProviderSettings {
            anthropic_api_key: key("sk-ant-topsecret"),
            openai_api_key: key("sk-oai-topsecret"),
            ..Default::default()
        };
        let shown = format!("{settings:?} {:?}", Providers::from_settings(&settings));
        assert!(!shown.contains("topsecret"), "{shown}");
    }

    #[test]
    fn catalogue_serializes_in_camel_case() {
        let providers = Providers::from_settings(&ProviderSettings::default());
        let json = serde_json::to_value(providers.catalogue()).unwrap();
        assert_eq!(
            json[1],
            serde_json::json!({
                "name": "anthropic",
                "label": "Anthropic",
                "simulated": false,
                "configured": false,
                "defaultModel": "claude-sonnet-4-5"
            })
        );
        assert_eq!(json[2]["simulated"], true);
    }
}
