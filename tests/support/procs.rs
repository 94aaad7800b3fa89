//! Troupe's compiled binaries as child processes, shared by the test binaries that run them
//! (`chaos`, and `it`'s traces test): where the binaries are, free ports, and a process whose
//! output goes to a log file and which is killed when dropped.

// Each test binary that includes this file uses a part of it.
#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use tokio::time::{Instant, sleep};

/// Starts each run's section of a process's log.
pub const START_MARK: &str = "===== start";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGKILL: the process dies on the spot.
    Kill,
    /// SIGTERM: the process shuts down gracefully.
    Term,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Kill => "SIGKILL",
            Signal::Term => "SIGTERM",
        }
    }
}

/// The workspace binary `name` (`api`, `worker`), checked to be built from the sources as
/// they are now.
pub fn workspace_binary(name: &str) -> PathBuf {
    // The workspace's binaries sit beside `troupe`, the only one cargo builds for this
    // package's tests.
    let troupe = PathBuf::from(env!("CARGO_BIN_EXE_troupe"));
    let binary = troupe.parent().unwrap().join(name);
    assert!(
        binary.exists(),
        "{} is missing. This test runs the workspace's `api` and `worker` binaries: \
         `cargo build --workspace --bins` first (scripts/test does)",
        binary.display()
    );
    refuse_stale(&binary);
    binary
}

/// A binary older than a source it is built from was not rebuilt for this run (e.g. `cargo
/// nextest run --test chaos` without `--workspace` builds only the root package).
fn refuse_stale(binary: &Path) {
    let built = fs::metadata(binary).and_then(|m| m.modified()).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for dir in ["api/src", "worker/src", "events/src", "migrations"] {
        newest_source(&root.join(dir), &mut newest);
    }
    for file in [
        "api/Cargo.toml",
        "worker/Cargo.toml",
        "events/Cargo.toml",
        "Cargo.lock",
    ] {
        newest_source(&root.join(file), &mut newest);
    }
    if let Some((modified, source)) = newest {
        assert!(
            modified <= built,
            "{} is older than {}: it was not rebuilt for this run. `cargo build --workspace \
             --bins` first (scripts/test does)",
            binary.display(),
            source.display()
        );
    }
}

fn newest_source(path: &Path, newest: &mut Option<(SystemTime, PathBuf)>) {
    let Ok(meta) = fs::metadata(path) else { return };
    if meta.is_dir() {
        for entry in fs::read_dir(path).into_iter().flatten().flatten() {
            newest_source(&entry.path(), newest);
        }
        return;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let source = name.ends_with(".rs")
        || name.ends_with(".sql")
        || name.ends_with(".toml")
        || name == "Cargo.lock";
    if let (true, Ok(modified)) = (source, meta.modified())
        && newest.as_ref().is_none_or(|(m, _)| modified > *m)
    {
        *newest = Some((modified, path.to_path_buf()));
    }
}

/// A port nothing listens on now. Never 4222 or 5432: those are the shared servers.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port != 4222 && port != 5432 {
            return port;
        }
    }
}

/// A process a test starts, stops and starts again; its output is appended to `log`.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    pub child: Option<Child>,
    starts: u32,
}

impl Proc {
    pub fn new(name: &str, dir: &Path) -> Proc {
        Proc {
            name: name.to_string(),
            log: dir.join(format!("{name}.log")),
            child: None,
            starts: 0,
        }
    }

    /// Starts `command` with its output in the log, after a line that marks the start.
    pub fn spawn(&mut self, mut command: Command, since: Instant) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        writeln!(
            log,
            "\n{START_MARK} #{} of {} at +{:.1}s =====",
            self.starts,
            self.name,
            since.elapsed().as_secs_f64()
        )
        .unwrap();
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.name));
        self.child = Some(child);
    }

    pub fn signal(&mut self, signal: Signal) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        match signal {
            Signal::Kill => {
                let _ = child.kill();
            }
            Signal::Term => {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
            }
        }
    }

    /// Waits until the process exits, with SIGKILL after `grace`: its status, how long it
    /// took, and whether it had to be killed.
    pub async fn wait(&mut self, grace: Duration) -> (Option<ExitStatus>, Duration, bool) {
        let Some(mut child) = self.child.take() else {
            return (None, Duration::ZERO, false);
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return (Some(status), start.elapsed(), false);
            }
            if start.elapsed() > grace {
                let _ = child.kill();
                return (child.wait().ok(), start.elapsed(), true);
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its exit status when it ended on its own (it is then no longer running).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// What the process wrote since its last start.
    pub fn last_run_output(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        match log.rfind(START_MARK) {
            Some(i) => log[i..].to_string(),
            None => log,
        }
    }

    pub fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_now();
    }
}
