-- How far each task's log is known to be in the EVENTS JetStream stream: the worker that
-- appends publishes, waits for the stream's acks and records them here (a second or so
-- behind); the relay (events/src/relay.rs) publishes again from the store what is still
-- past it once no worker holds the task. Logs from before this migration count as
-- published: they were sent (fire and forget) when they were written.
ALTER TABLE tasks ADD COLUMN published_seq BIGINT NOT NULL DEFAULT 0 CHECK (published_seq >= 0);
UPDATE tasks SET published_seq = last_seq;

-- The relay's work list: only tasks with events not yet acknowledged are in it.
CREATE INDEX tasks_unpublished ON tasks (updated_at) WHERE published_seq < last_seq;
