//! The client's short commands: list and show tasks, print or follow a log, cancel, retry,
//! and the session's login and logout.

use std::io::{self, BufRead, IsTerminal, Write as _};

use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use troupe_events::UsageTotals;
use uuid::Uuid;

use super::api::Api;
use super::error::{ClientError, Exit, Result};
use super::follow::{Follower, Update};
use super::report::{duration, print_output, stdout_failed, usage_text};
use super::session::{self, Session};
use super::team::Outcome;
use super::{LoginArgs, LogsArgs, RetryArgs, ServerArgs, ShowArgs, TaskArgs, TasksArgs, roles};

fn api(server: &ServerArgs) -> Result<Api> {
    Api::new(session::target(server.server.as_deref())?)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskList {
    tasks: Vec<TaskSummary>,
}

/// A line of `GET /api/tasks`; fields this version does not know are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskSummary {
    task_id: Uuid,
    title: String,
    status: String,
    #[serde(default)]
    selected_agents: Vec<String>,
    created_at: String,
}

pub async fn tasks(args: TasksArgs) -> Result<Exit> {
    let api = api(&args.server)?;
    let (raw, list): (String, TaskList) =
        api.get(&format!("/api/tasks?limit={}", args.limit)).await?;
    if args.json {
        return print_line(&raw);
    }
    if list.tasks.is_empty() {
        eprintln!("no tasks yet: start one with `troupe run`");
        return Ok(Exit::Ok);
    }
    let mut table = format!(
        "{:<36}  {:<9}  {:>6}  {:<19}  TITLE\n",
        "ID", "STATUS", "AGENTS", "CREATED"
    );
    for task in &list.tasks {
        table.push_str(&format!(
            "{:<36}  {:<9}  {:>6}  {:<19}  {}\n",
            task.task_id,
            task.status,
            task.selected_agents.len(),
            created(&task.created_at),
            clip(&task.title, 60)
        ));
    }
    print_text(&table)
}

/// `2026-11-25T23:18:36.440749Z` as `2026-11-25 23:18:36` (UTC).
fn created(at: &str) -> String {
    at.get(..19).unwrap_or(at).replacen('T', " ", 1)
}

fn clip(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    match line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

/// `GET /api/tasks/{id}`, the fields `show` prints.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskDetail {
    task_id: Uuid,
    title: String,
    status: String,
    execution_mode: String,
    provider: String,
    model: Option<String>,
    created_at: String,
    total_execution_time: Option<u64>,
    error: Option<String>,
    reason: Option<String>,
    #[serde(default)]
    agents: Vec<AgentDetail>,
    usage: Option<UsageTotals>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentDetail {
    role: String,
    name: String,
    status: String,
    #[serde(default)]
    attempt: u32,
    execution_time: Option<u64>,
    #[serde(default)]
    output: String,
    error: Option<String>,
}

pub async fn show(args: ShowArgs) -> Result<Exit> {
    let api = api(&args.task.server)?;
    let (raw, task): (String, TaskDetail) =
        api.get(&format!("/api/tasks/{}", args.task.id)).await?;
    if args.json {
        return print_line(&raw);
    }
    print_text(&describe_task(&task))?;
    for agent in task.agents.iter().filter(|a| !a.output.trim().is_empty()) {
        print_output(&agent.name, &agent.role, &agent.output)?;
    }
    Ok(Exit::Ok)
}

fn describe_task(task: &TaskDetail) -> String {
    let ms = |ms: u64| duration(std::time::Duration::from_millis(ms));
    let mut status = task.status.clone();
    if let Some(total) = task.total_execution_time {
        status.push_str(&format!(" in {}", ms(total)));
    }
    let mode = match &task.model {
        Some(model) => format!("{} · {} ({model})", task.execution_mode, task.provider),
        None => format!("{} · {}", task.execution_mode, task.provider),
    };
    let mut rows = vec![
        ("task", task.task_id.to_string()),
        ("title", task.title.clone()),
        ("status", status),
        ("mode", mode),
        ("created", format!("{} UTC", created(&task.created_at))),
    ];
    rows.extend(task.usage.as_ref().map(|u| ("usage", usage_text(u))));
    rows.extend(task.reason.clone().map(|r| ("reason", r)));
    rows.extend(task.error.clone().map(|e| ("error", e)));
    let mut text: String = rows
        .iter()
        .map(|(name, value)| format!("{name:<8} {value}\n"))
        .collect();
    let width = task.agents.iter().map(|a| a.role.len()).max().unwrap_or(0);
    text.push_str("agents\n");
    for agent in &task.agents {
        let took = agent.execution_time.map(ms).unwrap_or_default();
        let error = agent.error.as_deref().unwrap_or("");
        let line = format!(
            "  {:<width$}  {:<9}  {took:>7}  attempt {}  {error}",
            agent.role, agent.status, agent.attempt
        );
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text.push('\n');
    text
}

pub async fn logs(args: LogsArgs) -> Result<Exit> {
    let api = api(&args.task.server)?;
    if args.follow {
        return follow_log(&api, args.task.id).await;
    }
    let response = api.export(args.task.id).await?;
    let mut body = response.bytes_stream();
    let mut out = io::stdout().lock();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| api.unreachable(&e))?;
        out.write_all(&chunk).map_err(stdout_failed)?;
    }
    out.flush().map_err(stdout_failed)?;
    Ok(Exit::Ok)
}

/// Prints every event as NDJSON until the server says the task has ended and nothing more
/// follows; the exit code is that of the last terminal event.
async fn follow_log(api: &Api, task_id: Uuid) -> Result<Exit> {
    let mut follower = Follower::new(api, task_id, 0);
    let mut exit = Exit::Ok;
    while let Some(update) = follower.next().await? {
        match update {
            Update::Event(received) => {
                if let Some((outcome, _, _)) = received.event.as_ref().and_then(Outcome::of) {
                    exit = outcome.exit();
                }
                print_line(&received.raw)?;
            }
            Update::Reconnecting { attempt, reason } => {
                eprintln!("connection lost ({reason}); reconnecting, try {attempt}");
            }
            Update::Resumed { after } => eprintln!("reconnected; resuming after event {after}"),
        }
    }
    Ok(exit)
}

pub async fn cancel(args: TaskArgs) -> Result<Exit> {
    let api = api(&args.server)?;
    let answer = api
        .post(&format!("/api/tasks/{}/cancel", args.id), None)
        .await?;
    if answer["cancelRequested"] == true {
        eprintln!(
            "cancel requested: task {} stops once its worker hears of it",
            args.id
        );
    } else {
        eprintln!("task {} cancelled", args.id);
    }
    Ok(Exit::Ok)
}

pub async fn retry(args: RetryArgs) -> Result<Exit> {
    let api = api(&args.task.server)?;
    let body = match &args.agents {
        Some(list) => json!({ "agents": roles(list, "--agents")? }),
        None => json!({}),
    };
    let id = args.task.id;
    let answer = api
        .post(&format!("/api/tasks/{id}/retry"), Some(&body))
        .await?;
    let agents: Vec<&str> = answer["agents"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    eprintln!(
        "task {id} queued again for {}; follow it with `troupe logs {id} --follow`",
        agents.join(", ")
    );
    Ok(Exit::Ok)
}

pub async fn login(args: LoginArgs) -> Result<Exit> {
    let target = session::target(args.server.server.as_deref())?;
    let email = match args.email {
        Some(email) => email,
        None => ask_line("email: ")?,
    };
    let password = if args.password_stdin {
        first_stdin_line()?
    } else {
        ask_password()?
    };
    let api = Api::new(session::Target {
        server: target.server.clone(),
        token: None,
    })?;
    let token = api.login(email.trim(), &password).await?;
    let path = session::save(&Session {
        server: target.server.clone(),
        token,
    })?;
    eprintln!(
        "logged in to {} as {}; session saved in {}",
        target.server,
        email.trim(),
        path.display()
    );
    Ok(Exit::Ok)
}

/// Ends the session on the server, then forgets it here. A server that cannot be
/// reached does not keep the session file: the token then lives until it expires.
pub async fn logout() -> Result<Exit> {
    let Some(stored) = session::load()? else {
        eprintln!("not logged in: no session file");
        return Ok(Exit::Ok);
    };
    let api = Api::new(session::Target {
        server: stored.server.clone(),
        token: Some(stored.token.clone()),
    })?;
    let ended = match api.logout().await {
        Ok(()) => "the session is ended on the server".to_string(),
        Err(ClientError::Server { status: 401, .. }) => {
            "the server had already ended the session".to_string()
        }
        Err(e) => format!(
            "the server could not end the session ({e}); its token stays valid until it expires"
        ),
    };
    if let Some(path) = session::remove()? {
        eprintln!("logged out: {ended}; removed {}", path.display());
    }
    Ok(Exit::Ok)
}

pub async fn delete(args: TaskArgs) -> Result<Exit> {
    let api = api(&args.server)?;
    if api.delete_task(args.id).await? {
        eprintln!(
            "task {} is hidden and being cancelled; it is deleted once its worker has stopped it",
            args.id
        );
    } else {
        eprintln!("task {} deleted", args.id);
    }
    Ok(Exit::Ok)
}

fn ask_line(prompt: &str) -> Result<String> {
    if !io::stdin().is_terminal() {
        return Err(ClientError::Usage(
            "no terminal to ask for the email: pass --email".into(),
        ));
    }
    eprint!("{prompt}");
    first_stdin_line()
}

fn first_stdin_line() -> Result<String> {
    let mut line = String::new();
    io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| ClientError::local("reading stdin", e))?;
    let line = line.trim_end_matches(['\r', '\n']).to_string();
    if line.is_empty() {
        return Err(ClientError::Usage("stdin gave an empty line".into()));
    }
    Ok(line)
}

fn ask_password() -> Result<String> {
    rpassword::prompt_password("password: ").map_err(|e| {
        ClientError::Usage(format!(
            "cannot ask for the password ({e}): pass it on stdin with --password-stdin"
        ))
    })
}

fn print_line(text: &str) -> Result<Exit> {
    print_text(&format!("{}\n", text.trim_end()))
}

fn print_text(text: &str) -> Result<Exit> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(stdout_failed)?;
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_titles_are_clipped_to_their_first_line() {
        assert_eq!(
            clip("Build a launch page\nwith details", 60),
            "Build a launch page"
        );
        assert_eq!(clip("ééééé", 3), "ééé…");
        assert_eq!(
            created("2026-11-25T23:18:36.440749Z"),
            "2026-11-25 23:18:36"
        );
    }
}
