//! One fault at a time, at a known moment, on a cluster of its own (one api, one worker):
//! NATS restarting mid-task and PostgreSQL restarting mid-task. The random suite holds
//! these too; here each is a test that names what must hold.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use crate::checker::{Violation, check_finished, check_log, check_stream, parse_ndjson};
use crate::clients::{Api, SseClient, SseConfig, SseOutcome};
use crate::cluster::{Cluster, ClusterConfig};
use crate::driver::is_finished_status;

async fn small_cluster() -> (Cluster, Api) {
    let cluster = Cluster::start(ClusterConfig {
        apis: 1,
        workers: 1,
        ack_wait_secs: 2,
        max_task_runs: 10,
    })
    .await;
    let mut api = Api::new(cluster.api_urls());
    api.register("restarts@example.com", Duration::from_secs(30))
        .await;
    (cluster, api)
}

/// Three sequential agents streaming for about 3 s each.
async fn submit_long_task(api: &Api) -> String {
    let body = json!({
        "description": "Survive a restart",
        "selectedAgents": ["tech-lead", "backend", "qa"],
        "executionMode": "sequential",
        "provider": "simulated",
        "providerOptions": {"latencyMs": 100, "tokens": 30},
    });
    api.submit(&body, "restart-task", Duration::from_secs(20))
        .await
        .unwrap()
}

/// A client that never drops on purpose: what it sees across the fault is the point.
fn watch(api: &Api, task: &str, done: &CancellationToken) -> tokio::task::JoinHandle<SseOutcome> {
    let config = SseConfig {
        drop_chance: 0.0,
        stall: Duration::from_secs(20),
        deadline: Instant::now() + Duration::from_secs(90),
    };
    let client = SseClient::new(api.clone(), "watcher".into(), task.into(), 1, config);
    let done = done.clone();
    tokio::spawn(async move { client.run(done, Arc::new(Notify::new())).await })
}

async fn wait_until(api: &Api, task: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(view) = api.view(task, 0).await
            && ready(&view)
        {
            return view;
        }
        sleep(Duration::from_millis(100)).await;
    }
    panic!("task {task}: {what} did not happen within 60 s");
}

fn second_agent_streams(view: &Value) -> bool {
    view["agents"][1]["status"] == "running"
        && !view["agents"][1]["output"]
            .as_str()
            .unwrap_or("")
            .is_empty()
}

/// Waits for the task's end, then checks everything that must hold: finished and
/// completed, a dense log, the watcher saw exactly the log. Returns the log.
async fn assert_whole(
    api: &Api,
    task: &str,
    done: CancellationToken,
    watcher: tokio::task::JoinHandle<SseOutcome>,
) -> Vec<Value> {
    let view = wait_until(api, task, "the end", |v| {
        is_finished_status(v["status"].as_str().unwrap_or(""))
    })
    .await;
    done.cancel();
    let watcher = watcher.await.unwrap();
    let log = parse_ndjson(&api.log(task, 0).await.unwrap()).unwrap();
    let json: Vec<Value> = log.iter().map(|(_, v)| v.clone()).collect();
    let raw: Vec<String> = log.iter().map(|(r, _)| r.clone()).collect();
    let mut violations: Vec<Violation> = check_log(task, &json);
    violations.extend(check_finished(
        task,
        &json,
        view["status"].as_str().unwrap(),
    ));
    violations.extend(check_stream(task, "watcher", &watcher.received, &raw));
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(view["status"], "completed", "{view}");
    json
}

/// A small cluster running a long task, caught while its second agent streams, with a
/// watcher on the task's stream.
struct MidTask {
    cluster: Cluster,
    api: Api,
    task: String,
    done: CancellationToken,
    watcher: tokio::task::JoinHandle<SseOutcome>,
}

async fn mid_task() -> MidTask {
    let (cluster, api) = small_cluster().await;
    let task = submit_long_task(&api).await;
    let done = CancellationToken::new();
    let watcher = watch(&api, &task, &done);
    wait_until(
        &api,
        &task,
        "the second agent streams",
        second_agent_streams,
    )
    .await;
    MidTask {
        cluster,
        api,
        task,
        done,
        watcher,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarting_mid_task_loses_nothing() {
    let MidTask {
        mut cluster,
        api,
        task,
        done,
        watcher,
    } = mid_task().await;

    cluster.restart_nats(Duration::from_secs(3)).await;

    let log = assert_whole(&api, &task, done, watcher).await;
    let starts = log.iter().filter(|e| e["type"] == "agent_start").count();
    assert!(starts >= 3, "every agent ran: {starts}");
    // What was published while NATS was down comes again from the store, once.
    let stored = parse_ndjson(&api.log(&task, 0).await.unwrap()).unwrap();
    let logs = std::collections::HashMap::from([(task.clone(), stored)]);
    let problems = crate::check_event_stream(&cluster, &logs).await;
    assert!(problems.is_empty(), "{problems:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarting_mid_task_loses_nothing_and_writes_nothing_twice() {
    let MidTask {
        mut cluster,
        api,
        task,
        done,
        watcher,
    } = mid_task().await;

    cluster.stop_postgres();
    let ready = api
        .http
        .get(api.url(0, "/readyz"))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready while the store is down");
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["store"], "unreachable");
    sleep(Duration::from_secs(2)).await;
    cluster.start_postgres();

    let log = assert_whole(&api, &task, done, watcher).await;
    // The appends waited the outage out: the run went on, nothing was resumed or re-run.
    let starts = log.iter().filter(|e| e["type"] == "agent_start").count();
    assert_eq!(starts, 3, "each agent started once");
    assert!(!log.iter().any(|e| e["type"] == "task_resumed"), "{log:#?}");
}
