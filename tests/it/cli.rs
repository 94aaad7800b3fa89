//! The terminal client (`troupe run`, `tasks`, `show`, `logs`, `cancel`, `retry`, `login`,
//! `logout`): the built `troupe` binary run as a child process against a spawned server,
//! judged by its stdout, stderr and exit code; two tests drive it in a real terminal (tmux).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use uuid::Uuid;

use crate::helpers::{Backend, TestApp, both_backends};

both_backends!(run_prints_each_agents_output_and_exits_0);

/// Long enough for a test to act while it runs (about 100 chunks 100 ms apart per agent),
/// short of the helpers' deadlines.
const SLOW: &str = r#"{"latencyMs": 100, "tokens": 100}"#;
const QUICK: &str = r#"{"latencyMs": 5, "tokens": 4}"#;
const DEADLINE: Duration = Duration::from_secs(60);

/// The `troupe` binary as a client of one server, with a config directory of its own.
struct Client {
    server: String,
    token: Option<String>,
    config: PathBuf,
}

impl Client {
    fn new(server: &str, token: Option<&str>) -> Client {
        let config = std::env::temp_dir().join(format!("troupe-cli-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&config).unwrap();
        Client {
            server: server.to_string(),
            token: token.map(String::from),
            config,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_troupe"));
        command
            .args(args)
            .env("TROUPE_SERVER", &self.server)
            .env("XDG_CONFIG_HOME", &self.config)
            .env_remove("TROUPE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(token) = &self.token {
            command.env("TROUPE_TOKEN", token);
        }
        command
    }

    fn spawn(&self, args: &[&str]) -> Running {
        Running::new(self.command(args).spawn().unwrap())
    }

    /// Runs a command to its end.
    async fn run(&self, args: &[&str]) -> Finished {
        self.spawn(args).finish().await
    }

    fn session_file(&self) -> PathBuf {
        self.config.join("troupe").join("session.json")
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.config);
    }
}

#[derive(Debug)]
struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn said(&self, text: &str) {
        assert!(
            self.stderr.contains(text),
            "no {text:?} on stderr:\n{}",
            self.stderr
        );
    }

    fn printed(&self, text: &str) {
        assert!(
            self.stdout.contains(text),
            "no {text:?} on stdout:\n{}",
            self.stdout
        );
    }
}

/// A client process whose output is collected as it comes.
struct Running {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    fn new(mut child: Child) -> Running {
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            tokio::spawn(collect(child.stdout.take().unwrap(), stdout.clone())),
            tokio::spawn(collect(child.stderr.take().unwrap(), stderr.clone())),
        ];
        Running {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    fn outputs(&self) -> (String, String) {
        (
            self.stdout.lock().unwrap().clone(),
            self.stderr.lock().unwrap().clone(),
        )
    }

    /// Polls the output (bounded) until `ready(stdout, stderr)` holds.
    async fn wait_for(&self, what: &str, ready: impl Fn(&str, &str) -> bool) -> (String, String) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (stdout, stderr) = self.outputs();
            if ready(&stdout, &stderr) {
                return (stdout, stderr);
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not happen in {DEADLINE:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn interrupt(&self) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn finish(mut self) -> Finished {
        let status = tokio::time::timeout(DEADLINE, self.child.wait()).await;
        let (stdout, stderr) = self.outputs();
        let status = status.unwrap_or_else(|_| {
            panic!("the client did not exit in {DEADLINE:?}\nstdout:\n{stdout}\nstderr:\n{stderr}")
        });
        for reader in self.readers.drain(..) {
            reader.await.unwrap();
        }
        let (stdout, stderr) = self.outputs();
        Finished {
            code: status.unwrap().code(),
            stdout,
            stderr,
        }
    }
}

async fn collect(mut pipe: impl AsyncRead + Unpin, into: Arc<Mutex<String>>) {
    let mut buffer = [0u8; 8192];
    while let Ok(n @ 1..) = pipe.read(&mut buffer).await {
        into.lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
}

/// `troupe run "Build a todo app" --agents <agents> <flags…>`.
fn run_args<'a>(agents: &'a str, flags: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "Build a todo app", "--agents", agents];
    args.extend_from_slice(flags);
    args
}

/// The task id from `task <id> submitted`.
fn submitted(stderr: &str) -> Option<Uuid> {
    stderr.lines().find_map(|l| {
        l.strip_prefix("task ")?
            .strip_suffix(" submitted")?
            .parse()
            .ok()
    })
}

/// Every line of `stdout` as JSON, checked to be the log 1..N, each event once, in order.
fn dense_log(stdout: &str) -> Vec<Value> {
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(seqs, expected, "each event once, in seq order");
    events
}

async fn setup(backend: Backend) -> (TestApp, String, Client) {
    let app = TestApp::spawn(backend).await;
    let token = app.user().await;
    let client = Client::new(app.url(0), Some(&token));
    (app, token, client)
}

async fn run_prints_each_agents_output_and_exits_0(backend: Backend) {
    let (app, token, client) = setup(backend).await;

    let run = client
        .run(&run_args("tech-lead,frontend,qa", &["--options", QUICK]))
        .await;

    assert_eq!(run.code, Some(0), "{run:?}");
    let task_id = submitted(&run.stderr).expect("the task id is told");
    let log = app.log(&token, task_id).await;
    let outputs: Vec<&Value> = log
        .iter()
        .filter(|e| e["type"] == "agent_complete")
        .collect();
    assert_eq!(outputs.len(), 3);
    for (event, heading) in outputs.iter().zip([
        "── Tech Lead (tech-lead) ──",
        "── Frontend Engineer (frontend) ──",
        "── QA Engineer (qa) ──",
    ]) {
        let output = event["output"].as_str().unwrap().trim_end();
        run.printed(&format!("{heading}\n{output}\n"));
    }
    for role in ["tech-lead", "frontend", "qa"] {
        run.said(&format!("{role}: running"));
        run.said(&format!("{role}: done in "));
    }
    run.said("✔ task completed in ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_prints_every_event_once_and_in_order() {
    let (app, token, client) = setup(Backend::Embedded).await;

    let run = client
        .run(&run_args("tech-lead,qa", &["--parallel", "--json"]))
        .await;

    assert_eq!(run.code, Some(0), "{run:?}");
    let events = dense_log(&run.stdout);
    assert_eq!(events.last().unwrap()["type"], "task_complete");
    let task_id = events[0]["taskId"].as_str().unwrap();
    assert_eq!(
        events,
        app.log(&token, task_id.parse::<Uuid>().unwrap()).await
    );
    assert_eq!(
        run.stderr, "",
        "stdout carries the events, and nothing else is said"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_prints_only_the_task_id_and_the_outcome() {
    let (app, token, client) = setup(Backend::Embedded).await;

    let run = client
        .run(&run_args("qa", &["--quiet", "--options", QUICK]))
        .await;

    assert_eq!(run.code, Some(0), "{run:?}");
    let task_id: Uuid = run
        .stdout
        .trim()
        .parse()
        .expect("stdout is the task id alone");
    assert_eq!(
        app.wait_finished(&token, task_id).await["status"],
        "completed"
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    run.said("✔ task completed in ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_exits_1_can_be_retried_and_deleted() {
    let (_app, _token, client) = setup(Backend::Embedded).await;

    let run = client
        .run(&run_args(
            "tech-lead,qa",
            &[
                "--options",
                r#"{"latencyMs": 5, "tokens": 4, "failAgents": ["qa"], "failAttempts": 1}"#,
            ],
        ))
        .await;

    assert_eq!(run.code, Some(1), "{run:?}");
    run.said("qa: failed after");
    run.said("✖ task failed after");
    let task_id = submitted(&run.stderr).unwrap().to_string();

    let retry = client.run(&["retry", &task_id]).await;
    assert_eq!(retry.code, Some(0), "{retry:?}");
    retry.said("queued again for qa");
    let follow = client.run(&["logs", &task_id, "--follow"]).await;
    assert_eq!(
        follow.code,
        Some(0),
        "the retried run completed: {follow:?}"
    );
    let events = dense_log(&follow.stdout);
    assert_eq!(events.last().unwrap()["type"], "task_complete");
    assert!(
        events.iter().any(|e| e["type"] == "task_error"),
        "both runs are in the log"
    );

    let delete = client.run(&["delete", &task_id]).await;
    assert_eq!(delete.code, Some(0), "{delete:?}");
    delete.said(&format!("task {task_id} deleted"));
    let show = client.run(&["show", &task_id]).await;
    assert_eq!(show.code, Some(5), "gone: {show:?}");
    show.said("task_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_another_client_ends_the_run_with_3() {
    let (_app, _token, client) = setup(Backend::Embedded).await;
    let run = client.spawn(&run_args("tech-lead,qa", &["--options", SLOW]));
    let (_, stderr) = run
        .wait_for("tech-lead starting", |_, err| {
            err.contains("tech-lead: running")
        })
        .await;
    let task_id = submitted(&stderr).unwrap().to_string();

    let cancel = client.run(&["cancel", &task_id]).await;

    assert_eq!(cancel.code, Some(0), "{cancel:?}");
    cancel.said("cancel requested");
    let run = run.finish().await;
    assert_eq!(run.code, Some(3), "{run:?}");
    run.said("tech-lead: cancelled after");
    run.said("⊘ task cancelled after");
    let again = client.run(&["cancel", &task_id]).await;
    assert_eq!(again.code, Some(5), "the server's refusal: {again:?}");
    again.said("task_finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_without_a_terminal_detaches_and_the_task_goes_on() {
    let (app, token, client) = setup(Backend::Embedded).await;
    let run = client.spawn(&run_args("qa", &["--options", SLOW]));
    let (_, stderr) = run
        .wait_for("qa starting", |_, err| err.contains("qa: running"))
        .await;
    let task_id = submitted(&stderr).unwrap();

    run.interrupt();

    let run = run.finish().await;
    assert_eq!(run.code, Some(4), "{run:?}");
    run.said(&format!("detached; task {task_id} goes on"));
    let view = app.wait_view(&token, task_id, "a view", |_| true).await;
    assert_eq!(view["status"], "running", "a detach cancels nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_show_and_logs_print_what_the_server_has() {
    let (app, token, client) = setup(Backend::Embedded).await;
    let task_id = app
        .submit(
            &token,
            &json!({"title": "Launch page", "description": "Build a launch page",
                    "selectedAgents": ["tech-lead", "qa"], "providerOptions": {"latencyMs": 5, "tokens": 4}}),
        )
        .await;
    app.wait_finished(&token, task_id).await;
    let id = task_id.to_string();

    let tasks = client.run(&["tasks"]).await;
    let show = client.run(&["show", &id]).await;
    let logs = client.run(&["logs", &id]).await;

    assert_eq!(tasks.code, Some(0), "{tasks:?}");
    let row = tasks
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .expect("the task is listed");
    assert!(
        row.contains("completed") && row.ends_with("Launch page"),
        "{row}"
    );
    assert_eq!(show.code, Some(0), "{show:?}");
    show.printed("status   completed in ");
    show.printed("── QA Engineer (qa) ──");
    let log = app.log(&token, task_id).await;
    assert_eq!(logs.code, Some(0), "{logs:?}");
    assert_eq!(dense_log(&logs.stdout), log);
    let missing = client.run(&["show", &Uuid::now_v7().to_string()]).await;
    assert_eq!(missing.code, Some(5), "{missing:?}");
    missing.said("task_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_streams_a_running_task_to_its_end() {
    let (app, token, client) = setup(Backend::Embedded).await;
    let task_id = app
        .submit(
            &token,
            &json!({"description": "Build a launch page", "selectedAgents": ["qa"],
                    "providerOptions": {"latencyMs": 20, "tokens": 40}}),
        )
        .await;

    let follow = client
        .run(&["logs", &task_id.to_string(), "--follow"])
        .await;

    assert_eq!(follow.code, Some(0), "{follow:?}");
    let events = dense_log(&follow.stdout);
    assert_eq!(events.last().unwrap()["type"], "task_complete");
    assert_eq!(events, app.log(&token, task_id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_keeps_a_private_session_and_logout_forgets_it() {
    let app = TestApp::spawn(Backend::Embedded).await;
    app.register("ada@example.com").await;
    let client = Client::new(app.url(0), None);

    let wrong = login(&client, "not the password").await;
    assert_eq!(wrong.code, Some(5), "{wrong:?}");
    wrong.said("wrong email or password");
    assert!(!client.session_file().exists());

    let login = login(&client, "correct horse battery").await;
    assert_eq!(login.code, Some(0), "{login:?}");
    assert_eq!(mode(&client.session_file()), 0o600);
    let session: Value =
        serde_json::from_str(&std::fs::read_to_string(client.session_file()).unwrap()).unwrap();
    assert_eq!(session["server"], app.url(0));
    let tasks = client.run(&["tasks"]).await;
    assert_eq!(tasks.code, Some(0), "the stored token is used: {tasks:?}");
    let elsewhere = client
        .run(&["tasks", "--server", "http://127.0.0.1:9"])
        .await;
    assert_eq!(
        elsewhere.code,
        Some(2),
        "the token is not sent to another server"
    );

    let stored = session["token"].as_str().unwrap();
    assert_eq!(app.get("/api/tasks", stored).await.status(), 200);
    let logout = client.run(&["logout"]).await;
    assert_eq!(logout.code, Some(0), "{logout:?}");
    logout.said("the session is ended on the server");
    assert!(!client.session_file().exists());
    assert_eq!(
        app.get("/api/tasks", stored).await.status(),
        401,
        "the forgotten token is refused too"
    );
    let tasks = client.run(&["tasks"]).await;
    assert_eq!(tasks.code, Some(2), "{tasks:?}");
    tasks.said("not logged in");
}

async fn login(client: &Client, password: &str) -> Finished {
    let mut command = client.command(&["login", "--email", "ada@example.com", "--password-stdin"]);
    let mut child = command.stdin(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{password}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    Running::new(child).finish().await
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_nothing_is_submitted() {
    let (app, token, client) = setup(Backend::Embedded).await;
    let anonymous = Client::new(app.url(0), None);
    let unreachable = Client::new("http://127.0.0.1:9", Some(&token));

    let cases = [
        (
            &client,
            &["run", "task", "--agents", "qa", "--options", "{tokens: 4}"][..],
            2,
            "--options is not valid JSON",
        ),
        (
            &client,
            &["run", "task", "--agents", "qa", "--options", "[4]"],
            2,
            "--options must be a JSON object",
        ),
        (
            &client,
            &["run", "task", "--agents", "qa,ceo"],
            5,
            "unknown agent \"ceo\"",
        ),
        (
            &anonymous,
            &["run", "task", "--agents", "qa"],
            2,
            "not logged in",
        ),
        (&client, &["show", "not-a-task-id"], 2, "invalid value"),
        (
            &unreachable,
            &["tasks"],
            6,
            "cannot reach http://127.0.0.1:9",
        ),
    ];
    for (who, args, code, says) in cases {
        let refused = who.run(args).await;
        assert_eq!(refused.code, Some(code), "{args:?}: {refused:?}");
        refused.said(says);
    }

    let list: Value = app.get("/api/tasks", &token).await.json().await.unwrap();
    assert_eq!(list["tasks"], json!([]), "nothing was submitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_run_is_resumed_without_a_gap_or_a_repeat() {
    let (mut app, token, client) = setup(Backend::Embedded).await;
    let run = client.spawn(&run_args(
        "tech-lead,qa",
        &["--json", "--options", r#"{"latencyMs": 40, "tokens": 40}"#],
    ));
    run.wait_for("text streaming", |out, _| {
        out.contains(r#""type":"agent_token""#)
    })
    .await;

    app.restart_embedded().await;

    let run = run.finish().await;
    assert_eq!(run.code, Some(0), "{run:?}");
    run.said("reconnecting");
    run.said("reconnected; resuming after event ");
    let events = dense_log(&run.stdout);
    let task_id: Uuid = events[0]["taskId"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        events,
        app.log(&token, task_id).await,
        "the whole log, once"
    );
    assert!(
        events.iter().any(|e| e["type"] == "task_resumed"),
        "the restart is in it"
    );
    assert_eq!(events.last().unwrap()["type"], "task_complete");
}

/// A tmux server of the test's own (its own socket), with one fixed-size window running a
/// shell command; killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("troupe-cli-{}", Uuid::new_v4().simple()),
        };
        let status = std::process::Command::new("tmux")
            .args(["-L", &tmux.socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", "120", "-y", "40", command])
            .status()
            .expect("tmux is installed (scripts/test installs it)");
        assert!(status.success());
        tmux
    }

    fn screen(&self) -> String {
        let out = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-S", "-200"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let status = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "send-keys"])
            .args(keys)
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Polls the screen (bounded) until `ready` holds; the screen.
    async fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not show in {DEADLINE:?}:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// `troupe run …` in a terminal, then `exit=<code>` once it ends; the shell stays so that
/// the last screen can be read.
fn in_terminal(client: &Client, args: &str) -> Tmux {
    Tmux::start(&format!(
        "env TROUPE_SERVER={} TROUPE_TOKEN={} XDG_CONFIG_HOME={} {} {args}; echo exit=$?; sleep 600",
        client.server,
        client.token.as_deref().unwrap(),
        client.config.display(),
        env!("CARGO_BIN_EXE_troupe"),
    ))
}

/// The screen line of an agent's progress.
fn agent_row<'s>(screen: &'s str, role: &str) -> Option<&'s str> {
    screen
        .lines()
        .rev()
        .find(|l| l.split_whitespace().nth(1) == Some(role))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_shows_a_live_line_per_agent() {
    let (_app, _token, client) = setup(Backend::Embedded).await;
    let roles = ["tech-lead", "frontend", "qa"];
    let terminal = in_terminal(
        &client,
        r#"run 'Build a todo app' --agents tech-lead,frontend,qa --parallel --options '{"latencyMs": 60, "tokens": 60}'"#,
    );

    terminal
        .wait_for("a running line with tokens for every agent", |screen| {
            roles.iter().all(|role| {
                agent_row(screen, role)
                    .is_some_and(|row| row.contains("running") && row.contains(" tokens"))
            })
        })
        .await;
    let screen = terminal.wait_for("the end", |s| s.contains("exit=")).await;

    assert!(screen.contains("exit=0"), "{screen}");
    assert!(screen.contains("✔ task completed in "), "{screen}");
    for role in roles {
        let row = agent_row(&screen, role).unwrap();
        assert!(
            row.starts_with('✔') && row.contains("done") && row.contains(" tokens"),
            "{row}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_in_a_terminal_asks_and_can_cancel_the_task() {
    let (_app, _token, client) = setup(Backend::Embedded).await;
    let terminal = in_terminal(
        &client,
        &format!("run 'A long task' --agents qa --options '{SLOW}'"),
    );
    terminal
        .wait_for("qa running", |s| {
            agent_row(s, "qa").is_some_and(|r| r.contains("running"))
        })
        .await;

    terminal.keys(&["C-c"]);
    terminal
        .wait_for("the question", |s| {
            s.contains("cancel the task or detach? [c/d]")
        })
        .await;
    terminal.keys(&["c", "Enter"]);
    let screen = terminal.wait_for("the end", |s| s.contains("exit=")).await;

    assert!(screen.contains("exit=3"), "{screen}");
    assert!(screen.contains("⊘ task cancelled after"), "{screen}");
    assert!(
        agent_row(&screen, "qa").unwrap().contains("cancelled"),
        "{screen}"
    );
}
