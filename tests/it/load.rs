//! troupe-load against real servers: each mode at a small size, through the library's
//! functions, on a `troupe` process (embedded) with `TROUPE_TOKEN_FLUSH_MS=10`, and the
//! fan-out once more on a distributed Troupe.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use serde_json::{Value, json};
use troupe_load::{
    FanoutOptions, FanoutReport, LatencyOptions, ReplayOptions, Target, ThroughputOptions,
};

use crate::helpers::{
    Backend, TestApp, Tweaks, exported_log, troupe_command, wait_until_ready, worker_config,
};

/// A `troupe` process on a fresh data directory and a free port; killed on drop. Its log
/// is kept (and its path printed) when the test fails.
struct Server {
    child: Child,
    url: String,
    dir: PathBuf,
    log: PathBuf,
}

impl Server {
    async fn start() -> Server {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("troupe-load-{id}"));
        let log = std::env::temp_dir().join(format!("troupe-load-{id}.log"));
        let (mut command, url) = troupe_command(&dir);
        let child = command
            .env("TROUPE_TOKEN_FLUSH_MS", "10")
            // A file, not a pipe: nobody reads a pipe, and a full one would stall the
            // server under load.
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let server = Server {
            child,
            url,
            dir,
            log,
        };
        wait_until_ready(&reqwest::Client::new(), &server.url).await;
        server
    }

    /// The server as troupe-load sees it, with its pid so resources are measured.
    fn target(&self) -> Target {
        Target {
            pid: Some(self.child.id()),
            ..Target::new(&self.url).unwrap()
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        if std::thread::panicking() {
            eprintln!("the server's log: {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

async fn register(url: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{url}/api/auth/register"))
        .json(
            &json!({"email": format!("u{}@example.com", uuid::Uuid::new_v4().simple()),
                      "password": "correct horse battery"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The task's log from the NDJSON export.
async fn log(url: &str, token: &str, task_id: &str) -> Vec<Value> {
    exported_log(&reqwest::Client::new(), url, token, task_id).await
}

/// Facts every measured resource report must have when the server's pid was given.
fn assert_server_measured(resources: &troupe_load::resources::Resources) {
    let server = resources.server.expect("the server was measured");
    assert!(server.rss_before_kib > 0 && server.rss_after_kib > 0);
    assert!(server.rss_peak_kib >= server.rss_before_kib.max(server.rss_after_kib));
    assert!(server.cpu_secs >= 0.0);
    assert!(resources.client.rss_peak_kib > 0);
}

fn assert_ordered(p: &troupe_load::stats::Percentiles) {
    assert!(p.count > 0);
    assert!(p.p50_ms <= p.p90_ms && p.p90_ms <= p.p99_ms && p.p99_ms <= p.max_ms);
    assert!(p.max_ms > 0.0, "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_times_every_run_on_one_connection() {
    let server = Server::start().await;

    let report = troupe_load::latency(
        &server.target(),
        &LatencyOptions {
            runs: 20,
            warmup: 3,
        },
    )
    .await
    .unwrap();

    assert!(report.is_clean(), "{report}");
    assert_eq!(report.runs, 20);
    assert_eq!(report.agents.len(), 3);
    let latency = report.latency.expect("percentiles");
    assert_eq!(latency.count, 20);
    assert_ordered(&latency);
    // task_created, then per agent at least start, one token and complete, task_complete.
    assert!(report.events_per_run >= 2 + 3 * 3, "{report}");
    assert_server_measured(&report.resources);
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["latency"]["p99Ms"].is_number(), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_counts_tasks_and_events_without_errors() {
    let server = Server::start().await;

    let report = troupe_load::throughput(
        &server.target(),
        &ThroughputOptions {
            clients: 2,
            duration: Duration::from_secs(2),
        },
    )
    .await
    .unwrap();

    assert!(report.is_clean(), "{report}");
    assert_eq!(report.errors(), 0);
    assert!(report.tasks > 0 && report.tasks_per_sec > 0.0, "{report}");
    let latency = report.latency.expect("percentiles");
    assert_eq!(latency.count, report.tasks);
    assert_ordered(&latency);
    // The same task every time: every stream carried the same number of events.
    assert_eq!(report.events % report.tasks, 0, "{report}");
    assert!(report.events / report.tasks >= 2 + 3 * 3, "{report}");
    assert!(report.elapsed_secs >= 2.0);
    assert_server_measured(&report.resources);
}

/// The fan-out checks that hold on any server: every watcher got the whole log in order.
async fn assert_fanout_clean(report: &FanoutReport, url: &str, token: &str, watchers: u64) {
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.connected, watchers);
    assert_eq!(report.complete_watchers, watchers, "{report}");
    assert_eq!(
        (
            report.order_errors,
            report.connect_errors,
            report.stream_errors
        ),
        (0, 0, 0)
    );
    let log = log(url, token, &report.task_id).await;
    assert_eq!(report.log_events, log.len() as u64);
    assert_eq!(log.last().unwrap()["type"], "task_complete");
    assert_eq!(report.events_delivered, watchers * report.log_events);
    // 60 chunks, one every 50 ms, flushed every 10 ms: about one event each.
    let tokens = log.iter().filter(|e| e["type"] == "agent_token").count() as u64;
    assert_eq!(report.token_events, tokens);
    assert!(tokens >= 40, "{report}");
    assert!(report.measured_token_rate > 10.0, "{report}");
    assert!(report.live_events > 0, "{report}");
    assert_ordered(&report.latency.expect("live latencies"));
    assert!(report.join_secs.is_some());
}

fn small_fanout() -> FanoutOptions {
    FanoutOptions {
        watchers: 50,
        rate: 20,
        duration: Duration::from_secs(3),
        join: Duration::from_secs(1),
        linger: Duration::from_millis(100),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_event_to_every_watcher_in_order() {
    let server = Server::start().await;
    let token = register(&server.url).await;
    let target = Target {
        token: Some(token.clone()),
        ..server.target()
    };

    let report = troupe_load::fanout(&target, &small_fanout()).await.unwrap();

    assert_fanout_clean(&report, &server.url, &token, 50).await;
    assert_eq!(report.tokens_option, 60);
    assert_eq!(report.latency_ms_option, 50);
    assert!(report.open_files_enough);
    assert!(report.rss_at_join_kib.is_some() && report.rss_per_watcher_kib.is_some());
    assert!(report.rss_after_linger_kib.is_some());
    assert_server_measured(&report.resources);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_event_on_a_distributed_troupe() {
    let tweaks = Tweaks {
        worker: troupe_worker::WorkerConfig {
            token_flush: Duration::from_millis(10),
            ..worker_config()
        },
        ..Tweaks::default()
    };
    let app = TestApp::spawn_with(Backend::Distributed, tweaks).await;
    let token = app.user().await;
    let target = Target {
        token: Some(token.clone()),
        ..Target::new(app.url(0)).unwrap()
    };

    let report = troupe_load::fanout(&target, &small_fanout()).await.unwrap();

    assert_fanout_clean(&report, app.url(0), &token, 50).await;
    assert!(
        report.resources.server.is_none(),
        "no pid, no server figures"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reads_the_whole_log_as_sse_and_ndjson() {
    let server = Server::start().await;
    let token = register(&server.url).await;
    let target = Target {
        token: Some(token.clone()),
        ..server.target()
    };

    let report = troupe_load::replay(
        &target,
        &ReplayOptions {
            events: 200,
            task: None,
            runs: 3,
        },
    )
    .await
    .unwrap();

    assert!(report.is_clean(), "{report}");
    assert!(report.built);
    assert!(report.log_events >= 200, "{report}");
    let log = log(&server.url, &token, &report.task_id).await;
    assert_eq!(report.log_events, log.len() as u64);
    for summary in [&report.sse, &report.ndjson] {
        assert_eq!(summary.runs.len(), 3);
        assert!(summary.best_events_per_sec >= summary.median_events_per_sec);
        assert!(summary.median_events_per_sec > 0.0);
        assert!(
            summary.best_total_ms > 0.0 && summary.best_first_event_ms <= summary.best_total_ms
        );
    }
    assert_server_measured(&report.resources);

    // A log shorter than asked is refused, saying why.
    let error = troupe_load::replay(
        &target,
        &ReplayOptions {
            events: report.log_events + 1,
            task: Some(report.task_id.clone()),
            runs: 1,
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains("fewer than"), "{error}");
}
