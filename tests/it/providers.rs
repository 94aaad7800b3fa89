//! A real provider end to end: a local fake OpenAI-compatible server speaking the
//! streaming wire format, behind the whole api → queue → worker → log → SSE path.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use troupe_worker::WorkerConfig;
use troupe_worker::prices::Prices;
use troupe_worker::providers::ProviderSettings;

use crate::helpers::{Backend, SseEvent, TestApp, Tweaks, both_backends, worker_config};

both_backends!(an_openai_compatible_server_drives_the_agents);

const KEY: &str = "sk-test-key-that-must-never-leak";

/// A request the fake server received: its Authorization header and its JSON body.
type Request = (Option<String>, Value);

#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<Vec<Request>>>,
}

async fn completions(
    State(seen): State<Seen>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    let body: Value = serde_json::from_str(&body).unwrap();
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    seen.requests.lock().unwrap().push((auth, body));
    let mut stream = String::new();
    for piece in ["Hello", " from", " the", " fake", " model."] {
        let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "fake",
                           "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
        stream.push_str(&format!("data: {chunk}\n\n"));
    }
    let last = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "fake",
                      "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    // What a server sends for `stream_options.include_usage`: a last chunk without choices.
    let usage = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "fake",
                       "choices": [], "usage": {"prompt_tokens": 400, "completion_tokens": 25, "total_tokens": 425}});
    stream.push_str(&format!(
        "data: {last}\n\ndata: {usage}\n\ndata: [DONE]\n\n"
    ));
    ([("content-type", "text/event-stream")], stream)
}

async fn an_openai_compatible_server_drives_the_agents(backend: Backend) {
    let seen = Seen::default();
    let fake = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(completions))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, fake).await.unwrap() });
    let tweaks = Tweaks {
        providers: ProviderSettings {
            openai_api_key: Some(KEY.to_string().into()),
            openai_base_url: Some(base_url),
            openai_model: "fake-model".into(),
            ..ProviderSettings::default()
        },
        worker: WorkerConfig {
            prices: Arc::new(
                Prices::parse(
                    r#"{"fake-model": {"inputPerMillion": 2.5, "outputPerMillion": 10}}"#,
                )
                .unwrap(),
            ),
            ..worker_config()
        },
        ..Tweaks::default()
    };
    let app = TestApp::spawn_with(backend, tweaks).await;
    let token = app.user().await;
    let providers: Value = app
        .get("/api/providers", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(providers["default"], "openai");

    let task_id = app
        .submit(
            &token,
            &json!({"description": "Say hello", "selectedAgents": ["tech-lead", "qa"],
                    "executionMode": "sequential", "provider": "openai"}),
        )
        .await;
    let events = app.read_events(0, &token, task_id, None, None).await;

    assert_eq!(events.last().unwrap().event, "task_complete");
    assert_usage_reported_and_priced(&events);
    let view = app.wait_finished(&token, task_id).await;
    assert_eq!(view["usage"]["inputTokens"], 800);
    assert_eq!(view["agents"][1]["usage"]["outputTokens"], 25);
    for agent in view["agents"].as_array().unwrap() {
        assert_eq!(agent["output"], "Hello from the fake model.");
    }
    let requests = seen.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    for (auth, body) in &requests {
        assert_eq!(auth.as_deref(), Some(format!("Bearer {KEY}").as_str()));
        assert_eq!(body["model"], "fake-model");
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
    }
    // Sequential: the second agent was shown the first one's work.
    let second_prompt = requests[1].1["messages"][1]["content"].as_str().unwrap();
    assert!(second_prompt.contains("Hello from the fake model."));
    assert!(second_prompt.contains("Say hello"));
    // The key went to the provider and nowhere else.
    let export = serde_json::to_string(&app.log(&token, task_id).await).unwrap();
    assert!(!export.contains(KEY) && !view.to_string().contains(KEY));
    assert!(!providers.to_string().contains(KEY));
}

/// One `agent_usage` per agent with the server's counts, the price table's cost and a
/// time to first token; the task's totals on `task_complete`.
fn assert_usage_reported_and_priced(events: &[SseEvent]) {
    let usages: Vec<Value> = events
        .iter()
        .filter(|e| e.event == "agent_usage")
        .map(|e| e.data.clone())
        .collect();
    assert_eq!(usages.len(), 2, "one agent_usage per agent");
    let cost = (400.0 * 2.5 + 25.0 * 10.0) / 1_000_000.0;
    for usage in &usages {
        assert_eq!(usage["provider"], "openai");
        assert_eq!(usage["model"], "fake-model");
        assert_eq!(usage["source"], "reported");
        assert_eq!(usage["inputTokens"], 400);
        assert_eq!(usage["outputTokens"], 25);
        assert!((usage["costUsd"].as_f64().unwrap() - cost).abs() < 1e-12);
        assert!(usage["timeToFirstToken"].is_u64(), "{usage}");
    }
    let done = &events.last().unwrap().data;
    assert_eq!(done["usage"]["inputTokens"], 800);
    assert_eq!(done["usage"]["outputTokens"], 50);
    assert!((done["usage"]["costUsd"].as_f64().unwrap() - 2.0 * cost).abs() < 1e-12);
    assert_eq!(done["usage"]["unreportedAttempts"], 0);
    assert_eq!(done["usage"]["unpricedAttempts"], 0);
}
