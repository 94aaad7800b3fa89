//! What the HTTP providers share: where requests go, how an SSE answer is read under an idle
//! timeout, and how HTTP failures become errors a person can act on (and retry on).

use std::time::Duration;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::StreamExt;
use reqwest::{RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};

use super::{Chunk, ProviderError, TextStream, TokenCounts};

/// Where an HTTP provider sends its requests. `Debug` never shows the key.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Without a trailing slash, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub api_key: Option<SecretString>,
    /// Used when a request names no model.
    pub default_model: String,
    /// Bounds connecting and waiting for the response headers, and then every gap between
    /// two chunks of the answer: a stalled server fails instead of hanging the agent.
    pub request_timeout: Duration,
}

impl Endpoint {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    pub fn new(base_url: impl Into<String>, default_model: impl Into<String>) -> Self {
        Endpoint {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            api_key: None,
            default_model: default_model.into(),
            request_timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    pub fn with_api_key(mut self, key: SecretString) -> Self {
        self.api_key = Some(key);
        self
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url.trim_end_matches('/'))
    }

    pub(crate) fn model<'a>(&'a self, requested: Option<&'a str>) -> &'a str {
        requested
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .unwrap_or(&self.default_model)
    }

    /// Providers echo parts of requests in their errors; the key must never reach a user.
    fn redact(&self, message: String) -> String {
        match &self.api_key {
            Some(key) if !key.expose_secret().is_empty() => {
                message.replace(key.expose_secret(), "[redacted]")
            }
            _ => message,
        }
    }
}

pub(crate) fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(timeout)
        .build()
        // Only fails when the TLS backend cannot start, which no request could survive either.
        .expect("the HTTP client (rustls) can be built")
}

/// Sends the request and returns the response once its status says an answer follows.
pub(crate) async fn send(
    label: &str,
    endpoint: &Endpoint,
    model: &str,
    request: RequestBuilder,
) -> Result<Response, ProviderError> {
    let timeout = endpoint.request_timeout;
    let response = match tokio::time::timeout(timeout, request.send()).await {
        Err(_) => {
            tracing::warn!(base_url = %endpoint.base_url, "{label} did not answer within {}", human(timeout));
            return Err(ProviderError::transient(format!(
                "{label} did not answer within {}",
                human(timeout)
            )));
        }
        Ok(Err(e)) => return Err(transport_error(label, endpoint, &e)),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = retry_after(&response);
    let body = match tokio::time::timeout(timeout, response.text()).await {
        Ok(Ok(body)) => body,
        _ => String::new(),
    };
    let error = status_error(label, endpoint, model, status, &body).with_retry_after(retry_after);
    Err(ProviderError {
        message: endpoint.redact(error.message),
        ..error
    })
}

/// What a provider makes of one SSE event.
pub(crate) enum Step {
    Text(String),
    Usage(TokenCounts),
    /// One event can carry the last text and the call's usage together.
    TextAndUsage(String, TokenCounts),
    Skip,
    Done,
    Fail(ProviderError),
}

/// Reads an SSE answer, handing each event to `on_event`. The stream fails when the server
/// stays silent longer than the endpoint's timeout, or closes before `on_event` said `Done`:
/// a half answer must not pass for a whole one.
pub(crate) fn sse_text_stream<F>(
    label: &'static str,
    endpoint: &Endpoint,
    response: Response,
    on_event: F,
) -> TextStream
where
    F: FnMut(&Event) -> Step + Send + 'static,
{
    struct State<F> {
        events:
            futures::stream::BoxStream<'static, Result<Event, EventStreamError<reqwest::Error>>>,
        on_event: F,
        endpoint: Endpoint,
        finished: bool,
        queued: Option<TokenCounts>,
    }
    let state = State {
        events: response.bytes_stream().eventsource().boxed(),
        on_event,
        endpoint: endpoint.clone(),
        finished: false,
        queued: None,
    };
    futures::stream::unfold(state, move |mut st| async move {
        if let Some(usage) = st.queued.take() {
            return Some((Ok(Chunk::Usage(usage)), st));
        }
        if st.finished {
            return None;
        }
        loop {
            let idle = st.endpoint.request_timeout;
            let error = match tokio::time::timeout(idle, st.events.next()).await {
                Err(_) => ProviderError::transient(format!(
                    "{label} sent nothing for {}; gave up waiting",
                    human(idle)
                )),
                Ok(None) => ProviderError::transient(format!(
                    "{label} closed the connection before the answer was complete"
                )),
                Ok(Some(Err(EventStreamError::Transport(e)))) => ProviderError::transient(format!(
                    "the connection to {label} broke mid-answer: {}",
                    root_cause(&e)
                )),
                Ok(Some(Err(e))) => {
                    ProviderError::permanent(format!("{label} sent a malformed event stream: {e}"))
                }
                Ok(Some(Ok(event))) => match (st.on_event)(&event) {
                    Step::Text(text) => return Some((Ok(Chunk::Text(text)), st)),
                    Step::Usage(usage) => return Some((Ok(Chunk::Usage(usage)), st)),
                    Step::TextAndUsage(text, usage) => {
                        st.queued = Some(usage);
                        return Some((Ok(Chunk::Text(text)), st));
                    }
                    Step::Skip => continue,
                    Step::Done => return None,
                    Step::Fail(error) => error,
                },
            };
            st.finished = true;
            let error = ProviderError {
                message: st.endpoint.redact(error.message.clone()),
                ..error
            };
            return Some((Err(error), st));
        }
    })
    .boxed()
}

/// Classifies a non-2xx answer. Transient: the same request may succeed later.
pub(crate) fn status_error(
    label: &str,
    endpoint: &Endpoint,
    model: &str,
    status: StatusCode,
    body: &str,
) -> ProviderError {
    let code = status.as_u16();
    let detail = provider_message(body)
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    match code {
        // The body of a 401 often quotes part of the key; it is not worth the risk.
        401 | 403 => ProviderError::permanent(format!(
            "{label} rejected the API key (HTTP {code}); check the key configured for it"
        )),
        404 => {
            tracing::warn!(base_url = %endpoint.base_url, model, "{label} answered HTTP 404");
            ProviderError::permanent(format!(
                "{label} answered HTTP 404: check the model name ({model}) and the provider's base URL{detail}"
            ))
        }
        400 | 422 => {
            ProviderError::permanent(format!("{label} refused the request (HTTP {code}){detail}"))
        }
        429 => ProviderError::transient(format!(
            "{label} is rate limiting requests (HTTP 429){detail}"
        )),
        408 | 409 | 500..=599 => {
            ProviderError::transient(format!("{label} failed with HTTP {code}{detail}"))
        }
        _ => ProviderError::permanent(format!("{label} answered HTTP {code}{detail}")),
    }
}

/// The provider's own words from an error body: OpenAI and Anthropic send
/// `{"error":{"message":…}}`, Ollama `{"error":"…"}`; anything else is shown as text.
pub(crate) fn provider_message(body: &str) -> Option<String> {
    let body = body.trim();
    if body.is_empty() {
        return None;
    }
    let message = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(value) => value
            .pointer("/error/message")
            .or_else(|| value.get("error"))
            .or_else(|| value.get("message"))
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string()),
        Err(_) => body.to_string(),
    };
    Some(truncate(&without_urls(message.trim()), 300))
}

/// `text` with every `http://` or `https://` URL in it replaced by `<url>`: what users
/// read of a provider's errors must not show the hosts and ports behind the workers
/// (a local model server, a proxy); the worker's log has them.
pub(crate) fn without_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = ["http://", "https://"]
        .iter()
        .filter_map(|scheme| rest.find(scheme))
        .min()
    {
        out.push_str(&rest[..at]);
        out.push_str("<url>");
        let url = &rest[at..];
        let end = url
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>' | ','))
            .unwrap_or(url.len());
        rest = &url[end..];
    }
    out.push_str(rest);
    out
}

/// The message of an in-stream `{"error": {...}}` object; overload and server errors are
/// worth retrying when nothing has been said yet.
pub(crate) fn stream_error(label: &str, error: &serde_json::Value) -> ProviderError {
    let kind = error
        .get("type")
        .or_else(|| error.get("code"))
        .and_then(|k| k.as_str())
        .unwrap_or("");
    let message = error
        .get("message")
        .and_then(|m| m.as_str())
        .map(|m| truncate(&without_urls(m), 300))
        .unwrap_or_else(|| truncate(&without_urls(&error.to_string()), 300));
    let text = if kind.is_empty() {
        format!("{label} reported an error mid-answer: {message}")
    } else {
        format!("{label} reported an error mid-answer ({kind}): {message}")
    };
    let transient = matches!(
        kind,
        "overloaded_error"
            | "api_error"
            | "rate_limit_error"
            | "server_error"
            | "rate_limit_exceeded"
    );
    if transient {
        ProviderError::transient(text)
    } else {
        ProviderError::permanent(text)
    }
}

/// What users read says what failed, not where: the address is in the worker's log.
fn transport_error(label: &str, endpoint: &Endpoint, error: &reqwest::Error) -> ProviderError {
    let cause = without_urls(&root_cause(error));
    tracing::warn!(base_url = %endpoint.base_url, %cause, "{label} could not be reached");
    if error.is_timeout() {
        ProviderError::transient(format!(
            "{label} did not answer within {}",
            human(endpoint.request_timeout)
        ))
    } else {
        ProviderError::transient(format!("could not reach {label}: {cause}"))
    }
}

/// reqwest's own message only says "error sending request"; the cause at the bottom of the
/// chain ("connection refused", "dns error") is what a person can act on.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// `Retry-After` in seconds (HTTP dates are rare from APIs and ignored), or OpenAI's
/// `retry-after-ms`.
fn retry_after(response: &Response) -> Option<Duration> {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    header("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| header("retry-after").map(Duration::from_secs_f64))
}

pub(crate) fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

pub(crate) fn human(duration: Duration) -> String {
    if duration.subsec_millis() == 0 && duration.as_secs() > 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint::new("http://llm.local/v1/", "m1")
            .with_api_key(SecretString::from("sk-secret-123".to_string()))
    }

    #[test]
    fn endpoint_trims_the_base_url_and_picks_the_model() {
        let e = endpoint();
        assert_eq!(
            e.url("/chat/completions"),
            "http://llm.local/v1/chat/completions"
        );
        assert_eq!(e.model(None), "m1");
        assert_eq!(e.model(Some("  ")), "m1");
        assert_eq!(e.model(Some("m2")), "m2");
        assert!(!format!("{e:?}").contains("sk-secret-123"));
    }

    #[test]
    fn statuses_are_classified() {
        let e = endpoint();
        let classify = |code: u16, body: &str| {
            status_error("P", &e, "m1", StatusCode::from_u16(code).unwrap(), body)
        };
        for code in [401, 403, 400, 404, 422, 418] {
            assert!(!classify(code, "").transient, "{code}");
        }
        for code in [408, 409, 429, 500, 502, 503, 529] {
            assert!(classify(code, "").transient, "{code}");
        }
        let rejected = classify(
            401,
            r#"{"error":{"message":"Incorrect API key sk-secret-123"}}"#,
        );
        assert_eq!(
            rejected.message,
            "P rejected the API key (HTTP 401); check the key configured for it"
        );
        let missing = classify(404, r#"{"error":"model 'm1' not found"}"#);
        assert!(
            missing.message.contains("model name (m1)"),
            "{}",
            missing.message
        );
        assert!(
            !missing.message.contains("llm.local"),
            "the base URL is for the log, not users: {}",
            missing.message
        );
        assert!(missing.message.ends_with("model 'm1' not found"));
        let bad = classify(
            400,
            &format!(r#"{{"error":{{"message":"{}"}}}}"#, "x".repeat(1000)),
        );
        assert!(
            bad.message
                .starts_with("P refused the request (HTTP 400): xxx")
        );
        assert!(bad.message.chars().count() < 350);
        assert_eq!(
            classify(429, "").message,
            "P is rate limiting requests (HTTP 429)"
        );
    }

    #[test]
    fn provider_messages_are_found_in_the_usual_shapes() {
        assert_eq!(provider_message("  "), None);
        assert_eq!(
            provider_message(r#"{"type":"error","error":{"type":"x","message":"bad max_tokens"}}"#)
                .as_deref(),
            Some("bad max_tokens")
        );
        assert_eq!(
            provider_message(r#"{"error":"nope"}"#).as_deref(),
            Some("nope")
        );
        assert_eq!(provider_message("<html>").as_deref(), Some("<html>"));
    }

    #[test]
    fn urls_in_a_providers_words_are_not_shown() {
        assert_eq!(
            provider_message(
                r#"{"error":{"message":"upstream http://10.0.4.7:11434/api/chat failed (see https://status.example/x)"}}"#
            )
            .as_deref(),
            Some("upstream <url> failed (see <url>)")
        );
        assert_eq!(without_urls("no address here"), "no address here");
        assert_eq!(without_urls("http://a:1"), "<url>");
        let mid_answer =
            serde_json::json!({"message": "proxy at https://gw.internal:8443 gave up"});
        assert_eq!(
            stream_error("P", &mid_answer).message,
            "P reported an error mid-answer: proxy at <url> gave up"
        );
    }

    #[test]
    fn stream_errors_are_transient_only_for_overload_and_server_faults() {
        let overloaded = serde_json::json!({"type":"overloaded_error","message":"Overloaded"});
        let e = stream_error("P", &overloaded);
        assert!(e.transient);
        assert_eq!(
            e.message,
            "P reported an error mid-answer (overloaded_error): Overloaded"
        );
        let invalid = serde_json::json!({"type":"invalid_request_error","message":"no"});
        assert!(!stream_error("P", &invalid).transient);
    }

    #[test]
    fn redaction_removes_the_key() {
        assert_eq!(
            endpoint().redact("key sk-secret-123 was bad".into()),
            "key [redacted] was bad"
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_secs(60)), "60s");
        assert_eq!(human(Duration::from_millis(150)), "150ms");
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hé", 2), "hé");
    }
}
