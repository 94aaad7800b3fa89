//! Which providers this worker can use, built once from settings: a task names one
//! ("openai", "anthropic", "simulated") and the api shows the catalogue to users.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use troupe_events::ProviderRoute;
use troupe_events::providers::Offer;

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

    /// What this worker advertises: each provider it can call, with the model a task
    /// naming none gets. Names and models only: never a key or an address.
    pub fn offers(&self) -> Vec<Offer> {
        let offer = |name: &str, provider: &Option<SharedProvider>, model: Option<&String>| {
            provider.as_ref().map(|_| Offer {
                name: name.into(),
                default_model: model.cloned(),
            })
        };
        [
            offer("openai", &self.openai, Some(&self.openai_model)),
            offer("anthropic", &self.anthropic, Some(&self.anthropic_model)),
            offer("simulated", &self.simulated, None),
        ]
        .into_iter()
        .flatten()
        .collect()
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
        assert!(providers.offers().iter().all(|o| o.name != "simulated"));
    }

    #[test]
    fn nothing_configured_means_simulated_only() {
        let providers = Providers::from_settings(&ProviderSettings::default());
        assert!(providers.get("openai").is_none());
        assert!(providers.get("anthropic").is_none());
        assert!(providers.get("simulated").is_some());
        assert!(providers.get("gpt").is_none());
        assert_eq!(
            providers.offers(),
            vec![Offer {
                name: "simulated".into(),
                default_model: None
            }]
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
        assert_eq!(
            providers.offers()[0],
            Offer {
                name: "openai".into(),
                default_model: Some("llama3.2".into())
            }
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
    fn anthropic_needs_a_key() {
        let only_anthropic = Providers::from_settings(&ProviderSettings {
            anthropic_api_key: key("sk-ant-1"),
            ..Default::default()
        });
        assert!(only_anthropic.get("anthropic").is_some());
        assert!(only_anthropic.get("openai").is_none());
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
}
