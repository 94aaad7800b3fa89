//! Reading one SSE response of Troupe's to its end through reqwest, checking what every
//! mode checks: ids 1, 2, 3, … without a gap or a repeat, and nothing after the terminal
//! event but `execute/stream`'s closing `complete` / `error`.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Url;
use serde_json::Value;
use tokio::time::Instant;

use crate::Result;
use crate::api::{Api, status_error};
use crate::sse::Parser;

/// What one stream carried.
#[derive(Debug, Default)]
pub struct StreamRun {
    /// Events with an id: the task's log events.
    pub events: u64,
    /// Ids that were not the one after the previous.
    pub order_errors: u64,
    /// The id of the last event.
    pub last_id: u64,
    pub terminal_seen: bool,
    /// Log events that came after the terminal one.
    pub after_terminal: u64,
    /// The closing event's type (`complete` or `error`) of `execute/stream`.
    pub closing: Option<String>,
    /// From `started` to the first event.
    pub first_event: Option<Duration>,
    /// The body ended in the middle of an event.
    pub cut: bool,
}

impl StreamRun {
    /// What is wrong with the stream, if anything. `closing`: the stream must end with
    /// `complete` (the `execute/stream` endpoint). `events`: how many it must carry.
    pub fn problem(&self, closing: bool, events: Option<u64>) -> Option<String> {
        if self.order_errors > 0 {
            return Some(format!(
                "{} event ids out of order (a gap or a repeat)",
                self.order_errors
            ));
        }
        if !self.terminal_seen || self.cut {
            return Some(format!(
                "the stream ended after {} events without the terminal event",
                self.events
            ));
        }
        if self.after_terminal > 0 {
            return Some(format!(
                "{} events came after the terminal event",
                self.after_terminal
            ));
        }
        if closing && self.closing.as_deref() != Some("complete") {
            return Some(match &self.closing {
                Some(kind) => format!("the task ended with a closing {kind:?} event"),
                None => "no closing event after the terminal event".into(),
            });
        }
        match events {
            Some(n) if n != self.events => Some(format!(
                "the stream carried {} events; the log has {n}",
                self.events
            )),
            _ => None,
        }
    }
}

/// Reads the SSE body to its end.
pub async fn read_sse(mut response: reqwest::Response, started: Instant) -> Result<StreamRun> {
    let mut parser = Parser::new(false);
    let mut run = StreamRun::default();
    while let Some(chunk) = response.chunk().await? {
        parser.feed(&chunk, |event| {
            if run.first_event.is_none() {
                run.first_event = Some(started.elapsed());
            }
            let Some(id) = event.id else {
                if run.terminal_seen && run.closing.is_none() {
                    run.closing = Some(String::from_utf8_lossy(event.kind).into_owned());
                }
                return;
            };
            if run.terminal_seen {
                run.after_terminal += 1;
            }
            if id != run.last_id + 1 {
                run.order_errors += 1;
            }
            run.last_id = id;
            run.events += 1;
            run.terminal_seen |= event.is_terminal();
        });
    }
    run.cut = parser.is_mid_event();
    Ok(run)
}

/// Why one measured request failed.
#[derive(Debug)]
pub enum RunError {
    /// The server answered something other than 2xx.
    Status { status: u16, message: String },
    /// The request failed, or its stream broke one of the checks.
    Failed(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Status { message, .. } | RunError::Failed(message) => f.write_str(message),
        }
    }
}

/// Submits one task through `POST /api/agents/execute/stream` and reads it to its end, on
/// a client of its own (one keep-alive connection when used one request at a time).
pub struct ExecuteStream {
    url: Url,
    token: String,
    client: reqwest::Client,
    /// The task's JSON, serialised once.
    body: Bytes,
}

impl ExecuteStream {
    pub fn new(api: &Api, client: reqwest::Client, task: &Value) -> ExecuteStream {
        ExecuteStream {
            url: api.url("/api/agents/execute/stream"),
            token: api.token.clone(),
            client,
            body: Bytes::from(serde_json::to_vec(task).expect("a JSON value serialises")),
        }
    }

    /// One submit read to its end: how long it took from send to the end of the stream,
    /// and how many log events it carried.
    pub async fn once(&self) -> Result<(Duration, u64), RunError> {
        let started = Instant::now();
        let response = self
            .client
            .post(self.url.clone())
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(self.body.clone())
            .send()
            .await
            .map_err(|e| RunError::Failed(e.to_string()))?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let message = status_error(response, "POST /api/agents/execute/stream")
                .await
                .to_string();
            return Err(RunError::Status { status, message });
        }
        let run = read_sse(response, started)
            .await
            .map_err(|e| RunError::Failed(e.to_string()))?;
        let elapsed = started.elapsed();
        match run.problem(true, None) {
            Some(problem) => Err(RunError::Failed(problem)),
            None => Ok((elapsed, run.events)),
        }
    }
}
