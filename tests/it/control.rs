//! Users' control over a task, on both backends: cancel a task or one agent, pause and
//! resume, retry what failed; each through the api a user would call, across api
//! instances when distributed.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Backend, SseEvent, TestApp, Tweaks, both_backends, of_type};

both_backends!(
    cancelling_a_running_task_stops_it_and_keeps_partial_output,
    a_task_cancelled_before_pickup_never_starts,
    cancelling_one_agent_lets_the_others_finish,
    retrying_a_failed_agent_appends_a_new_attempt,
    retry_and_cancel_refuse_what_makes_no_sense,
    a_paused_task_starts_no_agent_until_resumed,
    a_paused_task_gives_its_worker_slot_back,
    one_idempotency_key_sent_to_two_apis_at_once_makes_one_task,
    a_task_past_its_deadline_is_cancelled_saying_why,
);

fn slow(agents: &[&str], mode: &str) -> Value {
    json!({
        "description": "Build a chat app",
        "selectedAgents": agents,
        "executionMode": mode,
        "provider": "simulated",
        "providerOptions": {"latencyMs": 40, "tokens": 60},
    })
}

/// A task whose agents each stream for a minute: a test cancels it long before.
fn endless(agents: &[&str], mode: &str) -> Value {
    let mut body = slow(agents, mode);
    body["providerOptions"] = json!({"latencyMs": 200, "tokens": 300});
    body
}

fn agent<'v>(view: &'v Value, role: &str) -> &'v Value {
    view["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["role"] == role)
        .unwrap()
}

fn running_with_output(role: &'static str) -> impl Fn(&Value) -> bool {
    move |view| {
        let a = agent(view, role);
        a["status"] == "running" && !a["output"].as_str().unwrap().is_empty()
    }
}

fn assert_dense(log: &[Value]) {
    let seqs: Vec<u64> = log.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=log.len() as u64).collect::<Vec<_>>());
}

async fn cancelling_a_running_task_stops_it_and_keeps_partial_output(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let task_id = app
        .submit(
            &token,
            &endless(&["tech-lead", "frontend", "qa"], "sequential"),
        )
        .await;
    let watching = app.events_request(0, &token, task_id).send().await.unwrap();
    let watcher = tokio::spawn(crate::helpers::collect_sse(watching, None));
    app.wait_view(
        &token,
        task_id,
        "tech-lead streams",
        running_with_output("tech-lead"),
    )
    .await;

    // The cancel goes to the other api instance when distributed.
    let (status, body) = app
        .control(1, &token, &format!("/api/tasks/{task_id}/cancel"))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["cancelRequested"], true);

    let events: Vec<SseEvent> = watcher.await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        last.event, "task_cancelled",
        "the stream ends with the terminal event"
    );
    let cancelled: Vec<&SseEvent> = events
        .iter()
        .filter(|e| e.event == "agent_cancelled")
        .collect();
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0].data["agentRole"], "tech-lead");
    assert_eq!(cancelled[0].data["attempt"], 1);
    let partial = cancelled[0].data["output"].as_str().unwrap();
    assert!(!partial.is_empty(), "the partial output is kept");
    let streamed: String = events
        .iter()
        .filter(|e| e.event == "agent_token")
        .map(|e| e.data["delta"].as_str().unwrap())
        .collect();
    assert!(
        partial.starts_with(&streamed),
        "the kept output is what was streamed"
    );
    assert!(
        !events
            .iter()
            .any(|e| e.event == "agent_start" && e.data["agentRole"] != "tech-lead"),
        "no later agent started"
    );

    let view = app.wait_finished(&token, task_id).await;
    assert_eq!(view["status"], "cancelled");
    assert_eq!(agent(&view, "tech-lead")["status"], "cancelled");
    assert_eq!(agent(&view, "tech-lead")["output"], partial);
    assert_eq!(agent(&view, "frontend")["status"], "pending");
    let (status, body) = app
        .control(0, &token, &format!("/api/tasks/{task_id}/cancel"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("task_finished"))
    );
}

async fn a_task_cancelled_before_pickup_never_starts(backend: Backend) {
    // One task slot: a long task holds it, so the next one stays queued.
    let mut tweaks = Tweaks::default();
    tweaks.worker.task_concurrency = 1;
    let app = TestApp::spawn_with(backend, tweaks).await;
    let token = app.user().await;
    let blocker = app
        .submit(&token, &endless(&["tech-lead"], "sequential"))
        .await;
    app.wait_view(
        &token,
        blocker,
        "the blocker runs",
        running_with_output("tech-lead"),
    )
    .await;
    let waiting = app.submit(&token, &slow(&["qa"], "sequential")).await;

    let (status, body) = app
        .control(1, &token, &format!("/api/tasks/{waiting}/cancel"))
        .await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("cancelled")),
        "{body}"
    );
    let (status, _) = app
        .control(0, &token, &format!("/api/tasks/{blocker}/cancel"))
        .await;
    assert_eq!(status, 202);
    app.wait_finished(&token, blocker).await;

    // The worker gets the cancelled task's job after the blocker and must drop it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = app.log(&token, waiting).await;
    let kinds: Vec<&str> = log.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["task_created", "task_cancelled"]);
}

async fn cancelling_one_agent_lets_the_others_finish(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let task_id = app
        .submit(&token, &{
            let mut body = slow(&["tech-lead", "frontend", "qa"], "parallel");
            body["providerOptions"]["tokens"] = json!(150);
            body
        })
        .await;
    app.wait_view(&token, task_id, "qa streams", running_with_output("qa"))
        .await;

    let (status, body) = app
        .control(1, &token, &format!("/api/tasks/{task_id}/agents/qa/cancel"))
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = app
        .control(
            0,
            &token,
            &format!("/api/tasks/{task_id}/agents/ceo/cancel"),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("agent_not_found"))
    );

    let view = app.wait_finished(&token, task_id).await;
    assert_eq!(view["status"], "cancelled");
    assert_eq!(agent(&view, "qa")["status"], "cancelled");
    assert_eq!(agent(&view, "tech-lead")["status"], "completed");
    assert_eq!(agent(&view, "frontend")["status"], "completed");
    let log = app.log(&token, task_id).await;
    assert_dense(&log);
    let cancel_at = of_type(&log, "agent_cancelled")[0]["seq"].as_u64().unwrap();
    assert!(
        !log.iter()
            .any(|e| e["agentRole"] == "qa" && e["seq"].as_u64().unwrap() > cancel_at),
        "qa wrote nothing after its agent_cancelled"
    );
    let (status, body) = app
        .control(0, &token, &format!("/api/tasks/{task_id}/agents/qa/cancel"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("task_finished"))
    );
}

async fn retrying_a_failed_agent_appends_a_new_attempt(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let task_id = app
        .submit(
            &token,
            &json!({
                "description": "Ship it",
                "selectedAgents": ["tech-lead", "qa", "frontend"],
                "provider": "simulated",
                "providerOptions": {"latencyMs": 5, "tokens": 6, "failAgents": ["qa"], "failAttempts": 1},
            }),
        )
        .await;
    let failed = app.wait_finished(&token, task_id).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(agent(&failed, "frontend")["status"], "pending");

    let r = app
        .client
        .post(format!("{}/api/tasks/{task_id}/retry", app.url(1)))
        .bearer_auth(&token)
        .json(&json!({"agents": ["qa"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["agents"], json!(["qa"]));

    let done = app
        .wait_view(&token, task_id, "the retry completes", |v| {
            v["status"] == "completed"
        })
        .await;
    assert_eq!(agent(&done, "qa")["attempt"], 2);
    assert_eq!(agent(&done, "frontend")["attempt"], 1);
    assert_eq!(
        agent(&done, "tech-lead")["attempt"],
        1,
        "a completed agent is kept"
    );

    let log = app.log(&token, task_id).await;
    assert_dense(&log);
    let mut starts: HashMap<&str, Vec<u64>> = HashMap::new();
    for e in of_type(&log, "agent_start") {
        starts
            .entry(e["agentRole"].as_str().unwrap())
            .or_default()
            .push(e["attempt"].as_u64().unwrap());
    }
    assert_eq!(starts["qa"], [1, 2]);
    assert_eq!(starts["tech-lead"], [1]);
    let retried = of_type(&log, "task_retried");
    assert_eq!(retried.len(), 1);
    let after_retry = retried[0]["seq"].as_u64().unwrap();
    let qa_progress = log
        .iter()
        .find(|e| {
            e["type"] == "agent_progress"
                && e["agentRole"] == "qa"
                && e["seq"].as_u64().unwrap() > after_retry
        })
        .unwrap();
    assert!(
        qa_progress["message"]
            .as_str()
            .unwrap()
            .contains("with the work of Tech Lead"),
        "the retried agent gets the outputs before it: {qa_progress}"
    );
    // Every token says which attempt wrote it: the failed one's before the retry, the
    // retry's after.
    for token_event in of_type(&log, "agent_token")
        .iter()
        .filter(|e| e["agentRole"] == "qa")
    {
        let expected = if token_event["seq"].as_u64().unwrap() > after_retry {
            2
        } else {
            1
        };
        assert_eq!(token_event["attempt"], expected, "{token_event}");
    }
    assert_eq!(of_type(&log, "task_error").len(), 1);
    assert_eq!(log.last().unwrap()["type"], "task_complete");

    // The finished log replays as SSE, from the store, to the first terminal event after
    // the cursor, as the live stream ended: the retry reopened the log after task_error.
    let error_at = of_type(&log, "task_error")[0]["seq"].as_u64().unwrap() as usize;
    let to_error = app.read_events(1, &token, task_id, None, None).await;
    assert_replayed(&to_error, &log[..error_at]);
    let after_error = app
        .read_events(0, &token, task_id, Some(error_at as u64), None)
        .await;
    assert_replayed(&after_error, &log[error_at..]);
}

/// The frames carry the events of `log` in order: each one's seq as the id, its type as
/// the event name, its stored JSON as the data.
fn assert_replayed(frames: &[SseEvent], log: &[Value]) {
    let framed: Vec<(String, String, Value)> = frames
        .iter()
        .map(|f| (f.id.clone(), f.event.clone(), f.data.clone()))
        .collect();
    let expected: Vec<(String, String, Value)> = log
        .iter()
        .map(|e| {
            (
                e["seq"].to_string(),
                e["type"].as_str().unwrap().into(),
                e.clone(),
            )
        })
        .collect();
    assert_eq!(framed, expected);
}

async fn retry_and_cancel_refuse_what_makes_no_sense(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let failing = app
        .submit(
            &token,
            &json!({"description": "x", "selectedAgents": ["tech-lead", "qa"], "executionMode": "parallel",
                    "provider": "simulated", "providerOptions": {"latencyMs": 1, "tokens": 4, "failAgents": ["qa"]}}),
        )
        .await;
    app.wait_finished(&token, failing).await;
    let retry = |body: Value| {
        let app = &app;
        let token = &token;
        async move {
            let r = app
                .client
                .post(format!("{}/api/tasks/{failing}/retry", app.url(0)))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (
                status,
                body["error"]["code"].as_str().unwrap_or("").to_string(),
            )
        }
    };
    assert_eq!(
        retry(json!({"agents": ["tech-lead"]})).await,
        (409, "agent_succeeded".into())
    );
    assert_eq!(
        retry(json!({"agents": ["ceo"]})).await,
        (422, "unknown_agent".into())
    );
    assert_eq!(
        retry(json!({"agents": "qa"})).await,
        (422, "invalid_body".into())
    );
    let log_before = app.log(&token, failing).await;
    assert_eq!(
        log_before.last().unwrap()["type"],
        "task_error",
        "refusals store nothing"
    );

    let done = app
        .submit(
            &token,
            &json!({"description": "y", "selectedAgents": ["qa"], "provider": "simulated",
                                "providerOptions": {"latencyMs": 1, "tokens": 2}}),
        )
        .await;
    app.wait_finished(&token, done).await;
    let (status, body) = app
        .control(0, &token, &format!("/api/tasks/{done}/retry"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("nothing_to_retry"))
    );
    let (status, body) = app
        .control(0, &token, &format!("/api/tasks/{done}/pause"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("task_finished"))
    );
    let (status, body) = app
        .control(0, &token, &format!("/api/tasks/{done}/resume"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("task_not_paused"))
    );

    let running = app.submit(&token, &endless(&["qa"], "sequential")).await;
    app.wait_view(&token, running, "qa streams", running_with_output("qa"))
        .await;
    let (status, body) = app
        .control(0, &token, &format!("/api/tasks/{running}/retry"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("task_not_finished"))
    );

    let other = app.user().await;
    let (status, _) = app
        .control(0, &other, &format!("/api/tasks/{running}/cancel"))
        .await;
    assert_eq!(status, 404, "another user's task is not found");
    app.control(0, &token, &format!("/api/tasks/{running}/cancel"))
        .await;
    app.wait_finished(&token, running).await;
}

async fn a_paused_task_starts_no_agent_until_resumed(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let task_id = app
        .submit(&token, &slow(&["tech-lead", "frontend"], "sequential"))
        .await;
    app.wait_view(
        &token,
        task_id,
        "tech-lead streams",
        running_with_output("tech-lead"),
    )
    .await;
    let (status, body) = app
        .control(1, &token, &format!("/api/tasks/{task_id}/pause"))
        .await;
    assert_eq!(status, 202, "{body}");

    // The running agent finishes; the next one does not start.
    let paused = app
        .wait_view(&token, task_id, "the pause takes effect", |v| {
            v["status"] == "paused"
        })
        .await;
    assert_eq!(agent(&paused, "tech-lead")["status"], "completed");
    assert_eq!(agent(&paused, "frontend")["status"], "pending");
    let seq_when_paused = paused["lastSeq"].as_u64().unwrap();
    let (status, _) = app
        .control(0, &token, &format!("/api/tasks/{task_id}/pause"))
        .await;
    assert_eq!(status, 200, "pausing a paused task changes nothing");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let still: Value = app
        .get(&format!("/api/tasks/{task_id}"), &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        still["lastSeq"].as_u64().unwrap(),
        seq_when_paused,
        "nothing ran while paused"
    );

    // A paused task survives restarts: the whole process (embedded) or the workers.
    match backend {
        Backend::Embedded => app.restart_embedded().await,
        Backend::Distributed => {
            let old = app.workers[0].clone();
            app.start_worker().await;
            old.cancel();
        }
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after_restart: Value = app
        .get(&format!("/api/tasks/{task_id}"), &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after_restart["status"], "paused");
    assert_eq!(after_restart["lastSeq"].as_u64().unwrap(), seq_when_paused);

    let (status, body) = app
        .control(0, &token, &format!("/api/tasks/{task_id}/resume"))
        .await;
    assert_eq!((status, &body["status"]), (200, &json!("queued")), "{body}");
    let done = app
        .wait_view(&token, task_id, "it completes", |v| {
            v["status"] == "completed"
        })
        .await;
    assert_eq!(agent(&done, "frontend")["attempt"], 1);
    assert_eq!(
        agent(&done, "tech-lead")["attempt"],
        1,
        "a pause re-runs nothing"
    );
    let log = app.log(&token, task_id).await;
    assert_dense(&log);
    assert_eq!(of_type(&log, "task_paused").len(), 1);
    assert_eq!(of_type(&log, "task_unpaused").len(), 1);
}

async fn one_idempotency_key_sent_to_two_apis_at_once_makes_one_task(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let body = json!({"description": "once", "selectedAgents": ["qa"], "provider": "simulated",
                      "providerOptions": {"latencyMs": 1, "tokens": 2}});
    let send = |instance: usize, body: Value| {
        app.client
            .post(format!("{}/api/tasks", app.url(instance)))
            .bearer_auth(&token)
            .header("idempotency-key", "same-click")
            .json(&body)
            .send()
    };
    let (a, b) = tokio::join!(send(0, body.clone()), send(1, body.clone()));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (202, 202));
    let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    assert_eq!(a["taskId"], b["taskId"], "one task");
    let listed: Value = app.get("/api/tasks", &token).await.json().await.unwrap();
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 1);

    let mut other = body.clone();
    other["description"] = json!("twice");
    let r = send(1, other).await.unwrap();
    assert_eq!(r.status(), 422);
}

async fn a_paused_task_gives_its_worker_slot_back(backend: Backend) {
    // One task slot in all: another task can only run if the paused one gave it back.
    let mut tweaks = Tweaks::default();
    tweaks.worker.task_concurrency = 1;
    let app = TestApp::spawn_with(backend, tweaks).await;
    let token = app.user().await;
    let paused = app
        .submit(&token, &slow(&["tech-lead", "frontend"], "sequential"))
        .await;
    app.wait_view(
        &token,
        paused,
        "tech-lead streams",
        running_with_output("tech-lead"),
    )
    .await;
    app.control(0, &token, &format!("/api/tasks/{paused}/pause"))
        .await;
    app.wait_view(&token, paused, "the pause takes effect", |v| {
        v["status"] == "paused"
    })
    .await;

    let other = app
        .submit(&token, &json!({"description": "meanwhile", "selectedAgents": ["qa"],
                                "provider": "simulated", "providerOptions": {"latencyMs": 1, "tokens": 2}}))
        .await;
    let view = app.wait_finished(&token, other).await;
    assert_eq!(
        view["status"], "completed",
        "the slot was free while the first task was paused"
    );

    app.control(0, &token, &format!("/api/tasks/{paused}/resume"))
        .await;
    let done = app.wait_finished(&token, paused).await;
    assert_eq!(done["status"], "completed");
}

async fn a_task_past_its_deadline_is_cancelled_saying_why(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    for (timeout, code) in [
        (json!(0), "invalid_timeout"),
        (json!(3601), "invalid_timeout"),
    ] {
        let mut body = endless(&["qa"], "sequential");
        body["timeoutSecs"] = timeout;
        let response = app.post("/api/tasks", &token, &body).await;
        assert_eq!(response.status(), 422);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{error}");
    }
    let mut body = endless(&["tech-lead", "qa"], "sequential");
    body["timeoutSecs"] = json!(1);
    let task_id = app.submit(&token, &body).await;
    let view = app.wait_finished(&token, task_id).await;
    assert_eq!(view["status"], "cancelled", "{view}");
    let log = app.log(&token, task_id).await;
    let last = log.last().unwrap();
    assert_eq!(last["type"], "task_cancelled");
    assert!(
        last["reason"].as_str().unwrap().contains("deadline"),
        "{last}"
    );
    let cancelled = crate::helpers::of_type(&log, "agent_cancelled");
    assert_eq!(cancelled.len(), 1, "the running agent was stopped: {log:?}");
    let took = last["totalExecutionTime"].as_u64().unwrap_or(0);
    assert!(
        took < 20_000,
        "cancelled near its deadline, not at the end: {last}"
    );
}
