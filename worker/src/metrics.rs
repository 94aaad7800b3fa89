//! The worker's Prometheus series: its slots, its agents and what their provider calls
//! took and used. Served on the worker's own port (`status`) or, embedded, on the api's.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use ::metrics::Gauge;
use troupe_events::TokenCounts;
use troupe_events::metrics::Series;

pub const TASKS_RUNNING: Series = Series::gauge(
    "troupe_worker_tasks_running",
    &[],
    "Deliveries this worker is processing now (at most TROUPE_WORKER_TASKS).",
);
pub const AGENTS_FINISHED: Series = Series::counter(
    "troupe_agents_finished_total",
    &["role", "outcome"],
    "Agent attempts this worker ran to an end, by role and outcome: completed, failed or cancelled.",
);
pub const AGENT_DURATION: Series = Series::histogram(
    "troupe_agent_duration_seconds",
    &["outcome"],
    "How long an agent attempt ran (its executionTime), by outcome.",
);
pub const PROVIDER_REQUEST_DURATION: Series = Series::histogram(
    "troupe_provider_request_duration_seconds",
    &["provider", "model"],
    "Provider calls that were answered, from the request to the end of the answer, the provider's own retries included.",
);
pub const PROVIDER_TTFT: Series = Series::histogram(
    "troupe_provider_time_to_first_token_seconds",
    &["provider", "model"],
    "From a provider call to its first text (agent_usage's timeToFirstToken).",
);
pub const PROVIDER_TOKENS: Series = Series::counter(
    "troupe_provider_tokens_total",
    &["provider", "model", "kind"],
    "Tokens of answered calls as agent_usage reports them, kind input or output; a call whose provider reported no counts adds nothing.",
);
pub const PROVIDER_COST: Series = Series::gauge(
    "troupe_provider_cost_usd_total",
    &["provider", "model"],
    "US dollars of priced calls (TROUPE_PRICES) as agent_usage reports them. Only ever grows: a gauge because the metrics crate's counters are whole numbers.",
);

/// The worker's series.
pub const SERIES: &[Series] = &[
    TASKS_RUNNING,
    AGENTS_FINISHED,
    AGENT_DURATION,
    PROVIDER_REQUEST_DURATION,
    PROVIDER_TTFT,
    PROVIDER_TOKENS,
    PROVIDER_COST,
];

/// Installs the process's recorder, if not yet done, with the worker's series.
pub fn install() {
    troupe_events::metrics::install(&[SERIES]);
}

/// Held while a slot processes a delivery.
pub(crate) struct Running(Gauge);

impl Running {
    pub fn new() -> Self {
        let running = ::metrics::gauge!(TASKS_RUNNING.name);
        running.increment(1.0);
        Running(running)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

pub(crate) fn agent_finished(role: &str, outcome: &'static str, took: Duration) {
    ::metrics::counter!(AGENTS_FINISHED.name, "role" => role.to_string(), "outcome" => outcome)
        .increment(1);
    ::metrics::histogram!(AGENT_DURATION.name, "outcome" => outcome).record(took.as_secs_f64());
}

/// One answered provider call, as its `agent_usage` event reports it.
pub(crate) struct Answered<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    pub took: Duration,
    pub first_text: Option<Duration>,
    pub counts: &'a TokenCounts,
    pub cost_usd: Option<f64>,
}

pub(crate) fn answered(call: Answered<'_>) {
    let labels = [
        ("provider", call.provider.to_string()),
        ("model", model_label(call.model)),
    ];
    ::metrics::histogram!(PROVIDER_REQUEST_DURATION.name, &labels).record(call.took.as_secs_f64());
    if let Some(first_text) = call.first_text {
        ::metrics::histogram!(PROVIDER_TTFT.name, &labels).record(first_text.as_secs_f64());
    }
    let counts = [
        ("input", call.counts.input_tokens),
        ("output", call.counts.output_tokens),
    ];
    for (kind, tokens) in counts {
        if let Some(tokens) = tokens {
            let [provider, model] = labels.clone();
            ::metrics::counter!(
                PROVIDER_TOKENS.name,
                &[provider, model, ("kind", kind.to_string())]
            )
            .increment(tokens);
        }
    }
    if let Some(cost) = call.cost_usd {
        ::metrics::gauge!(PROVIDER_COST.name, &labels).increment(cost);
    }
}

/// Distinct models one process labels; later ones are reported as `other`. A task may
/// name any model and the simulated provider answers to every name, so the label would
/// otherwise be as open as user input.
const MODELS: usize = 32;

fn model_label(model: &str) -> String {
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut seen = SEEN.lock().expect("model labels lock");
    let seen = seen.get_or_insert_with(HashSet::new);
    if seen.contains(model) {
        return model.to_string();
    }
    if seen.len() < MODELS {
        seen.insert(model.to_string());
        return model.to_string();
    }
    "other".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_labels_stop_growing() {
        for i in 0..MODELS * 2 {
            let label = model_label(&format!("m{i}"));
            assert!(label == format!("m{i}") || label == "other");
        }
        assert_eq!(model_label("yet-another"), "other");
        assert_eq!(
            model_label("m0"),
            "m0",
            "a model seen early keeps its label"
        );
    }
}
