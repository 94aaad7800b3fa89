//! troupe-load: drives a running Troupe server over HTTP from one tokio process and
//! measures it (latency, throughput, fan-out to many SSE watchers, replay of a long log).
//!
//! Each mode is one async function taking a [`Target`] and its options and returning a
//! report that is `Serialize` (for `--json`) and `Display` (for people). The binary is a
//! thin clap wrapper over them, so tests call the modes in-process.

pub mod api;
pub mod fanout;
pub mod latency;
pub mod replay;
pub mod resources;
pub mod sse;
pub mod stats;
mod stream;
pub mod throughput;

pub use api::{Api, Target};
pub use fanout::{FanoutOptions, FanoutReport, fanout};
pub use latency::{LatencyOptions, LatencyReport, latency};
pub use replay::{ReplayOptions, ReplayReport, replay};
pub use throughput::{ThroughputOptions, ThroughputReport, throughput};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("{what}: the server answered {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    /// A bad argument, an answer the server should not give, or a log that cannot serve
    /// the measurement asked for; the message says which.
    #[error("{0}")]
    Invalid(String),
    #[error("reading /proc for process {pid}: {source}")]
    Proc { pid: i32, source: procfs::ProcError },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Keeps the first few distinct error messages of a run, so a report can say what went
/// wrong without storing every failure.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(transparent)]
pub struct ErrorSamples(Vec<String>);

impl ErrorSamples {
    const KEEP: usize = 5;

    pub fn add(&mut self, message: impl Into<String>) {
        let message = message.into();
        if self.0.len() < Self::KEEP && !self.0.contains(&message) {
            self.0.push(message);
        }
    }

    pub fn merge(&mut self, other: ErrorSamples) {
        for message in other.0 {
            self.add(message);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

/// Writes the error samples under a report, one per line.
fn write_samples(f: &mut std::fmt::Formatter<'_>, samples: &ErrorSamples) -> std::fmt::Result {
    for message in samples.iter() {
        writeln!(f, "  error: {message}")?;
    }
    Ok(())
}

/// A progress line on stderr, so that stdout holds only the results (and `--json` stays
/// one JSON object).
fn progress(message: impl std::fmt::Display) {
    eprintln!("troupe-load: {message}");
}
