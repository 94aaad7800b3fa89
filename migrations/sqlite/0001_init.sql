-- The embedded store: the same tables as migrations/postgres, in SQLite's types.
-- UUIDs are 16-byte blobs (UUIDv7 blobs sort by time); timestamps are RFC 3339 text.

CREATE TABLE users (
    id            BLOB PRIMARY KEY,
    email         TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE tasks (
    id              BLOB PRIMARY KEY,
    owner_id        BLOB NOT NULL REFERENCES users (id),
    spec            TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed')),
    idempotency_key TEXT,
    request_hash    TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    last_seq        INTEGER NOT NULL CHECK (last_seq >= 0)
);
CREATE INDEX tasks_owner_newest ON tasks (owner_id, id DESC);
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (owner_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE task_events (
    task_id BLOB NOT NULL REFERENCES tasks (id),
    seq     INTEGER NOT NULL CHECK (seq > 0),
    type    TEXT NOT NULL,
    at      TEXT NOT NULL,
    data    TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;

CREATE TABLE task_outbox (
    task_id    BLOB PRIMARY KEY REFERENCES tasks (id),
    created_at TEXT NOT NULL
);
