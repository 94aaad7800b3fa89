//! The terminal client: `troupe run`, `tasks`, `show`, `logs`, `cancel`, `retry`, `login`
//! and `logout` talk to any Troupe server over its HTTP API, and never open a store.

mod api;
mod commands;
mod error;
mod follow;
mod report;
mod run;
mod session;
mod team;

use clap::{Args, Subcommand};

pub use error::Exit;

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Submit a task and follow it live until it ends (exit 0 completed, 1 failed, 3 cancelled).
    Run(RunArgs),
    /// List your recent tasks, newest first.
    Tasks(TasksArgs),
    /// Show one task: its status, agents and outputs.
    Show(ShowArgs),
    /// Print a task's events as NDJSON; with --follow, until the task ends.
    Logs(LogsArgs),
    /// Cancel a task.
    Cancel(TaskArgs),
    /// Delete a task with its log (a running one is cancelled first).
    Delete(TaskArgs),
    /// Run a finished task's failed or cancelled agents again.
    Retry(RetryArgs),
    /// Sign in and keep the session token in your config directory (mode 0600).
    Login(LoginArgs),
    /// End the stored session on the server and forget it.
    Logout,
}

#[derive(Args)]
pub struct ServerArgs {
    /// The Troupe server [default: the one `troupe login` stored, else http://127.0.0.1:8080].
    #[arg(long, env = "TROUPE_SERVER")]
    pub server: Option<String>,
}

#[derive(Args)]
pub struct RunArgs {
    /// What the team should do.
    pub description: String,
    /// The team, in order: roles from the catalogue, comma-separated.
    #[arg(long, value_name = "ROLE,…", required = true)]
    pub agents: String,
    /// Run every agent at once, each on the task alone (default: one after another).
    #[arg(long)]
    pub parallel: bool,
    /// A title [default: the description's first line].
    #[arg(long)]
    pub title: Option<String>,
    /// openai, anthropic or simulated [default: the server's].
    #[arg(long)]
    pub provider: Option<String>,
    /// The provider's model [default: the server's for that provider].
    #[arg(long)]
    pub model: Option<String>,
    /// providerOptions as a JSON object, e.g. '{"latencyMs": 5, "tokens": 4}'.
    #[arg(long, value_name = "JSON")]
    pub options: Option<String>,
    /// No progress and no outputs: the task id on stdout, the outcome on stderr.
    #[arg(long, short, conflicts_with = "json")]
    pub quiet: bool,
    /// The task's events as NDJSON on stdout, nothing else.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct TasksArgs {
    /// How many tasks (1 to 100).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub limit: u16,
    /// The server's JSON answer as is.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct TaskArgs {
    /// The task's id (from `troupe tasks`).
    pub id: uuid::Uuid,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// The server's JSON answer as is.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Keep streaming new events until the task ends (exit 0 completed, 1 failed, 3
    /// cancelled).
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Args)]
pub struct RetryArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Only these agents, comma-separated [default: every failed or cancelled one].
    #[arg(long, value_name = "ROLE,…")]
    pub agents: Option<String>,
}

#[derive(Args)]
pub struct LoginArgs {
    /// The account's email [default: asked].
    #[arg(long)]
    pub email: Option<String>,
    /// Read the password from the first line of stdin instead of asking for it.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Runs one client command; errors are printed here, and every outcome is an exit code.
/// The caller exits with it at once: a blocking read of stdin (the ctrl-c question) must
/// not hold up the runtime's shutdown.
pub async fn main(command: ClientCommand) -> i32 {
    let result = match command {
        ClientCommand::Run(args) => run::run(args).await,
        ClientCommand::Tasks(args) => commands::tasks(args).await,
        ClientCommand::Show(args) => commands::show(args).await,
        ClientCommand::Logs(args) => commands::logs(args).await,
        ClientCommand::Cancel(args) => commands::cancel(args).await,
        ClientCommand::Retry(args) => commands::retry(args).await,
        ClientCommand::Login(args) => commands::login(args).await,
        ClientCommand::Delete(args) => commands::delete(args).await,
        ClientCommand::Logout => commands::logout().await,
    };
    match result {
        Ok(exit) => exit as i32,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit() as i32
        }
    }
}

/// Splits `a, b,c` into roles; an empty list is refused here, unknown roles by the server.
fn roles(list: &str, flag: &str) -> error::Result<Vec<String>> {
    let roles: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(String::from)
        .collect();
    if roles.is_empty() {
        return Err(error::ClientError::Usage(format!(
            "{flag} needs at least one role, e.g. {flag} tech-lead,frontend,qa"
        )));
    }
    Ok(roles)
}
