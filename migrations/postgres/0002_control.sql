-- User control: paused and cancelled tasks, requests the worker carries out (cancel,
-- pause, cancel one agent), and outbox rows that name the log position that queued them
-- (a retried or unpaused task is queued again under a new message id).

ALTER TABLE tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check
    CHECK (status IN ('queued', 'running', 'paused', 'completed', 'failed', 'cancelled'));
ALTER TABLE tasks
    ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN pause_requested  BOOLEAN NOT NULL DEFAULT FALSE;

ALTER TABLE task_outbox ADD COLUMN seq BIGINT NOT NULL DEFAULT 1;

-- Keyed by attempt: a request for an attempt that has ended never stops a retry.
CREATE TABLE task_agent_cancels (
    task_id    UUID NOT NULL REFERENCES tasks (id),
    agent_role TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, agent_role, attempt)
);
