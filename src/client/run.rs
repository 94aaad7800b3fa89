//! `troupe run`: submit a task, then follow it to its end, resuming the stream when the
//! connection drops; ctrl-c asks whether to cancel the task or detach from it.

use std::io::IsTerminal;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::api::Api;
use super::error::{ClientError, Exit, Result};
use super::follow::{Follower, Update};
use super::report::{Reporter, reporter};
use super::team::{Change, Team};
use super::{RunArgs, roles, session};

pub async fn run(args: RunArgs) -> Result<Exit> {
    let body = task_body(&args)?;
    let api = Api::new(session::target(args.server.server.as_deref())?)?;
    api.require_token()?;
    let accepted = api.submit(&body).await?;
    let stderr_is_terminal = std::io::stderr().is_terminal();
    let mut reporter = reporter(args.json, args.quiet, stderr_is_terminal);
    reporter.submitted(accepted.task_id)?;
    let interactive = !args.json && stderr_is_terminal && std::io::stdin().is_terminal();
    watch(&api, accepted.task_id, reporter.as_mut(), interactive).await
}

/// The `POST /api/tasks` body, or why the flags cannot make one (nothing is sent then).
fn task_body(args: &RunArgs) -> Result<Value> {
    if args.description.trim().is_empty() {
        return Err(ClientError::Usage(
            "the description is empty: say what the team should do".into(),
        ));
    }
    let mut body = json!({
        "description": args.description,
        "selectedAgents": roles(&args.agents, "--agents")?,
        "executionMode": if args.parallel { "parallel" } else { "sequential" },
    });
    let fields = body.as_object_mut().expect("an object");
    let optional = [
        ("title", &args.title),
        ("provider", &args.provider),
        ("model", &args.model),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            fields.insert(name.into(), Value::String(value.clone()));
        }
    }
    if let Some(options) = &args.options {
        fields.insert(
            "providerOptions".into(),
            Value::Object(options_object(options)?),
        );
    }
    Ok(body)
}

fn options_object(text: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(options)) => Ok(options),
        Ok(_) => Err(ClientError::Usage(
            "--options must be a JSON object, e.g. '{\"latencyMs\": 5, \"tokens\": 4}'".into(),
        )),
        Err(e) => Err(ClientError::Usage(format!(
            "--options is not valid JSON: {e}"
        ))),
    }
}

/// Follows the task from its first event to its end (or a detach), showing each event once.
pub async fn watch(
    api: &Api,
    task_id: Uuid,
    reporter: &mut dyn Reporter,
    interactive: bool,
) -> Result<Exit> {
    let mut follower = Follower::new(api, task_id, 0);
    let mut team = Team::default();
    let mut interrupts = Interrupts::new()?;
    loop {
        tokio::select! {
            update = follower.next() => {
                let Some(update) = update? else {
                    return Err(ClientError::Protocol {
                        server: api.server().to_string(),
                        reason: "the event stream ended before the task did".into(),
                    });
                };
                let Update::Event(received) = update else {
                    reporter.connection(&update)?;
                    continue;
                };
                let change = match &received.event {
                    Some(event) => team.apply(event),
                    None => Change::Nothing,
                };
                reporter.event(&received, &change, &team)?;
                if let Change::Ended { outcome, .. } = change {
                    return Ok(outcome.exit());
                }
            }
            _ = interrupts.next() => {
                match ask(reporter, &mut interrupts, interactive).await {
                    Choice::Cancel => {
                        // A refusal (the task ended meanwhile) is said; its end still comes.
                        match api.post(&format!("/api/tasks/{task_id}/cancel"), None).await {
                            Ok(_) => reporter.note("cancelling the task…")?,
                            Err(e) => reporter.note(&format!("the cancel was refused: {e}"))?,
                        }
                    }
                    Choice::Detach => {
                        reporter.note(&format!(
                            "detached; task {task_id} goes on (troupe logs {task_id} --follow)"
                        ))?;
                        return Ok(Exit::Detached);
                    }
                    Choice::Watch => {}
                }
            }
        }
    }
}

enum Choice {
    Cancel,
    Detach,
    Watch,
}

/// After a ctrl-c: in a terminal, ask; otherwise (piped, `--json`) detach, since nobody can
/// answer. A second ctrl-c while asked, or stdin at its end, detaches too.
async fn ask(
    reporter: &mut dyn Reporter,
    interrupts: &mut Interrupts,
    interactive: bool,
) -> Choice {
    if !interactive {
        return Choice::Detach;
    }
    reporter.hide();
    eprint!("\ncancel the task or detach? [c/d] ");
    let answer = tokio::select! {
        line = read_line() => line,
        _ = interrupts.next() => None,
    };
    reporter.show();
    match answer.as_deref().map(|a| a.trim().to_ascii_lowercase()) {
        None => Choice::Detach,
        Some(a) if a == "c" || a == "cancel" => Choice::Cancel,
        Some(a) if a == "d" || a == "detach" => Choice::Detach,
        Some(_) => Choice::Watch,
    }
}

/// A line from stdin; `None` at its end.
async fn read_line() -> Option<String> {
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        match std::io::stdin().read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line),
        }
    })
    .await
    .ok()
    .flatten()
}

/// ctrl-c presses, from one listener for the whole run so that none is missed between two
/// waits (a fresh `tokio::signal::ctrl_c()` per wait would miss one sent in between).
struct Interrupts {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn new() -> Result<Interrupts> {
        Ok(Interrupts {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .map_err(|e| ClientError::local("listening for ctrl-c", e))?,
        })
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        self.signal.recv().await;
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn body(args: &[&str]) -> Result<Value> {
        let cli = Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
            .expect("valid flags");
        task_body(&cli.run)
    }

    #[test]
    fn flags_become_the_task_body() {
        let body = body(&[
            "Build a todo app",
            "--agents",
            "tech-lead, qa",
            "--parallel",
            "--provider",
            "simulated",
            "--options",
            r#"{"tokens": 4}"#,
        ])
        .unwrap();
        assert_eq!(
            body,
            json!({"description": "Build a todo app", "selectedAgents": ["tech-lead", "qa"],
                   "executionMode": "parallel", "provider": "simulated",
                   "providerOptions": {"tokens": 4}})
        );
    }

    #[test]
    fn bad_flags_are_refused_before_anything_is_sent() {
        for args in [
            &["task", "--agents", "qa", "--options", "{tokens: 4}"][..],
            &["task", "--agents", "qa", "--options", "[1, 2]"],
            &["task", "--agents", " , "],
            &[" ", "--agents", "qa"],
        ] {
            assert!(
                matches!(body(args), Err(ClientError::Usage(_))),
                "{args:?} is refused"
            );
        }
    }
}
