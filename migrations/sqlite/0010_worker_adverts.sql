-- The same as migrations/postgres/0010_worker_adverts.sql, in SQLite's types.

CREATE TABLE worker_adverts (
    worker_id  BLOB PRIMARY KEY,
    offers     TEXT NOT NULL,
    stopping   INTEGER NOT NULL DEFAULT 0,
    expires_at TEXT NOT NULL
);
CREATE INDEX worker_adverts_by_expiry ON worker_adverts (expires_at);
