//! The event subjects as a contract: every stored event is in the `EVENTS` stream exactly
//! once per `(taskId, seq)`, byte for byte, with `Nats-Msg-Id: <taskId>:<seq>`, including
//! what a worker stored but never got acknowledged (the relay publishes it from the store).
//! Distributed only: the embedded bus keeps no stream.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use troupe_events::relay::{Relay, RelayConfig, RelayPass};
use troupe_events::{Backends, Event, EventBody, RawEvent};
use uuid::Uuid;

use crate::event_stream::{read_event_stream, stream_mismatches};
use crate::helpers::{Backend, TestApp, exported_lines, nats_url};

async fn stored_logs(app: &TestApp, token: &str, tasks: &[Uuid]) -> HashMap<String, Vec<String>> {
    let mut logs = HashMap::new();
    for task in tasks {
        let lines = exported_lines(&app.client, app.url(0), token, task).await;
        logs.insert(task.to_string(), lines);
    }
    logs
}

async fn stream_problems(app: &TestApp, logs: &HashMap<String, Vec<String>>) -> Vec<String> {
    let expected = logs.values().map(Vec::len).sum();
    let streamed = read_event_stream(
        &nats_url(),
        app.nats_prefix(),
        expected,
        Duration::from_secs(30),
        Duration::from_millis(500),
    )
    .await;
    stream_mismatches(&streamed, logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stored_event_is_in_the_stream_once_with_its_message_id() {
    let app = TestApp::spawn(Backend::Distributed).await;
    let token = app.user().await;
    let mut tasks = vec![];
    for (mode, tokens) in [("sequential", 12), ("parallel", 8), ("sequential", 1)] {
        let body = json!({
            "description": "Stream me",
            "selectedAgents": ["tech-lead", "frontend", "qa"],
            "executionMode": mode,
            "provider": "simulated",
            "providerOptions": {"latencyMs": 5, "tokens": tokens},
        });
        tasks.push(app.submit(&token, &body).await);
    }
    for task in &tasks {
        app.wait_finished(&token, *task).await;
    }
    let logs = stored_logs(&app, &token, &tasks).await;
    assert!(logs.values().all(|log| log.len() > 5), "{logs:?}");
    let problems = stream_problems(&app, &logs).await;
    assert!(problems.is_empty(), "{problems:#?}");
}

/// What a worker that died between its commit and its publish leaves: events in the log
/// that no one published.
fn stored_but_never_published(task_id: Uuid, after: u64) -> Vec<RawEvent> {
    ["tech-lead", "qa"]
        .iter()
        .enumerate()
        .map(|(i, role)| {
            let body = EventBody::AgentProgress {
                agent_role: role.to_string(),
                message: "thinking".into(),
            };
            Event::new(task_id, after + 1 + i as u64, body).to_raw()
        })
        .collect()
}

/// A distributed app with no worker: tasks stay queued, and no relay runs but the test's.
async fn app_without_workers() -> TestApp {
    let mut app = TestApp::spawn(Backend::Distributed).await;
    for worker in app.workers.drain(..) {
        worker.cancel();
    }
    app
}

/// A relay that takes tasks at once, on connections of its own.
fn relay_without_grace(backends: &Backends) -> Relay {
    let config = RelayConfig {
        grace: Duration::ZERO,
        ..RelayConfig::default()
    };
    Relay::new(backends.store.clone(), backends.bus.clone(), config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_stored_but_never_published_is_relayed_once() {
    let app = app_without_workers().await;
    let token = app.user().await;
    let body = json!({
        "description": "Left behind",
        "selectedAgents": ["tech-lead", "qa"],
        "provider": "simulated",
    });
    let task = app.submit(&token, &body).await;
    let backends = app.backends().await;
    let stored = stored_but_never_published(task, 1);
    backends.store.append(task, &stored).await.unwrap();
    let relay = relay_without_grace(&backends);

    let pass = relay.relay_once().await.unwrap();
    assert_eq!(
        pass,
        RelayPass {
            tasks: 1,
            events: 3
        },
        "task_created and the two stored"
    );
    assert_eq!(backends.store.published_through(task).await.unwrap(), 3);
    assert_eq!(
        relay.relay_once().await.unwrap(),
        RelayPass::default(),
        "nothing is left"
    );

    // The dead worker's publish arriving late after all: the stream drops the repeat.
    backends.bus.publish(&stored).await.unwrap();
    let logs = stored_logs(&app, &token, &[task]).await;
    assert_eq!(logs[&task.to_string()].len(), 3);
    let problems = stream_problems(&app, &logs).await;
    assert!(problems.is_empty(), "{problems:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_leaves_a_task_alone_while_a_worker_holds_it() {
    let app = app_without_workers().await;
    let token = app.user().await;
    let body = json!({"description": "Held", "selectedAgents": ["qa"], "provider": "simulated"});
    let task = app.submit(&token, &body).await;
    let backends = app.backends().await;
    let holder = Uuid::now_v7();
    let lease = Duration::from_secs(60);
    backends.store.claim(task, holder, 1, lease).await.unwrap();
    let relay = relay_without_grace(&backends);
    assert_eq!(relay.relay_once().await.unwrap(), RelayPass::default());
    backends.store.release(task, holder).await.unwrap();
    assert_eq!(relay.relay_once().await.unwrap().events, 1);
}
