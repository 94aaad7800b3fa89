//! What a task's agents cost: tokens as the provider reported them, priced when the
//! operator configured a price for the model, totalled per task and held against the
//! budget the user set when submitting it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where an `agent_usage` event's token counts come from. Counts are never guessed
/// silently: a provider that did not report them gives `unknown` and no counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UsageSource {
    /// The provider's own figures (OpenAI's `usage` chunk, Anthropic's message usage).
    Reported,
    /// Made up by the simulated provider, in proportion to its text: plausible, not real.
    Simulated,
    /// The provider said nothing about tokens.
    Unknown,
}

/// Token counts of one call as its provider reported them. Providers report in parts
/// (Anthropic: input at the start, output at the end) or as running totals (some
/// OpenAI-compatible servers), so a later count replaces an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenCounts {
    pub source: UsageSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
}

impl TokenCounts {
    pub fn reported(input_tokens: Option<u64>, output_tokens: Option<u64>) -> Self {
        TokenCounts {
            source: UsageSource::Reported,
            input_tokens,
            output_tokens,
        }
    }

    /// Nothing reported yet.
    pub fn unknown() -> Self {
        TokenCounts {
            source: UsageSource::Unknown,
            input_tokens: None,
            output_tokens: None,
        }
    }

    pub fn merge(&mut self, later: TokenCounts) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        if later.input_tokens.is_some() || later.output_tokens.is_some() {
            self.source = later.source;
        }
    }
}

/// One agent attempt's usage, as its `agent_usage` event carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptUsage {
    #[serde(flatten)]
    pub counts: TokenCounts,
    /// Present only when the operator priced the model and both counts are known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

/// A task's usage so far: every attempt's, retries and resumed runs included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotals {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    /// Attempts whose tokens the provider did not report: the token totals are a floor.
    #[serde(default)]
    pub unreported_attempts: u32,
    /// Attempts without a cost (no price for their model, or tokens not reported): the
    /// cost is a floor.
    #[serde(default)]
    pub unpriced_attempts: u32,
    /// Attempts whose counts are the simulated provider's estimates: the token totals are
    /// not what a real model would have used.
    #[serde(default)]
    pub simulated_attempts: u32,
}

impl UsageTotals {
    pub fn add(&mut self, usage: &AttemptUsage) {
        match (usage.counts.input_tokens, usage.counts.output_tokens) {
            (None, None) => self.unreported_attempts += 1,
            (input, output) => {
                self.input_tokens += input.unwrap_or(0);
                self.output_tokens += output.unwrap_or(0);
            }
        }
        match usage.cost_usd {
            Some(cost) => self.cost_usd += cost,
            None => self.unpriced_attempts += 1,
        }
        if usage.counts.source == UsageSource::Simulated {
            self.simulated_attempts += 1;
        }
    }

    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// The most a task may spend, set by the user at submit. When the running total passes a
/// limit, the task is cancelled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
}

impl Budget {
    /// What is wrong with the budget, said for the user who sent it.
    pub fn problem(&self) -> Option<&'static str> {
        if self.max_tokens == Some(0) {
            return Some("budget.maxTokens must be a positive whole number");
        }
        match self.max_cost_usd {
            Some(cost) if !(cost.is_finite() && cost > 0.0) => {
                Some("budget.maxCostUsd must be a positive number of US dollars")
            }
            _ => None,
        }
    }

    /// Why `totals` are over this budget, said for the person reading `task_cancelled`;
    /// `None` while within it.
    pub fn exceeded(&self, totals: &UsageTotals) -> Option<String> {
        if let Some(max) = self.max_tokens
            && totals.tokens() > max
        {
            return Some(format!(
                "over budget: {} tokens used, the budget allows {max}",
                totals.tokens()
            ));
        }
        if let Some(max) = self.max_cost_usd
            && totals.cost_usd > max
        {
            return Some(format!(
                "over budget: ${:.4} spent, the budget allows ${max:.4}",
                totals.cost_usd
            ));
        }
        None
    }
}

/// What a model costs, in US dollars per million tokens, from the operator's price table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl Price {
    /// The cost of a call whose two counts are both known; `None` otherwise, as half a
    /// bill would pass for a whole one.
    pub fn cost(&self, counts: &TokenCounts) -> Option<f64> {
        let (input, output) = (counts.input_tokens?, counts.output_tokens?);
        Some(
            (input as f64 * self.input_per_million + output as f64 * self.output_per_million)
                / 1_000_000.0,
        )
    }
}

/// A user's usage over a window of days, aggregated by the store (`Store::usage_report`):
/// what the usage page draws. Every list is bounded (see the store's caps) and says so
/// when a cap cut it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    /// Tasks the report covers: those submitted in the window, the newest first, up to
    /// the store's cap.
    pub tasks: u64,
    /// The window held more tasks (or more rows of a breakdown) than a report reads; the
    /// figures cover the newest tasks only.
    pub truncated: bool,
    /// The covered tasks' usage, from their rows (every attempt, retries included).
    pub totals: UsageTotals,
    /// Usage by UTC day, agent role and model (from `agent_usage`), ordered by day, role,
    /// model. Summed over the cells it equals `totals`.
    pub daily: Vec<DailyUsage>,
    /// How each agent role's attempts ended, and how long they took.
    pub roles: Vec<RoleStats>,
}

/// One cell of [`UsageReport::daily`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DailyUsage {
    /// `YYYY-MM-DD`, UTC: the day the attempt's call ended.
    pub day: String,
    pub role: String,
    pub model: String,
    /// Provider calls answered (one `agent_usage` each).
    pub attempts: u64,
    #[serde(flatten)]
    pub usage: UsageTotals,
}

/// How one agent role fared in the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleStats {
    pub role: String,
    /// Attempts that ended with `agent_complete`, `agent_error`, `agent_cancelled`.
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// `completed / (completed + failed)`: a cancel is a user's choice, not the agent's
    /// failure. Absent when no attempt ended by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    /// Execution time of the completed attempts, in ms.
    pub duration: Percentiles,
    /// Time to first token of the answered calls, in ms.
    pub time_to_first_token: Percentiles,
}

/// Nearest-rank percentiles of a set of milliseconds: the value below which p% of them
/// lie (the ⌈p·n/100⌉-th smallest), so each is a value that occurred.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Percentiles {
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95: Option<u64>,
}

impl RoleStats {
    pub fn new(role: String) -> Self {
        RoleStats {
            role,
            ..RoleStats::default()
        }
    }

    /// Sets the success rate from the counts.
    pub fn settle(&mut self) {
        let ended = self.completed + self.failed;
        self.success_rate = (ended > 0).then(|| self.completed as f64 / ended as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(input: Option<u64>, output: Option<u64>, cost: Option<f64>) -> AttemptUsage {
        AttemptUsage {
            counts: TokenCounts::reported(input, output),
            cost_usd: cost,
        }
    }

    #[test]
    fn totals_count_what_was_reported_and_how_much_was_not() {
        let mut totals = UsageTotals::default();
        totals.add(&attempt(Some(100), Some(20), Some(0.5)));
        totals.add(&attempt(None, None, None));
        totals.add(&attempt(Some(10), Some(5), None));
        assert_eq!(totals.tokens(), 135);
        assert_eq!(totals.cost_usd, 0.5);
        assert_eq!(totals.unreported_attempts, 1);
        assert_eq!(totals.unpriced_attempts, 2);
        assert_eq!(totals.simulated_attempts, 0);

        totals.add(&AttemptUsage {
            counts: TokenCounts {
                source: UsageSource::Simulated,
                input_tokens: Some(7),
                output_tokens: Some(3),
            },
            cost_usd: None,
        });
        assert_eq!(totals.tokens(), 145);
        assert_eq!(totals.simulated_attempts, 1);
    }

    #[test]
    fn a_budget_is_exceeded_only_past_its_limits() {
        let budget = Budget {
            max_tokens: Some(100),
            max_cost_usd: Some(1.0),
        };
        let mut totals = UsageTotals {
            input_tokens: 60,
            output_tokens: 40,
            cost_usd: 1.0,
            ..Default::default()
        };
        assert_eq!(budget.exceeded(&totals), None);
        totals.output_tokens = 41;
        assert!(budget.exceeded(&totals).unwrap().contains("101 tokens"));
        totals.output_tokens = 40;
        totals.cost_usd = 1.25;
        assert!(budget.exceeded(&totals).unwrap().contains("$1.2500"));
    }

    #[test]
    fn nonsense_budgets_are_refused() {
        let zero = Budget {
            max_tokens: Some(0),
            max_cost_usd: None,
        };
        assert!(zero.problem().is_some());
        for cost in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let budget = Budget {
                max_tokens: None,
                max_cost_usd: Some(cost),
            };
            assert!(budget.problem().is_some(), "{cost}");
        }
        assert!(Budget::default().problem().is_none());
    }

    #[test]
    fn a_price_needs_both_counts() {
        let price = Price {
            input_per_million: 2.0,
            output_per_million: 8.0,
        };
        let counts = TokenCounts::reported(Some(500_000), Some(250_000));
        assert_eq!(price.cost(&counts), Some(3.0));
        assert_eq!(price.cost(&TokenCounts::reported(None, Some(10))), None);
    }

    #[test]
    fn a_later_count_replaces_an_earlier_one() {
        let mut counts = TokenCounts::unknown();
        counts.merge(TokenCounts::reported(None, None));
        assert_eq!(counts, TokenCounts::unknown(), "nothing reported yet");
        counts.merge(TokenCounts::reported(Some(25), None));
        counts.merge(TokenCounts::reported(None, Some(3)));
        counts.merge(TokenCounts::reported(None, Some(15)));
        assert_eq!(counts, TokenCounts::reported(Some(25), Some(15)));
    }
}
