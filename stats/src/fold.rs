//! What each event adds to the counts: a pure function of the event and the task's
//! cursor, so that counting a log in any number of batches gives the same figures.

use troupe_events::stats::{StatsCounts, StatsCursor, StatsDelta, StatsKey, duration_bucket};
use troupe_events::{Event, EventBody};

/// How an attempt ended.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Success,
    Failure,
    Cancellation,
}

/// Adds what `event` of the cursor's task says to `delta`.
pub fn fold(cursor: &StatsCursor, event: &Event, delta: &mut StatsDelta) {
    let key = |role: &str, provider: &str, model: &str| StatsKey {
        owner_id: cursor.owner_id,
        hour: StatsKey::hour_of(event.at),
        role: role.to_string(),
        provider: provider.to_string(),
        model: model.to_string(),
    };
    let requested = |role: &str| key(role, &cursor.provider, &cursor.model);
    match &event.body {
        EventBody::AgentComplete {
            agent_role,
            execution_time,
            ..
        } => ended(
            delta,
            requested(agent_role),
            *execution_time,
            Ending::Success,
        ),
        EventBody::AgentError {
            agent_role,
            execution_time,
            ..
        } => ended(
            delta,
            requested(agent_role),
            *execution_time,
            Ending::Failure,
        ),
        EventBody::AgentCancelled {
            agent_role,
            execution_time,
            ..
        } => ended(
            delta,
            requested(agent_role),
            *execution_time,
            Ending::Cancellation,
        ),
        EventBody::AgentUsage {
            agent_role,
            provider,
            model,
            usage,
            ..
        } => {
            let counts = delta
                .counts
                .entry(key(agent_role, provider, model))
                .or_default();
            counts.calls += 1;
            counts.input_tokens += usage.counts.input_tokens.unwrap_or(0);
            counts.output_tokens += usage.counts.output_tokens.unwrap_or(0);
            counts.cost_usd += usage.cost_usd.unwrap_or(0.0);
        }
        _ => {}
    }
}

fn ended(delta: &mut StatsDelta, key: StatsKey, took_ms: u64, ending: Ending) {
    let ended = StatsCounts {
        attempts: 1,
        successes: u64::from(matches!(ending, Ending::Success)),
        failures: u64::from(matches!(ending, Ending::Failure)),
        cancellations: u64::from(matches!(ending, Ending::Cancellation)),
        duration_ms: took_ms,
        ..StatsCounts::default()
    };
    delta.counts.entry(key.clone()).or_default().add(&ended);
    *delta
        .durations
        .entry((key, duration_bucket(took_ms)))
        .or_default() += 1;
}
