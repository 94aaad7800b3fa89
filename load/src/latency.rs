//! `latency`: one keep-alive connection submitting a trivial task through
//! `POST /api/agents/execute/stream` again and again, timing each from send to the end of
//! its stream.

use std::fmt;

use serde::Serialize;

use crate::api::{Api, Target, http_client, trivial_task};
use crate::resources::{OpenFiles, Resources, Sampler, raise_open_files};
use crate::stats::{Percentiles, histogram, record, show};
use crate::stream::ExecuteStream;
use crate::{ErrorSamples, Result, progress, write_samples};

#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// Measured runs.
    pub runs: usize,
    /// Runs before the measured ones, not counted (connection set-up, caches, the
    /// server's first allocations).
    pub warmup: usize,
}

impl Default for LatencyOptions {
    fn default() -> Self {
        LatencyOptions {
            runs: 200,
            warmup: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencyReport {
    pub server: String,
    pub agents: Vec<String>,
    pub warmup_runs: usize,
    /// Runs that ended with the task's `complete`.
    pub runs: u64,
    /// Log events per run (the same task every time).
    pub events_per_run: u64,
    /// Send to end of stream.
    pub latency: Option<Percentiles>,
    pub errors: u64,
    pub error_samples: ErrorSamples,
    pub open_files: OpenFiles,
    pub resources: Resources,
}

impl LatencyReport {
    /// Nothing failed.
    pub fn is_clean(&self) -> bool {
        self.errors == 0
    }
}

impl fmt::Display for LatencyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "latency: {} runs of POST /api/agents/execute/stream on one keep-alive connection, \
             after {} warm-up runs (not measured)",
            self.runs, self.warmup_runs
        )?;
        writeln!(
            f,
            "  task: {} sequential agents ({}), simulated provider, latencyMs 0, tokens 1: {} events",
            self.agents.len(),
            self.agents.join(", "),
            self.events_per_run
        )?;
        writeln!(f, "  send to end of stream: {}", show(&self.latency))?;
        writeln!(f, "  errors: {}", self.errors)?;
        write_samples(f, &self.error_samples)?;
        write!(f, "{}", self.resources)
    }
}

/// Runs the latency mode. Failed runs are counted in the report, not returned as `Err`;
/// `Err` means the run could not be set up.
pub async fn latency(target: &Target, options: &LatencyOptions) -> Result<LatencyReport> {
    let open_files = raise_open_files();
    let api = Api::connect(target).await?;
    let agents: Vec<String> = api.roles().await?.into_iter().take(3).collect();
    // One client, one connection: every run reuses it.
    let run = ExecuteStream::new(&api, http_client(1)?, &trivial_task(&agents));

    progress(format!("latency: {} warm-up runs first", options.warmup));
    for _ in 0..options.warmup {
        run.once()
            .await
            .map_err(|e| crate::Error::Invalid(format!("a warm-up run failed: {e}")))?;
    }
    progress(format!("latency: {} measured runs", options.runs));
    let sampler = Sampler::start(target.pid)?;
    let mut latencies = histogram();
    let (mut runs, mut errors, mut events_per_run) = (0, 0, 0);
    let mut samples = ErrorSamples::default();
    for _ in 0..options.runs {
        match run.once().await {
            Ok((elapsed, events)) => {
                record(&mut latencies, elapsed);
                runs += 1;
                events_per_run = events;
            }
            Err(e) => {
                errors += 1;
                samples.add(e.to_string());
            }
        }
    }
    Ok(LatencyReport {
        server: target.server.to_string(),
        agents,
        warmup_runs: options.warmup,
        runs,
        events_per_run,
        latency: Percentiles::of(&latencies),
        errors,
        error_samples: samples,
        open_files,
        resources: sampler.finish()?,
    })
}
