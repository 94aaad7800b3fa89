//! A real provider end to end: a local fake OpenAI-compatible server speaking the
//! streaming wire format, behind the whole api → queue → worker → log → SSE path.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use troupe_worker::providers::ProviderSettings;

use crate::helpers::{Backend, TestApp, Tweaks, both_backends};

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
    stream.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
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
    let view = app.wait_finished(&token, task_id).await;
    for agent in view["agents"].as_array().unwrap() {
        assert_eq!(agent["output"], "Hello from the fake model.");
    }
    let requests = seen.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    for (auth, body) in &requests {
        assert_eq!(auth.as_deref(), Some(format!("Bearer {KEY}").as_str()));
        assert_eq!(body["model"], "fake-model");
        assert_eq!(body["stream"], true);
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
