//! `fanout`: one task emitting about R events a second, watched by N SSE clients that
//! join spread over J seconds. Each watcher checks its stream (ids 1, 2, 3, … without a
//! gap or a repeat, the end right after the terminal event) and measures how late live
//! events arrive: receive time − the event's `at`.
//!
//! A watcher is one tokio task owning one HTTP/1.1 connection (hyper, no pool), one
//! reusable line buffer and, once it sees a live event, a small histogram of its own;
//! nothing is shared per event. The histograms are merged when the watchers are done.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::header::{ACCEPT, HOST, HeaderValue};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::api::{Api, Target, is_finished, last_seq};
use crate::resources::{OpenFiles, Resources, Sampler, mib, raise_open_files};
use crate::sse::Parser;
use crate::stats::{Percentiles, histogram, show};
use crate::{Error, ErrorSamples, Result, progress, write_samples};

/// The simulated provider's cap on `tokens` (worker/src/providers/simulated.rs).
pub const MAX_TOKENS: u64 = 2000;
/// Open files the process needs besides its watchers (the runtime, the API client, /proc).
const SPARE_FILES: u64 = 64;
/// How long a watcher waits for its stream to end once the terminal event came.
const END_AFTER_TERMINAL: Duration = Duration::from_secs(5);
/// How long past the task's expected end a watcher may still be reading.
const GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct FanoutOptions {
    pub watchers: usize,
    /// Events a second the task should emit: its agent streams a chunk every 1000/R ms.
    /// The server writes them as one `agent_token` each only if it runs with
    /// `TROUPE_TOKEN_FLUSH_MS` ≤ 1000/R.
    pub rate: u32,
    /// How long the task streams: R × S chunks, at most [`MAX_TOKENS`].
    pub duration: Duration,
    /// Watchers connect spread evenly over this time, starting right after the submit.
    pub join: Duration,
    /// After the watchers left, wait this long and sample the server's RSS again.
    pub linger: Duration,
}

impl Default for FanoutOptions {
    fn default() -> Self {
        FanoutOptions {
            watchers: 1000,
            rate: 10,
            duration: Duration::from_secs(20),
            join: Duration::from_secs(5),
            linger: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FanoutReport {
    pub server: String,
    pub task_id: String,
    pub agent: String,
    pub watchers: usize,
    pub rate_asked: u32,
    /// The task's `providerOptions`.
    pub latency_ms_option: u64,
    pub tokens_option: u64,
    pub join_secs_asked: f64,
    /// Events in the task's log when it finished.
    pub log_events: u64,
    /// `agent_token` events in the log, and their rate from the first to the last.
    pub token_events: u64,
    pub measured_token_rate: f64,
    /// From the first event of the log to the last.
    pub task_secs: f64,
    /// From the first watcher's start until every watcher was connected or had failed to.
    pub join_secs: Option<f64>,
    pub connected: u64,
    /// Watchers that could not connect or were refused (e.g. 503 past
    /// `TROUPE_MAX_STREAMS`).
    pub connect_errors: u64,
    /// Connected watchers whose stream failed, stalled, ended before the terminal event,
    /// or did not end after it.
    pub stream_errors: u64,
    /// Ids that were not the one after the previous, over all watchers.
    pub order_errors: u64,
    /// Watchers that got every event of the log, in order, and saw the stream end after
    /// the terminal event.
    pub complete_watchers: u64,
    pub events_delivered: u64,
    /// Events whose `at` is after the watcher's connect time: those measured.
    pub live_events: u64,
    /// Receive time − `at` of live events. Precision: 1%.
    pub latency: Option<Percentiles>,
    pub error_samples: ErrorSamples,
    pub open_files: OpenFiles,
    /// Whether the open-file limit leaves room for every watcher.
    pub open_files_enough: bool,
    /// The server's RSS (with `--pid`) just before the first watcher, when all had joined,
    /// when all had left, and `linger_secs` later.
    pub rss_before_watchers_kib: Option<u64>,
    pub rss_at_join_kib: Option<u64>,
    pub rss_per_watcher_kib: Option<f64>,
    pub rss_watchers_gone_kib: Option<u64>,
    pub rss_after_linger_kib: Option<u64>,
    pub linger_secs: f64,
    pub resources: Resources,
}

impl FanoutReport {
    pub fn errors(&self) -> u64 {
        self.connect_errors + self.stream_errors + self.order_errors
    }

    /// Every watcher got every event in order, and nothing failed.
    pub fn is_clean(&self) -> bool {
        self.errors() == 0 && self.complete_watchers == self.watchers as u64
    }

    /// Whether the log's token rate falls well short of the rate asked: the server
    /// coalesces text into fewer events than chunks.
    pub fn rate_short(&self) -> bool {
        self.measured_token_rate < f64::from(self.rate_asked) * 0.8
    }
}

impl fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fanout: {} SSE watchers of one task, joining over {:.1} s; all settled after {}",
            self.watchers,
            self.join_secs_asked,
            self.join_secs
                .map_or_else(|| "never".to_string(), |s| format!("{s:.2} s"))
        )?;
        writeln!(
            f,
            "  task {}: agent {}, simulated, latencyMs {}, tokens {} (asked {} events/s)",
            self.task_id, self.agent, self.latency_ms_option, self.tokens_option, self.rate_asked
        )?;
        writeln!(
            f,
            "  log: {} events over {:.2} s; {} agent_token events at {:.2}/s measured",
            self.log_events, self.task_secs, self.token_events, self.measured_token_rate
        )?;
        if self.rate_short() {
            writeln!(
                f,
                "  warning: fewer events than asked; the server writes text every \
                 TROUPE_TOKEN_FLUSH_MS: run it with TROUPE_TOKEN_FLUSH_MS <= {}",
                self.latency_ms_option.max(10)
            )?;
        }
        writeln!(
            f,
            "  delivery latency of live events (receive - at): {}",
            show(&self.latency)
        )?;
        writeln!(
            f,
            "  events delivered: {} ({} live); watchers with every event in order and a \
             clean end: {}/{}",
            self.events_delivered, self.live_events, self.complete_watchers, self.watchers
        )?;
        writeln!(
            f,
            "  order errors: {}, connect errors: {}, stream errors: {}",
            self.order_errors, self.connect_errors, self.stream_errors
        )?;
        write_samples(f, &self.error_samples)?;
        if !self.open_files_enough {
            writeln!(
                f,
                "  warning: the open-file limit ({}) is too low for {} watchers",
                self.open_files.soft, self.watchers
            )?;
        }
        if let (Some(before), Some(join)) = (self.rss_before_watchers_kib, self.rss_at_join_kib) {
            writeln!(
                f,
                "  server RSS: {} before the watchers, {} at full join ({:.1} KiB per watcher), \
                 {} when they had left, {} {:.0} s later",
                mib(before),
                mib(join),
                self.rss_per_watcher_kib.unwrap_or(0.0),
                self.rss_watchers_gone_kib.map_or("-".into(), mib),
                self.rss_after_linger_kib.map_or("-".into(), mib),
                self.linger_secs
            )?;
        }
        write!(f, "{}", self.resources)
    }
}

/// Runs the fanout mode. Watcher failures are counted in the report (see
/// [`FanoutReport::is_clean`]); `Err` means the run could not be set up or checked.
pub async fn fanout(target: &Target, options: &FanoutOptions) -> Result<FanoutReport> {
    if options.watchers == 0 {
        return Err(Error::Invalid("--watchers must be at least 1".into()));
    }
    if !(1..=1000).contains(&options.rate) {
        return Err(Error::Invalid(
            "--rate must be 1 to 1000 events a second".into(),
        ));
    }
    if target.server.scheme() != "http" {
        return Err(Error::Invalid(format!(
            "fanout's watchers speak plain HTTP/1.1: --server must be http://, not {}",
            target.server
        )));
    }
    let open_files = raise_open_files();
    let open_files_enough = open_files.soft >= options.watchers as u64 + SPARE_FILES;
    if !open_files_enough {
        progress(format!(
            "WARNING: the open-file limit is {} (hard {}): not enough for {} watchers; \
             expect connect errors (raise it with `ulimit -n` or in limits.conf)",
            open_files.soft, open_files.hard, options.watchers
        ));
    }
    if options.join >= options.duration {
        progress(format!(
            "note: watchers join over {:?} but the task streams for about {:?}: late \
             watchers only replay",
            options.join, options.duration
        ));
    }
    let addr = resolve(&target.server).await?;
    let host = HeaderValue::from_str(&authority(&target.server))
        .map_err(|e| Error::Invalid(format!("--server: {e}")))?;
    let api = Api::connect(target).await?;
    let roles = api.roles().await?;
    // backend's simulated answer is the longest, so it has the most chunks to stream.
    let agent = roles
        .iter()
        .find(|r| *r == "backend")
        .unwrap_or(&roles[0])
        .clone();
    let latency_ms = u64::from(1000 / options.rate);
    let tokens = (u64::from(options.rate) * options.duration.as_secs().max(1)).min(MAX_TOKENS);

    let sampler = Sampler::start(target.pid)?;
    let task = api
        .submit(&json!({
            // The simulated answer quotes the first line (up to 80 characters): a long
            // line gives it more characters, so more chunks are possible.
            "description": "troupe-load fanout: one agent streams its answer at a steady rate \
                            to many watchers of its log",
            "selectedAgents": [agent],
            "provider": "simulated",
            "providerOptions": {"latencyMs": latency_ms, "tokens": tokens},
        }))
        .await?;
    progress(format!(
        "fanout: task {} streams {tokens} chunks every {latency_ms} ms; {} watchers join over {:?}",
        task.task_id, options.watchers, options.join
    ));
    let rss_before_watchers = sampler.server_rss_kib()?;

    let shared = Arc::new(Shared {
        watchers: options.watchers,
        settled: AtomicUsize::new(0),
        all_settled: Notify::new(),
        settled_at: OnceLock::new(),
    });
    let request = Arc::new(WatchRequest {
        addr,
        host,
        path: task.stream_url.clone(),
    });
    let started = Instant::now();
    let deadline = started + options.join + options.duration + GRACE;
    let spawner = {
        let (shared, request) = (shared.clone(), request.clone());
        let (n, join) = (options.watchers, options.join);
        tokio::spawn(async move {
            let mut watchers = tokio::task::JoinSet::new();
            for i in 0..n {
                tokio::time::sleep_until(started + join.mul_f64(i as f64 / n as f64)).await;
                watchers.spawn(watch(request.clone(), shared.clone(), deadline));
            }
            watchers
        })
    };
    let joined = tokio::time::timeout_at(
        started + options.join + GRACE,
        shared.all_settled.notified(),
    )
    .await
    .is_ok();
    let rss_at_join = if joined {
        sampler.server_rss_kib()?
    } else {
        None
    };
    let join_secs = shared
        .settled_at
        .get()
        .map(|at| at.duration_since(started).as_secs_f64());

    let mut watchers = spawner
        .await
        .map_err(|e| Error::Invalid(format!("the watcher spawner failed: {e}")))?;
    let mut tally = Tally::new();
    while let Some(outcome) = watchers.join_next().await {
        let outcome = outcome.map_err(|e| Error::Invalid(format!("a watcher panicked: {e}")))?;
        tally.add(outcome);
    }
    let rss_watchers_gone = sampler.server_rss_kib()?;

    let view = api.task(&task.task_id).await?;
    if !is_finished(&view) {
        return Err(Error::Invalid(format!(
            "task {} has not finished after every watcher ended (status {})",
            task.task_id, view["status"]
        )));
    }
    let log_events = last_seq(&view)?;
    let log = LogFacts::read(&api, &task.task_id).await?;
    let complete_watchers = tally
        .clean
        .iter()
        .filter(|&&events| events == log_events)
        .count() as u64;

    progress(format!(
        "fanout: watchers done; sampling the server's RSS again in {:?}",
        options.linger
    ));
    tokio::time::sleep(options.linger).await;
    let rss_after_linger = sampler.server_rss_kib()?;
    Ok(FanoutReport {
        server: target.server.to_string(),
        task_id: task.task_id,
        agent,
        watchers: options.watchers,
        rate_asked: options.rate,
        latency_ms_option: latency_ms,
        tokens_option: tokens,
        join_secs_asked: options.join.as_secs_f64(),
        log_events,
        token_events: log.token_events,
        measured_token_rate: log.token_rate(),
        task_secs: log.span_secs(),
        join_secs,
        connected: tally.connected,
        connect_errors: tally.connect_errors,
        stream_errors: tally.stream_errors,
        order_errors: tally.order_errors,
        complete_watchers,
        events_delivered: tally.events,
        live_events: tally.latency.len(),
        latency: Percentiles::of(&tally.latency),
        error_samples: tally.samples,
        open_files,
        open_files_enough,
        rss_before_watchers_kib: rss_before_watchers,
        rss_at_join_kib: rss_at_join,
        rss_per_watcher_kib: rss_before_watchers
            .zip(rss_at_join)
            .map(|(before, join)| (join as f64 - before as f64) / options.watchers as f64),
        rss_watchers_gone_kib: rss_watchers_gone,
        rss_after_linger_kib: rss_after_linger,
        linger_secs: options.linger.as_secs_f64(),
        resources: sampler.finish()?,
    })
}

/// The server's first address.
async fn resolve(server: &reqwest::Url) -> Result<SocketAddr> {
    let host = server.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = server.port_or_known_default().unwrap_or(80);
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::Invalid(format!("resolving {server}: {e}")))?
        .next()
        .ok_or_else(|| Error::Invalid(format!("{server} resolves to no address")))
}

/// `host[:port]` for the Host header.
fn authority(server: &reqwest::Url) -> String {
    let host = server.host_str().unwrap_or_default();
    match server.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// What the watchers share: how many have connected or failed to, and when the last did.
struct Shared {
    watchers: usize,
    settled: AtomicUsize,
    all_settled: Notify,
    settled_at: OnceLock<Instant>,
}

impl Shared {
    /// Once per watcher: it is connected, or will never be.
    fn settle(&self) {
        if self.settled.fetch_add(1, Ordering::AcqRel) + 1 == self.watchers {
            let _ = self.settled_at.set(Instant::now());
            self.all_settled.notify_one();
        }
    }
}

struct WatchRequest {
    addr: SocketAddr,
    host: HeaderValue,
    /// The task's `streamUrl`: path and stream token.
    path: String,
}

/// What one watcher saw.
#[derive(Default)]
struct Outcome {
    /// The 200 arrived.
    connected: bool,
    /// Why it failed to connect or why its stream is not clean.
    error: Option<String>,
    events: u64,
    order_errors: u64,
    /// Live latencies in microseconds; allocated at the first live event.
    latency: Option<Histogram<u32>>,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// One watcher: connect, read the stream to its end, check it.
async fn watch(request: Arc<WatchRequest>, shared: Arc<Shared>, deadline: Instant) -> Outcome {
    let mut outcome = Outcome::default();
    let mut settled = false;
    let result = watch_stream(&request, &shared, deadline, &mut outcome, &mut settled).await;
    if !settled {
        shared.settle();
    }
    if let Err(e) = result {
        outcome.error = Some(e);
    }
    outcome
}

async fn watch_stream(
    request: &WatchRequest,
    shared: &Shared,
    deadline: Instant,
    outcome: &mut Outcome,
    settled: &mut bool,
) -> Result<(), String> {
    let stream = tokio::time::timeout_at(deadline, TcpStream::connect(request.addr))
        .await
        .map_err(|_| "connecting timed out".to_string())?
        .map_err(|e| format!("connecting: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("connecting: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("connecting: {e}"))?;
    let http_request = hyper::Request::get(request.path.as_str())
        .header(HOST, request.host.clone())
        .header(ACCEPT, "text/event-stream")
        .body(Empty::new())
        .map_err(|e| format!("building the request: {e}"))?;
    // The connection is driven in this task, beside the reading: no task per connection.
    // Once it ends, whatever it delivered is still read from the body.
    let conn = async move {
        let _ = conn.await;
        std::future::pending::<()>().await
    };
    let read = async move {
        let response = tokio::time::timeout_at(deadline, sender.send_request(http_request))
            .await
            .map_err(|_| "no answer before the deadline".to_string())?
            .map_err(|e| format!("sending the request: {e}"))?;
        if response.status() != hyper::StatusCode::OK {
            return Err(format!("refused: {}", response.status()));
        }
        outcome.connected = true;
        let connected_at = now_micros();
        shared.settle();
        *settled = true;

        let mut body = response.into_body();
        let mut parser = Parser::new(true);
        let mut last_id = 0;
        let mut terminal_seen = false;
        let mut after_terminal = 0u64;
        // One timer for the whole stream, moved up once the terminal event came: no
        // timer is registered per frame.
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        let mut timer_moved = false;
        loop {
            let frame = tokio::select! {
                biased;
                frame = body.frame() => frame,
                () = &mut timer => {
                    return Err(if terminal_seen {
                        "the stream did not end after the terminal event".to_string()
                    } else {
                        format!("the stream stalled after {} events", outcome.events)
                    });
                }
            };
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| format!("reading the stream: {e}"))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            let received = now_micros();
            parser.feed(data, |event| {
                let Some(id) = event.id else { return };
                if terminal_seen {
                    after_terminal += 1;
                }
                if id != last_id + 1 {
                    outcome.order_errors += 1;
                }
                last_id = id;
                outcome.events += 1;
                terminal_seen |= event.is_terminal();
                if let Some(at) = event.at_micros.filter(|&at| at > connected_at) {
                    let latency = outcome.latency.get_or_insert_with(|| {
                        Histogram::new(2).expect("a histogram of 2 significant digits")
                    });
                    // `record` grows an auto-resizing histogram (a saturating record
                    // would clamp to its current top).
                    let _ = latency.record((received - at).max(1) as u64);
                }
            });
            if terminal_seen && !timer_moved {
                let end_by = deadline.min(Instant::now() + END_AFTER_TERMINAL);
                timer.as_mut().reset(end_by);
                timer_moved = true;
            }
        }
        drop(sender);
        if after_terminal > 0 {
            return Err(format!(
                "{after_terminal} events came after the terminal event"
            ));
        }
        if !terminal_seen || parser.is_mid_event() {
            return Err(format!(
                "the stream ended after {} events without the terminal event",
                outcome.events
            ));
        }
        Ok(())
    };
    tokio::select! {
        result = read => result,
        () = conn => unreachable!("the connection future never ends"),
    }
}

/// The watchers' outcomes added up.
struct Tally {
    connected: u64,
    connect_errors: u64,
    stream_errors: u64,
    order_errors: u64,
    events: u64,
    /// The event count of every watcher whose stream was clean.
    clean: Vec<u64>,
    latency: Histogram<u64>,
    samples: ErrorSamples,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            connected: 0,
            connect_errors: 0,
            stream_errors: 0,
            order_errors: 0,
            events: 0,
            clean: Vec::new(),
            latency: histogram(),
            samples: ErrorSamples::default(),
        }
    }

    fn add(&mut self, outcome: Outcome) {
        self.events += outcome.events;
        self.order_errors += outcome.order_errors;
        if outcome.connected {
            self.connected += 1;
        }
        match (&outcome.error, outcome.connected) {
            (Some(e), false) => {
                self.connect_errors += 1;
                self.samples.add(e.clone());
            }
            (Some(e), true) => {
                self.stream_errors += 1;
                self.samples.add(e.clone());
            }
            (None, _) if outcome.order_errors > 0 => {
                self.samples.add(format!(
                    "a watcher saw {} event ids out of order",
                    outcome.order_errors
                ));
            }
            (None, _) => self.clean.push(outcome.events),
        }
        if let Some(latency) = &outcome.latency {
            for value in latency.iter_recorded() {
                self.latency
                    .saturating_record_n(value.value_iterated_to(), value.count_at_value().into());
            }
        }
    }
}

/// What the task's log says about the rate it was written at.
struct LogFacts {
    token_events: u64,
    /// `at` of the first and last event, and of the first and last `agent_token`, in µs.
    first_at: i64,
    last_at: i64,
    first_token_at: i64,
    last_token_at: i64,
}

impl LogFacts {
    /// Reads the log through the NDJSON export.
    async fn read(api: &Api, task_id: &str) -> Result<LogFacts> {
        let response = api
            .client
            .get(api.url(&format!("/api/tasks/{task_id}/events")))
            .bearer_auth(&api.token)
            .header(ACCEPT.as_str(), "application/x-ndjson")
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(crate::api::status_error(response, "the NDJSON export").await);
        }
        let text = response.text().await?;
        let mut facts = LogFacts {
            token_events: 0,
            first_at: 0,
            last_at: 0,
            first_token_at: 0,
            last_token_at: 0,
        };
        for (i, line) in text.lines().enumerate() {
            let event: Value = serde_json::from_str(line)
                .map_err(|e| Error::Invalid(format!("the NDJSON export has a bad line: {e}")))?;
            let at = crate::sse::at_micros(line.as_bytes()).unwrap_or(0);
            if i == 0 {
                facts.first_at = at;
            }
            facts.last_at = at;
            if event["type"] == "agent_token" {
                if facts.token_events == 0 {
                    facts.first_token_at = at;
                }
                facts.last_token_at = at;
                facts.token_events += 1;
            }
        }
        Ok(facts)
    }

    fn span_secs(&self) -> f64 {
        (self.last_at - self.first_at) as f64 / 1e6
    }

    /// `agent_token` events a second, from the first to the last.
    fn token_rate(&self) -> f64 {
        let span = (self.last_token_at - self.first_token_at) as f64 / 1e6;
        if self.token_events < 2 || span <= 0.0 {
            return 0.0;
        }
        (self.token_events - 1) as f64 / span
    }
}
