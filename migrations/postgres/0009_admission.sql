-- Fair use: a user's tasks beyond their limit of active ones (queued in the work queue or
-- running) wait here, in submit order, off the work queue, so that one user's backlog
-- never stands in front of another user's first task. A waiting task has no outbox row
-- and is in no queue; it is admitted (waiting = FALSE, an outbox row) when one of its
-- owner's active tasks ends or pauses.
ALTER TABLE tasks ADD COLUMN waiting BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX tasks_waiting ON tasks (owner_id, id) WHERE waiting AND status = 'queued';
CREATE INDEX tasks_active_of_owner ON tasks (owner_id)
    WHERE NOT waiting AND status IN ('queued', 'running');
