//! Chaos suite: a whole distributed Troupe (its own PostgreSQL and NATS, two `api` and two
//! `worker` processes) runs a few dozen tasks while a seeded plan kills and stops its
//! processes, restarts NATS and PostgreSQL, and, beside that, a user cancels tasks and
//! agents, pauses, resumes and retries tasks, and SSE clients drop and reconnect with
//! `Last-Event-ID` to either api. At the end every task must have finished with a dense
//! log, every client must have seen exactly its task's log, and no agent may have run again
//! or written where the contract forbids it (`checker.rs`).
//!
//! `CHAOS_SEED` replays a run's plan (the seed is printed first); `CHAOS_TASKS` and
//! `CHAOS_SECS` size it; `CHAOS_KEEP=1` keeps the temp dir with every process's log (it is
//! always kept when the test fails).

mod checker;
mod clients;
mod cluster;
mod driver;
#[path = "../support/event_stream.rs"]
mod event_stream;
mod plan;
#[path = "../support/procs.rs"]
mod procs;
mod restarts;

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::{Instant, sleep, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;

use checker::{Violation, check_finished, check_log, check_stream, is_terminal, parse_ndjson};
use clients::{Api, SseConfig, SseOutcome};
use cluster::{Cluster, ClusterConfig};
use driver::{Board, Controller, Submitter, Tracked, inflict, is_finished_status};
use plan::{Plan, PlanConfig, TaskSpec};

const APIS: usize = 2;
const WORKERS: usize = 2;
/// How long the tasks may take to finish once the chaos is over.
const DRAIN: Duration = Duration::from_secs(60);
/// How long the SSE clients may take to see the end after that.
const CLIENT_GRACE: Duration = Duration::from_secs(20);

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not valid")),
        Err(_) => default,
    }
}

/// The task's status is final and its log ends with a terminal event (the status alone
/// could be read between a retry's `task_retried` and the run).
async fn finished(api: &Api, id: &str, status: &str) -> bool {
    if !is_finished_status(status) {
        return false;
    }
    let Ok(body) = api.log(id, 1).await else {
        return false;
    };
    let last = body.lines().rev().find(|l| !l.is_empty()).unwrap_or("");
    serde_json::from_str::<Value>(last)
        .ok()
        .and_then(|v| v["type"].as_str().map(is_terminal))
        .unwrap_or(false)
}

/// The whole log of a task, retried a few times.
async fn fetch_log(api: &Api, id: &str) -> Result<Vec<(String, Value)>, String> {
    let mut last = String::new();
    for attempt in 0..5 {
        match api.log(id, attempt).await {
            Ok(body) => return parse_ndjson(&body),
            Err(e) => last = e,
        }
        sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

/// Every stored event is in the EVENTS stream exactly once, whatever the faults did to
/// the publishes (the relay takes up to its grace and a pass to publish what was lost).
pub async fn check_event_stream(
    cluster: &Cluster,
    logs: &HashMap<String, Vec<(String, Value)>>,
) -> Vec<Violation> {
    let raw: HashMap<String, Vec<String>> = logs
        .iter()
        .map(|(id, log)| {
            (
                id.clone(),
                log.iter().map(|(line, _)| line.clone()).collect(),
            )
        })
        .collect();
    let expected = raw.values().map(Vec::len).sum();
    let streamed = event_stream::read_event_stream(
        &cluster.nats_url(),
        cluster::NATS_PREFIX,
        expected,
        Duration::from_secs(60),
        Duration::from_secs(8),
    )
    .await;
    event_stream::stream_mismatches(&streamed, &raw)
        .into_iter()
        .map(|what| Violation {
            task: "EVENTS stream".into(),
            seq: None,
            what,
        })
        .collect()
}

fn shorten(line: &str, max: usize) -> String {
    match line.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join("; ")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_survive_chaos() {
    let seed: u64 = env_or("CHAOS_SEED", rand::random::<u32>() as u64);
    println!("chaos: seed {seed} (run this plan again with CHAOS_SEED={seed})");
    let config = PlanConfig {
        tasks: env_or("CHAOS_TASKS", 36),
        window: Duration::from_secs(env_or("CHAOS_SECS", 60)),
        apis: APIS,
        workers: WORKERS,
        cancels: 4,
        agent_cancels: 3,
        pauses: 3,
        retries: 5,
    };
    let plan = Plan::new(seed, &config);
    for step in &plan.faults {
        println!(
            "chaos: plan +{:5.1}s {}",
            step.at.as_secs_f64(),
            step.action
        );
    }
    for step in &plan.controls {
        println!(
            "chaos: plan +{:5.1}s {}",
            step.at.as_secs_f64(),
            step.action
        );
    }

    let started = Instant::now();
    let mut cluster = Cluster::start(ClusterConfig {
        apis: APIS,
        workers: WORKERS,
        ack_wait_secs: 2,
        max_task_runs: 10,
    })
    .await;
    println!("chaos: processes log to {}", cluster.dir.display());
    let startup = started.elapsed();
    let mut api = Api::new(cluster.api_urls());
    api.register(
        &format!("chaos-{seed}@example.com"),
        Duration::from_secs(30),
    )
    .await;

    // ---- chaos: tasks, faults and controls side by side ----
    let done = CancellationToken::new();
    let board: Board = Arc::default();
    let chaos_start = Instant::now();
    let client_deadline = chaos_start + config.window + DRAIN + CLIENT_GRACE;
    let sse = SseConfig {
        drop_chance: 0.5,
        stall: Duration::from_secs(30),
        deadline: client_deadline,
    };
    let submitter = Submitter {
        api: api.clone(),
        board: board.clone(),
        done: done.clone(),
        sse,
        seed,
        since: cluster.since(),
    };
    let submitter = tokio::spawn(submitter.run(plan.tasks.clone(), chaos_start));
    let controller = Controller::new(api.clone(), board.clone(), seed ^ 0xc4a05, cluster.since());
    let controller = tokio::spawn(controller.run(plan.controls.clone(), chaos_start));
    for step in &plan.faults {
        sleep_until(chaos_start + step.at).await;
        cluster.reap();
        cluster.ensure_up().await;
        cluster.note(format!("fault: {}", step.action));
        inflict(&mut cluster, &step.action, WORKERS).await;
    }
    sleep_until(chaos_start + config.window).await;
    cluster.reap();
    cluster.ensure_up().await;
    let mut failures: Vec<String> = submitter.await.unwrap();
    let mut controller = controller.await.unwrap();
    let chaos_took = chaos_start.elapsed();
    cluster.note("chaos over: waiting for every task to finish".into());

    // ---- drain: every task ends (paused ones are resumed) ----
    let drain_start = Instant::now();
    let ids: Vec<String> = board.lock().unwrap().iter().map(|t| t.id.clone()).collect();
    let mut pending = ids.clone();
    while !pending.is_empty() && drain_start.elapsed() < DRAIN {
        cluster.reap();
        cluster.ensure_up().await;
        let mut still = vec![];
        for id in pending {
            let status = api.status(&id, 0).await.unwrap_or_default();
            if status == "paused" {
                controller.resume(&id).await;
            }
            if !finished(&api, &id, &status).await {
                still.push(id);
            }
        }
        pending = still;
        if !pending.is_empty() {
            sleep(Duration::from_millis(500)).await;
        }
    }
    let drain_took = drain_start.elapsed();
    cluster.note(format!(
        "{} tasks not finished after the drain",
        pending.len()
    ));
    done.cancel();

    // ---- the clients see the end ----
    let tracked: Vec<Tracked> = std::mem::take(&mut *board.lock().unwrap());
    let mut outcomes: HashMap<String, Vec<SseOutcome>> = HashMap::new();
    let mut specs: Vec<(String, TaskSpec)> = vec![];
    for t in tracked {
        for handle in t.clients {
            match timeout_at(client_deadline + Duration::from_secs(5), handle).await {
                Ok(Ok(outcome)) => outcomes.entry(t.id.clone()).or_default().push(outcome),
                Ok(Err(e)) => failures.push(format!("task {}: an SSE client panicked: {e}", t.id)),
                Err(_) => failures.push(format!("task {}: an SSE client did not return", t.id)),
            }
        }
        specs.push((t.id, t.spec));
    }
    let clients_took = drain_start.elapsed() - drain_took;

    // ---- checks ----
    let mut violations: Vec<Violation> = vec![];
    let mut logs: HashMap<String, Vec<(String, Value)>> = HashMap::new();
    let mut statuses: HashMap<String, String> = HashMap::new();
    for (id, _) in &specs {
        let log = match fetch_log(&api, id).await {
            Ok(log) => log,
            Err(e) => {
                failures.push(format!("task {id}: its log could not be read: {e}"));
                continue;
            }
        };
        let status = api.status(id, 0).await.unwrap_or_else(|| "unknown".into());
        let json: Vec<Value> = log.iter().map(|(_, v)| v.clone()).collect();
        let raw: Vec<String> = log.iter().map(|(r, _)| r.clone()).collect();
        violations.extend(check_log(id, &json));
        violations.extend(check_finished(id, &json, &status));
        for outcome in outcomes.get(id).into_iter().flatten() {
            violations.extend(check_stream(id, &outcome.name, &outcome.received, &raw));
            if !outcome.finished {
                violations.push(Violation {
                    task: id.clone(),
                    seq: None,
                    what: format!(
                        "{} never got the closing 204 after the run (it has {} events)",
                        outcome.name,
                        outcome.received.len()
                    ),
                });
            }
            for anomaly in &outcome.anomalies {
                violations.push(Violation {
                    task: id.clone(),
                    seq: None,
                    what: format!("{} got {anomaly}", outcome.name),
                });
            }
        }
        statuses.insert(id.clone(), status);
        logs.insert(id.clone(), log);
    }
    violations.extend(check_event_stream(&cluster, &logs).await);
    cluster.reap();
    failures.extend(cluster.unexpected_exits.iter().cloned());
    failures.extend(cluster.stuck_stops.iter().cloned());

    // ---- summary ----
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    for log in logs.values() {
        for (_, event) in log {
            *types
                .entry(event["type"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
    }
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for status in statuses.values() {
        *by_status.entry(status.clone()).or_default() += 1;
    }
    let all: Vec<&SseOutcome> = outcomes.values().flatten().collect();
    let mut codes: BTreeMap<u16, u32> = BTreeMap::new();
    for o in &all {
        for (code, n) in &o.statuses {
            *codes.entry(*code).or_default() += n;
        }
    }
    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    for step in &plan.faults {
        *faults.entry(step.action.kind()).or_default() += 1;
    }
    let slowest = |role: &str| {
        cluster
            .graceful_stops
            .iter()
            .filter(|(name, _)| name.starts_with(role))
            .map(|(_, secs)| *secs)
            .fold(0.0f64, f64::max)
    };
    println!("\n===== chaos summary (seed {}) =====", plan.seed);
    println!(
        "time: {:.1}s in all (startup {:.1}s, chaos {:.1}s, drain {:.1}s, clients {:.1}s)",
        started.elapsed().as_secs_f64(),
        startup.as_secs_f64(),
        chaos_took.as_secs_f64(),
        drain_took.as_secs_f64(),
        clients_took.as_secs_f64()
    );
    println!(
        "tasks: {} submitted ({} parallel, {} with a failing agent); final status: {by_status:?}",
        specs.len(),
        specs.iter().filter(|(_, s)| s.parallel).count(),
        specs.iter().filter(|(_, s)| s.fails.is_some()).count()
    );
    println!(
        "events: {} in all: {types:?}",
        types.values().sum::<usize>()
    );
    println!("faults: {faults:?}");
    println!("controls: {:?}", controller.answers);
    println!(
        "graceful stops: {} (slowest api {:.2}s, worker {:.2}s)",
        cluster.graceful_stops.len(),
        slowest("api"),
        slowest("worker")
    );
    println!(
        "SSE: {} clients, {} events received, responses {codes:?} (0: no connection), \
         {} dropped on purpose, {} broken, {} stalled",
        all.len(),
        all.iter().map(|o| o.received.len()).sum::<usize>(),
        all.iter().map(|o| o.drops).sum::<u32>(),
        all.iter().map(|o| o.broken).sum::<u32>(),
        all.iter().map(|o| o.stalls).sum::<u32>()
    );
    println!("unexpected exits: {}", list(&cluster.unexpected_exits));
    println!(
        "exits at start (a backend unreachable; started again): {}",
        list(&cluster.startup_exits)
    );
    for (id, spec) in &specs {
        let log = logs.get(id).map(Vec::as_slice).unwrap_or(&[]);
        let count = |kind: &str| log.iter().filter(|(_, e)| e["type"] == kind).count();
        println!(
            "  #{:<2} {id} {:10} {:<9} {:4} events, {} resumed, {} released, {} paused, \
             {} retried, {} agents cancelled",
            spec.index,
            if spec.parallel {
                "parallel"
            } else {
                "sequential"
            },
            statuses.get(id).map(String::as_str).unwrap_or("?"),
            log.len(),
            count("task_resumed"),
            count("task_released"),
            count("task_paused"),
            count("task_retried"),
            count("agent_cancelled"),
        );
    }

    if violations.is_empty() && failures.is_empty() {
        println!("chaos: every invariant held (seed {seed})");
        return;
    }
    println!("\n===== chaos FAILED (seed {seed}) =====");
    for failure in &failures {
        println!("FAILURE: {failure}");
    }
    for v in violations.iter().take(40) {
        println!("VIOLATION: {v}");
        if let (Some(log), Some(seq)) = (logs.get(&v.task), v.seq) {
            for (raw, event) in log {
                let s = event["seq"].as_u64().unwrap_or(0);
                if s + 4 >= seq && s <= seq + 2 {
                    let mark = if s == seq { "> " } else { "  " };
                    println!("    {mark}{}", shorten(raw, 400));
                }
            }
        }
    }
    if violations.len() > 40 {
        println!("… and {} more violations", violations.len() - 40);
    }
    let mut seen = std::collections::HashSet::new();
    for v in &violations {
        if seen.insert(v.task.clone()) && seen.len() <= 10 {
            println!("what the processes logged about task {}:", v.task);
            for line in cluster.grep_logs(&v.task).iter().take(40) {
                println!("    {}", shorten(line, 300));
            }
        }
    }
    println!("timeline:");
    let mut timeline: Vec<&String> = cluster.timeline.iter().chain(&controller.notes).collect();
    let time = |line: &str| -> f64 {
        line.trim_start_matches('+')
            .split('s')
            .next()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0.0)
    };
    timeline.sort_by(|a, b| time(a).total_cmp(&time(b)));
    for line in timeline {
        println!("  {line}");
    }
    let first = violations
        .first()
        .map(|v| v.to_string())
        .or_else(|| failures.first().cloned())
        .unwrap();
    panic!(
        "chaos (seed {seed}): {} violations, {} other failures; first: {first}",
        violations.len(),
        failures.len()
    );
}
