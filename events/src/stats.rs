//! What the reference analytics consumer (`troupe stats`) keeps in the store, and the
//! report the api makes of it: per owner, hour, agent role and model, attempts and their
//! outcomes, durations (as a histogram, for percentiles), calls, tokens and cost. The
//! consumer itself lives in the `troupe-stats` crate; this is its data, next to the log
//! it is computed from, so that one transaction moves a task's cursor and adds its counts.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, NaiveDate, TimeDelta, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// How far the consumer has counted one task's log, and the route the task asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsCursor {
    pub task_id: Uuid,
    pub owner_id: Uuid,
    pub provider: String,
    /// '' for the provider's default model.
    pub model: String,
    pub seq: u64,
}

/// One cursor's move: from `from` (`None`: the task was never counted) to the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorMove {
    pub from: Option<u64>,
    pub to: StatsCursor,
}

/// The row a count goes to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StatsKey {
    pub owner_id: Uuid,
    pub hour: DateTime<Utc>,
    pub role: String,
    pub provider: String,
    pub model: String,
}

impl StatsKey {
    /// The hour `at` falls in.
    pub fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
        at.duration_trunc(TimeDelta::hours(1)).unwrap_or(at)
    }
}

/// Counts of one `StatsKey`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsCounts {
    /// Attempts that ended: successes + failures + cancellations.
    pub attempts: u64,
    pub successes: u64,
    pub failures: u64,
    pub cancellations: u64,
    /// The ended attempts' durations added up, in milliseconds.
    pub duration_ms: u64,
    /// Provider calls that were answered (`agent_usage`).
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    /// Calls whose token counts are the simulated provider's estimates.
    pub simulated_calls: u64,
    /// Calls whose provider reported no tokens: the token figures are a floor.
    pub unreported_calls: u64,
    /// Calls without a cost (no price for the model, or no tokens): the cost is a floor.
    pub unpriced_calls: u64,
}

impl StatsCounts {
    pub fn add(&mut self, other: &StatsCounts) {
        self.attempts += other.attempts;
        self.successes += other.successes;
        self.failures += other.failures;
        self.cancellations += other.cancellations;
        self.duration_ms += other.duration_ms;
        self.calls += other.calls;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_usd += other.cost_usd;
        self.simulated_calls += other.simulated_calls;
        self.unreported_calls += other.unreported_calls;
        self.unpriced_calls += other.unpriced_calls;
    }
}

/// What one batch of the consumer adds, committed together: if any cursor is not where
/// `from` says (another consumer counted that task meanwhile), nothing is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsDelta {
    pub cursors: Vec<CursorMove>,
    pub counts: BTreeMap<StatsKey, StatsCounts>,
    /// Attempts per duration bucket ([`duration_bucket`]).
    pub durations: BTreeMap<(StatsKey, u32), u64>,
    /// Answered calls per bucket of their time to first token.
    pub first_tokens: BTreeMap<(StatsKey, u32), u64>,
}

impl StatsDelta {
    pub fn is_empty(&self) -> bool {
        self.cursors.is_empty()
    }
}

/// Buckets per doubling of the duration: each bucket is 19% wider than the one before,
/// so a percentile read from them is within 19% of the true figure.
const BUCKETS_PER_DOUBLING: f64 = 4.0;

/// The histogram bucket of a duration.
pub fn duration_bucket(ms: u64) -> u32 {
    ((ms as f64 + 1.0).log2() * BUCKETS_PER_DOUBLING).floor() as u32
}

/// The largest duration a bucket holds: what a percentile in it reads as.
pub fn bucket_upper_ms(bucket: u32) -> u64 {
    (2f64.powf((bucket + 1) as f64 / BUCKETS_PER_DOUBLING) - 1.0).floor() as u64
}

/// The `q`-quantile (0..=1) of a histogram, as its bucket's upper bound.
pub fn quantile_ms(histogram: &BTreeMap<u32, u64>, q: f64) -> Option<u64> {
    let total: u64 = histogram.values().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    histogram.iter().find_map(|(bucket, count)| {
        seen += count;
        (seen >= rank).then(|| bucket_upper_ms(*bucket))
    })
}

/// What a report's rows are summed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsPeriod {
    Hour,
    /// The UTC day.
    Day,
}

/// Histogram rows: attempts (or calls) per route and bucket, over the whole window.
pub type BucketRows = Vec<(Route, u32, u64)>;

/// Rows of one owner since an instant, as the store returns them.
#[derive(Debug, Clone)]
pub struct StatsRows {
    pub period: StatsPeriod,
    /// Per period: `StatsKey::hour` is the hour, or the day's midnight UTC.
    pub counts: Vec<(StatsKey, StatsCounts)>,
    /// Attempts per route and duration bucket.
    pub durations: BucketRows,
    /// Answered calls per route and bucket of their time to first token.
    pub first_tokens: BucketRows,
    /// The store had more period rows than a report reads.
    pub truncated: bool,
}

/// `GET /api/stats`: the consumer's figures for the caller's tasks.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsReport {
    /// The first instant counted.
    pub since: DateTime<Utc>,
    /// The window had more rows than a report reads: `hours` or `days` hold the oldest,
    /// and the totals cover only those.
    pub truncated: bool,
    /// Per role and model over the whole window, with percentiles.
    pub agents: Vec<AgentStats>,
    /// Per role over the whole window (every provider and model), with percentiles.
    pub roles: Vec<AgentRoleStats>,
    /// Per hour, role and model (`?hours=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hours: Option<Vec<HourStats>>,
    /// Per UTC day, role and model (`?days=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days: Option<Vec<DayStats>>,
}

/// Percentiles, read from histograms whose buckets are 19% wide: each is the upper bound
/// of its bucket, so within 19% of the true figure; `null` when nothing was measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Spread {
    /// Of the ended attempts' durations.
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    /// Answered calls that produced text, whose time to first token is measured.
    pub first_token_calls: u64,
    pub first_token_p50_ms: Option<u64>,
    pub first_token_p95_ms: Option<u64>,
    pub first_token_p99_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStats {
    pub role: String,
    pub provider: String,
    /// '' for the provider's default model.
    pub model: String,
    #[serde(flatten)]
    pub counts: StatsCounts,
    #[serde(flatten)]
    pub spread: Spread,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentRoleStats {
    pub role: String,
    #[serde(flatten)]
    pub counts: StatsCounts,
    #[serde(flatten)]
    pub spread: Spread,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HourStats {
    pub hour: DateTime<Utc>,
    pub role: String,
    pub provider: String,
    pub model: String,
    #[serde(flatten)]
    pub counts: StatsCounts,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DayStats {
    /// The UTC day, `YYYY-MM-DD`.
    #[schema(value_type = String, format = Date)]
    pub day: NaiveDate,
    pub role: String,
    pub provider: String,
    pub model: String,
    #[serde(flatten)]
    pub counts: StatsCounts,
}

/// Role, provider and model.
pub type Route = (String, String, String);

/// One route's or role's counts and histograms over a window.
#[derive(Debug, Default)]
struct Figures {
    counts: StatsCounts,
    durations: BTreeMap<u32, u64>,
    first_tokens: BTreeMap<u32, u64>,
}

impl Figures {
    fn spread(&self) -> Spread {
        Spread {
            p50_ms: quantile_ms(&self.durations, 0.50),
            p95_ms: quantile_ms(&self.durations, 0.95),
            p99_ms: quantile_ms(&self.durations, 0.99),
            first_token_calls: self.first_tokens.values().sum(),
            first_token_p50_ms: quantile_ms(&self.first_tokens, 0.50),
            first_token_p95_ms: quantile_ms(&self.first_tokens, 0.95),
            first_token_p99_ms: quantile_ms(&self.first_tokens, 0.99),
        }
    }
}

/// The window's figures per route and per role.
#[derive(Default)]
struct Totals {
    routes: BTreeMap<Route, Figures>,
    roles: BTreeMap<String, Figures>,
}

impl Totals {
    fn both(&mut self, route: &Route) -> [&mut Figures; 2] {
        let by_route = self.routes.entry(route.clone()).or_default();
        let by_role = self.roles.entry(route.0.clone()).or_default();
        [by_route, by_role]
    }

    fn add_counts(&mut self, route: &Route, counts: &StatsCounts) {
        for figures in self.both(route) {
            figures.counts.add(counts);
        }
    }

    fn add_buckets(&mut self, rows: BucketRows, pick: fn(&mut Figures) -> &mut BTreeMap<u32, u64>) {
        for (route, bucket, count) in rows {
            for figures in self.both(&route) {
                *pick(figures).entry(bucket).or_default() += count;
            }
        }
    }

    fn agents(&self) -> Vec<AgentStats> {
        self.routes
            .iter()
            .map(|((role, provider, model), figures)| AgentStats {
                role: role.clone(),
                provider: provider.clone(),
                model: model.clone(),
                counts: figures.counts,
                spread: figures.spread(),
            })
            .collect()
    }

    fn roles(&self) -> Vec<AgentRoleStats> {
        self.roles
            .iter()
            .map(|(role, figures)| AgentRoleStats {
                role: role.clone(),
                counts: figures.counts,
                spread: figures.spread(),
            })
            .collect()
    }
}

impl StatsRows {
    pub fn report(self, since: DateTime<Utc>) -> StatsReport {
        let mut totals = Totals::default();
        for (key, counts) in &self.counts {
            let route = (key.role.clone(), key.provider.clone(), key.model.clone());
            totals.add_counts(&route, counts);
        }
        totals.add_buckets(self.durations, |f| &mut f.durations);
        totals.add_buckets(self.first_tokens, |f| &mut f.first_tokens);
        let mut rows = self.counts;
        rows.sort_by(|(a, _), (b, _)| {
            (a.hour, &a.role, &a.model).cmp(&(b.hour, &b.role, &b.model))
        });
        let (hours, days) = match self.period {
            StatsPeriod::Hour => (Some(rows.into_iter().map(hour_stats).collect()), None),
            StatsPeriod::Day => (None, Some(rows.into_iter().map(day_stats).collect())),
        };
        StatsReport {
            since,
            truncated: self.truncated,
            agents: totals.agents(),
            roles: totals.roles(),
            hours,
            days,
        }
    }
}

fn hour_stats((key, counts): (StatsKey, StatsCounts)) -> HourStats {
    HourStats {
        hour: key.hour,
        role: key.role,
        provider: key.provider,
        model: key.model,
        counts,
    }
}

fn day_stats((key, counts): (StatsKey, StatsCounts)) -> DayStats {
    DayStats {
        day: key.hour.date_naive(),
        role: key.role,
        provider: key.provider,
        model: key.model,
        counts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_reads_back_within_a_fifth() {
        for ms in [0u64, 1, 2, 7, 99, 100, 1_234, 60_000, 3_600_000] {
            let upper = bucket_upper_ms(duration_bucket(ms));
            assert!(upper >= ms, "{ms} -> {upper}");
            assert!(upper as f64 <= ms as f64 * 1.19 + 1.0, "{ms} -> {upper}");
        }
    }

    #[test]
    fn quantiles_walk_the_buckets_in_order() {
        let mut histogram = BTreeMap::new();
        for ms in [10u64, 10, 10, 10, 1_000] {
            *histogram.entry(duration_bucket(ms)).or_default() += 1;
        }
        assert_eq!(
            quantile_ms(&histogram, 0.5),
            Some(bucket_upper_ms(duration_bucket(10)))
        );
        assert_eq!(
            quantile_ms(&histogram, 0.99),
            Some(bucket_upper_ms(duration_bucket(1_000)))
        );
        assert_eq!(quantile_ms(&BTreeMap::new(), 0.5), None);
    }
}
