//! The event store: users, task rows and the per-task event log, on PostgreSQL
//! (distributed) or SQLite (embedded), behind one trait.

mod postgres;
mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

pub use postgres::PgStore;

mod stats;
pub use sqlite::SqliteStore;

use crate::error::{Error, Result};
use crate::event::{Event, EventBody, RawEvent};
use crate::providers::{Advert, Offer};
use crate::stats::{StatsCursor, StatsDelta, StatsPeriod, StatsRows};
use crate::task::{ControlRequest, Controls, NewTask, TaskRecord, TaskSpec, TaskStatus};
use crate::usage::{DailyUsage, Percentiles, RoleStats, UsageReport, UsageTotals};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
}

/// A signed-in session. Its tokens name `id`, and are honoured while the row is there and
/// `expires_at` is ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// What deleting a task did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// The task had ended: its row and its log are gone.
    Deleted,
    /// The task has not ended: it is marked, hidden from its owner, and removed by a sweep
    /// once its log ends.
    Marked,
    Missing,
}

/// What one sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    pub tasks: Vec<Uuid>,
    pub sessions: u64,
    pub accounts: u64,
}

/// What a submit did: made a task, or found the one made earlier with the same key.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    Created(TaskRecord),
    Existing(TaskRecord),
}

impl Submitted {
    pub fn task(&self) -> &TaskRecord {
        match self {
            Submitted::Created(t) | Submitted::Existing(t) => t,
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies the migrations under `migrations/` for this backend.
    async fn migrate(&self) -> Result<()>;

    async fn ping(&self) -> Result<()>;

    /// Fails with [`Error::AlreadyExists`] when the email (case-insensitively) is taken.
    async fn create_user(&self, email: &str, password_hash: &str) -> Result<User>;

    async fn user_by_email(&self, email: &str) -> Result<Option<User>>;

    async fn user(&self, id: Uuid) -> Result<Option<User>>;

    async fn create_session(&self, session: &Session) -> Result<()>;

    /// The user of a live session: `None` once it has ended or expired, or its user is gone.
    async fn session_user(&self, session_id: Uuid) -> Result<Option<Uuid>>;

    async fn end_session(&self, session_id: Uuid) -> Result<()>;

    /// Sets the user's password hash, ends every session of the user and starts `session`,
    /// in one transaction: a token from before the change is refused everywhere.
    async fn replace_password(
        &self,
        user_id: Uuid,
        password_hash: &str,
        session: &Session,
    ) -> Result<()>;

    /// Ends the user's sessions, frees their email and marks every task of theirs for
    /// deletion (cancelling those that have not ended), in one transaction; the sweep
    /// removes the tasks as they end, then the user and their stats.
    async fn delete_account(&self, user_id: Uuid) -> Result<()>;

    /// The owner of `task_id`, when they have tasks waiting for admission.
    async fn waiting_owner(&self, task_id: Uuid) -> Result<Option<Uuid>>;

    /// Admits the owner's oldest waiting tasks while fewer than `limit` of theirs are
    /// active: each gets its outbox row, and is returned for the caller to queue.
    async fn admit(&self, owner_id: Uuid, limit: u32) -> Result<Vec<Dispatch>>;

    /// Up to `limit` owners with waiting tasks: the sweep admits for them in case an
    /// admission was lost to a crash.
    async fn owners_waiting(&self, limit: u32) -> Result<Vec<Uuid>>;

    /// The task's place among its owner's waiting tasks (1: admitted next); `None` when
    /// it does not wait.
    async fn queue_position(&self, task_id: Uuid) -> Result<Option<u64>>;

    /// Deletes an ended task with its log; marks one that has not ended (see [`Deletion`]).
    async fn delete_task(&self, task_id: Uuid) -> Result<Deletion>;

    /// Removes up to `limit` ended tasks that are marked for deletion or, when
    /// `ended_before` is given, last changed before it; the expired sessions; and the
    /// deleted accounts that have no task left, with their stats.
    async fn sweep(&self, ended_before: Option<DateTime<Utc>>, limit: u32) -> Result<Swept>;

    /// Stores a worker's advert (the providers it serves), live for `live_for` from now: a
    /// worker says it again before then while it runs. Expired adverts are swept.
    async fn advertise(&self, advert: &Advert, live_for: Duration) -> Result<()>;

    /// The adverts of live workers, newest first.
    async fn live_adverts(&self) -> Result<Vec<Advert>>;

    /// Writes the task row, its `task_created` event (seq 1) and its outbox row in one
    /// transaction. With an idempotency key already used by the same owner, returns the
    /// earlier task, or [`Error::IdempotencyMismatch`] when the request differs.
    async fn create_task(&self, task: &NewTask) -> Result<Submitted>;

    async fn task(&self, id: Uuid) -> Result<Option<TaskRecord>>;

    /// The owner's tasks, newest first, strictly older than `before` when given.
    async fn tasks_of(
        &self,
        owner_id: Uuid,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>>;

    /// Appends events whose seqs continue the log exactly (last + 1, last + 2, …) in one
    /// transaction. Fails with [`Error::SeqConflict`] when the log has moved on, has ended
    /// or is paused: the caller is not (or no longer) the task's writer.
    async fn append(&self, task_id: Uuid, events: &[RawEvent]) -> Result<()>;

    /// A change the api makes to a task no worker is running (cancel a queued task, pause,
    /// unpause, retry): one event appended at the log's end, when the task's status is one
    /// of `transition.from`, and the task queued again if `transition.requeue`; all in one
    /// transaction, clearing the pending cancel and pause requests. A worker that appends
    /// meanwhile conflicts with it: one of the two wins the log.
    async fn transition(&self, task_id: Uuid, transition: &Transition) -> Result<Transitioned>;

    /// Records a request the task's worker carries out. `false` when the task's status does
    /// not take it (finished or paused); the caller reads the task to say why.
    async fn request_control(&self, task_id: Uuid, request: &ControlRequest) -> Result<bool>;

    /// What users have asked of the task that its worker has not done yet.
    async fn controls(&self, task_id: Uuid) -> Result<Controls>;

    /// Takes the task's lease for `holder`, running it for queue message `job`, unless
    /// another holder's lease has not expired.
    async fn claim(&self, task_id: Uuid, holder: Uuid, job: u64, lease: Duration) -> Result<Claim>;

    /// Extends `holder`'s lease; nothing when it is no longer the holder.
    async fn renew(&self, task_id: Uuid, holder: Uuid, lease: Duration) -> Result<()>;

    /// Gives the lease up, if `holder` still has it.
    async fn release(&self, task_id: Uuid, holder: Uuid) -> Result<()>;

    /// The holder and message of the task's lease, when it has not expired.
    async fn lease(&self, task_id: Uuid) -> Result<Option<Lease>>;

    /// Events with `seq > after`, in order: at most `limit`, and no more than
    /// [`PAGE_BYTES`] of JSON past the first, so that a page of large events (whole agent
    /// answers) stays small in memory. [`is_last_page`] tells whether the log may go on.
    async fn events_after(&self, task_id: Uuid, after: u64, limit: u32) -> Result<Vec<RawEvent>>;

    /// The same page as [`Store::events_after`], joined by the database into one value:
    /// NDJSON (each event's JSON and a line feed), what the export sends, and, if `typed`,
    /// the events' types, from which a replay frames each line for SSE; no row per event.
    /// Only a replay asks for the types: on SQLite each joined column is another sort of
    /// the page. `None` when no event is left.
    async fn lines_after(
        &self,
        task_id: Uuid,
        after: u64,
        limit: u32,
        typed: bool,
    ) -> Result<Option<Lines>>;

    /// Outbox rows older than `older_than` (task and the seq that queued it): committed
    /// but maybe never queued.
    async fn undispatched(&self, older_than: DateTime<Utc>, limit: u32) -> Result<Vec<Dispatch>>;

    /// How many outbox rows are older than `older_than`: the dispatcher's backlog.
    async fn count_undispatched(&self, older_than: DateTime<Utc>) -> Result<u64>;

    /// Clears the outbox rows, except those a newer one (a later retry) replaced.
    async fn mark_dispatched(&self, dispatches: &[Dispatch]) -> Result<()>;

    /// The last seq of the task known to be in the event stream (0: none).
    async fn published_through(&self, task_id: Uuid) -> Result<u64>;

    /// Records, for each `(task, through)`, that the task's events up to `through` are in
    /// the event stream, all in one statement. Never moves a mark back.
    async fn mark_published(&self, marks: &[(Uuid, u64)]) -> Result<()>;

    /// Tasks with stored events past their published mark, untouched since `older_than`
    /// and held by no worker: what the relay publishes again. Oldest first.
    async fn unpublished(&self, older_than: DateTime<Utc>, limit: u32) -> Result<Vec<Behind>>;

    /// Where the stats consumer is in the task's log (`None`: it never counted the task).
    async fn stats_cursor(&self, task_id: Uuid) -> Result<Option<StatsCursor>>;

    /// Commits a batch of the stats consumer, cursors and counts together; `false`, and
    /// nothing written, when a cursor was not where the batch found it.
    async fn apply_stats(&self, delta: &StatsDelta) -> Result<bool>;

    /// Tasks whose log goes past the stats consumer's cursor, by id. Scans every task: for
    /// the embedded consumer's catch-up, not for a big deployment.
    async fn stats_behind(&self, limit: u32) -> Result<Vec<Behind>>;

    /// The owner's stats rows from `since` (an hour's start) on, summed by `period`.
    async fn stats_rows(
        &self,
        owner_id: Uuid,
        since: DateTime<Utc>,
        period: StatsPeriod,
    ) -> Result<StatsRows>;

    /// Puts every unfinished task back in the outbox. For a volatile queue, whose jobs
    /// die with the process: at start, whatever was running must be queued again.
    async fn requeue_unfinished(&self) -> Result<u64>;

    /// The owner's usage in the tasks submitted at or after `since`: the newest
    /// [`REPORT_TASKS`] of them, aggregated by the database (task rows for the totals, the
    /// indexed agent events for the breakdowns), so that no log is read into memory.
    async fn usage_report(&self, owner_id: Uuid, since: DateTime<Utc>) -> Result<UsageReport>;
}

/// Most tasks one usage report covers: the newest of the window.
pub const REPORT_TASKS: u32 = 10_000;
/// Most rows of a report's day × role × model breakdown.
pub const REPORT_ROWS: u32 = 5_000;
/// Most agent roles a report lists.
pub const REPORT_ROLES: u32 = 200;

/// The events a usage report reads, as the partial index `task_events_agent_outcomes`
/// (migrations 0004) names them: a query repeats this term word for word, because SQLite
/// uses a partial index only for a query whose WHERE contains its predicate.
const AGENT_OUTCOMES: &str =
    "type IN ('agent_usage', 'agent_complete', 'agent_error', 'agent_cancelled')";

/// How a usage report's statements differ between the two databases.
struct Dialect {
    /// `$` or `?`, before a parameter's number.
    mark: char,
    /// The UTC day (`YYYY-MM-DD`) of the column `at`.
    day: &'static str,
    /// The events table as the report reads it: SQLite is told to use the partial index
    /// (without statistics it prefers the primary key, which holds every token too).
    events: &'static str,
}

/// The statements of a usage report. Parameters: 1 the owner, 2 the first task id of the
/// window ([`first_id_since`]), 3 the most tasks read; 4 a row cap where there is one.
struct ReportSql {
    /// `count(*)` of the window's tasks, up to one more than parameter 3 (a cut window).
    tasks: String,
    /// The window's usage totals, from the task rows.
    totals: String,
    /// (day, role, model, attempts, input, output, cost, unreported, unpriced, simulated).
    daily: String,
    /// (role, completed, failed, cancelled).
    outcomes: String,
    /// (role, count, p50, p95) of completed attempts' execution times.
    durations: String,
    /// (role, count, p50, p95) of answered calls' times to first token.
    first_tokens: String,
}

impl ReportSql {
    fn new(
        Dialect {
            mark: m,
            day,
            events: table,
        }: Dialect,
    ) -> Self {
        let window = format!(
            "SELECT id FROM tasks WHERE owner_id = {m}1 AND id >= {m}2 ORDER BY id DESC LIMIT {m}3"
        );
        let events = format!("FROM {table} WHERE task_id IN ({window}) AND {AGENT_OUTCOMES}");
        let count_if = |condition: &str| format!("sum(CASE WHEN {condition} THEN 1 ELSE 0 END)");
        let percentiles = |kind: &str, field: &str| {
            // Nearest rank: the p-th percentile of n sorted values is the smallest one whose
            // rank r has r >= p·n/100. The same arithmetic on both databases, so both give
            // the same figures (PostgreSQL's percentile_disc would agree; SQLite has none).
            format!(
                "SELECT role, n, min(CASE WHEN rn * 100 >= n * 50 THEN ms END),
                        min(CASE WHEN rn * 100 >= n * 95 THEN ms END)
                 FROM (SELECT role, ms, row_number() OVER (PARTITION BY role ORDER BY ms) AS rn,
                              count(*) OVER (PARTITION BY role) AS n
                       FROM (SELECT COALESCE(data ->> 'agentRole', '') AS role,
                                    CAST(data ->> '{field}' AS BIGINT) AS ms
                             {events} AND type = '{kind}') v
                       WHERE ms IS NOT NULL) r
                 GROUP BY role, n ORDER BY role LIMIT {m}4"
            )
        };
        ReportSql {
            tasks: format!(
                "SELECT count(*) FROM (SELECT 1 FROM tasks WHERE owner_id = {m}1 AND id >= {m}2 LIMIT {m}3 + 1) w"
            ),
            totals: format!(
                "SELECT CAST(COALESCE(sum(usage_input_tokens), 0) AS BIGINT),
                        CAST(COALESCE(sum(usage_output_tokens), 0) AS BIGINT),
                        COALESCE(sum(usage_cost_usd), 0.0),
                        CAST(COALESCE(sum(usage_unreported_attempts), 0) AS BIGINT),
                        CAST(COALESCE(sum(usage_unpriced_attempts), 0) AS BIGINT),
                        CAST(COALESCE(sum(usage_simulated_attempts), 0) AS BIGINT)
                 FROM tasks WHERE id IN ({window})"
            ),
            daily: format!(
                "SELECT {day} AS day, COALESCE(data ->> 'agentRole', '') AS role,
                        COALESCE(data ->> 'model', '') AS model, count(*),
                        CAST(COALESCE(sum(CAST(data ->> 'inputTokens' AS BIGINT)), 0) AS BIGINT),
                        CAST(COALESCE(sum(CAST(data ->> 'outputTokens' AS BIGINT)), 0) AS BIGINT),
                        COALESCE(sum(CAST(data ->> 'costUsd' AS DOUBLE PRECISION)), 0.0),
                        {}, {}, {}
                 {events} AND type = 'agent_usage'
                 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 LIMIT {m}4",
                count_if("data ->> 'inputTokens' IS NULL AND data ->> 'outputTokens' IS NULL"),
                count_if("data ->> 'costUsd' IS NULL"),
                count_if("data ->> 'source' = 'simulated'"),
            ),
            outcomes: format!(
                "SELECT COALESCE(data ->> 'agentRole', '') AS role, {}, {}, {}
                 {events} AND type <> 'agent_usage'
                 GROUP BY 1 ORDER BY 1 LIMIT {m}4",
                count_if("type = 'agent_complete'"),
                count_if("type = 'agent_error'"),
                count_if("type = 'agent_cancelled'"),
            ),
            durations: percentiles("agent_complete", "executionTime"),
            first_tokens: percentiles("agent_usage", "timeToFirstToken"),
        }
    }
}

/// The smallest UUIDv7 of the millisecond `since`: task ids are UUIDv7, so `id >= this`
/// selects the tasks submitted since then through the `(owner_id, id)` index.
fn first_id_since(since: DateTime<Utc>) -> Uuid {
    let ms = since.timestamp_millis().max(0) as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70; // version 7
    bytes[8] = 0x80; // RFC 4122 variant
    Uuid::from_bytes(bytes)
}

/// Runs a [`ReportSql`]'s statements for `owner` and the tasks from `first` on, in the
/// transaction `tx` (one snapshot, so that the breakdowns add up to the totals): a macro,
/// as the two stores' transactions are of different types.
macro_rules! read_report_rows {
    ($tx:ident, $sql:expr, $owner:expr, $first:expr) => {{
        let tasks = i64::from(super::REPORT_TASKS);
        macro_rules! rows {
            ($statement:expr, $cap:expr) => {
                sqlx::query_as(&$statement)
                    .bind($owner)
                    .bind($first)
                    .bind(tasks)
                    .bind(i64::from($cap) + 1)
                    .fetch_all(&mut *$tx)
                    .await?
            };
        }
        super::ReportRows {
            tasks: sqlx::query_scalar(&$sql.tasks)
                .bind($owner)
                .bind($first)
                .bind(tasks)
                .fetch_one(&mut *$tx)
                .await?,
            totals: sqlx::query_as(&$sql.totals)
                .bind($owner)
                .bind($first)
                .bind(tasks)
                .fetch_one(&mut *$tx)
                .await?,
            daily: rows!($sql.daily, super::REPORT_ROWS),
            outcomes: rows!($sql.outcomes, super::REPORT_ROLES),
            durations: rows!($sql.durations, super::REPORT_ROLES),
            first_tokens: rows!($sql.first_tokens, super::REPORT_ROLES),
        }
    }};
}
use read_report_rows;

/// The rows of a usage report's statements, as both stores read them.
struct ReportRows {
    tasks: i64,
    totals: UsageRow,
    daily: Vec<DailyRow>,
    outcomes: Vec<(String, i64, i64, i64)>,
    durations: Vec<PercentileRow>,
    first_tokens: Vec<PercentileRow>,
}

/// Input and output tokens, cost, unreported, unpriced and simulated attempts.
type UsageRow = (i64, i64, f64, i64, i64, i64);
/// Day, role, model, attempts, then a [`UsageRow`]'s figures.
type DailyRow = (String, String, String, i64, i64, i64, f64, i64, i64, i64);
/// Role, count, p50, p95.
type PercentileRow = (String, i64, Option<i64>, Option<i64>);

fn usage_totals((input, output, cost, unreported, unpriced, simulated): UsageRow) -> UsageTotals {
    UsageTotals {
        input_tokens: input.max(0) as u64,
        output_tokens: output.max(0) as u64,
        cost_usd: cost,
        unreported_attempts: unreported.max(0) as u32,
        unpriced_attempts: unpriced.max(0) as u32,
        simulated_attempts: simulated.max(0) as u32,
    }
}

impl ReportRows {
    fn report(self) -> UsageReport {
        let cut = |rows: usize, cap: u32| rows > cap as usize;
        let truncated = cut(self.tasks as usize, REPORT_TASKS)
            || cut(self.daily.len(), REPORT_ROWS)
            || [
                self.outcomes.len(),
                self.durations.len(),
                self.first_tokens.len(),
            ]
            .into_iter()
            .any(|n| cut(n, REPORT_ROLES));
        let mut roles = BTreeMap::<String, RoleStats>::new();
        fn role<'m>(roles: &'m mut BTreeMap<String, RoleStats>, name: &str) -> &'m mut RoleStats {
            roles
                .entry(name.to_string())
                .or_insert_with(|| RoleStats::new(name.to_string()))
        }
        let keep = REPORT_ROLES as usize;
        for (name, completed, failed, cancelled) in self.outcomes.into_iter().take(keep) {
            let stats = role(&mut roles, &name);
            stats.completed = completed.max(0) as u64;
            stats.failed = failed.max(0) as u64;
            stats.cancelled = cancelled.max(0) as u64;
        }
        let percentiles = |(_, count, p50, p95): &PercentileRow| Percentiles {
            count: (*count).max(0) as u64,
            p50: p50.map(|v| v.max(0) as u64),
            p95: p95.map(|v| v.max(0) as u64),
        };
        for row in self.durations.iter().take(keep) {
            role(&mut roles, &row.0).duration = percentiles(row);
        }
        for row in self.first_tokens.iter().take(keep) {
            role(&mut roles, &row.0).time_to_first_token = percentiles(row);
        }
        UsageReport {
            tasks: (self.tasks.max(0) as u64).min(u64::from(REPORT_TASKS)),
            truncated,
            totals: usage_totals(self.totals),
            daily: self
                .daily
                .into_iter()
                .take(REPORT_ROWS as usize)
                .map(
                    |(
                        day,
                        role,
                        model,
                        attempts,
                        input,
                        output,
                        cost,
                        unreported,
                        unpriced,
                        simulated,
                    )| DailyUsage {
                        day,
                        role,
                        model,
                        attempts: attempts as u64,
                        usage: usage_totals((input, output, cost, unreported, unpriced, simulated)),
                    },
                )
                .collect(),
            roles: roles
                .into_values()
                .take(REPORT_ROLES as usize)
                .map(|mut stats| {
                    stats.settle();
                    stats
                })
                .collect(),
        }
    }
}

/// What the `agent_usage` events of a batch add to its task's usage totals.
fn usage_added(events: &[RawEvent]) -> UsageTotals {
    let mut totals = UsageTotals::default();
    for raw in events.iter().filter(|e| e.kind == "agent_usage") {
        match raw.parse() {
            Ok(Event {
                body: EventBody::AgentUsage { usage, .. },
                ..
            }) => totals.add(&usage),
            // Written by this version's worker, so it parses; if not, the log still has it.
            _ => {
                tracing::warn!(task_id = %raw.task_id, seq = raw.seq, "an agent_usage event cannot be read; the task's totals leave it out")
            }
        }
    }
    totals
}

/// The assignments of an append that add [`usage_added`] to the task row, with the six
/// figures as parameters `{mark}first` onwards.
fn usage_added_sql(mark: char, first: u32) -> String {
    let columns = [
        "usage_input_tokens",
        "usage_output_tokens",
        "usage_cost_usd",
        "usage_unreported_attempts",
        "usage_unpriced_attempts",
        "usage_simulated_attempts",
    ];
    columns
        .iter()
        .zip(first..)
        .map(|(column, n)| format!("{column} = {column} + {mark}{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds [`usage_added`]'s six figures in [`usage_added_sql`]'s order: a macro, as the
/// two stores' queries are of different types.
macro_rules! bind_usage_added {
    ($query:expr, $usage:expr) => {
        $query
            .bind($usage.input_tokens as i64)
            .bind($usage.output_tokens as i64)
            .bind($usage.cost_usd)
            .bind(i64::from($usage.unreported_attempts))
            .bind(i64::from($usage.unpriced_attempts))
            .bind(i64::from($usage.simulated_attempts))
    };
}
use bind_usage_added;

/// Most JSON one page of [`Store::events_after`] carries beyond its first event.
pub const PAGE_BYTES: i64 = 1 << 20;

/// Events per page when a whole log is read.
pub const LOG_PAGE: u32 = 1000;
/// Events of the first page of a replay ([`lines_pages`]), and of each page after it.
const REPLAY_FIRST_PAGE: u32 = 100;
pub(crate) const REPLAY_PAGE: u32 = 5000;

/// Whether a page of `events_after(.., limit)` reached the end of the log as it was when
/// read: a page cut short by [`PAGE_BYTES`] holds at least that many bytes, so a page
/// short of both limits saves the query that would only return nothing.
/// A row of `worker_adverts` as both stores read it: its offers are JSON text.
type AdvertRow = (Uuid, String, bool);

fn advert_of((worker_id, offers, stopping): AdvertRow) -> Result<Advert> {
    let offers: Vec<Offer> = serde_json::from_str(&offers).map_err(|e| {
        Error::Corrupt(format!(
            "the advert of worker {worker_id} cannot be read: {e}"
        ))
    })?;
    Ok(Advert {
        worker_id,
        offers,
        stopping,
    })
}

fn offers_json(advert: &Advert) -> String {
    serde_json::to_string(&advert.offers).expect("offers serialize")
}

pub fn is_last_page(page: &[RawEvent], limit: u32) -> bool {
    let bytes = page.iter().map(|e| e.json.len()).sum();
    ends_log(page.len(), bytes, limit)
}

fn ends_log(events: usize, json_bytes: usize, limit: u32) -> bool {
    events < limit as usize && (json_bytes as i64) < PAGE_BYTES
}

/// A page of the log joined by the store ([`Store::lines_after`]): each event's JSON on a
/// line of its own and, when asked for, each event's type, in seq order. A log has no
/// holes, so the page's seqs run from [`Lines::first_seq`] to `last_seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct Lines {
    pub last_seq: u64,
    pub events: usize,
    pub ndjson: Bytes,
    /// The events' types, one per line: a type never holds a line break, which would
    /// break its SSE frame's `event:` field as well.
    pub kinds: Option<String>,
}

impl Lines {
    /// From the page's last seq, event count, and JSON (and types) joined by line feeds
    /// (no final one). A page whose lines do not match its count is refused rather than
    /// framed out of step.
    fn of(
        last_seq: Option<i64>,
        events: i64,
        joined: Option<String>,
        kinds: Option<String>,
    ) -> Result<Option<Lines>> {
        let (Some(last_seq), Some(joined)) = (last_seq, joined) else {
            return Ok(None);
        };
        let mut ndjson = joined.into_bytes();
        ndjson.push(b'\n');
        let events = events as usize;
        let lines = ndjson.iter().filter(|&&b| b == b'\n').count();
        let kinds_count = kinds.as_ref().map_or(events, |k| k.split('\n').count());
        if lines != events || kinds_count != events || (last_seq as u64) < events as u64 {
            return Err(Error::Corrupt(format!(
                "a page of {events} events ending at seq {last_seq} came with {lines} lines \
                 of JSON and {kinds_count} types"
            )));
        }
        Ok(Some(Lines {
            last_seq: last_seq as u64,
            events,
            ndjson: ndjson.into(),
            kinds,
        }))
    }

    pub fn first_seq(&self) -> u64 {
        self.last_seq + 1 - self.events as u64
    }

    /// Each event of the page: its seq, type and JSON; `None` for a page read without
    /// its types.
    pub fn entries(&self) -> Option<impl Iterator<Item = (u64, &str, &[u8])>> {
        let kinds = self.kinds.as_ref()?;
        let json = &self.ndjson[..self.ndjson.len() - 1];
        Some(
            json.split(|&b| b == b'\n')
                .zip(kinds.split('\n'))
                .zip(self.first_seq()..)
                .map(|((json, kind), seq)| (seq, kind, json)),
        )
    }

    pub fn is_last_page(&self, limit: u32) -> bool {
        ends_log(self.events, self.ndjson.len() - self.events, limit)
    }
}

/// The log after `after` to its end as it is now, a page at a time, each page joined by
/// the store ([`Store::lines_after`]), with its events' types if `typed`. The next page is
/// read while the caller sends the last one, so that a replay keeps the store and the
/// network busy at once; the reader stops when the stream is dropped.
pub fn lines_pages(
    store: Arc<dyn Store>,
    task_id: Uuid,
    after: u64,
    typed: bool,
) -> impl futures::Stream<Item = Result<Lines>> + Send + 'static {
    read_ahead(after, move |after, limit| {
        let store = store.clone();
        async move {
            let lines = store.lines_after(task_id, after, limit, typed).await?;
            Ok(lines.map(|l| {
                let (last_seq, last) = (l.last_seq, l.is_last_page(limit));
                (l, last_seq, last)
            }))
        }
    })
}

/// Pages from `read(after, limit)` (a page, its last seq, whether it ended the log; `None`
/// for no more), one read ahead of the consumer. A short first page gets the first event
/// out sooner; then pages as large as the byte cap allows, for fewer queries.
fn read_ahead<P, F, Fut>(mut after: u64, mut read: F) -> impl futures::Stream<Item = Result<P>>
where
    P: Send + 'static,
    F: FnMut(u64, u32) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Option<(P, u64, bool)>>> + Send,
{
    let (pages, received) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut limit = REPLAY_FIRST_PAGE;
        loop {
            let (page, last) = match read(after, limit).await {
                Ok(Some((page, last_seq, last))) => {
                    after = last_seq;
                    (Ok(page), last)
                }
                Ok(None) => return,
                Err(e) => (Err(e), true),
            };
            if pages.send(page).await.is_err() || last {
                return;
            }
            limit = REPLAY_PAGE;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(received)
}

/// Hands every event after `after` to `each`, a page at a time, to the end of the log as
/// it is now; returns the last seq read (`after` when there was none).
pub async fn read_log(
    store: &dyn Store,
    task_id: Uuid,
    mut after: u64,
    mut each: impl FnMut(RawEvent) -> Result<()>,
) -> Result<u64> {
    loop {
        let page = store.events_after(task_id, after, LOG_PAGE).await?;
        let last = is_last_page(&page, LOG_PAGE);
        for event in page {
            after = event.seq;
            each(event)?;
        }
        if last {
            return Ok(after);
        }
    }
}

/// Who runs a task: a worker instance and the queue message it runs it for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub holder: Uuid,
    pub job: u64,
}

/// What [`Store::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Granted,
    /// Another worker's lease is current.
    Held(Lease),
}

/// One queueing of a task: the task and the seq of the event that made it runnable
/// (1 for a submit; a retry's or unpause's own seq), which also names the queue message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dispatch {
    pub task_id: Uuid,
    pub seq: u64,
}

/// See [`Store::transition`].
#[derive(Debug, Clone)]
pub struct Transition {
    pub from: Vec<TaskStatus>,
    pub body: EventBody,
    pub requeue: bool,
    /// For a requeue: the owner's limit of active tasks, past which the task waits for
    /// admission instead of going to the queue (a resume or retry is a submit again).
    pub active_limit: Option<u32>,
}

impl Transition {
    /// The limit that decides whether the requeued task waits; `None` when it does not.
    fn waiting_limit(&self) -> Option<i64> {
        self.active_limit.filter(|_| self.requeue).map(i64::from)
    }

    /// The status the event gives the task.
    fn to(&self) -> Result<TaskStatus> {
        TaskStatus::after_kind(self.body.kind()).ok_or_else(|| {
            Error::Corrupt(format!(
                "{} does not change a task's status",
                self.body.kind()
            ))
        })
    }

    /// `status IN (…)` of the allowed statuses; they are our own constants, never input.
    fn allowed_statuses_sql(&self) -> String {
        let quoted: Vec<String> = self
            .from
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        format!("status IN ({})", quoted.join(", "))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Transitioned {
    /// The event is stored, as returned (its seq is the log's new end).
    Applied(RawEvent),
    /// The event is stored and the task requeued, but it waits behind its owner's limit
    /// of active tasks: it has no outbox row, and is not to be queued now.
    Waiting(RawEvent),
    /// The task's status was not one the transition starts from.
    Refused(TaskStatus),
}

/// What both backends write for a new task: its time, its spec as JSON, its first event.
struct SubmitParts {
    now: DateTime<Utc>,
    spec: String,
    first: RawEvent,
}

impl SubmitParts {
    fn of(task: &NewTask) -> Self {
        let first = Event::new(task.id, 1, task.spec.created_event());
        SubmitParts {
            now: first.at,
            spec: serde_json::to_string(&task.spec).expect("a spec always serialises"),
            first: first.to_raw(),
        }
    }
}

fn created_record(task: &NewTask, now: DateTime<Utc>, waiting: bool) -> TaskRecord {
    TaskRecord {
        id: task.id,
        owner_id: task.owner_id,
        spec: task.spec.clone(),
        status: TaskStatus::Queued,
        created_at: now,
        updated_at: now,
        last_seq: 1,
        cancel_requested: false,
        pause_requested: false,
        delete_requested: false,
        waiting,
        usage: UsageTotals::default(),
    }
}

/// An insert that hit the idempotency key: the earlier task, when it was the same request.
fn earlier_submit(task: &NewTask, found: Option<(TaskRecord, String)>) -> Result<Submitted> {
    let (existing, request_hash) =
        found.ok_or_else(|| Error::Corrupt("idempotency conflict without a task".into()))?;
    if request_hash != task.request_hash {
        return Err(Error::IdempotencyMismatch);
    }
    Ok(Submitted::Existing(existing))
}

/// The checks both backends make before appending; they keep the log hole-free.
fn batch_bounds(task_id: Uuid, events: &[RawEvent]) -> Result<Option<(u64, u64)>> {
    let Some(first) = events.first() else {
        return Ok(None);
    };
    for (i, event) in events.iter().enumerate() {
        if event.task_id != task_id || event.seq != first.seq + i as u64 || event.seq == 0 {
            return Err(Error::Corrupt(format!(
                "append batch for task {task_id} is not one consecutive run of seqs"
            )));
        }
    }
    Ok(Some((first.seq - 1, first.seq - 1 + events.len() as u64)))
}

/// The task status after a batch: the last status-changing event wins.
fn status_after(events: &[RawEvent]) -> Option<TaskStatus> {
    events
        .iter()
        .rev()
        .find_map(|e| TaskStatus::after_kind(&e.kind))
}

/// The task row's usage columns, read by name.
fn row_usage<'r, R: Row>(r: &'r R) -> Result<UsageRow>
where
    &'r str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok((
        r.try_get("usage_input_tokens")?,
        r.try_get("usage_output_tokens")?,
        r.try_get("usage_cost_usd")?,
        r.try_get("usage_unreported_attempts")?,
        r.try_get("usage_unpriced_attempts")?,
        r.try_get("usage_simulated_attempts")?,
    ))
}

/// The task row's usage columns, as [`row_usage`] reads them: a macro, so that each
/// store's column list can `concat!` it.
macro_rules! task_usage_columns {
    () => {
        "usage_input_tokens, usage_output_tokens, usage_cost_usd, usage_unreported_attempts, \
         usage_unpriced_attempts, usage_simulated_attempts"
    };
}
use task_usage_columns;

/// A task row as both backends read it.
struct TaskRow<'r> {
    id: Uuid,
    owner_id: Uuid,
    spec: &'r str,
    status: &'r str,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    last_seq: i64,
    cancel_requested: bool,
    pause_requested: bool,
    delete_requested: bool,
    waiting: bool,
    usage: UsageRow,
}

fn task_record(row: TaskRow<'_>) -> Result<TaskRecord> {
    let TaskRow {
        id,
        owner_id,
        spec,
        status,
        created_at,
        updated_at,
        last_seq,
        cancel_requested,
        pause_requested,
        delete_requested,
        waiting,
        usage,
    } = row;
    let spec: TaskSpec =
        serde_json::from_str(spec).map_err(|e| Error::Corrupt(format!("task {id} spec: {e}")))?;
    let status = TaskStatus::parse(status)
        .ok_or_else(|| Error::Corrupt(format!("task {id} status {status:?}")))?;
    Ok(TaskRecord {
        id,
        owner_id,
        spec,
        status,
        created_at,
        updated_at,
        last_seq: last_seq as u64,
        cancel_requested,
        pause_requested,
        delete_requested,
        waiting,
        usage: usage_totals(usage),
    })
}

/// A transition that matched no row: the task is missing, or says why in its status.
fn refused(task: Option<TaskRecord>, task_id: Uuid) -> Result<Transitioned> {
    task.map(|t| Transitioned::Refused(t.status))
        .ok_or(Error::TaskNotFound(task_id))
}

/// The statement that records `request`, with numbered placeholders written `{mark}n`
/// (`$` for PostgreSQL, `?` for SQLite): 1 the task id, 2 and 3 an agent's role and
/// attempt, 4 the time. It matches no row when the task is finished or paused.
fn control_sql(request: &ControlRequest, mark: char) -> String {
    let set = |assignment: &str| {
        format!("UPDATE tasks SET {assignment} WHERE id = {mark}1 AND {WRITABLE}")
    };
    match request {
        ControlRequest::Cancel => set("cancel_requested = TRUE"),
        ControlRequest::Pause => set("pause_requested = TRUE"),
        ControlRequest::Unpause => set("pause_requested = FALSE"),
        ControlRequest::CancelAgent { .. } => format!(
            "INSERT INTO task_agent_cancels (task_id, agent_role, attempt, created_at)
             SELECT id, {mark}2, {mark}3, {mark}4 FROM tasks WHERE id = {mark}1 AND {WRITABLE}
             ON CONFLICT (task_id, agent_role, attempt) DO UPDATE SET created_at = excluded.created_at"
        ),
    }
}

/// The statuses in which a worker may append: the task is neither finished nor paused.
const WRITABLE: &str = "status IN ('queued', 'running')";
/// A task that waits for admission behind its owner's limit.
const WAITING: &str = "waiting AND status = 'queued'";
/// [`WAITING`] of the task named `alias` in a join.
fn waiting_as(alias: &str) -> String {
    format!("{alias}.waiting AND {alias}.status = 'queued'")
}
/// A task that holds or waits for a worker: what a user's limit counts.
const ACTIVE: &str = "NOT waiting AND status IN ('queued', 'running')";
/// The owner's active tasks (`{mark}1` the owner).
fn active_count_sql(mark: char) -> String {
    format!("SELECT count(*) FROM tasks WHERE owner_id = {mark}1 AND {ACTIVE}")
}
/// The admission's statements (`{mark}1` the owner, `{mark}2` how many): the owner's
/// oldest waiting tasks become active, and get outbox rows.
fn admit_sql(mark: char, no: &str, lock: &str) -> String {
    format!(
        "UPDATE tasks SET waiting = {no} WHERE id IN (
             SELECT id FROM tasks WHERE owner_id = {mark}1 AND {WAITING}
             ORDER BY id LIMIT {mark}2 {lock})
         RETURNING id, last_seq"
    )
}
fn waiting_owner_sql(mark: char) -> String {
    format!(
        "SELECT t.owner_id FROM tasks t WHERE t.id = {mark}1 AND EXISTS (
             SELECT 1 FROM tasks w WHERE w.owner_id = t.owner_id AND {})",
        waiting_as("w")
    )
}
fn owners_waiting_sql(mark: char) -> String {
    format!("SELECT DISTINCT owner_id FROM tasks WHERE {WAITING} LIMIT {mark}1")
}
fn queue_position_sql(mark: char) -> String {
    format!(
        "SELECT count(*) FROM tasks t JOIN tasks w ON w.owner_id = t.owner_id
         WHERE t.id = {mark}1 AND {} AND {} AND w.id <= t.id",
        waiting_as("t"),
        waiting_as("w")
    )
}
/// The `waiting` a transition sets (`{mark}3` the limit, or NULL): a requeue past the
/// owner's limit waits, anything else is no longer waiting.
fn transition_waiting_sql(mark: char) -> String {
    format!(
        "CASE WHEN {mark}3 IS NULL THEN {no} ELSE (
             SELECT count(*) FROM tasks a WHERE a.owner_id = tasks.owner_id
               AND NOT a.waiting AND a.status IN ('queued', 'running')) >= {mark}3 END",
        no = if mark == '$' { "FALSE" } else { "0" }
    )
}

/// What a stored transition says to its caller.
fn transitioned(event: RawEvent, waiting: bool) -> Transitioned {
    if waiting {
        Transitioned::Waiting(event)
    } else {
        Transitioned::Applied(event)
    }
}

/// How many of the owner's waiting tasks may become active: `limit` less the active.
fn admissible(limit: u32, active: i64) -> i64 {
    (i64::from(limit) - active).max(0)
}
/// The outbox rows of admitted tasks.
fn admitted(rows: Vec<(Uuid, i64)>) -> Vec<Dispatch> {
    rows.into_iter()
        .map(|(task_id, seq)| Dispatch {
            task_id,
            seq: seq as u64,
        })
        .collect()
}

/// A task whose log has ended: only these are deleted.
const ENDED: &str = "status IN ('completed', 'failed', 'cancelled')";
/// What a sweep removes: `{mark}1` the retention cut-off (or NULL), `{mark}2` the limit.
/// A paused task marked for deletion is one whose account was deleted: no worker holds
/// it, and nobody may resume it.
fn swept_sql(mark: char, lock: &str) -> String {
    format!(
        "SELECT id FROM tasks
         WHERE ({ENDED} AND (delete_requested OR ({mark}1 IS NOT NULL AND updated_at < {mark}1)))
            OR (status = 'paused' AND delete_requested)
         ORDER BY updated_at LIMIT {mark}2 {lock}"
    )
}
/// Deleted accounts whose tasks are all gone.
const EMPTIED_ACCOUNTS: &str = "SELECT id FROM users WHERE delete_requested
     AND NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.owner_id = users.id)";
/// The statements that remove an emptied account's rows, for one user id or an array of
/// them in `{ids}`.
fn delete_account_rows_sql(ids: &str) -> [String; 4] {
    [
        format!("DELETE FROM stats_hourly WHERE owner_id {ids}"),
        format!("DELETE FROM stats_durations WHERE owner_id {ids}"),
        format!("DELETE FROM stats_first_tokens WHERE owner_id {ids}"),
        format!("DELETE FROM users WHERE id {ids}"),
    ]
}
/// What deleting an account does to its tasks (`{mark}1` the user): all are marked, and
/// those that may still run are asked to stop.
fn mark_account_tasks_sql(mark: char, yes: &str) -> String {
    format!(
        "UPDATE tasks SET delete_requested = {yes},
             cancel_requested = CASE WHEN {WRITABLE} THEN {yes} ELSE cancel_requested END
         WHERE owner_id = {mark}1"
    )
}
/// The statements that remove tasks' rows, children first, for one task id or an array
/// of them in `{ids}`.
fn delete_task_rows_sql(ids: &str) -> [String; 5] {
    [
        format!("DELETE FROM task_events WHERE task_id {ids}"),
        format!("DELETE FROM task_agent_cancels WHERE task_id {ids}"),
        format!("DELETE FROM task_outbox WHERE task_id {ids}"),
        format!("DELETE FROM stats_cursors WHERE task_id {ids}"),
        format!("DELETE FROM tasks WHERE id {ids}"),
    ]
}

/// What an append does to the pending requests, given the batch's new status in `{status}`:
/// a run that ended has carried out (or outlived) a cancel or a pause, a pause that took
/// effect is no longer a request; and a run that ended gives its lease up, which saves
/// its worker a write of its own.
fn settled_requests_sql(status: &str) -> String {
    let ended = format!("COALESCE({status}, '') IN ('paused', 'completed', 'failed', 'cancelled')");
    format!(
        "cancel_requested = cancel_requested AND COALESCE({status}, '') NOT IN ('completed', 'failed', 'cancelled'),
         pause_requested = pause_requested AND NOT {ended},
         holder = CASE WHEN {ended} THEN NULL ELSE holder END,
         holder_job = CASE WHEN {ended} THEN NULL ELSE holder_job END,
         lease_until = CASE WHEN {ended} THEN NULL ELSE lease_until END"
    )
}

/// An event of `task_id` from a row of a log page (`seq, type, at, data`), in either store.
fn event_of_row<'r, R: Row>(task_id: Uuid, r: &'r R) -> Result<RawEvent>
where
    &'r str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let seq: i64 = r.try_get("seq")?;
    let data: String = r.try_get("data")?;
    Ok(RawEvent {
        task_id,
        seq: seq as u64,
        kind: r.try_get("type")?,
        at: r.try_get("at")?,
        json: data.into(),
    })
}

/// The task's control flags with its agent cancels, one row per cancel (or one row of
/// NULLs without any), as read by one query in each store.
type ControlRow = (bool, bool, Option<String>, Option<i64>);

fn controls_of(task_id: Uuid, rows: Vec<ControlRow>) -> Result<Controls> {
    let Some(&(cancel, pause, ..)) = rows.first() else {
        return Err(Error::TaskNotFound(task_id));
    };
    Ok(Controls {
        cancel,
        pause,
        cancel_agents: rows
            .into_iter()
            .filter_map(|(.., role, attempt)| Some((role?, attempt? as u32)))
            .collect(),
    })
}

/// Followed by the placeholder of the task id.
const CONTROLS_SQL: &str = "SELECT t.cancel_requested, t.pause_requested, c.agent_role,
            CAST(c.attempt AS BIGINT)
     FROM tasks t LEFT JOIN task_agent_cancels c ON c.task_id = t.id WHERE t.id = ";

/// What a claim that moved `granted` rows comes to: none moved means another delivery
/// holds the lease, unless it expired between the claim and this read, when the next
/// delivery takes it.
async fn settle_claim(store: &dyn Store, task_id: Uuid, granted: u64) -> Result<Claim> {
    if granted > 0 {
        return Ok(Claim::Granted);
    }
    Ok(match store.lease(task_id).await? {
        Some(lease) => Claim::Held(lease),
        None => Claim::Granted,
    })
}

/// A task whose log is ahead of one of its followers (the event stream, the stats
/// consumer): the follower has it `through` a seq, the log goes on to `last_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behind {
    pub task_id: Uuid,
    pub through: u64,
    pub last_seq: u64,
}

/// The relay's work list, for either store's placeholders (`$1`/`?1`: older than,
/// `$2`/`?2`: limit). The lease test is each store's own (`now`).
fn unpublished_sql(mark: char, now: &str) -> String {
    format!(
        "SELECT id, published_seq, last_seq FROM tasks
         WHERE published_seq < last_seq AND updated_at < {mark}1
           AND (holder IS NULL OR lease_until < {now})
         ORDER BY updated_at LIMIT {mark}2"
    )
}

fn behind_of(rows: Vec<(Uuid, i64, i64)>) -> Vec<Behind> {
    rows.into_iter()
        .map(|(task_id, through, last_seq)| Behind {
            task_id,
            through: through as u64,
            last_seq: last_seq as u64,
        })
        .collect()
}

/// `DELETE` of the outbox rows of `dispatches`, for either store's placeholders.
fn clear_outbox_query<'a, DB: sqlx::Database>(
    dispatches: &'a [Dispatch],
) -> sqlx::QueryBuilder<'a, DB>
where
    Uuid: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut query = sqlx::QueryBuilder::new("DELETE FROM task_outbox WHERE (task_id, seq) IN (");
    query.push_values(dispatches, |mut row, d| {
        row.push_bind(d.task_id).push_bind(d.seq as i64);
    });
    query.push(")");
    query
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}
