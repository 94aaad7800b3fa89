//! Deleting tasks, on both backends: an ended task goes at once with its log; a running
//! one is hidden at once, cancelled, and removed by the sweep once it has stopped; an
//! operator's retention period removes ended tasks and nothing else. A deleted task's
//! events also leave the event stream analytics consumers read.

use std::time::Duration;

use serde_json::{Value, json};
use troupe_events::bus::{MemoryBus, Subjects};
use troupe_events::sweep::{SweepConfig, Sweeper};
use uuid::Uuid;

use crate::helpers::{Backend, TestApp, Tweaks, both_backends, nats_url, wait_until};

both_backends!(
    an_ended_task_is_deleted_with_its_log_and_only_by_its_owner,
    a_running_task_is_hidden_at_once_and_deleted_once_stopped,
    retention_deletes_ended_tasks_and_keeps_running_ones,
);

fn task(latency_ms: u64, tokens: u64) -> Value {
    json!({
        "description": "Plan a launch",
        "selectedAgents": ["tech-lead", "qa"],
        "executionMode": "sequential",
        "provider": "simulated",
        "providerOptions": {"latencyMs": latency_ms, "tokens": tokens},
    })
}

async fn delete(app: &TestApp, instance: usize, token: &str, task_id: Uuid) -> (u16, Value) {
    let path = format!("/api/tasks/{task_id}");
    app.send(reqwest::Method::DELETE, instance, token, &path, None)
        .await
}

/// Whether the event stream still holds the task's first event (distributed only).
async fn in_event_stream(app: &TestApp, task_id: Uuid) -> Option<bool> {
    if app.backend == Backend::Embedded {
        return None;
    }
    let client = async_nats::connect(nats_url()).await.unwrap();
    let subjects = Subjects::new(app.nats_prefix());
    let stream = async_nats::jetstream::new(client)
        .get_stream(subjects.stream_name("EVENTS"))
        .await
        .unwrap();
    Some(
        stream
            .get_last_raw_message_by_subject(&subjects.event(task_id, "task_created"))
            .await
            .is_ok(),
    )
}

/// Whether the store still has any row of the task.
async fn stored(app: &TestApp, task_id: Uuid) -> bool {
    let store = app.store().await;
    store.task(task_id).await.unwrap().is_some()
        || !store.events_after(task_id, 0, 10).await.unwrap().is_empty()
}

async fn an_ended_task_is_deleted_with_its_log_and_only_by_its_owner(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let owner = app.user().await;
    let stranger = app.user().await;
    let kept = app.submit(&owner, &task(0, 2)).await;
    let deleted = app.submit(&owner, &task(0, 2)).await;
    app.wait_finished(&owner, kept).await;
    app.wait_finished(&owner, deleted).await;
    assert_ne!(in_event_stream(&app, deleted).await, Some(false));

    assert_eq!(delete(&app, 0, &stranger, deleted).await.0, 404);
    assert!(
        stored(&app, deleted).await,
        "a stranger's delete removed nothing"
    );
    let (status, body) = delete(&app, 0, &owner, deleted).await;
    assert_eq!(status, 204, "{body}");

    assert!(!stored(&app, deleted).await);
    assert_ne!(in_event_stream(&app, deleted).await, Some(true));
    let last = app.urls.len() - 1;
    for path in [
        format!("/api/tasks/{deleted}"),
        format!("/api/tasks/{deleted}/events"),
    ] {
        assert_eq!(app.get(&path, &owner).await.status(), 404, "{path}");
    }
    assert_eq!(
        delete(&app, last, &owner, deleted).await.0,
        404,
        "deleted twice"
    );
    let listed = app.get_json("/api/tasks", &owner).await;
    let ids: Vec<&str> = listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["taskId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [kept.to_string()], "the other task is untouched");
    assert_eq!(app.log(&owner, kept).await.len() as u64, {
        let view = app.get_json(&format!("/api/tasks/{kept}"), &owner).await;
        view["lastSeq"].as_u64().unwrap()
    });
    assert_eq!(delete(&app, 0, &owner, Uuid::now_v7()).await.0, 404);
}

async fn a_running_task_is_hidden_at_once_and_deleted_once_stopped(backend: Backend) {
    let mut tweaks = Tweaks::default();
    tweaks.worker.sweep = SweepConfig {
        every: Duration::from_millis(100),
        retain_ended: None,
    };
    let app = TestApp::spawn_with(backend, tweaks).await;
    let owner = app.user().await;
    let running = app.submit(&owner, &task(200, 300)).await;
    app.wait_view(&owner, running, "an agent running", |view| {
        view["status"] == "running"
    })
    .await;

    let (status, body) = delete(&app, 0, &owner, running).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["deleteRequested"], true);
    assert_eq!(
        app.get(&format!("/api/tasks/{running}"), &owner)
            .await
            .status(),
        404,
        "hidden at once"
    );
    let listed = app.get_json("/api/tasks", &owner).await;
    assert_eq!(listed["tasks"], json!([]));

    wait_until("the sweep of the cancelled task", || async {
        !stored(&app, running).await
    })
    .await;
    assert_ne!(in_event_stream(&app, running).await, Some(true));
}

async fn retention_deletes_ended_tasks_and_keeps_running_ones(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let owner = app.user().await;
    let ended = app.submit(&owner, &task(0, 2)).await;
    app.wait_finished(&owner, ended).await;
    let running = app.submit(&owner, &task(200, 300)).await;
    app.wait_view(&owner, running, "an agent running", |view| {
        view["status"] == "running"
    })
    .await;

    let backends = match backend {
        // The test's own handles on the embedded store; the in-process bus keeps nothing.
        Backend::Embedded => troupe_events::Backends {
            store: app.store().await,
            bus: std::sync::Arc::new(MemoryBus::new(16)),
            queue: std::sync::Arc::new(troupe_events::MemoryQueue::new(16)),
            volatile_queue: true,
            description: "the test's".into(),
            active_tasks_per_user: None,
        },
        Backend::Distributed => app.backends().await,
    };
    let sweep = |retain_ended| {
        Sweeper::new(
            &backends,
            SweepConfig {
                every: Duration::from_secs(3600),
                retain_ended,
            },
        )
    };
    let kept = sweep(Some(Duration::from_secs(3600)))
        .sweep_once()
        .await
        .unwrap();
    assert!(
        kept.tasks.is_empty(),
        "an hour's retention keeps a new task"
    );
    let swept = sweep(Some(Duration::ZERO)).sweep_once().await.unwrap();
    assert_eq!(swept.tasks, [ended]);
    assert!(!stored(&app, ended).await);
    assert_ne!(in_event_stream(&app, ended).await, Some(true));
    assert_eq!(
        app.get(&format!("/api/tasks/{running}"), &owner)
            .await
            .status(),
        200,
        "a running task outlives any retention"
    );
    let (status, _) = app
        .control(0, &owner, &format!("/api/tasks/{running}/cancel"))
        .await;
    assert_eq!(status, 202);
}
