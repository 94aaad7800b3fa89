//! The invariants the chaos run asserts, as pure functions over a task's log (the NDJSON
//! export, one JSON object per event) and over what an SSE client received, so that they
//! can be tested on hand-written logs.

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

/// Types that end a run; only `task_retried` may follow one.
pub const TERMINAL: [&str; 3] = ["task_complete", "task_error", "task_cancelled"];

pub fn is_terminal(kind: &str) -> bool {
    TERMINAL.contains(&kind)
}

/// One broken invariant: the task, the seq where it shows, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub task: String,
    pub seq: Option<u64>,
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "task {} seq {}: {}", self.task, seq, self.what),
            None => write!(f, "task {}: {}", self.task, self.what),
        }
    }
}

fn violation(task: &str, seq: Option<u64>, what: impl Into<String>) -> Violation {
    Violation {
        task: task.to_string(),
        seq,
        what: what.into(),
    }
}

/// Parses an NDJSON export into its raw lines and their JSON.
pub fn parse_ndjson(body: &str) -> Result<Vec<(String, Value)>, String> {
    body.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .map(|json| (line.to_string(), json))
                .map_err(|e| format!("not JSON ({e}): {line}"))
        })
        .collect()
}

/// What one role did so far, as the log tells it.
#[derive(Default)]
struct RoleState {
    /// The attempt of its last `agent_start` (0: never started).
    attempt: u64,
    /// Its `agent_complete` or `agent_cancelled` (type, seq), until a `task_retried` names
    /// it: it must not start again before that.
    settled: Option<(&'static str, u64)>,
    /// Attempt → seq of the `agent_cancelled` that stopped it.
    cancelled: HashMap<u64, u64>,
}

/// The attempt an event is about: its own `attempt` when it carries one (0 means "the
/// current one", as in logs written before tokens carried it), else the role's current one.
fn attempt_of(event: &Value, state: &RoleState) -> u64 {
    match event["attempt"].as_u64() {
        Some(n) if n > 0 => n,
        _ => state.attempt,
    }
}

/// The invariants of one log:
/// - dense: seq 1..N, no hole, no repeat, every event of this task;
/// - nothing after a terminal event but a `task_retried`;
/// - attempts of a role count 1, 2, 3…;
/// - an agent that completed, or was cancelled, does not start again unless a
///   `task_retried` named it since;
/// - a cancelled agent writes nothing more (`agent_token`, `agent_complete`, `agent_error`)
///   for that attempt, and no attempt writes after a newer one started;
/// - no agent event between `task_paused` and `task_unpaused`.
pub fn check_log(task: &str, log: &[Value]) -> Vec<Violation> {
    let mut out = vec![];
    let mut previous = 0u64;
    for (i, event) in log.iter().enumerate() {
        let Some(seq) = event["seq"].as_u64() else {
            out.push(violation(
                task,
                None,
                format!("event #{} has no seq: {event}", i + 1),
            ));
            continue;
        };
        if seq == previous {
            out.push(violation(task, Some(seq), "repeat: this seq appears twice"));
        } else if seq < previous {
            out.push(violation(
                task,
                Some(seq),
                format!("out of order: seq {seq} after seq {previous}"),
            ));
        } else if seq > previous + 1 {
            out.push(violation(
                task,
                Some(seq),
                format!(
                    "hole: seq {} to {} missing before this event",
                    previous + 1,
                    seq - 1
                ),
            ));
        }
        previous = previous.max(seq);
        if event["taskId"].as_str() != Some(task) {
            out.push(violation(
                task,
                Some(seq),
                format!("event of another task: taskId {}", event["taskId"]),
            ));
        }
    }

    let mut roles: HashMap<String, RoleState> = HashMap::new();
    let mut ended: Option<(u64, String)> = None;
    let mut paused: Option<u64> = None;
    for event in log {
        let seq = event["seq"].as_u64();
        let kind = event["type"].as_str().unwrap_or("");
        if let Some(at) = paused
            && kind.starts_with("agent_")
        {
            out.push(violation(
                task,
                seq,
                format!("{kind} while the task is paused (task_paused at seq {at})"),
            ));
        }
        if let Some((end_seq, end_kind)) = ended.take()
            && kind != "task_retried"
        {
            out.push(violation(
                task,
                seq,
                format!("{kind} after the terminal {end_kind} at seq {end_seq}"),
            ));
        }
        let role = event["agentRole"].as_str().unwrap_or("").to_string();
        match kind {
            "agent_start" => {
                let state = roles.entry(role.clone()).or_default();
                let attempt = event["attempt"].as_u64().unwrap_or(0);
                if let Some((how, at)) = state.settled {
                    out.push(violation(
                        task,
                        seq,
                        format!(
                            "{role} started again (attempt {attempt}) after its {how} at seq \
                             {at}, with no task_retried naming it in between"
                        ),
                    ));
                }
                if attempt != state.attempt + 1 {
                    out.push(violation(
                        task,
                        seq,
                        format!(
                            "{role} agent_start has attempt {attempt}, expected {}",
                            state.attempt + 1
                        ),
                    ));
                }
                state.attempt = state.attempt.max(attempt);
            }
            "agent_token" | "agent_complete" | "agent_error" => {
                let state = roles.entry(role.clone()).or_default();
                let attempt = attempt_of(event, state);
                if state.attempt == 0 {
                    out.push(violation(
                        task,
                        seq,
                        format!("{kind} for {role}, which never started"),
                    ));
                } else if let Some(cancelled) = state.cancelled.get(&attempt) {
                    out.push(violation(
                        task,
                        seq,
                        format!(
                            "{kind} for {role} attempt {attempt} after its agent_cancelled at \
                             seq {cancelled}"
                        ),
                    ));
                } else if attempt < state.attempt {
                    out.push(violation(
                        task,
                        seq,
                        format!(
                            "{kind} for {role} attempt {attempt} after attempt {} started",
                            state.attempt
                        ),
                    ));
                }
                if kind == "agent_complete" {
                    state.settled = Some(("agent_complete", seq.unwrap_or(0)));
                }
            }
            "agent_cancelled" => {
                let state = roles.entry(role.clone()).or_default();
                let attempt = attempt_of(event, state);
                state.cancelled.insert(attempt, seq.unwrap_or(0));
                state.settled = Some(("agent_cancelled", seq.unwrap_or(0)));
            }
            "task_paused" => paused = seq,
            "task_unpaused" => paused = None,
            "task_retried" => {
                for name in event["agents"].as_array().into_iter().flatten() {
                    if let Some(name) = name.as_str() {
                        roles.entry(name.to_string()).or_default().settled = None;
                    }
                }
            }
            kind if is_terminal(kind) => {
                ended = Some((seq.unwrap_or(0), kind.to_string()));
                paused = None;
            }
            _ => {}
        }
    }
    out
}

/// The task has ended: its last event is terminal and its status says the same.
pub fn check_finished(task: &str, log: &[Value], status: &str) -> Vec<Violation> {
    let Some(last) = log.last() else {
        return vec![violation(task, None, "empty log")];
    };
    let seq = last["seq"].as_u64();
    let kind = last["type"].as_str().unwrap_or("");
    let expected = match kind {
        "task_complete" => "completed",
        "task_error" => "failed",
        "task_cancelled" => "cancelled",
        _ => {
            return vec![violation(
                task,
                seq,
                format!("not finished: the last event is {kind} (status {status})"),
            )];
        }
    };
    if status != expected {
        return vec![violation(
            task,
            seq,
            format!("the log ends with {kind} but the status is {status:?}, not {expected:?}"),
        )];
    }
    vec![]
}

/// One SSE event as a client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub id: String,
    pub event: String,
    pub data: String,
}

/// What `client` received across its reconnects is exactly the log: the same events, in
/// order, byte-equal, each once, with `id` = seq and `event` = type.
pub fn check_stream(
    task: &str,
    client: &str,
    received: &[Received],
    log: &[String],
) -> Vec<Violation> {
    let seq_of = |data: &str| {
        serde_json::from_str::<Value>(data)
            .ok()
            .and_then(|v| v["seq"].as_u64())
    };
    for (i, got) in received.iter().enumerate() {
        let at = Some(i as u64 + 1);
        let Some(expected) = log.get(i) else {
            return vec![violation(
                task,
                seq_of(&got.data),
                format!(
                    "{client} received more events than the log has ({} > {}): {}",
                    received.len(),
                    log.len(),
                    got.data
                ),
            )];
        };
        if &got.data != expected {
            let what = match seq_of(&got.data) {
                Some(s) if s <= i as u64 => format!("{client} received seq {s} again"),
                Some(s) if s == i as u64 + 1 => {
                    format!("{client} received seq {s} with another body than the log's")
                }
                Some(s) => format!("{client} received seq {s} where the log has seq {}", i + 1),
                None => format!("{client} received something else: {}", got.data),
            };
            return vec![violation(
                task,
                at,
                format!("{what}\n  received: {}\n  log:      {expected}", got.data),
            )];
        }
        let kind = serde_json::from_str::<Value>(expected)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_string))
            .unwrap_or_default();
        if got.id != (i + 1).to_string() || got.event != kind {
            return vec![violation(
                task,
                at,
                format!(
                    "{client}: SSE id {:?} event {:?}, expected id {:?} event {kind:?}",
                    got.id,
                    got.event,
                    (i + 1).to_string()
                ),
            )];
        }
    }
    if received.len() < log.len() {
        return vec![violation(
            task,
            Some(received.len() as u64 + 1),
            format!(
                "{client} stopped after seq {} but the log ends at seq {}",
                received.len(),
                log.len()
            ),
        )];
    }
    vec![]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const T: &str = "01a2-task";

    /// A log from `(type, extra fields)` pairs, numbered from 1.
    fn log(events: &[(&str, Value)]) -> Vec<Value> {
        events
            .iter()
            .enumerate()
            .map(|(i, (kind, extra))| {
                let mut event = json!({"seq": i + 1, "taskId": T, "type": kind});
                for (k, v) in extra.as_object().unwrap() {
                    event[k] = v.clone();
                }
                event
            })
            .collect()
    }

    fn start(role: &str, attempt: u64) -> (&'static str, Value) {
        (
            "agent_start",
            json!({"agentRole": role, "attempt": attempt}),
        )
    }

    fn token(role: &str, attempt: u64) -> (&'static str, Value) {
        (
            "agent_token",
            json!({"agentRole": role, "attempt": attempt, "delta": "x"}),
        )
    }

    fn complete(role: &str) -> (&'static str, Value) {
        ("agent_complete", json!({"agentRole": role, "output": "x"}))
    }

    fn good_log() -> Vec<Value> {
        log(&[
            ("task_created", json!({})),
            start("qa", 1),
            token("qa", 1),
            ("task_resumed", json!({"delivery": 2})),
            start("qa", 2),
            token("qa", 2),
            complete("qa"),
            ("task_complete", json!({})),
        ])
    }

    /// Fails unless a violation at `seq` says `what`.
    fn assert_found(violations: &[Violation], seq: u64, what: &str) {
        assert!(
            violations
                .iter()
                .any(|v| v.seq == Some(seq) && v.what.contains(what)),
            "no violation at seq {seq} saying {what:?} among:\n{}",
            whats(violations)
        );
    }

    fn whats(violations: &[Violation]) -> String {
        violations
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_clean_log_passes() {
        let log = good_log();
        assert_eq!(check_log(T, &log), vec![]);
        assert_eq!(check_finished(T, &log, "completed"), vec![]);
    }

    #[test]
    fn catches_a_hole() {
        let mut log = good_log();
        log.remove(3);
        let v = check_log(T, &log);
        assert_eq!(v.len(), 1, "{}", whats(&v));
        assert_eq!(v[0].seq, Some(5));
        assert!(v[0].what.contains("hole: seq 4 to 4 missing"), "{}", v[0]);
        assert!(v[0].to_string().contains(T));
    }

    #[test]
    fn catches_a_repeat() {
        let mut log = good_log();
        let again = log[2].clone();
        log.insert(3, again);
        let v = check_log(T, &log);
        assert_found(&v, 3, "repeat");
    }

    #[test]
    fn catches_a_completed_agent_run_again() {
        let log = log(&[
            ("task_created", json!({})),
            start("qa", 1),
            complete("qa"),
            ("task_resumed", json!({"delivery": 2})),
            start("qa", 2),
            complete("qa"),
            ("task_complete", json!({})),
        ]);
        let v = check_log(T, &log);
        assert_eq!(v.len(), 1, "{}", whats(&v));
        assert_eq!(v[0].seq, Some(5));
        assert!(v[0].what.contains("qa started again"), "{}", v[0]);
    }

    #[test]
    fn a_retry_naming_the_agent_allows_it_to_run_again() {
        let log = log(&[
            ("task_created", json!({})),
            start("qa", 1),
            complete("qa"),
            ("task_error", json!({})),
            ("task_retried", json!({"agents": ["qa"]})),
            start("qa", 2),
            complete("qa"),
            ("task_complete", json!({})),
        ]);
        assert_eq!(check_log(T, &log), vec![]);
        // …but only the agents it names.
        let mut other = log.clone();
        other[4]["agents"] = json!(["frontend"]);
        let v = check_log(T, &other);
        assert_found(&v, 6, "");
    }

    #[test]
    fn catches_a_write_after_agent_cancelled() {
        let cancelled = ("agent_cancelled", json!({"agentRole": "qa", "attempt": 1}));
        let log = log(&[
            ("task_created", json!({})),
            start("qa", 1),
            token("qa", 1),
            cancelled.clone(),
            token("qa", 1),
            ("task_cancelled", json!({})),
        ]);
        let v = check_log(T, &log);
        assert_eq!(v.len(), 1, "{}", whats(&v));
        assert_eq!(v[0].seq, Some(5));
        assert!(
            v[0].what.contains("after its agent_cancelled at seq 4"),
            "{}",
            v[0]
        );

        // An agent_complete without an attempt counts as the current attempt.
        let log2 = self::log(&[
            ("task_created", json!({})),
            start("qa", 1),
            cancelled,
            complete("qa"),
            ("task_cancelled", json!({})),
        ]);
        let v = check_log(T, &log2);
        assert_found(&v, 4, "agent_complete");
    }

    #[test]
    fn a_retry_after_cancel_runs_a_new_attempt() {
        let log = log(&[
            ("task_created", json!({})),
            start("qa", 1),
            ("agent_cancelled", json!({"agentRole": "qa", "attempt": 1})),
            ("task_cancelled", json!({})),
            ("task_retried", json!({"agents": ["qa"]})),
            start("qa", 2),
            token("qa", 2),
            complete("qa"),
            ("task_complete", json!({})),
        ]);
        assert_eq!(check_log(T, &log), vec![]);
        assert_eq!(check_finished(T, &log, "completed"), vec![]);
    }

    #[test]
    fn catches_a_cancelled_agent_run_again_without_a_retry() {
        let log = log(&[
            ("task_created", json!({})),
            start("qa", 1),
            ("agent_cancelled", json!({"agentRole": "qa", "attempt": 1})),
            ("task_resumed", json!({"delivery": 2})),
            start("qa", 2),
            complete("qa"),
            ("task_complete", json!({})),
        ]);
        let v = check_log(T, &log);
        assert_eq!(v.len(), 1, "{}", whats(&v));
        assert_eq!(v[0].seq, Some(5));
        assert!(
            v[0].what.contains("after its agent_cancelled at seq 3"),
            "{}",
            v[0]
        );
    }

    #[test]
    fn catches_an_agent_event_while_paused() {
        let paused = log(&[
            ("task_created", json!({})),
            start("qa", 1),
            complete("qa"),
            ("task_paused", json!({})),
            start("frontend", 1),
            ("task_unpaused", json!({})),
            complete("frontend"),
            ("task_complete", json!({})),
        ]);
        let v = check_log(T, &paused);
        assert_eq!(v.len(), 1, "{}", whats(&v));
        assert_eq!(v[0].seq, Some(5));
        assert!(v[0].what.contains("paused"), "{}", v[0]);
        // After task_unpaused agents run again.
        let mut fine = paused.clone();
        fine.swap(4, 5);
        fine[4]["seq"] = json!(5);
        fine[5]["seq"] = json!(6);
        assert_eq!(check_log(T, &fine), vec![]);
    }

    #[test]
    fn catches_events_after_the_end_and_an_unfinished_log() {
        let mut log = good_log();
        let extra =
            json!({"seq": 9, "taskId": T, "type": "agent_token", "agentRole": "qa", "attempt": 2});
        log.push(extra);
        let v = check_log(T, &log);
        assert_found(&v, 9, "after the terminal");
        let v = check_finished(T, &log, "completed");
        assert_eq!(v.len(), 1);
        assert!(v[0].what.contains("not finished"));
        assert_eq!(check_finished(T, &good_log(), "running").len(), 1);
    }

    #[test]
    fn catches_a_stale_attempt_writing() {
        let log = log(&[
            ("task_created", json!({})),
            start("qa", 1),
            start("qa", 2),
            token("qa", 1),
        ]);
        let v = check_log(T, &log);
        assert_found(&v, 4, "");
    }

    fn received(log: &[Value]) -> Vec<Received> {
        log.iter()
            .map(|e| Received {
                id: e["seq"].to_string(),
                event: e["type"].as_str().unwrap().to_string(),
                data: e.to_string(),
            })
            .collect()
    }

    #[test]
    fn a_stream_must_be_exactly_the_log() {
        let log = good_log();
        let raw: Vec<String> = log.iter().map(|e| e.to_string()).collect();
        let all = received(&log);
        assert_eq!(check_stream(T, "c", &all, &raw), vec![]);

        // A repeat across a reconnect.
        let mut repeated = all.clone();
        repeated.insert(4, all[3].clone());
        let v = check_stream(T, "c", &repeated, &raw);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].seq, Some(5));
        assert!(v[0].what.contains("received seq 4 again"), "{}", v[0]);

        // A skipped event.
        let mut skipped = all.clone();
        skipped.remove(2);
        let v = check_stream(T, "c", &skipped, &raw);
        assert!(
            v[0].what.contains("received seq 4 where the log has seq 3"),
            "{}",
            v[0]
        );

        // A different body for the same seq.
        let mut changed = all.clone();
        changed[1].data = changed[1].data.replace("qa", "QA");
        let v = check_stream(T, "c", &changed, &raw);
        assert_eq!(v[0].seq, Some(2));
        assert!(v[0].what.contains("another body"), "{}", v[0]);

        // Stopping early.
        let v = check_stream(T, "c", &all[..5], &raw);
        assert!(v[0].what.contains("stopped after seq 5"), "{}", v[0]);
    }
}
