//! The stats consumer counts each stored event once: its figures (`GET /api/stats`) equal
//! those computed from the logs, and stay equal when the same events come again (a
//! consumer that committed but died before acknowledging, a replay of the whole stream).
//! Embedded, `troupe` runs the consumer on the in-process bus; distributed, the test drives
//! a durable consumer on the EVENTS stream one fetch at a time, as `troupe stats` does.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use troupe_stats::StatsConsumer;
use troupe_stats::stream::{StreamConfig, StreamFeed};
use uuid::Uuid;

use crate::helpers::{Backend, TestApp, both_backends, nats_url, priced};

/// Role, provider, model.
pub(crate) type Route = (String, String, String);

/// The figures the api answers, per route, as compared here.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Figures {
    pub(crate) attempts: u64,
    successes: u64,
    failures: u64,
    cancellations: u64,
    duration_ms: u64,
    calls: u64,
    input_tokens: u64,
    output_tokens: u64,
    /// Micro-dollars, so that sums in another order compare equal.
    cost_micros: i64,
    simulated_calls: u64,
    unreported_calls: u64,
    unpriced_calls: u64,
    first_token_calls: u64,
}

fn route(role: &Value, provider: &Value, model: &Value) -> Route {
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    (text(role), text(provider), text(model))
}

/// What the logs say, computed here without the consumer's code: attempts under the
/// route the task asked for, calls, tokens and cost under the model that answered.
pub(crate) fn expected_from_logs(logs: &[Vec<Value>]) -> BTreeMap<Route, Figures> {
    let mut out: BTreeMap<Route, Figures> = BTreeMap::new();
    for log in logs {
        let created = &log[0];
        let asked = |role: &Value| route(role, &created["provider"], &created["model"]);
        for event in log {
            let kind = event["type"].as_str().unwrap();
            if let "agent_complete" | "agent_error" | "agent_cancelled" = kind {
                let f = out.entry(asked(&event["agentRole"])).or_default();
                f.attempts += 1;
                f.successes += u64::from(kind == "agent_complete");
                f.failures += u64::from(kind == "agent_error");
                f.cancellations += u64::from(kind == "agent_cancelled");
                f.duration_ms += event["executionTime"].as_u64().unwrap();
            } else if kind == "agent_usage" {
                let key = route(&event["agentRole"], &event["provider"], &event["model"]);
                let f = out.entry(key).or_default();
                f.calls += 1;
                f.input_tokens += event["inputTokens"].as_u64().unwrap_or(0);
                f.output_tokens += event["outputTokens"].as_u64().unwrap_or(0);
                f.cost_micros += (event["costUsd"].as_f64().unwrap_or(0.0) * 1e6).round() as i64;
                f.simulated_calls += u64::from(event["source"] == "simulated");
                f.unreported_calls +=
                    u64::from(event["inputTokens"].is_null() && event["outputTokens"].is_null());
                f.unpriced_calls += u64::from(event["costUsd"].is_null());
                f.first_token_calls += u64::from(event["timeToFirstToken"].is_u64());
            }
        }
    }
    out
}

/// The figures of one row of a report (`agents`, `roles`, `hours`, `days`); a row has no
/// `firstTokenCalls` but in `agents` and `roles`.
fn figures_of_row(row: &Value) -> Figures {
    let count = |name: &str| row[name].as_u64().unwrap();
    Figures {
        attempts: count("attempts"),
        successes: count("successes"),
        failures: count("failures"),
        cancellations: count("cancellations"),
        duration_ms: count("durationMs"),
        calls: count("calls"),
        input_tokens: count("inputTokens"),
        output_tokens: count("outputTokens"),
        cost_micros: (row["costUsd"].as_f64().unwrap() * 1e6).round() as i64,
        simulated_calls: count("simulatedCalls"),
        unreported_calls: count("unreportedCalls"),
        unpriced_calls: count("unpricedCalls"),
        first_token_calls: row["firstTokenCalls"].as_u64().unwrap_or(0),
    }
}

/// The report's `agents`, per route.
pub(crate) fn figures_of(report: &Value) -> BTreeMap<Route, Figures> {
    report["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                route(&a["role"], &a["provider"], &a["model"]),
                figures_of_row(a),
            )
        })
        .collect()
}

/// Rows summed per key; the first-token count, which period rows lack, left out.
fn summed<K: Ord>(rows: impl Iterator<Item = (K, Figures)>) -> BTreeMap<K, Figures> {
    let mut out: BTreeMap<K, Figures> = BTreeMap::new();
    for (key, f) in rows {
        let sum = out.entry(key).or_default();
        sum.attempts += f.attempts;
        sum.successes += f.successes;
        sum.failures += f.failures;
        sum.cancellations += f.cancellations;
        sum.duration_ms += f.duration_ms;
        sum.calls += f.calls;
        sum.input_tokens += f.input_tokens;
        sum.output_tokens += f.output_tokens;
        sum.cost_micros += f.cost_micros;
        sum.simulated_calls += f.simulated_calls;
        sum.unreported_calls += f.unreported_calls;
        sum.unpriced_calls += f.unpriced_calls;
    }
    out
}

/// `rows` of a report summed per route, without the first-token count.
fn period_totals(rows: &Value) -> BTreeMap<Route, Figures> {
    summed(rows.as_array().unwrap().iter().map(|r| {
        let key = route(&r["role"], &r["provider"], &r["model"]);
        (key, figures_of_row(r))
    }))
}

/// What a report's views must agree on: `roles` are the sums of `agents`, and the period
/// rows (`hours` or `days`) add up to `agents`.
fn assert_consistent(report: &Value, periods: &str) {
    let agents = figures_of(report);
    let mut by_role = summed(
        agents
            .iter()
            .map(|((role, _, _), f)| (role.clone(), f.clone())),
    );
    for ((role, _, _), f) in &agents {
        by_role.get_mut(role).unwrap().first_token_calls += f.first_token_calls;
    }
    let roles: BTreeMap<String, Figures> = report["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["role"].as_str().unwrap().to_string(), figures_of_row(r)))
        .collect();
    assert_eq!(roles, by_role, "roles are the agents' sums");
    let without_first_tokens = summed(agents.into_iter());
    assert_eq!(
        period_totals(&report[periods]),
        without_first_tokens,
        "{periods} add up to the agents"
    );
}

pub(crate) async fn stats(app: &TestApp, token: &str) -> Value {
    let response = app.get("/api/stats?hours=2", token).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Three tasks that between them complete, fail and cancel agents, with priced usage.
async fn run_tasks(app: &TestApp, token: &str) -> Vec<Vec<Value>> {
    let bodies = [
        json!({"description": "Stats one", "selectedAgents": ["tech-lead", "frontend", "qa"],
               "provider": "simulated", "providerOptions": {"latencyMs": 1, "tokens": 6}}),
        json!({"description": "Stats two", "selectedAgents": ["backend", "qa"],
               "executionMode": "parallel", "provider": "simulated",
               "providerOptions": {"latencyMs": 1, "tokens": 4, "failAgents": ["qa"]}}),
        json!({"description": "Stats three", "selectedAgents": ["tech-lead"],
               "provider": "simulated", "providerOptions": {"latencyMs": 200, "tokens": 50}}),
    ];
    let mut ids: Vec<Uuid> = vec![];
    for body in &bodies {
        ids.push(app.submit(token, body).await);
    }
    app.wait_view(token, ids[2], "the agent streams", |v| {
        v["agents"][0]["status"] == "running"
    })
    .await;
    let (status, _) = app
        .control(0, token, &format!("/api/tasks/{}/cancel", ids[2]))
        .await;
    assert_eq!(status, 202);
    let mut logs = vec![];
    for id in &ids {
        app.wait_finished(token, *id).await;
        logs.push(app.log(token, *id).await);
    }
    logs
}

async fn stats_equal_the_logs(backend: Backend) {
    let app = TestApp::spawn_with(backend, priced()).await;
    let token = app.user().await;
    let other = app.user().await;
    let logs = run_tasks(&app, &token).await;
    let expected = expected_from_logs(&logs);
    assert!(expected.values().any(|f| f.failures > 0), "{expected:?}");
    assert!(
        expected.values().any(|f| f.cancellations > 0),
        "{expected:?}"
    );

    let feed = match backend {
        Backend::Embedded => None,
        Backend::Distributed => {
            Some(attach(&app, "it-stats", StatsConsumer::new(app.store().await)).await)
        }
    };
    let mut counted = BTreeMap::new();
    for _ in 0..100 {
        if let Some(feed) = &feed {
            feed.process_one().await.unwrap();
        }
        counted = figures_of(&stats(&app, &token).await);
        if counted == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        counted, expected,
        "the consumer's figures against the logs'"
    );
    let report = stats(&app, &token).await;
    let lead = report["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["role"] == "tech-lead" && a["successes"].as_u64() > Some(0))
        .expect("tech-lead's row");
    assert!(lead["p50Ms"].is_u64() && lead["p99Ms"].as_u64() >= lead["p50Ms"].as_u64());
    // Calls, and so first tokens, count under the model that answered; the role's row has
    // them all.
    let lead_role = &report["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == "tech-lead")
        .expect("tech-lead's role row");
    assert!(
        lead_role["firstTokenP50Ms"].is_u64() && lead_role["firstTokenCalls"].as_u64() > Some(0)
    );
    assert!(report["days"].is_null());
    assert_consistent(&report, "hours");
    let by_day: Value = app.get_json("/api/stats?days=2", &token).await;
    assert_eq!(
        figures_of(&by_day),
        expected,
        "a days window counts the same"
    );
    assert!(by_day["hours"].is_null());
    assert_consistent(&by_day, "days");
    let today = chrono::Utc::now().date_naive().to_string();
    assert!(
        by_day["days"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["day"] == today.as_str()),
        "today's row: {by_day}"
    );
    assert_eq!(
        stats(&app, &other).await["agents"],
        json!([]),
        "only the caller's tasks"
    );

    // The same events again, as after a commit whose acks were lost, then (distributed)
    // the whole stream replayed to a consumer started afresh: nothing counts twice.
    let store = app.store().await;
    let consumer = StatsConsumer::new(store.clone());
    for log in &logs {
        let task: Uuid = log[0]["taskId"].as_str().unwrap().parse().unwrap();
        let events = store.events_after(task, 0, 1000).await.unwrap();
        consumer.apply(&events).await.unwrap();
    }
    if let Some(feed) = feed {
        drop(feed);
        let replay = attach(&app, "it-stats-replay", consumer.clone()).await;
        let mut messages = 0;
        for _ in 0..200 {
            let fetched = replay.process_one().await.unwrap();
            assert_eq!(fetched.applied.events, 0, "a replay counts nothing");
            if fetched.messages == 0 && messages > 0 {
                break;
            }
            messages += fetched.messages;
        }
        let stored: usize = logs.iter().map(Vec::len).sum();
        assert_eq!(messages, stored, "the replay went through the whole stream");
    }
    assert_eq!(figures_of(&stats(&app, &token).await), expected);
}

pub(crate) async fn attach(app: &TestApp, durable: &str, consumer: StatsConsumer) -> StreamFeed {
    let client = async_nats::connect(nats_url()).await.unwrap();
    let config = StreamConfig {
        durable: durable.into(),
        ..StreamConfig::default()
    };
    let subjects = troupe_events::Subjects::new(app.nats_prefix());
    StreamFeed::attach(client, &subjects, &config, consumer)
        .await
        .unwrap()
}

async fn a_bad_window_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    for (query, code) in [
        ("hours=0", "invalid_hours"),
        ("hours=721", "invalid_hours"),
        ("hours=abc", "invalid_query"),
        ("hours=-1", "invalid_query"),
        ("days=0", "invalid_days"),
        ("days=91", "invalid_days"),
        ("days=1&hours=1", "invalid_window"),
    ] {
        let response = app.get(&format!("/api/stats?{query}"), &token).await;
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{query}");
    }
    let anonymous = app
        .client
        .get(format!("{}/api/stats", app.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

both_backends!(stats_equal_the_logs, a_bad_window_is_refused);
