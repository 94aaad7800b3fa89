//! What the reference analytics consumer (`troupe stats`) keeps in the store, and the
//! report the api makes of it: per owner, hour, agent role and model, attempts and their
//! outcomes, durations (as a histogram, for percentiles), calls, tokens and cost. The
//! consumer itself lives in the `troupe-stats` crate; this is its data, next to the log
//! it is computed from, so that one transaction moves a task's cursor and adds its counts.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
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

/// Rows of one owner since an hour, as the store returns them.
#[derive(Debug, Clone, Default)]
pub struct StatsRows {
    pub counts: Vec<(StatsKey, StatsCounts)>,
    /// Attempts per route (role, provider, model) and duration bucket, over the period.
    pub durations: Vec<(Route, u32, u64)>,
}

/// `GET /api/stats`: the consumer's figures for the caller's tasks.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsReport {
    /// The first hour counted.
    pub since: DateTime<Utc>,
    /// Per role and model over the whole period, with duration percentiles.
    pub agents: Vec<AgentStats>,
    /// Per hour, role and model.
    pub hours: Vec<HourStats>,
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
    /// Percentiles of the ended attempts' durations, to within 19%.
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
    pub p99_ms: Option<u64>,
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

/// Role, provider and model.
pub type Route = (String, String, String);

impl StatsRows {
    pub fn report(self, since: DateTime<Utc>) -> StatsReport {
        let mut totals: BTreeMap<Route, StatsCounts> = BTreeMap::new();
        let mut histograms: BTreeMap<Route, BTreeMap<u32, u64>> = BTreeMap::new();
        let mut hours = Vec::with_capacity(self.counts.len());
        for (key, counts) in self.counts {
            let route = (key.role.clone(), key.provider.clone(), key.model.clone());
            totals.entry(route).or_default().add(&counts);
            hours.push(HourStats {
                hour: key.hour,
                role: key.role,
                provider: key.provider,
                model: key.model,
                counts,
            });
        }
        for (route, bucket, count) in self.durations {
            *histograms
                .entry(route)
                .or_default()
                .entry(bucket)
                .or_default() += count;
        }
        hours.sort_by(|a, b| (a.hour, &a.role, &a.model).cmp(&(b.hour, &b.role, &b.model)));
        let agents = totals
            .into_iter()
            .map(|(route, counts)| {
                let histogram = histograms.remove(&route).unwrap_or_default();
                let (role, provider, model) = route;
                AgentStats {
                    role,
                    provider,
                    model,
                    counts,
                    p50_ms: quantile_ms(&histogram, 0.50),
                    p95_ms: quantile_ms(&histogram, 0.95),
                    p99_ms: quantile_ms(&histogram, 0.99),
                }
            })
            .collect();
        StatsReport {
            since,
            agents,
            hours,
        }
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
