-- The same columns as migrations/postgres/0003_lease.sql. Embedded Troupe runs one
-- process with an in-process queue, which never delivers a task twice; the columns keep
-- the two schemas alike.
ALTER TABLE tasks ADD COLUMN holder BLOB;
ALTER TABLE tasks ADD COLUMN holder_job INTEGER;
ALTER TABLE tasks ADD COLUMN lease_until TEXT;
