//! The stats consumer under faults, distributed: a `troupe stats` process killed with
//! SIGKILL mid-stream and started again, then the whole stream replayed to a consumer
//! started afresh, and a stream that lost events to its retention. Each time the figures
//! equal those computed from the logs. Also the gap-and-backfill procedure the README gives
//! analytics consumers: a gap in `(taskId, seq)` they can see, filled from the NDJSON export.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;
use troupe_stats::StatsConsumer;
use uuid::Uuid;

use troupe_events::Subjects;

use crate::helpers::{Backend, TestApp, exported_log, nats_url, priced, schema_database_url};
use crate::procs::{Proc, Signal};
use crate::stats::{Figures, Route, attach, expected_from_logs, figures_of, stats};

/// Tasks that between them run for a few seconds, so that a consumer can be killed while
/// they still write; one fails an agent.
async fn submit_tasks(app: &TestApp, token: &str, count: usize) -> Vec<Uuid> {
    let mut ids = vec![];
    for i in 0..count {
        let fail: &[&str] = if i % 3 == 0 { &["qa"] } else { &[] };
        let body = json!({
            "description": format!("Stats under faults {i}"),
            "selectedAgents": ["tech-lead", "backend", "qa"],
            "executionMode": if i % 2 == 0 { "parallel" } else { "sequential" },
            "provider": "simulated",
            "providerOptions": {"latencyMs": 40, "tokens": 12, "failAgents": fail},
        });
        ids.push(app.submit(token, &body).await);
    }
    ids
}

async fn logs_of(app: &TestApp, token: &str, ids: &[Uuid]) -> Vec<Vec<Value>> {
    let mut logs = vec![];
    for id in ids {
        app.wait_finished(token, *id).await;
        logs.push(app.log(token, *id).await);
    }
    logs
}

/// `troupe stats` on the app's schema and NATS prefix, with durable consumer `durable`.
fn stats_command(app: &TestApp, schema: &str, durable: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_troupe"));
    command
        .arg("stats")
        .args(["--consumer", durable])
        .env("DATABASE_URL", schema_database_url(schema))
        .env("NATS_URL", nats_url())
        .env("TROUPE_NATS_PREFIX", app.nats_prefix())
        .env("RUST_LOG", "info");
    command
}

/// The sum of ended attempts in a stats report.
fn attempts_counted(report: &Value) -> u64 {
    figures_of(report).values().map(|f| f.attempts).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_stats_process_counts_each_event_once_after_a_restart_and_a_replay() {
    let app = TestApp::spawn_with(Backend::Distributed, priced()).await;
    let schema = app.schema().to_string();
    let token = app.user().await;
    let dir = std::env::temp_dir().join(format!("troupe-stats-kill-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut process = Proc::new("stats", &dir);
    let started = Instant::now();
    process.spawn(stats_command(&app, &schema, "it-kill"), started);

    let ids = submit_tasks(&app, &token, 12).await;
    // Killed once it has counted some attempts, while tasks still write.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counted = attempts_counted(&stats(&app, &token).await);
        if counted > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the consumer counted nothing: {}",
            process.last_run_output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process.signal(Signal::Kill);
    process.wait(Duration::from_secs(5)).await;
    let counted_at_kill = attempts_counted(&stats(&app, &token).await);

    let logs = logs_of(&app, &token, &ids).await;
    let expected = expected_from_logs(&logs);
    let total: u64 = expected.values().map(|f| f.attempts).sum();
    assert!(
        counted_at_kill < total,
        "killed after every attempt was counted ({counted_at_kill} of {total}): not mid-stream"
    );

    process.spawn(stats_command(&app, &schema, "it-kill"), started);
    let counted = poll_figures(&app, &token, &expected).await;
    assert_eq!(counted, expected, "{}", process.last_run_output());
    process.signal(Signal::Kill);
    process.wait(Duration::from_secs(5)).await;

    // The whole stream from its first message, to a consumer started afresh.
    let mut replay = Proc::new("stats-replay", &dir);
    replay.spawn(stats_command(&app, &schema, "it-kill-replay"), started);
    wait_until_consumed(&app, "it-kill-replay").await;
    assert_eq!(
        figures_of(&stats(&app, &token).await),
        expected,
        "a replay counts nothing again: {}",
        replay.last_run_output()
    );
    replay.kill_now();
}

/// Polls the report until its figures equal `expected` (or 30 s pass): its last figures.
async fn poll_figures(
    app: &TestApp,
    token: &str,
    expected: &BTreeMap<Route, Figures>,
) -> BTreeMap<Route, Figures> {
    let mut counted = BTreeMap::new();
    for _ in 0..300 {
        counted = figures_of(&stats(app, token).await);
        if counted == *expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    counted
}

async fn events_stream(app: &TestApp) -> jetstream::stream::Stream {
    let js = jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let name = Subjects::new(app.nats_prefix()).stream_name("EVENTS");
    js.get_stream(name).await.unwrap()
}

/// Waits until durable consumer `durable` has been delivered the stream's last message
/// and has nothing left unacknowledged, in less than the consumer's ack wait (30 s): a
/// message left unacknowledged and sent again later fails the wait.
async fn wait_until_consumed(app: &TestApp, durable: &str) {
    let mut stream = events_stream(app).await;
    let last = stream.info().await.unwrap().state.last_sequence;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = match stream.get_consumer::<consumer::pull::Config>(durable).await {
            Ok(mut consumer) => consumer.info().await.ok().cloned(),
            Err(_) => None,
        };
        if let Some(info) = &info
            && info.delivered.stream_sequence >= last
            && info.num_ack_pending == 0
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{durable} did not read the whole stream (last {last}): {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the stream holds `count` messages (each task's publisher is a moment behind).
async fn wait_for_stream_messages(app: &TestApp, count: u64) {
    let mut stream = events_stream(app).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while stream.info().await.unwrap().state.messages < count {
        assert!(
            Instant::now() < deadline,
            "the stream never held {count} messages"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every message the stream holds now, as `(taskId, seq, payload)`.
async fn stream_contents(app: &TestApp) -> Vec<(String, u64, Value)> {
    let mut stream = events_stream(app).await;
    let count = stream.info().await.unwrap().state.messages;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = vec![];
    while (out.len() as u64) < count {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("the stream stopped early")
            .unwrap()
            .unwrap();
        let event: Value = serde_json::from_slice(&message.payload).unwrap();
        let task = event["taskId"].as_str().unwrap().to_string();
        out.push((task, event["seq"].as_u64().unwrap(), event));
    }
    out
}

/// Three tasks, one after another, each in the stream before the next starts, so that the
/// stream holds them in that order.
async fn tasks_in_stream_order(app: &TestApp, token: &str) -> Vec<Vec<Value>> {
    let mut logs: Vec<Vec<Value>> = vec![];
    for i in 0..3 {
        let ids = submit_tasks(app, token, 1).await;
        logs.extend(logs_of(app, token, &ids).await);
        let stored: usize = logs.iter().map(Vec::len).sum();
        wait_for_stream_messages(app, stored as u64).await;
        assert!(logs[i].len() > 4, "{:?}", logs[i]);
    }
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_lost_events_to_its_retention_is_made_whole_from_the_log() {
    let app = TestApp::spawn_with(Backend::Distributed, priced()).await;
    let token = app.user().await;
    let logs = tasks_in_stream_order(&app, &token).await;
    let task_of = |log: &Vec<Value>| log[0]["taskId"].as_str().unwrap().to_string();

    // Retention drops the oldest messages: all of the first task, the first half of the
    // second, none of the third.
    let kept = logs[2].len() + logs[1].len() / 2;
    events_stream(&app)
        .await
        .purge()
        .keep(kept as u64)
        .await
        .unwrap();

    // An analytics consumer sees a gap (a first seq past 1) and backfills it from the
    // NDJSON export; it never hears of the task the stream lost whole.
    let mut seen: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (task, _, event) in stream_contents(&app).await {
        seen.entry(task).or_default().push(event);
    }
    assert!(
        !seen.contains_key(&task_of(&logs[0])),
        "the first task is gone whole"
    );
    let gapped = &seen[&task_of(&logs[1])];
    assert!(
        gapped[0]["seq"].as_u64() > Some(1),
        "the second task starts past seq 1"
    );
    for (task, events) in &mut seen {
        let first = events[0]["seq"].as_u64().unwrap();
        if first > 1 {
            let exported = exported_log(&app.client, app.url(0), &token, task).await;
            let missing = exported
                .into_iter()
                .filter(|e| e["seq"].as_u64() < Some(first));
            let mut whole: Vec<Value> = missing.collect();
            whole.append(events);
            *events = whole;
        }
    }
    for log in &logs[1..] {
        assert_eq!(&seen[&task_of(log)], log, "backfilled from the export");
    }

    // troupe stats: a consumer started after the loss counts the partial task from the
    // store (its gap), and the task the stream lost whole at its catch-up from the store.
    let expected = expected_from_logs(&logs);
    let late = StatsConsumer::new(app.store().await);
    let feed = attach(&app, "it-retention", late.clone()).await;
    while feed.process_one().await.unwrap().messages > 0 {}
    let from_stream = figures_of(&stats(&app, &token).await);
    assert_ne!(
        from_stream, expected,
        "the stream alone misses the first task"
    );
    let from_logs_without_first = expected_from_logs(&logs[1..]);
    assert_eq!(
        from_stream, from_logs_without_first,
        "the gap was read from the store"
    );
    late.catch_up_all().await.unwrap();
    assert_eq!(figures_of(&stats(&app, &token).await), expected);
}
