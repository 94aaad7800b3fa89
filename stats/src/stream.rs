//! The distributed feed: a durable pull consumer of its own on the EVENTS stream
//! (`<prefix>.events.>`), acknowledging each message only once its batch is committed.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use troupe_events::bus::event_from_message;
use troupe_events::{RawEvent, Subjects};

use crate::{Applied, StatsConsumer};

/// The durable consumer's name unless told otherwise.
pub const DEFAULT_CONSUMER: &str = "troupe-stats";
/// Most messages fetched and counted in one transaction.
const BATCH: usize = 256;
/// How long one fetch waits for messages.
const FETCH_WAIT: Duration = Duration::from_secs(1);
/// How long a message that could not be counted waits before it comes again.
const RETRY_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// The durable consumer's name: one per independent reader of the stream.
    pub durable: String,
    /// How long the stream waits for an ack before it delivers a message again.
    pub ack_wait: Duration,
    /// How often the store is scanned for tasks the stream did not bring in full (it
    /// lost them to its retention while the consumer was behind or away). At start too.
    pub catch_up_every: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            durable: DEFAULT_CONSUMER.into(),
            ack_wait: Duration::from_secs(30),
            catch_up_every: Duration::from_secs(60),
        }
    }
}

/// What one fetch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    pub messages: usize,
    pub applied: Applied,
}

pub struct StreamFeed {
    consumer: StatsConsumer,
    messages: consumer::Consumer<consumer::pull::Config>,
    catch_up_every: Duration,
}

impl StreamFeed {
    /// Attaches to (or creates) the durable consumer `config.durable` on the EVENTS
    /// stream; a new one starts from the stream's first message.
    pub async fn attach(
        client: async_nats::Client,
        subjects: &Subjects,
        config: &StreamConfig,
        consumer: StatsConsumer,
    ) -> anyhow::Result<Self> {
        let js = jetstream::new(client);
        let stream = js.get_stream(subjects.stream_name("EVENTS")).await?;
        let messages = stream
            .get_or_create_consumer(
                &config.durable,
                consumer::pull::Config {
                    durable_name: Some(config.durable.clone()),
                    filter_subject: subjects.all_events(),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    max_ack_pending: 10 * BATCH as i64,
                    ..Default::default()
                },
            )
            .await?;
        Ok(StreamFeed {
            consumer,
            messages,
            catch_up_every: config.catch_up_every,
        })
    }

    /// Fetches up to one batch, counts it, and acknowledges it once committed; on failure
    /// nothing is acknowledged and the messages come again.
    pub async fn process_one(&self) -> anyhow::Result<Fetched> {
        let mut fetched = self
            .messages
            .fetch()
            .max_messages(BATCH)
            .expires(FETCH_WAIT)
            .messages()
            .await?;
        let mut messages = Vec::with_capacity(BATCH);
        while let Some(message) = fetched.next().await {
            messages.push(message.map_err(|e| anyhow::anyhow!(e))?);
        }
        // A message on our subjects without our headers is not an event: skipped.
        let events: Vec<RawEvent> = messages
            .iter()
            .filter_map(|m| event_from_message(m))
            .collect();
        let applied = match self.consumer.apply(&events).await {
            Ok(applied) => applied,
            Err(e) => {
                for message in &messages {
                    let _ = message.ack_with(AckKind::Nak(Some(RETRY_AFTER))).await;
                }
                return Err(e);
            }
        };
        for message in &messages {
            // A lost ack is a redelivery, and a redelivery counts nothing.
            let _ = message.ack().await;
        }
        Ok(Fetched {
            messages: messages.len(),
            applied,
        })
    }

    /// Counts until `shutdown`: the stream, and every `catch_up_every` the store. The
    /// catch-up runs between fetches, never racing one: a fetch dropped midway would leave
    /// its messages unacknowledged until the stream's ack wait sends them again.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut next_catch_up = Instant::now();
        while !shutdown.is_cancelled() {
            if Instant::now() >= next_catch_up {
                self.consumer.catch_up_logged().await;
                next_catch_up = Instant::now() + self.catch_up_every;
            }
            let fetched = tokio::select! {
                _ = shutdown.cancelled() => return,
                fetched = self.process_one() => fetched,
            };
            if let Err(e) = fetched {
                tracing::warn!(error = %e, "counting events from the stream failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                }
            }
        }
    }
}
