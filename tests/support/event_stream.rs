//! Reads a deployment's `EVENTS` JetStream stream as an analytics consumer would, and
//! checks it against the task logs: every stored event exactly once per `(taskId, seq)`,
//! byte for byte, with its `Nats-Msg-Id`. Shared by `it` and `chaos`.

// Each test binary that includes this file uses a part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tokio::time::{Instant, sleep};
use troupe_events::Subjects;

/// One message of the stream.
#[derive(Debug, Clone)]
pub struct Streamed {
    pub subject: String,
    pub msg_id: Option<String>,
    pub seq_header: Option<u64>,
    pub payload: String,
}

/// How many messages the stream holds now.
async fn stream_messages(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Waits until the stream holds at least `expected` messages and has stopped growing for
/// `settle` (a repeat published late would come in that time), or until `wait` is over;
/// then reads every message from the start.
pub async fn read_event_stream(
    nats_url: &str,
    prefix: &str,
    expected: usize,
    wait: Duration,
    settle: Duration,
) -> Vec<Streamed> {
    let client = async_nats::connect(nats_url).await.expect("NATS reachable");
    let js = jetstream::new(client);
    let name = Subjects::new(prefix).stream_name("EVENTS");
    let deadline = Instant::now() + wait;
    let (mut count, mut since) = (stream_messages(&js, &name).await, Instant::now());
    while Instant::now() < deadline {
        sleep(Duration::from_millis(250)).await;
        let now = stream_messages(&js, &name).await;
        if now != count {
            (count, since) = (now, Instant::now());
        } else if count as usize >= expected && since.elapsed() >= settle {
            break;
        }
    }
    read_all(&js, &name, count).await
}

async fn read_all(js: &jetstream::Context, name: &str, count: u64) -> Vec<Streamed> {
    let mut out = Vec::with_capacity(count as usize);
    if count == 0 {
        return out;
    }
    let stream = js.get_stream(name).await.expect("the EVENTS stream exists");
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("reading the stream");
    while (out.len() as u64) < count {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
        let Ok(Some(Ok(message))) = next else {
            panic!("the stream stopped after {} of {count} messages", out.len());
        };
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        out.push(Streamed {
            subject: message.subject.to_string(),
            msg_id: header("Nats-Msg-Id"),
            seq_header: header("Troupe-Seq").and_then(|s| s.parse().ok()),
            payload: String::from_utf8_lossy(&message.payload).into_owned(),
        });
    }
    out
}

/// What is wrong with the stream, given each task's log as stored (its raw JSON lines in
/// seq order): every event exactly once, byte for byte, nothing else.
pub fn stream_mismatches(
    streamed: &[Streamed],
    logs: &HashMap<String, Vec<String>>,
) -> Vec<String> {
    let mut seen: BTreeMap<(String, u64), Vec<&Streamed>> = BTreeMap::new();
    let mut problems = vec![];
    for message in streamed {
        let task = message.subject.split('.').nth_back(1).unwrap_or("?");
        let Some(seq) = message.seq_header else {
            problems.push(format!("{}: no Troupe-Seq header", message.subject));
            continue;
        };
        if message.msg_id.as_deref() != Some(&format!("{task}:{seq}")) {
            problems.push(format!(
                "{} seq {seq}: Nats-Msg-Id is {:?}",
                message.subject, message.msg_id
            ));
        }
        seen.entry((task.to_string(), seq))
            .or_default()
            .push(message);
    }
    for (task, log) in logs {
        for (i, line) in log.iter().enumerate() {
            let key = (task.clone(), i as u64 + 1);
            match seen.remove(&key).as_deref() {
                None => problems.push(format!("task {task} seq {}: not in the stream", key.1)),
                Some([one]) if one.payload == *line => {}
                Some([one]) => problems.push(format!(
                    "task {task} seq {}: the stream has {} instead of {line}",
                    key.1, one.payload
                )),
                Some(many) => problems.push(format!(
                    "task {task} seq {}: {} times in the stream",
                    key.1,
                    many.len()
                )),
            }
        }
    }
    for ((task, seq), _) in seen {
        problems.push(format!(
            "task {task} seq {seq}: in the stream but not stored"
        ));
    }
    problems
}
