//! Prometheus metrics, scraped over HTTP and parsed: a run's tasks, agents, provider calls,
//! tokens, cost, events and streams are counted exactly, on both backends; the open
//! streams gauge follows clients; the worker's own port answers probes and serves metrics.
//!
//! The recorder is process-wide: these tests count on nextest's process per test (with
//! `cargo test`, tests in one process would add to each other's counters).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use troupe_events::metrics::{Kind, Series};

use crate::helpers::{Backend, TestApp, Tweaks, both_backends, database_url, of_type, priced};

both_backends!(
    a_run_is_counted_exactly,
    the_open_streams_gauge_follows_the_streams,
    a_task_waiting_behind_the_limit_is_counted_as_submitted,
);

use troupe_api::metrics as api;
use troupe_events::metrics as events;
use troupe_worker::metrics as worker;

/// Every series the code declares.
fn declared() -> impl Iterator<Item = &'static Series> {
    events::SERIES
        .iter()
        .chain(api::SERIES)
        .chain(worker::SERIES)
}

async fn a_run_is_counted_exactly(backend: Backend) {
    let app = TestApp::spawn_with(backend, priced()).await;
    let token = app.user().await;
    let before = scrape(&app.client, app.url(0)).await;

    let tasks = [
        task(&["tech-lead", "frontend", "qa"], "sequential", json!({})),
        task(&["backend", "qa"], "parallel", json!({})),
        task(
            &["tech-lead", "qa"],
            "sequential",
            json!({"failAgents": ["qa"]}),
        ),
    ];
    let mut ids = vec![];
    for body in &tasks {
        ids.push(app.submit(&token, body).await);
    }
    let mut logs = vec![];
    for id in &ids {
        app.wait_finished(&token, *id).await;
        logs.push(app.log(&token, *id).await);
    }
    // A finished task's stream is all replay.
    let replayed = app.read_events(0, &token, ids[0], None, None).await;
    assert_eq!(replayed.len(), logs[0].len());

    let all: Vec<&Value> = logs.iter().flatten().collect();
    let events_total = all.len() as f64;
    // Distributed, every event goes to the EVENTS stream; embedded, task_created is not
    // published (live followers read it from the store).
    let published_total = match backend {
        Backend::Distributed => events_total,
        Backend::Embedded => events_total - ids.len() as f64,
    };
    // Publishes follow commits, and a slot settles after its task's end is stored: wait
    // for the process to catch up with what the logs already show.
    let after = scrape_until(&app, "the counters catch up with the logs", |s| {
        s.sum(events::EVENTS_APPENDED.name, &[]) - before.sum(events::EVENTS_APPENDED.name, &[])
            == events_total
            && s.sum(events::EVENTS_PUBLISHED.name, &[])
                - before.sum(events::EVENTS_PUBLISHED.name, &[])
                == published_total
            && s.sum(worker::TASKS_RUNNING.name, &[]) == 0.0
            && s.sum(api::SSE_STREAMS_OPEN.name, &[]) == 0.0
    })
    .await;
    let d =
        |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);

    // Every declared series is exported, with the type it is declared with.
    for series in declared() {
        let kind = match series.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        assert_eq!(
            after.types.get(series.name).map(String::as_str),
            Some(kind),
            "{} is exported as a {kind}",
            series.name
        );
    }

    // Tasks: submitted by mode and provider, finished by outcome.
    let submitted = api::TASKS_SUBMITTED.name;
    assert_eq!(d(submitted, &[]), 3.0);
    assert_eq!(d(submitted, &[("mode", "sequential")]), 2.0);
    assert_eq!(d(submitted, &[("mode", "parallel")]), 1.0);
    assert_eq!(d(submitted, &[("provider", "simulated")]), 3.0);
    let finished = events::TASKS_FINISHED.name;
    assert_eq!(d(finished, &[("outcome", "completed")]), 2.0);
    assert_eq!(d(finished, &[("outcome", "failed")]), 1.0);
    assert_eq!(d(finished, &[("outcome", "cancelled")]), 0.0);

    // Agents: by role and outcome as the logs have them, each timed once.
    let mut by_role: HashMap<(String, &str), f64> = HashMap::new();
    for (kind, outcome) in [("agent_complete", "completed"), ("agent_error", "failed")] {
        for e in all.iter().filter(|e| e["type"] == kind) {
            let role = e["agentRole"].as_str().unwrap().to_string();
            *by_role.entry((role, outcome)).or_default() += 1.0;
        }
    }
    assert_eq!(by_role.values().sum::<f64>(), 7.0);
    for ((role, outcome), count) in &by_role {
        assert_eq!(
            d(
                worker::AGENTS_FINISHED.name,
                &[("role", role), ("outcome", outcome)]
            ),
            *count,
            "{role} {outcome}"
        );
    }
    assert_eq!(d(worker::AGENTS_FINISHED.name, &[]), 7.0);
    let duration = worker::AGENT_DURATION.name;
    assert_eq!(d(&format!("{duration}_count"), &[]), 7.0);
    assert_eq!(
        d(&format!("{duration}_count"), &[("outcome", "failed")]),
        1.0
    );
    assert_eq!(
        d(&format!("{duration}_bucket"), &[("le", "+Inf")]),
        7.0,
        "rendered as a histogram, with buckets"
    );

    // Provider calls: one per agent_usage, the tokens and cost its events report.
    let usages: Vec<&&Value> = all.iter().filter(|e| e["type"] == "agent_usage").collect();
    assert_eq!(usages.len(), 7);
    let simulated = [("provider", "simulated"), ("model", "simulated")];
    assert_eq!(
        d(
            &format!("{}_count", worker::PROVIDER_REQUEST_DURATION.name),
            &simulated
        ),
        7.0
    );
    let with_text = usages
        .iter()
        .filter(|u| u.get("timeToFirstToken").is_some())
        .count();
    assert_eq!(
        d(&format!("{}_count", worker::PROVIDER_TTFT.name), &simulated),
        with_text as f64
    );
    let ends: Vec<&&Value> = all.iter().filter(|e| e.get("usage").is_some()).collect();
    assert_eq!(
        ends.len(),
        3,
        "every terminal event carries the task's usage"
    );
    let total = |field: &str| -> f64 {
        ends.iter()
            .map(|e| e["usage"][field].as_f64().unwrap())
            .sum()
    };
    let tokens = worker::PROVIDER_TOKENS.name;
    assert!(total("inputTokens") > 0.0);
    assert_eq!(d(tokens, &[("kind", "input")]), total("inputTokens"));
    assert_eq!(d(tokens, &[("kind", "output")]), total("outputTokens"));
    let cost = d(worker::PROVIDER_COST.name, &simulated);
    assert!(total("costUsd") > 0.0);
    assert!(
        (cost - total("costUsd")).abs() < 1e-9,
        "cost {cost} against the logs' {}",
        total("costUsd")
    );

    // Events: every one committed is counted once and published as said above; all but
    // the submits' task_created went through a writer's append batches.
    assert_eq!(d(events::EVENTS_APPENDED.name, &[]), events_total);
    assert_eq!(d(events::EVENTS_PUBLISHED.name, &[]), published_total);
    let batch = events::APPEND_BATCH_SIZE.name;
    assert_eq!(d(&format!("{batch}_sum"), &[]), events_total - 3.0);
    let batches = d(&format!("{batch}_count"), &[]);
    assert!((1.0..=events_total - 3.0).contains(&batches), "{batches}");

    // The queue delivered each task once; nothing is waiting in the outbox.
    assert_eq!(d(events::QUEUE_DELIVERIES.name, &[]), 3.0);
    assert_eq!(d(events::QUEUE_REDELIVERIES.name, &[]), 0.0);
    assert!(after.has(events::OUTBOX_BACKLOG.name));
    assert_eq!(after.sum(events::OUTBOX_BACKLOG.name, &[]), 0.0);

    // The one stream read replayed a finished log, and is closed.
    let sent = api::SSE_EVENTS_SENT.name;
    assert_eq!(d(sent, &[("phase", "replay")]), logs[0].len() as f64);
    assert_eq!(d(sent, &[("phase", "live")]), 0.0);
    assert_eq!(after.sum(api::SSE_STREAMS_OPEN.name, &[]), 0.0);
    assert_eq!(after.sum(worker::TASKS_RUNNING.name, &[]), 0.0);

    // No label carries a task id.
    for id in &ids {
        assert!(!after.text.contains(&id.to_string()));
    }
}

async fn a_task_waiting_behind_the_limit_is_counted_as_submitted(backend: Backend) {
    let tweaks = Tweaks {
        active_tasks_per_user: Some(1),
        ..Tweaks::default()
    };
    let app = TestApp::spawn_with(backend, tweaks).await;
    let token = app.user().await;
    let before = scrape(&app.client, app.url(0)).await;
    let mut slow = task(&["qa"], "sequential", json!({}));
    slow["providerOptions"] = json!({"latencyMs": 200, "tokens": 300});
    app.submit(&token, &slow).await;
    let waiting: Value = app
        .post("/api/tasks", &token, &slow)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(waiting["queuePosition"], 1, "{waiting}");

    let after = scrape(&app.client, app.url(0)).await;
    let submitted = api::TASKS_SUBMITTED.name;
    assert_eq!(after.sum(submitted, &[]) - before.sum(submitted, &[]), 2.0);
}

async fn the_open_streams_gauge_follows_the_streams(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    // About six seconds of streaming: long enough to open and drop streams meanwhile.
    let task_id = app
        .submit(
            &token,
            &json!({
                "description": "Write a long report",
                "selectedAgents": ["tech-lead", "qa"],
                "provider": "simulated",
                "providerOptions": {"latencyMs": 100, "tokens": 30},
            }),
        )
        .await;
    let open = |s: &Scrape| s.sum(api::SSE_STREAMS_OPEN.name, &[]);

    // A client that reads a little and hangs up.
    let response = app.events_request(0, &token, task_id).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut first = response.bytes_stream().eventsource();
    for _ in 0..3 {
        first.next().await.unwrap().unwrap();
    }
    assert_eq!(open(&scrape(&app.client, app.url(0)).await), 1.0);
    drop(first);
    scrape_until(&app, "the dropped stream is closed", |s| open(s) == 0.0).await;

    // A client (on the other api when distributed) that follows the task to its end.
    let before = scrape(&app.client, app.url(0)).await;
    let view: Value = app
        .get(&format!("/api/tasks/{task_id}"), &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        view["status"], "running",
        "the task outlasts the first client"
    );
    let logged_before_open = view["lastSeq"].as_f64().unwrap();
    let response = app.events_request(1, &token, task_id).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut second = response.bytes_stream().eventsource();
    let mut received = 1;
    second.next().await.unwrap().unwrap();
    assert_eq!(open(&scrape(&app.client, app.url(0)).await), 1.0);
    while let Some(event) = tokio::time::timeout(Duration::from_secs(30), second.next())
        .await
        .expect("the stream stalled")
    {
        event.unwrap();
        received += 1;
    }
    let after = scrape_until(&app, "the finished stream is closed", |s| open(s) == 0.0).await;
    let log = app.log(&token, task_id).await;
    assert_eq!(received, log.len());
    assert_eq!(of_type(&log, "task_complete").len(), 1);

    let sent = api::SSE_EVENTS_SENT.name;
    let replay = after.sum(sent, &[("phase", "replay")]) - before.sum(sent, &[("phase", "replay")]);
    let live = after.sum(sent, &[("phase", "live")]) - before.sum(sent, &[("phase", "live")]);
    assert_eq!(
        replay + live,
        received as f64,
        "each event sent is counted once"
    );
    assert!(
        replay >= logged_before_open,
        "{replay} < {logged_before_open}"
    );
    assert!(
        live >= 1.0,
        "events appended while the stream was open are live"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_port_answers_probes_and_serves_metrics() {
    // The worker's port is the `worker` binary's (distributed); embedded, the api's port
    // serves everything.
    let app = TestApp::spawn_with(Backend::Distributed, priced()).await;
    let backends = app.backends().await;
    let stop = CancellationToken::new();
    let url = serve_worker_port(backends.clone(), &stop).await;

    let health = get(&app, &format!("{url}/healthz")).await;
    assert_eq!(health.status(), 200);
    let ready = get(&app, &format!("{url}/readyz")).await;
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({"status": "ready", "store": "ok", "bus": "ok", "queue": "ok"})
    );

    let token = app.user().await;
    let task_id = app
        .submit(&token, &task(&["qa", "devops"], "parallel", json!({})))
        .await;
    app.wait_finished(&token, task_id).await;
    let response = get(&app, &format!("{url}/metrics")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let metrics = Scrape::parse(&response.text().await.unwrap());
    for series in worker::SERIES {
        assert!(metrics.types.contains_key(series.name), "{}", series.name);
    }
    assert_eq!(
        metrics.sum(worker::AGENTS_FINISHED.name, &[("outcome", "completed")]),
        2.0
    );
    assert_eq!(metrics.sum(events::QUEUE_DELIVERIES.name, &[]), 1.0);

    // The same worker with a store that no longer answers is not ready.
    let gone = troupe_events::PgStore::connect(database_url().parse().unwrap(), 1)
        .await
        .unwrap();
    gone.pool().close().await;
    let unready = troupe_events::Backends {
        store: Arc::new(gone),
        ..backends
    };
    let url = serve_worker_port(unready, &stop).await;
    let ready = get(&app, &format!("{url}/readyz")).await;
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({"status": "not_ready", "store": "unreachable", "bus": "ok", "queue": "ok"})
    );
    let health = get(&app, &format!("{url}/healthz")).await;
    assert_eq!(health.status(), 200, "alive, only not ready");
    stop.cancel();
}

async fn serve_worker_port(backends: troupe_events::Backends, stop: &CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(troupe_worker::status::serve(
        listener,
        backends,
        stop.clone(),
    ));
    url
}

fn task(agents: &[&str], mode: &str, options: Value) -> Value {
    let mut options = options;
    options["latencyMs"] = json!(0);
    options["tokens"] = json!(4);
    json!({
        "description": "Build a todo app",
        "selectedAgents": agents,
        "executionMode": mode,
        "provider": "simulated",
        "providerOptions": options,
    })
}

/// A parsed Prometheus text exposition: every sample, and each family's type.
struct Scrape {
    text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    types: HashMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = vec![];
        let mut types = HashMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(declared) = line.strip_prefix("# TYPE ") {
                let (name, kind) = declared.split_once(' ').unwrap();
                types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, parse_labels(labels.strip_suffix('}').unwrap())),
                None => (series, BTreeMap::new()),
            };
            samples.push((name.to_string(), labels, value));
        }
        Scrape {
            text: text.to_string(),
            samples,
            types,
        }
    }

    /// The sum of the samples of `name` whose labels include all of `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && with
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, value)| value)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }
}

/// `a="1",b="x \"y\""` into its pairs.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("a closing quote") {
                (_, '\\') => match chars.next().unwrap().1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_string(), value);
        rest = &after[end + 1..];
    }
    labels
}

/// `GET url`, outside the api (the worker's own port).
async fn get(app: &TestApp, url: &str) -> reqwest::Response {
    app.client.get(url).send().await.unwrap()
}

async fn scrape(client: &reqwest::Client, url: &str) -> Scrape {
    let response = client.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    Scrape::parse(&response.text().await.unwrap())
}

/// Scrapes api 0 (bounded) until `ready` holds, and returns that scrape.
async fn scrape_until(app: &TestApp, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    for _ in 0..200 {
        let scraped = scrape(&app.client, app.url(0)).await;
        if ready(&scraped) {
            return scraped;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen in 10 s");
}

#[test]
fn labels_are_parsed_with_escapes() {
    let labels = parse_labels(r#"a="1",model="x \"y\" z",le="+Inf""#);
    assert_eq!(labels["a"], "1");
    assert_eq!(labels["model"], r#"x "y" z"#);
    assert_eq!(labels["le"], "+Inf");
}
