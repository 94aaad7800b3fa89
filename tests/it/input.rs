//! Hostile and clumsy requests: each gets a JSON error with the right status, and none
//! changes what is stored.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, Tweaks, both_backends};

both_backends!(
    bad_task_bodies_are_refused_and_store_nothing,
    auth_is_required_and_checked,
    another_users_task_is_not_found,
    bad_cursors_are_refused,
    idempotency_key_returns_the_same_task,
    accounts_refuse_bad_and_duplicate_registrations,
    an_operator_can_turn_the_simulated_provider_off,
    a_team_larger_than_the_server_allows_is_refused,
    a_simulated_answer_longer_than_the_server_allows_is_refused,
);

async fn assert_error(response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status(), status, "expected {status} {code}");
    let body: Value = response.json().await.expect("errors are JSON");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(!body["error"]["message"].as_str().unwrap().is_empty());
}

/// A 422 with `code` whose message names the server's bound, `says`.
async fn assert_refusal_says(response: reqwest::Response, code: &str, says: &str) {
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(says), "{body}");
}

async fn task_count(app: &TestApp, token: &str) -> usize {
    let list: Value = app
        .get("/api/tasks?limit=100", token)
        .await
        .json()
        .await
        .unwrap();
    list["tasks"].as_array().unwrap().len()
}

async fn bad_task_bodies_are_refused_and_store_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let ok = json!({"description": "d", "selectedAgents": ["qa"], "provider": "simulated"});
    let with = |key: &str, value: Value| {
        let mut body = ok.clone();
        body[key] = value;
        body
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (with("selectedAgents", json!([])), 422, "no_agents"),
        (
            with("selectedAgents", json!(["qa", "wizard"])),
            422,
            "unknown_agent",
        ),
        (
            with("selectedAgents", json!(["qa", "qa"])),
            422,
            "duplicate_agent",
        ),
        (with("provider", json!("skynet")), 422, "unknown_provider"),
        (
            with("provider", json!("openai")),
            422,
            "provider_not_configured",
        ),
        (
            with("description", json!("   ")),
            422,
            "missing_description",
        ),
        (
            json!({"selectedAgents": ["qa"]}),
            422,
            "missing_description",
        ),
        (
            with("executionMode", json!("sideways")),
            422,
            "invalid_execution_mode",
        ),
        (
            with("providerOptions", json!([1, 2])),
            422,
            "invalid_provider_options",
        ),
        // The simulated provider's answer may take at most 5 minutes: 2,000 × 10 s is not.
        (
            with(
                "providerOptions",
                json!({"tokens": 2000, "latencyMs": 10_000}),
            ),
            422,
            "invalid_provider_options",
        ),
        (
            with("providerOptions", json!({"latencyMs": -1})),
            422,
            "invalid_provider_options",
        ),
        (with("description", json!("a\u{0}b")), 400, "invalid_text"),
        (with("selectedAgents", json!("qa")), 422, "invalid_body"),
        (
            with("description", json!("x".repeat(20_001))),
            413,
            "body_too_large",
        ),
    ];
    for (body, status, code) in cases {
        assert_error(app.post("/api/tasks", &token, &body).await, status, code).await;
    }
    let malformed = app
        .client
        .post(format!("{}/api/tasks", app.url(0)))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"description\": \"d\", ")
        .send()
        .await
        .unwrap();
    assert_error(malformed, 400, "invalid_json").await;
    let not_json = app
        .client
        .post(format!("{}/api/tasks", app.url(0)))
        .bearer_auth(&token)
        .body("description=d")
        .send()
        .await
        .unwrap();
    assert_error(not_json, 415, "unsupported_media_type").await;
    assert_error(
        app.post(
            "/api/agents/execute/stream",
            &token,
            &with("selectedAgents", json!([])),
        )
        .await,
        422,
        "no_agents",
    )
    .await;
    assert_error(
        app.post(
            "/api/agents/execute",
            &token,
            &with("provider", json!("nope")),
        )
        .await,
        422,
        "unknown_provider",
    )
    .await;

    assert_eq!(
        task_count(&app, &token).await,
        0,
        "no bad request stored a task"
    );
    // And the process still serves.
    app.submit(&token, &ok).await;
    assert_eq!(task_count(&app, &token).await, 1);
}

async fn auth_is_required_and_checked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let missing = app
        .client
        .get(format!("{}/api/tasks", app.url(0)))
        .send()
        .await
        .unwrap();
    assert_error(missing, 401, "unauthorized").await;
    let forged = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIwMWEyMGIyNS1hYzgzLTc0NmUtYTljMS0wN2ZmM2NkY2NjZGIiLCJleHAiOjQ3OTU0OTc3NDgsImlhdCI6MTc5NTQ4MzM0OCwic2NvcGUiOiJzZXNzaW9uIn0.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert_error(app.get("/api/agents", forged).await, 401, "unauthorized").await;
    assert_error(
        app.get("/api/agents", "not-a-jwt").await,
        401,
        "unauthorized",
    )
    .await;
    let wrong_scheme = app
        .client
        .get(format!("{}/api/agents", app.url(0)))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_error(wrong_scheme, 401, "unauthorized").await;
    let body = json!({"description": "d", "selectedAgents": ["qa"]});
    let anonymous = app
        .client
        .post(format!("{}/api/tasks", app.url(0)))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(anonymous, 401, "unauthorized").await;
    let unknown = app
        .client
        .get(format!("{}/api/nothing", app.url(0)))
        .send()
        .await
        .unwrap();
    assert_error(unknown, 404, "not_found").await;
}

async fn another_users_task_is_not_found(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user().await;
    let mallory = app.user().await;
    let task_id = app
        .submit(&alice, &json!({"description": "secret plan", "selectedAgents": ["qa"], "provider": "simulated"}))
        .await;
    let missing = uuid::Uuid::now_v7();
    for id in [task_id.to_string(), missing.to_string()] {
        assert_error(
            app.get(&format!("/api/tasks/{id}"), &mallory).await,
            404,
            "task_not_found",
        )
        .await;
        assert_error(
            app.get(&format!("/api/tasks/{id}/events"), &mallory).await,
            404,
            "task_not_found",
        )
        .await;
    }
    assert_error(
        app.get("/api/tasks/not-a-uuid", &mallory).await,
        404,
        "task_not_found",
    )
    .await;
    let list: Value = app.get("/api/tasks", &mallory).await.json().await.unwrap();
    assert!(list["tasks"].as_array().unwrap().is_empty());
    // Alice's task is untouched.
    assert_eq!(
        app.get(&format!("/api/tasks/{task_id}"), &alice)
            .await
            .status(),
        200
    );
}

async fn bad_cursors_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let task_id = app
        .submit(
            &token,
            &json!({"description": "d", "selectedAgents": ["qa"], "provider": "simulated",
                               "providerOptions": {"latencyMs": 0, "tokens": 2}}),
        )
        .await;
    let view = app.wait_finished(&token, task_id).await;
    let last = view["lastSeq"].as_u64().unwrap();
    for bad in ["abc", "-1", "1.5", ""] {
        let r = app
            .events_request(0, &token, task_id)
            .header("Last-Event-ID", bad)
            .send()
            .await
            .unwrap();
        assert_error(r, 400, "invalid_cursor").await;
    }
    let r = app
        .events_request(0, &token, task_id)
        .header("Last-Event-ID", (last + 1).to_string())
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "cursor_out_of_range").await;
    let r = app
        .events_request(0, &token, task_id)
        .query(&[("after", "x")])
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_cursor").await;
    // The log is unchanged by all of it.
    let again = app.wait_finished(&token, task_id).await;
    assert_eq!(again["lastSeq"], last);
}

async fn idempotency_key_returns_the_same_task(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let body = json!({"description": "once", "selectedAgents": ["qa"], "provider": "simulated"});
    let send = |body: Value, key: &'static str| {
        let request = app
            .client
            .post(format!("{}/api/tasks", app.url(1)))
            .bearer_auth(&token)
            .header("Idempotency-Key", key)
            .json(&body);
        async move { request.send().await.unwrap() }
    };
    // A double click: both requests in flight at once.
    let (a, b) = tokio::join!(send(body.clone(), "click-1"), send(body.clone(), "click-1"));
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (202, 202));
    let a: Value = a.json().await.unwrap();
    let b: Value = b.json().await.unwrap();
    assert_eq!(a["taskId"], b["taskId"]);
    let c: Value = send(body.clone(), "click-1").await.json().await.unwrap();
    assert_eq!(a["taskId"], c["taskId"]);
    assert_eq!(task_count(&app, &token).await, 1);

    let mut changed = body.clone();
    changed["description"] = json!("something else");
    assert_error(
        send(changed, "click-1").await,
        422,
        "idempotency_key_reused",
    )
    .await;
    // The same key from another user is another task.
    let other = app.user().await;
    let r = app
        .client
        .post(format!("{}/api/tasks", app.url(0)))
        .bearer_auth(&other)
        .header("Idempotency-Key", "click-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    let d: Value = r.json().await.unwrap();
    assert_ne!(a["taskId"], d["taskId"]);
    assert_eq!(task_count(&app, &token).await, 1);
}

async fn accounts_refuse_bad_and_duplicate_registrations(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let url = format!("{}/api/auth/register", app.url(0));
    let cases = [
        (
            json!({"email": "not-an-email", "password": "long enough"}),
            422,
            "invalid_email",
        ),
        (
            json!({"email": "a@b.co", "password": "short"}),
            422,
            "invalid_password",
        ),
        (json!({"password": "long enough"}), 422, "invalid_email"),
    ];
    for (body, status, code) in cases {
        assert_error(
            app.client.post(&url).json(&body).send().await.unwrap(),
            status,
            code,
        )
        .await;
    }
    app.register("Dup@Example.com").await;
    let again = app
        .client
        .post(&url)
        .json(&json!({"email": "dup@example.com", "password": "another password"}))
        .send()
        .await
        .unwrap();
    assert_error(again, 409, "email_taken").await;
    let login = format!("{}/api/auth/login", app.url(1));
    let wrong = app
        .client
        .post(&login)
        .json(&json!({"email": "dup@example.com", "password": "wrong password"}))
        .send()
        .await
        .unwrap();
    assert_error(wrong, 401, "unauthorized").await;
    let right = app
        .client
        .post(&login)
        .json(&json!({"email": "DUP@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let token: Value = right.json().await.unwrap();
    assert_eq!(
        app.get("/api/agents", token["token"].as_str().unwrap())
            .await
            .status(),
        200
    );
}

both_backends!(streams_past_the_limit_are_refused_and_change_nothing);

async fn streams_past_the_limit_are_refused_and_change_nothing(backend: Backend) {
    let mut tweaks = crate::helpers::Tweaks::default();
    tweaks.api.max_streams = 2;
    let app = TestApp::spawn_with(backend, tweaks).await;
    let token = app.user().await;
    let slow = json!({"description": "d", "selectedAgents": ["qa"], "provider": "simulated",
                      "providerOptions": {"latencyMs": 200, "tokens": 20}});
    let task_id = app.submit(&token, &slow).await;
    let first = app.events_request(0, &token, task_id).send().await.unwrap();
    let second = app.events_request(0, &token, task_id).send().await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );

    let third = app.events_request(0, &token, task_id).send().await.unwrap();
    assert_error(third, 503, "unavailable").await;
    let streamed_submit = app.post("/api/agents/execute/stream", &token, &slow).await;
    assert_error(streamed_submit, 503, "unavailable").await;
    assert_eq!(
        task_count(&app, &token).await,
        1,
        "a refused stream submitted nothing"
    );

    drop(first);
    // The freed place is taken back once the server notices the client left.
    let mut reopened = None;
    for _ in 0..50 {
        let r = app.events_request(0, &token, task_id).send().await.unwrap();
        if r.status() == 200 {
            reopened = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        reopened.is_some(),
        "a stream place frees up when its client leaves"
    );
}

async fn an_operator_can_turn_the_simulated_provider_off(backend: Backend) {
    let mut tweaks = Tweaks::default();
    tweaks.providers.simulated = false;
    let app = TestApp::spawn_with(backend, tweaks).await;
    let token = app.user().await;
    let providers: Value = app.get_json("/api/providers", &token).await;
    let simulated = providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "simulated")
        .expect("the catalogue still names it");
    assert_eq!(simulated["configured"], false, "{providers}");
    let named = json!({"description": "d", "selectedAgents": ["qa"], "provider": "simulated"});
    let unnamed = json!({"description": "d", "selectedAgents": ["qa"]});
    for body in [named, unnamed] {
        let response = app.post("/api/tasks", &token, &body).await;
        assert_error(response, 422, "provider_not_configured").await;
    }
    assert_eq!(task_count(&app, &token).await, 0);
}

async fn a_team_larger_than_the_server_allows_is_refused(backend: Backend) {
    let mut tweaks = Tweaks::default();
    tweaks.api.max_agents_per_task = 2;
    let app = TestApp::spawn_with(backend, tweaks).await;
    let token = app.user().await;
    let team = |roles: &[&str]| json!({"description": "d", "selectedAgents": roles});
    let response = app
        .post("/api/tasks", &token, &team(&["qa", "frontend", "backend"]))
        .await;
    assert_refusal_says(response, "too_many_agents", "at most 2 agents").await;
    assert_eq!(task_count(&app, &token).await, 0);
    app.submit(&token, &team(&["qa", "frontend"])).await;
    assert_eq!(task_count(&app, &token).await, 1);
}

async fn a_simulated_answer_longer_than_the_server_allows_is_refused(backend: Backend) {
    let mut tweaks = Tweaks::default();
    tweaks.api.simulated_max_answer_secs = 1;
    let app = TestApp::spawn_with(backend, tweaks).await;
    let token = app.user().await;
    let task = |options: Value| {
        json!({"description": "d", "selectedAgents": ["qa"], "provider": "simulated",
               "providerOptions": options})
    };
    let response = app
        .post("/api/tasks", &token, &task(json!({"latencyMs": 100})))
        .await;
    assert_refusal_says(response, "invalid_provider_options", "at most 1000 ms").await;
    assert_eq!(task_count(&app, &token).await, 0);
    // 24 chunks 40 ms apart, the defaults, take 960 ms.
    app.submit(&token, &task(json!({}))).await;
    assert_eq!(task_count(&app, &token).await, 1);
}
