//! What each task cost in the history, and `GET /api/usage`, on both backends: the
//! figures equal what the tasks' own events reported, another user's tasks are never
//! counted, and bad windows are refused.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Backend, TestApp, both_backends, of_type, priced};

both_backends!(
    the_history_lists_what_each_task_used,
    the_usage_report_adds_up_to_what_the_tasks_reported,
    bad_usage_windows_are_refused,
);

fn task(agents: &[&str], mode: &str, options: Value) -> Value {
    let mut provider_options = json!({"latencyMs": 0, "tokens": 4});
    provider_options
        .as_object_mut()
        .unwrap()
        .extend(options.as_object().unwrap().clone());
    json!({
        "description": "Build a chat app",
        "selectedAgents": agents,
        "executionMode": mode,
        "provider": "simulated",
        "providerOptions": provider_options,
    })
}

/// The usage of a finished task as its last terminal event says.
fn terminal_usage(log: &[Value]) -> Value {
    let done = log.last().unwrap();
    assert!(
        ["task_complete", "task_error", "task_cancelled"].contains(&done["type"].as_str().unwrap()),
        "{done}"
    );
    done["usage"].clone()
}

/// Equal usage totals; costs summed in another order may differ in their last bit.
fn assert_same_usage(actual: &Value, expected: &Value, what: &str) {
    for field in [
        "inputTokens",
        "outputTokens",
        "unreportedAttempts",
        "unpricedAttempts",
        "simulatedAttempts",
    ] {
        assert_eq!(actual[field], expected[field], "{what}: {field}");
    }
    let (a, e) = (actual["costUsd"].as_f64(), expected["costUsd"].as_f64());
    assert!(
        (a.unwrap() - e.unwrap()).abs() < 1e-9,
        "{what}: {a:?} {e:?}"
    );
}

async fn listed(app: &TestApp, token: &str) -> BTreeMap<String, Value> {
    let list: Value = app
        .get("/api/tasks?limit=100", token)
        .await
        .json()
        .await
        .unwrap();
    list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["taskId"].as_str().unwrap().to_string(),
                t["usage"].clone(),
            )
        })
        .collect()
}

async fn the_history_lists_what_each_task_used(backend: Backend) {
    let app = TestApp::spawn_with(backend, priced()).await;
    let token = app.user().await;
    let fine = app
        .submit(&token, &task(&["tech-lead", "qa"], "sequential", json!({})))
        .await;
    // qa fails once; its retry succeeds: the task's usage is both attempts'.
    let retried = app
        .submit(
            &token,
            &task(
                &["backend", "qa"],
                "parallel",
                json!({"failAgents": ["qa"], "failAttempts": 1}),
            ),
        )
        .await;
    app.wait_finished(&token, fine).await;
    assert_eq!(app.wait_finished(&token, retried).await["status"], "failed");
    let (status, _) = app
        .control(0, &token, &format!("/api/tasks/{retried}/retry"))
        .await;
    assert_eq!(status, 202);
    app.wait_view(&token, retried, "the retry's end", |view| {
        view["status"] == "completed"
    })
    .await;

    let listed = listed(&app, &token).await;
    for task_id in [fine, retried] {
        let log = app.log(&token, task_id).await;
        let usage = &listed[&task_id.to_string()];
        assert_same_usage(usage, &terminal_usage(&log), &task_id.to_string());
        let attempts = of_type(&log, "agent_usage");
        assert_eq!(usage["simulatedAttempts"], attempts.len(), "{task_id}");
        let unpriced = attempts
            .iter()
            .filter(|u| u.get("costUsd").is_none())
            .count();
        assert_eq!(usage["unpricedAttempts"], unpriced, "{task_id}");
        assert!(usage["costUsd"].as_f64().unwrap() > 0.0, "{task_id}");
    }
    assert_eq!(
        of_type(&app.log(&token, retried).await, "agent_usage").len(),
        3,
        "backend, qa's failed attempt and its retry"
    );
}

/// The nearest-rank percentile, as the report defines it.
fn percentile(values: &mut [u64], p: u64) -> Option<u64> {
    values.sort_unstable();
    let n = values.len() as u64;
    (n > 0).then(|| values[((p * n).div_ceil(100)).max(1) as usize - 1])
}

async fn the_usage_report_adds_up_to_what_the_tasks_reported(backend: Backend) {
    let app = TestApp::spawn_with(backend, priced()).await;
    let (alice, bob) = (app.user().await, app.user().await);
    let team = ["tech-lead", "frontend", "qa"];
    let mut tasks: Vec<Uuid> = vec![];
    tasks.push(
        app.submit(&alice, &task(&team, "parallel", json!({})))
            .await,
    );
    tasks.push(
        app.submit(
            &alice,
            &task(&team, "parallel", json!({"failAgents": ["qa"]})),
        )
        .await,
    );
    tasks.push(
        app.submit(&alice, &task(&["qa", "tech-lead"], "sequential", json!({})))
            .await,
    );
    let bobs = app
        .submit(&bob, &task(&["backend"], "sequential", json!({})))
        .await;
    let mut logs = vec![];
    for &task_id in &tasks {
        app.wait_finished(&alice, task_id).await;
        logs.push(app.log(&alice, task_id).await);
    }
    app.wait_finished(&bob, bobs).await;

    let response = app.get("/api/usage?days=7", &alice).await;
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["days"], 7);
    assert_eq!(report["tasks"], 3, "alice's tasks only: {report}");
    assert_eq!(report["truncated"], false);

    // The totals are the sum of what each task's terminal event reported.
    let sum = |field: &str| -> f64 {
        logs.iter()
            .map(|log| terminal_usage(log)[field].as_f64().unwrap())
            .sum()
    };
    for field in [
        "inputTokens",
        "outputTokens",
        "unpricedAttempts",
        "simulatedAttempts",
    ] {
        assert_eq!(
            report["totals"][field].as_f64().unwrap(),
            sum(field),
            "{field}"
        );
    }
    let cost = report["totals"]["costUsd"].as_f64().unwrap();
    assert!(cost > 0.0 && (cost - sum("costUsd")).abs() < 1e-9, "{cost}");

    // The day × role × model cells add up to the same, one call per agent_usage.
    let usages: Vec<&Value> = logs
        .iter()
        .flat_map(|l| of_type(l, "agent_usage"))
        .collect();
    let daily = report["daily"].as_array().unwrap();
    let cells = |field: &str| -> f64 { daily.iter().map(|c| c[field].as_f64().unwrap()).sum() };
    assert_eq!(cells("attempts") as usize, usages.len());
    assert_eq!(cells("inputTokens"), sum("inputTokens"));
    assert_eq!(cells("outputTokens"), sum("outputTokens"));
    assert!((cells("costUsd") - cost).abs() < 1e-9);
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    for cell in daily {
        assert_eq!(cell["model"], "simulated");
        assert_eq!(cell["simulatedAttempts"], cell["attempts"]);
        assert!(cell["day"].as_str().unwrap() <= today.as_str());
        let role = cell["role"].as_str().unwrap();
        let tokens: u64 = usages
            .iter()
            .filter(|u| u["agentRole"] == role)
            .map(|u| u["inputTokens"].as_u64().unwrap())
            .sum();
        assert_eq!(cell["inputTokens"], tokens, "{role}: one day, one model");
    }

    // Per role: how its attempts ended, and the percentiles of their times.
    let roles: BTreeMap<&str, &Value> = report["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["role"].as_str().unwrap(), r))
        .collect();
    assert_eq!(
        roles.keys().copied().collect::<Vec<_>>(),
        ["frontend", "qa", "tech-lead"]
    );
    for (role, stats) in &roles {
        let of = |kind: &str| -> Vec<&Value> {
            logs.iter()
                .flat_map(|l| of_type(l, kind))
                .filter(|e| e["agentRole"] == *role)
                .collect()
        };
        let completed = of("agent_complete");
        let failed = of("agent_error");
        assert_eq!(stats["completed"], completed.len(), "{role}");
        assert_eq!(stats["failed"], failed.len(), "{role}");
        assert_eq!(stats["cancelled"], 0, "{role}");
        let rate = completed.len() as f64 / (completed.len() + failed.len()) as f64;
        assert_eq!(stats["successRate"].as_f64().unwrap(), rate, "{role}");
        let mut times: Vec<u64> = completed
            .iter()
            .map(|e| e["executionTime"].as_u64().unwrap())
            .collect();
        assert_eq!(stats["duration"]["count"], times.len());
        assert_eq!(
            stats["duration"]["p50"].as_u64(),
            percentile(&mut times, 50),
            "{role}"
        );
        assert_eq!(
            stats["duration"]["p95"].as_u64(),
            percentile(&mut times, 95),
            "{role}"
        );
        let mut firsts: Vec<u64> = of("agent_usage")
            .iter()
            .filter_map(|e| e["timeToFirstToken"].as_u64())
            .collect();
        assert_eq!(stats["timeToFirstToken"]["count"], firsts.len());
        assert_eq!(
            stats["timeToFirstToken"]["p95"].as_u64(),
            percentile(&mut firsts, 95),
            "{role}"
        );
    }
    assert_eq!(roles["qa"]["failed"], 1);
    assert_eq!(roles["qa"]["completed"], 2);

    // Bob sees his own task alone, and none of alice's.
    let his: Value = app.get("/api/usage", &bob).await.json().await.unwrap();
    assert_eq!(his["days"], 30, "the default window");
    assert_eq!(his["tasks"], 1);
    let bob_log = app.log(&bob, bobs).await;
    assert_same_usage(&his["totals"], &terminal_usage(&bob_log), "bob");
    let his_roles: Vec<&str> = his["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["role"].as_str().unwrap())
        .collect();
    assert_eq!(his_roles, ["backend"]);

    // A new account has nothing at all.
    let carol = app.user().await;
    let none: Value = app
        .get("/api/usage?days=1", &carol)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["tasks"], 0);
    assert_eq!(none["daily"], json!([]));
    assert_eq!(none["roles"], json!([]));
    assert_eq!(none["totals"]["inputTokens"], 0);
}

async fn bad_usage_windows_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    for (query, code) in [
        ("days=0", "invalid_days"),
        ("days=91", "invalid_days"),
        ("days=100000000000", "invalid_query"),
        ("days=-1", "invalid_query"),
        ("days=week", "invalid_query"),
        ("days=1.5", "invalid_query"),
    ] {
        let response = app.get(&format!("/api/usage?{query}"), &token).await;
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().len() > 5);
    }
    let ok = app.get("/api/usage?days=90", &token).await;
    assert_eq!(ok.status(), 200);
    let unauthenticated = app
        .client
        .get(format!("{}/api/usage", app.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}
