//! The simulated provider's options, and their bounds: the worker runs it, the api refuses
//! at submit what it could not run as asked.

use serde_json::{Map, Value};

use super::options;

pub const DEFAULT_TOKENS: i64 = 24;
pub const DEFAULT_LATENCY_MS: i64 = 40;
pub const TOKENS: std::ops::RangeInclusive<i64> = 1..=2000;
pub const LATENCY_MS: std::ops::RangeInclusive<i64> = 0..=10_000;
/// The longest one simulated answer may take (`latencyMs` × `tokens`): a demo provider
/// must not let one task hold a worker's slot for hours. An operator may set a shorter
/// bound for submits; the worker clamps to this one.
pub const MAX_ANSWER_MS: i64 = 300_000;

/// What is wrong with a task's `providerOptions` for this provider, said for the user:
/// checked at submit, so that a task that cannot run as asked is never stored. An answer
/// may take at most `max_answer_ms` (itself at most [`MAX_ANSWER_MS`]).
pub fn check_options(options: &Map<String, Value>, max_answer_ms: i64) -> Result<(), String> {
    let max_answer_ms = max_answer_ms.min(MAX_ANSWER_MS);
    let said = |e: options::InvalidOption| e.0;
    let tokens = options::integer(options, "tokens").map_err(said)?;
    let latency = options::integer(options, "latencyMs").map_err(said)?;
    options::positive_integer(options, "failAttempts").map_err(said)?;
    options::string_list(options, "failAgents").map_err(said)?;
    if let Some(n) = tokens.filter(|n| !TOKENS.contains(n)) {
        return Err(format!("providerOptions.tokens must be 1 to 2000, not {n}"));
    }
    if let Some(ms) = latency.filter(|ms| !LATENCY_MS.contains(ms)) {
        return Err(format!(
            "providerOptions.latencyMs must be 0 to 10000, not {ms}"
        ));
    }
    let answer_ms = tokens.unwrap_or(DEFAULT_TOKENS) * latency.unwrap_or(DEFAULT_LATENCY_MS);
    if answer_ms > max_answer_ms {
        return Err(format!(
            "providerOptions.latencyMs × tokens is {answer_ms} ms; the simulated provider \
             takes at most {max_answer_ms} ms an answer on this server"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn options_a_task_cannot_run_as_asked_are_refused_at_submit() {
        let check = |options: serde_json::Value| {
            super::check_options(options.as_object().unwrap(), super::MAX_ANSWER_MS)
        };
        assert!(check(json!({})).is_ok());
        assert!(check(json!({"tokens": 2000, "latencyMs": 150})).is_ok());
        for (options, said) in [
            (json!({"tokens": 2001}), "tokens must be 1 to 2000"),
            (json!({"tokens": 0}), "tokens must be 1 to 2000"),
            (json!({"latencyMs": -5}), "latencyMs must be 0 to 10000"),
            (json!({"latencyMs": 1e30}), "latencyMs must be 0 to 10000"),
            (
                json!({"tokens": 2000, "latencyMs": 151}),
                "at most 300000 ms",
            ),
            (json!({"tokens": "many"}), "tokens"),
            (json!({"failAgents": "qa"}), "failAgents"),
        ] {
            let error = check(options.clone()).unwrap_err();
            assert!(error.contains(said), "{options}: {error}");
        }
    }

    #[test]
    fn an_operator_may_bound_answers_tighter_but_not_looser() {
        let options = json!({"tokens": 24, "latencyMs": 100});
        let options = options.as_object().unwrap();
        assert!(super::check_options(options, 2400).is_ok());
        let error = super::check_options(options, 1000).unwrap_err();
        assert!(error.contains("at most 1000 ms"), "{error}");
        let slow = json!({"tokens": 2000, "latencyMs": 151});
        assert!(super::check_options(slow.as_object().unwrap(), i64::MAX).is_err());
    }
}
