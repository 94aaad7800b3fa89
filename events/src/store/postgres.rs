use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use uuid::Uuid;

use super::stats::{self, StatsSql};
use super::{
    AdvertRow, Behind, CONTROLS_SQL, Claim, Deletion, Dialect, Dispatch, EMPTIED_ACCOUNTS, Lease,
    Lines, PAGE_BYTES, ReportSql, Session, Store, SubmitParts, Submitted, Swept, TaskRow,
    Transition, Transitioned, User, WRITABLE, active_count_sql, admissible, admit_sql, admitted,
    advert_of, batch_bounds, behind_of, bind_usage_added, clear_outbox_query, control_sql,
    controls_of, created_record, delete_account_rows_sql, delete_task_rows_sql, earlier_submit,
    event_of_row, first_id_since, is_unique_violation, mark_account_tasks_sql, offers_json,
    owners_waiting_sql, queue_position_sql, read_report_rows, refused, row_usage, settle_claim,
    settled_requests_sql, status_after, swept_sql, task_record, task_usage_columns,
    transition_waiting_sql, transitioned, unpublished_sql, usage_added, usage_added_sql,
    waiting_owner_sql,
};
use crate::error::{Error, Result};
use crate::stats::{StatsCursor, StatsDelta, StatsPeriod, StatsRows};

/// The stats consumer's statements in this store's placeholders.
static STATS: LazyLock<StatsSql> =
    LazyLock::new(|| StatsSql::new('$', "date_trunc('day', hour, 'UTC')"));
use crate::event::{Event, RawEvent};
use crate::providers::Advert;
use crate::task::{ControlRequest, Controls, NewTask, TaskRecord, TaskStatus};
use crate::usage::UsageReport;

const TASK_COLUMNS: &str = concat!(
    "id, owner_id, spec::text AS spec, status, created_at, updated_at, last_seq, ",
    "cancel_requested, pause_requested, delete_requested, waiting, ",
    task_usage_columns!()
);

/// A page of the log (`$1` task, after `$2`, at most `$3` events) with the running
/// total of its JSON bytes; [`IN_PAGE`] stops it once the total has passed `$4`
/// (`PAGE_BYTES`), so a page of whole agent answers stays small. A ROWS frame, because
/// the default RANGE frame compares every row with its peers (seq has none): a fifth
/// of the query's time on a 5,000-event page.
const PAGE: &str = "SELECT seq, type, at, data::text AS data,
            sum(octet_length(data::text)) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) AS upto
     FROM task_events WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";
const IN_PAGE: &str = "upto - octet_length(data) < $4";
/// A page's event types, one per line, in the page's order.
const KINDS_JOINED: &str = "string_agg(type, E'\\n')";

/// The append statement, built once: its parts are shared with the SQLite store.
static APPEND: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH moved AS (
             UPDATE tasks SET last_seq = $3, status = COALESCE($4, status), updated_at = now(), {}, {}
             WHERE id = $1 AND last_seq = $2 AND {WRITABLE}
             RETURNING id)
         INSERT INTO task_events (task_id, seq, type, at, data)
         SELECT moved.id, s, t, a, d::json
         FROM moved, UNNEST($5::bigint[], $6::text[], $7::timestamptz[], $8::text[]) AS u(s, t, a, d)",
        settled_requests_sql("$4::text"),
        usage_added_sql('$', 9),
    )
});

/// Connections of their own for reading a task's log by seq (replays, exports, followers
/// catching up), as the SQLite store has: a thousand viewers opening finished tasks do not
/// queue in front of the appends, nor appends in front of them.
const LOG_READERS: u32 = 4;

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Read a page of one task's log in key order, never as a bitmap scan and a sort: the
    /// planner picks that for a large task whose rows are scattered over the heap (appends
    /// of a parallel team come through many connections, each filling its own page), and
    /// for any task before the table's first ANALYZE, and then sorts every page again. The
    /// key order needs no sort, and the pages are in memory: 1.5 ms for 5,000 events
    /// against 3.0–4.7 ms (BENCHMARKS.md, "Log pages on PostgreSQL").
    log_readers: PgPool,
}

impl PgStore {
    pub async fn connect(options: PgConnectOptions, max_connections: u32) -> Result<Self> {
        let pool = pool_options(max_connections)
            .connect_with(options.clone())
            .await?;
        let log_readers = pool_options(LOG_READERS.min(max_connections))
            .connect_lazy_with(options.options([("enable_bitmapscan", "off")]));
        Ok(PgStore { pool, log_readers })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn find_by_key(&self, owner_id: Uuid, key: &str) -> Result<Option<(TaskRecord, String)>> {
        let row = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS}, request_hash FROM tasks WHERE owner_id = $1 AND idempotency_key = $2"
        ))
        .bind(owner_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((task_from_row(&r)?, r.try_get("request_hash")?)))
            .transpose()
    }
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        // sqlx pings every connection it hands out by default: a round trip before each
        // statement. A broken connection fails its statement instead, which the callers
        // retry as they retry any store outage.
        .test_before_acquire(false)
}

fn user_of(r: &sqlx::postgres::PgRow) -> Result<User> {
    Ok(User {
        id: r.try_get("id")?,
        email: r.try_get("email")?,
        password_hash: r.try_get("password_hash")?,
    })
}

async fn insert_session<'e>(db: impl sqlx::PgExecutor<'e>, session: &Session) -> Result<()> {
    sqlx::query(
        "INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES ($1, $2, now(), $3)",
    )
    .bind(session.id)
    .bind(session.user_id)
    .bind(session.expires_at)
    .execute(db)
    .await?;
    Ok(())
}

/// Removes the tasks' rows; the caller holds their row locks (or knows they have ended).
async fn delete_task_rows(tx: &mut sqlx::PgConnection, tasks: &[Uuid]) -> Result<()> {
    static DELETES: LazyLock<[String; 5]> = LazyLock::new(|| delete_task_rows_sql("= ANY($1)"));
    if tasks.is_empty() {
        return Ok(());
    }
    for statement in DELETES.iter() {
        sqlx::query(statement).bind(tasks).execute(&mut *tx).await?;
    }
    Ok(())
}

/// Removes the deleted accounts that have no task left, with their stats.
async fn delete_emptied_accounts(tx: &mut sqlx::PgConnection) -> Result<u64> {
    static DELETES: LazyLock<[String; 4]> = LazyLock::new(|| delete_account_rows_sql("= ANY($1)"));
    let users: Vec<Uuid> = sqlx::query_scalar(EMPTIED_ACCOUNTS)
        .fetch_all(&mut *tx)
        .await?;
    if !users.is_empty() {
        for statement in DELETES.iter() {
            sqlx::query(statement)
                .bind(&users)
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(users.len() as u64)
}

fn task_from_row(r: &sqlx::postgres::PgRow) -> Result<TaskRecord> {
    task_record(TaskRow {
        id: r.try_get("id")?,
        owner_id: r.try_get("owner_id")?,
        spec: r.try_get("spec")?,
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        last_seq: r.try_get("last_seq")?,
        cancel_requested: r.try_get("cancel_requested")?,
        pause_requested: r.try_get("pause_requested")?,
        delete_requested: r.try_get("delete_requested")?,
        waiting: r.try_get("waiting")?,
        usage: row_usage(r)?,
    })
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("../migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_user(&self, email: &str, password_hash: &str) -> Result<User> {
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(email)
            .bind(password_hash)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::AlreadyExists("an account with this email")
                } else {
                    e.into()
                }
            })?;
        Ok(User {
            id,
            email: email.to_string(),
            password_hash: password_hash.to_string(),
        })
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let row = sqlx::query(
            "SELECT id, email, password_hash FROM users WHERE lower(email) = lower($1)",
        )
        .bind(email)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| user_of(&r)).transpose()
    }

    async fn user(&self, id: Uuid) -> Result<Option<User>> {
        let row = sqlx::query("SELECT id, email, password_hash FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| user_of(&r)).transpose()
    }

    async fn create_session(&self, session: &Session) -> Result<()> {
        insert_session(&self.pool, session).await
    }

    async fn session_user(&self, session_id: Uuid) -> Result<Option<Uuid>> {
        Ok(
            sqlx::query_scalar("SELECT user_id FROM sessions WHERE id = $1 AND expires_at > now()")
                .bind(session_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn end_session(&self, session_id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(session_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn replace_password(
        &self,
        user_id: Uuid,
        password_hash: &str,
        session: &Session,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
            .bind(user_id)
            .bind(password_hash)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if changed == 0 {
            return Err(Error::NotFound("the account"));
        }
        sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        insert_session(&mut *tx, session).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_account(&self, user_id: Uuid) -> Result<()> {
        static MARK_TASKS: LazyLock<String> = LazyLock::new(|| mark_account_tasks_sql('$', "TRUE"));
        let mut tx = self.pool.begin().await?;
        let renamed = sqlx::query(
            "UPDATE users SET delete_requested = TRUE, email = 'deleted:' || id::text WHERE id = $1",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if renamed == 0 {
            return Err(Error::NotFound("the account"));
        }
        for statement in [
            "DELETE FROM sessions WHERE user_id = $1",
            MARK_TASKS.as_str(),
        ] {
            sqlx::query(statement)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn waiting_owner(&self, task_id: Uuid) -> Result<Option<Uuid>> {
        static SQL: LazyLock<String> = LazyLock::new(|| waiting_owner_sql('$'));
        Ok(sqlx::query_scalar(&SQL)
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn admit(&self, owner_id: Uuid, limit: u32) -> Result<Vec<Dispatch>> {
        static ACTIVE: LazyLock<String> = LazyLock::new(|| active_count_sql('$'));
        static ADMIT: LazyLock<String> =
            LazyLock::new(|| admit_sql('$', "FALSE", "FOR UPDATE SKIP LOCKED"));
        let mut tx = self.pool.begin().await?;
        // The owner's row serialises admissions for one owner: two tasks ending together
        // must not each admit for the same free place.
        sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
            .bind(owner_id)
            .execute(&mut *tx)
            .await?;
        let active: i64 = sqlx::query_scalar(&ACTIVE)
            .bind(owner_id)
            .fetch_one(&mut *tx)
            .await?;
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(&ADMIT)
            .bind(owner_id)
            .bind(admissible(limit, active))
            .fetch_all(&mut *tx)
            .await?;
        let dispatches = admitted(rows);
        let (ids, seqs): (Vec<Uuid>, Vec<i64>) =
            dispatches.iter().map(|d| (d.task_id, d.seq as i64)).unzip();
        sqlx::query(
            "INSERT INTO task_outbox (task_id, created_at, seq)
             SELECT u.id, now(), u.seq FROM UNNEST($1::uuid[], $2::bigint[]) AS u(id, seq)
             ON CONFLICT DO NOTHING",
        )
        .bind(&ids)
        .bind(&seqs)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(dispatches)
    }

    async fn owners_waiting(&self, limit: u32) -> Result<Vec<Uuid>> {
        static SQL: LazyLock<String> = LazyLock::new(|| owners_waiting_sql('$'));
        Ok(sqlx::query_scalar(&SQL)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn queue_position(&self, task_id: Uuid) -> Result<Option<u64>> {
        static SQL: LazyLock<String> = LazyLock::new(|| queue_position_sql('$'));
        let position: i64 = sqlx::query_scalar(&SQL)
            .bind(task_id)
            .fetch_one(&self.pool)
            .await?;
        Ok((position > 0).then_some(position as u64))
    }

    async fn delete_task(&self, task_id: Uuid) -> Result<Deletion> {
        let mut tx = self.pool.begin().await?;
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM tasks WHERE id = $1 FOR UPDATE")
                .bind(task_id)
                .fetch_optional(&mut *tx)
                .await?;
        let deletion = match status.as_deref().and_then(TaskStatus::parse) {
            None => return Ok(Deletion::Missing),
            Some(status) if status.is_terminal() => {
                delete_task_rows(&mut tx, &[task_id]).await?;
                Deletion::Deleted
            }
            Some(_) => {
                sqlx::query("UPDATE tasks SET delete_requested = TRUE WHERE id = $1")
                    .bind(task_id)
                    .execute(&mut *tx)
                    .await?;
                Deletion::Marked
            }
        };
        tx.commit().await?;
        Ok(deletion)
    }

    async fn sweep(&self, ended_before: Option<DateTime<Utc>>, limit: u32) -> Result<Swept> {
        static SWEPT: LazyLock<String> = LazyLock::new(|| {
            swept_sql('$', "FOR UPDATE SKIP LOCKED").replace("$1 IS", "$1::timestamptz IS")
        });
        let mut tx = self.pool.begin().await?;
        let tasks: Vec<Uuid> = sqlx::query_scalar(&SWEPT)
            .bind(ended_before)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        delete_task_rows(&mut tx, &tasks).await?;
        let sessions = sqlx::query("DELETE FROM sessions WHERE expires_at <= now()")
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM worker_adverts WHERE expires_at <= now()")
            .execute(&mut *tx)
            .await?;
        let accounts = delete_emptied_accounts(&mut tx).await?;
        tx.commit().await?;
        Ok(Swept {
            tasks,
            sessions,
            accounts,
        })
    }

    async fn advertise(&self, advert: &Advert, live_for: Duration) -> Result<()> {
        sqlx::query(
            "INSERT INTO worker_adverts (worker_id, offers, stopping, expires_at)
             VALUES ($1, $2::jsonb, $3, now() + $4 * interval '1 millisecond')
             ON CONFLICT (worker_id) DO UPDATE SET offers = EXCLUDED.offers,
                 stopping = EXCLUDED.stopping, expires_at = EXCLUDED.expires_at",
        )
        .bind(advert.worker_id)
        .bind(offers_json(advert))
        .bind(advert.stopping)
        .bind(live_for.as_millis() as f64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn live_adverts(&self) -> Result<Vec<Advert>> {
        let rows: Vec<AdvertRow> = sqlx::query_as(
            "SELECT worker_id, offers::text, stopping FROM worker_adverts
             WHERE expires_at > now() ORDER BY expires_at DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(advert_of).collect()
    }

    async fn create_task(&self, task: &NewTask) -> Result<Submitted> {
        let SubmitParts { now, spec, first } = SubmitParts::of(task);
        // One statement, so one round trip and one commit: the task, its first event and
        // its outbox row, or (a repeated idempotency key) nothing at all.
        // The limit's count and the insert are one statement: submits of one user that
        // run at the same moment may each count the other's task as not there yet.
        let created: Option<bool> = sqlx::query_scalar(&format!(
            "WITH created AS (
                 INSERT INTO tasks (id, owner_id, spec, status, idempotency_key, request_hash, created_at, updated_at, last_seq, waiting)
                 VALUES ($1, $2, $3::jsonb, 'queued', $4, $5, $6, $6, 1,
                         CASE WHEN $10::bigint IS NULL THEN FALSE ELSE ({}) >= $10 END)
                 ON CONFLICT DO NOTHING
                 RETURNING id, waiting),
             first_event AS (
                 INSERT INTO task_events (task_id, seq, type, at, data)
                 SELECT id, 1, $7, $8, $9::json FROM created),
             outbox AS (
                 INSERT INTO task_outbox (task_id, created_at) SELECT id, $6 FROM created WHERE NOT waiting)
             SELECT waiting FROM created",
            active_count_sql('$').replace("$1", "$2")
        ))
        .bind(task.id)
        .bind(task.owner_id)
        .bind(&spec)
        .bind(task.idempotency_key.as_deref())
        .bind(&task.request_hash)
        .bind(now)
        .bind(&first.kind)
        .bind(first.at)
        .bind(first.json_str())
        .bind(task.active_limit.map(i64::from))
        .fetch_optional(&self.pool)
        .await?;
        let Some(waiting) = created else {
            let key = task.idempotency_key.as_deref().ok_or_else(|| {
                Error::Corrupt(format!("task id {} was submitted twice", task.id))
            })?;
            return earlier_submit(task, self.find_by_key(task.owner_id, key).await?);
        };
        crate::metrics::committed(std::slice::from_ref(&first));
        Ok(Submitted::Created(created_record(task, now, waiting)))
    }

    async fn task(&self, id: Uuid) -> Result<Option<TaskRecord>> {
        let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn tasks_of(
        &self,
        owner_id: Uuid,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks
             WHERE owner_id = $1 AND ($2::uuid IS NULL OR id < $2) AND NOT delete_requested
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(owner_id)
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn append(&self, task_id: Uuid, events: &[RawEvent]) -> Result<()> {
        let Some((expected, new_last)) = batch_bounds(task_id, events)? else {
            return Ok(());
        };
        let status = status_after(events).map(TaskStatus::as_str);
        let seqs: Vec<i64> = events.iter().map(|e| e.seq as i64).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let ats: Vec<DateTime<Utc>> = events.iter().map(|e| e.at).collect();
        let datas: Vec<&str> = events.iter().map(|e| e.json_str()).collect();
        let usage = usage_added(events);
        // The conditional update is the fence: it takes the row lock, checks the log ends
        // where this writer thinks it does, and refuses to extend a finished task; the
        // events go in only if it moved the row. One statement is one round trip and is
        // atomic without a transaction of its own.
        let query = sqlx::query(&APPEND)
            .bind(task_id)
            .bind(expected as i64)
            .bind(new_last as i64)
            .bind(status)
            .bind(&seqs)
            .bind(&kinds)
            .bind(&ats)
            .bind(&datas);
        let inserted = bind_usage_added!(query, usage)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::SeqConflict { task_id, expected }
                } else {
                    Error::from(e)
                }
            })?
            .rows_affected();
        if inserted == 0 {
            return Err(Error::SeqConflict { task_id, expected });
        }
        crate::metrics::appended(events);
        Ok(())
    }

    async fn events_after(&self, task_id: Uuid, after: u64, limit: u32) -> Result<Vec<RawEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT seq, type, at, data FROM ({PAGE}) page WHERE {IN_PAGE} ORDER BY seq"
        ))
        .bind(task_id)
        .bind(after as i64)
        .bind(i64::from(limit))
        .bind(PAGE_BYTES)
        .fetch_all(&self.log_readers)
        .await?;
        rows.iter().map(|r| event_of_row(task_id, r)).collect()
    }

    async fn lines_after(
        &self,
        task_id: Uuid,
        after: u64,
        limit: u32,
        typed: bool,
    ) -> Result<Option<Lines>> {
        let kinds = if typed { KINDS_JOINED } else { "NULL::text" };
        // The page of events_after, joined in the database: one row instead of one per event.
        // Joined in the order the page comes in, which is seq's: an ORDER BY in string_agg
        // would sort the page again (PostgreSQL 15 does not see that it is sorted).
        let (last, events, joined, kinds): (Option<i64>, i64, Option<String>, Option<String>) =
            sqlx::query_as(&format!(
                "SELECT max(seq), count(*), string_agg(data, E'\\n'), {kinds}
                 FROM ({PAGE}) page WHERE {IN_PAGE}"
            ))
            .bind(task_id)
            .bind(after as i64)
            .bind(i64::from(limit))
            .bind(PAGE_BYTES)
            .fetch_one(&self.log_readers)
            .await?;
        Lines::of(last, events, joined, kinds)
    }

    async fn transition(&self, task_id: Uuid, transition: &Transition) -> Result<Transitioned> {
        let to = transition.to()?;
        let mut tx = self.pool.begin().await?;
        let moved: Option<(i64, bool)> = sqlx::query_as(&format!(
            "UPDATE tasks SET last_seq = last_seq + 1, status = $2, updated_at = now(),
                    cancel_requested = FALSE, pause_requested = FALSE, waiting = {}
             WHERE id = $1 AND {} RETURNING last_seq, waiting",
            transition_waiting_sql('$').replace("$3 IS", "$3::bigint IS"),
            transition.allowed_statuses_sql()
        ))
        .bind(task_id)
        .bind(to.as_str())
        .bind(transition.waiting_limit())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((seq, waiting)) = moved else {
            tx.rollback().await?;
            return refused(self.task(task_id).await?, task_id);
        };
        let event = Event::new(task_id, seq as u64, transition.body.clone()).to_raw();
        sqlx::query("INSERT INTO task_events (task_id, seq, type, at, data) VALUES ($1, $2, $3, $4, $5::json)")
            .bind(task_id)
            .bind(seq)
            .bind(&event.kind)
            .bind(event.at)
            .bind(event.json_str())
            .execute(&mut *tx)
            .await?;
        if transition.requeue && !waiting {
            sqlx::query(
                "INSERT INTO task_outbox (task_id, created_at, seq) VALUES ($1, $2, $3)
                 ON CONFLICT (task_id) DO UPDATE SET created_at = EXCLUDED.created_at, seq = EXCLUDED.seq",
            )
            .bind(task_id)
            .bind(event.at)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        crate::metrics::committed(std::slice::from_ref(&event));
        Ok(transitioned(event, waiting))
    }

    async fn request_control(&self, task_id: Uuid, request: &ControlRequest) -> Result<bool> {
        let sql = control_sql(request, '$');
        let mut query = sqlx::query(&sql).bind(task_id);
        if let ControlRequest::CancelAgent { role, attempt } = request {
            query = query
                .bind(role.as_str())
                .bind(*attempt as i32)
                .bind(Utc::now());
        }
        Ok(query.execute(&self.pool).await?.rows_affected() > 0)
    }

    async fn controls(&self, task_id: Uuid) -> Result<Controls> {
        let rows = sqlx::query_as(&format!("{CONTROLS_SQL}$1"))
            .bind(task_id)
            .fetch_all(&self.pool)
            .await?;
        controls_of(task_id, rows)
    }

    async fn claim(&self, task_id: Uuid, holder: Uuid, job: u64, lease: Duration) -> Result<Claim> {
        let granted = sqlx::query(
            "UPDATE tasks SET holder = $2, holder_job = $3, lease_until = now() + $4 * interval '1 millisecond'
             WHERE id = $1 AND (holder IS NULL OR holder = $2 OR lease_until < now())",
        )
        .bind(task_id)
        .bind(holder)
        .bind(job as i64)
        .bind(lease.as_millis() as f64)
        .execute(&self.pool)
        .await?
        .rows_affected();
        settle_claim(self, task_id, granted).await
    }

    async fn renew(&self, task_id: Uuid, holder: Uuid, lease: Duration) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET lease_until = now() + $3 * interval '1 millisecond'
             WHERE id = $1 AND holder = $2",
        )
        .bind(task_id)
        .bind(holder)
        .bind(lease.as_millis() as f64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn release(&self, task_id: Uuid, holder: Uuid) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET holder = NULL, holder_job = NULL, lease_until = NULL
             WHERE id = $1 AND holder = $2",
        )
        .bind(task_id)
        .bind(holder)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn lease(&self, task_id: Uuid) -> Result<Option<Lease>> {
        let row: Option<(Uuid, i64)> = sqlx::query_as(
            "SELECT holder, holder_job FROM tasks
             WHERE id = $1 AND holder IS NOT NULL AND lease_until >= now()",
        )
        .bind(task_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(holder, job)| Lease {
            holder,
            job: job as u64,
        }))
    }

    async fn undispatched(&self, older_than: DateTime<Utc>, limit: u32) -> Result<Vec<Dispatch>> {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT task_id, seq FROM task_outbox WHERE created_at < $1 ORDER BY created_at LIMIT $2",
        )
        .bind(older_than)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(task_id, seq)| Dispatch {
                task_id,
                seq: seq as u64,
            })
            .collect())
    }

    async fn count_undispatched(&self, older_than: DateTime<Utc>) -> Result<u64> {
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM task_outbox WHERE created_at < $1")
                .bind(older_than)
                .fetch_one(&self.pool)
                .await?;
        Ok(rows as u64)
    }

    async fn mark_dispatched(&self, dispatches: &[Dispatch]) -> Result<()> {
        if dispatches.is_empty() {
            return Ok(());
        }
        clear_outbox_query(dispatches)
            .build()
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn published_through(&self, task_id: Uuid) -> Result<u64> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT published_seq FROM tasks WHERE id = $1")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(seq.unwrap_or(0) as u64)
    }

    async fn mark_published(&self, marks: &[(Uuid, u64)]) -> Result<()> {
        let (ids, seqs): (Vec<Uuid>, Vec<i64>) = marks.iter().map(|(t, s)| (*t, *s as i64)).unzip();
        sqlx::query(
            "UPDATE tasks SET published_seq = m.seq FROM unnest($1::uuid[], $2::bigint[]) AS m(id, seq)
             WHERE tasks.id = m.id AND tasks.published_seq < m.seq",
        )
        .bind(ids)
        .bind(seqs)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn unpublished(&self, older_than: DateTime<Utc>, limit: u32) -> Result<Vec<Behind>> {
        let rows = sqlx::query_as(&unpublished_sql('$', "now()"))
            .bind(older_than)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(behind_of(rows))
    }

    async fn stats_cursor(&self, task_id: Uuid) -> Result<Option<StatsCursor>> {
        let row: Option<stats::CursorRow> = sqlx::query_as(&STATS.cursor)
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(stats::cursor_of))
    }

    async fn apply_stats(&self, delta: &StatsDelta) -> Result<bool> {
        stats::apply_stats!(self.pool, STATS, delta)
    }

    async fn stats_behind(&self, limit: u32) -> Result<Vec<Behind>> {
        let rows = sqlx::query_as(&STATS.behind)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(behind_of(rows))
    }

    async fn stats_rows(
        &self,
        owner_id: Uuid,
        since: DateTime<Utc>,
        period: StatsPeriod,
    ) -> Result<StatsRows> {
        stats::read_stats_rows!(&self.pool, STATS, owner_id, since, period)
    }

    async fn requeue_unfinished(&self) -> Result<u64> {
        let n = sqlx::query(
            "INSERT INTO task_outbox (task_id, created_at, seq)
             SELECT id, to_timestamp(0), last_seq FROM tasks WHERE status IN ('queued', 'running')
               AND NOT waiting
             ON CONFLICT DO NOTHING",
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    async fn usage_report(&self, owner_id: Uuid, since: DateTime<Utc>) -> Result<UsageReport> {
        let sql = ReportSql::new(Dialect {
            mark: '$',
            day: "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
            events: "task_events",
        });
        let first = first_id_since(since);
        // One snapshot for every statement, so that the breakdowns add up to the totals.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let rows = read_report_rows!(tx, sql, owner_id, first);
        tx.commit().await?;
        Ok(rows.report())
    }
}
