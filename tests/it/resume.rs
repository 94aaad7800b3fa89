//! What survives a drop: a client reconnecting with Last-Event-ID (to another api
//! instance when distributed), a client that leaves, and a worker that stops mid-task.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Backend, SseEvent, TestApp, Tweaks, both_backends, collect_sse};

both_backends!(
    reconnect_with_last_event_id_gets_exactly_the_rest,
    task_finishes_after_its_client_leaves,
    stream_url_works_without_a_header_and_only_for_its_task,
    interrupted_task_resumes_and_keeps_completed_agents,
);

fn slow_task() -> Value {
    json!({
        "description": "Build a chat app",
        "selectedAgents": ["tech-lead", "frontend", "qa"],
        "executionMode": "sequential",
        "provider": "simulated",
        "providerOptions": {"latencyMs": 15, "tokens": 20},
    })
}

async fn reconnect_with_last_event_id_gets_exactly_the_rest(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let task_id = app.submit(&token, &slow_task()).await;

    let first = app.read_events(0, &token, task_id, None, Some(6)).await;
    let last_id: u64 = first.last().unwrap().id.parse().unwrap();
    // The connection is dropped here; the next one goes to the other api instance.
    let rest = app
        .read_events(1, &token, task_id, Some(last_id), None)
        .await;

    let union: Vec<u64> = first.iter().chain(&rest).map(SseEvent::seq).collect();
    let expected: Vec<u64> = (1..=union.len() as u64).collect();
    assert_eq!(union, expected, "exactly 1..N, in order, nothing twice");
    assert_eq!(rest.last().unwrap().event, "task_complete");
    assert!(rest.len() > 6, "the reconnect happened mid-task");

    // `?after=` is the same cursor for clients that cannot set headers.
    let r = app
        .client
        .get(format!(
            "{}/api/tasks/{task_id}/events?after={last_id}",
            app.url(0)
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let after: Vec<u64> = collect_sse(r, None)
        .await
        .iter()
        .map(SseEvent::seq)
        .collect();
    assert_eq!(after, rest.iter().map(SseEvent::seq).collect::<Vec<_>>());
}

async fn task_finishes_after_its_client_leaves(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let task_id = app.submit(&token, &slow_task()).await;
    let seen = app.read_events(0, &token, task_id, None, Some(2)).await;
    assert_eq!(seen.len(), 2);
    // Nobody is listening any more; the task must still run to its end.
    let view = app.wait_finished(&token, task_id).await;
    assert_eq!(view["status"], "completed");
    assert!(
        view["agents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["status"] == "completed")
    );
}

async fn stream_url_works_without_a_header_and_only_for_its_task(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let body = json!({"description": "x", "selectedAgents": ["qa"], "provider": "simulated",
                      "providerOptions": {"latencyMs": 1, "tokens": 3}});
    let created: Value = app
        .post("/api/tasks", &token, &body)
        .await
        .json()
        .await
        .unwrap();
    let stream_url = created["streamUrl"].as_str().unwrap();
    let other: Value = app
        .post("/api/tasks", &token, &body)
        .await
        .json()
        .await
        .unwrap();

    // What a browser's `new EventSource(streamUrl)` does: no Authorization header.
    let r = app
        .client
        .get(format!("{}{stream_url}", app.url(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = collect_sse(r, None).await;
    assert_eq!(events.last().unwrap().event, "task_complete");

    // The token reads that one task only, and is no session.
    let token_param = stream_url.split("token=").nth(1).unwrap();
    let other_id = other["taskId"].as_str().unwrap();
    let r = app
        .client
        .get(format!(
            "{}/api/tasks/{other_id}/events?token={token_param}",
            app.url(0)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app.get("/api/tasks", token_param).await;
    assert_eq!(r.status(), 401);
}

async fn interrupted_task_resumes_and_keeps_completed_agents(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let task_id = app
        .submit(
            &token,
            &json!({
                "description": "Long job",
                "selectedAgents": ["tech-lead", "backend", "qa"],
                "executionMode": "sequential",
                "provider": "simulated",
                "providerOptions": {"latencyMs": 40, "tokens": 25},
            }),
        )
        .await;
    // A browser is watching when the interruption comes.
    let watching = app.events_request(0, &token, task_id).send().await.unwrap();
    let watcher = tokio::spawn(collect_sse(watching, None));
    second_agent_under_way(&app, &token, task_id).await;
    match backend {
        // The whole process restarts: its open streams must end, not hold up shutdown.
        Backend::Embedded => app.restart_embedded().await,
        Backend::Distributed => {
            app.start_worker().await;
            app.workers[0].cancel();
        }
    }
    let mut events = tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .expect("the open stream ends")
        .unwrap();
    if events.last().unwrap().event != "task_complete" {
        let last = events.last().unwrap().seq();
        events.extend(app.read_events(0, &token, task_id, Some(last), None).await);
    }

    let seqs: Vec<u64> = events.iter().map(SseEvent::seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    assert!(
        events.iter().any(|e| e.event == "task_resumed"),
        "the log says it resumed"
    );
    assert_eq!(events.last().unwrap().event, "task_complete");
    let mut starts: HashMap<String, Vec<u64>> = HashMap::new();
    for e in events.iter().filter(|e| e.event == "agent_start") {
        starts
            .entry(e.data["agentRole"].as_str().unwrap().to_string())
            .or_default()
            .push(e.data["attempt"].as_u64().unwrap());
    }
    assert_eq!(
        starts["tech-lead"],
        vec![1],
        "a completed agent is not run again"
    );
    assert_eq!(
        starts["backend"],
        vec![1, 2],
        "the interrupted agent runs again as attempt 2"
    );
    let view = app.wait_finished(&token, task_id).await;
    assert_eq!(view["agents"][1]["attempt"], 2);
    assert!(
        view["agents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["status"] == "completed")
    );
}

/// Waits until the first agent is done and the second has streamed some output.
async fn second_agent_under_way(app: &TestApp, token: &str, task_id: uuid::Uuid) {
    for _ in 0..200 {
        let view: Value = app
            .get(&format!("/api/tasks/{task_id}"), token)
            .await
            .json()
            .await
            .unwrap();
        if view["agents"][1]["status"] == "running"
            && !view["agents"][1]["output"].as_str().unwrap().is_empty()
        {
            return;
        }
        assert_ne!(
            view["status"], "completed",
            "the task ended before it could be interrupted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the second agent never started");
}

both_backends!(a_task_longer_than_the_ack_wait_is_not_redelivered);

async fn a_task_longer_than_the_ack_wait_is_not_redelivered(backend: Backend) {
    let mut tweaks = Tweaks {
        ack_wait: Duration::from_secs(1),
        ..Tweaks::default()
    };
    tweaks.worker.heartbeat = Duration::from_millis(250);
    let mut app = TestApp::spawn_with(backend, tweaks).await;
    if backend == Backend::Distributed {
        // A second worker that would take the task the moment the first one's hold lapsed.
        app.start_worker().await;
    }
    let token = app.user().await;
    let task_id = app
        .submit(
            &token,
            &json!({
                "description": "Slow but steady",
                "selectedAgents": ["tech-lead", "qa"],
                "executionMode": "sequential",
                "provider": "simulated",
                "providerOptions": {"latencyMs": 100, "tokens": 15},
            }),
        )
        .await;
    let started = std::time::Instant::now();
    let events = app.read_events(0, &token, task_id, None, None).await;
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the task outlasted the ack wait"
    );
    assert_eq!(events.last().unwrap().event, "task_complete");
    assert!(
        !events.iter().any(|e| e.event == "task_resumed"),
        "nobody else took the task"
    );
    let starts = events.iter().filter(|e| e.event == "agent_start").count();
    assert_eq!(starts, 2);
}
