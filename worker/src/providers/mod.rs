//! LLM providers: where an agent's words come from. Each streams text deltas for one
//! chat completion; the worker turns them into `agent_token` events.

pub mod anthropic;
mod http;
pub mod openai;
mod registry;
pub mod retry;
pub mod simulated;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
pub use troupe_events::TokenCounts;

pub use anthropic::AnthropicProvider;
pub use http::Endpoint;
pub use openai::OpenAiProvider;
pub use registry::{ProviderSettings, Providers};

pub use retry::{RetryPolicy, Retrying};
pub use simulated::SimulatedProvider;
/// How the providers read `providerOptions`, shared with the api's check at submit.
use troupe_events::providers::options::{self, InvalidOption};

/// One agent's call: its system prompt, the user message built from the task (and, when
/// sequential, the outputs before it), and the task's provider choices.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    pub agent_role: String,
    /// 1 for the agent's first attempt, n after a resume or a retry.
    pub attempt: u32,
    pub system: String,
    pub prompt: String,
    /// `None`: the provider's configured default model.
    pub model: Option<String>,
    /// The task's `providerOptions`, as the user sent them.
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// What a completion's stream carries: its text in order, and what the call used as
/// the provider reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    Text(String),
    Usage(TokenCounts),
}

/// Text deltas and usage reports in order; the stream ends when the completion is done.
pub type TextStream = BoxStream<'static, Result<Chunk, ProviderError>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    /// Worth another try after a pause: 429, 5xx, timeouts, refused connections.
    pub transient: bool,
    /// Said so that a person understands it; never contains a key.
    pub message: String,
    /// How long the server asked us to wait (`Retry-After`) before trying again.
    pub retry_after: Option<Duration>,
}

/// A provider's text as it can be stored: PostgreSQL keeps no NUL character in `text` or
/// `jsonb`, so one from a provider (its answer or an error body) would make every append
/// of the task fail. It becomes U+FFFD, the replacement character.
pub fn storable(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

impl ProviderError {
    pub fn transient(message: impl Into<String>) -> Self {
        ProviderError {
            transient: true,
            message: storable(message.into()),
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        ProviderError {
            transient: false,
            message: storable(message.into()),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }
}

/// An option the api let through (a task stored before a check existed, or a fallback's
/// options) that the provider cannot use: asking again will not help.
impl From<InvalidOption> for ProviderError {
    fn from(invalid: InvalidOption) -> Self {
        ProviderError::permanent(invalid.0)
    }
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Starts a completion. Errors before the first delta come from here; errors after it
    /// come through the stream.
    async fn stream(&self, request: &CompletionRequest) -> Result<TextStream, ProviderError>;

    /// The model that answers `requested` (`None`: the configured default).
    fn model(&self, requested: Option<&str>) -> String;
}

pub type SharedProvider = Arc<dyn Provider>;
