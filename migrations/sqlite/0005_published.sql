-- The same column as migrations/postgres/0005_published.sql. The embedded bus keeps no
-- stream, so nothing reads it here; the column keeps the two schemas alike.
ALTER TABLE tasks ADD COLUMN published_seq INTEGER NOT NULL DEFAULT 0 CHECK (published_seq >= 0);
UPDATE tasks SET published_seq = last_seq;
