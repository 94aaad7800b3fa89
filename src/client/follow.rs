//! Following a task's event stream across dropped connections: reconnects with backoff and
//! `Last-Event-ID`, and hands on each event exactly once, in seq order.

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use troupe_events::Event;
use uuid::Uuid;

use super::api::{Api, Opened, describe};
use super::error::{ClientError, Result};

/// Consecutive failed connections before giving up: with the backoff below, about three
/// minutes, longer than a server restart or a rolling deploy takes.
const MAX_RECONNECTS: u32 = 40;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// One SSE frame, at most: an `agent_complete` carries an answer (512 KiB at most) and its
/// artifacts. A frame past this is not from a Troupe server and is not buffered further.
const MAX_FRAME_BYTES: usize = 16 << 20;

/// One event of the log.
#[derive(Debug)]
pub struct Received {
    /// The event's JSON as the server sent it.
    pub raw: String,
    /// `None` when this version cannot read it (a newer server's event): it is passed on.
    pub event: Option<Event>,
}

impl Received {
    pub fn is_terminal(&self) -> bool {
        self.event
            .as_ref()
            .is_some_and(|e| troupe_events::event::is_terminal_kind(e.body.kind()))
    }
}

#[derive(Debug)]
pub enum Update {
    Event(Received),
    /// The connection dropped (or could not be made); the next try is number `attempt`.
    Reconnecting {
        attempt: u32,
        reason: String,
    },
    /// Connected again; the stream goes on after `after`.
    Resumed {
        after: u64,
    },
}

type Frames =
    Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>> + Send + 'static>>;

pub struct Follower<'a> {
    api: &'a Api,
    task_id: Uuid,
    last_seq: u64,
    frames: Option<Frames>,
    /// Consecutive connections that brought no event.
    failures: u32,
    /// Whether a connection was open before: the next one is a resume.
    connected_before: bool,
    last_was_terminal: bool,
    ended: bool,
}

impl<'a> Follower<'a> {
    /// Follows the log after `after` (0: from its first event).
    pub fn new(api: &'a Api, task_id: Uuid, after: u64) -> Follower<'a> {
        Follower {
            api,
            task_id,
            last_seq: after,
            frames: None,
            failures: 0,
            connected_before: false,
            last_was_terminal: false,
            ended: false,
        }
    }

    /// The next event or connection change; `None` once the server says nothing more will
    /// come (the task ended and every event was received). Cancel-safe: dropping the future
    /// loses nothing, the next call goes on from the last event handed out.
    pub async fn next(&mut self) -> Result<Option<Update>> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let Some(frames) = self.frames.as_mut() else {
                if let Some(update) = self.connect().await? {
                    return Ok(Some(update));
                }
                continue;
            };
            match frames.next().await {
                Some(Ok(frame)) => {
                    if let Some(received) = self.accept(frame)? {
                        return Ok(Some(Update::Event(received)));
                    }
                }
                Some(Err(reason)) => {
                    self.frames = None;
                    return self.retry_later(reason).map(Some);
                }
                None => {
                    self.frames = None;
                    // A stream ends after a terminal event; reconnecting then is how a
                    // retried log is told from a finished one (204), and is no failure.
                    if !self.last_was_terminal {
                        return self
                            .retry_later("the server closed the stream".into())
                            .map(Some);
                    }
                }
            }
        }
    }

    async fn connect(&mut self) -> Result<Option<Update>> {
        if self.failures > 0 {
            tokio::time::sleep(backoff(self.failures)).await;
        }
        match self.api.open_events(self.task_id, self.last_seq).await {
            Ok(Opened::Stream(response)) => {
                self.frames = Some(frames(response));
                let resumed = std::mem::replace(&mut self.connected_before, true);
                Ok(
                    (resumed && !self.last_was_terminal).then_some(Update::Resumed {
                        after: self.last_seq,
                    }),
                )
            }
            Ok(Opened::Ended) => {
                self.ended = true;
                Ok(None)
            }
            Err(e) if e.is_transient() => self.retry_later(e.to_string()).map(Some),
            Err(e) => Err(e),
        }
    }

    fn retry_later(&mut self, reason: String) -> Result<Update> {
        self.failures += 1;
        if self.failures > MAX_RECONNECTS {
            return Err(ClientError::Unreachable {
                server: self.api.server().to_string(),
                reason: format!("gave up after {MAX_RECONNECTS} reconnects: {reason}"),
            });
        }
        Ok(Update::Reconnecting {
            attempt: self.failures,
            reason,
        })
    }

    /// Takes a frame whose seq is past the last one handed out; a replayed one is dropped.
    fn accept(&mut self, frame: eventsource_stream::Event) -> Result<Option<Received>> {
        let seq = frame
            .id
            .trim()
            .parse::<u64>()
            .map_err(|_| ClientError::Protocol {
                server: self.api.server().to_string(),
                reason: format!("an event without a seq (id {:?})", frame.id),
            })?;
        if seq <= self.last_seq {
            return Ok(None);
        }
        let received = Received {
            event: serde_json::from_str(&frame.data).ok(),
            raw: frame.data,
        };
        self.last_seq = seq;
        self.failures = 0;
        self.last_was_terminal = received.is_terminal();
        Ok(Some(received))
    }
}

fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(10))
        .min(MAX_BACKOFF)
}

fn frames(response: reqwest::Response) -> Frames {
    let mut cap = FrameCap::default();
    let bytes = response.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(|e| describe(&e))?;
        if !cap.admit(&chunk) {
            return Err(format!(
                "an event larger than {} MiB",
                MAX_FRAME_BYTES >> 20
            ));
        }
        Ok(chunk)
    });
    Box::pin(
        bytes
            .eventsource()
            .map(|frame| frame.map_err(|e| e.to_string())),
    )
}

/// Counts the bytes of the SSE frame being received (frames end at a blank line), so that
/// the parser never buffers more than `MAX_FRAME_BYTES`.
#[derive(Default)]
struct FrameCap {
    in_frame: usize,
    after_newline: bool,
}

impl FrameCap {
    fn admit(&mut self, chunk: &[u8]) -> bool {
        for &byte in chunk {
            match byte {
                b'\n' if self.after_newline => self.in_frame = 0,
                b'\n' => self.after_newline = true,
                b'\r' => {}
                _ => {
                    self.after_newline = false;
                    self.in_frame += 1;
                }
            }
        }
        self.in_frame <= MAX_FRAME_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let waits: Vec<_> = (1..=7).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff(MAX_RECONNECTS), MAX_BACKOFF);
    }

    #[test]
    fn a_frame_is_measured_to_its_blank_line_across_chunks() {
        let mut cap = FrameCap::default();
        let big = vec![b'x'; MAX_FRAME_BYTES / 2];
        assert!(cap.admit(b"id: 1\ndata: "));
        assert!(cap.admit(&big));
        assert!(cap.admit(b"\r\n\r\n"), "a frame ends at a blank line");
        assert_eq!(cap.in_frame, 0);
        assert!(cap.admit(&big));
        assert!(cap.admit(&big));
        assert!(!cap.admit(b"more of the same frame"));
    }
}
