//! The api takes its providers from the workers: each worker advertises in the store which
//! providers it serves (names and default models, never keys), and a task is accepted only
//! for a provider every live worker serves. The api itself holds no key and links no
//! provider client.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use troupe_worker::providers::ProviderSettings;

use crate::helpers::{Backend, TestApp, Tweaks, wait_until};

fn on(provider: &str) -> Value {
    json!({"description": "d", "selectedAgents": ["qa"], "provider": provider})
}

/// The providers `/api/providers` says can run tasks now, and the live workers.
async fn served(app: &TestApp, token: &str) -> (Vec<String>, u64) {
    let list = app.get_json("/api/providers", token).await;
    let configured = list["providers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["configured"] == true)
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    (configured, list["workers"].as_u64().unwrap())
}

async fn wait_served(app: &TestApp, token: &str, providers: &[&str], workers: u64) {
    wait_until(
        &format!("{providers:?} served by {workers} workers"),
        || async {
            served(app, token).await == (providers.iter().map(|p| p.to_string()).collect(), workers)
        },
    )
    .await;
}

async fn assert_refused(app: &TestApp, token: &str, body: &Value, says: &str) {
    let response = app.post("/api/tasks", token, body).await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "provider_not_configured", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(says), "{message}");
}

async fn task_count(app: &TestApp, token: &str) -> usize {
    let list = app.get_json("/api/tasks?limit=100", token).await;
    list["tasks"].as_array().unwrap().len()
}

/// An OpenAI-compatible provider at an address nothing listens on: enough to be served,
/// as no task here runs on it.
fn with_openai() -> ProviderSettings {
    ProviderSettings {
        openai_base_url: Some("http://127.0.0.1:9/v1".into()),
        ..ProviderSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_accepts_only_what_every_live_worker_serves() {
    let mut tweaks = Tweaks {
        workers: 0,
        ..Tweaks::default()
    };
    // Adverts live six beats: a crashed worker's expires 1.2 s after its last.
    tweaks.worker.advert_every = Duration::from_millis(200);
    let mut app = TestApp::spawn_with(Backend::Distributed, tweaks).await;
    let token = app.user().await;

    assert_eq!(served(&app, &token).await, (vec![], 0));
    assert_refused(&app, &token, &on("simulated"), "no worker is running").await;

    let (_, crash_first) = app.start_worker_serving(&with_openai()).await;
    wait_served(&app, &token, &["openai", "simulated"], 1).await;
    let list = app.get_json("/api/providers", &token).await;
    assert_eq!(list["default"], "openai", "{list}");
    assert_eq!(
        list["providers"][0]["defaultModel"], "gpt-4o-mini",
        "{list}"
    );
    app.submit(&token, &on("simulated")).await;

    // A second worker without openai: whichever worker takes a task must be able to run it.
    let (stop_second, _) = app.start_worker_serving(&ProviderSettings::default()).await;
    wait_served(&app, &token, &["simulated"], 2).await;
    assert_refused(
        &app,
        &token,
        &on("openai"),
        "not all 2 running workers serve it",
    )
    .await;
    app.submit(&token, &on("simulated")).await;

    // A worker stopping says so: what the others serve counts again at once.
    stop_second.cancel();
    wait_served(&app, &token, &["openai", "simulated"], 1).await;

    // A crashed worker says nothing: its advert lapses.
    crash_first.abort();
    wait_served(&app, &token, &[], 0).await;
    assert_refused(&app, &token, &on("simulated"), "no worker is running").await;
    assert_eq!(task_count(&app, &token).await, 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_troupe_serves_its_new_providers_at_once() {
    let mut app = TestApp::spawn(Backend::Embedded).await;
    let token = app.user().await;
    app.submit(&token, &on("simulated")).await;
    app.set_providers(ProviderSettings {
        simulated: false,
        ..with_openai()
    });
    app.restart_embedded().await;
    // The last run's advert is marked stopping: the new one alone counts.
    assert_eq!(served(&app, &token).await, (vec!["openai".into()], 1));
    assert_refused(
        &app,
        &token,
        &on("simulated"),
        "the running worker does not serve it",
    )
    .await;
    assert_eq!(task_count(&app, &token).await, 1);
    app.stop().await;
}

/// The internet-facing api cannot leak a provider key it never has: it depends on no
/// provider client, and no flag or variable of its own takes a key.
#[test]
fn the_api_links_no_provider_client_and_takes_no_key() {
    let tree = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "troupe-api",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        tree.status.success(),
        "{}",
        String::from_utf8_lossy(&tree.stderr)
    );
    let tree = String::from_utf8(tree.stdout).unwrap();
    let linked = |name: &str| tree.lines().any(|l| l.starts_with(&format!("{name} ")));
    assert!(linked("troupe-events"), "{tree}");
    for client in ["troupe-worker", "reqwest", "eventsource-stream"] {
        assert!(!linked(client), "the api links {client}");
    }

    let help = Command::new(crate::procs::workspace_binary("api"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("DATABASE_URL"), "{help}");
    for key in ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL"] {
        assert!(!help.contains(key), "the api takes {key}");
    }
}
