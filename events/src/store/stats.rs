//! The stats consumer's statements (`crate::stats`), written once for both stores: the
//! text takes the store's placeholder mark, and the macros run them on its connection.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::stats::{Route, StatsCounts, StatsCursor, StatsKey};

pub(super) struct StatsSql {
    pub cursor: String,
    pub insert_cursor: String,
    pub move_cursor: String,
    pub add_counts: String,
    pub add_durations: String,
    pub add_first_tokens: String,
    pub hours_since: String,
    pub days_since: String,
    pub durations_since: String,
    pub first_tokens_since: String,
    pub behind: String,
}

/// Counted columns of `stats_hourly`, in [`apply_stats!`]'s order.
const COUNTED: [&str; 12] = [
    "attempts",
    "successes",
    "failures",
    "cancellations",
    "duration_ms",
    "calls",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "simulated_calls",
    "unreported_calls",
    "unpriced_calls",
];
const KEY: &str = "owner_id, hour, role, provider, model";

/// Most period rows one report reads: a month of hours for a few dozen routes.
pub(super) const STATS_ROWS: usize = 20_000;

/// The statement adding to a histogram table (`stats_durations`, `stats_first_tokens`).
fn add_buckets(table: &str, m: impl Fn(usize) -> String) -> String {
    format!(
        "INSERT INTO {table} ({KEY}, bucket, count)
         VALUES ({}, {}, {}, {}, {}, {}, {})
         ON CONFLICT ({KEY}, bucket) DO UPDATE SET count = {table}.count + excluded.count",
        m(1),
        m(2),
        m(3),
        m(4),
        m(5),
        m(6),
        m(7)
    )
}

/// The statement reading a histogram table over a window, summed per route and bucket.
fn buckets_since(table: &str, m: impl Fn(usize) -> String) -> String {
    format!(
        "SELECT role, provider, model, CAST(bucket AS BIGINT), CAST(sum(count) AS BIGINT) FROM {table}
         WHERE owner_id = {} AND hour >= {} GROUP BY role, provider, model, bucket",
        m(1),
        m(2)
    )
}

impl StatsSql {
    /// `day_of_hour` is the store's expression for the midnight UTC of column `hour`'s day.
    pub fn new(mark: char, day_of_hour: &str) -> Self {
        let m = |n: usize| format!("{mark}{n}");
        let counted = COUNTED.join(", ");
        let summed: Vec<String> = COUNTED
            .iter()
            .map(|c| match *c {
                "cost_usd" => format!("sum({c})"),
                _ => format!("CAST(sum({c}) AS BIGINT)"),
            })
            .collect();
        let limit = STATS_ROWS + 1;
        let placeholders: Vec<String> = (6..6 + COUNTED.len()).map(m).collect();
        let added: Vec<String> = COUNTED
            .iter()
            .map(|c| format!("{c} = stats_hourly.{c} + excluded.{c}"))
            .collect();
        StatsSql {
            cursor: format!(
                "SELECT task_id, owner_id, provider, model, seq FROM stats_cursors WHERE task_id = {}",
                m(1)
            ),
            insert_cursor: format!(
                // Only while the task is there: one its owner deleted meanwhile moves no
                // cursor, and the batch is counted again without it.
                "INSERT INTO stats_cursors (task_id, owner_id, provider, model, seq)
                 SELECT {}, {}, {}, {}, {} WHERE EXISTS (SELECT 1 FROM tasks WHERE id = {})
                 ON CONFLICT DO NOTHING",
                m(1),
                m(2),
                m(3),
                m(4),
                m(5),
                m(1)
            ),
            move_cursor: format!(
                "UPDATE stats_cursors SET provider = {}, model = {}, seq = {}
                 WHERE task_id = {} AND seq = {}",
                m(3),
                m(4),
                m(5),
                m(1),
                m(2)
            ),
            add_counts: format!(
                "INSERT INTO stats_hourly ({KEY}, {counted})
                 VALUES ({}, {}, {}, {}, {}, {})
                 ON CONFLICT ({KEY}) DO UPDATE SET {}",
                m(1),
                m(2),
                m(3),
                m(4),
                m(5),
                placeholders.join(", "),
                added.join(", ")
            ),
            add_durations: add_buckets("stats_durations", m),
            add_first_tokens: add_buckets("stats_first_tokens", m),
            hours_since: format!(
                "SELECT {KEY}, {counted} FROM stats_hourly
                 WHERE owner_id = {} AND hour >= {} ORDER BY hour, role, provider, model LIMIT {limit}",
                m(1),
                m(2)
            ),
            days_since: format!(
                "SELECT owner_id, {day_of_hour} AS hour, role, provider, model, {} FROM stats_hourly
                 WHERE owner_id = {} AND hour >= {}
                 GROUP BY 1, 2, 3, 4, 5 ORDER BY 2, 3, 4, 5 LIMIT {limit}",
                summed
                    .iter()
                    .zip(COUNTED)
                    .map(|(sum, c)| format!("{sum} AS {c}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                m(1),
                m(2)
            ),
            durations_since: buckets_since("stats_durations", m),
            first_tokens_since: buckets_since("stats_first_tokens", m),
            behind: format!(
                "SELECT t.id, COALESCE(c.seq, 0), t.last_seq FROM tasks t
                 LEFT JOIN stats_cursors c ON c.task_id = t.id
                 WHERE t.last_seq > COALESCE(c.seq, 0) ORDER BY t.id LIMIT {}",
                m(1)
            ),
        }
    }
}

pub(super) type CursorRow = (Uuid, Uuid, String, String, i64);

pub(super) fn cursor_of(row: CursorRow) -> StatsCursor {
    let (task_id, owner_id, provider, model, seq) = row;
    StatsCursor {
        task_id,
        owner_id,
        provider,
        model,
        seq: seq as u64,
    }
}

/// A row of `stats_hourly`, or of its sums over a day (`hour` is then the day's midnight).
#[derive(sqlx::FromRow)]
pub(super) struct CountsRow {
    owner_id: Uuid,
    hour: DateTime<Utc>,
    role: String,
    provider: String,
    model: String,
    attempts: i64,
    successes: i64,
    failures: i64,
    cancellations: i64,
    duration_ms: i64,
    calls: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: f64,
    simulated_calls: i64,
    unreported_calls: i64,
    unpriced_calls: i64,
}

pub(super) fn counts_of(row: CountsRow) -> (StatsKey, StatsCounts) {
    let n = |v: i64| v.max(0) as u64;
    let key = StatsKey {
        owner_id: row.owner_id,
        hour: row.hour,
        role: row.role,
        provider: row.provider,
        model: row.model,
    };
    let counts = StatsCounts {
        attempts: n(row.attempts),
        successes: n(row.successes),
        failures: n(row.failures),
        cancellations: n(row.cancellations),
        duration_ms: n(row.duration_ms),
        calls: n(row.calls),
        input_tokens: n(row.input_tokens),
        output_tokens: n(row.output_tokens),
        cost_usd: row.cost_usd,
        simulated_calls: n(row.simulated_calls),
        unreported_calls: n(row.unreported_calls),
        unpriced_calls: n(row.unpriced_calls),
    };
    (key, counts)
}

pub(super) type BucketRow = (String, String, String, i64, i64);

pub(super) fn bucket_of(row: BucketRow) -> (Route, u32, u64) {
    let (role, provider, model, bucket, count) = row;
    ((role, provider, model), bucket as u32, count.max(0) as u64)
}

/// Applies a [`crate::stats::StatsDelta`] in one transaction on `$pool` with the store's
/// [`StatsSql`]: `Ok(false)`, and nothing written, when a cursor was not where it said.
macro_rules! apply_stats {
    ($pool:expr, $sql:expr, $delta:expr) => {{
        let mut tx = $pool.begin().await?;
        let mut moved = true;
        for change in &$delta.cursors {
            let to = &change.to;
            let rows = match change.from {
                None => sqlx::query(&$sql.insert_cursor)
                    .bind(to.task_id)
                    .bind(to.owner_id)
                    .bind(&to.provider)
                    .bind(&to.model)
                    .bind(to.seq as i64),
                Some(from) => sqlx::query(&$sql.move_cursor)
                    .bind(to.task_id)
                    .bind(from as i64)
                    .bind(&to.provider)
                    .bind(&to.model)
                    .bind(to.seq as i64),
            }
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if rows != 1 {
                moved = false;
                break;
            }
        }
        if moved {
            for (key, counts) in &$delta.counts {
                sqlx::query(&$sql.add_counts)
                    .bind(key.owner_id)
                    .bind(key.hour)
                    .bind(&key.role)
                    .bind(&key.provider)
                    .bind(&key.model)
                    .bind(counts.attempts as i64)
                    .bind(counts.successes as i64)
                    .bind(counts.failures as i64)
                    .bind(counts.cancellations as i64)
                    .bind(counts.duration_ms as i64)
                    .bind(counts.calls as i64)
                    .bind(counts.input_tokens as i64)
                    .bind(counts.output_tokens as i64)
                    .bind(counts.cost_usd)
                    .bind(counts.simulated_calls as i64)
                    .bind(counts.unreported_calls as i64)
                    .bind(counts.unpriced_calls as i64)
                    .execute(&mut *tx)
                    .await?;
            }
            let histograms = [
                (&$sql.add_durations, &$delta.durations),
                (&$sql.add_first_tokens, &$delta.first_tokens),
            ];
            for (statement, histogram) in histograms {
                for ((key, bucket), count) in histogram {
                    sqlx::query(statement)
                        .bind(key.owner_id)
                        .bind(key.hour)
                        .bind(&key.role)
                        .bind(&key.provider)
                        .bind(&key.model)
                        .bind(i64::from(*bucket))
                        .bind(*count as i64)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(moved)
    }};
}
pub(super) use apply_stats;

/// Reads an owner's [`crate::stats::StatsRows`] since an instant on `$pool`, summed by
/// `$period` ([`crate::stats::StatsPeriod`]).
macro_rules! read_stats_rows {
    ($pool:expr, $sql:expr, $owner:expr, $since:expr, $period:expr) => {{
        let statement = match $period {
            crate::stats::StatsPeriod::Hour => &$sql.hours_since,
            crate::stats::StatsPeriod::Day => &$sql.days_since,
        };
        let mut counts: Vec<super::stats::CountsRow> = sqlx::query_as(statement)
            .bind($owner)
            .bind($since)
            .fetch_all($pool)
            .await?;
        let truncated = counts.len() > super::stats::STATS_ROWS;
        counts.truncate(super::stats::STATS_ROWS);
        let mut histograms = vec![];
        for statement in [&$sql.durations_since, &$sql.first_tokens_since] {
            let rows: Vec<super::stats::BucketRow> = sqlx::query_as(statement)
                .bind($owner)
                .bind($since)
                .fetch_all($pool)
                .await?;
            histograms.push(rows.into_iter().map(super::stats::bucket_of).collect());
        }
        let first_tokens = histograms.pop().unwrap_or_default();
        let durations = histograms.pop().unwrap_or_default();
        Ok(crate::stats::StatsRows {
            period: $period,
            counts: counts.into_iter().map(super::stats::counts_of).collect(),
            durations,
            first_tokens,
            truncated,
        })
    }};
}
pub(super) use read_stats_rows;
