//! What a chaos run does and when, drawn from one seed: the tasks to submit, the faults
//! (processes killed or stopped, NATS and PostgreSQL restarted) and the users' controls
//! (cancel, cancel one agent, pause and resume, retry), which run side by side. The same
//! seed gives the same plan; only timing differs between runs.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::cluster::Signal;

/// The built-in catalogue.
pub const ROLES: [&str; 8] = [
    "tech-lead",
    "product-manager",
    "frontend",
    "backend",
    "qa",
    "devops",
    "security",
    "technical-writer",
];

#[derive(Debug, Clone)]
pub struct PlanConfig {
    pub tasks: usize,
    /// How long the chaos lasts; tasks are submitted during its first two thirds.
    pub window: Duration,
    pub apis: usize,
    pub workers: usize,
    pub cancels: usize,
    pub agent_cancels: usize,
    pub pauses: usize,
    pub retries: usize,
}

#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub index: usize,
    /// When to submit it, from the start of the chaos.
    pub at: Duration,
    pub body: Value,
    pub key: String,
    pub parallel: bool,
    /// The agent the simulated provider fails (`providerOptions.failAgents`), if any.
    pub fails: Option<String>,
    /// SSE clients following it.
    pub clients: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Api(usize),
    Worker(usize),
}

/// Something done to the cluster; one at a time.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Signal one process, wait until it exits, start it again after `down`.
    Stop {
        target: Target,
        signal: Signal,
        down: Duration,
    },
    /// SIGKILL every worker at once: their tasks wait out the ack wait.
    KillAllWorkers { down: Duration },
    /// SIGKILL NATS and start it again on the same port and store.
    RestartNats { down: Duration },
    /// `pg_ctl stop -m fast`, then start again.
    RestartPostgres { down: Duration },
}

/// Something a user does through the api, whatever state the cluster is in.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// Cancel a task that has not finished.
    Cancel,
    /// Cancel one running agent of a running task.
    CancelAgent,
    /// Pause a running task…
    Pause,
    /// …and resume the oldest paused one.
    Resume,
    /// Retry a failed or cancelled task; `name_agents`: say which agents in the body.
    Retry { name_agents: bool },
}

#[derive(Debug, Clone)]
pub struct Step<A> {
    pub at: Duration,
    pub action: A,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub tasks: Vec<TaskSpec>,
    pub faults: Vec<Step<Fault>>,
    pub controls: Vec<Step<Control>>,
}

fn millis(rng: &mut StdRng, from: u64, to: u64) -> Duration {
    Duration::from_millis(rng.random_range(from..=to))
}

impl Plan {
    pub fn new(seed: u64, config: &PlanConfig) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let window = config.window.as_millis() as u64;
        let mut tasks: Vec<TaskSpec> = (0..config.tasks)
            .map(|index| {
                task(
                    &mut rng,
                    seed,
                    index,
                    window * 2 / 3 * index as u64 / config.tasks as u64,
                )
            })
            .collect();
        // Jitter may swap neighbours: the list is in submit order.
        tasks.sort_by_key(|t| t.at);

        // Faults, one every 1.2 to 3.2 s; NATS and PostgreSQL restart once each, in the
        // middle, when many tasks run.
        let mut times = vec![];
        let mut at = Duration::from_secs(2);
        while at < config.window {
            times.push(at);
            at += millis(&mut rng, 1200, 3200);
        }
        let n = times.len();
        assert!(n >= 8, "the chaos window is too short");
        let nats = rng.random_range(n / 4..n / 2);
        let postgres = rng.random_range(n / 2..3 * n / 4);
        let faults = times
            .into_iter()
            .enumerate()
            .map(|(i, at)| {
                let down = millis(&mut rng, 200, 3000);
                let api = Target::Api(rng.random_range(0..config.apis));
                let worker = Target::Worker(rng.random_range(0..config.workers));
                let action = if i == nats {
                    Fault::RestartNats {
                        down: down.max(Duration::from_secs(1)),
                    }
                } else if i == postgres {
                    Fault::RestartPostgres {
                        down: down.max(Duration::from_secs(1)),
                    }
                } else {
                    match rng.random_range(0..100) {
                        0..30 => Fault::Stop {
                            target: worker,
                            signal: Signal::Kill,
                            down,
                        },
                        30..50 => Fault::Stop {
                            target: worker,
                            signal: Signal::Term,
                            down,
                        },
                        50..68 => Fault::Stop {
                            target: api,
                            signal: Signal::Kill,
                            down,
                        },
                        68..85 => Fault::Stop {
                            target: api,
                            signal: Signal::Term,
                            down,
                        },
                        _ => Fault::KillAllWorkers { down },
                    }
                };
                Step { at, action }
            })
            .collect();

        // Controls at random times: cancels and pauses while tasks run, retries once some
        // have failed; each pause is resumed 2 to 6 s later.
        let mut controls = vec![];
        let at_between = |rng: &mut StdRng, from: f64, to: f64| {
            Duration::from_millis(
                rng.random_range((window as f64 * from) as u64..(window as f64 * to) as u64),
            )
        };
        for _ in 0..config.cancels {
            let at = at_between(&mut rng, 0.05, 0.8);
            controls.push(Step {
                at,
                action: Control::Cancel,
            });
        }
        for _ in 0..config.agent_cancels {
            let at = at_between(&mut rng, 0.05, 0.8);
            controls.push(Step {
                at,
                action: Control::CancelAgent,
            });
        }
        for _ in 0..config.pauses {
            let at = at_between(&mut rng, 0.05, 0.75);
            controls.push(Step {
                at,
                action: Control::Pause,
            });
            let at = at + millis(&mut rng, 2000, 6000);
            controls.push(Step {
                at,
                action: Control::Resume,
            });
        }
        for _ in 0..config.retries {
            let at = at_between(&mut rng, 0.3, 0.95);
            let name_agents = rng.random_bool(0.4);
            controls.push(Step {
                at,
                action: Control::Retry { name_agents },
            });
        }
        controls.sort_by_key(|s| s.at);
        Plan {
            seed,
            tasks,
            faults,
            controls,
        }
    }
}

/// Task `index`: 2 to 4 agents, sequential or parallel in turn; every fifth has an agent
/// that fails (half of those only on its first attempt, so a retry succeeds).
fn task(rng: &mut StdRng, seed: u64, index: usize, at_ms: u64) -> TaskSpec {
    let parallel = index % 2 == 1;
    let size = rng.random_range(2..=4);
    let agents: Vec<&str> = ROLES.choose_multiple(rng, size).copied().collect();
    let fails = (index % 5 == 3).then(|| agents.choose(rng).unwrap().to_string());
    let mut options = json!({
        "latencyMs": rng.random_range(30..=60),
        "tokens": rng.random_range(40..=100),
    });
    if let Some(role) = &fails {
        options["failAgents"] = json!([role]);
        if index % 10 == 3 {
            options["failAttempts"] = json!(1);
        }
    }
    let body = json!({
        "description": format!("Chaos task {index}: build a small todo feature"),
        "selectedAgents": agents,
        "executionMode": if parallel { "parallel" } else { "sequential" },
        "provider": "simulated",
        "providerOptions": options,
    });
    TaskSpec {
        index,
        at: Duration::from_millis(at_ms + rng.random_range(0..500)),
        body,
        key: format!("chaos-{seed}-{index}"),
        parallel,
        fails,
        clients: if index.is_multiple_of(3) { 2 } else { 1 },
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |d: &Duration| d.as_secs_f64();
        match self {
            Fault::Stop {
                target,
                signal,
                down,
            } => {
                let (kind, i) = match target {
                    Target::Api(i) => ("api", i),
                    Target::Worker(i) => ("worker", i),
                };
                write!(f, "{} {kind} {i}, down {:.1}s", signal.name(), secs(down))
            }
            Fault::KillAllWorkers { down } => {
                write!(f, "SIGKILL all workers, down {:.1}s", secs(down))
            }
            Fault::RestartNats { down } => write!(f, "restart NATS, down {:.1}s", secs(down)),
            Fault::RestartPostgres { down } => {
                write!(f, "restart PostgreSQL, down {:.1}s", secs(down))
            }
        }
    }
}

impl Fault {
    /// The kind, for counting: "SIGKILL worker", "restart NATS"…
    pub fn kind(&self) -> String {
        match self {
            Fault::Stop { target, signal, .. } => format!(
                "{} {}",
                signal.name(),
                match target {
                    Target::Api(_) => "api",
                    Target::Worker(_) => "worker",
                }
            ),
            other => other
                .to_string()
                .split(',')
                .next()
                .unwrap_or("")
                .to_string(),
        }
    }
}

impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Control::Cancel => write!(f, "cancel a task"),
            Control::CancelAgent => write!(f, "cancel a running agent"),
            Control::Pause => write!(f, "pause a running task"),
            Control::Resume => write!(f, "resume a paused task"),
            Control::Retry { name_agents: false } => write!(f, "retry a failed or cancelled task"),
            Control::Retry { name_agents: true } => {
                write!(f, "retry a failed or cancelled task, naming agents")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PlanConfig {
        PlanConfig {
            tasks: 36,
            window: Duration::from_secs(60),
            apis: 2,
            workers: 2,
            cancels: 4,
            agent_cancels: 3,
            pauses: 3,
            retries: 5,
        }
    }

    #[test]
    fn a_seed_gives_one_plan_with_every_kind_of_chaos() {
        for seed in [0, 1, 42, 7_777_777] {
            let plan = Plan::new(seed, &config());
            let again = Plan::new(seed, &config());
            assert_eq!(format!("{:?}", plan.faults), format!("{:?}", again.faults));
            assert_eq!(
                format!("{:?}", plan.controls),
                format!("{:?}", again.controls)
            );
            assert_eq!(
                plan.tasks
                    .iter()
                    .map(|t| t.body.clone())
                    .collect::<Vec<_>>(),
                again
                    .tasks
                    .iter()
                    .map(|t| t.body.clone())
                    .collect::<Vec<_>>()
            );
            let faults =
                |f: &dyn Fn(&Fault) -> bool| plan.faults.iter().filter(|s| f(&s.action)).count();
            assert_eq!(faults(&|a| matches!(a, Fault::RestartNats { .. })), 1);
            assert_eq!(faults(&|a| matches!(a, Fault::RestartPostgres { .. })), 1);
            assert!(
                faults(&|a| matches!(a, Fault::Stop { .. } | Fault::KillAllWorkers { .. })) >= 15
            );
            let controls = |f: &dyn Fn(&Control) -> bool| {
                plan.controls.iter().filter(|s| f(&s.action)).count()
            };
            assert_eq!(controls(&|a| *a == Control::Cancel), 4);
            assert_eq!(controls(&|a| *a == Control::CancelAgent), 3);
            assert_eq!(controls(&|a| *a == Control::Pause), 3);
            assert_eq!(controls(&|a| *a == Control::Resume), 3);
            assert_eq!(controls(&|a| matches!(a, Control::Retry { .. })), 5);
            assert!(plan.controls.iter().all(|s| s.at < Duration::from_secs(60)));
            assert_eq!(plan.tasks.len(), 36);
            assert!(
                plan.tasks.iter().any(|t| t.parallel) && plan.tasks.iter().any(|t| !t.parallel)
            );
            assert!(plan.tasks.iter().any(|t| t.fails.is_some()));
            assert!(plan.tasks.windows(2).all(|w| w[0].at <= w[1].at));
        }
    }
}
