//! Server-sent events on the wire. Each event's frame is made once, by the task's feed,
//! and the same bytes go to every client that follows the task; a response only passes
//! them on, joining frames that are ready together (a replay) into larger writes.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use troupe_events::RawEvent;

/// A comment line every so often keeps proxies and browsers from closing a quiet stream.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
const HEARTBEAT_FRAME: &[u8] = b":\n\n";
/// Most bytes of ready frames joined into one write.
const JOINED_MAX: usize = 64 * 1024;

/// The SSE frame of a stored event: its seq as the id (what a reconnecting browser sends
/// back as `Last-Event-ID`), its type as the event name, its JSON as the data.
pub fn frame(event: &RawEvent) -> Bytes {
    let mut out = BytesMut::with_capacity(event.json.len() + event.kind.len() + 32);
    write_frame(&mut out, event);
    out.freeze()
}

/// Appends the frame of `event` to `out`.
pub fn write_frame(out: &mut BytesMut, event: &RawEvent) {
    write_entry(out, event.seq, &event.kind, &event.json);
}

/// Appends the frame of the event `seq` of type `kind` to `out`: many frames in one buffer
/// for a replay.
pub fn write_entry(out: &mut BytesMut, seq: u64, kind: &str, json: &[u8]) {
    let mut id = itoa::Buffer::new();
    write_named(out, Some(id.format(seq)), kind, json);
}

/// A frame with an optional id.
pub fn named_frame(id: Option<&str>, name: &str, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + name.len() + 32);
    write_named(&mut out, id, name, data);
    out.freeze()
}

/// A line break in `data` starts another `data:` line, as the format requires (stored
/// JSON has none, but a frame must never be broken).
fn write_named(out: &mut BytesMut, id: Option<&str>, name: &str, data: &[u8]) {
    if let Some(id) = id {
        field(out, "id", id.as_bytes());
    }
    field(out, "event", name.as_bytes());
    for line in data.split(|&b| b == b'\n') {
        field(out, "data", line.strip_suffix(b"\r").unwrap_or(line));
    }
    out.extend_from_slice(b"\n");
}

fn field(out: &mut BytesMut, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\n");
}

/// An SSE response whose body is `frames`, with heartbeats while it is quiet.
pub fn response(frames: impl Stream<Item = Bytes> + Send + 'static) -> Response {
    let body = Frames {
        frames: Box::pin(frames),
        heartbeat: heartbeat(),
        ended: false,
    };
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // Tells nginx-style proxies not to buffer the stream, whatever their settings.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

fn heartbeat() -> Interval {
    let mut interval = tokio::time::interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// The body of an SSE response: frames as they come, a frame alone when it is the only
/// one ready (its shared bytes, not a copy), ready frames joined.
struct Frames {
    frames: Pin<Box<dyn Stream<Item = Bytes> + Send>>,
    heartbeat: Interval,
    ended: bool,
}

impl Stream for Frames {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let first = match self.frames.as_mut().poll_next(cx) {
            Poll::Ready(Some(frame)) => frame,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {
                return match self.heartbeat.poll_tick(cx) {
                    Poll::Ready(_) => Poll::Ready(Some(Ok(Bytes::from_static(HEARTBEAT_FRAME)))),
                    Poll::Pending => Poll::Pending,
                };
            }
        };
        let mut joined: Option<BytesMut> = None;
        while joined.as_ref().map_or(first.len(), BytesMut::len) < JOINED_MAX {
            match self.frames.as_mut().poll_next(cx) {
                Poll::Ready(Some(frame)) => joined
                    .get_or_insert_with(|| BytesMut::from(&first[..]))
                    .extend_from_slice(&frame),
                Poll::Ready(None) => {
                    self.ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        Poll::Ready(Some(Ok(joined.map_or(first, BytesMut::freeze))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn a_frame_has_id_name_and_one_data_line_per_line() {
        assert_eq!(
            &named_frame(Some("7"), "agent_token", b"{\"a\":1}")[..],
            b"id: 7\nevent: agent_token\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            &named_frame(None, "error", b"one\r\ntwo\nthree")[..],
            b"event: error\ndata: one\ndata: two\ndata: three\n\n"
        );
    }

    #[tokio::test]
    async fn ready_frames_are_joined_and_a_lone_frame_is_passed_as_it_is() {
        let lone = Bytes::from_static(b"data: x\n\n");
        let body = Frames {
            frames: Box::pin(futures::stream::iter(vec![lone.clone()])),
            heartbeat: heartbeat(),
            ended: false,
        };
        let chunks: Vec<Bytes> = body.map(Result::unwrap).collect().await;
        assert_eq!(chunks.len(), 1);
        assert_eq!(
            chunks[0].as_ptr(),
            lone.as_ptr(),
            "the shared bytes, not a copy"
        );

        let many = (0..3).map(|i| Bytes::from(format!("data: {i}\n\n")));
        let body = Frames {
            frames: Box::pin(futures::stream::iter(many)),
            heartbeat: heartbeat(),
            ended: false,
        };
        let chunks: Vec<Bytes> = body.map(Result::unwrap).collect().await;
        assert_eq!(
            chunks,
            vec![Bytes::from("data: 0\n\ndata: 1\n\ndata: 2\n\n")]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_gets_heartbeats() {
        let mut body = Frames {
            frames: Box::pin(futures::stream::pending()),
            heartbeat: heartbeat(),
            ended: false,
        };
        let beat = tokio::time::timeout(HEARTBEAT * 2, body.next())
            .await
            .unwrap();
        assert_eq!(&beat.unwrap().unwrap()[..], HEARTBEAT_FRAME);
    }
}
