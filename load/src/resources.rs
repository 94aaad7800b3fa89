//! What a run costs: the server's RSS and CPU time (when its pid is given), the load
//! generator's own, and the open-file limit that bounds how many connections it can hold.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use procfs::process::Process;
use serde::Serialize;

use crate::{Error, Result};

/// How often RSS is sampled for its peak.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The soft and hard `RLIMIT_NOFILE` after trying to raise the soft one to the hard one.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenFiles {
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft open-file limit as far as the hard one allows, and says where it is.
pub fn raise_open_files() -> OpenFiles {
    let raised = rlimit::increase_nofile_limit(u64::MAX);
    let (soft, hard) = rlimit::Resource::NOFILE
        .get()
        .unwrap_or((raised.as_ref().copied().unwrap_or(0), 0));
    crate::progress(format!(
        "open files: soft limit {soft}, hard limit {hard}{}",
        match raised {
            Ok(_) => String::new(),
            Err(e) => format!(" (could not raise it: {e})"),
        }
    ));
    OpenFiles { soft, hard }
}

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub rss_kib: u64,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
}

/// Reads `/proc/<pid>/status` (VmRSS) and `/proc/<pid>/stat` (utime + stime).
pub fn read(process: &Process) -> Result<Reading> {
    let proc_error = |source| Error::Proc {
        pid: process.pid,
        source,
    };
    let stat = process.stat().map_err(proc_error)?;
    let status = process.status().map_err(proc_error)?;
    Ok(Reading {
        rss_kib: status.vmrss.unwrap_or(0),
        cpu_ticks: stat.utime + stat.stime,
    })
}

/// What a process used during a run.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub rss_before_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_after_kib: u64,
    /// User + system CPU time between the start and the end of the run.
    pub cpu_secs: f64,
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RSS before {}, peak {}, after {}; CPU {:.2} s",
            mib(self.rss_before_kib),
            mib(self.rss_peak_kib),
            mib(self.rss_after_kib),
            self.cpu_secs
        )
    }
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The server's usage (when its pid was given) and the load generator's own, so a
/// report shows that the client was not the bottleneck.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    pub server: Option<Usage>,
    pub client: Usage,
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.server {
            Some(server) => writeln!(f, "  server: {server}")?,
            None => writeln!(f, "  server: not measured (give --pid)")?,
        }
        writeln!(f, "  client (troupe-load): {}", self.client)
    }
}

struct Watched {
    process: Process,
    before: Reading,
    peak_kib: AtomicU64,
}

impl Watched {
    fn new(process: Process) -> Result<Watched> {
        let before = read(&process)?;
        Ok(Watched {
            peak_kib: AtomicU64::new(before.rss_kib),
            process,
            before,
        })
    }

    fn sample(&self) -> Result<Reading> {
        let now = read(&self.process)?;
        self.peak_kib.fetch_max(now.rss_kib, Ordering::Relaxed);
        Ok(now)
    }

    fn usage(&self) -> Result<Usage> {
        let after = self.sample()?;
        Ok(Usage {
            rss_before_kib: self.before.rss_kib,
            rss_peak_kib: self.peak_kib.load(Ordering::Relaxed),
            rss_after_kib: after.rss_kib,
            cpu_secs: after.cpu_ticks.saturating_sub(self.before.cpu_ticks) as f64
                / procfs::ticks_per_second() as f64,
        })
    }
}

/// Samples the server (optional) and this process every 100 ms from a background task,
/// for peak RSS; CPU time is the difference between the start and [`Sampler::finish`].
pub struct Sampler {
    server: Option<Arc<Watched>>,
    client: Arc<Watched>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Takes the "before" readings and starts sampling. Fails when `pid` names no process
    /// this user can read.
    pub fn start(pid: Option<u32>) -> Result<Sampler> {
        let server = pid
            .map(|pid| {
                let pid = i32::try_from(pid)
                    .map_err(|_| Error::Invalid(format!("--pid {pid} is not a process id")))?;
                let process = Process::new(pid).map_err(|source| Error::Proc { pid, source })?;
                Watched::new(process).map(Arc::new)
            })
            .transpose()?;
        let myself = Process::myself().map_err(|source| Error::Proc {
            pid: std::process::id() as i32,
            source,
        })?;
        let client = Arc::new(Watched::new(myself)?);
        let (s, c) = (server.clone(), client.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                // A failed sample (the server just exited) shows at `finish`.
                if let Some(s) = &s {
                    let _ = s.sample();
                }
                let _ = c.sample();
            }
        });
        Ok(Sampler {
            server,
            client,
            task,
        })
    }

    /// The server's RSS now (KiB), when its pid was given.
    pub fn server_rss_kib(&self) -> Result<Option<u64>> {
        self.server
            .as_ref()
            .map(|s| s.sample().map(|r| r.rss_kib))
            .transpose()
    }

    /// Stops sampling and returns what each process used since [`Sampler::start`].
    pub fn finish(self) -> Result<Resources> {
        self.task.abort();
        Ok(Resources {
            server: self.server.as_ref().map(|s| s.usage()).transpose()?,
            client: self.client.usage()?,
        })
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}
