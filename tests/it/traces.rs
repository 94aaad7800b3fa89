//! One trace per task, across processes: the `api` and `worker` binaries, distributed on
//! PostgreSQL and NATS, export their spans over OTLP/HTTP to a receiver this test runs; the
//! submit's request span, its enqueue, the worker's run, its agents, their provider calls
//! and the appends must form one trace with the right parents. The same through the
//! embedded `troupe` binary's in-process queue.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use prost::Message;
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

use crate::helpers::{
    create_schema, drop_remote, exported_log, nats_url, schema_database_url, troupe_command,
    wait_until_ready,
};
use crate::procs::{Proc, free_port, workspace_binary};

const JWT_SECRET: &str = "traces-test-jwt-secret-0123456789abcdef";

/// A span as the receiver got it: ids in hex, attributes as text.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, String>,
}

impl Received {
    fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// An OTLP/HTTP trace receiver (protobuf) on a free port.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Starts it; returns its base URL, what `OTEL_EXPORTER_OTLP_ENDPOINT` takes.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/v1/traces", post(receive))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

async fn receive(
    State(receiver): State<Receiver>,
    body: Bytes,
) -> impl axum::response::IntoResponse {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let mut spans = receiver.spans.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref()))
            .unwrap_or_default();
        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
            spans.push(Received {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                attributes: span
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                    .collect(),
            });
        }
    }
    (
        [("content-type", "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An `api` and a `worker` process on a schema and a NATS prefix of their own. Dropped:
/// both killed, the schema and streams deleted; when the test failed, the logs printed.
struct Processes {
    dir: PathBuf,
    api: Proc,
    worker: Proc,
    api_url: String,
    schema: String,
    prefix: String,
}

impl Processes {
    async fn start(otlp_endpoint: &str) -> Processes {
        let id = Uuid::new_v4().simple().to_string();
        let (schema, prefix) = (format!("it_{id}"), format!("it_{id}"));
        create_schema(&schema).await;
        let dir = std::env::temp_dir().join(format!("troupe-traces-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let since = Instant::now();
        let mut processes = Processes {
            api: Proc::new("api", &dir),
            worker: Proc::new("worker", &dir),
            api_url: format!("http://127.0.0.1:{port}"),
            dir,
            schema,
            prefix,
        };
        let mut api = processes.command("api", otlp_endpoint);
        api.env("TROUPE_JWT_SECRET", JWT_SECRET)
            .env("TROUPE_BIND", format!("127.0.0.1:{port}"));
        processes.api.spawn(api, since);
        let worker = processes.command("worker", otlp_endpoint);
        processes.worker.spawn(worker, since);
        processes
    }

    /// A clean environment, nothing of ours leaking in, and no `RUST_LOG`: the spans must
    /// pass the default filter.
    fn command(&self, binary: &str, otlp_endpoint: &str) -> Command {
        let mut command = Command::new(workspace_binary(binary));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .env("DATABASE_URL", schema_database_url(&self.schema))
            .env("NATS_URL", nats_url())
            .env("TROUPE_NATS_PREFIX", &self.prefix)
            .env("TROUPE_DATA_DIR", self.dir.join("data"))
            .env("TROUPE_DB_MAX_CONNECTIONS", "4")
            .env("TROUPE_TOKEN_FLUSH_MS", "50")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_endpoint)
            // Batches go out every 100 ms instead of every 5 s.
            .env("OTEL_BSP_SCHEDULE_DELAY", "100");
        command
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.api.kill_now();
        self.worker.kill_now();
        if std::thread::panicking() {
            for proc in [&self.api, &self.worker] {
                eprintln!("----- {} log -----\n{}", proc.name, proc.last_run_output());
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        drop_remote(&self.schema, &self.prefix);
    }
}

/// The `troupe` binary, embedded (SQLite, in-process bus and queue) on a data dir of its
/// own. Dropped: killed, the dir removed; when the test failed, its log printed.
struct Embedded {
    dir: PathBuf,
    troupe: Proc,
    url: String,
}

impl Embedded {
    fn start(otlp_endpoint: &str) -> Embedded {
        let dir = std::env::temp_dir().join(format!("troupe-traces-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (mut command, url) = troupe_command(&dir.join("data"));
        command
            .env_remove("RUST_LOG")
            .env_remove("TROUPE_LOG_FORMAT")
            .env("NO_COLOR", "1")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100");
        let mut troupe = Proc::new("troupe", &dir);
        troupe.spawn(command, Instant::now());
        Embedded { dir, troupe, url }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.troupe.kill_now();
        if std::thread::panicking() {
            eprintln!("----- troupe log -----\n{}", self.troupe.last_run_output());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_one_trace_from_the_request_to_its_appends() {
    let started = Instant::now();
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let processes = Processes::start(&endpoint).await;
    // Parallel: the agents run in tasks of their own, which must carry the run's span.
    let (task_id, written) = run_a_task(&processes.api_url, "parallel").await;
    let finished = started.elapsed();
    let (trace, run) = whole_trace(&receiver, &task_id, written).await;
    check_trace(
        &trace,
        &run,
        &task_id,
        written,
        ("troupe-api", "troupe-worker"),
    );
    check_log(&processes.worker, &task_id, &run.trace_id);
    println!(
        "distributed: task completed {:.2}s after start, its whole trace ({} spans) received {:.2}s after start",
        finished.as_secs_f64(),
        trace.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_queue_carries_the_trace_too() {
    let started = Instant::now();
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let embedded = Embedded::start(&endpoint);
    let (task_id, written) = run_a_task(&embedded.url, "sequential").await;
    let (trace, run) = whole_trace(&receiver, &task_id, written).await;
    check_trace(&trace, &run, &task_id, written, ("troupe", "troupe"));
    check_log(&embedded.troupe, &task_id, &run.trace_id);
    println!(
        "embedded: whole trace ({} spans) received {:.2}s after start",
        trace.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Submits a task of two simulated agents run in `mode` through the api at `url` and waits
/// (bounded) until it has completed: its id, and how many events the worker wrote.
async fn run_a_task(url: &str, mode: &str) -> (String, usize) {
    let client = reqwest::Client::new();
    wait_until_ready(&client, url).await;
    let token = client
        .post(format!("{url}/api/auth/register"))
        .json(&json!({"email": "tracer@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let submitted = client
        .post(format!("{url}/api/tasks"))
        .bearer_auth(&token)
        .json(&json!({
            "description": "Trace me",
            "selectedAgents": ["tech-lead", "qa"],
            "executionMode": mode,
            "provider": "simulated",
            "providerOptions": {"latencyMs": 0, "tokens": 4},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 202);
    let task_id = submitted.json::<Value>().await.unwrap()["taskId"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view: Value = client
            .get(format!("{url}/api/tasks/{task_id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if view["status"] == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the task did not complete: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every event but the first (task_created, the api's).
    let written = exported_log(&client, url, &token, &task_id).await.len() - 1;
    (task_id, written)
}

/// Polls the receiver (bounded) until it holds the task's run and appends of every event
/// the worker wrote: the spans of the run's trace, and the run. The worker's spans end with
/// the delivery, just after the task's last event.
async fn whole_trace(
    receiver: &Receiver,
    task_id: &str,
    written: usize,
) -> (Vec<Received>, Received) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let spans = receiver.spans();
        let run = spans
            .iter()
            .find(|s| s.name == "run_task" && s.attr("task_id") == task_id)
            .cloned();
        let appended: usize = spans
            .iter()
            .filter(|s| s.name == "append" && s.attr("task_id") == task_id)
            .map(|s| s.attr("events").parse::<usize>().unwrap())
            .sum();
        if let Some(run) = run
            && appended == written
        {
            let trace = spans
                .into_iter()
                .filter(|s| s.trace_id == run.trace_id)
                .collect();
            return (trace, run);
        }
        assert!(
            Instant::now() < deadline,
            "no complete trace of task {task_id} within 15 s of its end; received: {:#?}",
            spans
                .iter()
                .map(|s| format!("{} {} {:?}", s.service, s.name, s.attributes))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The trace goes request → enqueue → run_task → agent → provider_call, with every append
/// under the run; `services` are the api's and the worker's service names.
fn check_trace(
    trace: &[Received],
    run: &Received,
    task_id: &str,
    written: usize,
    (api, worker): (&str, &str),
) {
    let named =
        |name: &str| -> Vec<&Received> { trace.iter().filter(|s| s.name == name).collect() };
    let describe = trace
        .iter()
        .map(|s| {
            format!(
                "{} {} {}<-{} {:?}",
                s.service, s.name, s.span_id, s.parent, s.attributes
            )
        })
        .collect::<Vec<_>>()
        .join("\n");

    // The api: its request span, the enqueue under it, the worker's run under that.
    let enqueue = named("enqueue");
    assert_eq!(
        enqueue.len(),
        1,
        "one enqueue in the task's trace:\n{describe}"
    );
    let enqueue = enqueue[0];
    assert_eq!(enqueue.service, api);
    assert_eq!(enqueue.attr("task_id"), task_id);
    assert_eq!(
        run.parent, enqueue.span_id,
        "run_task is a child of the enqueue:\n{describe}"
    );
    assert_eq!(run.service, worker);
    let request = trace
        .iter()
        .find(|s| s.span_id == enqueue.parent)
        .unwrap_or_else(|| panic!("the enqueue's parent is in the trace:\n{describe}"));
    assert_eq!(request.service, api);
    assert_eq!(request.name, "POST /api/tasks");
    assert_eq!(request.attr("http.request.method"), "POST");
    assert_eq!(request.attr("http.route"), "/api/tasks");
    assert_eq!(request.attr("http.response.status_code"), "202");
    assert_eq!(request.parent, "", "the request span is the trace's root");

    // The worker: one agent span per agent under the run, a provider call under each.
    let agents = named("agent");
    let mut roles: Vec<&str> = agents.iter().map(|a| a.attr("role")).collect();
    roles.sort();
    assert_eq!(roles, ["qa", "tech-lead"], "{describe}");
    for agent in &agents {
        assert_eq!(
            agent.parent, run.span_id,
            "agent under run_task:\n{describe}"
        );
        assert_eq!(agent.attr("attempt"), "1");
        let calls: Vec<_> = named("provider_call")
            .into_iter()
            .filter(|c| c.parent == agent.span_id)
            .collect();
        assert_eq!(
            calls.len(),
            1,
            "one provider call under {}:\n{describe}",
            agent.attr("role")
        );
        assert_eq!(calls[0].attr("provider"), "simulated");
        assert_eq!(calls[0].attr("model"), "simulated");
    }
    assert_eq!(named("provider_call").len(), 2, "{describe}");

    // Every event the worker wrote was appended under the run.
    let appends = named("append");
    assert!(
        appends.iter().all(|a| a.parent == run.span_id),
        "{describe}"
    );
    let appended: usize = appends
        .iter()
        .map(|a| a.attr("events").parse::<usize>().unwrap())
        .sum();
    assert_eq!(appended, written);
}

/// The worker's log lines about the task say which task and which trace.
fn check_log(worker: &Proc, task_id: &str, trace_id: &str) {
    let log = std::fs::read_to_string(&worker.log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("task_id={task_id}"))
                && l.contains(&format!("trace_id={trace_id}"))),
        "no log line of {} carries task_id={task_id} and trace_id={trace_id}:\n{log}",
        worker.name
    );
}
