//! The stats consumer's statements (`crate::stats`), written once for both stores: the
//! text takes the store's placeholder mark, and the macros run them on its connection.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::stats::{StatsCounts, StatsCursor, StatsKey};

pub(super) struct StatsSql {
    pub cursor: String,
    pub insert_cursor: String,
    pub move_cursor: String,
    pub add_counts: String,
    pub add_durations: String,
    pub counts_since: String,
    pub durations_since: String,
    pub behind: String,
}

/// Counted columns of `stats_hourly`, in [`bind_counts!`]'s order.
const COUNTED: [&str; 9] = [
    "attempts",
    "successes",
    "failures",
    "cancellations",
    "duration_ms",
    "calls",
    "input_tokens",
    "output_tokens",
    "cost_usd",
];
const KEY: &str = "owner_id, hour, role, provider, model";

/// Most hourly rows one report reads: a month of hours for a few dozen routes.
pub(super) const STATS_ROWS: i64 = 20_000;

impl StatsSql {
    pub fn new(mark: char) -> Self {
        let m = |n: usize| format!("{mark}{n}");
        let counted = COUNTED.join(", ");
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
                "INSERT INTO stats_cursors (task_id, owner_id, provider, model, seq)
                 VALUES ({}, {}, {}, {}, {}) ON CONFLICT DO NOTHING",
                m(1),
                m(2),
                m(3),
                m(4),
                m(5)
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
            add_durations: format!(
                "INSERT INTO stats_durations ({KEY}, bucket, count)
                 VALUES ({}, {}, {}, {}, {}, {}, {})
                 ON CONFLICT ({KEY}, bucket) DO UPDATE SET count = stats_durations.count + excluded.count",
                m(1),
                m(2),
                m(3),
                m(4),
                m(5),
                m(6),
                m(7)
            ),
            counts_since: format!(
                "SELECT {KEY}, {counted} FROM stats_hourly
                 WHERE owner_id = {} AND hour >= {} ORDER BY hour, role, provider, model LIMIT {STATS_ROWS}",
                m(1),
                m(2)
            ),
            durations_since: format!(
                "SELECT role, provider, model, CAST(bucket AS BIGINT), CAST(sum(count) AS BIGINT) FROM stats_durations
                 WHERE owner_id = {} AND hour >= {} GROUP BY role, provider, model, bucket",
                m(1),
                m(2)
            ),
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

pub(super) type CountsRow = (
    Uuid,
    DateTime<Utc>,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    f64,
);

pub(super) fn counts_of(row: CountsRow) -> (StatsKey, StatsCounts) {
    let (owner_id, hour, role, provider, model, a, s, f, c, d, calls, i, o, cost) = row;
    let key = StatsKey {
        owner_id,
        hour,
        role,
        provider,
        model,
    };
    let counts = StatsCounts {
        attempts: a as u64,
        successes: s as u64,
        failures: f as u64,
        cancellations: c as u64,
        duration_ms: d as u64,
        calls: calls as u64,
        input_tokens: i as u64,
        output_tokens: o as u64,
        cost_usd: cost,
    };
    (key, counts)
}

pub(super) type DurationRow = (String, String, String, i64, i64);

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
                    .execute(&mut *tx)
                    .await?;
            }
            for ((key, bucket), count) in &$delta.durations {
                sqlx::query(&$sql.add_durations)
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
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(moved)
    }};
}
pub(super) use apply_stats;

/// Reads an owner's [`crate::stats::StatsRows`] since an hour on `$pool`.
macro_rules! read_stats_rows {
    ($pool:expr, $sql:expr, $owner:expr, $since:expr) => {{
        let counts: Vec<super::stats::CountsRow> = sqlx::query_as(&$sql.counts_since)
            .bind($owner)
            .bind($since)
            .fetch_all($pool)
            .await?;
        let durations: Vec<super::stats::DurationRow> = sqlx::query_as(&$sql.durations_since)
            .bind($owner)
            .bind($since)
            .fetch_all($pool)
            .await?;
        Ok(crate::stats::StatsRows {
            counts: counts.into_iter().map(super::stats::counts_of).collect(),
            durations: durations
                .into_iter()
                .map(|(role, provider, model, bucket, count)| {
                    ((role, provider, model), bucket as u32, count as u64)
                })
                .collect(),
        })
    }};
}
pub(super) use read_stats_rows;
