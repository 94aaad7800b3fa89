//! No input makes a 5xx, and a refused one stores nothing: requests generated from a fixed
//! seed (proptest) with hostile strings (NUL, lone surrogates as escapes, control
//! characters, 70,000 characters), numbers (huge, negative, fractional, 1e999), nesting
//! past the parser's limit, duplicate keys, invalid UTF-8, wrong content types, and
//! malformed ids, cursors and windows in paths and query strings, on both backends; to
//! the submit and account bodies (sign-up, sign-in, password change, account deletion)
//! and every task path, deletion included.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Map, Value, json};

use crate::helpers::{Backend, TestApp, both_backends};

both_backends!(hostile_requests_get_a_4xx_and_change_nothing);

/// Requests per backend: enough to reach every kind of input several times in seconds.
const CASES: usize = 400;
/// The seed: a failure names its case, and the same run finds it again.
const SEED: [u8; 32] = *b"troupe-hostile-requests-seed-001";

/// One generated request.
#[derive(Debug, Clone)]
struct Hostile {
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\u{0}".to_string()),
        Just("a\u{0}b".to_string()),
        Just("\u{1}\u{1f}\u{7f}".to_string()),
        Just("\u{feff}\u{202e}".to_string()),
        Just("x".repeat(70_000)),
        Just(String::new()),
        Just("'; DROP TABLE tasks; --".to_string()),
        Just("../../etc/passwd".to_string()),
        Just("<script>alert(1)</script>".to_string()),
        any::<String>(),
        "[a-z-]{1,12}",
    ]
}

fn hostile_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(1e308)),
        Just(json!(u64::MAX)),
    ]
}

fn hostile_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        hostile_text().prop_map(Value::from),
        hostile_number(),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(hostile_text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid body of each endpoint that takes one, before it is made hostile.
fn valid_body(path: &str) -> Value {
    // The account endpoints get a wrong password: a change that went through would end
    // the session the test goes on with.
    if path == "/api/auth/password" {
        json!({"currentPassword": "not the password", "newPassword": "a brand new passphrase"})
    } else if path == "/api/auth/account" {
        json!({"password": "not the password"})
    } else if path.starts_with("/api/auth") {
        json!({"email": "hostile@example.com", "password": "correct horse battery"})
    } else {
        json!({"title": "Hostile", "description": "A task", "selectedAgents": ["qa"],
               "executionMode": "sequential", "provider": "simulated",
               "providerOptions": {"latencyMs": 0, "tokens": 1}})
    }
}

const FIELDS: &[&str] = &[
    "title",
    "description",
    "selectedAgents",
    "executionMode",
    "provider",
    "model",
    "providerOptions",
    "budget",
    "fallback",
    "email",
    "password",
    "currentPassword",
    "newPassword",
    "latencyMs",
];

/// A body: a valid one with fields replaced by hostile values, then perhaps mangled as
/// text (a duplicate key, nesting past the parser's limit, an escape for a lone
/// surrogate or a NUL, a byte that is not UTF-8, a cut).
fn hostile_body(path: String) -> impl Strategy<Value = Vec<u8>> {
    let edits = prop::collection::vec(
        (prop::sample::select(FIELDS), hostile_value(), any::<bool>()),
        0..3,
    );
    (edits, 0..8usize, any::<prop::sample::Index>()).prop_map(move |(edits, mangle, at)| {
        let mut body = valid_body(&path);
        for (field, value, nested) in edits {
            let target: &mut Map<String, Value> = match (nested, body.get_mut("providerOptions")) {
                (true, Some(Value::Object(options))) => options,
                _ => body.as_object_mut().unwrap(),
            };
            target.insert(field.to_string(), value);
        }
        let text = body.to_string();
        mangled(text, mangle, at)
    })
}

fn mangled(text: String, how: usize, at: prop::sample::Index) -> Vec<u8> {
    let bytes = text.into_bytes();
    match how {
        0 => {
            let mut out = b"{\"description\":\"one\",".to_vec();
            out.extend_from_slice(&bytes[1..]);
            out
        }
        1 => format!("{}{}", "[".repeat(300), "]".repeat(300)).into_bytes(),
        2 => String::from_utf8(bytes)
            .unwrap()
            .replacen("\"A task\"", "\"\\ud800\"", 1)
            .into_bytes(),
        3 => String::from_utf8(bytes)
            .unwrap()
            .replacen("\"A task\"", "\"a\\u0000b\"", 1)
            .into_bytes(),
        4 => {
            let mut out = bytes;
            let i = at.index(out.len());
            out.insert(i, 0xff);
            out
        }
        5 => bytes[..at.index(bytes.len())].to_vec(),
        _ => bytes,
    }
}

fn body_request() -> impl Strategy<Value = Hostile> {
    let paths = prop::sample::select(vec![
        // `/api/agents/execute` parses the same body, and waits for the task it accepts.
        ("POST", "/api/tasks"),
        ("POST", "/api/auth/register"),
        ("POST", "/api/auth/login"),
        ("POST", "/api/auth/password"),
        ("DELETE", "/api/auth/account"),
    ]);
    let content_types = prop::sample::select(vec![
        Some("application/json"),
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("text/plain"),
        None,
    ]);
    (paths, content_types).prop_flat_map(|((method, path), content_type)| {
        hostile_body(path.to_string()).prop_map(move |body| Hostile {
            method,
            path: path.to_string(),
            content_type,
            body,
        })
    })
}

/// A path segment or query value, percent-encoded as a client would send it.
fn hostile_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        hostile_text(),
        Just("00000000-0000-0000-0000-000000000000".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999999".to_string()),
        Just("1e3".to_string()),
    ]
    .prop_map(|s| {
        let cut: String = s.chars().take(200).collect();
        percent_encode(&cut)
    })
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn path_request() -> impl Strategy<Value = Hostile> {
    let shapes = prop::sample::select(vec![
        ("GET", "/api/tasks/{}"),
        ("GET", "/api/tasks?limit={}"),
        ("GET", "/api/tasks?before={}"),
        ("GET", "/api/tasks/{}/events?after={}"),
        ("GET", "/api/stats?hours={}"),
        ("GET", "/api/stats?days={}"),
        ("GET", "/api/usage?days={}"),
        ("POST", "/api/tasks/{}/cancel"),
        ("POST", "/api/tasks/{}/pause"),
        ("POST", "/api/tasks/{}/resume"),
        ("POST", "/api/tasks/{}/retry"),
        ("POST", "/api/tasks/{}/agents/{}/cancel"),
        ("DELETE", "/api/tasks/{}"),
    ]);
    (shapes, hostile_segment(), hostile_segment()).prop_map(|((method, shape), a, b)| Hostile {
        method,
        path: shape.replacen("{}", &a, 1).replacen("{}", &b, 1),
        content_type: None,
        body: vec![],
    })
}

fn hostile_request() -> impl Strategy<Value = Hostile> {
    prop_oneof![3 => body_request(), 2 => path_request()]
}

/// The requests of this run, from the fixed seed.
fn generated() -> Vec<Hostile> {
    let config = Config {
        cases: CASES as u32,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &SEED));
    let strategy = hostile_request();
    (0..CASES)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

/// A client that opens a connection per request: the server may close one whose body it
/// refused unread, and a pooled connection would then fail the next request.
fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

async fn send(
    client: &reqwest::Client,
    app: &TestApp,
    token: &str,
    request: &Hostile,
) -> (u16, String) {
    let url = format!("{}{}", app.url(0), request.path);
    let mut builder = match request.method {
        "POST" => client.post(&url).body(request.body.clone()),
        "DELETE" => client.delete(&url).body(request.body.clone()),
        _ => client.get(&url),
    }
    .bearer_auth(token);
    if let Some(content_type) = request.content_type {
        builder = builder.header("content-type", content_type);
    }
    match builder.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        // The server may close a connection on a request it cannot parse at all.
        Err(e) => (0, e.to_string()),
    }
}

async fn task_count(client: &reqwest::Client, app: &TestApp, token: &str) -> usize {
    let list: Value = client
        .get(format!("{}/api/tasks?limit=100", app.url(0)))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["tasks"].as_array().map_or(0, Vec::len)
}

async fn hostile_requests_get_a_4xx_and_change_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let client = fresh_connections();
    let mut tasks = task_count(&client, &app, &token).await;
    let mut refused = 0;
    for (case, request) in generated().iter().enumerate() {
        let (status, body) = send(&client, &app, &token, request).await;
        let shown = String::from_utf8_lossy(&request.body[..request.body.len().min(300)]);
        let said = format!(
            "case {case}: {} {} ({:?}) {shown} -> {status} {body}",
            request.method, request.path, request.content_type
        );
        assert!((200..500).contains(&status), "{said}");
        if status >= 400 {
            refused += 1;
            let error: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            assert!(
                error["error"]["code"].is_string(),
                "our error shape: {said}"
            );
        }
        // A refused request stores nothing; an accepted submit stores one task.
        let now = task_count(&client, &app, &token).await;
        if status < 300 && request.path == "/api/tasks" {
            assert_eq!(now, (tasks + 1).min(100), "{said}");
        } else {
            assert_eq!(now, tasks, "{said}");
        }
        tasks = now;
    }
    assert!(
        refused > CASES / 2,
        "most hostile requests are refused: {refused}"
    );
}
