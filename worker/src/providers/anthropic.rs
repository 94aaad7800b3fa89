//! Anthropic's Messages API, streamed. Text arrives as `content_block_delta` events; an
//! `error` event can arrive instead of, or in the middle of, the answer.

use async_trait::async_trait;
use eventsource_stream::Event;
use reqwest::header::HeaderValue;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::http::{self, Endpoint, Step};
use super::{CompletionRequest, Provider, ProviderError, TextStream, TokenCounts, options};

const LABEL: &str = "the Anthropic API";
const API_VERSION: &str = "2023-06-01";
const DEFAULT_MAX_TOKENS: u64 = 4096;

#[derive(Debug, Clone)]
pub struct AnthropicProvider {
    endpoint: Endpoint,
    client: reqwest::Client,
}

impl AnthropicProvider {
    pub const DEFAULT_BASE_URL: &'static str = "https://api.anthropic.com";

    pub fn new(endpoint: Endpoint) -> Self {
        let client = http::client(endpoint.request_timeout);
        AnthropicProvider { endpoint, client }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// The request body; the API requires `max_tokens`, so `providerOptions.maxTokens` or 4096.
pub(crate) fn request_body(
    request: &CompletionRequest,
    model: &str,
) -> Result<Value, ProviderError> {
    let max_tokens =
        options::positive_integer(&request.options, "maxTokens")?.unwrap_or(DEFAULT_MAX_TOKENS);
    let mut body = json!({
        "model": model,
        "messages": [{ "role": "user", "content": request.prompt }],
        "max_tokens": max_tokens,
        "stream": true,
    });
    if !request.system.trim().is_empty() {
        body["system"] = json!(request.system);
    }
    if let Some(temperature) = options::number(&request.options, "temperature")? {
        body["temperature"] = json!(temperature);
    }
    Ok(body)
}

fn on_event(event: &Event) -> Step {
    let data: Value = match serde_json::from_str(&event.data) {
        Ok(data) => data,
        Err(_) => {
            return Step::Fail(ProviderError::permanent(format!(
                "{LABEL} sent an event that is not JSON: {}",
                http::truncate(&event.data, 120)
            )));
        }
    };
    // The data repeats the event name as `type`; the data is what the API documents.
    let kind = data
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or(event.event.as_str());
    match kind {
        "content_block_delta" => {
            match (
                data.pointer("/delta/type").and_then(Value::as_str),
                data.pointer("/delta/text").and_then(Value::as_str),
            ) {
                (Some("text_delta"), Some(text)) if !text.is_empty() => {
                    Step::Text(text.to_string())
                }
                // Tool input and thinking deltas are not part of the agent's text.
                _ => Step::Skip,
            }
        }
        // Input tokens come at the start; the output count there is a placeholder, the
        // real one comes with message_delta.
        "message_start" => match data.pointer("/message/usage/input_tokens") {
            Some(input) => Step::Usage(TokenCounts::reported(input.as_u64(), None)),
            None => Step::Skip,
        },
        "message_delta" => match data.pointer("/usage/output_tokens") {
            Some(output) => Step::Usage(TokenCounts::reported(None, output.as_u64())),
            None => Step::Skip,
        },
        "message_stop" => Step::Done,
        "error" => Step::Fail(http::stream_error(
            LABEL,
            data.get("error").unwrap_or(&Value::Null),
        )),
        // ping, content_block_start/stop, and event types
        // added after this was written: the API promises new ones may appear.
        _ => Step::Skip,
    }
}

#[async_trait]
impl Provider for AnthropicProvider {
    async fn stream(&self, request: &CompletionRequest) -> Result<TextStream, ProviderError> {
        let model = self.endpoint.model(request.model.as_deref());
        let body = request_body(request, model)?;
        let mut builder = self
            .client
            .post(self.endpoint.url("/v1/messages"))
            .header("anthropic-version", API_VERSION)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&body);
        if let Some(key) = &self.endpoint.api_key {
            let mut value = HeaderValue::from_str(key.expose_secret()).map_err(|_| {
                ProviderError::permanent(format!(
                    "the API key configured for {LABEL} contains characters a header cannot carry"
                ))
            })?;
            value.set_sensitive(true);
            builder = builder.header("x-api-key", value);
        }
        tracing::debug!(
            provider = "anthropic",
            model,
            base_url = %self.endpoint.base_url,
            agent_role = %request.agent_role,
            "starting completion"
        );
        let response = http::send(LABEL, &self.endpoint, model, builder).await?;
        Ok(http::sse_text_stream(
            LABEL,
            &self.endpoint,
            response,
            on_event,
        ))
    }

    fn model(&self, requested: Option<&str>) -> String {
        self.endpoint.model(requested).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(options: Value) -> CompletionRequest {
        CompletionRequest {
            agent_role: "qa".into(),
            attempt: 1,
            system: "You test.".into(),
            prompt: "Build a todo app".into(),
            model: None,
            options: options.as_object().unwrap().clone(),
        }
    }

    fn event(name: &str, data: &str) -> Event {
        Event {
            event: name.into(),
            data: data.into(),
            ..Default::default()
        }
    }

    #[test]
    fn body_has_system_messages_and_max_tokens() {
        let body = request_body(&request(json!({})), "claude").unwrap();
        assert_eq!(
            body,
            json!({
                "model": "claude",
                "system": "You test.",
                "messages": [{"role": "user", "content": "Build a todo app"}],
                "max_tokens": 4096,
                "stream": true
            })
        );
        let body = request_body(&request(json!({"maxTokens": 10, "temperature": 1})), "c").unwrap();
        assert_eq!(body["max_tokens"], 10);
        assert_eq!(body["temperature"], 1.0);
        assert!(request_body(&request(json!({"maxTokens": "ten"})), "c").is_err());
    }

    #[test]
    fn events_are_read() {
        let delta =
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#;
        assert!(
            matches!(on_event(&event("content_block_delta", delta)), Step::Text(t) if t == "Hi")
        );
        let json_delta = r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{"}}"#;
        assert!(matches!(
            on_event(&event("content_block_delta", json_delta)),
            Step::Skip
        ));
        assert!(matches!(
            on_event(&event("ping", r#"{"type":"ping"}"#)),
            Step::Skip
        ));
        let start = r#"{"type":"message_start","message":{"id":"m","content":[]}}"#;
        assert!(matches!(
            on_event(&event("message_start", start)),
            Step::Skip
        ));
        let stop = r#"{"type":"message_stop"}"#;
        assert!(matches!(on_event(&event("message_stop", stop)), Step::Done));
    }

    #[test]
    fn usage_comes_in_two_parts() {
        let start = r#"{"type":"message_start","message":{"id":"m","content":[],"usage":{"input_tokens":25,"output_tokens":1}}}"#;
        assert!(
            matches!(on_event(&event("message_start", start)), Step::Usage(u) if u == TokenCounts::reported(Some(25), None))
        );
        let delta = r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#;
        assert!(
            matches!(on_event(&event("message_delta", delta)), Step::Usage(u) if u == TokenCounts::reported(None, Some(15)))
        );
    }

    #[test]
    fn error_events_are_classified() {
        let overloaded =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert!(
            matches!(on_event(&event("error", overloaded)), Step::Fail(e) if e.transient && e.message.contains("Overloaded"))
        );
        let invalid =
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#;
        assert!(matches!(on_event(&event("error", invalid)), Step::Fail(e) if !e.transient));
    }
}
