//! How `troupe run` shows a task: live progress lines in a terminal, plain lines when
//! stderr is not one, only the outcome with `--quiet`, the events themselves with `--json`.
//! Progress and notes go to stderr; agents' outputs (or the NDJSON) to stdout.

use std::io::{self, Write as _};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use troupe_events::{EventBody, UsageTotals};
use uuid::Uuid;

use super::error::{ClientError, Result};
use super::follow::{Received, Update};
use super::team::{Agent, Change, Outcome, Phase, Team};

pub trait Reporter {
    fn submitted(&mut self, task_id: Uuid) -> Result<()>;
    fn event(&mut self, received: &Received, change: &Change, team: &Team) -> Result<()>;
    fn connection(&mut self, update: &Update) -> Result<()>;
    /// A line for the person watching (on stderr), above any progress lines.
    fn note(&mut self, text: &str) -> Result<()>;
    /// Clears the progress lines while a question is asked, until `show`.
    fn hide(&mut self) {}
    fn show(&mut self) {}
}

/// Picks the reporter for the flags and for whether stderr is a terminal.
pub fn reporter(json: bool, quiet: bool, terminal: bool) -> Box<dyn Reporter> {
    match (json, quiet, terminal) {
        (true, _, _) => Box::new(Json),
        (false, true, _) => Box::new(Plain { quiet: true }),
        (false, false, true) => Box::new(Live::new()),
        (false, false, false) => Box::new(Plain { quiet: false }),
    }
}

/// `--json`: each event's JSON as received, one per line.
struct Json;

impl Reporter for Json {
    fn submitted(&mut self, _: Uuid) -> Result<()> {
        Ok(())
    }

    fn event(&mut self, received: &Received, _: &Change, _: &Team) -> Result<()> {
        let mut out = io::stdout().lock();
        writeln!(out, "{}", received.raw)
            .and_then(|()| out.flush())
            .map_err(stdout_failed)
    }

    fn connection(&mut self, update: &Update) -> Result<()> {
        if let Some(line) = connection_line(update) {
            eprintln!("{line}");
        }
        Ok(())
    }

    fn note(&mut self, text: &str) -> Result<()> {
        eprintln!("{text}");
        Ok(())
    }
}

/// Lines in a log (stderr is not a terminal), or only the outcome (`--quiet`).
struct Plain {
    quiet: bool,
}

impl Reporter for Plain {
    fn submitted(&mut self, task_id: Uuid) -> Result<()> {
        if self.quiet {
            println!("{task_id}");
        } else {
            eprintln!("task {task_id} submitted");
        }
        Ok(())
    }

    fn event(&mut self, received: &Received, change: &Change, team: &Team) -> Result<()> {
        if let Change::Ended {
            outcome,
            total_ms,
            usage,
        } = change
        {
            eprintln!("{}", outcome_line(outcome, *total_ms, usage.as_ref()));
            return Ok(());
        }
        if self.quiet {
            return Ok(());
        }
        if let (Change::Agent(i), Some(event)) = (change, &received.event) {
            let agent = &team.agents[*i];
            if let Some(line) = agent_line(agent, &event.body) {
                eprintln!("{line}");
            }
            if let EventBody::AgentComplete { output, .. } = &event.body {
                print_output(&agent.name, &agent.role, output)?;
            }
        }
        if let Some(line) = received.event.as_ref().and_then(|e| task_note(&e.body)) {
            eprintln!("{line}");
        }
        Ok(())
    }

    fn connection(&mut self, update: &Update) -> Result<()> {
        if let (false, Some(line)) = (self.quiet, connection_line(update)) {
            eprintln!("{line}");
        }
        Ok(())
    }

    fn note(&mut self, text: &str) -> Result<()> {
        eprintln!("{text}");
        Ok(())
    }
}

/// One progress line per agent on stderr, redrawn in place; outputs printed above them.
struct Live {
    multi: MultiProgress,
    bars: Vec<ProgressBar>,
    /// What each bar shows now, so a running bar's style (and its clock) is set once.
    drawn: Vec<(Phase, u32)>,
}

const TICK: Duration = Duration::from_millis(120);

impl Live {
    fn new() -> Live {
        Live {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: vec![],
            drawn: vec![],
        }
    }

    fn draw(&mut self, index: usize, agent: &Agent, width: usize) {
        while self.bars.len() <= index {
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(static_style());
            self.bars.push(bar);
            self.drawn.push((Phase::Pending, u32::MAX));
        }
        let bar = &self.bars[index];
        let state = (agent.phase, agent.attempt);
        if self.drawn[index] != state {
            self.drawn[index] = state;
            if agent.phase == Phase::Running {
                bar.set_style(running_style(agent.started.unwrap_or_else(Instant::now)));
                bar.set_prefix(format!("{:<width$}  {:<9}", agent.role, "running"));
                bar.enable_steady_tick(TICK);
            } else {
                bar.disable_steady_tick();
                bar.set_style(static_style());
            }
        }
        if agent.phase == Phase::Running {
            bar.set_message(running_detail(agent));
        } else {
            bar.set_message(static_line(agent, width));
        }
    }

    fn redraw_all(&mut self, team: &Team) {
        let width = role_width(team);
        for (i, agent) in team.agents.iter().enumerate() {
            self.draw(i, agent, width);
        }
    }

    fn finish(&mut self) {
        for bar in &self.bars {
            bar.finish();
        }
    }
}

impl Reporter for Live {
    fn submitted(&mut self, task_id: Uuid) -> Result<()> {
        self.note(&format!("task {task_id} submitted"))
    }

    fn event(&mut self, received: &Received, change: &Change, team: &Team) -> Result<()> {
        match change {
            Change::Team => self.redraw_all(team),
            Change::Agent(i) => {
                let width = role_width(team);
                self.draw(*i, &team.agents[*i], width);
            }
            Change::Ended {
                outcome,
                total_ms,
                usage,
            } => {
                self.redraw_all(team);
                self.finish();
                // Below the finished lines, which stay on the screen as the summary.
                eprintln!("{}", outcome_line(outcome, *total_ms, usage.as_ref()));
                return Ok(());
            }
            Change::Nothing => {}
        }
        let Some(event) = &received.event else {
            return Ok(());
        };
        if let (Change::Agent(i), EventBody::AgentComplete { output, .. }) = (change, &event.body) {
            let agent = &team.agents[*i];
            self.multi
                .suspend(|| print_output(&agent.name, &agent.role, output))?;
        }
        if let Some(line) = task_note(&event.body) {
            self.note(&line)?;
        }
        Ok(())
    }

    fn connection(&mut self, update: &Update) -> Result<()> {
        match connection_line(update) {
            Some(line) => self.note(&line),
            None => Ok(()),
        }
    }

    fn note(&mut self, text: &str) -> Result<()> {
        self.multi
            .println(text)
            .map_err(|e| ClientError::local("writing to the terminal", e))
    }

    fn hide(&mut self) {
        let _ = self.multi.clear();
        self.multi.set_draw_target(ProgressDrawTarget::hidden());
    }

    fn show(&mut self) {
        self.multi.set_draw_target(ProgressDrawTarget::stderr());
    }
}

fn static_style() -> ProgressStyle {
    ProgressStyle::with_template("{wide_msg}").expect("a valid template")
}

/// A spinner, the role and state, the time since `started` (ticking), then tokens and note.
fn running_style(started: Instant) -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} {prefix} {since:>7}  {wide_msg}")
        .expect("a valid template")
        .with_key(
            "since",
            move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&duration(started.elapsed()));
            },
        )
}

fn role_width(team: &Team) -> usize {
    team.agents.iter().map(|a| a.role.len()).max().unwrap_or(0)
}

fn running_detail(agent: &Agent) -> String {
    let tokens = agent.tokens().map(|t| t.to_string()).unwrap_or_default();
    [tokens.as_str(), agent.note.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("  ")
}

/// An agent's line when it is not running: `✔ qa  done  1.2s  ~62 tokens`.
pub fn static_line(agent: &Agent, width: usize) -> String {
    let mut line = format!(
        "{} {:<width$}  {:<9}",
        agent.phase.mark(),
        agent.role,
        agent.phase.word()
    );
    if let Some(took) = agent.elapsed() {
        line.push_str(&format!(" {:>7}", duration(took)));
    }
    if let Some(tokens) = agent.tokens() {
        line.push_str(&format!("  {tokens}"));
    }
    if !agent.note.is_empty() && agent.phase != Phase::Done {
        line.push_str(&format!("  {}", agent.note));
    }
    line.trim_end().to_string()
}

/// A plain line for what `body` did to `agent`, when it is worth one.
fn agent_line(agent: &Agent, body: &EventBody) -> Option<String> {
    let role = &agent.role;
    let took = agent.elapsed().map(duration).unwrap_or_default();
    Some(match body {
        EventBody::AgentStart { attempt: 1, .. } => format!("{role}: running"),
        EventBody::AgentStart { attempt, .. } => format!("{role}: running (attempt {attempt})"),
        EventBody::AgentComplete { .. } => format!("{role}: done in {took}"),
        EventBody::AgentError { error, .. } => format!("{role}: failed after {took}: {error}"),
        EventBody::AgentCancelled { reason, .. } => {
            format!("{role}: cancelled after {took}: {reason}")
        }
        EventBody::AgentUsage { .. } => format!("{role}: {}", agent.tokens()?),
        EventBody::AgentFailover { .. } => format!("{role}: {}", agent.note),
        _ => return None,
    })
}

/// A line for the task-level events that are not its end: resumes, hand-backs, pauses.
fn task_note(body: &EventBody) -> Option<String> {
    Some(match body {
        EventBody::TaskResumed { reason, .. } => format!("task resumed: {reason}"),
        EventBody::TaskReleased { reason } => format!("task handed back: {reason}"),
        EventBody::TaskPaused { reason } => format!("task paused: {reason}"),
        EventBody::TaskUnpaused { reason } => format!("task resumed after a pause: {reason}"),
        EventBody::TaskRetried { agents, .. } => format!("task retried: {}", agents.join(", ")),
        _ => return None,
    })
}

fn connection_line(update: &Update) -> Option<String> {
    match update {
        Update::Reconnecting { attempt, reason } => Some(format!(
            "connection lost ({reason}); reconnecting, try {attempt}"
        )),
        Update::Resumed { after } => Some(format!("reconnected; resuming after event {after}")),
        Update::Event(_) => None,
    }
}

pub fn outcome_line(outcome: &Outcome, total_ms: u64, usage: Option<&UsageTotals>) -> String {
    let took = duration(Duration::from_millis(total_ms));
    let usage = usage
        .map(|u| format!(" ({})", usage_text(u)))
        .unwrap_or_default();
    match outcome {
        Outcome::Completed => format!("✔ task completed in {took}{usage}"),
        Outcome::Failed(error) => format!("✖ task failed after {took}{usage}: {error}"),
        Outcome::Cancelled(reason) => format!("⊘ task cancelled after {took}{usage}: {reason}"),
    }
}

/// `45 in / 186 out tokens, estimated · $0.0012`
pub fn usage_text(usage: &UsageTotals) -> String {
    let mut text = format!(
        "{} in / {} out tokens",
        usage.input_tokens, usage.output_tokens
    );
    if usage.simulated_attempts > 0 {
        text.push_str(", estimated");
    }
    if usage.cost_usd > 0.0 {
        text.push_str(&format!(" · ${:.4}", usage.cost_usd));
    }
    text
}

/// `0.4s`, `12.0s`, `3m05s`.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

/// An agent's answer on stdout under a rule with its name.
pub fn print_output(name: &str, role: &str, output: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "── {name} ({role}) ──")
        .and_then(|()| writeln!(out, "{}\n", output.trim_end()))
        .and_then(|()| out.flush())
        .map_err(stdout_failed)
}

pub fn stdout_failed(e: io::Error) -> ClientError {
    ClientError::local("writing to stdout", e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_seconds_then_minutes() {
        assert_eq!(duration(Duration::from_millis(450)), "0.5s");
        assert_eq!(duration(Duration::from_millis(12_040)), "12.0s");
        assert_eq!(duration(Duration::from_secs(185)), "3m05s");
    }

    #[test]
    fn usage_says_when_it_is_an_estimate_and_what_it_cost() {
        let usage = UsageTotals {
            input_tokens: 45,
            output_tokens: 186,
            cost_usd: 0.0012,
            simulated_attempts: 1,
            ..UsageTotals::default()
        };
        assert_eq!(
            usage_text(&usage),
            "45 in / 186 out tokens, estimated · $0.0012"
        );
    }
}
