-- The same as migrations/postgres/0009_admission.sql, in SQLite's types.
ALTER TABLE tasks ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0;
CREATE INDEX tasks_waiting ON tasks (owner_id, id) WHERE waiting AND status = 'queued';
CREATE INDEX tasks_active_of_owner ON tasks (owner_id)
    WHERE NOT waiting AND status IN ('queued', 'running');
