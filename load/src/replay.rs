//! `replay`: how fast a finished log is served, as SSE (what a viewer opening a finished
//! task gets) and as the NDJSON export. Without `--task`, it first builds a log of at
//! least N events: a parallel team on the simulated provider, one chunk every 10 ms.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::api::{Api, Target, http_client, is_finished, last_seq, status_error};
use crate::fanout::MAX_TOKENS;
use crate::resources::{OpenFiles, Resources, Sampler, raise_open_files};
use crate::stats::{median, per_sec};
use crate::stream::read_sse;
use crate::{Error, ErrorSamples, Result, progress, write_samples};

/// Agents a task may have (api/src/routes/tasks.rs).
const MAX_AGENTS: usize = 20;
/// The pause between chunks when building a log.
const BUILD_LATENCY_MS: u64 = 10;

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The log must have at least this many events (0: no check when `task` is given).
    pub events: u64,
    /// A finished task of the target's user to replay; `None` builds one.
    pub task: Option<String>,
    /// Runs of each measurement.
    pub runs: usize,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            events: 10_000,
            task: None,
            runs: 5,
        }
    }
}

/// One read of the whole log.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub first_event_ms: f64,
    pub total_ms: f64,
    pub events_per_sec: f64,
}

/// The runs of one measurement, and their best and median.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub runs: Vec<Run>,
    pub best_events_per_sec: f64,
    pub median_events_per_sec: f64,
    pub best_first_event_ms: f64,
    pub median_first_event_ms: f64,
    pub best_total_ms: f64,
    pub median_total_ms: f64,
}

impl Summary {
    fn of(runs: Vec<Run>) -> Summary {
        let pick = |f: fn(&Run) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
        let (rates, firsts, totals) = (
            pick(|r| r.events_per_sec),
            pick(|r| r.first_event_ms),
            pick(|r| r.total_ms),
        );
        let least = |v: &[f64]| v.iter().copied().reduce(f64::min).unwrap_or(0.0);
        Summary {
            best_events_per_sec: rates.iter().copied().reduce(f64::max).unwrap_or(0.0),
            median_events_per_sec: median(&rates),
            best_first_event_ms: least(&firsts),
            median_first_event_ms: median(&firsts),
            best_total_ms: least(&totals),
            median_total_ms: median(&totals),
            runs,
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.0} events/s best, {:.0} median; first event {:.2} ms best, {:.2} ms median; \
             total {:.2} ms best, {:.2} ms median ({} runs)",
            self.best_events_per_sec,
            self.median_events_per_sec,
            self.best_first_event_ms,
            self.median_first_event_ms,
            self.best_total_ms,
            self.median_total_ms,
            self.runs.len()
        )
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    pub server: String,
    pub task_id: String,
    /// The log was built by this run (not given with `--task`).
    pub built: bool,
    /// How long building it took, submit to finish.
    pub build_secs: Option<f64>,
    pub log_events: u64,
    /// SSE from seq 1 to the terminal event, every run checked (order and count).
    pub sse: Summary,
    /// `Accept: application/x-ndjson`, every run's line count checked.
    pub ndjson: Summary,
    pub errors: u64,
    pub error_samples: ErrorSamples,
    pub open_files: OpenFiles,
    pub resources: Resources,
}

impl ReplayReport {
    /// Every run read the whole log, in order.
    pub fn is_clean(&self) -> bool {
        self.errors == 0
    }
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "replay: task {} ({} events{})",
            self.task_id,
            self.log_events,
            match self.build_secs {
                Some(secs) => format!(", built by this run in {secs:.1} s"),
                None => ", given".to_string(),
            }
        )?;
        writeln!(f, "  SSE replay:    {}", self.sse)?;
        writeln!(f, "  NDJSON export: {}", self.ndjson)?;
        writeln!(f, "  errors: {}", self.errors)?;
        write_samples(f, &self.error_samples)?;
        write!(f, "{}", self.resources)
    }
}

/// Runs the replay mode. Runs that read a wrong log are counted in the report (see
/// [`ReplayReport::is_clean`]); `Err` means there was no suitable log to replay.
pub async fn replay(target: &Target, options: &ReplayOptions) -> Result<ReplayReport> {
    if options.runs == 0 {
        return Err(Error::Invalid("--runs must be at least 1".into()));
    }
    let open_files = raise_open_files();
    let api = Api::connect(target).await?;
    let (task_id, build_secs) = match &options.task {
        Some(task_id) => (task_id.clone(), None),
        None => {
            let started = Instant::now();
            let task_id = build_log(&api, options.events).await?;
            (task_id, Some(started.elapsed().as_secs_f64()))
        }
    };
    let view = api.task(&task_id).await?;
    if !is_finished(&view) {
        return Err(Error::Invalid(format!(
            "task {task_id} has not finished (status {}): replay measures a finished log",
            view["status"]
        )));
    }
    let log_events = last_seq(&view)?;
    if log_events < options.events {
        return Err(Error::Invalid(format!(
            "task {task_id}'s log has {log_events} events, fewer than the {} asked",
            options.events
        )));
    }

    // One keep-alive connection for every measured read.
    let client = http_client(1)?;
    let url = api.url(&format!("/api/tasks/{task_id}/events"));
    let mut samples = ErrorSamples::default();
    let mut errors = 0;
    progress(format!(
        "replay: {} SSE replays and {} NDJSON exports of {log_events} events",
        options.runs, options.runs
    ));
    let sampler = Sampler::start(target.pid)?;
    let mut sse_runs = vec![];
    let mut ndjson_runs = vec![];
    for (what, runs, ndjson) in [
        ("SSE replay", &mut sse_runs, false),
        ("NDJSON export", &mut ndjson_runs, true),
    ] {
        for _ in 0..options.runs {
            let run = if ndjson {
                ndjson_once(&client, &api.token, &url, log_events).await
            } else {
                sse_once(&client, &api.token, &url, log_events).await
            };
            match run {
                Ok(run) => runs.push(run),
                Err(e) => {
                    errors += 1;
                    samples.add(format!("{what}: {e}"));
                }
            }
        }
    }
    Ok(ReplayReport {
        server: target.server.to_string(),
        task_id,
        built: build_secs.is_some(),
        build_secs,
        log_events,
        sse: Summary::of(sse_runs),
        ndjson: Summary::of(ndjson_runs),
        errors,
        error_samples: samples,
        open_files,
        resources: sampler.finish()?,
    })
}

/// The first line of the tasks that build a log. The simulated answer quotes it (up to
/// 80 characters): a long line gives the answers more characters, so more chunks.
const BUILD_DESCRIPTION: &str =
    "troupe-load replay: a parallel team streaming long answers to build a long event log";

fn build_task(agents: &[String], latency_ms: u64, tokens: u64) -> Value {
    json!({
        "description": BUILD_DESCRIPTION,
        "selectedAgents": agents,
        "executionMode": "parallel",
        "provider": "simulated",
        "providerOptions": {"latencyMs": latency_ms, "tokens": tokens},
    })
}

/// Submits a parallel task whose log reaches `events` and waits for it to finish; its id.
/// Fails before building when the catalogue's agents cannot make a log that long, and
/// after when the server wrote fewer events than chunks (its token flush interval).
async fn build_log(api: &Api, events: u64) -> Result<String> {
    let agents: Vec<String> = api.roles().await?.into_iter().take(MAX_AGENTS).collect();
    let lengths = answer_lengths(api, &agents).await?;
    let tokens = plan_tokens(&lengths, events).map_err(|most| {
        Error::Invalid(format!(
            "a log of {events} events cannot be built: the simulated answers of the {} \
             catalogue agents have {} characters in all, and the provider streams at most one \
             chunk per character (and at most {MAX_TOKENS} per agent), so one log of this team \
             has at most {most} events. Ask for fewer, or give --task (with --token of its \
             owner) for a longer log.",
            agents.len(),
            lengths.iter().sum::<u64>()
        ))
    })?;
    let task = api
        .submit(&build_task(&agents, BUILD_LATENCY_MS, tokens))
        .await?;
    progress(format!(
        "replay: building a log of at least {events} events: task {}, {} parallel agents, \
         up to {tokens} chunks each, one every {BUILD_LATENCY_MS} ms",
        task.task_id,
        agents.len()
    ));
    // Following the stream is how we learn it finished; its end is checked through the view.
    let streaming = tokens * BUILD_LATENCY_MS;
    let within = Duration::from_millis(streaming * 3) + Duration::from_secs(60);
    let response = api.client.get(api.url(&task.stream_url)).send().await?;
    if !response.status().is_success() {
        return Err(status_error(response, "following the task being built").await);
    }
    let _ = tokio::time::timeout(within, read_sse(response, Instant::now())).await;
    let view = api
        .wait_finished(&task.task_id, Duration::from_secs(30))
        .await?;
    let has = last_seq(&view)?;
    if has < events {
        return Err(Error::Invalid(format!(
            "task {}'s log has {has} events, fewer than the {events} asked, though its agents \
             streamed enough chunks: the server writes streamed text as one event every \
             TROUPE_TOKEN_FLUSH_MS (default 200 ms). Run it with TROUPE_TOKEN_FLUSH_MS=10 so \
             that each chunk is an event.",
            task.task_id
        )));
    }
    Ok(task.task_id)
}

/// The characters of each agent's simulated answer to the build task, from a probe task
/// with one chunk per agent (the answer depends only on the task and the agent).
async fn answer_lengths(api: &Api, agents: &[String]) -> Result<Vec<u64>> {
    let probe = api.submit(&build_task(agents, 0, 1)).await?;
    let view = api
        .wait_finished(&probe.task_id, Duration::from_secs(30))
        .await?;
    if view["status"] != "completed" {
        return Err(Error::Invalid(format!(
            "the probe task {} ended {}, not completed",
            probe.task_id, view["status"]
        )));
    }
    Ok(view["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["output"].as_str().map_or(0, |o| o.chars().count() as u64))
        .collect())
}

/// The fewest chunks per agent for a log of at least `events` (plus 5% for chunks the
/// server writes together, when the answers allow it), given each agent's answer length
/// (at most one chunk per character). `Err`: the most events such a log can have.
fn plan_tokens(lengths: &[u64], events: u64) -> Result<u64, u64> {
    // Besides its chunks, each agent writes agent_start, agent_progress and
    // agent_complete; the task, task_created and task_complete.
    let overhead = 3 * lengths.len() as u64 + 2;
    let log = |tokens: u64| lengths.iter().map(|&c| c.min(tokens)).sum::<u64>() + overhead;
    let most = log(MAX_TOKENS);
    if most < events {
        return Err(most);
    }
    let goal = (events + events / 20).min(most);
    Ok((1..=MAX_TOKENS)
        .find(|&tokens| log(tokens) >= goal)
        .unwrap_or(MAX_TOKENS))
}

/// One SSE replay from seq 1, checked.
async fn sse_once(
    client: &reqwest::Client,
    token: &str,
    url: &reqwest::Url,
    events: u64,
) -> Result<Run, String> {
    let started = Instant::now();
    let response = client
        .get(url.clone())
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(status_error(response, "GET …/events").await.to_string());
    }
    let run = read_sse(response, started)
        .await
        .map_err(|e| e.to_string())?;
    let total = started.elapsed();
    if let Some(problem) = run.problem(false, Some(events)) {
        return Err(problem);
    }
    Ok(Run {
        first_event_ms: run.first_event.unwrap_or(total).as_secs_f64() * 1000.0,
        total_ms: total.as_secs_f64() * 1000.0,
        events_per_sec: per_sec(run.events, total),
    })
}

/// One NDJSON export, its lines counted.
async fn ndjson_once(
    client: &reqwest::Client,
    token: &str,
    url: &reqwest::Url,
    events: u64,
) -> Result<Run, String> {
    let started = Instant::now();
    let mut response = client
        .get(url.clone())
        .bearer_auth(token)
        .header(reqwest::header::ACCEPT, "application/x-ndjson")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(status_error(response, "GET …/events (NDJSON)")
            .await
            .to_string());
    }
    let mut first_event = None;
    let mut lines = 0u64;
    let mut last_byte = b'\n';
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        first_event.get_or_insert_with(|| started.elapsed());
        lines += memchr::memchr_iter(b'\n', &chunk).count() as u64;
        last_byte = chunk.last().copied().unwrap_or(last_byte);
    }
    let total = started.elapsed();
    if last_byte != b'\n' {
        return Err("the export ended in the middle of a line".into());
    }
    if lines != events {
        return Err(format!(
            "the export has {lines} lines; the log has {events}"
        ));
    }
    Ok(Run {
        first_event_ms: first_event.unwrap_or(total).as_secs_f64() * 1000.0,
        total_ms: total.as_secs_f64() * 1000.0,
        events_per_sec: per_sec(lines, total),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_asks_the_fewest_chunks_that_reach_the_goal() {
        // 3 agents: 11 events besides the chunks.
        let lengths = [100, 500, 3000];
        assert_eq!(plan_tokens(&lengths, 11 + 30), Ok(11), "3 × 11 + 11 ≥ 43");
        assert_eq!(
            plan_tokens(&lengths, 600),
            Ok(260),
            "100 + 2 × 260 + 11 ≥ 630"
        );
        // Up to the most possible, without the margin.
        assert_eq!(plan_tokens(&lengths, 11 + 100 + 500 + 2000), Ok(2000));
        assert_eq!(plan_tokens(&lengths, 11 + 2601), Err(2611));
    }
}
