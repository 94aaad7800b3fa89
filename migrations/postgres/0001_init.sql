-- Users, tasks, the task event log and the dispatch outbox.
-- The event log is the source of truth; tasks.status and tasks.last_seq are kept in step
-- with it by every append, in the same transaction.

CREATE TABLE users (
    id            UUID PRIMARY KEY,
    email         TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE tasks (
    id              UUID PRIMARY KEY,
    owner_id        UUID NOT NULL REFERENCES users (id),
    spec            JSONB NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed')),
    idempotency_key TEXT,
    request_hash    TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    last_seq        BIGINT NOT NULL CHECK (last_seq >= 0)
);
-- Task ids are UUIDv7, so id order is submission order: listing pages by id.
CREATE INDEX tasks_owner_newest ON tasks (owner_id, id DESC);
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (owner_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE task_events (
    task_id UUID NOT NULL REFERENCES tasks (id),
    seq     BIGINT NOT NULL CHECK (seq > 0),
    type    TEXT NOT NULL,
    at      TIMESTAMPTZ NOT NULL,
    -- JSON, not JSONB: stored and returned byte for byte, so replay never re-serialises.
    data    JSON NOT NULL,
    PRIMARY KEY (task_id, seq)
);

-- A row here means "this task still has to reach the work queue".
CREATE TABLE task_outbox (
    task_id    UUID PRIMARY KEY REFERENCES tasks (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
