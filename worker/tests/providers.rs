//! The HTTP providers against a local fake LLM server that speaks the real wire formats
//! (OpenAI chat-completion chunks, Anthropic message events), including its failures.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use futures::StreamExt;
use secrecy::SecretString;
use serde_json::{Value, json};
use troupe_worker::providers::{
    Chunk, CompletionRequest, ProviderError, ProviderSettings, Providers, SharedProvider,
    TokenCounts,
};

const KEY: &str = "sk-test-KEY-0123456789";

// ---- the fake server -------------------------------------------------------------------

#[derive(Clone)]
enum Part {
    /// Raw bytes of the event stream, sent as one chunk.
    Raw(String),
    /// The server goes quiet, connection open.
    Stall(Duration),
    /// The connection is torn down mid-body.
    Cut,
}

#[derive(Clone)]
enum Reply {
    Status {
        code: u16,
        headers: Vec<(&'static str, &'static str)>,
        body: String,
    },
    Sse(Vec<Part>),
    /// Never sends the response headers.
    Hang,
}

struct Seen {
    path: String,
    headers: HeaderMap,
    body: Value,
}

/// Answers with the scripted replies in order, repeating the last one forever.
struct Fake {
    replies: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
}

impl Fake {
    fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn request(&self, i: usize) -> (String, HeaderMap, Value) {
        let seen = &self.seen.lock().unwrap()[i];
        (seen.path.clone(), seen.headers.clone(), seen.body.clone())
    }
}

async fn handle(
    State(fake): State<Arc<Fake>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fake.seen.lock().unwrap().push(Seen {
        path: uri.path().to_string(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let reply = {
        let mut replies = fake.replies.lock().unwrap();
        if replies.len() > 1 {
            replies.pop_front().unwrap()
        } else {
            replies.front().cloned().expect("a scripted reply")
        }
    };
    match reply {
        Reply::Status {
            code,
            headers,
            body,
        } => {
            let mut response = Response::builder().status(StatusCode::from_u16(code).unwrap());
            for (name, value) in headers {
                response = response.header(name, value);
            }
            response
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap()
        }
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            unreachable!("the test ends first")
        }
        Reply::Sse(parts) => {
            let chunks = futures::stream::iter(parts).then(|part| async move {
                match part {
                    Part::Raw(text) => Some(Ok(Bytes::from(text))),
                    Part::Stall(pause) => {
                        tokio::time::sleep(pause).await;
                        None
                    }
                    Part::Cut => Some(Err(std::io::Error::other("connection cut"))),
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(Body::from_stream(chunks.filter_map(futures::future::ready)))
                .unwrap()
        }
    }
}

/// A fake server on a free port; its URL has no path, like Anthropic's base URL.
async fn spawn_fake(replies: Vec<Reply>) -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake {
        replies: Mutex::new(replies.into()),
        seen: Mutex::new(Vec::new()),
    });
    let app = Router::new().fallback(handle).with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, fake)
}

// ---- wire formats ----------------------------------------------------------------------

fn openai_chunk(delta: Value) -> Part {
    let chunk = json!({
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-test",
        "choices": [{ "index": 0, "delta": delta, "finish_reason": null }]
    });
    Part::Raw(format!("data: {chunk}\n\n"))
}

fn openai_text(text: &str) -> Part {
    openai_chunk(json!({ "content": text }))
}

fn openai_done() -> Part {
    Part::Raw("data: [DONE]\n\n".into())
}

fn openai_answer(texts: &[&str]) -> Reply {
    let mut parts = vec![openai_chunk(json!({ "role": "assistant", "content": "" }))];
    parts.extend(texts.iter().map(|t| openai_text(t)));
    parts.push(openai_done());
    Reply::Sse(parts)
}

fn anthropic_event(data: Value) -> Part {
    let name = data["type"].as_str().unwrap().to_string();
    Part::Raw(format!("event: {name}\ndata: {data}\n\n"))
}

fn anthropic_start() -> Vec<Part> {
    vec![
        anthropic_event(json!({
            "type": "message_start",
            "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "content": [],
                "model": "claude-test", "stop_reason": null, "stop_sequence": null,
                "usage": { "input_tokens": 25, "output_tokens": 1 }
            }
        })),
        anthropic_event(json!({
            "type": "content_block_start", "index": 0,
            "content_block": { "type": "text", "text": "" }
        })),
        anthropic_event(json!({ "type": "ping" })),
    ]
}

fn anthropic_text(text: &str) -> Part {
    anthropic_event(json!({
        "type": "content_block_delta", "index": 0,
        "delta": { "type": "text_delta", "text": text }
    }))
}

fn anthropic_error(kind: &str, message: &str) -> Part {
    anthropic_event(json!({ "type": "error", "error": { "type": kind, "message": message } }))
}

fn anthropic_answer(texts: &[&str]) -> Reply {
    let mut parts = anthropic_start();
    parts.extend(texts.iter().map(|t| anthropic_text(t)));
    parts.extend([
        anthropic_event(json!({ "type": "content_block_stop", "index": 0 })),
        anthropic_event(json!({
            "type": "message_delta",
            "delta": { "stop_reason": "end_turn", "stop_sequence": null },
            "usage": { "output_tokens": 15 }
        })),
        anthropic_event(json!({ "type": "message_stop" })),
    ]);
    Reply::Sse(parts)
}

fn status(code: u16, body: &str) -> Reply {
    Reply::Status {
        code,
        headers: vec![],
        body: body.into(),
    }
}

// ---- the client side -------------------------------------------------------------------

fn settings(url: &str) -> ProviderSettings {
    ProviderSettings {
        openai_api_key: Some(SecretString::from(KEY.to_string())),
        openai_base_url: Some(format!("{url}/v1")),
        openai_model: "gpt-test".into(),
        anthropic_api_key: Some(SecretString::from(KEY.to_string())),
        anthropic_base_url: url.to_string(),
        anthropic_model: "claude-test".into(),
        request_timeout: Duration::from_secs(5),
        max_attempts: 3,
        retry_base_delay: Duration::from_millis(10),
        retry_max_delay: Duration::from_millis(40),
        fallbacks: Default::default(),
        simulated: true,
    }
}

fn provider(settings: &ProviderSettings, name: &str) -> SharedProvider {
    Providers::from_settings(settings)
        .get(name)
        .expect("configured")
}

fn request() -> CompletionRequest {
    CompletionRequest {
        agent_role: "backend".into(),
        attempt: 1,
        system: "You are a senior backend engineer.".into(),
        prompt: "Build a todo app".into(),
        model: None,
        options: Default::default(),
    }
}

/// The text streamed, and the error that ended it if one did.
async fn complete(provider: &SharedProvider) -> (String, Option<ProviderError>) {
    let (text, _, error) = complete_with_usage(provider).await;
    (text, error)
}

/// The text, the usage reported (merged as the worker merges it), and the error.
async fn complete_with_usage(
    provider: &SharedProvider,
) -> (String, TokenCounts, Option<ProviderError>) {
    let mut usage = TokenCounts::unknown();
    let mut stream = match provider.stream(&request()).await {
        Ok(stream) => stream,
        Err(error) => return (String::new(), usage, Some(error)),
    };
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(Chunk::Text(delta)) => text.push_str(&delta),
            Ok(Chunk::Usage(reported)) => usage.merge(reported),
            Err(error) => return (text, usage, Some(error)),
        }
    }
    (text, usage, None)
}

// ---- happy paths -----------------------------------------------------------------------

#[tokio::test]
async fn openai_streams_text_and_sends_a_proper_request() {
    // One event split across two network chunks, and chunks without text, as servers do.
    let split = r#"data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"lo, "},"finish_reason":null}]}"#;
    let (head, tail) = split.split_at(40);
    let (url, fake) = spawn_fake(vec![Reply::Sse(vec![
        openai_chunk(json!({ "role": "assistant", "content": "" })),
        openai_text("Hel"),
        Part::Raw(head.into()),
        Part::Raw(format!("{tail}\n\n")),
        openai_chunk(json!({ "content": null })),
        openai_text("world"),
        Part::Raw(r#"data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":21,"completion_tokens":3,"total_tokens":24}}"#.to_string() + "\n\n"),
        openai_done(),
    ])])
    .await;

    let (text, usage, error) = complete_with_usage(&provider(&settings(&url), "openai")).await;

    assert_eq!(error, None);
    assert_eq!(text, "Hello, world");
    assert_eq!(usage, TokenCounts::reported(Some(21), Some(3)));
    assert_eq!(fake.hits(), 1);
    let (path, headers, body) = fake.request(0);
    assert_eq!(path, "/v1/chat/completions");
    assert_eq!(headers["authorization"], format!("Bearer {KEY}").as_str());
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        body,
        json!({
            "model": "gpt-test",
            "messages": [
                { "role": "system", "content": "You are a senior backend engineer." },
                { "role": "user", "content": "Build a todo app" }
            ],
            "stream": true,
            "stream_options": { "include_usage": true }
        })
    );
}

#[tokio::test]
async fn a_server_that_ignores_include_usage_still_works_and_usage_is_unknown() {
    let (url, _fake) = spawn_fake(vec![openai_answer(&["no", " usage"])]).await;
    let (text, usage, error) = complete_with_usage(&provider(&settings(&url), "openai")).await;
    assert_eq!((text.as_str(), error), ("no usage", None));
    assert_eq!(usage, TokenCounts::unknown());
}

#[tokio::test]
async fn openai_compatible_servers_without_a_key_get_no_authorization_header() {
    let (url, fake) = spawn_fake(vec![openai_answer(&["ok"])]).await;
    let settings = ProviderSettings {
        openai_api_key: None,
        ..settings(&url)
    };
    let mut request = request();
    request.model = Some("llama3.2".into());
    request.options = json!({ "temperature": 0.3, "maxTokens": 64 })
        .as_object()
        .unwrap()
        .clone();

    let mut stream = provider(&settings, "openai")
        .stream(&request)
        .await
        .unwrap();
    assert_eq!(stream.next().await, Some(Ok(Chunk::Text("ok".to_string()))));
    assert_eq!(stream.next().await, None);

    let (_, headers, body) = fake.request(0);
    assert!(!headers.contains_key("authorization"));
    assert_eq!(body["model"], "llama3.2");
    assert_eq!(body["temperature"], 0.3);
    assert_eq!(body["max_tokens"], 64);
}

#[tokio::test]
async fn anthropic_streams_text_and_sends_a_proper_request() {
    let (url, fake) = spawn_fake(vec![anthropic_answer(&["Hi", " there", "!"])]).await;

    let (text, usage, error) = complete_with_usage(&provider(&settings(&url), "anthropic")).await;

    assert_eq!(error, None);
    assert_eq!(text, "Hi there!");
    assert_eq!(usage, TokenCounts::reported(Some(25), Some(15)));
    let (path, headers, body) = fake.request(0);
    assert_eq!(path, "/v1/messages");
    assert_eq!(headers["x-api-key"], KEY);
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert!(!headers.contains_key("authorization"));
    assert_eq!(
        body,
        json!({
            "model": "claude-test",
            "system": "You are a senior backend engineer.",
            "messages": [{ "role": "user", "content": "Build a todo app" }],
            "max_tokens": 4096,
            "stream": true
        })
    );
}

// ---- retries ---------------------------------------------------------------------------

#[tokio::test]
async fn a_rate_limited_request_is_retried_within_the_delay_cap() {
    let (url, fake) = spawn_fake(vec![
        Reply::Status {
            code: 429,
            // Far above the 40 ms cap: the retry must not wait this long.
            headers: vec![("retry-after", "30")],
            body: r#"{"error":{"message":"Rate limit reached","type":"requests"}}"#.into(),
        },
        openai_answer(&["after ", "waiting"]),
    ])
    .await;
    let started = Instant::now();

    let (text, error) = complete(&provider(&settings(&url), "openai")).await;

    assert_eq!(error, None);
    assert_eq!(text, "after waiting");
    assert_eq!(fake.hits(), 2);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn rate_limiting_forever_gives_up_and_says_so() {
    let (url, fake) = spawn_fake(vec![status(429, "")]).await;

    let (text, error) = complete(&provider(&settings(&url), "openai")).await;

    assert_eq!(text, "");
    let error = error.unwrap();
    assert_eq!(
        error.message,
        "the OpenAI-compatible provider is rate limiting requests (HTTP 429); gave up after 3 attempts"
    );
    assert_eq!(fake.hits(), 3);
}

#[tokio::test]
async fn server_errors_are_retried_up_to_the_attempt_limit() {
    let (url, fake) = spawn_fake(vec![status(
        500,
        r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#,
    )])
    .await;

    let (_, error) = complete(&provider(&settings(&url), "anthropic")).await;

    let error = error.unwrap();
    assert!(error.transient);
    assert_eq!(
        error.message,
        "the Anthropic API failed with HTTP 500: Internal server error; gave up after 3 attempts"
    );
    assert_eq!(fake.hits(), 3);
}

#[tokio::test]
async fn an_unreachable_server_is_reported_without_its_address() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);

    let (_, error) = complete(&provider(&settings(&url), "openai")).await;

    let error = error.unwrap();
    assert!(error.transient);
    assert!(
        error
            .message
            .starts_with("could not reach the OpenAI-compatible provider: "),
        "{}",
        error.message
    );
    let port = url.rsplit(':').next().unwrap();
    assert!(
        !error.message.contains("127.0.0.1") && !error.message.contains(port),
        "users are not shown the provider's address: {}",
        error.message
    );
    assert!(
        error.message.ends_with("; gave up after 3 attempts"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_and_is_retried() {
    let (url, fake) = spawn_fake(vec![Reply::Hang]).await;
    let settings = ProviderSettings {
        request_timeout: Duration::from_millis(150),
        max_attempts: 2,
        ..settings(&url)
    };

    let (_, error) = complete(&provider(&settings, "anthropic")).await;

    assert_eq!(
        error.unwrap().message,
        "the Anthropic API did not answer within 150ms; gave up after 2 attempts"
    );
    assert_eq!(fake.hits(), 2);
}

#[tokio::test]
async fn an_anthropic_overloaded_event_before_any_text_is_retried() {
    let mut overloaded = anthropic_start();
    overloaded.push(anthropic_error("overloaded_error", "Overloaded"));
    let (url, fake) = spawn_fake(vec![Reply::Sse(overloaded), anthropic_answer(&["fine"])]).await;

    let (text, error) = complete(&provider(&settings(&url), "anthropic")).await;

    assert_eq!(error, None);
    assert_eq!(text, "fine");
    assert_eq!(fake.hits(), 2);
}

#[tokio::test]
async fn a_connection_cut_before_any_text_is_retried() {
    let (url, fake) =
        spawn_fake(vec![Reply::Sse(vec![Part::Cut]), openai_answer(&["whole"])]).await;

    let (text, error) = complete(&provider(&settings(&url), "openai")).await;

    assert_eq!(error, None);
    assert_eq!(text, "whole");
    assert_eq!(fake.hits(), 2);
}

// ---- permanent failures ----------------------------------------------------------------

#[tokio::test]
async fn a_rejected_key_is_not_retried_and_never_echoed() {
    for name in ["openai", "anthropic"] {
        // OpenAI quotes the key it was given in its 401 body.
        let body = format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {KEY}.","type":"invalid_request_error","code":"invalid_api_key"}}}}"#
        );
        let (url, fake) = spawn_fake(vec![status(401, &body)]).await;

        let (_, error) = complete(&provider(&settings(&url), name)).await;

        let error = error.unwrap();
        assert!(!error.transient, "{name}");
        assert!(
            error.message.contains("rejected the API key (HTTP 401)"),
            "{}",
            error.message
        );
        assert!(!error.message.contains(KEY), "{}", error.message);
        assert!(!format!("{error:?}").contains(KEY));
        assert_eq!(fake.hits(), 1, "{name}");
    }
}

#[tokio::test]
async fn an_unknown_model_names_the_model_and_base_url() {
    let (url, fake) = spawn_fake(vec![status(
        404,
        r#"{"error":{"message":"The model `gpt-test` does not exist","type":"invalid_request_error","code":"model_not_found"}}"#,
    )])
    .await;

    let (_, error) = complete(&provider(&settings(&url), "openai")).await;

    let error = error.unwrap();
    assert!(!error.transient);
    assert_eq!(
        error.message,
        "the OpenAI-compatible provider answered HTTP 404: check the model name (gpt-test) and the provider's base URL: The model `gpt-test` does not exist"
    );
    assert_eq!(fake.hits(), 1);
}

#[tokio::test]
async fn a_bad_request_carries_the_providers_message_shortened() {
    let long = format!("max_tokens: {}", "too large ".repeat(100));
    let (url, fake) = spawn_fake(vec![status(
        400,
        &json!({ "type": "error", "error": { "type": "invalid_request_error", "message": long } })
            .to_string(),
    )])
    .await;

    let (_, error) = complete(&provider(&settings(&url), "anthropic")).await;

    let error = error.unwrap();
    assert!(!error.transient);
    assert!(
        error
            .message
            .starts_with("the Anthropic API refused the request (HTTP 400): max_tokens: too large"),
        "{}",
        error.message
    );
    assert!(error.message.ends_with('…'));
    assert!(error.message.chars().count() < 400);
    assert_eq!(fake.hits(), 1);
}

// ---- failures after text has been streamed ---------------------------------------------

#[tokio::test]
async fn a_connection_cut_after_some_text_is_an_error_and_not_retried() {
    let (url, fake) = spawn_fake(vec![
        // The pause lets the text reach the client before the cut drops unsent bytes.
        Reply::Sse(vec![
            openai_text("Hel"),
            openai_text("lo"),
            Part::Stall(Duration::from_millis(50)),
            Part::Cut,
        ]),
        openai_answer(&["never used"]),
    ])
    .await;

    let (text, error) = complete(&provider(&settings(&url), "openai")).await;

    assert_eq!(text, "Hello");
    let error = error.unwrap();
    assert!(
        error
            .message
            .starts_with("the connection to the OpenAI-compatible provider broke mid-answer"),
        "{}",
        error.message
    );
    assert_eq!(fake.hits(), 1);
}

#[tokio::test]
async fn a_stream_that_ends_without_done_is_an_error() {
    let (url, fake) = spawn_fake(vec![Reply::Sse(vec![openai_text("Half an ans")])]).await;

    let (text, error) = complete(&provider(&settings(&url), "openai")).await;

    assert_eq!(text, "Half an ans");
    assert_eq!(
        error.unwrap().message,
        "the OpenAI-compatible provider closed the connection before the answer was complete"
    );
    assert_eq!(fake.hits(), 1);
}

#[tokio::test]
async fn an_openai_error_chunk_mid_answer_is_passed_on() {
    let (url, fake) = spawn_fake(vec![Reply::Sse(vec![
        openai_text("Hi"),
        Part::Raw(
            "data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\"}}\n\n"
                .into(),
        ),
    ])])
    .await;

    let (text, error) = complete(&provider(&settings(&url), "openai")).await;

    assert_eq!(text, "Hi");
    assert_eq!(
        error.unwrap().message,
        "the OpenAI-compatible provider reported an error mid-answer (server_error): The server had an error"
    );
    assert_eq!(fake.hits(), 1);
}

#[tokio::test]
async fn an_anthropic_error_event_mid_answer_is_passed_on() {
    let mut parts = anthropic_start();
    parts.push(anthropic_text("Partial"));
    parts.push(anthropic_error("overloaded_error", "Overloaded"));
    let (url, fake) = spawn_fake(vec![Reply::Sse(parts), anthropic_answer(&["never used"])]).await;

    let (text, error) = complete(&provider(&settings(&url), "anthropic")).await;

    assert_eq!(text, "Partial");
    let error = error.unwrap();
    assert!(error.transient);
    assert_eq!(
        error.message,
        "the Anthropic API reported an error mid-answer (overloaded_error): Overloaded"
    );
    assert_eq!(fake.hits(), 1);
}

#[tokio::test]
async fn a_stalled_stream_hits_the_idle_timeout_without_retry() {
    let (url, fake) = spawn_fake(vec![Reply::Sse(vec![
        openai_text("Hi"),
        Part::Stall(Duration::from_secs(30)),
        openai_done(),
    ])])
    .await;
    let settings = ProviderSettings {
        request_timeout: Duration::from_millis(200),
        ..settings(&url)
    };
    let started = Instant::now();

    let (text, error) = complete(&provider(&settings, "openai")).await;

    assert_eq!(text, "Hi");
    assert_eq!(
        error.unwrap().message,
        "the OpenAI-compatible provider sent nothing for 200ms; gave up waiting"
    );
    assert_eq!(fake.hits(), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
}
