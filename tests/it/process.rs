//! The `troupe` binary as an operator runs it: signals and the data directory's owner.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{troupe_command, wait_until_ready};

/// A `troupe` process on a fresh data directory and a free port, killed if a test fails.
struct Troupe {
    child: Child,
    url: String,
    /// Removed on drop by the process that created it only.
    owned_dir: Option<std::path::PathBuf>,
}

impl Troupe {
    fn start(data_dir: &std::path::Path, owns_dir: bool) -> Troupe {
        let (mut command, url) = troupe_command(data_dir);
        let child = command.stderr(Stdio::piped()).spawn().unwrap();
        Troupe {
            child,
            url,
            owned_dir: owns_dir.then(|| data_dir.to_path_buf()),
        }
    }

    async fn wait_ready(&self, client: &reqwest::Client) {
        wait_until_ready(client, &self.url).await;
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit; its exit code and how long it took.
    async fn exit(&mut self, within: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        while started.elapsed() < within {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("troupe did not exit within {within:?}");
    }
}

impl Drop for Troupe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.owned_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn fresh_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("troupe-process-{}", uuid::Uuid::new_v4().simple()))
}

async fn token(client: &reqwest::Client, url: &str) -> String {
    let r: Value = client
        .post(format!("{url}/api/auth/register"))
        .json(&json!({"email": "op@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["token"].as_str().unwrap().to_string()
}

/// A client waiting on `POST /api/agents/execute` for a task of several minutes.
async fn a_client_waits(client: &reqwest::Client, troupe: &Troupe) -> tokio::task::JoinHandle<u16> {
    let token = token(client, &troupe.url).await;
    let request = client
        .post(format!("{}/api/agents/execute", troupe.url))
        .bearer_auth(token)
        .json(
            &json!({"description": "long", "selectedAgents": ["qa"], "provider": "simulated",
                      "providerOptions": {"latencyMs": 10000, "tokens": 30}}),
        )
        .send();
    let waiting = tokio::spawn(async move { request.await.unwrap().status().as_u16() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiting
}

#[tokio::test]
async fn ctrl_c_exits_promptly_while_a_client_waits() {
    let client = reqwest::Client::new();
    let mut troupe = Troupe::start(&fresh_dir(), true);
    troupe.wait_ready(&client).await;
    let waiting = a_client_waits(&client, &troupe).await;
    troupe.signal("INT");
    let (code, _) = troupe.exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "a clean exit");
    assert_eq!(
        waiting.await.unwrap(),
        503,
        "the waiting client is told, not left hanging"
    );
}

#[tokio::test]
async fn a_second_troupe_on_one_data_directory_refuses_to_start() {
    let client = reqwest::Client::new();
    let dir = fresh_dir();
    let first = Troupe::start(&dir, true);
    first.wait_ready(&client).await;

    let mut second = Troupe::start(&dir, false);
    let (code, _) = second.exit(Duration::from_secs(10)).await;
    assert_ne!(code, Some(0));
    let mut stderr = String::new();
    std::io::Read::read_to_string(second.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("another troupe is already running on the data directory"),
        "{stderr}"
    );
    // The first one is untouched.
    assert!(
        client
            .get(format!("{}/readyz", first.url))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
}
