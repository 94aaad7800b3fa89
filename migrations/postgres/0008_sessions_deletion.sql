-- Sessions and task deletion.
--
-- A session token names its row here: logging out, changing the password or deleting the
-- account removes the row, and with it the session and every stream token minted from it,
-- on every api process at once. Expired rows are swept.
CREATE TABLE sessions (
    id         UUID PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_of_user ON sessions (user_id);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

-- An account its user deleted: signed out and renamed at once (its email is free
-- again), its tasks marked for deletion; the sweeper removes the row once they are gone.
ALTER TABLE users ADD COLUMN delete_requested BOOLEAN NOT NULL DEFAULT FALSE;

-- A task its owner deleted before it ended: hidden from that moment, cancelled, and its
-- rows removed by the sweeper once its log has ended.
ALTER TABLE tasks ADD COLUMN delete_requested BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX tasks_to_delete ON tasks (id) WHERE delete_requested;
-- The retention period's sweep: ended tasks, oldest first.
CREATE INDEX tasks_ended_by_age ON tasks (updated_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
