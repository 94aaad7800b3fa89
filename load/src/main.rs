//! The `troupe-load` command: flags over the library's modes. Exit status 0 when the run
//! was clean, 1 when it counted errors, 2 when it could not run.

use std::fmt::Display;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Serialize;
use troupe_load::{
    FanoutOptions, LatencyOptions, ReplayOptions, Target, ThroughputOptions, fanout, latency,
    replay, throughput,
};

/// Drives a running Troupe server over HTTP and measures it. Start the server first
/// (for fanout above 5 events/s and for replay, with TROUPE_TOKEN_FLUSH_MS=10).
#[derive(Parser)]
#[command(name = "troupe-load", version)]
struct Cli {
    /// The server's origin.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The server's process id (same machine): report its RSS and CPU time.
    #[arg(long, global = true)]
    pid: Option<u32>,
    /// A session token to use instead of registering a fresh account.
    #[arg(long, global = true)]
    token: Option<String>,
    /// Print one JSON object of the results instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// One keep-alive connection, N × POST /api/agents/execute/stream of a zero-latency
    /// 3-agent task, each read to its end: latency percentiles.
    Latency {
        /// Measured runs.
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// Runs before the measured ones, not counted.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
    },
    /// C keep-alive clients looping submit → read the stream to its end for S seconds:
    /// tasks/s, events/s, per-task latency, errors.
    Throughput {
        /// Concurrent clients, each on a keep-alive connection of its own.
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// How long clients start new tasks.
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// One task emitting about R events/s, watched by N SSE clients joining over J
    /// seconds: delivery latency (receive − the event's `at`), order, join time, server
    /// RSS per watcher.
    ///
    /// The server coalesces streamed text into one agent_token event every
    /// TROUPE_TOKEN_FLUSH_MS (default 200 ms): for R > 5, run it with
    /// TROUPE_TOKEN_FLUSH_MS ≤ 1000/R (10 at least), or it emits fewer events than asked.
    /// The measured rate is printed. Needs an http:// server and an open-file limit above
    /// N (raised to the hard limit at start); the server serves at most
    /// TROUPE_MAX_STREAMS (10,000) streams.
    Fanout {
        /// SSE clients following the task, each on a connection of its own.
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Events a second (1 to 1000): one chunk every 1000/R ms.
        #[arg(long, default_value_t = 10)]
        rate: u32,
        /// How long the task streams (R × S chunks, at most 2000).
        #[arg(long, default_value_t = 20)]
        secs: u64,
        /// Watchers connect spread evenly over this many seconds.
        #[arg(long, default_value_t = 5.0)]
        join_secs: f64,
        /// After the watchers left, wait this long and sample the server's RSS again.
        #[arg(long, default_value_t = 3.0)]
        linger_secs: f64,
    },
    /// Replay of a finished log: SSE from seq 1 (time to first event, total, events/s)
    /// and the NDJSON export (events/s), best and median of a few runs.
    ///
    /// Without --task it builds the log first: a parallel team on the simulated provider,
    /// a chunk every 10 ms; each chunk is an event only if the server runs with
    /// TROUPE_TOKEN_FLUSH_MS=10. The built-in agents' simulated answers allow about 6,850
    /// events in one log; it fails, saying why, when the log would be shorter than asked.
    Replay {
        /// The least number of events the log must have [default: 10000; with --task:
        /// not checked].
        #[arg(long)]
        events: Option<u64>,
        /// A finished task to replay instead of building one (with --token of its owner).
        #[arg(long)]
        task: Option<String>,
        /// Runs of each measurement.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("troupe-load: the run counted errors (see above)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("troupe-load: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the mode and prints its report; whether the run was clean.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let mut target = Target::new(&cli.server)?;
    target.token = cli.token;
    target.pid = cli.pid;
    let secs = |s: f64| {
        Duration::try_from_secs_f64(s).map_err(|e| anyhow::anyhow!("a duration of {s} s: {e}"))
    };
    Ok(match cli.mode {
        Mode::Latency { runs, warmup } => {
            let report = latency(&target, &LatencyOptions { runs, warmup }).await?;
            print(&report, cli.json)?;
            report.is_clean()
        }
        Mode::Throughput { clients, secs } => {
            let options = ThroughputOptions {
                clients,
                duration: Duration::from_secs(secs),
            };
            let report = throughput(&target, &options).await?;
            print(&report, cli.json)?;
            report.is_clean()
        }
        Mode::Fanout {
            watchers,
            rate,
            secs: duration,
            join_secs,
            linger_secs,
        } => {
            let options = FanoutOptions {
                watchers,
                rate,
                duration: Duration::from_secs(duration),
                join: secs(join_secs)?,
                linger: secs(linger_secs)?,
            };
            let report = fanout(&target, &options).await?;
            print(&report, cli.json)?;
            report.is_clean()
        }
        Mode::Replay { events, task, runs } => {
            let events = events.unwrap_or(if task.is_some() { 0 } else { 10_000 });
            let report = replay(&target, &ReplayOptions { events, task, runs }).await?;
            print(&report, cli.json)?;
            report.is_clean()
        }
    })
}

fn print(report: &(impl Serialize + Display), json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}
