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

both_backends!(
    an_openai_compatible_server_drives_the_agents,
    a_failing_provider_hands_the_agent_to_the_operators_fallback,
    a_task_names_its_own_fallback_and_without_one_the_agent_fails,
    a_fallback_that_cannot_be_used_is_refused_and_nothing_is_stored,
);

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
    // The NUL: a provider's text may hold what PostgreSQL cannot store.
    for piece in ["Hello", " from", " the", " fake", " model.\u{0}"] {
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
    let providers: Value = app.get_json("/api/providers", &token).await;
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
        assert_eq!(
            agent["output"], "Hello from the fake model.\u{FFFD}",
            "a NUL is stored as U+FFFD"
        );
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

/// Answers every completion with 503, counting the calls: a provider in an outage.
async fn unavailable(State(calls): State<Arc<Mutex<u32>>>) -> impl IntoResponse {
    *calls.lock().unwrap() += 1;
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "upstream overloaded",
    )
}

/// Anthropic's Messages API streaming "Taking over." with its usage, noting each body.
async fn anthropic_messages(State(seen): State<Seen>, body: String) -> impl IntoResponse {
    let body: Value = serde_json::from_str(&body).unwrap();
    let model = body["model"].clone();
    seen.requests.lock().unwrap().push((None, body));
    let events = [
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
               "role": "assistant", "content": [], "model": model, "stop_reason": null,
               "stop_sequence": null, "usage": {"input_tokens": 300, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0,
               "delta": {"type": "text_delta", "text": "Taking over."}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn",
               "stop_sequence": null}, "usage": {"output_tokens": 12}}),
        json!({"type": "message_stop"}),
    ];
    let stream: String = events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect();
    ([("content-type", "text/event-stream")], stream)
}

/// Two fake providers: an OpenAI-compatible one that only ever answers 503, and an
/// Anthropic one that works.
struct TwoServers {
    failing_calls: Arc<Mutex<u32>>,
    anthropic: Seen,
    settings: ProviderSettings,
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

async fn two_servers() -> TwoServers {
    let failing_calls = Arc::new(Mutex::new(0));
    let failing = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(unavailable))
        .with_state(failing_calls.clone());
    let anthropic = Seen::default();
    let working = axum::Router::new()
        .route("/v1/messages", axum::routing::post(anthropic_messages))
        .with_state(anthropic.clone());
    let settings = ProviderSettings {
        openai_base_url: Some(format!("{}/v1", serve(failing).await)),
        openai_model: "fake-gpt".into(),
        anthropic_api_key: Some("sk-ant-test".to_string().into()),
        anthropic_base_url: serve(working).await,
        anthropic_model: "fake-claude".into(),
        max_attempts: 2,
        retry_base_delay: std::time::Duration::from_millis(5),
        retry_max_delay: std::time::Duration::from_millis(20),
        ..ProviderSettings::default()
    };
    TwoServers {
        failing_calls,
        anthropic,
        settings,
    }
}

fn on_openai(extra: Value) -> Value {
    let mut body = json!({"description": "Say hello", "selectedAgents": ["tech-lead", "qa"],
                          "executionMode": "parallel", "provider": "openai"});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

fn of_event<'a>(events: &'a [SseEvent], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e.event == kind)
        .map(|e| &e.data)
        .collect()
}

async fn a_failing_provider_hands_the_agent_to_the_operators_fallback(backend: Backend) {
    let mut servers = two_servers().await;
    servers
        .settings
        .fallbacks
        .insert("openai".into(), "anthropic:claude-standby".parse().unwrap());
    let tweaks = Tweaks {
        providers: servers.settings.clone(),
        ..Tweaks::default()
    };
    let app = TestApp::spawn_with(backend, tweaks).await;
    let token = app.user().await;
    let task_id = app.submit(&token, &on_openai(json!({}))).await;
    let events = app.read_events(0, &token, task_id, None, None).await;

    assert_eq!(events.last().unwrap().event, "task_complete");
    let failovers = of_event(&events, "agent_failover");
    assert_eq!(failovers.len(), 2, "one per agent");
    for failover in &failovers {
        assert_eq!(failover["fromProvider"], "openai");
        assert_eq!(failover["fromModel"], "fake-gpt");
        assert_eq!(failover["toProvider"], "anthropic");
        assert_eq!(failover["toModel"], "claude-standby");
        assert_eq!(failover["attempt"], 1);
        let reason = failover["reason"].as_str().unwrap();
        assert!(
            reason.contains("503") && reason.contains("2 attempts"),
            "{reason}"
        );
    }
    for usage in of_event(&events, "agent_usage") {
        assert_eq!(usage["provider"], "anthropic", "{usage}");
        assert_eq!(usage["model"], "claude-standby");
        assert_eq!(usage["inputTokens"], 300);
        assert_eq!(usage["outputTokens"], 12);
    }
    // Each agent spent its retries on the failing server, then one call on the fallback.
    assert_eq!(*servers.failing_calls.lock().unwrap(), 4);
    let requests = servers.anthropic.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    assert!(
        requests
            .iter()
            .all(|(_, body)| body["model"] == "claude-standby")
    );
    let view = app.wait_finished(&token, task_id).await;
    for agent in view["agents"].as_array().unwrap() {
        assert_eq!(agent["output"], "Taking over.");
        assert_eq!(agent["provider"], "anthropic");
        assert_eq!(agent["model"], "claude-standby");
    }
}

async fn a_task_names_its_own_fallback_and_without_one_the_agent_fails(backend: Backend) {
    let servers = two_servers().await;
    let tweaks = Tweaks {
        providers: servers.settings.clone(),
        ..Tweaks::default()
    };
    let app = TestApp::spawn_with(backend, tweaks).await;
    let token = app.user().await;

    let alone = app.submit(&token, &on_openai(json!({}))).await;
    let events = app.read_events(0, &token, alone, None, None).await;
    assert_eq!(events.last().unwrap().event, "task_error");
    assert!(of_event(&events, "agent_failover").is_empty());
    assert_eq!(of_event(&events, "agent_error").len(), 2);

    // The task's own fallback; no model: the fallback provider's default.
    let body = on_openai(json!({"fallback": {"provider": "anthropic"}}));
    let covered = app.submit(&token, &body).await;
    let events = app.read_events(0, &token, covered, None, None).await;
    assert_eq!(events.last().unwrap().event, "task_complete");
    let failovers = of_event(&events, "agent_failover");
    assert_eq!(failovers.len(), 2);
    assert!(failovers.iter().all(|f| f["toModel"] == "fake-claude"));
    let requests = servers.anthropic.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .all(|(_, body)| body["model"] == "fake-claude")
    );
    let view = app.wait_finished(&token, covered).await;
    assert_eq!(view["status"], "completed");

    // A fallback that fails too ends the agent after one hop, saying both failed.
    let body = on_openai(json!({"fallback": {"provider": "openai", "model": "fake-gpt-mini"}}));
    let both_down = app.submit(&token, &body).await;
    let events = app.read_events(0, &token, both_down, None, None).await;
    assert_eq!(events.last().unwrap().event, "task_error");
    assert_eq!(
        of_event(&events, "agent_failover").len(),
        2,
        "one hop per agent"
    );
    for error in of_event(&events, "agent_error") {
        let message = error["error"].as_str().unwrap();
        assert!(
            message.starts_with(
                "openai kept failing, and its fallback openai (fake-gpt-mini) failed too: "
            ) && message.contains("503"),
            "{message}"
        );
    }
}

async fn a_fallback_that_cannot_be_used_is_refused_and_nothing_is_stored(backend: Backend) {
    let servers = two_servers().await;
    let tweaks = Tweaks {
        providers: ProviderSettings {
            anthropic_api_key: None,
            ..servers.settings
        },
        ..Tweaks::default()
    };
    let app = TestApp::spawn_with(backend, tweaks).await;
    let token = app.user().await;
    for (fallback, code, says) in [
        (
            json!("anthropic"),
            "invalid_fallback",
            "must be a JSON object",
        ),
        (json!({"model": "x"}), "invalid_fallback", "provider"),
        (
            json!({"provider": "gpt"}),
            "unknown_provider",
            "unknown fallback provider",
        ),
        (
            json!({"provider": "anthropic"}),
            "provider_not_configured",
            "cannot run tasks now",
        ),
        (
            json!({"provider": "openai"}),
            "invalid_fallback",
            "the task's own provider",
        ),
        (
            json!({"provider": "simulated", "model": "m".repeat(201)}),
            "invalid_fallback",
            "200 characters",
        ),
    ] {
        let r = app
            .post(
                "/api/tasks",
                &token,
                &on_openai(json!({ "fallback": fallback })),
            )
            .await;
        assert_eq!(r.status(), 422, "{fallback}");
        let error: Value = r.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{fallback}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{error}");
    }
    let tasks: Value = app.get("/api/tasks", &token).await.json().await.unwrap();
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 0, "{tasks}");
}
