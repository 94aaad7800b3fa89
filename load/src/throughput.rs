//! `throughput`: C concurrent keep-alive clients, each submitting a trivial task through
//! `POST /api/agents/execute/stream` and reading it to its end, in a loop, for S seconds.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use crate::api::{Api, Target, http_client, trivial_task};
use crate::resources::{OpenFiles, Resources, Sampler, raise_open_files};
use crate::stats::{Percentiles, histogram, per_sec, record, show};
use crate::stream::{ExecuteStream, RunError};
use crate::{Error, ErrorSamples, Result, progress, write_samples};

#[derive(Debug, Clone)]
pub struct ThroughputOptions {
    pub clients: usize,
    /// How long clients start new tasks; tasks under way at the end are finished and
    /// counted.
    pub duration: Duration,
}

impl Default for ThroughputOptions {
    fn default() -> Self {
        ThroughputOptions {
            clients: 10,
            duration: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThroughputReport {
    pub server: String,
    pub clients: usize,
    pub agents: Vec<String>,
    /// From the start until the last client's last task ended.
    pub elapsed_secs: f64,
    /// Tasks whose stream ended with `complete`.
    pub tasks: u64,
    pub tasks_per_sec: f64,
    /// Log events read from the streams of those tasks.
    pub events: u64,
    pub events_per_sec: f64,
    /// Per task: send to end of stream.
    pub latency: Option<Percentiles>,
    /// Answers other than 2xx, by status.
    pub non_2xx: BTreeMap<u16, u64>,
    /// Requests that failed, and streams that broke a check (order, no terminal event,
    /// a task that did not complete).
    pub failed: u64,
    pub error_samples: ErrorSamples,
    pub open_files: OpenFiles,
    pub resources: Resources,
}

impl ThroughputReport {
    pub fn errors(&self) -> u64 {
        self.failed + self.non_2xx.values().sum::<u64>()
    }

    /// Nothing failed.
    pub fn is_clean(&self) -> bool {
        self.errors() == 0
    }
}

impl fmt::Display for ThroughputReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "throughput: {} keep-alive clients, each looping POST /api/agents/execute/stream \
             and reading it to its end, for {:.1} s",
            self.clients, self.elapsed_secs
        )?;
        writeln!(
            f,
            "  task: {} sequential agents ({}), simulated provider, latencyMs 0, tokens 1",
            self.agents.len(),
            self.agents.join(", ")
        )?;
        writeln!(
            f,
            "  tasks completed: {} ({:.1}/s)",
            self.tasks, self.tasks_per_sec
        )?;
        writeln!(
            f,
            "  SSE events read: {} ({:.1}/s)",
            self.events, self.events_per_sec
        )?;
        writeln!(f, "  per-task latency: {}", show(&self.latency))?;
        let non_2xx: Vec<String> = self
            .non_2xx
            .iter()
            .map(|(status, n)| format!("{n} × {status}"))
            .collect();
        writeln!(
            f,
            "  errors: {} (non-2xx: {}; failed requests or streams: {})",
            self.errors(),
            if non_2xx.is_empty() {
                "none".to_string()
            } else {
                non_2xx.join(", ")
            },
            self.failed
        )?;
        write_samples(f, &self.error_samples)?;
        write!(f, "{}", self.resources)
    }
}

/// What one client did.
struct ClientTally {
    tasks: u64,
    events: u64,
    latency: Histogram<u64>,
    non_2xx: BTreeMap<u16, u64>,
    failed: u64,
    samples: ErrorSamples,
}

/// Runs the throughput mode. Failures are counted in the report (see
/// [`ThroughputReport::is_clean`]); `Err` means the run could not be set up.
pub async fn throughput(target: &Target, options: &ThroughputOptions) -> Result<ThroughputReport> {
    if options.clients == 0 {
        return Err(Error::Invalid("--clients must be at least 1".into()));
    }
    let open_files = raise_open_files();
    let api = Api::connect(target).await?;
    let agents: Vec<String> = api.roles().await?.into_iter().take(3).collect();
    let task = trivial_task(&agents);
    progress(format!(
        "throughput: {} clients for {:?}",
        options.clients, options.duration
    ));
    let sampler = Sampler::start(target.pid)?;
    let started = Instant::now();
    let deadline = started + options.duration;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..options.clients {
        // A client of its own per loop: one keep-alive connection each.
        let run = ExecuteStream::new(&api, http_client(1)?, &task);
        clients.spawn(async move {
            let mut tally = ClientTally {
                tasks: 0,
                events: 0,
                latency: histogram(),
                non_2xx: BTreeMap::new(),
                failed: 0,
                samples: ErrorSamples::default(),
            };
            while Instant::now() < deadline {
                match run.once().await {
                    Ok((elapsed, events)) => {
                        tally.tasks += 1;
                        tally.events += events;
                        record(&mut tally.latency, elapsed);
                    }
                    Err(e) => {
                        match &e {
                            RunError::Status { status, .. } => {
                                *tally.non_2xx.entry(*status).or_default() += 1
                            }
                            RunError::Failed(_) => tally.failed += 1,
                        }
                        tally.samples.add(e.to_string());
                        // A server that refuses everything must not turn the loop into
                        // a spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            tally
        });
    }
    let mut latency = histogram();
    let (mut tasks, mut events, mut failed) = (0, 0, 0);
    let mut non_2xx = BTreeMap::new();
    let mut samples = ErrorSamples::default();
    while let Some(tally) = clients.join_next().await {
        let tally = tally.map_err(|e| Error::Invalid(format!("a client panicked: {e}")))?;
        tasks += tally.tasks;
        events += tally.events;
        failed += tally.failed;
        latency
            .add(&tally.latency)
            .expect("histograms of the same bounds add");
        for (status, n) in tally.non_2xx {
            *non_2xx.entry(status).or_default() += n;
        }
        samples.merge(tally.samples);
    }
    let elapsed = started.elapsed();
    Ok(ThroughputReport {
        server: target.server.to_string(),
        clients: options.clients,
        agents,
        elapsed_secs: elapsed.as_secs_f64(),
        tasks,
        tasks_per_sec: per_sec(tasks, elapsed),
        events,
        events_per_sec: per_sec(events, elapsed),
        latency: Percentiles::of(&latency),
        non_2xx,
        failed,
        error_samples: samples,
        open_files,
        resources: sampler.finish()?,
    })
}
