//! What a task costs, on both backends: simulated usage labelled as such, a budget that
//! cancels the task once passed, and budgets that make no sense refused at submit.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, both_backends, of_type};

both_backends!(
    simulated_usage_is_labelled_and_totalled,
    a_task_over_its_budget_is_cancelled_saying_why,
    a_budget_that_makes_no_sense_is_refused_and_nothing_is_stored,
);

fn task(agents: &[&str], budget: Value) -> Value {
    json!({
        "description": "Build a chat app",
        "selectedAgents": agents,
        "executionMode": "sequential",
        "provider": "simulated",
        "providerOptions": {"latencyMs": 0, "tokens": 4},
        "budget": budget,
    })
}

async fn simulated_usage_is_labelled_and_totalled(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let task_id = app
        .submit(&token, &task(&["tech-lead", "qa"], Value::Null))
        .await;
    app.wait_finished(&token, task_id).await;
    let log = app.log(&token, task_id).await;

    let usages = of_type(&log, "agent_usage");
    assert_eq!(usages.len(), 2);
    for usage in &usages {
        assert_eq!(usage["source"], "simulated");
        assert_eq!(usage["model"], "simulated");
        assert!(usage["inputTokens"].as_u64().unwrap() > 0);
        assert!(usage["outputTokens"].as_u64().unwrap() > 0);
        assert!(usage.get("costUsd").is_none(), "no price, no cost: {usage}");
    }
    let sum = |field: &str| -> u64 { usages.iter().map(|u| u[field].as_u64().unwrap()).sum() };
    let done = log.last().unwrap();
    assert_eq!(done["type"], "task_complete");
    assert_eq!(done["usage"]["inputTokens"], sum("inputTokens"));
    assert_eq!(done["usage"]["outputTokens"], sum("outputTokens"));
    assert_eq!(done["usage"]["unpricedAttempts"], 2);
}

async fn a_task_over_its_budget_is_cancelled_saying_why(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    // The first agent alone uses more than ten tokens.
    let task_id = app
        .submit(
            &token,
            &task(&["tech-lead", "backend", "qa"], json!({"maxTokens": 10})),
        )
        .await;
    let view = app.wait_finished(&token, task_id).await;
    assert_eq!(view["status"], "cancelled");
    let log = app.log(&token, task_id).await;

    assert_eq!(
        of_type(&log, "agent_start").len(),
        1,
        "no agent after the first"
    );
    assert_eq!(of_type(&log, "agent_usage").len(), 1);
    let done = log.last().unwrap();
    assert_eq!(done["type"], "task_cancelled");
    let reason = done["reason"].as_str().unwrap();
    assert!(reason.contains("over budget"), "{reason}");
    assert!(reason.contains("the budget allows 10"), "{reason}");
    assert!(done["usage"]["inputTokens"].as_u64().unwrap() > 10);
    assert_eq!(view["reason"], reason);
}

async fn a_budget_that_makes_no_sense_is_refused_and_nothing_is_stored(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    for budget in [
        json!("lots"),
        json!([1]),
        json!({"maxTokens": 0}),
        json!({"maxTokens": -5}),
        json!({"maxTokens": 1.5}),
        json!({"maxCostUsd": 0}),
        json!({"maxCostUsd": -1}),
        json!({"maxCostUsd": "1"}),
        json!({"maxDollars": 1}),
    ] {
        let response = app
            .post("/api/tasks", &token, &task(&["qa"], budget.clone()))
            .await;
        assert_eq!(response.status(), 422, "{budget}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_budget", "{budget}: {body}");
    }
    let tasks: Value = app.get("/api/tasks", &token).await.json().await.unwrap();
    assert_eq!(tasks["tasks"], json!([]));

    let fine = task(&["qa"], json!({"maxTokens": 100000, "maxCostUsd": 0.5}));
    let task_id = app.submit(&token, &fine).await;
    let view = app.wait_finished(&token, task_id).await;
    assert_eq!(view["status"], "completed");
}
