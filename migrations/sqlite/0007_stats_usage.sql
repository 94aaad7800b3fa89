-- The same change as migrations/postgres/0007_stats_usage.sql, in SQLite's types.

DELETE FROM stats_durations;
DELETE FROM stats_hourly;
DELETE FROM stats_cursors;

ALTER TABLE stats_hourly ADD COLUMN simulated_calls  INTEGER NOT NULL DEFAULT 0;
ALTER TABLE stats_hourly ADD COLUMN unreported_calls INTEGER NOT NULL DEFAULT 0;
ALTER TABLE stats_hourly ADD COLUMN unpriced_calls   INTEGER NOT NULL DEFAULT 0;

CREATE TABLE stats_first_tokens (
    owner_id BLOB NOT NULL,
    hour     TEXT NOT NULL,
    role     TEXT NOT NULL,
    provider TEXT NOT NULL,
    model    TEXT NOT NULL,
    bucket   INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    PRIMARY KEY (owner_id, hour, role, provider, model, bucket)
);
