//! Tasks from submit to terminal event: sequential, parallel, failing agents, artifacts,
//! the original endpoints, and the task views projected from the log.

use serde_json::{Value, json};

use crate::helpers::{Backend, SseEvent, TestApp, both_backends, collect_sse};

both_backends!(
    sequential_run_streams_every_step_in_order,
    parallel_run_completes_every_agent,
    failing_agent_ends_the_task_with_an_error,
    execute_stream_ends_with_the_original_complete_event,
    execute_waits_and_returns_the_result,
    ndjson_export_is_the_whole_log,
    tasks_are_listed_newest_first_in_pages,
    agents_catalogue_and_health,
);

fn assert_contiguous(events: &[SseEvent]) {
    let seqs: Vec<u64> = events.iter().map(SseEvent::seq).collect();
    let expected: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(seqs, expected, "seqs must be 1..N with no hole or repeat");
    for e in events {
        assert_eq!(e.id, e.seq().to_string(), "the SSE id is the seq");
        assert_eq!(e.event, e.data["type"].as_str().unwrap());
        assert!(e.data["at"].as_str().unwrap().contains('T'));
    }
}

async fn sequential_run_streams_every_step_in_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let task_id = app
        .submit(
            &token,
            &json!({
                "title": "Todo app",
                "description": "Build a todo app",
                "selectedAgents": ["tech-lead", "frontend", "qa"],
                "executionMode": "sequential",
                "provider": "simulated",
                "providerOptions": {"latencyMs": 5, "tokens": 12},
            }),
        )
        .await;

    let events = app.read_events(0, &token, task_id, None, None).await;

    assert_contiguous(&events);
    assert_eq!(events[0].event, "task_created");
    assert_eq!(
        events[0].data["selectedAgents"],
        json!(["tech-lead", "frontend", "qa"])
    );
    assert_eq!(events[0].data["executionMode"], "sequential");
    assert_eq!(events[0].data["provider"], "simulated");
    assert_eq!(events.last().unwrap().event, "task_complete");
    // Sequential: each agent starts only after the one before it completed.
    let lifecycle: Vec<(String, String)> = events
        .iter()
        .filter(|e| e.event == "agent_start" || e.event == "agent_complete")
        .map(|e| {
            (
                e.event.clone(),
                e.data["agentRole"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = ["tech-lead", "frontend", "qa"]
        .iter()
        .flat_map(|r| {
            [
                ("agent_start".to_string(), r.to_string()),
                ("agent_complete".to_string(), r.to_string()),
            ]
        })
        .collect();
    assert_eq!(lifecycle, expected);
    let complete = events.iter().find(|e| e.event == "agent_complete").unwrap();
    assert_eq!(complete.data["status"], "success");
    assert!(complete.data["executionTime"].is_u64());
    assert!(events.iter().any(|e| e.event == "agent_token"));
    // Each agent says what it waits for; the third one builds on the two before it.
    let progress: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "agent_progress")
        .map(|e| e.data["message"].as_str().unwrap())
        .collect();
    assert_eq!(progress.len(), 3);
    assert_eq!(progress[0], "Asking the simulated provider");
    assert_eq!(
        progress[2],
        "Asking the simulated provider, with the work of Tech Lead, Frontend Engineer"
    );
    let done = &events.last().unwrap().data;
    assert_eq!(done["outputs"].as_array().unwrap().len(), 3);
    assert!(done["totalExecutionTime"].is_u64());

    // The view is the log folded: every agent completed with the streamed text as output.
    let view: Value = app
        .get(&format!("/api/tasks/{task_id}"), &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "completed");
    assert_eq!(view["lastSeq"], events.len());
    for (agent, role) in
        view["agents"]
            .as_array()
            .unwrap()
            .iter()
            .zip(["tech-lead", "frontend", "qa"])
    {
        assert_eq!(agent["role"], role);
        assert_eq!(agent["status"], "completed");
        let streamed: String = events
            .iter()
            .filter(|e| e.event == "agent_token" && e.data["agentRole"] == role)
            .map(|e| e.data["delta"].as_str().unwrap())
            .collect();
        assert_eq!(agent["output"], streamed);
        assert!(
            agent["output"]
                .as_str()
                .unwrap()
                .contains("Simulated output")
        );
    }
    // The frontend agent writes a named code block: it becomes an artifact.
    let frontend = &view["agents"][1];
    assert_eq!(frontend["hasArtifacts"], true);
    assert!(
        !frontend["artifacts"][0]["filename"]
            .as_str()
            .unwrap()
            .is_empty()
    );

    // A reconnect after the terminal event gets 204: an EventSource stops there.
    let again = app
        .events_request(1, &token, task_id)
        .header("Last-Event-ID", events.len().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 204);
}

async fn parallel_run_completes_every_agent(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let roles = ["tech-lead", "frontend", "backend", "qa"];
    let task_id = app
        .submit(
            &token,
            &json!({
                "description": "Design a login page",
                "selectedAgents": roles,
                "executionMode": "parallel",
                "provider": "simulated",
                "providerOptions": {"latencyMs": 20, "tokens": 8},
            }),
        )
        .await;

    let events = app.read_events(0, &token, task_id, None, None).await;

    assert_contiguous(&events);
    assert_eq!(events.last().unwrap().event, "task_complete");
    // Parallel: every agent started before the first one completed.
    let first_complete = events
        .iter()
        .position(|e| e.event == "agent_complete")
        .unwrap();
    let starts_before = events[..first_complete]
        .iter()
        .filter(|e| e.event == "agent_start")
        .count();
    assert_eq!(starts_before, roles.len());
    let view = app.wait_finished(&token, task_id).await;
    assert!(
        view["agents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["status"] == "completed")
    );
}

async fn failing_agent_ends_the_task_with_an_error(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let task_id = app
        .submit(
            &token,
            &json!({
                "description": "Ship it",
                "selectedAgents": ["tech-lead", "qa", "devops"],
                "executionMode": "parallel",
                "provider": "simulated",
                "providerOptions": {"latencyMs": 5, "tokens": 6, "failAgents": ["qa"]},
            }),
        )
        .await;

    let events = app.read_events(0, &token, task_id, None, None).await;

    assert_contiguous(&events);
    let error = events
        .iter()
        .find(|e| e.event == "agent_error")
        .expect("an agent_error");
    assert_eq!(error.data["agentRole"], "qa");
    assert_eq!(error.data["status"], "error");
    assert!(error.data["error"].as_str().unwrap().contains("qa"));
    let last = events.last().unwrap();
    assert_eq!(last.event, "task_error");
    assert_eq!(last.data["failedAgents"], json!(["qa"]));
    let view = app.wait_finished(&token, task_id).await;
    assert_eq!(view["status"], "failed");
    assert_eq!(view["agents"][1]["status"], "error");
    assert_eq!(view["agents"][0]["status"], "completed");
    assert!(view["error"].as_str().unwrap().contains("qa"));
}

async fn execute_stream_ends_with_the_original_complete_event(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let body = json!({
        "description": "Write a haiku",
        "selectedAgents": ["technical-writer"],
        "executionMode": "sequential",
        "provider": "simulated",
        "providerOptions": {"latencyMs": 1, "tokens": 4},
    });
    let r = app.post("/api/agents/execute/stream", &token, &body).await;
    assert_eq!(r.status(), 200);
    let events = collect_sse(r, None).await;
    let closing = events.last().unwrap();
    assert_eq!(closing.event, "complete");
    let task_id = closing.data["taskId"].as_str().unwrap();
    assert_eq!(events[events.len() - 2].event, "task_complete");
    assert_eq!(events[0].data["taskId"], task_id);

    let failing = json!({
        "description": "Fail please",
        "selectedAgents": ["qa"],
        "provider": "simulated",
        "providerOptions": {"latencyMs": 1, "tokens": 4, "failAgents": ["qa"]},
    });
    let r = app
        .post("/api/agents/execute/stream", &token, &failing)
        .await;
    let events = collect_sse(r, None).await;
    let closing = events.last().unwrap();
    assert_eq!(closing.event, "error");
    assert!(closing.data["error"].as_str().unwrap().contains("qa"));
}

async fn execute_waits_and_returns_the_result(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let r = app
        .post(
            "/api/agents/execute",
            &token,
            &json!({
                "description": "Plan a launch",
                "selectedAgents": ["product-manager", "devops"],
                "provider": "simulated",
                "providerOptions": {"latencyMs": 1, "tokens": 4},
            }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let result: Value = r.json().await.unwrap();
    assert_eq!(result["status"], "completed");
    assert_eq!(result["agents"].as_array().unwrap().len(), 2);
    assert!(
        result["agents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| !a["output"].as_str().unwrap().is_empty())
    );
}

async fn ndjson_export_is_the_whole_log(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let task_id = app
        .submit(
            &token,
            &json!({"description": "x", "selectedAgents": ["qa"], "provider": "simulated",
                    "providerOptions": {"latencyMs": 1, "tokens": 5}}),
        )
        .await;
    let streamed = app.read_events(0, &token, task_id, None, None).await;

    let r = app
        .events_request(1, &token, task_id)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let exported: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let streamed: Vec<Value> = streamed.into_iter().map(|e| e.data).collect();
    assert_eq!(exported, streamed);
}

async fn tasks_are_listed_newest_first_in_pages(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let other = app.user().await;
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(
            app.submit(
                &token,
                &json!({"description": format!("task {i}"), "selectedAgents": ["qa"],
                        "provider": "simulated", "providerOptions": {"latencyMs": 0, "tokens": 1}}),
            )
            .await,
        );
    }
    app.submit(
        &other,
        &json!({"description": "not yours", "selectedAgents": ["qa"], "provider": "simulated"}),
    )
    .await;

    let page1: Value = app
        .get("/api/tasks?limit=3", &token)
        .await
        .json()
        .await
        .unwrap();
    let cursor = page1["nextCursor"].as_str().unwrap();
    let page2: Value = app
        .get(&format!("/api/tasks?limit=3&before={cursor}"), &token)
        .await
        .json()
        .await
        .unwrap();

    let listed: Vec<String> = page1["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["tasks"].as_array().unwrap())
        .map(|t| t["taskId"].as_str().unwrap().to_string())
        .collect();
    let newest_first: Vec<String> = ids.iter().rev().map(|id| id.to_string()).collect();
    assert_eq!(listed, newest_first);
    assert!(page2["nextCursor"].is_null());
    assert_eq!(page1["tasks"][0]["selectedAgents"], json!(["qa"]));
    assert_eq!(page1["tasks"][0]["title"], "task 4");
}

async fn agents_catalogue_and_health(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let agents: Vec<Value> = app.get("/api/agents", &token).await.json().await.unwrap();
    assert!(agents.len() >= 6);
    let roles: Vec<&str> = agents.iter().map(|a| a["role"].as_str().unwrap()).collect();
    assert!(roles.contains(&"tech-lead") && roles.contains(&"frontend"));
    assert!(
        agents
            .iter()
            .all(|a| a["name"].is_string() && a["description"].is_string())
    );
    let providers: Value = app
        .get("/api/providers", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(providers["default"], "simulated");
    let simulated = providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "simulated")
        .unwrap();
    assert_eq!(simulated["simulated"], true);

    for url in &app.urls {
        let health = app
            .client
            .get(format!("{url}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        let ready: Value = app
            .client
            .get(format!("{url}/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["status"], "ready", "{ready}");
    }
}

both_backends!(the_web_ui_is_served_by_the_api);

async fn the_web_ui_is_served_by_the_api(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for path in [
        "/",
        "/login",
        "/new",
        "/tasks",
        "/tasks/0190a1b2-0000-7000-8000-000000000000",
        "/usage",
    ] {
        let r = app
            .client
            .get(format!("{}{path}", app.url(0)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
        assert!(
            r.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'self'")
        );
        assert!(r.text().await.unwrap().contains("/ui/js/main.js"));
    }
    let script = app
        .client
        .get(format!("{}/ui/js/main.js", app.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    // An encoded "..": reaches the asset route as a path outside the UI folder.
    let missing = app
        .client
        .get(format!("{}/ui/%2e%2e/Cargo.toml", app.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}
