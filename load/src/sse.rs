//! A hand-written, incremental SSE parser over the raw bytes of a response body. It copies
//! only a partial line left at the end of a chunk, and decodes from each event just what a
//! load test checks: its `id` (the seq), its type, and optionally the JSON's `at`.

use memchr::{memchr, memmem};

/// One dispatched event. `kind` is at most [`KIND_CAP`] bytes (longer types are cut, which
/// only matters for comparing them with the types a load test knows).
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The `id:` field as a number: the event's seq on Troupe's event endpoints. `None` for
    /// an event without one (the closing `complete` / `error` of `execute/stream`) or with
    /// an id that is not a whole number.
    pub id: Option<u64>,
    pub kind: &'a [u8],
    /// The top-level `at` of the data's JSON in microseconds since the Unix epoch, when
    /// the parser was asked for it and it could be read.
    pub at_micros: Option<i64>,
}

impl Event<'_> {
    /// `task_complete`, `task_error` or `task_cancelled`: a stream ends after one.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.kind,
            b"task_complete" | b"task_error" | b"task_cancelled"
        )
    }
}

pub const KIND_CAP: usize = 32;

#[derive(Debug, Default)]
pub struct Parser {
    /// A line not ended yet: the tail of the last chunk(s).
    partial: Vec<u8>,
    parse_at: bool,
    // The fields of the event being read.
    id: Option<u64>,
    kind: [u8; KIND_CAP],
    kind_len: usize,
    has_data: bool,
    at_micros: Option<i64>,
}

impl Parser {
    /// A parser; with `parse_at`, each event's `at` is decoded (it costs a substring search
    /// and a date parse per event, so modes that do not need it leave it off).
    pub fn new(parse_at: bool) -> Parser {
        Parser {
            parse_at,
            ..Parser::default()
        }
    }

    /// Feeds the next bytes of the body; `on_event` is called for every event they
    /// complete, in order.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(Event<'_>)) {
        if self.partial.is_empty() {
            let used = self.lines(chunk, &mut on_event);
            self.partial.extend_from_slice(&chunk[used..]);
        } else {
            let mut buffer = std::mem::take(&mut self.partial);
            buffer.extend_from_slice(chunk);
            let used = self.lines(&buffer, &mut on_event);
            buffer.drain(..used);
            self.partial = buffer;
        }
    }

    /// Whether a line or an event was left unfinished (the body ended mid-event).
    pub fn is_mid_event(&self) -> bool {
        !self.partial.is_empty() || self.has_data || self.id.is_some()
    }

    /// Parses every complete line of `bytes`; returns how many bytes were used.
    fn lines(&mut self, bytes: &[u8], on_event: &mut impl FnMut(Event<'_>)) -> usize {
        let mut start = 0;
        while let Some(end) = memchr(b'\n', &bytes[start..]) {
            let line = &bytes[start..start + end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            self.line(line, on_event);
            start += end + 1;
        }
        start
    }

    fn line(&mut self, line: &[u8], on_event: &mut impl FnMut(Event<'_>)) {
        if line.is_empty() {
            // A blank line ends the event; one without data is not dispatched (the spec).
            if self.has_data {
                on_event(Event {
                    id: self.id,
                    kind: &self.kind[..self.kind_len],
                    at_micros: self.at_micros,
                });
            }
            self.id = None;
            self.kind_len = 0;
            self.has_data = false;
            self.at_micros = None;
            return;
        }
        if line[0] == b':' {
            return; // a comment: the server's heartbeat
        }
        let (field, value) = match memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"id" => self.id = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()),
            b"event" => {
                let n = value.len().min(KIND_CAP);
                self.kind[..n].copy_from_slice(&value[..n]);
                self.kind_len = n;
            }
            b"data" => {
                self.has_data = true;
                if self.parse_at && self.at_micros.is_none() {
                    self.at_micros = at_micros(value);
                }
            }
            _ => {}
        }
    }
}

/// The `at` of an event's JSON (RFC 3339) in microseconds since the Unix epoch. An event's
/// JSON starts with `seq`, `taskId` and `at`, and a quote inside a string value is escaped,
/// so the first `"at":"` is the top-level field.
pub fn at_micros(json: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"at\":\"";
    let start = memmem::find(json, KEY)? + KEY.len();
    let len = memchr(b'"', &json[start..])?;
    let text = std::str::from_utf8(&json[start..start + len]).ok()?;
    Some(
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()?
            .timestamp_micros(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(parser: &mut Parser, chunks: &[&[u8]]) -> Vec<(Option<u64>, String, Option<i64>)> {
        let mut out = vec![];
        for chunk in chunks {
            parser.feed(chunk, |e| {
                out.push((
                    e.id,
                    String::from_utf8_lossy(e.kind).into_owned(),
                    e.at_micros,
                ))
            });
        }
        out
    }

    const STREAM: &[u8] = b": heartbeat\n\nid: 1\nevent: task_created\ndata: {\"seq\":1,\"taskId\":\"t\",\"at\":\"2026-11-24T02:01:27.646948Z\",\"title\":\"\\\"at\\\":\\\"x\"}\n\n\
id: 2\r\nevent: task_complete\r\ndata: {\"seq\":2,\"at\":\"2026-11-24T02:01:28Z\"}\r\n\r\n\
event: complete\ndata: {\"taskId\":\"t\"}\n\n";

    #[test]
    fn every_split_of_a_stream_gives_the_same_events() {
        let whole = collect(&mut Parser::new(true), &[STREAM]);
        assert_eq!(whole.len(), 3, "{whole:?}");
        assert_eq!(whole[0].0, Some(1));
        assert_eq!(whole[0].1, "task_created");
        assert_eq!(whole[0].2, Some(1_795_485_687_646_948));
        assert_eq!(
            whole[1],
            (Some(2), "task_complete".into(), Some(1_795_485_688_000_000))
        );
        assert_eq!(whole[2], (None, "complete".into(), None));
        for cut in 0..STREAM.len() {
            let mut parser = Parser::new(true);
            let (a, b) = STREAM.split_at(cut);
            assert_eq!(collect(&mut parser, &[a, b]), whole, "cut at {cut}");
            assert!(!parser.is_mid_event());
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(collect(&mut Parser::new(true), &bytes), whole);
    }

    #[test]
    fn a_body_cut_mid_event_is_noticed_and_at_is_optional() {
        let mut parser = Parser::new(false);
        let events = collect(
            &mut parser,
            &[b"id: 7\nevent: agent_token\ndata: {\"at\":\"x\"}\n"],
        );
        assert!(events.is_empty());
        assert!(parser.is_mid_event());
        let events = collect(&mut parser, &[b"\n"]);
        assert_eq!(events, vec![(Some(7), "agent_token".into(), None)]);
        assert_eq!(at_micros(b"{\"seq\":1}"), None);
        assert_eq!(at_micros(b"{\"at\":\"not a date\"}"), None);
    }
}
