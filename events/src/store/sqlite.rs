use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::{CancellationToken, DropGuard};
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
    LazyLock::new(|| StatsSql::new('?', "substr(hour, 1, 10) || 'T00:00:00+00:00'"));
use crate::event::{Event, RawEvent};
use crate::providers::Advert;
use crate::task::{ControlRequest, Controls, NewTask, TaskRecord, TaskStatus};
use crate::usage::UsageReport;

/// A page of the log (`?1` task, after `?2`, at most `?3` events) with the running
/// total of its JSON bytes; [`IN_PAGE`] stops it once the total has passed `?4`
/// (`PAGE_BYTES`), so a page of whole agent answers stays small. A ROWS frame, as in
/// the PostgreSQL store: seq has no peers for a RANGE frame to look for.
const PAGE: &str = "SELECT seq, type, at, data,
            sum(length(CAST(data AS BLOB))) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) AS upto
     FROM task_events WHERE task_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3";
const IN_PAGE: &str = "upto - length(CAST(data AS BLOB)) < ?4";
/// A page's event types, one per line, in seq order.
const KINDS_JOINED: &str = "group_concat(type, char(10) ORDER BY seq)";

/// The append's fence, built once: its parts are shared with the PostgreSQL store.
static APPEND: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE tasks SET last_seq = ?3, status = COALESCE(?4, status), updated_at = ?5, {}, {}
         WHERE id = ?1 AND last_seq = ?2 AND {WRITABLE}",
        settled_requests_sql("?4"),
        usage_added_sql('?', 6),
    )
});

/// How often the checkpointer copies the WAL into the database. A checkpoint fsyncs the
/// WAL and the database; between them the WAL grows by what was committed, up to 20,000
/// pages a second under `troupe-load throughput` (each commit writes whole pages).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// WAL frames (pages) past which the checkpointer makes the WAL start over: 64 MiB of
/// 4 KiB pages, which is what the WAL file holds at most under load.
const WAL_MAX_FRAMES: i64 = 16_384;

/// Connections that only read: replays and followers catching up, beside the writer.
const READERS: u32 = 4;
/// Rows a reader's SQLite thread may get ahead of the task that takes them. sqlx's 50
/// made a long page a ping-pong: the thread filled the channel and slept, the task took
/// a row and woke it, a futex wait and wake per row. A replay page is at most
/// `REPLAY_PAGE` rows and 1 MiB, so this holds no more than the page itself would.
const READER_ROWS_AHEAD: usize = super::REPLAY_PAGE as usize;

const TASK_COLUMNS: &str = concat!(
    "id, owner_id, spec, status, created_at, updated_at, last_seq, cancel_requested, ",
    "pause_requested, delete_requested, waiting, ",
    task_usage_columns!()
);

#[derive(Clone)]
pub struct SqliteStore {
    /// One connection: SQLite has one writer at a time, and writers sharing a file wait
    /// for each other by sleeping in its busy handler (1, 2, 5, 10… ms), which caps a
    /// busy server at a few hundred transactions a second. Queueing on this pool instead
    /// hands the connection over the moment a transaction ends.
    writer: SqlitePool,
    /// WAL lets these read a committed snapshot while the writer works.
    readers: SqlitePool,
    /// Stops the [`Checkpointer`] when the last clone of the store goes (a file database).
    _checkpoints: Option<Arc<DropGuard>>,
    /// The data directory's lock, held as long as the store lives.
    _lock: Option<Arc<std::fs::File>>,
}

impl SqliteStore {
    /// A database file, created if missing. WAL lets readers (SSE replays) run beside the
    /// one writer; a [`Checkpointer`] copies the WAL into the file every
    /// [`CHECKPOINT_EVERY`] for as long as the store lives.
    pub async fn open(path: &Path) -> Result<Self> {
        let (mut store, checkpointer) = Self::connect(path).await?;
        store._checkpoints = Some(checkpointer.spawn());
        Ok(store)
    }

    /// The store on a database file and its checkpointer, not started.
    async fn connect(path: &Path) -> Result<(Self, Checkpointer)> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // No ping before each statement (sqlx's default): on SQLite it is a hop to the
        // connection's thread and back, and a file database's connection does not break.
        // The writer never checkpoints: its commits would wait for the checkpoint's fsyncs,
        // and every other write with them. The checkpointer does it on its own connection.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        let checkpointer = Checkpointer::open(options.clone(), writer.clone()).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .test_before_acquire(false)
            .connect_with(options.row_buffer_size(READER_ROWS_AHEAD))
            .await?;
        let store = SqliteStore {
            writer,
            readers,
            _checkpoints: None,
            _lock: None,
        };
        Ok((store, checkpointer))
    }

    /// A database that lives as long as the process: one connection, never recycled,
    /// because an in-memory SQLite database dies with its last connection.
    pub async fn in_memory() -> Result<Self> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        Ok(SqliteStore {
            writer: pool.clone(),
            readers: pool,
            _checkpoints: None,
            _lock: None,
        })
    }

    /// Keeps `lock` (see `backend::lock_data_dir`) for as long as this store lives.
    pub fn holding(mut self, lock: std::fs::File) -> Self {
        self._lock = Some(Arc::new(lock));
        self
    }

    async fn find_by_key(&self, owner_id: Uuid, key: &str) -> Result<Option<(TaskRecord, String)>> {
        let row = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS}, request_hash FROM tasks WHERE owner_id = ? AND idempotency_key = ?"
        ))
        .bind(owner_id)
        .bind(key)
        .fetch_optional(&self.readers)
        .await?;
        row.map(|r| Ok((task_from_row(&r)?, r.try_get("request_hash")?)))
            .transpose()
    }
}

fn user_of(r: &sqlx::sqlite::SqliteRow) -> Result<User> {
    Ok(User {
        id: r.try_get("id")?,
        email: r.try_get("email")?,
        password_hash: r.try_get("password_hash")?,
    })
}

async fn insert_session<'e>(db: impl sqlx::SqliteExecutor<'e>, session: &Session) -> Result<()> {
    sqlx::query("INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)")
        .bind(session.id)
        .bind(session.user_id)
        .bind(Utc::now())
        .bind(session.expires_at)
        .execute(db)
        .await?;
    Ok(())
}

/// The owner's active tasks, as their limit counts them.
async fn active_tasks(tx: &mut sqlx::SqliteConnection, owner_id: Uuid) -> Result<i64> {
    static SQL: LazyLock<String> = LazyLock::new(|| active_count_sql('?'));
    Ok(sqlx::query_scalar(&SQL)
        .bind(owner_id)
        .fetch_one(&mut *tx)
        .await?)
}

/// Removes the tasks' rows, one task at a time: SQLite binds no arrays.
async fn delete_task_rows(tx: &mut sqlx::SqliteConnection, tasks: &[Uuid]) -> Result<()> {
    static DELETES: LazyLock<[String; 5]> = LazyLock::new(|| delete_task_rows_sql("= ?"));
    for task in tasks {
        for statement in DELETES.iter() {
            sqlx::query(statement).bind(task).execute(&mut *tx).await?;
        }
    }
    Ok(())
}

/// Removes the deleted accounts that have no task left, with their stats.
async fn delete_emptied_accounts(tx: &mut sqlx::SqliteConnection) -> Result<u64> {
    static DELETES: LazyLock<[String; 4]> = LazyLock::new(|| delete_account_rows_sql("= ?"));
    let users: Vec<Uuid> = sqlx::query_scalar(EMPTIED_ACCOUNTS)
        .fetch_all(&mut *tx)
        .await?;
    for user in &users {
        for statement in DELETES.iter() {
            sqlx::query(statement).bind(user).execute(&mut *tx).await?;
        }
    }
    Ok(users.len() as u64)
}

fn task_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<TaskRecord> {
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

/// Copies the WAL into the database file on a connection of its own, off the writer.
/// SQLite's default, a checkpoint by whichever commit passes 1,000 WAL pages, ran two
/// fsyncs on the writer's connection every few hundred tasks, and SQLite has one writer:
/// every task's writes waited for the disk meanwhile (`perf`: the writer's thread in
/// `fsync` under `walCheckpoint`). A passive checkpoint runs beside the writer and the
/// readers, and copies nearly all of the WAL; but only the writer starts the WAL over,
/// when a transaction of its begins with every frame copied, which never happens while
/// it keeps committing during the checkpoints. So once the WAL is long, the checkpointer
/// takes the writer's connection for a moment and finishes there: the few frames
/// committed since its passive pass, two fsyncs, and a wait for the readers to leave the
/// WAL. The writer waits for that about once a second under load instead of 40 times.
struct Checkpointer {
    own: SqlitePool,
    writer: SqlitePool,
}

/// What one checkpoint found and did, in WAL frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Checkpointed {
    /// Frames in the WAL.
    log: i64,
    /// Frames copied into the database, up to now.
    copied: i64,
    /// The WAL was finished on the writer's connection and starts over at the next write.
    restarted: bool,
}

impl Checkpointer {
    async fn open(options: SqliteConnectOptions, writer: SqlitePool) -> Result<Self> {
        let own = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        Ok(Checkpointer { own, writer })
    }

    /// Checkpoints every [`CHECKPOINT_EVERY`] until the returned guard is dropped.
    fn spawn(self) -> Arc<DropGuard> {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(CHECKPOINT_EVERY);
            every.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => break,
                    _ = every.tick() => {}
                }
                if let Err(e) = self.checkpoint(WAL_MAX_FRAMES).await {
                    tracing::warn!(error = %e, "checkpointing the SQLite WAL failed; trying again");
                }
            }
            self.own.close().await;
        });
        Arc::new(stop.drop_guard())
    }

    /// A passive checkpoint beside the writer; when the WAL is longer than `max_frames`,
    /// finished on the writer's connection so that the WAL starts over.
    async fn checkpoint(&self, max_frames: i64) -> Result<Checkpointed> {
        let (log, copied) = run_checkpoint(&self.own, "PASSIVE").await?;
        if log <= max_frames {
            return Ok(Checkpointed {
                log,
                copied,
                restarted: false,
            });
        }
        let (_, copied) = run_checkpoint(&self.writer, "RESTART").await?;
        Ok(Checkpointed {
            log,
            copied,
            restarted: true,
        })
    }
}

/// `PRAGMA wal_checkpoint(mode)` on `pool`: the WAL's frames and those copied.
async fn run_checkpoint(pool: &SqlitePool, mode: &str) -> Result<(i64, i64)> {
    let (_busy, log, copied): (i64, i64, i64) =
        sqlx::query_as(&format!("PRAGMA wal_checkpoint({mode})"))
            .fetch_one(pool)
            .await?;
    Ok((log, copied))
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("../migrations/sqlite")
            .run(&self.writer)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    async fn create_user(&self, email: &str, password_hash: &str) -> Result<User> {
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO users (id, email, password_hash, created_at) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(email)
            .bind(password_hash)
            .bind(Utc::now())
            .execute(&self.writer)
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
        let row =
            sqlx::query("SELECT id, email, password_hash FROM users WHERE lower(email) = lower(?)")
                .bind(email)
                .fetch_optional(&self.readers)
                .await?;
        row.map(|r| user_of(&r)).transpose()
    }

    async fn user(&self, id: Uuid) -> Result<Option<User>> {
        let row = sqlx::query("SELECT id, email, password_hash FROM users WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.readers)
            .await?;
        row.map(|r| user_of(&r)).transpose()
    }

    async fn create_session(&self, session: &Session) -> Result<()> {
        insert_session(&self.writer, session).await
    }

    async fn session_user(&self, session_id: Uuid) -> Result<Option<Uuid>> {
        Ok(
            sqlx::query_scalar("SELECT user_id FROM sessions WHERE id = ? AND expires_at > ?")
                .bind(session_id)
                .bind(Utc::now())
                .fetch_optional(&self.readers)
                .await?,
        )
    }

    async fn end_session(&self, session_id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE id = ?")
            .bind(session_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn replace_password(
        &self,
        user_id: Uuid,
        password_hash: &str,
        session: &Session,
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let changed = sqlx::query("UPDATE users SET password_hash = ? WHERE id = ?")
            .bind(password_hash)
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if changed == 0 {
            return Err(Error::NotFound("the account"));
        }
        sqlx::query("DELETE FROM sessions WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        insert_session(&mut *tx, session).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_account(&self, user_id: Uuid) -> Result<()> {
        static MARK_TASKS: LazyLock<String> = LazyLock::new(|| mark_account_tasks_sql('?', "1"));
        let mut tx = self.writer.begin().await?;
        let renamed = sqlx::query(
            "UPDATE users SET delete_requested = 1, email = 'deleted:' || hex(id) WHERE id = ?1",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if renamed == 0 {
            return Err(Error::NotFound("the account"));
        }
        for statement in [
            "DELETE FROM sessions WHERE user_id = ?1",
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
        static SQL: LazyLock<String> = LazyLock::new(|| waiting_owner_sql('?'));
        Ok(sqlx::query_scalar(&SQL)
            .bind(task_id)
            .fetch_optional(&self.readers)
            .await?)
    }

    async fn admit(&self, owner_id: Uuid, limit: u32) -> Result<Vec<Dispatch>> {
        static ADMIT: LazyLock<String> = LazyLock::new(|| admit_sql('?', "0", ""));
        // The one writer connection serialises admissions with every submit.
        let mut tx = self.writer.begin().await?;
        let active = active_tasks(&mut tx, owner_id).await?;
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(&ADMIT)
            .bind(owner_id)
            .bind(admissible(limit, active))
            .fetch_all(&mut *tx)
            .await?;
        let dispatches = admitted(rows);
        let now = Utc::now();
        for dispatch in &dispatches {
            sqlx::query(
                "INSERT INTO task_outbox (task_id, created_at, seq) VALUES (?, ?, ?)
                 ON CONFLICT DO NOTHING",
            )
            .bind(dispatch.task_id)
            .bind(now)
            .bind(dispatch.seq as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(dispatches)
    }

    async fn owners_waiting(&self, limit: u32) -> Result<Vec<Uuid>> {
        static SQL: LazyLock<String> = LazyLock::new(|| owners_waiting_sql('?'));
        Ok(sqlx::query_scalar(&SQL)
            .bind(i64::from(limit))
            .fetch_all(&self.readers)
            .await?)
    }

    async fn queue_position(&self, task_id: Uuid) -> Result<Option<u64>> {
        static SQL: LazyLock<String> = LazyLock::new(|| queue_position_sql('?'));
        let position: i64 = sqlx::query_scalar(&SQL)
            .bind(task_id)
            .fetch_one(&self.readers)
            .await?;
        Ok((position > 0).then_some(position as u64))
    }

    async fn delete_task(&self, task_id: Uuid) -> Result<Deletion> {
        // The one writer connection serialises this with every append and transition.
        let mut tx = self.writer.begin().await?;
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM tasks WHERE id = ?")
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
                sqlx::query("UPDATE tasks SET delete_requested = 1 WHERE id = ?")
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
        static SWEPT: LazyLock<String> = LazyLock::new(|| swept_sql('?', ""));
        let mut tx = self.writer.begin().await?;
        let tasks: Vec<Uuid> = sqlx::query_scalar(&SWEPT)
            .bind(ended_before)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        delete_task_rows(&mut tx, &tasks).await?;
        let sessions = sqlx::query("DELETE FROM sessions WHERE expires_at <= ?")
            .bind(Utc::now())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM worker_adverts WHERE expires_at <= ?")
            .bind(Utc::now())
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
        let live_for = chrono::Duration::from_std(live_for).unwrap_or(chrono::Duration::MAX);
        let expires_at = Utc::now()
            .checked_add_signed(live_for)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        sqlx::query(
            "INSERT INTO worker_adverts (worker_id, offers, stopping, expires_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (worker_id) DO UPDATE SET offers = excluded.offers,
                 stopping = excluded.stopping, expires_at = excluded.expires_at",
        )
        .bind(advert.worker_id)
        .bind(offers_json(advert))
        .bind(advert.stopping)
        .bind(expires_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn live_adverts(&self) -> Result<Vec<Advert>> {
        let rows: Vec<AdvertRow> = sqlx::query_as(
            "SELECT worker_id, offers, stopping FROM worker_adverts
             WHERE expires_at > ? ORDER BY expires_at DESC",
        )
        .bind(Utc::now())
        .fetch_all(&self.readers)
        .await?;
        rows.into_iter().map(advert_of).collect()
    }

    async fn create_task(&self, task: &NewTask) -> Result<Submitted> {
        let SubmitParts { now, spec, first } = SubmitParts::of(task);
        let mut tx = self.writer.begin().await?;
        let waiting = match task.active_limit {
            Some(limit) => active_tasks(&mut tx, task.owner_id).await? >= i64::from(limit),
            None => false,
        };
        let inserted = sqlx::query(
            "INSERT INTO tasks (id, owner_id, spec, status, idempotency_key, request_hash, created_at, updated_at, last_seq, waiting)
             VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, 1, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(task.id)
        .bind(task.owner_id)
        .bind(&spec)
        .bind(task.idempotency_key.as_deref())
        .bind(&task.request_hash)
        .bind(now)
        .bind(now)
        .bind(waiting)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            let key = task.idempotency_key.as_deref().ok_or_else(|| {
                Error::Corrupt(format!("task id {} was submitted twice", task.id))
            })?;
            return earlier_submit(task, self.find_by_key(task.owner_id, key).await?);
        }
        sqlx::query(
            "INSERT INTO task_events (task_id, seq, type, at, data) VALUES (?, 1, ?, ?, ?)",
        )
        .bind(task.id)
        .bind(&first.kind)
        .bind(first.at)
        .bind(first.json_str())
        .execute(&mut *tx)
        .await?;
        if !waiting {
            sqlx::query("INSERT INTO task_outbox (task_id, created_at) VALUES (?, ?)")
                .bind(task.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        crate::metrics::committed(std::slice::from_ref(&first));
        Ok(Submitted::Created(created_record(task, now, waiting)))
    }

    async fn task(&self, id: Uuid) -> Result<Option<TaskRecord>> {
        let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.readers)
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
             WHERE owner_id = ?1 AND (?2 IS NULL OR id < ?2) AND NOT delete_requested
             ORDER BY id DESC LIMIT ?3"
        ))
        .bind(owner_id)
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn append(&self, task_id: Uuid, events: &[RawEvent]) -> Result<()> {
        let Some((expected, new_last)) = batch_bounds(task_id, events)? else {
            return Ok(());
        };
        let status = status_after(events).map(TaskStatus::as_str);
        let usage = usage_added(events);
        let mut tx = self.writer.begin().await?;
        // Same fence as PostgreSQL: the log must end where the writer thinks, and be open.
        let query = sqlx::query(&APPEND)
            .bind(task_id)
            .bind(expected as i64)
            .bind(new_last as i64)
            .bind(status)
            .bind(Utc::now());
        let moved = bind_usage_added!(query, usage)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if moved == 0 {
            return Err(Error::SeqConflict { task_id, expected });
        }
        let mut insert =
            QueryBuilder::new("INSERT INTO task_events (task_id, seq, type, at, data) ");
        insert.push_values(events, |mut row, e| {
            row.push_bind(task_id)
                .push_bind(e.seq as i64)
                .push_bind(e.kind.as_str())
                .push_bind(e.at)
                .push_bind(e.json_str());
        });
        insert.build().execute(&mut *tx).await.map_err(|e| {
            if is_unique_violation(&e) {
                Error::SeqConflict { task_id, expected }
            } else {
                Error::from(e)
            }
        })?;
        tx.commit().await?;
        crate::metrics::appended(events);
        Ok(())
    }

    async fn events_after(&self, task_id: Uuid, after: u64, limit: u32) -> Result<Vec<RawEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT seq, type, at, data FROM ({PAGE}) WHERE {IN_PAGE} ORDER BY seq"
        ))
        .bind(task_id)
        .bind(after as i64)
        .bind(i64::from(limit))
        .bind(PAGE_BYTES)
        .fetch_all(&self.readers)
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
        let kinds = if typed { KINDS_JOINED } else { "NULL" };
        // The page of events_after, joined in the database: one row instead of one per event.
        let (last, events, joined, kinds): (Option<i64>, i64, Option<String>, Option<String>) =
            sqlx::query_as(&format!(
                "SELECT max(seq), count(*), group_concat(data, char(10) ORDER BY seq), {kinds}
                 FROM ({PAGE}) WHERE {IN_PAGE}"
            ))
            .bind(task_id)
            .bind(after as i64)
            .bind(i64::from(limit))
            .bind(PAGE_BYTES)
            .fetch_one(&self.readers)
            .await?;
        Lines::of(last, events, joined, kinds)
    }

    async fn transition(&self, task_id: Uuid, transition: &Transition) -> Result<Transitioned> {
        let to = transition.to()?;
        let now = Utc::now();
        let mut tx = self.writer.begin().await?;
        let moved: Option<(i64, bool)> = sqlx::query_as(&format!(
            "UPDATE tasks SET last_seq = last_seq + 1, status = ?2, updated_at = ?4,
                    cancel_requested = 0, pause_requested = 0, waiting = {}
             WHERE id = ?1 AND {} RETURNING last_seq, waiting",
            transition_waiting_sql('?'),
            transition.allowed_statuses_sql()
        ))
        .bind(task_id)
        .bind(to.as_str())
        .bind(transition.waiting_limit())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((seq, waiting)) = moved else {
            tx.rollback().await?;
            return refused(self.task(task_id).await?, task_id);
        };
        let event = Event::new(task_id, seq as u64, transition.body.clone()).to_raw();
        sqlx::query(
            "INSERT INTO task_events (task_id, seq, type, at, data) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(task_id)
        .bind(seq)
        .bind(&event.kind)
        .bind(event.at)
        .bind(event.json_str())
        .execute(&mut *tx)
        .await?;
        if transition.requeue && !waiting {
            sqlx::query(
                "INSERT INTO task_outbox (task_id, created_at, seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (task_id) DO UPDATE SET created_at = ?2, seq = ?3",
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
        let sql = control_sql(request, '?');
        let mut query = sqlx::query(&sql).bind(task_id);
        if let ControlRequest::CancelAgent { role, attempt } = request {
            query = query
                .bind(role.as_str())
                .bind(i64::from(*attempt))
                .bind(Utc::now());
        }
        Ok(query.execute(&self.writer).await?.rows_affected() > 0)
    }

    async fn controls(&self, task_id: Uuid) -> Result<Controls> {
        let rows = sqlx::query_as(&format!("{CONTROLS_SQL}?"))
            .bind(task_id)
            .fetch_all(&self.readers)
            .await?;
        controls_of(task_id, rows)
    }

    async fn claim(&self, task_id: Uuid, holder: Uuid, job: u64, lease: Duration) -> Result<Claim> {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(lease).unwrap_or_default();
        let granted = sqlx::query(
            "UPDATE tasks SET holder = ?2, holder_job = ?3, lease_until = ?4
             WHERE id = ?1 AND (holder IS NULL OR holder = ?2 OR lease_until < ?5)",
        )
        .bind(task_id)
        .bind(holder)
        .bind(job as i64)
        .bind(until)
        .bind(now)
        .execute(&self.writer)
        .await?
        .rows_affected();
        settle_claim(self, task_id, granted).await
    }

    async fn renew(&self, task_id: Uuid, holder: Uuid, lease: Duration) -> Result<()> {
        let until = Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default();
        sqlx::query("UPDATE tasks SET lease_until = ?3 WHERE id = ?1 AND holder = ?2")
            .bind(task_id)
            .bind(holder)
            .bind(until)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn release(&self, task_id: Uuid, holder: Uuid) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET holder = NULL, holder_job = NULL, lease_until = NULL
             WHERE id = ?1 AND holder = ?2",
        )
        .bind(task_id)
        .bind(holder)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn lease(&self, task_id: Uuid) -> Result<Option<Lease>> {
        let row: Option<(Uuid, i64)> = sqlx::query_as(
            "SELECT holder, holder_job FROM tasks
             WHERE id = ?1 AND holder IS NOT NULL AND lease_until >= ?2",
        )
        .bind(task_id)
        .bind(Utc::now())
        .fetch_optional(&self.readers)
        .await?;
        Ok(row.map(|(holder, job)| Lease {
            holder,
            job: job as u64,
        }))
    }

    async fn undispatched(&self, older_than: DateTime<Utc>, limit: u32) -> Result<Vec<Dispatch>> {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT task_id, seq FROM task_outbox WHERE created_at < ? ORDER BY created_at LIMIT ?",
        )
        .bind(older_than)
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
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
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM task_outbox WHERE created_at < ?")
            .bind(older_than)
            .fetch_one(&self.readers)
            .await?;
        Ok(rows as u64)
    }

    async fn mark_dispatched(&self, dispatches: &[Dispatch]) -> Result<()> {
        if dispatches.is_empty() {
            return Ok(());
        }
        clear_outbox_query(dispatches)
            .build()
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn published_through(&self, task_id: Uuid) -> Result<u64> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT published_seq FROM tasks WHERE id = ?1")
            .bind(task_id)
            .fetch_optional(&self.readers)
            .await?;
        Ok(seq.unwrap_or(0) as u64)
    }

    async fn mark_published(&self, marks: &[(Uuid, u64)]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for (task_id, through) in marks {
            sqlx::query("UPDATE tasks SET published_seq = ?2 WHERE id = ?1 AND published_seq < ?2")
                .bind(task_id)
                .bind(*through as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn unpublished(&self, older_than: DateTime<Utc>, limit: u32) -> Result<Vec<Behind>> {
        let rows = sqlx::query_as(&unpublished_sql('?', "?3"))
            .bind(older_than)
            .bind(i64::from(limit))
            .bind(Utc::now())
            .fetch_all(&self.readers)
            .await?;
        Ok(behind_of(rows))
    }

    async fn stats_cursor(&self, task_id: Uuid) -> Result<Option<StatsCursor>> {
        let row: Option<stats::CursorRow> = sqlx::query_as(&STATS.cursor)
            .bind(task_id)
            .fetch_optional(&self.readers)
            .await?;
        Ok(row.map(stats::cursor_of))
    }

    async fn apply_stats(&self, delta: &StatsDelta) -> Result<bool> {
        stats::apply_stats!(self.writer, STATS, delta)
    }

    async fn stats_behind(&self, limit: u32) -> Result<Vec<Behind>> {
        let rows = sqlx::query_as(&STATS.behind)
            .bind(i64::from(limit))
            .fetch_all(&self.readers)
            .await?;
        Ok(behind_of(rows))
    }

    async fn stats_rows(
        &self,
        owner_id: Uuid,
        since: DateTime<Utc>,
        period: StatsPeriod,
    ) -> Result<StatsRows> {
        stats::read_stats_rows!(&self.readers, STATS, owner_id, since, period)
    }

    async fn requeue_unfinished(&self) -> Result<u64> {
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        let n = sqlx::query(
            "INSERT INTO task_outbox (task_id, created_at, seq)
             SELECT id, ?, last_seq FROM tasks WHERE status IN ('queued', 'running')
               AND NOT waiting
             ON CONFLICT DO NOTHING",
        )
        .bind(epoch)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n)
    }

    async fn usage_report(&self, owner_id: Uuid, since: DateTime<Utc>) -> Result<UsageReport> {
        let sql = ReportSql::new(Dialect {
            mark: '?',
            // `at` is RFC 3339 in UTC: its first ten characters are the UTC day.
            day: "substr(at, 1, 10)",
            // Fails to prepare if the predicate ever stops matching the index's.
            events: "task_events INDEXED BY task_events_agent_outcomes",
        });
        let first = first_id_since(since);
        // One read transaction: one snapshot for every statement (WAL), so that the
        // breakdowns add up to the totals.
        let mut tx = self.readers.begin().await?;
        let rows = read_report_rows!(tx, sql, owner_id, first);
        tx.commit().await?;
        Ok(rows.report())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database file in a directory of its own, removed with it.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("troupe-wal-{}", Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        /// A migrated store on a database file here, its checkpointer not started.
        async fn store(&self) -> (SqliteStore, Checkpointer) {
            let (store, checkpointer) = SqliteStore::connect(&self.0.join("troupe.db"))
                .await
                .unwrap();
            store.migrate().await.unwrap();
            (store, checkpointer)
        }

        fn wal_len(&self) -> u64 {
            std::fs::metadata(self.0.join("troupe.db-wal")).map_or(0, |m| m.len())
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// `commits` write transactions of about 100 pages each, through the store's writer.
    async fn write_pages(store: &SqliteStore, commits: usize) {
        sqlx::query("CREATE TABLE IF NOT EXISTS filler (b BLOB)")
            .execute(&store.writer)
            .await
            .unwrap();
        for _ in 0..commits {
            sqlx::query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
                 INSERT INTO filler SELECT randomblob(3500) FROM n",
            )
            .execute(&store.writer)
            .await
            .unwrap();
        }
    }

    #[tokio::test]
    async fn the_writer_leaves_the_wal_to_the_checkpointer() {
        let dir = TempDir::new();
        let (store, checkpointer) = dir.store().await;
        // SQLite's own checkpoint would have run past 1,000 pages and the WAL restarted.
        write_pages(&store, 20).await;
        let first = checkpointer.checkpoint(WAL_MAX_FRAMES).await.unwrap();
        assert!(first.log > 1_500, "the writer checkpointed: {first:?}");
        assert_eq!(first.copied, first.log, "{first:?}");
        assert!(!first.restarted);

        // Fully copied, the WAL starts again from its beginning at the next commit.
        write_pages(&store, 1).await;
        let second = checkpointer.checkpoint(WAL_MAX_FRAMES).await.unwrap();
        assert!(second.log < 200, "the WAL kept growing: {second:?}");
        assert_eq!(second.copied, second.log);
    }

    #[tokio::test]
    async fn a_wal_past_its_limit_starts_over_though_a_reader_held_it() {
        let dir = TempDir::new();
        let (store, checkpointer) = dir.store().await;
        write_pages(&store, 1).await;
        // A reader's snapshot keeps the frames after it from being copied, as the writer's
        // commits during a passive checkpoint do: the WAL cannot start over by itself.
        let mut reader = store.readers.begin().await.unwrap();
        sqlx::query("SELECT count(*) FROM filler")
            .fetch_one(&mut *reader)
            .await
            .unwrap();
        write_pages(&store, 14).await;
        let held = checkpointer.checkpoint(WAL_MAX_FRAMES).await.unwrap();
        assert!(held.copied < held.log && !held.restarted, "{held:?}");
        reader.commit().await.unwrap();
        let wal_len = dir.wal_len();

        let finished = checkpointer.checkpoint(1_000).await.unwrap();
        assert!(finished.restarted, "{finished:?}");
        assert_eq!(finished.copied, finished.log, "{finished:?}");
        write_pages(&store, 1).await;
        let next = checkpointer.checkpoint(1_000).await.unwrap();
        assert!(next.log < 200, "the WAL did not start over: {next:?}");
        assert_eq!(dir.wal_len(), wal_len, "the WAL file is reused, not grown");
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM filler")
            .fetch_one(&store.readers)
            .await
            .unwrap();
        assert_eq!(rows, 1_600);
    }
}
