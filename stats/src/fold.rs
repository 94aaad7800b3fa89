//! What each event adds to the counts: a pure function of the event and the task's
//! cursor, so that counting a log in any number of batches gives the same figures.

use troupe_events::stats::{StatsCounts, StatsCursor, StatsDelta, StatsKey, duration_bucket};
use troupe_events::{AttemptUsage, Event, EventBody, UsageSource};

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
            time_to_first_token,
            usage,
            ..
        } => answered(
            delta,
            key(agent_role, provider, model),
            usage,
            *time_to_first_token,
        ),
        _ => {}
    }
}

/// A provider call that was answered: its tokens and cost, and how they are known.
fn answered(
    delta: &mut StatsDelta,
    key: StatsKey,
    usage: &AttemptUsage,
    first_token_ms: Option<u64>,
) {
    let (input, output) = (usage.counts.input_tokens, usage.counts.output_tokens);
    let call = StatsCounts {
        calls: 1,
        input_tokens: input.unwrap_or(0),
        output_tokens: output.unwrap_or(0),
        cost_usd: usage.cost_usd.unwrap_or(0.0),
        simulated_calls: u64::from(usage.counts.source == UsageSource::Simulated),
        unreported_calls: u64::from(input.is_none() && output.is_none()),
        unpriced_calls: u64::from(usage.cost_usd.is_none()),
        ..StatsCounts::default()
    };
    delta.counts.entry(key.clone()).or_default().add(&call);
    if let Some(ms) = first_token_ms {
        *delta
            .first_tokens
            .entry((key, duration_bucket(ms)))
            .or_default() += 1;
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
