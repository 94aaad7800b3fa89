//! The account and submit endpoints under a flood, on both backends: sign-ins are limited
//! per account from any address and per client address, submits per user, each with 429,
//! `Retry-After` and a code that says which limit; the client's address comes from the
//! trusted proxy's header when one is configured.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, Tweaks, both_backends};

both_backends!(
    sign_ins_are_limited_per_account_from_any_address,
    sign_ups_are_limited_per_address_as_the_proxy_gives_it,
    submits_are_limited_per_user,
);

async fn post_json(
    app: &TestApp,
    path: &str,
    body: &Value,
    forwarded_for: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut request = app.client.post(format!("{}{path}", app.url(0))).json(body);
    if let Some(address) = forwarded_for {
        request = request.header("x-forwarded-for", address);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (
        status,
        retry_after,
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn sign_ins_are_limited_per_account_from_any_address(backend: Backend) {
    let mut tweaks = Tweaks::default();
    tweaks.api.auth_per_account_per_minute = 3;
    tweaks.api.client_ip_header = Some("x-forwarded-for".parse().unwrap());
    let app = TestApp::spawn_with(backend, tweaks).await;
    let victim = json!({"email": "victim@example.com", "password": "the right password"});
    let (status, _, _) = post_json(&app, "/api/auth/register", &victim, Some("10.0.0.1")).await;
    assert_eq!(status, 201);

    let guess = json!({"email": "VICTIM@example.com", "password": "a wrong guess"});
    for i in 0..3 {
        let from = format!("192.0.2.{i}");
        let (status, _, body) = post_json(&app, "/api/auth/login", &guess, Some(&from)).await;
        assert_eq!(status, 401, "guess {i}: {body}");
    }
    // A fourth, from yet another address, and even the right password: the account's limit.
    for body in [&guess, &victim] {
        let (status, retry_after, answer) =
            post_json(&app, "/api/auth/login", body, Some("198.51.100.9")).await;
        assert_eq!(status, 429, "{answer}");
        assert_eq!(answer["error"]["code"], "too_many_attempts_account");
        let wait: u64 = retry_after.expect("Retry-After").parse().unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
    }
    // Other accounts are not held back.
    let other = json!({"email": "other@example.com", "password": "another password"});
    assert_eq!(
        post_json(&app, "/api/auth/register", &other, Some("10.0.0.2"))
            .await
            .0,
        201
    );
    assert_eq!(
        post_json(&app, "/api/auth/login", &other, Some("10.0.0.2"))
            .await
            .0,
        200
    );
}

async fn sign_ups_are_limited_per_address_as_the_proxy_gives_it(backend: Backend) {
    let mut tweaks = Tweaks::default();
    tweaks.api.auth_per_address_per_minute = 4;
    tweaks.api.client_ip_header = Some("x-forwarded-for".parse().unwrap());
    let app = TestApp::spawn_with(backend, tweaks).await;
    let account =
        |i: u32| json!({"email": format!("flood{i}@example.com"), "password": "a good password"});
    // The proxy appends the address it saw: the last value counts, not what the client wrote.
    let spoofed = |i: u32| format!("203.0.113.{i}, 192.0.2.50");
    for i in 0..4 {
        let (status, _, body) =
            post_json(&app, "/api/auth/register", &account(i), Some(&spoofed(i))).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, retry_after, body) =
        post_json(&app, "/api/auth/register", &account(4), Some(&spoofed(4))).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_attempts_address");
    assert!(retry_after.is_some());
    let (status, _, _) = post_json(&app, "/api/auth/login", &account(0), Some("192.0.2.50")).await;
    assert_eq!(status, 429, "sign-ins from that address too");
    // Another address is not held back; a request without the header is refused.
    assert_eq!(
        post_json(&app, "/api/auth/register", &account(5), Some("192.0.2.51"))
            .await
            .0,
        201
    );
    let (status, _, body) = post_json(&app, "/api/auth/register", &account(6), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_client_address"))
    );
    // Nothing was stored for the refused sign-ups.
    assert_eq!(
        post_json(&app, "/api/auth/login", &account(4), Some("192.0.2.52"))
            .await
            .0,
        401
    );
}

async fn submits_are_limited_per_user(backend: Backend) {
    let mut tweaks = Tweaks::default();
    tweaks.api.submits_per_minute = 3;
    let app = TestApp::spawn_with(backend, tweaks).await;
    let (flooder, other) = (app.user().await, app.user().await);
    let body = json!({"description": "d", "selectedAgents": ["qa"], "provider": "simulated",
                      "providerOptions": {"latencyMs": 0, "tokens": 1}});
    for _ in 0..3 {
        assert_eq!(app.post("/api/tasks", &flooder, &body).await.status(), 202);
    }
    let refused = app.post("/api/tasks", &flooder, &body).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "too_many_submits", "{error}");
    let streamed = app.post("/api/agents/execute", &flooder, &body).await;
    assert_eq!(streamed.status(), 429, "every submit endpoint counts");
    assert_eq!(
        app.post("/api/tasks", &other, &body).await.status(),
        202,
        "others are not held back"
    );
    let listed = app.get_json("/api/tasks", &flooder).await;
    assert_eq!(
        listed["tasks"].as_array().unwrap().len(),
        3,
        "a refused submit stores nothing"
    );
}
