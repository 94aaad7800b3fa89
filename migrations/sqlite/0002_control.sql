-- The same change as migrations/postgres/0002_control.sql. SQLite cannot alter a CHECK
-- constraint, so the tasks table is rebuilt. Migrations run inside a transaction, where
-- foreign keys cannot be switched off; deferring them lets the rows of task_events and
-- task_outbox find their task again before the check at commit.

PRAGMA defer_foreign_keys = ON;

CREATE TABLE tasks_before_0002 AS SELECT * FROM tasks;
DROP TABLE tasks;
CREATE TABLE tasks (
    id               BLOB PRIMARY KEY,
    owner_id         BLOB NOT NULL REFERENCES users (id),
    spec             TEXT NOT NULL,
    status           TEXT NOT NULL
        CHECK (status IN ('queued', 'running', 'paused', 'completed', 'failed', 'cancelled')),
    idempotency_key  TEXT,
    request_hash     TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    last_seq         INTEGER NOT NULL CHECK (last_seq >= 0),
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    pause_requested  INTEGER NOT NULL DEFAULT 0
);
INSERT INTO tasks (id, owner_id, spec, status, idempotency_key, request_hash, created_at, updated_at, last_seq)
    SELECT id, owner_id, spec, status, idempotency_key, request_hash, created_at, updated_at, last_seq
    FROM tasks_before_0002;
DROP TABLE tasks_before_0002;
CREATE INDEX tasks_owner_newest ON tasks (owner_id, id DESC);
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (owner_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

ALTER TABLE task_outbox ADD COLUMN seq INTEGER NOT NULL DEFAULT 1;

CREATE TABLE task_agent_cancels (
    task_id    BLOB NOT NULL REFERENCES tasks (id),
    agent_role TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (task_id, agent_role, attempt)
) WITHOUT ROWID;
