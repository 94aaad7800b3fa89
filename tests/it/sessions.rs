//! Sessions end when their user says so, on both backends and on every api process:
//! signing out refuses the session's token and every stream URL minted from it, a
//! password change refuses every earlier session, and the web UI's cookie session needs
//! its CSRF token for anything that changes state. A deleted account's tokens are refused
//! and its tasks and figures go.

use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};

use std::time::Duration;

use troupe_events::sweep::SweepConfig;
use uuid::Uuid;

use crate::helpers::{Backend, TestApp, Tweaks, both_backends, wait_until};

both_backends!(
    signing_out_ends_the_session_and_its_stream_urls_everywhere,
    a_password_change_ends_every_earlier_session,
    a_cookie_session_changes_nothing_without_its_csrf_token,
    a_deleted_account_is_signed_out_everywhere_and_its_tasks_go,
);

fn task() -> Value {
    json!({
        "description": "Write a haiku",
        "selectedAgents": ["tech-lead"],
        "executionMode": "sequential",
        "provider": "simulated",
        "providerOptions": {"latencyMs": 0, "tokens": 1},
    })
}

/// The status of `GET path` as the holder of `token`, on api `instance`.
async fn status_on(app: &TestApp, instance: usize, path: &str, token: &str) -> u16 {
    app.client
        .get(format!("{}{path}", app.url(instance)))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn login(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/api/auth/login", app.url(0)))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn token_of(response: reqwest::Response) -> String {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    body["token"].as_str().unwrap().to_string()
}

async fn signing_out_ends_the_session_and_its_stream_urls_everywhere(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let email = format!("out-{}@example.com", uuid::Uuid::now_v7().simple());
    let first = app.register(&email).await;
    let second = token_of(login(&app, &email, "correct horse battery").await).await;
    let accepted: Value = app
        .post("/api/tasks", &first, &task())
        .await
        .json()
        .await
        .unwrap();
    let task_id = accepted["taskId"].as_str().unwrap();
    let stream_url = accepted["streamUrl"].as_str().unwrap().to_string();
    app.wait_finished(&first, task_id.parse().unwrap()).await;
    let stream = |instance: usize| {
        let url = format!("{}{stream_url}", app.url(instance));
        let client = app.client.clone();
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(stream(0).await, 200);

    let out = app.post("/api/auth/logout", &first, &json!({})).await;
    assert_eq!(out.status(), 204);
    let cleared: Vec<_> = out.headers().get_all(SET_COOKIE).iter().collect();
    assert_eq!(cleared.len(), 2);
    assert!(
        cleared
            .iter()
            .all(|c| c.to_str().unwrap().contains("Max-Age=0"))
    );

    let last = app.urls.len() - 1;
    for instance in [0, last] {
        assert_eq!(status_on(&app, instance, "/api/tasks", &first).await, 401);
        assert_eq!(
            stream(instance).await,
            401,
            "the stream URL of an ended session"
        );
        // The other session of the same account goes on.
        assert_eq!(status_on(&app, instance, "/api/tasks", &second).await, 200);
    }
    let again = app.post("/api/auth/logout", &first, &json!({})).await;
    assert_eq!(
        again.status(),
        401,
        "an ended session cannot sign out twice"
    );
}

async fn change_password(
    app: &TestApp,
    token: &str,
    current: &str,
    new: &str,
) -> reqwest::Response {
    app.post(
        "/api/auth/password",
        token,
        &json!({"currentPassword": current, "newPassword": new}),
    )
    .await
}

async fn a_password_change_ends_every_earlier_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let email = format!("pw-{}@example.com", uuid::Uuid::now_v7().simple());
    let old_password = "correct horse battery";
    let new_password = "a brand new passphrase";
    let first = app.register(&email).await;
    let second = token_of(login(&app, &email, old_password).await).await;

    let wrong = change_password(&app, &first, "not the password", new_password).await;
    assert_eq!(wrong.status(), 403);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["code"], "wrong_password");
    let short = change_password(&app, &first, old_password, "short").await;
    assert_eq!(short.status(), 422);
    // Neither refusal changed anything.
    assert_eq!(status_on(&app, 0, "/api/tasks", &second).await, 200);
    assert_eq!(login(&app, &email, old_password).await.status(), 200);

    let changed = token_of(change_password(&app, &first, old_password, new_password).await).await;
    for instance in [0, app.urls.len() - 1] {
        assert_eq!(status_on(&app, instance, "/api/tasks", &first).await, 401);
        assert_eq!(status_on(&app, instance, "/api/tasks", &second).await, 401);
        assert_eq!(status_on(&app, instance, "/api/tasks", &changed).await, 200);
    }
    assert_eq!(login(&app, &email, old_password).await.status(), 401);
    assert_eq!(login(&app, &email, new_password).await.status(), 200);
}

async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// `name=value` of a `Set-Cookie` named `name`, and its attributes.
fn set_cookie<'r>(response: &'r reqwest::Response, name: &str) -> (&'r str, &'r str) {
    let line = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie"));
    line.split_once(';').unwrap()
}

async fn a_cookie_session_changes_nothing_without_its_csrf_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let email = format!("ck-{}@example.com", uuid::Uuid::now_v7().simple());
    app.register(&email).await;
    let signed_in = login(&app, &email, "correct horse battery").await;
    let (session, attributes) = set_cookie(&signed_in, "troupe_session");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attributes.contains(attribute), "{attributes}");
    }
    assert!(!attributes.contains("Secure"), "plain HTTP: {attributes}");
    let (csrf_cookie, attributes) = set_cookie(&signed_in, "troupe_csrf");
    assert!(
        !attributes.contains("HttpOnly"),
        "the page reads it: {attributes}"
    );
    let session = session.to_string();
    let csrf = csrf_cookie.split_once('=').unwrap().1.to_string();

    let over_tls = app
        .client
        .post(format!("{}/api/auth/login", app.url(0)))
        .header("x-forwarded-proto", "https")
        .json(&json!({"email": email, "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert!(set_cookie(&over_tls, "troupe_session").1.contains("Secure"));
    let (other_session, _) = set_cookie(&over_tls, "troupe_csrf");
    let other_csrf = other_session.split_once('=').unwrap().1.to_string();

    let with_cookie = |method: reqwest::Method, path: &str| {
        app.client
            .request(method, format!("{}{path}", app.url(0)))
            .header(COOKIE, format!("theme=dark; {session}"))
    };
    let me = json_of(with_cookie(reqwest::Method::GET, "/api/auth/session")).await;
    assert_eq!(me["email"], email.as_str());
    // Minted again at each ask, so not the cookie's bytes; any of the session's serves.
    let csrf_of_session = me["csrfToken"].as_str().unwrap().to_string();

    for (header, why) in [
        (None, "no token"),
        (Some(&other_csrf), "another session's token"),
    ] {
        let mut request = with_cookie(reqwest::Method::POST, "/api/tasks").json(&task());
        if let Some(token) = header {
            request = request.header("x-csrf-token", token);
        }
        let refused = request.send().await.unwrap();
        assert_eq!(refused.status(), 403, "{why}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "csrf_token_invalid", "{why}");
    }
    let listed = json_of(with_cookie(reqwest::Method::GET, "/api/tasks")).await;
    assert_eq!(
        listed["tasks"],
        json!([]),
        "a refused submit stores nothing"
    );

    let accepted = with_cookie(reqwest::Method::POST, "/api/tasks")
        .header("x-csrf-token", &csrf)
        .json(&task())
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);

    let out = with_cookie(reqwest::Method::POST, "/api/auth/logout")
        .header("x-csrf-token", &csrf_of_session)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let after = with_cookie(reqwest::Method::GET, "/api/tasks")
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
}

async fn delete_account(app: &TestApp, token: &str, password: &str) -> (u16, Value) {
    let body = json!({"password": password});
    app.send(
        reqwest::Method::DELETE,
        0,
        token,
        "/api/auth/account",
        Some(&body),
    )
    .await
}

async fn a_deleted_account_is_signed_out_everywhere_and_its_tasks_go(backend: Backend) {
    let mut tweaks = Tweaks::default();
    tweaks.worker.sweep = SweepConfig {
        every: Duration::from_millis(100),
        retain_ended: None,
    };
    let app = TestApp::spawn_with(backend, tweaks).await;
    let email = format!("gone-{}@example.com", Uuid::now_v7().simple());
    let token = app.register(&email).await;
    let user_id: Uuid = app.get_json("/api/auth/session", &token).await["userId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let ended = app.submit(&token, &task()).await;
    app.wait_finished(&token, ended).await;
    let mut running = task();
    running["providerOptions"] = json!({"latencyMs": 200, "tokens": 300});
    let running = app.submit(&token, &running).await;
    app.wait_view(&token, running, "running", |view| {
        view["status"] == "running"
    })
    .await;

    let (status, body) = delete_account(&app, &token, "not the password").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("wrong_password"))
    );
    assert_eq!(
        status_on(&app, 0, "/api/tasks", &token).await,
        200,
        "a refusal changes nothing"
    );
    let (status, body) = delete_account(&app, &token, "correct horse battery").await;
    assert_eq!(status, 204, "{body}");

    for instance in [0, app.urls.len() - 1] {
        for path in ["/api/tasks", "/api/auth/session"] {
            assert_eq!(status_on(&app, instance, path, &token).await, 401, "{path}");
        }
    }
    assert_eq!(
        login(&app, &email, "correct horse battery").await.status(),
        401
    );
    // The email is free at once: a new account, which sees nothing of the old one.
    let fresh = app.register(&email).await;
    let listed = app.get_json("/api/tasks", &fresh).await;
    assert_eq!(listed["tasks"], json!([]));

    let store = app.store().await;
    wait_until("the sweep of the deleted account and its tasks", || async {
        store.user(user_id).await.unwrap().is_none()
            && store.task(ended).await.unwrap().is_none()
            && store.task(running).await.unwrap().is_none()
    })
    .await;
}
