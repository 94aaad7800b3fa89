//! Fair use across users, on both backends: a user's tasks past their limit of active
//! ones wait off the work queue, in submit order and with their place shown, so that one
//! user's 500 queued tasks delay another user's first task by at most one task per
//! worker slot.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Backend, TestApp, Tweaks, both_backends, of_type};

both_backends!(
    one_users_backlog_does_not_hold_back_another_users_first_task,
    a_resumed_task_past_the_limit_waits_like_a_new_one,
);

/// Worker slots, and active tasks per user: equal, so that one user can fill the workers.
const SLOTS: usize = 2;
const BACKLOG: usize = 500;

fn task(latency_ms: u64, tokens: u64) -> Value {
    json!({
        "description": "Review the release notes",
        "selectedAgents": ["qa"],
        "executionMode": "sequential",
        "provider": "simulated",
        "providerOptions": {"latencyMs": latency_ms, "tokens": tokens},
    })
}

async fn submitted(app: &TestApp, token: &str, body: &Value) -> (Uuid, Value) {
    let response = app.post("/api/tasks", token, body).await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    (answer["taskId"].as_str().unwrap().parse().unwrap(), answer)
}

fn at(event: &Value) -> DateTime<Utc> {
    event["at"].as_str().unwrap().parse().unwrap()
}

/// When the task's first agent started, and when its log ended (if it has).
async fn run_of(
    app: &TestApp,
    token: &str,
    task_id: Uuid,
) -> Option<(DateTime<Utc>, Option<DateTime<Utc>>)> {
    let log = app.log(token, task_id).await;
    let started = of_type(&log, "agent_start").first().map(|e| at(e))?;
    let ended = log
        .iter()
        .find(|e| {
            ["task_complete", "task_error", "task_cancelled"].contains(&e["type"].as_str().unwrap())
        })
        .map(at);
    Some((started, ended))
}

async fn position(app: &TestApp, token: &str, task_id: Uuid) -> u64 {
    let view = app.get_json(&format!("/api/tasks/{task_id}"), token).await;
    assert_eq!(view["status"], "queued");
    view["queuePosition"]
        .as_u64()
        .expect("a waiting task shows its place")
}

async fn one_users_backlog_does_not_hold_back_another_users_first_task(backend: Backend) {
    let mut tweaks = Tweaks::default();
    tweaks.worker.task_concurrency = SLOTS;
    tweaks.active_tasks_per_user = Some(SLOTS as u32);
    let app = TestApp::spawn_with(backend, tweaks).await;
    let busy = app.user().await;
    let newcomer = app.user().await;

    // Each of these holds a slot for about half a second.
    let long = task(100, 5);
    let (first, answer) = submitted(&app, &busy, &long).await;
    assert!(
        answer.get("queuePosition").is_none(),
        "the first is active at once: {answer}"
    );
    let rest: Vec<(Uuid, Value)> = futures::stream::iter(1..BACKLOG)
        .map(|_| submitted(&app, &busy, &long))
        .buffered(16)
        .collect()
        .await;
    let mut backlog = vec![first];
    backlog.extend(rest.iter().map(|(id, _)| *id));
    // Submitted 16 at a time, so answered out of order: ids (UUIDv7) are submit order.
    backlog.sort();
    let waiting = rest
        .iter()
        .filter(|(_, a)| a["queuePosition"].is_u64())
        .count();
    // All but the few admitted as earlier ones ended while the rest were submitted.
    assert!(waiting >= BACKLOG - 50, "{waiting} of {BACKLOG} wait");

    let positions = [
        position(&app, &busy, backlog[100]).await,
        position(&app, &busy, backlog[300]).await,
        position(&app, &busy, backlog[BACKLOG - 1]).await,
    ];
    assert!(
        positions[0] < positions[1] && positions[1] < positions[2],
        "{positions:?}"
    );
    assert!(
        (195..=200).contains(&(positions[1] - positions[0])),
        "{positions:?}"
    );

    let (first_of_newcomer, answer) = submitted(&app, &newcomer, &task(0, 1)).await;
    assert!(answer.get("queuePosition").is_none(), "{answer}");
    app.wait_finished(&newcomer, first_of_newcomer).await;
    let (newcomer_started, _) = run_of(&app, &newcomer, first_of_newcomer).await.unwrap();
    let newcomer_submitted = at(&app.log(&newcomer, first_of_newcomer).await[0]);

    let mut runs = vec![];
    for task_id in &backlog {
        match run_of(&app, &busy, *task_id).await {
            Some(run) => runs.push((*task_id, run)),
            // Started in submit order: the first that has not started ends the list.
            None => break,
        }
    }
    let started: Vec<Uuid> = runs.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        started,
        backlog[..started.len()],
        "the backlog runs in submit order"
    );
    assert!(
        started.len() < BACKLOG / 10,
        "{} of the backlog ran",
        started.len()
    );
    let overtaking = runs
        .iter()
        .filter(|(_, (start, _))| *start > newcomer_submitted && *start < newcomer_started)
        .count();
    assert!(
        overtaking <= SLOTS,
        "{overtaking} of the backlog started between the newcomer's submit and its start"
    );
    for (task_id, (start, _)) in &runs {
        let active_then = runs
            .iter()
            .filter(|(_, (s, end))| s <= start && end.is_none_or(|end| end > *start))
            .count();
        assert!(
            active_then <= SLOTS,
            "{active_then} of the busy user's tasks ran at {start} ({task_id})"
        );
    }
}

/// Pausing a waiting task and resuming it is a submit again: it does not get round the
/// limit. It goes to a worker once a place is free.
async fn a_resumed_task_past_the_limit_waits_like_a_new_one(backend: Backend) {
    let mut tweaks = Tweaks::default();
    tweaks.worker.task_concurrency = SLOTS;
    tweaks.active_tasks_per_user = Some(1);
    let app = TestApp::spawn_with(backend, tweaks).await;
    let user = app.user().await;
    let (running, _) = submitted(&app, &user, &task(200, 300)).await;
    let (second, answer) = submitted(&app, &user, &task(0, 1)).await;
    assert_eq!(answer["queuePosition"], 1, "{answer}");

    let (status, _) = app
        .control(0, &user, &format!("/api/tasks/{second}/pause"))
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .control(0, &user, &format!("/api/tasks/{second}/resume"))
        .await;
    assert_eq!(status, 200);
    // A worker slot is free all along: only the limit holds it back.
    assert_eq!(position(&app, &user, second).await, 1, "it waits again");

    let (status, _) = app
        .control(0, &user, &format!("/api/tasks/{running}/cancel"))
        .await;
    assert_eq!(status, 202);
    let view = app.wait_finished(&user, second).await;
    assert_eq!(view["status"], "completed");
}
