//! Any OpenAI-compatible chat-completions server: OpenAI itself, Ollama, vLLM, llama.cpp.
//! Local servers usually need no key, so the `Authorization` header is sent only with one.

use async_trait::async_trait;
use eventsource_stream::Event;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::http::{self, Endpoint, Step};
use super::{CompletionRequest, Provider, ProviderError, TextStream, TokenCounts, options};

const LABEL: &str = "the OpenAI-compatible provider";

#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    endpoint: Endpoint,
    client: reqwest::Client,
}

impl OpenAiProvider {
    pub const DEFAULT_BASE_URL: &'static str = "https://api.openai.com/v1";

    pub fn new(endpoint: Endpoint) -> Self {
        let client = http::client(endpoint.request_timeout);
        OpenAiProvider { endpoint, client }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// The request body; `providerOptions.temperature` and `.maxTokens` pass through.
pub(crate) fn request_body(
    request: &CompletionRequest,
    model: &str,
) -> Result<Value, ProviderError> {
    let mut messages = Vec::with_capacity(2);
    if !request.system.trim().is_empty() {
        messages.push(json!({ "role": "system", "content": request.system }));
    }
    messages.push(json!({ "role": "user", "content": request.prompt }));
    // Servers that do not know `stream_options` ignore it; then usage is reported unknown.
    let mut body = json!({
        "model": model,
        "messages": messages,
        "stream": true,
        "stream_options": { "include_usage": true },
    });
    if let Some(temperature) = options::number(&request.options, "temperature")? {
        body["temperature"] = json!(temperature);
    }
    if let Some(max_tokens) = options::positive_integer(&request.options, "maxTokens")? {
        body["max_tokens"] = json!(max_tokens);
    }
    Ok(body)
}

fn on_event(event: &Event) -> Step {
    let data = event.data.trim();
    if data == "[DONE]" {
        return Step::Done;
    }
    let chunk: Value = match serde_json::from_str(data) {
        Ok(chunk) => chunk,
        Err(_) => {
            return Step::Fail(ProviderError::permanent(format!(
                "{LABEL} sent a chunk that is not JSON: {}",
                http::truncate(data, 120)
            )));
        }
    };
    if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
        return Step::Fail(http::stream_error(LABEL, error));
    }
    // Role-only first chunks, usage chunks with no choices and empty deltas carry no text.
    let text = chunk
        .pointer("/choices/0/delta/content")
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
        .map(str::to_string);
    match (text, usage(&chunk)) {
        (Some(text), Some(usage)) => Step::TextAndUsage(text, usage),
        (Some(text), None) => Step::Text(text),
        (None, Some(usage)) => Step::Usage(usage),
        (None, None) => Step::Skip,
    }
}

/// `usage: {prompt_tokens, completion_tokens}`: on the last chunk when asked for with
/// `include_usage`, on every chunk from some servers (running totals).
fn usage(chunk: &Value) -> Option<TokenCounts> {
    let usage = chunk.get("usage").filter(|u| u.is_object())?;
    let count = |name: &str| usage.get(name).and_then(Value::as_u64);
    Some(TokenCounts::reported(
        count("prompt_tokens"),
        count("completion_tokens"),
    ))
}

#[async_trait]
impl Provider for OpenAiProvider {
    async fn stream(&self, request: &CompletionRequest) -> Result<TextStream, ProviderError> {
        let model = self.endpoint.model(request.model.as_deref());
        let body = request_body(request, model)?;
        let mut builder = self
            .client
            .post(self.endpoint.url("/chat/completions"))
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&body);
        if let Some(key) = &self.endpoint.api_key {
            builder = builder.bearer_auth(key.expose_secret());
        }
        tracing::debug!(
            provider = "openai",
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

    fn event(data: &str) -> Event {
        Event {
            data: data.into(),
            ..Default::default()
        }
    }

    #[test]
    fn body_has_model_messages_stream_and_options() {
        let body =
            request_body(&request(json!({"temperature": 0.2, "maxTokens": 100})), "m").unwrap();
        assert_eq!(
            body,
            json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": "You test."},
                    {"role": "user", "content": "Build a todo app"}
                ],
                "stream": true,
                "stream_options": {"include_usage": true},
                "temperature": 0.2,
                "max_tokens": 100
            })
        );
    }

    #[test]
    fn wrong_option_types_are_refused() {
        let e = request_body(&request(json!({"temperature": "warm"})), "m").unwrap_err();
        assert!(!e.transient);
        assert!(e.message.contains("providerOptions.temperature"));
        assert!(request_body(&request(json!({"maxTokens": -1})), "m").is_err());
    }

    #[test]
    fn chunks_are_read() {
        let text = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#;
        assert!(matches!(on_event(&event(text)), Step::Text(t) if t == "Hel"));
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}"#;
        assert!(matches!(on_event(&event(role)), Step::Skip));
        assert!(matches!(on_event(&event(r#"{"choices":[]}"#)), Step::Skip));
        assert!(matches!(on_event(&event("[DONE]")), Step::Done));
        let error = r#"{"error":{"message":"boom","type":"server_error"}}"#;
        assert!(
            matches!(on_event(&event(error)), Step::Fail(e) if e.transient && e.message.contains("boom"))
        );
        assert!(matches!(on_event(&event("not json")), Step::Fail(e) if !e.transient));
    }

    #[test]
    fn usage_is_read_alone_or_beside_text() {
        let last = r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
        assert!(
            matches!(on_event(&event(last)), Step::Usage(u) if u == TokenCounts::reported(Some(12), Some(30)))
        );
        let both = r#"{"choices":[{"index":0,"delta":{"content":"!"}}],"usage":{"prompt_tokens":12,"completion_tokens":31}}"#;
        assert!(
            matches!(on_event(&event(both)), Step::TextAndUsage(t, u) if t == "!" && u.output_tokens == Some(31))
        );
        let null = r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"usage":null}"#;
        assert!(matches!(on_event(&event(null)), Step::Text(_)));
    }
}
