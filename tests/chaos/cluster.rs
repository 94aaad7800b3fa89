//! The chaos suite's own infrastructure, in a temp dir on free ports so that knocking it over
//! disturbs nothing else: a NATS server with JetStream, a PostgreSQL cluster (`initdb` +
//! `pg_ctl`, as the `postgres` user when we are root), and the compiled `api` and `worker`
//! binaries as child processes that can be killed, stopped and started again. Everything is
//! stopped on drop, also when the test panics; the logs are then kept and their paths printed.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::{Instant, sleep};

pub use crate::procs::Signal;
use crate::procs::{Proc, START_MARK, free_port, workspace_binary};

/// Signs session tokens on every api of the cluster.
pub const JWT_SECRET: &str = "chaos-suite-jwt-secret-0123456789abcdef";

/// The subject prefix of every process of a cluster (each cluster has its own NATS).
pub const NATS_PREFIX: &str = "chaos";

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub apis: usize,
    pub workers: usize,
    /// `TROUPE_QUEUE_ACK_WAIT_SECS`: how soon a dead worker's task is handed to another.
    pub ack_wait_secs: u64,
    /// `TROUPE_MAX_TASK_RUNS` of the workers.
    pub max_task_runs: u32,
}

/// The programs the cluster runs.
struct Programs {
    api: PathBuf,
    worker: PathBuf,
    nats_server: PathBuf,
    initdb: PathBuf,
    pg_ctl: PathBuf,
}

impl Programs {
    fn find() -> Programs {
        let (api, worker) = (workspace_binary("api"), workspace_binary("worker"));
        Programs {
            api,
            worker,
            nats_server: program(
                "nats-server",
                &["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"],
            ),
            initdb: postgres_program("initdb"),
            pg_ctl: postgres_program("pg_ctl"),
        }
    }
}

/// `name` on PATH or in one of `extra` dirs.
fn program(name: &str, extra: &[&str]) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` was not found on PATH nor in {extra:?}: the chaos suite needs it")
        })
}

/// `initdb` and `pg_ctl`: on PATH, else in the newest /usr/lib/postgresql/<version>/bin.
fn postgres_program(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    versions.sort();
    let extra: Vec<String> = versions
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    program(name, &extra.iter().map(String::as_str).collect::<Vec<_>>())
}

fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// NATS, PostgreSQL, the apis and the workers of one chaos run.
pub struct Cluster {
    /// The temp dir: data, sockets and one log per process.
    pub dir: PathBuf,
    config: ClusterConfig,
    programs: Programs,
    as_postgres: bool,
    nats_port: u16,
    pg_port: u16,
    api_ports: Vec<u16>,
    nats: Proc,
    apis: Vec<Proc>,
    workers: Vec<Proc>,
    pg_running: bool,
    since: Instant,
    http: reqwest::Client,
    /// What the cluster went through, with times since it started.
    pub timeline: Vec<String>,
    /// Processes that exited without being told to.
    pub unexpected_exits: Vec<String>,
    /// Processes that gave up at start because NATS or PostgreSQL was unreachable (they
    /// exit, as designed, and are started again, as a supervisor such as Compose's
    /// `restart: unless-stopped` would).
    pub startup_exits: Vec<String>,
    /// (name, seconds) of every graceful stop.
    pub graceful_stops: Vec<(String, f64)>,
    /// Graceful stops that had to end with SIGKILL.
    pub stuck_stops: Vec<String>,
}

impl Cluster {
    /// Starts PostgreSQL, NATS, the apis (waiting until they answer) and the workers.
    pub async fn start(config: ClusterConfig) -> Cluster {
        let programs = Programs::find();
        let dir =
            std::env::temp_dir().join(format!("troupe-chaos-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(&dir).unwrap();
        // The postgres user must reach its data dir inside.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let mut cluster = Cluster {
            nats: Proc::new("nats", &dir),
            apis: (0..config.apis)
                .map(|i| Proc::new(&format!("api-{i}"), &dir))
                .collect(),
            workers: (0..config.workers)
                .map(|i| Proc::new(&format!("worker-{i}"), &dir))
                .collect(),
            api_ports: (0..config.apis).map(|_| free_port()).collect(),
            nats_port: free_port(),
            pg_port: free_port(),
            dir,
            config,
            programs,
            as_postgres: running_as_root(),
            pg_running: false,
            since: Instant::now(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
            timeline: vec![],
            unexpected_exits: vec![],
            startup_exits: vec![],
            graceful_stops: vec![],
            stuck_stops: vec![],
        };
        cluster.init_postgres();
        cluster.start_postgres();
        cluster.start_nats().await;
        for i in 0..cluster.apis.len() {
            cluster.start_api(i).await;
        }
        for i in 0..cluster.workers.len() {
            cluster.start_worker(i);
        }
        cluster
    }

    pub fn api_urls(&self) -> Vec<String> {
        self.api_ports
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect()
    }

    pub fn log_paths(&self) -> Vec<PathBuf> {
        let mut logs = vec![self.dir.join("postgres.log"), self.nats.log.clone()];
        logs.extend(self.apis.iter().chain(&self.workers).map(|p| p.log.clone()));
        logs
    }

    /// When the cluster started: the times of the timeline count from it.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// The lines of every process's log that contain `needle` (e.g. a task id), prefixed
    /// with the log's name, colour codes removed.
    pub fn grep_logs(&self, needle: &str) -> Vec<String> {
        let mut lines = vec![];
        for proc in self.apis.iter().chain(&self.workers) {
            let log = fs::read_to_string(&proc.log).unwrap_or_default();
            let mut start = 0;
            for line in log.lines() {
                if line.starts_with(START_MARK) {
                    start += 1;
                }
                if line.contains(needle) {
                    lines.push(format!(
                        "{} (start #{start}): {}",
                        proc.name,
                        strip_ansi(line)
                    ));
                }
            }
        }
        lines
    }

    /// Prints `what` with the time and keeps it in the timeline.
    pub fn note(&mut self, what: String) {
        let line = format!("+{:6.1}s {what}", self.since.elapsed().as_secs_f64());
        println!("chaos: {line}");
        self.timeline.push(line);
    }

    // ---- PostgreSQL ----

    fn pg_data(&self) -> PathBuf {
        self.dir.join("pg")
    }

    /// `program args…`, as the postgres user when we are root (initdb refuses root), with
    /// its output appended to pg_ctl.log.
    fn run_pg(&self, program: &Path, args: &[&str]) -> Result<(), String> {
        let mut command = self.pg_command(program);
        let log_path = self.dir.join("pg_ctl.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let status = tokio::task::block_in_place(|| command.status());
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!(
                "{} {args:?} failed ({s}); see {} and {}",
                program.display(),
                log_path.display(),
                self.dir.join("postgres.log").display()
            )),
            Err(e) => Err(format!("running {}: {e}", program.display())),
        }
    }

    /// `program`, as the postgres user when we are root.
    fn pg_command(&self, program: &Path) -> Command {
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn init_postgres(&mut self) {
        let data = self.pg_data();
        fs::create_dir_all(&data).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).unwrap();
        for file in ["postgres.log", "pg_ctl.log"] {
            fs::write(self.dir.join(file), "").unwrap();
        }
        if self.as_postgres {
            for path in [data.clone(), self.dir.join("postgres.log")] {
                let status = Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&path)
                    .status()
                    .unwrap();
                assert!(status.success(), "chown postgres {}", path.display());
            }
        }
        let data = data.display().to_string();
        self.run_pg(
            &self.programs.initdb,
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-N",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )
        .unwrap_or_else(|e| panic!("initdb: {e}"));
    }

    pub fn start_postgres(&mut self) {
        let data = self.pg_data().display().to_string();
        let log = self.dir.join("postgres.log").display().to_string();
        let options = format!(
            "-p {} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.pg_port
        );
        let pg_ctl = self.programs.pg_ctl.clone();
        self.run_pg(
            &pg_ctl,
            &[
                "-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60", "start",
            ],
        )
        .unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"));
        self.pg_running = true;
        self.note(format!("PostgreSQL up on port {}", self.pg_port));
    }

    /// `pg_ctl stop -m fast`: connections are cut, the server checkpoints and exits.
    pub fn stop_postgres(&mut self) {
        let data = self.pg_data().display().to_string();
        let pg_ctl = self.programs.pg_ctl.clone();
        self.run_pg(
            &pg_ctl,
            &["-D", &data, "-m", "fast", "-w", "-t", "60", "stop"],
        )
        .unwrap_or_else(|e| panic!("stopping PostgreSQL: {e}"));
        self.pg_running = false;
        self.note("PostgreSQL stopped (fast)".into());
    }

    pub async fn restart_postgres(&mut self, down: Duration) {
        self.stop_postgres();
        sleep(down).await;
        self.start_postgres();
    }

    fn postgres_alive(&self) -> bool {
        let data = self.pg_data().display().to_string();
        self.run_pg(&self.programs.pg_ctl, &["-D", &data, "status"])
            .is_ok()
    }

    pub fn database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.pg_port)
    }

    // ---- NATS ----

    pub async fn start_nats(&mut self) {
        let store = self.dir.join("nats");
        let mut command = Command::new(&self.programs.nats_server);
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.nats_port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&store);
        self.nats.spawn(command, self.since);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.nats_port))
            .await
            .is_err()
        {
            if let Some(status) = self.nats.exited() {
                panic!(
                    "nats-server exited at start ({status}); see {}",
                    self.nats.log.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {} within 20 s; see {}",
                self.nats_port,
                self.nats.log.display()
            );
            sleep(Duration::from_millis(50)).await;
        }
        self.note(format!("NATS up on port {}", self.nats_port));
    }

    pub async fn kill_nats(&mut self, signal: Signal) {
        self.nats.signal(signal);
        let (status, took, _) = self.nats.wait(Duration::from_secs(10)).await;
        self.note(format!(
            "NATS {}: exited in {:.1}s ({})",
            signal.name(),
            took.as_secs_f64(),
            describe(status)
        ));
    }

    /// Kills NATS and starts it again on the same port and store dir.
    pub async fn restart_nats(&mut self, down: Duration) {
        self.kill_nats(Signal::Kill).await;
        sleep(down).await;
        self.start_nats().await;
    }

    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats_port)
    }

    // ---- api and worker processes ----

    /// A clean environment: nothing of ours (DATABASE_URL, provider keys…) leaks in.
    fn troupe_command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info,sqlx=warn,tower_http=warn")
            .env("DATABASE_URL", self.database_url())
            .env("NATS_URL", self.nats_url())
            .env("TROUPE_NATS_PREFIX", NATS_PREFIX)
            .env("TROUPE_DATA_DIR", self.dir.join("data"))
            .env(
                "TROUPE_QUEUE_ACK_WAIT_SECS",
                self.config.ack_wait_secs.to_string(),
            )
            .env("TROUPE_DB_MAX_CONNECTIONS", "8")
            .env("TROUPE_SUBMITS_PER_MINUTE", "1000000")
            // The default limit of active tasks per user stays on, so that faults meet its
            // admissions; a lost one is made by the next sweep, 2 s away.
            .env("TROUPE_SWEEP_SECS", "2")
            .env("TROUPE_TOKEN_FLUSH_MS", "50")
            .env(
                "TROUPE_MAX_TASK_RUNS",
                self.config.max_task_runs.to_string(),
            );
        command
    }

    /// Starts api `i` on its port and waits until it answers /healthz (a few tries: the
    /// port of a killed process may be briefly unavailable).
    pub async fn start_api(&mut self, i: usize) {
        let url = format!("http://127.0.0.1:{}/healthz", self.api_ports[i]);
        let mut last = String::new();
        for _ in 0..5 {
            let mut command = self.troupe_command(&self.programs.api.clone());
            command
                .env("TROUPE_JWT_SECRET", JWT_SECRET)
                .env("TROUPE_BIND", format!("127.0.0.1:{}", self.api_ports[i]));
            self.apis[i].spawn(command, self.since);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = self.apis[i].exited() {
                    last = format!("it exited at start ({status})");
                    break;
                }
                if let Ok(r) = self.http.get(&url).send().await
                    && r.status().is_success()
                {
                    self.note(format!("api {i} up on port {}", self.api_ports[i]));
                    return;
                }
                if Instant::now() > deadline {
                    panic!(
                        "api {i} did not answer {url} within 30 s; see {}",
                        self.apis[i].log.display()
                    );
                }
                sleep(Duration::from_millis(50)).await;
            }
            sleep(Duration::from_millis(300)).await;
        }
        panic!(
            "api {i} could not start: {last}; see {}",
            self.apis[i].log.display()
        );
    }

    pub fn start_worker(&mut self, i: usize) {
        let command = self.troupe_command(&self.programs.worker.clone());
        self.workers[i].spawn(command, self.since);
        self.note(format!("worker {i} started"));
    }

    /// Sends `signal` to api `i` and waits until it has exited.
    pub async fn kill_api(&mut self, i: usize, signal: Signal) {
        self.stop(Role::Api, i, signal).await;
    }

    /// Sends `signal` to worker `i` and waits until it has exited.
    pub async fn kill_worker(&mut self, i: usize, signal: Signal) {
        self.stop(Role::Worker, i, signal).await;
    }

    async fn stop(&mut self, role: Role, i: usize, signal: Signal) {
        let grace = match signal {
            Signal::Kill => Duration::from_secs(5),
            Signal::Term => Duration::from_secs(20),
        };
        let proc = match role {
            Role::Api => &mut self.apis[i],
            Role::Worker => &mut self.workers[i],
        };
        let name = proc.name.clone();
        proc.signal(signal);
        let (status, took, killed) = proc.wait(grace).await;
        if signal == Signal::Term {
            self.graceful_stops.push((name.clone(), took.as_secs_f64()));
            if killed {
                self.stuck_stops.push(format!(
                    "{name} did not exit within {}s of SIGTERM and was killed",
                    grace.as_secs()
                ));
            }
        }
        self.note(format!(
            "{name} {}: exited in {:.2}s ({}){}",
            signal.name(),
            took.as_secs_f64(),
            describe(status),
            if killed {
                ", KILLED after the grace period"
            } else {
                ""
            }
        ));
    }

    /// Records (and returns) the processes that exited without being told to, PostgreSQL
    /// included; `ensure_up` starts them again. One that could not reach a backend at start
    /// is only noted (`startup_exits`).
    pub fn reap(&mut self) -> Vec<String> {
        let mut dead = vec![];
        let mut at_start = vec![];
        for proc in std::iter::once(&mut self.nats)
            .chain(self.apis.iter_mut())
            .chain(self.workers.iter_mut())
        {
            if let Some(status) = proc.exited() {
                let output = proc.last_run_output();
                let what = format!(
                    "{} exited on its own ({status}); see {}",
                    proc.name,
                    proc.log.display()
                );
                if output.contains("Error: connecting to the store and NATS") {
                    let cause = output
                        .lines()
                        .skip_while(|l| !l.starts_with("Caused by:"))
                        .nth(1)
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    at_start.push(format!("{what}: could not connect at start: {cause}"));
                } else {
                    dead.push(what);
                }
            }
        }
        for what in at_start {
            self.note(format!("{what} (started again)"));
            self.startup_exits.push(what);
        }
        if self.pg_running && !self.postgres_alive() {
            self.pg_running = false;
            dead.push(format!(
                "PostgreSQL is down on its own; see {}",
                self.dir.join("postgres.log").display()
            ));
        }
        for what in &dead {
            self.note(format!("UNEXPECTED: {what}"));
        }
        self.unexpected_exits.extend(dead.iter().cloned());
        dead
    }

    /// Starts whatever is not running.
    pub async fn ensure_up(&mut self) {
        if !self.pg_running {
            self.start_postgres();
        }
        if self.nats.child.is_none() {
            self.start_nats().await;
        }
        for i in 0..self.apis.len() {
            if self.apis[i].child.is_none() {
                self.start_api(i).await;
            }
        }
        for i in 0..self.workers.len() {
            if self.workers[i].child.is_none() {
                self.start_worker(i);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Role {
    Api,
    Worker,
}

/// `line` without ANSI colour sequences (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn describe(status: Option<ExitStatus>) -> String {
    status.map_or_else(|| "not running".into(), |s| s.to_string())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for proc in self.apis.iter_mut().chain(self.workers.iter_mut()) {
            proc.kill_now();
        }
        self.nats.kill_now();
        if self.pg_data().join("postmaster.pid").exists() {
            let data = self.pg_data().display().to_string();
            let _ = self
                .pg_command(&self.programs.pg_ctl)
                .args(["-D", &data, "-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let keep = std::env::var_os("CHAOS_KEEP").is_some();
        if std::thread::panicking() || keep {
            // Keep the logs, not the data.
            let _ = fs::remove_dir_all(self.pg_data());
            let _ = fs::remove_dir_all(self.dir.join("nats"));
            eprintln!("chaos: the logs are kept in {}:", self.dir.display());
            for log in self.log_paths() {
                eprintln!("  {}", log.display());
            }
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
