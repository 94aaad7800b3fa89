-- The same as migrations/postgres/0008_sessions_deletion.sql, in SQLite's types.

CREATE TABLE sessions (
    id         BLOB PRIMARY KEY,
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX sessions_of_user ON sessions (user_id);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

ALTER TABLE users ADD COLUMN delete_requested INTEGER NOT NULL DEFAULT 0;

ALTER TABLE tasks ADD COLUMN delete_requested INTEGER NOT NULL DEFAULT 0;
CREATE INDEX tasks_to_delete ON tasks (id) WHERE delete_requested;
CREATE INDEX tasks_ended_by_age ON tasks (updated_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
