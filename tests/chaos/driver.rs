//! Carrying out a plan: submitting its tasks (each with its SSE clients), inflicting its
//! faults on the cluster, and sending its users' controls through the api.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::clients::{Answer, Api, SseClient, SseConfig, SseOutcome};
use crate::cluster::{Cluster, Signal};
use crate::plan::{Control, Fault, Step, Target, TaskSpec};

/// A submitted task and the clients following it.
pub struct Tracked {
    pub id: String,
    pub spec: TaskSpec,
    /// Notified when a retry was accepted, so that clients waiting after a 204 look again.
    pub retried: Arc<Notify>,
    pub clients: Vec<JoinHandle<SseOutcome>>,
}

/// The tasks submitted so far.
pub type Board = Arc<Mutex<Vec<Tracked>>>;

pub fn is_finished_status(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

/// Submits the plan's tasks, each with its SSE clients.
pub struct Submitter {
    pub api: Api,
    pub board: Board,
    /// Cancelled when no more retries will come: clients stop at their next 204.
    pub done: CancellationToken,
    pub sse: SseConfig,
    pub seed: u64,
    /// When the cluster started, for the printed times.
    pub since: Instant,
}

impl Submitter {
    /// Submits the tasks at their times (from `start`); returns those that could not be.
    pub async fn run(self, tasks: Vec<TaskSpec>, start: Instant) -> Vec<String> {
        let mut failures = vec![];
        for spec in tasks {
            sleep_until(start + spec.at).await;
            match self
                .api
                .submit(&spec.body, &spec.key, Duration::from_secs(60))
                .await
            {
                Ok(id) => self.follow(id, spec),
                Err(e) => {
                    failures.push(format!("task #{} could not be submitted: {e}", spec.index))
                }
            }
        }
        failures
    }

    fn follow(&self, id: String, spec: TaskSpec) {
        println!(
            "chaos: +{:6.1}s submitted task #{} {id} ({}, {}{})",
            self.since.elapsed().as_secs_f64(),
            spec.index,
            if spec.parallel {
                "parallel"
            } else {
                "sequential"
            },
            spec.body["selectedAgents"],
            spec.fails
                .as_ref()
                .map(|r| format!(", {r} fails"))
                .unwrap_or_default()
        );
        let retried = Arc::new(Notify::new());
        let clients = (0..spec.clients)
            .map(|c| {
                let client = SseClient::new(
                    self.api.clone(),
                    format!("SSE client {c}"),
                    id.clone(),
                    self.seed ^ ((spec.index as u64) << 16) ^ (c as u64 + 1),
                    self.sse,
                );
                let (done, retried) = (self.done.clone(), retried.clone());
                tokio::spawn(async move {
                    if c > 0 {
                        // A client that joins late, from seq 1.
                        sleep(Duration::from_millis(1500)).await;
                    }
                    client.run(done, retried).await
                })
            })
            .collect();
        self.board.lock().unwrap().push(Tracked {
            id,
            spec,
            retried,
            clients,
        });
    }
}

/// Inflicts one fault and undoes it: the process or server is running again on return.
pub async fn inflict(cluster: &mut Cluster, fault: &Fault, workers: usize) {
    match *fault {
        Fault::Stop {
            target: Target::Api(i),
            signal,
            down,
        } => {
            cluster.kill_api(i, signal).await;
            sleep(down).await;
            cluster.start_api(i).await;
        }
        Fault::Stop {
            target: Target::Worker(i),
            signal,
            down,
        } => {
            cluster.kill_worker(i, signal).await;
            sleep(down).await;
            cluster.start_worker(i);
        }
        Fault::KillAllWorkers { down } => {
            for i in 0..workers {
                cluster.kill_worker(i, Signal::Kill).await;
            }
            sleep(down).await;
            for i in 0..workers {
                cluster.start_worker(i);
            }
        }
        Fault::RestartNats { down } => cluster.restart_nats(down).await,
        Fault::RestartPostgres { down } => cluster.restart_postgres(down).await,
    }
}

/// A control request, sent by `Controller::send`.
enum Request {
    Cancel,
    CancelAgent(String),
    Pause,
    Resume,
    Retry(Option<Vec<String>>),
}

/// A user who cancels, pauses, resumes and retries tasks, whatever the cluster is going
/// through; runs beside the faults.
pub struct Controller {
    api: Api,
    board: Board,
    rng: StdRng,
    since: Instant,
    /// Tasks whose pause was accepted, oldest first: the next `Resume` takes one.
    paused: VecDeque<String>,
    /// "cancel: accepted", "retry: 409 task_not_finished"… → how many.
    pub answers: BTreeMap<String, u32>,
    /// What it did, with times from the cluster's start.
    pub notes: Vec<String>,
}

impl Controller {
    pub fn new(api: Api, board: Board, seed: u64, since: Instant) -> Controller {
        Controller {
            api,
            board,
            rng: StdRng::seed_from_u64(seed),
            since,
            paused: VecDeque::new(),
            answers: BTreeMap::new(),
            notes: vec![],
        }
    }

    fn note(&mut self, what: String) {
        let line = format!("+{:6.1}s {what}", self.since.elapsed().as_secs_f64());
        println!("chaos: {line}");
        self.notes.push(line);
    }

    pub async fn run(mut self, steps: Vec<Step<Control>>, start: Instant) -> Controller {
        for step in steps {
            sleep_until(start + step.at).await;
            self.act(&step.action).await;
        }
        self
    }

    /// The first task, in random order, whose view passes `pick`.
    async fn find(
        &mut self,
        pick: impl Fn(&Value) -> bool,
    ) -> Option<(String, Value, TaskSpec, Arc<Notify>)> {
        let mut tasks: Vec<_> = self
            .board
            .lock()
            .unwrap()
            .iter()
            .map(|t| (t.id.clone(), t.spec.clone(), t.retried.clone()))
            .collect();
        tasks.shuffle(&mut self.rng);
        for (id, spec, retried) in tasks {
            let api = self.rng.random_range(0..self.api.urls.len());
            if let Some(view) = self.api.view(&id, api).await
                && pick(&view)
            {
                return Some((id, view, spec, retried));
            }
        }
        None
    }

    /// Sends `request` about task `id` to a random api; on no answer (the api is down),
    /// again up to twice.
    async fn send(&mut self, verb: &str, id: &str, request: Request) -> Answer {
        let mut answer = Answer::Other(String::new());
        for _ in 0..3 {
            let api = self.rng.random_range(0..self.api.urls.len());
            answer = match &request {
                Request::Cancel => self.api.cancel(id, api).await,
                Request::CancelAgent(role) => self.api.cancel_agent(id, role, api).await,
                Request::Pause => self.api.pause(id, api).await,
                Request::Resume => self.api.resume(id, api).await,
                Request::Retry(agents) => self.api.retry(id, agents.clone(), api).await,
            };
            if !matches!(answer, Answer::Other(_)) {
                break;
            }
            sleep(Duration::from_millis(500)).await;
        }
        *self
            .answers
            .entry(format!("{verb}: {}", answer.label()))
            .or_default() += 1;
        let detail = match &request {
            Request::CancelAgent(role) => format!(" agent {role}"),
            Request::Retry(Some(agents)) => format!(" agents {agents:?}"),
            _ => String::new(),
        };
        self.note(format!("{verb} {id}{detail}: {answer:?}"));
        answer
    }

    /// Resumes `id` (a task found paused at the end of the chaos).
    pub async fn resume(&mut self, id: &str) {
        self.send("resume (after the chaos)", id, Request::Resume)
            .await;
    }

    async fn act(&mut self, control: &Control) {
        let status = |v: &Value| v["status"].as_str().unwrap_or("").to_string();
        match control {
            Control::Cancel => {
                let Some((id, ..)) = self.find(|v| !is_finished_status(&status(v))).await else {
                    self.note("cancel: no unfinished task".into());
                    return;
                };
                self.send("cancel", &id, Request::Cancel).await;
            }
            Control::CancelAgent => {
                let running_agents = |v: &Value| -> Vec<String> {
                    v["agents"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|a| a["status"] == "running")
                        .filter_map(|a| a["role"].as_str().map(str::to_string))
                        .collect()
                };
                let found = self
                    .find(|v| status(v) == "running" && !running_agents(v).is_empty())
                    .await;
                let Some((id, view, ..)) = found else {
                    self.note("cancel agent: no running agent".into());
                    return;
                };
                let role = running_agents(&view).choose(&mut self.rng).unwrap().clone();
                self.send("cancel agent", &id, Request::CancelAgent(role))
                    .await;
            }
            Control::Pause => {
                let Some((id, ..)) = self.find(|v| status(v) == "running").await else {
                    self.note("pause: no running task".into());
                    return;
                };
                if self.send("pause", &id, Request::Pause).await == Answer::Accepted {
                    self.paused.push_back(id);
                }
            }
            Control::Resume => {
                let Some(id) = self.paused.pop_front() else {
                    self.note("resume: nothing paused".into());
                    return;
                };
                self.send("resume", &id, Request::Resume).await;
            }
            Control::Retry { name_agents } => {
                let found = self
                    .find(|v| matches!(status(v).as_str(), "failed" | "cancelled"))
                    .await;
                let Some((id, view, _, retried)) = found else {
                    self.note("retry: no failed or cancelled task".into());
                    return;
                };
                // Named: some of the agents that failed or were cancelled.
                let retryable: Vec<String> = view["agents"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|a| a["status"] == "error" || a["status"] == "cancelled")
                    .filter_map(|a| a["role"].as_str().map(str::to_string))
                    .collect();
                let agents = (*name_agents && !retryable.is_empty()).then(|| {
                    let n = self.rng.random_range(1..=retryable.len());
                    retryable
                        .choose_multiple(&mut self.rng, n)
                        .cloned()
                        .collect::<Vec<_>>()
                });
                if self.send("retry", &id, Request::Retry(agents)).await == Answer::Accepted {
                    retried.notify_waiters();
                }
            }
        }
    }
}
